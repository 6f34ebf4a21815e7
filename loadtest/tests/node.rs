//! End to end: a real ws-node on port 0, a short loadtest against it, zero loss expected;
//! and the checker's teeth: a node that never acks or delivers makes the run fail.

use std::sync::Arc;
use std::time::Duration;

use loadtest::scenario::Dist;
use loadtest::{RunConfig, run};
use ws_node::{Bus, Config, LocalBus, Node};

struct TestNode {
    url: String,
    node: Arc<Node>,
    serving: tokio::task::JoinHandle<()>,
}

impl TestNode {
    async fn start() -> Self {
        Self::with(Config {
            node_id: "lt-node".into(),
            publish_rate: 1000.0,
            publish_burst: 1000.0,
            ..Config::default()
        })
        .await
    }

    async fn with(config: Config) -> Self {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::standalone(&config.node_id));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let node = Node::new(config, bus);
        let serving = tokio::spawn(ws_node::serve(node.clone(), listener));
        Self { url, node, serving }
    }

    async fn stop(self) {
        self.node.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.serving).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_against_a_node_has_zero_loss() {
    let node = TestNode::start().await;
    let mut cfg = RunConfig::small(&node.url).unwrap();
    cfg.conns = 60;
    cfg.rooms = 8;
    cfg.dist = Dist::Zipf(1.0);
    cfg.senders = 2;
    cfg.rate = 20.0;
    cfg.duration = Duration::from_secs(2);
    // Spread over source addresses as large runs do (127.0.0.0/8 is all loopback on Linux).
    cfg.src_ips = loadtest::target::parse_src_ips("127.0.0.2-127.0.0.5").unwrap();
    let report = run(cfg).await.unwrap();
    node.stop().await;
    println!("{}", report.table(|r| format!("lt-r{r}")));
    assert_eq!(report.connect.connected, 60, "{report:#?}");
    assert_eq!(report.connect.failed, 0);
    assert!(report.published > 500, "published {}", report.published);
    assert_eq!(report.acked, report.published);
    assert!(report.check.is_clean(), "{:#?}", report.check);
    assert!(report.ok);
    assert!(report.delivered >= report.published, "every publish reaches its sender at least");
    assert!(report.delivered_measured > 0 && report.latency_us.summary.count > 0);
    assert!(report.latency_us.summary.p50 > 0);
    assert_eq!(report.check.receivers, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_of_one_scenario_form_the_same_rooms_and_merge() {
    let node = TestNode::start().await;
    let mut reports = Vec::new();
    let mut runs = Vec::new();
    let shard = |k: usize| {
        let mut cfg = RunConfig::small(&node.url).unwrap();
        cfg.conns = 24;
        cfg.rooms = 3;
        cfg.shard = format!("{k}/2").parse().unwrap();
        cfg
    };
    runs.push(tokio::spawn(run(shard(0))));
    // Shard 1 on a one-thread runtime of its own, as `--threads 1` runs it: the collector
    // shares that thread with every connection.
    let one_thread = {
        let cfg = shard(1);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run(cfg))
        })
    };
    for r in runs {
        reports.push(r.await.unwrap().unwrap());
    }
    reports
        .push(tokio::task::spawn_blocking(|| one_thread.join()).await.unwrap().unwrap().unwrap());
    node.stop().await;
    for r in &reports {
        assert_eq!(r.connect.connected, 12);
        assert!(r.ok, "{:#?}", r.check);
    }
    let merged = loadtest::Report::merge(&reports).unwrap();
    assert_eq!(merged.connect.connected, 24);
    assert_eq!(merged.check.receivers, 24);
    assert_eq!(
        merged.latency_us.summary.count,
        reports.iter().map(|r| r.latency_us.summary.count).sum::<u64>()
    );
    // Senders sit in shard 0 (members 0 of rooms 0..3 are conns 0..3, split 0,2 | 1), so both
    // shards' receivers see messages from the other shard's senders.
    assert!(reports.iter().all(|r| r.delivered > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mode_holds_connections() {
    let node = TestNode::start().await;
    let mut cfg = RunConfig::small(&node.url).unwrap();
    cfg.conns = 50;
    cfg.rooms = 50;
    cfg.rate = 0.0;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_millis(500);
    let report = run(cfg).await.unwrap();
    node.stop().await;
    assert_eq!((report.connect.connected, report.held), (50, 50));
    assert_eq!(report.published, 0);
    assert_eq!(report.connect.latency_us.summary.count, 50);
    assert!(report.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_counted_by_cause() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = RunConfig::small(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
    cfg.conns = 5;
    cfg.rooms = 1;
    cfg.rate = 0.0;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::ZERO;
    let report = run(cfg).await.unwrap();
    assert_eq!(report.connect.failed, 5);
    assert_eq!(report.connect.failures.get("refused"), Some(&5), "{:?}", report.connect.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_node_drops_fail_the_run() {
    // The node's rate limit refuses most publishes: no receiver sees a gap in `seq`, but the
    // senders' missing acks do, and the run must not pass.
    let node = TestNode::with(Config {
        node_id: "lt-strict".into(),
        publish_rate: 5.0,
        publish_burst: 5.0,
        ..Config::default()
    })
    .await;
    let mut cfg = RunConfig::small(&node.url).unwrap();
    cfg.conns = 6;
    cfg.rooms = 2;
    cfg.rate = 40.0;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_secs(1);
    cfg.drain = Duration::from_millis(500);
    let report = run(cfg).await.unwrap();
    node.stop().await;
    println!("{}", report.table(|r| format!("lt-r{r}")));
    assert!(!report.ok);
    assert!(report.check.unacked > 0, "{:#?}", report.check);
    assert!(report.server_errors.get("rate_limited").copied().unwrap_or(0) > 0);
    assert!(report.check.failures.iter().all(|f| f.room < 2));
}
