//! A real node on port 0 and real WebSocket clients for the node's integration tests.
#![allow(dead_code)]

pub mod spanning;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ws_node::{Bus, Config, LocalBus, Node};

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
