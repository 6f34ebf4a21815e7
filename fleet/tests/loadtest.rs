//! The load generator against `fleet up` (router + 3 nodes in one process): a short run
//! through the router delivers every message, none lost, duplicated or reordered; so does
//! one with `--connect direct`, whose clients ask the router where to go and then talk to
//! the nodes themselves.

use std::time::Duration;

use fleet::{DataPath, Fleet, Options};
use loadtest::direct::ConnectMode;
use loadtest::scenario::Dist;
use loadtest::{RunConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_loadtest_through_the_fleet_has_zero_loss() {
    short_run(Default::default(), ConnectMode::Url).await.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_loadtest_connecting_directly_has_zero_loss_and_no_byte_crosses_the_router() {
    let fleet = short_run(DataPath::Proxy, ConnectMode::Direct).await;
    let m = fleet.router.metrics();
    assert_eq!((m.bytes_to_node.get(), m.bytes_to_client.get()), (0, 0), "nothing proxied");
    fleet.shutdown().await;
}

/// A 2 s run of 200 connections in 40 zipf rooms on a 3-node fleet, checked for loss;
/// the fleet is returned for more checks.
async fn short_run(data_path: DataPath, connect: ConnectMode) -> Fleet {
    let router = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        ..router::Config::default()
    };
    let node =
        ws_node::Config { publish_rate: 1000.0, publish_burst: 1000.0, ..Default::default() };
    let options = Options { nodes: 3, router, node, redis: None, data_path, archive: None };
    let fleet = Fleet::up(options).await.unwrap();
    let mut cfg = RunConfig::small(&fleet.ws_url()).unwrap();
    cfg.conns = 200;
    cfg.rooms = 40;
    cfg.dist = Dist::Zipf(1.0);
    cfg.senders = 2;
    cfg.rate = 10.0;
    cfg.duration = Duration::from_secs(2);
    cfg.connect = connect;
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
    fleet
}
