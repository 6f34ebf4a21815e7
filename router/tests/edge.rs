//! The public edge with real clients: TLS with a test CA and a certificate reloaded on SIGHUP
//! under an open connection, and each default limit (header block 431, per-address 429,
//! invalid UTF-8 1007) tripping while an honest room goes on untouched.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::{STEP, Setup, UPGRADE, WsClient, raw_upgrade};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// A self-signed certificate for `localhost`, written as PEM files: (cert DER, paths).
fn write_cert(dir: &std::path::Path) -> (CertificateDer<'static>, router::tls::TlsFiles) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let files = router::tls::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    (ck.cert.der().clone(), files)
}

/// A TLS client trusting `ca`: the stream, and the certificate the server showed.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    try_tls_connect(addr, ca).await.unwrap_or_else(|e| panic!("handshake with the test CA: {e}"))
}

/// Like [`tls_connect`], with the handshake's failure (a server still showing another
/// certificate) as an error.
async fn try_tls_connect(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(STEP, TlsConnector::from(Arc::new(cfg)).connect(name, tcp))
        .await
        .expect("handshake in time")
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
    let shown = conn.peer_certificates().unwrap()[0].to_vec();
    Ok((tls, shown))
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn tls_handshakes_and_a_sighup_reload_keeps_open_connections() {
    let dir = std::env::temp_dir().join(format!("roomfleet-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, files) = write_cert(&dir);
    let s = Setup::with(2, |c| c.tls = Some(files.clone())).await;
    let addr = s.router.proxy_addr();
    assert!(s.router.is_tls());

    let (tls, shown) = tls_connect(addr, &first).await;
    assert_eq!(shown, first.to_vec());
    let url = format!("wss://localhost:{}/ws?room=secure&user=ann", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tls).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");

    let (second, _) = write_cert(&dir);
    let pid = std::process::id().to_string();
    let hup = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    shared::testkit::wait_until(STEP, "new handshakes to show the new certificate", || {
        let second = second.clone();
        // Until the reload, the server shows the first certificate, which fails here.
        async move { try_tls_connect(addr, &second).await.is_ok_and(|(_, c)| c == second.to_vec()) }
    })
    .await;

    ws.send(Message::text(json!({"type": "publish", "body": "across the reload"}).to_string()))
        .await
        .unwrap();
    let m = loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "message" {
            break v;
        }
    };
    assert_eq!(m["body"], "across the reload", "the connection opened before SIGHUP lives on");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two members of an honest room exchanging numbered messages; checks none is lost.
struct Honest {
    a: WsClient,
    b: WsClient,
    sent: u64,
}

impl Honest {
    async fn start(s: &Setup) -> Self {
        let (a, _) = WsClient::join(&s.url("honest", "alice")).await;
        let (b, _) = WsClient::join(&s.url("honest", "bob")).await;
        Self { a, b, sent: 0 }
    }

    async fn round(&mut self) {
        self.sent += 1;
        self.a.publish(json!(self.sent)).await;
        for c in [&mut self.a, &mut self.b] {
            assert_eq!(
                c.recv_type("message").await["body"],
                json!(self.sent),
                "honest room lost nothing"
            );
        }
    }
}

#[tokio::test]
async fn default_limits_trip_with_their_documented_answers() {
    let s = Setup::start(2).await;
    let addr = s.router.proxy_addr();
    let mut honest = Honest::start(&s).await;
    honest.round().await;

    // A 20 KiB header block: 431 (the default cap is 16 KiB).
    let big = "x".repeat(20 * 1024);
    let mut h: Vec<(&str, &str)> = UPGRADE.to_vec();
    h.push(("x-padding", &big));
    let (status, _) = raw_upgrade(addr, "/ws?room=r&user=u", &h).await;
    assert_eq!(status, 431);
    honest.round().await;

    // Invalid UTF-8 in a text frame: close 1007.
    let (mut bad, _) = WsClient::join(&s.url("other", "mallory")).await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x41], OpCode::Data(Data::Text), true);
    bad.send_raw(Message::Frame(frame)).await;
    assert_eq!(bad.closed(STEP).await, Some(1007));
    honest.round().await;

    // 1,000 connections from one address by default; the next one gets 429.
    let src: IpAddr = "127.0.0.7".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..1000 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((src, 0).into()).unwrap();
        held.push(sock.connect(addr).await.unwrap());
    }
    shared::testkit::wait_until(STEP, "the router to count the held connections", || async {
        s.metric("router_connections").await >= 1002.0
    })
    .await;
    let e = WsClient::connect_from(&s.url("r", "u"), src, &[]).await.err().expect("refused");
    assert!(e.contains("429"), "{e}");
    assert!(s.metric("router_refused_total{reason=\"per_ip\"}").await >= 1.0);
    honest.round().await;
    drop(held);
}
