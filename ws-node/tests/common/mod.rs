//! A real node on port 0 and real WebSocket clients for the node's integration tests.
#![allow(dead_code)]

pub mod spanning;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ws_node::{Bus, Config, LocalBus, Node};

use shared::testkit::process::RouterProcess;
use shared::testkit::{http, wait_until};

pub use shared::testkit::process::Process;
pub use shared::testkit::ws::{STEP, WsClient as Client};

/// A node serving on 127.0.0.1:0; shut down on drop.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub serving: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    pub async fn start(config: Config) -> Self {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::standalone(&config.node_id));
        Self::with_bus(config, bus).await
    }

    pub async fn with_bus(config: Config, bus: Arc<dyn Bus>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = Node::new(config, bus);
        let serving = Some(tokio::spawn(ws_node::serve(node.clone(), listener)));
        Self { addr, node, serving }
    }

    pub fn url(&self, room: &str, user: &str) -> String {
        format!("ws://{}/ws?room={room}&user={user}", self.addr)
    }

    pub async fn metrics(&self) -> String {
        shared::testkit::http(self.addr, "GET", "/metrics", &[], "").await.unwrap().1
    }

    pub async fn metric(&self, name: &str) -> f64 {
        shared::metrics::sample(&self.metrics().await, name).unwrap_or(0.0)
    }

    pub async fn stop(mut self) {
        self.node.shutdown();
        if let Some(h) = self.serving.take() {
            tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("node stops in time")
                .unwrap();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.node.shutdown();
    }
}

/// A test config: small limits where tests trip them, fast timers.
pub fn config(id: &str) -> Config {
    Config { node_id: id.into(), publish_rate: 1000.0, publish_burst: 1000.0, ..Config::default() }
}

/// The real `ws-node` binary on a free port, for tests about processes; killed on drop.
pub struct NodeProcess {
    pub port: u16,
    pub process: Process,
}

impl NodeProcess {
    /// Runs `ws-node --listen 127.0.0.1:PORT ARGS` with `envs`, after `shell` (for example
    /// `ulimit -n 64`) when given, and waits until it answers `/healthz`.
    pub async fn start(args: &[&str], envs: &[(&str, String)], shell: Option<&str>) -> Self {
        let port = shared::testkit::free_port();
        let bin = env!("CARGO_BIN_EXE_ws-node");
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = match shell {
            Some(pre) => {
                let mut c = std::process::Command::new("bash");
                c.args(["-c", &format!("{pre} && exec \"$0\" \"$@\""), bin, "--listen", &listen]);
                c
            }
            None => {
                let mut c = std::process::Command::new(bin);
                c.args(["--listen", &listen]);
                c
            }
        };
        cmd.args(args).envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        let p = Self { port, process: Process::spawn(cmd) };
        let addr = p.addr();
        shared::testkit::wait_until(STEP, "ws-node to serve", || async move {
            shared::testkit::http(addr, "GET", "/healthz", &[], "").await.is_ok()
        })
        .await;
        p
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self, room: &str, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?room={room}&user={user}", self.port)
    }

    /// One sample of the node's `/metrics` (0 when absent or unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = shared::testkit::http(self.addr(), "GET", "/metrics", &[], "").await;
        text.ok().and_then(|(_, t)| shared::metrics::sample(&t, name)).unwrap_or(0.0)
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits for the process to exit.
    pub async fn exit(self) -> std::process::ExitStatus {
        self.process.exit().await
    }
}

/// The headers of a well-formed WebSocket upgrade, for requests sent as plain HTTP.
pub const UPGRADE: [(&str, &str); 4] = [
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Flags of every node here: the traffic these tests make stays under the rate limit.
const FAST: [&str; 4] = ["--publish-rate", "1000", "--publish-burst", "1000"];

/// A node process that takes clients: with `--redis` it does only once it reached Redis.
pub async fn node(args: &[&str]) -> NodeProcess {
    let all: Vec<&str> = FAST.iter().chain(args).copied().collect();
    let n = NodeProcess::start(&all, &[], None).await;
    let addr = n.addr();
    wait_until(STEP, "the node to be ready", || async move {
        http(addr, "GET", "/readyz", &[], "").await.is_ok_and(|(s, _)| s == 200)
    })
    .await;
    n
}

/// node-a and node-b on Redis at `url`, run with `extra`. They wait 3 s (not 0.5) for each
/// other's sync before taking one another for dead: on a loaded test machine a slow but
/// live peer would otherwise be pruned, splitting the room into two epochs.
pub async fn pair(url: &str, extra: &[&str]) -> (NodeProcess, NodeProcess) {
    let flags = [&["--redis", url, "--span-timeout", "3"][..], extra].concat();
    let a = node(&[&["--node-id", "node-a"][..], &flags[..]].concat()).await;
    let b = node(&[&["--node-id", "node-b"][..], &flags[..]].concat()).await;
    (a, b)
}

/// A router with `nodes` in its ring, probing fast, once all of them are placeable.
pub async fn router(nodes: &[(&str, &NodeProcess)]) -> RouterProcess {
    let specs: Vec<String> = nodes.iter().map(|(id, n)| format!("{id}={}", n.addr())).collect();
    let mut args = vec!["--health-interval", "0.2", "--health-timeout", "1"];
    for s in &specs {
        args.extend(["--node", s.as_str()]);
    }
    let r = RouterProcess::start(&args).await;
    wait_until(STEP, "every node placeable", || async { r.placeable().await.len() == nodes.len() })
        .await;
    r
}
