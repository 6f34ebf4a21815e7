//! A real node on port 0 and real WebSocket clients for the node's integration tests.
#![allow(dead_code)]

pub mod spanning;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use ws_node::{Bus, Config, LocalBus, Node};

pub const STEP: Duration = Duration::from_secs(5);

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

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects and reads the welcome frame.
    pub async fn join(url: &str) -> (Self, Value) {
        let mut c = Self::connect(url).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "first frame is welcome: {w}");
        (c, w)
    }

    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(STEP, connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Self { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    pub async fn publish(&mut self, body: Value) {
        self.send(serde_json::json!({"type": "publish", "body": body})).await;
    }

    /// The next text frame as JSON (pings are answered by tungstenite).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(STEP, self.ws.next()).await.expect("frame in time");
            match m {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame of `kind`, skipping others (presence, acks...).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code (None if no close frame).
    pub async fn closed(&mut self, within: Duration) -> Option<(CloseCode, String)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(f))) => return f.map(|f| (f.code, f.reason.to_string())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}
