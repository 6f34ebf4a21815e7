//! `--reconnect` end to end: the node under the load drains (1012) and goes away, another node
//! of the same in-process hub takes its port, and every member comes back, resumes with
//! `recovered:true` and misses nothing. Real nodes and sockets; no router needed.

use std::sync::Arc;
use std::time::Duration;

use loadtest::reconnect::Backoff;
use loadtest::{RunConfig, run};
use shared::testkit::wait_until;
use tokio::net::TcpListener;
use ws_node::{Bus, Config, LocalHub, Node};

fn serve(
    hub: &LocalHub,
    id: &str,
    listener: TcpListener,
) -> (Arc<Node>, tokio::task::JoinHandle<()>) {
    let config = Config {
        node_id: id.into(),
        publish_rate: 1000.0,
        publish_burst: 1000.0,
        ..Config::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(hub.bus(id));
    let node = Node::new(config, bus);
    (node.clone(), tokio::spawn(ws_node::serve(node, listener)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_resume_across_a_node_that_drains_and_is_replaced() {
    let hub = LocalHub::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, serving_a) = serve(&hub, "lt-a", listener);
    let mut cfg = RunConfig::small(&format!("ws://{addr}/ws")).unwrap();
    cfg.conns = 24;
    cfg.rooms = 6;
    cfg.senders = 2;
    cfg.rate = 20.0;
    cfg.warmup = Duration::from_millis(300);
    cfg.duration = Duration::from_secs(3);
    cfg.reconnect = Some(Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(400),
        jitter: 0.5,
        attempts: 40,
    });
    let load = tokio::spawn(run(cfg));

    wait_until(Duration::from_secs(10), "messages flowing on node a", || {
        let a = a.clone();
        async move { a.connections() == 24 && a.metrics.messages_in.get() > 50 }
    })
    .await;
    a.drain(Duration::from_millis(300));
    wait_until(Duration::from_secs(10), "node a empty", || {
        let a = a.clone();
        async move { a.connections() == 0 }
    })
    .await;
    a.shutdown();
    tokio::time::timeout(Duration::from_secs(15), serving_a).await.unwrap().unwrap();
    // Same port, another node of the hub: the rooms' history is the hub's.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (b, serving_b) = serve(&hub, "lt-b", listener);

    let report = load.await.unwrap().unwrap();
    b.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(15), serving_b).await;
    println!("{}", report.table(|r| format!("lt-r{r}")));
    let resumes = report.check.resumes.expect("a --reconnect verdict counts resumes");
    let reconnects = report.reconnect.as_ref().expect("a --reconnect report");
    assert_eq!(report.disconnects.get("close_1012"), Some(&24), "{:?}", report.disconnects);
    assert_eq!((resumes.recovered, resumes.not_back), (24, 0), "{resumes:?}");
    assert_eq!(reconnects.back, 24);
    assert_eq!(reconnects.rehome_us.summary.count, 24);
    assert!(report.check.is_clean(), "{:#?}", report.check);
    assert!(report.ok);
    assert!(report.acked > 100, "publishing went on after the move: {}", report.acked);
}
