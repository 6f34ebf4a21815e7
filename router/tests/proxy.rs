//! The upgrade proxy against real ws-nodes: placement, retries, refusals, limits, shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use shared::testkit::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn members_of_a_room_meet_on_the_placed_node_and_talk() {
    let s = Setup::start(3).await;
    let mut seen_nodes = std::collections::HashSet::new();
    let mut open = Vec::new();
    for r in 0..20 {
        let room = format!("room-{r}");
        let placed = s.placement(&room).await;
        let (mut a, wa) = join(&s.url(&room, "alice")).await;
        let (mut b, wb) = join(&s.url(&room, "bob")).await;
        assert_eq!(wa["node"], placed["node"], "{room}");
        assert_eq!(wb["node"], placed["node"], "{room}");
        seen_nodes.insert(wa["node"].as_str().unwrap().to_owned());
        a.publish(json!(r)).await;
        let m = b.recv_type("message").await;
        assert_eq!((m["from"].as_str(), m["body"].as_i64()), (Some("alice"), Some(r)));
        open.extend([a, b]);
    }
    assert_eq!(seen_nodes.len(), 3, "20 rooms spread over the 3 nodes");
    let text = s.metrics().await;
    assert!(text.contains("router_upgrades_total{outcome=\"ok\"} 40"), "{text}");
    assert!(s.metric("router_upgrade_seconds_count").await >= 40.0);
    match data_path() {
        DataPath::Proxy => {
            assert_eq!(s.metric("router_tunnels").await, 40.0);
            assert!(s.metric("router_bytes_to_client_total").await > 0.0);
        }
        handed => {
            // Handed off: no tunnel, not a byte through the router.
            let outcome = if handed == DataPath::Unix { "unix" } else { "in_process" };
            let name = format!("router_handoffs_total{{outcome=\"{outcome}\"}}");
            assert_eq!(s.metric(&name).await, 40.0, "{text}");
            assert_eq!(s.metric("router_tunnels").await, 0.0);
            assert_eq!(s.metric("router_bytes_to_client_total").await, 0.0);
        }
    }
}

#[tokio::test]
async fn bad_upgrade_requests_get_the_documented_errors() {
    let s = Setup::start(1).await;
    let addr = s.router.proxy_addr();
    let (status, body) = raw_upgrade(addr, "/ws?room=bad%20room&user=u", &UPGRADE).await;
    assert_eq!((status, body.trim()), (400, "room has a character outside [A-Za-z0-9._:-]"));
    let (status, body) = raw_upgrade(addr, "/ws?user=u", &UPGRADE).await;
    assert_eq!((status, body.trim()), (400, "room is missing"));
    let long = format!("/ws?room=r&user={}", "u".repeat(65));
    let (status, body) = raw_upgrade(addr, &long, &UPGRADE).await;
    assert_eq!((status, body.trim()), (400, "user is longer than 64 characters"));
    for bad in ["history=x", "history=1001", "history="] {
        let (status, body) = raw_upgrade(addr, &format!("/ws?room=r&user=u&{bad}"), &UPGRADE).await;
        assert_eq!((status, body.trim()), (400, "history must be a count from 0 to 1000"), "{bad}");
    }
    let (status, body) = raw_upgrade(addr, "/ws?room=r&user=u", &[]).await;
    assert_eq!((status, body.trim()), (426, "/ws takes only WebSocket upgrades"));
    let mut v12 = UPGRADE;
    v12[2] = ("sec-websocket-version", "12");
    let (status, body) = raw_upgrade(addr, "/ws?room=r&user=u", &v12).await;
    assert_eq!((status, body.trim()), (400, "sec-websocket-version must be 13"));
    let (status, _) = shared::testkit::http(addr, "POST", "/ws?room=r", &[], "").await.unwrap();
    assert_eq!(status, 405);
    let (status, _) = raw_upgrade(addr, "/elsewhere", &UPGRADE).await;
    assert_eq!(status, 404);
    let text = s.metrics().await;
    assert!(text.contains("router_upgrades_total{outcome=\"bad_request\"} 8"), "{text}");
    assert_eq!(s.node("node-a").node.connections(), 0, "nothing reached the node");
}

#[tokio::test]
async fn an_unreachable_owner_is_retried_on_the_next_node_of_the_ring() {
    // Slow probes: the dead node stays on the ring, so only the retry can save the join.
    let mut s = Setup::with(3, |c| c.health.interval = Duration::from_secs(3600)).await;
    let placed = s.placement("lobby").await;
    let owner = placed["node"].as_str().unwrap().to_owned();
    let fallback = placed["fallbacks"][0].as_str().unwrap().to_owned();
    s.node_mut(&owner).kill().await;
    let (_ws, w) = join(&s.url("lobby", "u1")).await;
    assert_eq!(w["node"], fallback.as_str());
    let text = s.metrics().await;
    let failed = match data_path() {
        DataPath::Proxy => "router_proxy_errors_total{cause=\"connect\"} 1",
        // A stopped node in this process refuses; a node process gone leaves a dead socket.
        DataPath::InProcess => "router_handoffs_total{outcome=\"refused\"} 1",
        DataPath::Unix => "router_handoffs_total{outcome=\"unreachable\"} 1",
    };
    assert!(text.contains(failed), "{text}");
    assert_eq!(s.metric("router_retries_total").await, 1.0);
}

#[tokio::test]
async fn a_node_at_its_limit_answers_503_and_the_next_node_takes_the_client() {
    let hub = ws_node::LocalHub::new();
    let full = TestNode::with_config(
        ws_node::Config { node_id: "full".into(), max_connections: 0, ..Default::default() },
        &hub,
    )
    .await;
    let spare = TestNode::start("spare", &hub).await;
    let router = router::Router::start(config(&[&full, &spare])).unwrap();
    for i in 0..10 {
        let url = format!("ws://{}/ws?room=r{i}&user=u", router.proxy_addr());
        let (_ws, w) = join(&url).await;
        assert_eq!(w["node"], "spare");
    }
    match data_path() {
        DataPath::Proxy => assert!(router.metrics().proxy_errors(router::Cause::Refused) >= 1),
        _ => assert!(router.metrics().handoffs(router::metrics::HandoffOutcome::Refused) >= 1),
    }
}

/// A stand-in for a node that turns upgrades away itself (another version, or an auth layer
/// in front of it): no ws-node answers 4xx to a request the router has already validated.
/// Healthy and ready to the probes; 403 with a reason on anything else, counted.
async fn refusing_node() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let count = count.clone();
                async move {
                    let mut r = if matches!(req.uri().path(), "/healthz" | "/readyz") {
                        shared::http::text(http::StatusCode::OK, "ok")
                    } else {
                        count.fetch_add(1, Ordering::SeqCst);
                        shared::http::text(http::StatusCode::FORBIDDEN, "user u is banned")
                    };
                    r.headers_mut().insert("x-ban-reason", "spam".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn a_node_that_refuses_the_client_is_answered_as_is_and_not_retried() {
    let hub = ws_node::LocalHub::new();
    let (gate_addr, refused) = refusing_node().await;
    let other = TestNode::start("other", &hub).await;
    let mut cfg = config(&[&other]);
    cfg.nodes.push(format!("gate={gate_addr}").parse().unwrap());
    let router = router::Router::start(cfg).unwrap();
    let admin_addr = router.admin_addr();
    let mut room = None;
    for i in 0..100 {
        let r = format!("r{i}");
        let (_, placed) =
            admin(admin_addr, "GET", &format!("/admin/placement?room={r}"), &[], "").await;
        if placed["node"] == "gate" {
            room = Some(r);
            break;
        }
    }
    let room = room.expect("a room the ring places on the refusing node");
    let mut head =
        format!("GET /ws?room={room}&user=u HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, close\r\n");
    for (k, v) in UPGRADE.iter().filter(|(k, _)| *k != "connection") {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = tokio::net::TcpStream::connect(router.proxy_addr()).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(STEP, conn.read_to_string(&mut answer)).await.unwrap().unwrap();
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 403 forbidden\r\n"), "{answer}");
    assert!(answer.contains("\r\nx-roomfleet-node: gate\r\n"), "{answer}");
    assert!(answer.contains("\r\nx-ban-reason: spam\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nuser u is banned\n"), "{answer}");
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert_eq!(other.node.connections(), 0, "a refusal is final: no other node is tried");
    let text = shared::testkit::http(admin_addr, "GET", "/metrics", &[], "").await.unwrap().1;
    assert!(text.contains("router_upgrades_total{outcome=\"node_rejected\"} 1"), "{text}");
    assert_eq!(shared::metrics::sample(&text, "router_retries_total"), Some(0.0));
}

#[tokio::test]
async fn when_every_candidate_fails_the_client_gets_502_or_503_with_a_reason() {
    let hub = ws_node::LocalHub::new();
    let full =
        |id: &str| ws_node::Config { node_id: id.into(), max_connections: 0, ..Default::default() };
    let a = TestNode::with_config(full("a"), &hub).await;
    let b = TestNode::with_config(full("b"), &hub).await;
    let router = router::Router::start(config(&[&a, &b])).unwrap();
    let (status, body) = raw_upgrade(router.proxy_addr(), "/ws?room=r&user=u", &UPGRADE).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("every node refused: node "), "{body}");
    assert!(body.contains("answered 503"), "{body}");

    let mut dead = Setup::with(2, |c| c.health.interval = Duration::from_secs(3600)).await;
    dead.node_mut("node-a").kill().await;
    dead.node_mut("node-b").kill().await;
    let (status, body) = raw_upgrade(dead.router.proxy_addr(), "/ws?room=r&user=u", &UPGRADE).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.starts_with("no node could take the upgrade: node "), "{body}");
    assert!(body.contains("connect:"), "{body}");
}

#[tokio::test]
async fn an_empty_ring_answers_503() {
    let s = Setup::start(0).await;
    let (status, body) = raw_upgrade(s.router.proxy_addr(), "/ws?room=r&user=u", &UPGRADE).await;
    assert_eq!((status, body.trim()), (503, "no healthy node in the ring; retry later"));
    let (status, _) = s.admin("GET", "/readyz", "").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_dead_node_leaves_the_ring_within_the_health_window_and_comes_back() {
    let mut s = Setup::with(3, |c| c.health = common::fast_health()).await;
    let placed = s.placement("lobby").await;
    let owner = placed["node"].as_str().unwrap().to_owned();
    let fallback = placed["fallbacks"][0].as_str().unwrap().to_owned();
    let (mut ws, w) = join(&s.url("lobby", "u1")).await;
    assert_eq!(w["node"], owner.as_str());
    let generation = placed["generation"].as_u64().unwrap();

    s.node_mut(&owner).kill().await;
    assert_eq!(ws.closed(STEP).await, Some(1001), "the node said goodbye");
    let window = common::fast_health().window() * 2;
    let membership = s.router.membership().clone();
    let id = shared::ids::NodeId::parse(&owner).unwrap();
    wait_until(window, "the dead node to leave the ring", || {
        let out = !membership.view().ring.contains(&id);
        async move { out }
    })
    .await;
    let now = s.placement("lobby").await;
    assert_eq!(now["node"], fallback.as_str());
    assert!(now["generation"].as_u64().unwrap() > generation);
    let (_ws, w) = join(&s.url("lobby", "u2")).await;
    assert_eq!(w["node"], fallback.as_str());
    assert!(s.metrics().await.contains("router_health_transitions_total{to=\"down\"} 1"));

    // The same node ID comes back at a new address: re-adding it through the admin API.
    let revived = TestNode::start(&owner, &s.hub).await;
    let body = json!({"id": owner, "addr": revived.addr.to_string()}).to_string();
    let (status, v) = s.admin("POST", "/admin/nodes", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.placement("lobby").await["node"], owner.as_str());
}

#[tokio::test]
async fn connection_caps_refuse_new_clients_and_keep_open_ones() {
    if data_path() == DataPath::Unix {
        return caps_count_only_the_clients_the_router_holds().await;
    }
    let s = Setup::with(1, |c| c.max_connections_per_ip = 2).await;
    let (mut a, _) = join(&s.url("r", "a")).await;
    let (_b, _) = join(&s.url("r", "b")).await;
    let (status, body) = raw_upgrade(s.router.proxy_addr(), "/ws?room=r&user=c", &UPGRADE).await;
    assert_eq!((status, body.trim()), (429, "too many connections from your address"));
    a.publish(json!(1)).await;
    assert_eq!(a.recv_type("message").await["body"], 1, "open tunnels keep working");
    drop(a);
    wait_until(STEP, "the closed client's slot to come back", || async {
        s.metric("router_connections").await == 1.0
    })
    .await;
    let (_c, _) = join(&s.url("r", "c")).await;

    let s = Setup::with(1, |c| c.max_connections = 1).await;
    let (_a, _) = join(&s.url("r", "a")).await;
    let (status, body) = raw_upgrade(s.router.proxy_addr(), "/ws?room=r&user=b", &UPGRADE).await;
    assert_eq!((status, body.trim()), (503, "router at its connection limit; retry"));
    assert!(s.metrics().await.contains("router_refused_total{reason=\"max_connections\"} 1"));
}

/// A client handed over a Unix socket is the node's alone (the router keeps no descriptor
/// and no slot of it), so the router's caps bound only what it holds: its file limit.
async fn caps_count_only_the_clients_the_router_holds() {
    let s = Setup::with(1, |c| c.max_connections_per_ip = 2).await;
    let mut open = Vec::new();
    for u in ["a", "b", "c"] {
        open.push(join(&s.url("r", u)).await.0);
    }
    assert_eq!(s.metric("router_connections").await, 0.0);
    assert_eq!(s.metric("router_handoffs_total{outcome=\"unix\"}").await, 3.0);
    open[0].publish(json!(1)).await;
    assert_eq!(open[2].recv_type("message").await["body"], 1);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_open_tunnels_finish() {
    let s = Setup::start(1).await;
    let (mut ws, _) = join(&s.url("r", "a")).await;
    let proxy = s.router.proxy_addr();
    let router = std::sync::Arc::new(s.router);
    let stopping = tokio::spawn({
        let router = router.clone();
        async move { router.shutdown().await }
    });
    wait_until(STEP, "the listener to close", || async move {
        tokio::net::TcpStream::connect(proxy).await.is_err()
    })
    .await;
    ws.publish(json!("still here")).await;
    assert_eq!(ws.recv_type("message").await["body"], "still here");
    ws.close().await;
    let clean = tokio::time::timeout(STEP, stopping).await.unwrap().unwrap();
    assert!(clean, "the tunnel ended within the grace");
}

#[tokio::test]
async fn the_end_of_the_grace_cuts_open_tunnels() {
    // Tunnels are the proxy's: this router proxies whatever the run's data path.
    let s = Setup::with(1, |c| {
        c.shutdown_grace = Duration::from_millis(200);
        c.in_process.clear();
        c.nodes.iter_mut().for_each(|n| n.handoff = None);
    })
    .await;
    let (mut ws, _) = join(&s.url("r", "a")).await;
    let clean = s.router.shutdown().await;
    assert!(!clean);
    assert_eq!(ws.closed(STEP).await, None, "cut without a close frame");
}

#[tokio::test]
async fn direct_connect_without_auth_names_the_placed_node_and_no_ticket() {
    let s = Setup::start(3).await;
    for r in 0..5 {
        let room = format!("direct-{r}");
        let placed = s.placement(&room).await;
        let path = format!("/connect?room={room}&user=ann");
        let (status, body) =
            shared::testkit::http(s.router.proxy_addr(), "GET", &path, &[], "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let d: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(d["node"], placed["node"], "{room}: the node the ring places it on");
        assert!(d["ticket"].is_null() && d["expires"].is_null(), "auth is off: {d}");
        let (_c, w) = join(d["url"].as_str().unwrap()).await;
        assert_eq!((&w["node"], &w["user"]), (&placed["node"], &json!("ann")));
    }
}
