//! A WebSocket test client speaking the roomfleet protocol, for tests that go through a
//! node or a router: join and read the welcome, publish, read frames by type, await the close.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long one step (connect, one frame, a close) may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens connections to `url` (at most `max`) until the server refuses one. Then checks
/// that the first one still chats and that closing a few lets a new client in again: what
/// a server at its file or connection limit must do. Returns the refusal.
pub async fn fill_until_refused(url: &str, max: usize) -> String {
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() < max, "nobody was refused within {max} connections");
        match WsClient::connect(url).await {
            Ok(c) => open.push(c),
            Err(e) => break e,
        }
    };
    assert!(open.len() > 5, "only {} clients before the limit", open.len());
    let first = open.first_mut().expect("one client");
    let _ = first.recv_type("welcome").await;
    first.publish(serde_json::json!("still here")).await;
    assert_eq!(first.recv_type("message").await["body"], "still here", "open clients keep working");
    open.truncate(3);
    crate::testkit::wait_until(STEP, "room for a new client", || async {
        WsClient::connect(url).await.is_ok()
    })
    .await;
    refused
}

/// One client connection.
pub struct WsClient {
    pub ws: Ws,
}

impl WsClient {
    /// Opens the connection; the handshake error (an HTTP refusal included) as text.
    pub async fn connect(url: &str) -> Result<Self, String> {
        match tokio::time::timeout(STEP, connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Self { ws }),
            Ok(Err(e)) => Err(format!("connect {url}: {e}")),
            Err(_) => Err(format!("connect {url}: timed out")),
        }
    }

    /// Connects with extra request headers (`authorization`, `sec-websocket-protocol`);
    /// the client and the 101's headers, or the refusal as text.
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Self, http::HeaderMap), String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            req.headers_mut().insert(name, v.parse().map_err(|_| format!("header {k}"))?);
        }
        match tokio::time::timeout(STEP, connect_async(req)).await {
            Ok(Ok((ws, resp))) => Ok((Self { ws }, resp.headers().clone())),
            Ok(Err(e)) => Err(format!("connect {url}: {e}")),
            Err(_) => Err(format!("connect {url}: timed out")),
        }
    }

    /// Connects from source address `src` (any 127.x.y.z: the server sees it as the peer)
    /// with extra request headers, such as a forwarded-for a proxy would add.
    pub async fn connect_from(
        url: &str,
        src: std::net::IpAddr,
        headers: &[(&str, &str)],
    ) -> Result<Self, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            req.headers_mut().insert(name, v.parse().map_err(|_| format!("header {k}"))?);
        }
        let host = req.uri().host().unwrap_or("127.0.0.1").to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        let dial = async {
            let dest: std::net::SocketAddr =
                format!("{host}:{port}").parse().map_err(|e| format!("{host}:{port}: {e}"))?;
            let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            sock.bind((src, 0).into()).map_err(|e| format!("bind {src}: {e}"))?;
            let stream = sock.connect(dest).await.map_err(|e| format!("connect {dest}: {e}"))?;
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
                .await
                .map_err(|e| format!("connect {url}: {e}"))
        };
        match tokio::time::timeout(STEP, dial).await {
            Ok(Ok((ws, _))) => Ok(Self { ws }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("connect {url}: timed out")),
        }
    }

    /// Direct connect: asks the router at `router` (`GET /connect?{query}`, the query an
    /// upgrade would carry) where the room lives, then joins the node URL it answers, ticket
    /// included; the welcome and the router's answer.
    pub async fn join_direct(router: std::net::SocketAddr, query: &str) -> (Self, Value, Value) {
        let path = format!("/connect?{query}");
        let (status, body) = super::http(router, "GET", &path, &[], "")
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("the /connect answer is JSON");
        let url = answer["url"].as_str().expect("the answer names a url").to_string();
        let (c, w) = Self::join(&url).await;
        (c, w, answer)
    }

    /// Connects and reads the `welcome` frame; panics with the reason otherwise.
    pub async fn join(url: &str) -> (Self, Value) {
        let mut c = Self::connect(url).await.unwrap_or_else(|e| panic!("{e}"));
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "first frame is welcome: {w}");
        (c, w)
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send a frame");
    }

    pub async fn publish(&mut self, body: Value) {
        self.send_json(&serde_json::json!({"type": "publish", "body": body})).await;
    }

    /// The next text frame as JSON (pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            match tokio::time::timeout(STEP, self.ws.next()).await.expect("a frame in time") {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).expect("frames are JSON");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame of type `kind`, skipping others (presence, acks...).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the server closes; the close code, `None` when it closed without one.
    pub async fn closed(&mut self, within: Duration) -> Option<u16> {
        self.closed_with_reason(within).await.map(|(code, _)| code)
    }

    /// Like [`WsClient::closed`], with the close reason text.
    pub async fn closed_with_reason(&mut self, within: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(f))) => {
                    return f.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends any frame as it is (binary, oversize, malformed text).
    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send a frame");
    }

    /// Sends a close frame and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(STEP, async { while self.ws.next().await.is_some() {} }).await;
    }
}
