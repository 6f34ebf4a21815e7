//! TLS from the router to the nodes, with real binaries: a router with `--node-tls-ca`
//! reaches a node serving `--tls-cert/--tls-key` and its clients are welcomed; a node that
//! speaks plain TCP behind such a router fails the upgrade with a reason naming TLS and
//! is taken off the ring by the probes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use shared::testkit::process::Process;
use shared::testkit::ws::WsClient;
use shared::testkit::{free_port, http, wait_until};

const STEP: Duration = Duration::from_secs(15);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`: (cert.pem, key.pem). The
/// certificate is its own CA for `--node-tls-ca`.
fn write_cert(dir: &Path) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("node.pem"), dir.join("node.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

fn node(id: &str, tls: Option<(&str, &str)>) -> (Process, u16) {
    let port = free_port();
    let mut args =
        vec!["--listen".into(), format!("127.0.0.1:{port}"), "--node-id".into(), id.into()];
    if let Some((cert, key)) = tls {
        args.extend(["--tls-cert".into(), cert.into(), "--tls-key".into(), key.into()]);
    }
    (Process::bin("ws-node", &args), port)
}

struct RouterProc {
    _p: Process,
    port: u16,
    admin: SocketAddr,
}

fn router(node: &str, node_port: u16, ca: &str, health_fall: &str) -> RouterProc {
    let (port, admin) = (free_port(), free_port());
    let args = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        &format!("127.0.0.1:{admin}"),
        // An API port of its own: two routers of this test on the default would collide.
        "--api",
        "127.0.0.1:0",
        "--node",
        &format!("{node}=127.0.0.1:{node_port}"),
        "--node-tls-ca",
        ca,
        "--health-interval",
        "0.2",
        "--health-fall",
        health_fall,
    ];
    RouterProc {
        _p: Process::bin("router", &args.map(String::from)),
        port,
        admin: ([127, 0, 0, 1], admin).into(),
    }
}

async fn node_healthy(r: &RouterProc, id: &str) -> Option<bool> {
    let (status, body) = http(r.admin, "GET", "/admin/ring", &[], "").await.ok()?;
    let ring: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    ring["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["healthy"].as_bool()
}

/// A raw upgrade through the router; its status and body.
async fn upgrade(r: &RouterProc) -> Option<(u16, String)> {
    let headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    http(([127, 0, 0, 1], r.port).into(), "GET", "/ws?room=r&user=u", &headers, "").await.ok()
}

#[tokio::test]
async fn a_router_with_node_tls_ca_reaches_tls_nodes_and_refuses_plain_ones() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("roomfleet-node-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (cert, key) = write_cert(&dir.0);

    // A TLS node behind a router that dials it over TLS: welcome through the router.
    let (_tls_node, tls_port) = node("tls-a", Some((&cert, &key)));
    let r = router("tls-a", tls_port, &cert, "3");
    let url = format!("ws://127.0.0.1:{}/ws?room=secure&user=ann", r.port);
    wait_until(STEP, "a client welcomed through the router", || {
        let url = url.clone();
        async move { WsClient::connect(&url).await.is_ok() }
    })
    .await;
    let (mut ann, w) = WsClient::join(&url).await;
    assert_eq!(w["node"], "tls-a", "{w}");
    let (mut bob, _) =
        WsClient::join(&format!("ws://127.0.0.1:{}/ws?room=secure&user=bob", r.port)).await;
    ann.publish(serde_json::json!("over TLS to the node")).await;
    assert_eq!(bob.recv_type("message").await["body"], "over TLS to the node");
    assert_eq!(node_healthy(&r, "tls-a").await, Some(true), "probes pass over TLS");
    let (status, body) =
        http(([127, 0, 0, 1], r.port).into(), "GET", "/connect?room=secure&user=cy", &[], "")
            .await
            .unwrap();
    let direct: Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    let want = format!("wss://127.0.0.1:{tls_port}/ws?");
    assert!(direct["url"].as_str().unwrap_or_default().starts_with(&want), "direct URL: {body}");

    // A plain node behind a router that wants TLS. With probes that never give up, the
    // upgrade itself fails and says why.
    let (_plain_node, plain_port) = node("plain-b", None);
    let patient = router("plain-b", plain_port, &cert, "1000");
    wait_until(STEP, "the router to answer", || async { upgrade(&patient).await.is_some() }).await;
    let (status, body) = upgrade(&patient).await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS handshake"), "the refusal names TLS: {body}");

    // With ordinary probes, the plain node is reported unhealthy.
    let strict = router("plain-b", plain_port, &cert, "2");
    wait_until(STEP, "plain-b reported unhealthy", || async {
        node_healthy(&strict, "plain-b").await == Some(false)
    })
    .await;
}
