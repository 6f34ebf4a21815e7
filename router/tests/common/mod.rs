//! Real ws-nodes and a real router on port 0, WebSocket clients, and admin calls, for the
//! router's integration tests.
#![allow(dead_code)]

mod limited;
#[allow(unused_imports)]
pub use limited::LimitedRouter;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use router::{Config, HealthConfig, NodeSpec, Router};
use serde_json::Value;
pub use shared::testkit::DataPath;
pub use shared::testkit::ws::{STEP, WsClient};
use ws_node::{LocalBus, LocalHub, Node};

/// Connects through `url` and reads the welcome frame.
pub async fn join(url: &str) -> (WsClient, Value) {
    WsClient::join(url).await
}

/// The data path of this run's routers (`ROOMFLEET_TEST_DATA_PATH`; proxy by default).
pub fn data_path() -> DataPath {
    shared::testkit::data_path(DataPath::Proxy)
}

/// A ws-node on 127.0.0.1:0, and on a handoff socket when the run uses them; shut down on
/// drop.
pub struct TestNode {
    pub id: String,
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    /// Its `--handoff` socket, in the `unix` data path.
    pub handoff: Option<std::path::PathBuf>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    pub async fn start(id: &str, hub: &LocalHub) -> Self {
        Self::with_config(ws_node::Config { node_id: id.into(), ..ws_node::Config::default() }, hub)
            .await
    }

    pub async fn with_config(config: ws_node::Config, hub: &LocalHub) -> Self {
        let bus: Arc<LocalBus> = Arc::new(hub.bus(&config.node_id));
        Self::with_bus(config, bus).await
    }

    /// A node on a bus of the test's choice (a `RedisBus` on the test's Redis).
    pub async fn with_bus(config: ws_node::Config, bus: Arc<dyn ws_node::Bus>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = config.node_id.clone();
        let node = Node::new(config, bus);
        let serving = Some(tokio::spawn(ws_node::serve(node.clone(), listener)));
        let handoff = (data_path() == DataPath::Unix).then(|| {
            let path = shared::testkit::socket_path(&id);
            let l = ws_node::handoff::bind(&path).expect("bind the handoff socket");
            tokio::spawn(ws_node::serve_handoff(node.clone(), l));
            path
        });
        Self { id, addr, node, handoff, serving }
    }

    /// A node with `config` on a `RedisBus` of `redis_url`, once it is connected.
    pub async fn on_redis(
        config: ws_node::Config,
        redis_url: &str,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        let bus =
            ws_node::RedisBus::start(&config.node_id, ws_node::RedisConfig::new(redis_url), stop)
                .unwrap();
        let b = bus.clone();
        shared::testkit::wait_until(STEP, "the node to connect to redis", || {
            let b = b.clone();
            async move { b.is_connected() }
        })
        .await;
        Self::with_bus(config, bus).await
    }

    pub fn spec(&self) -> NodeSpec {
        match &self.handoff {
            Some(p) => format!("{}={},handoff={}", self.id, self.addr, p.display()),
            None => format!("{}={}", self.id, self.addr),
        }
        .parse()
        .unwrap()
    }

    /// Stops the node the hard way for a router: its listener and connections go away.
    pub async fn kill(&mut self) {
        self.node.shutdown();
        if let Some(h) = self.serving.take() {
            let _ = tokio::time::timeout(STEP, h).await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.node.shutdown();
        if let Some(p) = &self.handoff {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Fast probes so health tests finish quickly.
pub fn fast_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        fall: 2,
        rise: 1,
    }
}

/// Probes tolerant of a loaded test machine: no node leaves unless a test stops it.
pub fn steady_health() -> HealthConfig {
    HealthConfig { timeout: Duration::from_secs(2), fall: 5, ..HealthConfig::default() }
}

/// A router config for `nodes` in this run's data path.
pub fn config(nodes: &[&TestNode]) -> Config {
    let in_process = match data_path() {
        DataPath::InProcess => nodes
            .iter()
            .map(|n| (n.id.clone(), router::InProcess(ws_node::taker(&n.node))))
            .collect(),
        _ => Default::default(),
    };
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        nodes: nodes.iter().map(|n| n.spec()).collect(),
        health: steady_health(),
        shutdown_grace: Duration::from_secs(5),
        in_process,
        ..Config::default()
    }
}

/// N nodes on one hub and a router in front of them.
pub struct Setup {
    pub hub: LocalHub,
    pub nodes: Vec<TestNode>,
    pub router: Router,
}

impl Setup {
    pub async fn start(n: usize) -> Self {
        Self::with(n, |_| {}).await
    }

    pub async fn with(n: usize, tweak: impl FnOnce(&mut Config)) -> Self {
        let hub = LocalHub::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(TestNode::start(&format!("node-{}", (b'a' + i as u8) as char), &hub).await);
        }
        let mut cfg = config(&nodes.iter().collect::<Vec<_>>());
        tweak(&mut cfg);
        let router = Router::start(cfg).unwrap();
        Self { hub, nodes, router }
    }

    pub fn url(&self, room: &str, user: &str) -> String {
        format!("ws://{}/ws?room={room}&user={user}", self.router.proxy_addr())
    }

    pub fn node(&self, id: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn node_mut(&mut self, id: &str) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// An admin call; the status and the body as JSON (or as a JSON string when not JSON).
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        admin(self.router.admin_addr(), method, path, &[], body).await
    }

    pub async fn placement(&self, room: &str) -> Value {
        let (status, v) = self.admin("GET", &format!("/admin/placement?room={room}"), "").await;
        assert_eq!(status, 200, "{v}");
        v
    }

    pub async fn metrics(&self) -> String {
        shared::testkit::http(self.router.admin_addr(), "GET", "/metrics", &[], "").await.unwrap().1
    }

    pub async fn metric(&self, name: &str) -> f64 {
        shared::metrics::sample(&self.metrics().await, name).unwrap_or(0.0)
    }
}

pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let (status, text) = shared::testkit::http(addr, method, path, headers, body).await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// A raw upgrade request with the given extra header lines; the status and body.
pub async fn raw_upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    shared::testkit::http(addr, "GET", path, headers, "").await.unwrap()
}

/// The headers of a valid WebSocket upgrade.
pub const UPGRADE: [(&str, &str); 4] = [
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];
