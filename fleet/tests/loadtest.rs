//! The load generator against `fleet up` (router + 3 nodes in one process): a short run
//! through the router delivers every message, none lost, duplicated or reordered.

use std::time::Duration;

use fleet::{Fleet, Options};
use loadtest::scenario::Dist;
use loadtest::{RunConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_loadtest_through_the_fleet_has_zero_loss() {
    let router = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        ..router::Config::default()
    };
    let node =
        ws_node::Config { publish_rate: 1000.0, publish_burst: 1000.0, ..Default::default() };
    let options = Options {
        nodes: 3,
        router,
        node,
        redis: None,
        data_path: Default::default(),
        archive: None,
    };
    let fleet = Fleet::up(options).await.unwrap();
    let mut cfg = RunConfig::small(&fleet.ws_url()).unwrap();
    cfg.conns = 200;
    cfg.rooms = 40;
    cfg.dist = Dist::Zipf(1.0);
    cfg.senders = 2;
    cfg.rate = 10.0;
    cfg.duration = Duration::from_secs(2);
    let report = run(cfg).await.unwrap();
    println!("{}", report.table(|r| format!("lt-r{r}")));
    assert_eq!(report.connect.connected, 200, "{report:#?}");
    assert!(report.published > 500, "published {}", report.published);
    assert!(report.delivered > report.published, "every room has several members");
    assert_eq!(
        (report.check.loss, report.check.duplicate, report.check.reorder, report.check.unacked),
        (0, 0, 0, 0),
        "{report:#?}"
    );
    // The rooms really were spread over the nodes by the ring.
    let busy = fleet.nodes.iter().filter(|n| n.node.metrics.messages_in.get() > 0).count();
    assert!(busy >= 2, "rooms on {busy} node(s)");
    fleet.shutdown().await;
}
