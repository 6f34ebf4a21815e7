//! Same-host handoff with real node processes: `ws-node --handoff unix:PATH` takes the
//! clients a router hands over and the router keeps none of them; a draining node gives a
//! client back and the next node takes it; a node whose socket is gone is proxied; and a
//! router at its open-file limit keeps taking clients it hands off.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use serde_json::json;
use shared::testkit::process::Process;
use shared::testkit::{free_port, http, socket_path, wait_until};

/// A `ws-node` process on a free port, with its handoff socket when asked.
struct NodeProcess {
    id: String,
    addr: SocketAddr,
    handoff: PathBuf,
    _process: Process,
}

impl NodeProcess {
    async fn start(id: &str, handoff: bool) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let path = socket_path(id);
        let mut args = vec![
            "--listen".to_owned(),
            addr.to_string(),
            "--node-id".to_owned(),
            id.to_owned(),
            "--publish-rate".to_owned(),
            "1000".to_owned(),
        ];
        if handoff {
            args.extend(["--handoff".to_owned(), format!("unix:{}", path.display())]);
        }
        let process = Process::bin("ws-node", &args);
        // The node binds its handoff socket before it serves: ready means both are up.
        wait_until(STEP * 3, "the node process to be ready", || async move {
            http(addr, "GET", "/readyz", &[], "").await.is_ok_and(|(s, _)| s == 200)
        })
        .await;
        Self { id: id.to_owned(), addr, handoff: path, _process: process }
    }

    /// `--node ID=ADDR,handoff=PATH` (the path whether or not the node listens there).
    fn spec(&self) -> String {
        format!("{}={},handoff={}", self.id, self.addr, self.handoff.display())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = http(self.addr, "GET", "/metrics", &[], "").await.unwrap().1;
        shared::metrics::sample(&text, name).unwrap_or(0.0)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.handoff);
    }
}

/// A router in this process in front of `nodes`; probes that never take a node off the
/// ring during a test (so a draining node is still placed).
fn router(nodes: &[&NodeProcess]) -> router::Router {
    let mut cfg = config(&[]);
    cfg.nodes = nodes.iter().map(|n| n.spec().parse().unwrap()).collect();
    cfg.health.interval = std::time::Duration::from_secs(3600);
    router::Router::start(cfg).unwrap()
}

async fn metric(r: &router::Router, name: &str) -> f64 {
    let text = http(r.admin_addr(), "GET", "/metrics", &[], "").await.unwrap().1;
    shared::metrics::sample(&text, name).unwrap_or(0.0)
}

/// A room `/admin/placement` puts on `node`.
async fn room_on(r: &router::Router, node: &str) -> String {
    for i in 0..200 {
        let room = format!("r{i}");
        let (_, p) =
            admin(r.admin_addr(), "GET", &format!("/admin/placement?room={room}"), &[], "").await;
        if p["node"] == node {
            return room;
        }
    }
    panic!("no room of 200 is placed on {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_take_the_clients_and_the_router_keeps_none() {
    let (a, b) =
        (NodeProcess::start("node-a", true).await, NodeProcess::start("node-b", true).await);
    let r = router(&[&a, &b]);
    let mut open = Vec::new();
    for i in 0..10 {
        let room = format!("room-{i}");
        let (_, placed) =
            admin(r.admin_addr(), "GET", &format!("/admin/placement?room={room}"), &[], "").await;
        let url = |u: &str| format!("ws://{}/ws?room={room}&user={u}", r.proxy_addr());
        let (mut x, wx) = join(&url("x")).await;
        let (mut y, wy) = join(&url("y")).await;
        assert_eq!((&wx["node"], &wy["node"]), (&placed["node"], &placed["node"]), "{room}");
        assert_eq!(wy["members"].as_array().map(Vec::len), Some(2), "{wy}");
        x.publish(json!(i)).await;
        let m = y.recv_type("message").await;
        assert_eq!((m["from"].as_str(), m["body"].as_i64()), (Some("x"), Some(i)));
        assert_eq!(x.recv_type("message").await["body"], i, "the sender gets its own message");
        open.extend([x, y]);
    }
    assert_eq!(metric(&r, "router_handoffs_total{outcome=\"unix\"}").await, 20.0);
    assert_eq!(metric(&r, "router_upgrades_total{outcome=\"ok\"}").await, 20.0);
    assert_eq!(metric(&r, "router_connections").await, 0.0, "no client is held by the router");
    assert_eq!(metric(&r, "router_tunnels").await, 0.0);
    let taken = a.metric("wsnode_handoffs_total{outcome=\"taken\"}").await
        + b.metric("wsnode_handoffs_total{outcome=\"taken\"}").await;
    assert_eq!(taken, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_gives_the_client_back_and_the_next_node_takes_it() {
    let (a, b) =
        (NodeProcess::start("node-a", true).await, NodeProcess::start("node-b", true).await);
    let r = router(&[&a, &b]);
    let room = room_on(&r, "node-a").await;
    // The drain must come after the router's first probe round (the next is an hour away):
    // a probe that saw it would take node-a off the ring, and nothing would be handed back.
    // A router over node-a alone, for the end. Both must have finished their first probe
    // round (the next is an hour away) before the drain: a probe that saw the drain would
    // take node-a off their rings, and nothing would be handed back.
    let only = router(&[&a]);
    for router in [&r, &only] {
        wait_until(std::time::Duration::from_secs(10), "a router's first probe round", || async {
            metric(router, "router_probe_rounds_total").await >= 1.0
        })
        .await;
    }
    let (status, _) = http(a.addr, "POST", "/admin/drain", &[], "").await.unwrap();
    assert_eq!(status, 202);
    let (_ws, w) = join(&format!("ws://{}/ws?room={room}&user=u", r.proxy_addr())).await;
    assert_eq!(w["node"], "node-b", "the ring's next node: {w}");
    assert_eq!(a.metric("wsnode_handoffs_total{outcome=\"refused\"}").await, 1.0);
    assert_eq!(metric(&r, "router_handoffs_total{outcome=\"refused\"}").await, 1.0);
    assert_eq!(metric(&r, "router_handoffs_total{outcome=\"unix\"}").await, 1.0);
    assert_eq!(metric(&r, "router_retries_total").await, 1.0);

    // With no other node the refused client is proxied, and gets the node's own answer.
    let path = format!("/ws?room={room}&user=v");
    let (status, body) = raw_upgrade(only.proxy_addr(), &path, &UPGRADE).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("every node refused"), "{body}");
    assert_eq!(metric(&only, "router_handoffs_total{outcome=\"refused\"}").await, 1.0);
    assert_eq!(metric(&only, "router_proxy_errors_total{cause=\"node_5xx\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_handoff_socket_is_proxied() {
    let a = NodeProcess::start("node-a", false).await;
    let r = router(&[&a]);
    let (mut ws, w) = join(&format!("ws://{}/ws?room=lobby&user=u", r.proxy_addr())).await;
    assert_eq!(w["node"], "node-a");
    ws.publish(json!("through the proxy")).await;
    assert_eq!(ws.recv_type("message").await["body"], "through the proxy");
    assert_eq!(metric(&r, "router_handoffs_total{outcome=\"unreachable\"}").await, 1.0);
    assert_eq!(metric(&r, "router_tunnels").await, 1.0);
}

/// Far more clients than a router under `ulimit -n 64` could proxy (two descriptors each):
/// handed off, each costs it a descriptor only while it is being placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_at_a_low_file_limit_keeps_handing_off_clients() {
    let node = NodeProcess::start("node-a", true).await;
    let router = LimitedRouter::start(&node.spec(), 0).await;
    let mut open = Vec::new();
    for i in 0..150 {
        let (ws, w) = join(&router.url("big", &format!("u{i}"))).await;
        assert_eq!(w["node"], "node-a");
        open.push(ws);
    }
    open[0].publish(json!("all here")).await;
    assert_eq!(open[149].recv_type("message").await["body"], "all here");
    let text = router.get("/metrics").await;
    let got = |name: &str| shared::metrics::sample(&text, name).unwrap_or(0.0);
    assert_eq!(got("router_handoffs_total{outcome=\"unix\"}"), 150.0, "{text}");
    assert_eq!(got("router_refused_total{reason=\"fd_limit\"}"), 0.0, "{text}");
    assert_eq!(node.metric("wsnode_connections").await, 150.0);
}
