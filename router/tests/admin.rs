//! The admin API: ring and placement output, run-time membership, drain, the token, and
//! the documented errors for bad input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn ring_lists_every_node_with_its_share() {
    let s = Setup::start(3).await;
    let (status, v) = s.admin("GET", "/admin/ring", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["generation"], 1);
    assert_eq!(v["policy"], "room");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let mut total = 0.0;
    for (n, node) in nodes.iter().zip(&s.nodes) {
        assert_eq!(n["id"], node.id.as_str());
        assert_eq!(n["addr"], node.addr.to_string());
        assert_eq!((n["weight"].as_u64(), n["healthy"].as_bool()), (Some(1), Some(true)));
        assert_eq!(n["draining"], false);
        let share = n["share"].as_f64().unwrap();
        assert!((0.2..0.5).contains(&share), "{n}");
        total += share;
    }
    assert!((total - 1.0).abs() < 1e-9);
    let (status, listed) = s.admin("GET", "/admin/nodes", "").await;
    assert_eq!(status, 200);
    assert_eq!(listed["nodes"], v["nodes"]);
}

#[tokio::test]
async fn placement_names_node_address_hash_generation_and_fallbacks() {
    let s = Setup::start(3).await;
    let (status, v) = s.admin("GET", "/admin/placement?room=lobby&ip=203.0.113.7", "").await;
    assert_eq!(status, 200, "{v}");
    let owner = v["node"].as_str().unwrap();
    assert_eq!(v["room"], "lobby");
    assert_eq!(v["addr"], s.node(owner).addr.to_string());
    assert_eq!(v["policy"], "room");
    assert_eq!(v["generation"], 1);
    assert_eq!(v["country"], Value::Null);
    assert_eq!(v["hash"], format!("{:016x}", router::Ring::hash_key("lobby")));
    let fallbacks: Vec<&str> =
        v["fallbacks"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(fallbacks.len(), 2);
    assert!(!fallbacks.contains(&owner));
    let (_ws, w) = join(&s.url("lobby", "u")).await;
    assert_eq!(w["node"], owner);
}

#[tokio::test]
async fn bad_admin_input_gets_400_with_a_json_reason() {
    let s = Setup::start(1).await;
    let cases: [(&str, &str, &str, &str); 12] = [
        ("GET", "/admin/placement", "", "room is missing"),
        ("GET", "/admin/placement?room=a%20b", "", "room has a character outside"),
        ("GET", "/admin/placement?room=r&ip=nope", "", "is not an IP address"),
        ("POST", "/admin/nodes", "not json", "body must be"),
        ("POST", "/admin/nodes", "{\"id\": \"x\"}", "missing field `addr`"),
        ("POST", "/admin/nodes", "{\"id\": \"x\", \"addr\": \"nowhere\"}", "is not HOST:PORT"),
        ("POST", "/admin/nodes", "{\"id\": \"x y\", \"addr\": \"h:1\"}", "node id has a character"),
        ("POST", "/admin/nodes", "{\"id\": \"x\", \"addr\": \"h:1\", \"weight\": 0}", "weight 0"),
        (
            "POST",
            "/admin/nodes",
            "{\"id\": \"x\", \"addr\": \"h:1\", \"weight\": -1}",
            "body must be",
        ),
        ("POST", "/admin/nodes", "{\"id\": \"x\", \"addr\": \"h:1\", \"w\": 1}", "unknown field"),
        ("DELETE", "/admin/nodes/bad%20id", "", "node id has a character"),
        ("POST", "/admin/nodes/bad%20id/drain", "", "node id has a character"),
    ];
    for (method, path, body, reason) in cases {
        let (status, v) = s.admin(method, path, body).await;
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        let got = v["error"].as_str().unwrap_or_else(|| panic!("JSON error for {path}: {v}"));
        assert!(got.contains(reason), "{method} {path} {body}: {got}");
    }
    let (status, v) = s.admin("DELETE", "/admin/nodes/ghost", "").await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown node ghost")));
    let (status, v) = s.admin("POST", "/admin/nodes/ghost/drain", "").await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown node ghost")));
    let (status, v) = s.admin("PUT", "/admin/ring", "").await;
    assert_eq!(status, 405, "{v}");
    let (status, v) = s.admin("GET", "/admin/nope", "").await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = s.admin("GET", "/admin/ring", "").await;
    assert_eq!((status, v["generation"].as_u64()), (200, Some(1)), "nothing changed");
}

#[tokio::test]
async fn nodes_come_and_go_at_run_time() {
    let mut s = Setup::start(1).await;
    let extra = TestNode::start("node-x", &s.hub).await;
    let body = json!({"id": "node-x", "addr": extra.addr.to_string(), "weight": 2}).to_string();
    let (status, v) = s.admin("POST", "/admin/nodes", &body).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!((v["generation"].as_u64(), v["node"]["source"].as_str()), (Some(2), Some("admin")));
    let share = v["node"]["share"].as_f64().unwrap();
    assert!(share > 0.5, "weight 2 of 3: {share}");
    let view = s.router.membership().view();
    let room = (0..100)
        .map(|i| format!("room-{i}"))
        .find(|r| view.ring.try_get(r).unwrap().as_str() == "node-x")
        .unwrap();
    let (_ws, w) = join(&s.url(&room, "u")).await;
    assert_eq!(w["node"], "node-x");
    let (status, _) = s.admin("POST", "/admin/nodes", &body).await;
    assert_eq!(status, 200, "posting again replaces");
    let (status, v) = s.admin("DELETE", "/admin/nodes/node-x", "").await;
    assert_eq!((status, v["removed"].as_str()), (200, Some("node-x")));
    assert_eq!(s.placement(&room).await["node"], "node-a");
    s.nodes.push(extra);
}

#[tokio::test]
async fn drain_moves_the_nodes_clients_elsewhere() {
    let s = Setup::with(2, |c| c.drain_window = Some(Duration::from_millis(100))).await;
    let rooms: Vec<String> = (0..40).map(|i| format!("room-{i}")).collect();
    let mut on_a = Vec::new();
    for room in &rooms {
        let (ws, w) = join(&s.url(room, "u")).await;
        if w["node"] == "node-a" {
            on_a.push((room.clone(), ws));
        }
    }
    assert!(on_a.len() >= 5, "enough rooms on node-a: {}", on_a.len());
    let (status, v) = s.admin("POST", "/admin/nodes/node-a/drain", "").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["node_answer"]["connections"], on_a.len());
    for (room, mut ws) in on_a {
        assert_eq!(ws.closed(STEP).await, Some(1012), "{room}");
        let (_ws, w) = join(&s.url(&room, "u")).await;
        assert_eq!(w["node"], "node-b", "{room} reconnects elsewhere");
    }
    let (_, ring) = s.admin("GET", "/admin/ring", "").await;
    assert_eq!(ring["nodes"][0]["draining"], true);
    assert_eq!(ring["nodes"][0]["share"], 0.0);
}

#[tokio::test]
async fn the_admin_token_guards_admin_but_not_probes() {
    let s = Setup::with(1, |c| c.admin_token = Some("s3cret".into())).await;
    let addr = s.router.admin_addr();
    let (status, v) = admin(addr, "GET", "/admin/ring", &[], "").await;
    assert_eq!((status, v["error"].as_str()), (401, Some("admin requires a bearer token")));
    let (status, _) =
        admin(addr, "GET", "/admin/ring", &[("authorization", "Bearer nope")], "").await;
    assert_eq!(status, 401);
    let (status, _) =
        admin(addr, "GET", "/admin/ring", &[("authorization", "Bearer s3cret")], "").await;
    assert_eq!(status, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin(addr, "GET", path, &[], "").await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn an_admin_listener_off_loopback_without_a_token_is_refused_before_binding() {
    let cfg = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "0.0.0.0:0".parse().unwrap(),
        ..router::Config::default()
    };
    let e = router::Router::start(cfg).unwrap_err();
    assert!(matches!(e, router::Error::Config(_)), "{e}");
}
