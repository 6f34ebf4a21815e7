//! The server API over real HTTP against a real router and ws-nodes: publish at the owner
//! with the room's next `seq` (one node and spanning), idempotent retries, keys, the JSON
//! errors, broadcast, room and member reads, history, and removing a member (4003).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ORDERS: &str = "orders-secret-0123456789";
const JUDGE: &str = "judge-secret-0123456789";

async fn with_api(n: usize) -> Setup {
    Setup::with(n, |c| {
        c.api = Some("127.0.0.1:0".parse().unwrap());
        c.api_keys = vec![
            format!("orders={ORDERS}").parse().unwrap(),
            format!("judge={JUDGE}").parse().unwrap(),
        ];
    })
    .await
}

fn api_addr(s: &Setup) -> SocketAddr {
    s.router.api_addr().expect("the API listens")
}

/// One API call with `key` as the bearer; the status and the JSON body.
async fn call(s: &Setup, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    admin(api_addr(s), method, path, &headers, body).await
}

async fn publish(s: &Setup, room: &str, body: Value) -> (u16, Value) {
    call(s, "POST", &format!("/api/rooms/{room}/publish"), Some(ORDERS), &body.to_string()).await
}

#[tokio::test]
async fn a_publish_reaches_every_member_at_the_owner_with_the_next_seq_once_per_id() {
    let s = with_api(3).await;
    let owner = s.placement("chat:1").await["node"].as_str().unwrap().to_string();
    let (mut ann, _) = join(&s.url("chat:1", "ann")).await;
    let (mut bob, _) = join(&s.url("chat:1", "bob")).await;
    ann.recv_type("presence").await;
    ann.publish(json!("hello")).await;
    assert_eq!(ann.recv_type("message").await["seq"], 1);
    assert_eq!(bob.recv_type("message").await["seq"], 1);

    let (status, v) = publish(&s, "chat:1", json!({"body": {"shipped": 42}, "id": "o-1"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"seq": 2, "node": owner}));
    for c in [&mut ann, &mut bob] {
        let m = c.recv_type("message").await;
        assert_eq!((m["seq"].as_u64(), m["from"].as_str()), (Some(2), Some("orders")), "{m}");
        assert_eq!((m["body"]["shipped"].as_u64(), m["id"].as_str()), (Some(42), Some("o-1")));
    }
    // A retry with the same id: the first answer, and nothing delivered again.
    let (status, again) =
        publish(&s, "chat:1", json!({"body": {"shipped": 42}, "id": "o-1"})).await;
    assert_eq!((status, &again), (200, &v));
    let (_, named) = publish(&s, "chat:1", json!({"body": "x", "from": "shop-bot"})).await;
    assert_eq!(named["seq"], 3, "{named}");
    for c in [&mut ann, &mut bob] {
        let m = c.recv_type("message").await;
        assert_eq!((m["seq"].as_u64(), m["from"].as_str()), (Some(3), Some("shop-bot")), "{m}");
    }
    // Another key publishes under its own name.
    let (status, v) =
        call(&s, "POST", "/api/rooms/chat:1/publish", Some(JUDGE), r#"{"body":"passed 12/12"}"#)
            .await;
    assert_eq!((status, v["seq"].as_u64()), (200, Some(4)), "{v}");
    assert_eq!(ann.recv_type("message").await["from"], "judge");
    assert_eq!(s.metric("router_api_ok_total").await, 4.0);
}

#[tokio::test]
async fn a_publish_into_an_empty_room_opens_it_and_keeps_the_seq_going() {
    let s = with_api(2).await;
    let (_, a) = publish(&s, "status:u1", json!({"body": "queued"})).await;
    let (_, b) = publish(&s, "status:u1", json!({"body": "running"})).await;
    assert_eq!((a["seq"].as_u64(), b["seq"].as_u64()), (Some(1), Some(2)), "{a} {b}");
    let (mut c, w) = join(&s.url("status:u1", "u1")).await;
    assert_eq!(w["seq"], 2, "the room remembers its seq: {w}");
    let (_, v) = publish(&s, "status:u1", json!({"body": "passed 12/12"})).await;
    let m = c.recv_type("message").await;
    assert_eq!((m["seq"].as_u64(), v["seq"].as_u64()), (Some(3), Some(3)));
}

#[tokio::test]
async fn a_publish_into_a_spanning_room_reaches_the_members_on_every_node() {
    let s = with_api(3).await;
    let owner = s.placement("span:1").await["node"].as_str().unwrap().to_string();
    let other = s.nodes.iter().find(|n| n.id != owner).unwrap();
    let (mut ann, _) = join(&s.url("span:1", "ann")).await;
    // bob lands on another node directly (as after a failover): the room spans.
    let (mut bob, w) = join(&format!("ws://{}/ws?room=span:1&user=bob", other.addr)).await;
    assert_eq!(w["members"], json!(["ann", "bob"]), "{w}");
    ann.recv_type("presence").await;
    bob.publish(json!("from bob")).await;
    assert_eq!(ann.recv_type("message").await["seq"], 1);
    assert_eq!(bob.recv_type("message").await["seq"], 1);
    let (status, v) = publish(&s, "span:1", json!({"body": "to all"})).await;
    assert_eq!(
        (status, v["seq"].as_u64(), v["node"].as_str()),
        (200, Some(2), Some(owner.as_str()))
    );
    for c in [&mut ann, &mut bob] {
        let m = c.recv_type("message").await;
        assert_eq!((m["seq"].as_u64(), m["body"].as_str()), (Some(2), Some("to all")), "{m}");
    }
    let (_, room) = call(&s, "GET", "/api/rooms/span:1", Some(ORDERS), "").await;
    assert_eq!(room["spanning"], true, "{room}");
    assert_eq!(room["seq"], 2);
    assert_eq!(room["owner"], owner.as_str());
    let users: Vec<(&str, &str)> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_str().unwrap(), m["node"].as_str().unwrap()))
        .collect();
    assert_eq!(users, [("ann", owner.as_str()), ("bob", other.id.as_str())]);
}

/// Method, path, key, body, and the status and code the API answers.
type Case = (&'static str, &'static str, Option<&'static str>, &'static str, u16, &'static str);

#[tokio::test]
async fn keys_and_bad_input_get_json_errors_with_stable_codes() {
    let s = with_api(1).await;
    let body = r#"{"body":1}"#;
    let cases: [Case; 11] = [
        ("POST", "/api/rooms/r/publish", None, body, 401, "unauthorized"),
        ("POST", "/api/rooms/r/publish", Some("wrong-key-0123456789"), body, 401, "unauthorized"),
        ("GET", "/api/rooms", None, "", 401, "unauthorized"),
        ("POST", "/api/rooms/bad%20room/publish", Some(ORDERS), body, 400, "bad_room"),
        ("POST", "/api/rooms/r/publish", Some(ORDERS), "{not json", 400, "bad_json"),
        ("POST", "/api/rooms/r/publish", Some(ORDERS), r#"{"bdy":1}"#, 400, "bad_json"),
        (
            "POST",
            "/api/rooms/r/publish",
            Some(ORDERS),
            r#"{"body":1,"from":"a b"}"#,
            400,
            "bad_from",
        ),
        ("POST", "/api/rooms/r/publish", Some(ORDERS), r#"{"body":1,"id":[1]}"#, 400, "bad_json"),
        ("GET", "/api/rooms/r/publish", Some(ORDERS), "", 405, "method_not_allowed"),
        ("GET", "/api/nothing", Some(ORDERS), "", 404, "not_found"),
        ("GET", "/api/rooms/r/messages?since=x", Some(ORDERS), "", 400, "bad_query"),
    ];
    for (method, path, key, body, status, code) in cases {
        let (got, v) = call(&s, method, path, key, body).await;
        assert_eq!((got, v["code"].as_str()), (status, Some(code)), "{method} {path}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    assert_eq!(s.metric("router_api_errors_total{code=\"unauthorized\"}").await, 3.0);
}

#[tokio::test]
async fn a_broadcast_to_100_rooms_gets_a_result_per_room() {
    let s = with_api(3).await;
    let (mut a, _) = join(&s.url("b:7", "a")).await;
    let (mut b, _) = join(&s.url("b:42", "b")).await;
    let mut rooms: Vec<String> = (0..100).map(|i| format!("b:{i}")).collect();
    rooms.push("not a room".into());
    let body = json!({"rooms": rooms, "body": {"notice": "maintenance at 22:00"}}).to_string();
    let (status, v) = call(&s, "POST", "/api/broadcast", Some(ORDERS), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["published"].as_u64(), v["failed"].as_u64()), (Some(100), Some(1)), "{v}");
    let results = v["results"].as_array().unwrap();
    for (i, r) in results.iter().take(100).enumerate() {
        assert_eq!(
            (r["room"].as_str(), r["seq"].as_u64()),
            (Some(format!("b:{i}").as_str()), Some(1))
        );
    }
    assert_eq!(results[100]["error"]["code"], "bad_room");
    let nodes: std::collections::BTreeSet<&str> =
        results.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes.len(), 3, "every node owns some of the rooms");
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_type("message").await["body"]["notice"], "maintenance at 22:00");
    }
    let (status, v) =
        call(&s, "POST", "/api/broadcast", Some(ORDERS), r#"{"rooms":[],"body":1}"#).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_rooms")));
}

#[tokio::test]
async fn rooms_are_listed_by_name_in_pages_with_counts_from_every_node() {
    let s = with_api(3).await;
    let mut clients = Vec::new();
    for (room, users) in [("l:a", 2), ("l:b", 1), ("l:c", 3)] {
        for u in 0..users {
            clients.push(join(&s.url(room, &format!("u{u}"))).await.0);
        }
    }
    let owner = s.placement("l:c").await["node"].as_str().unwrap().to_string();
    let other = s.nodes.iter().find(|n| n.id != owner).unwrap();
    clients.push(join(&format!("ws://{}/ws?room=l:c&user=far", other.addr)).await.0);
    let (status, p1) = call(&s, "GET", "/api/rooms?limit=2", Some(ORDERS), "").await;
    assert_eq!(status, 200, "{p1}");
    let names = |p: &Value| -> Vec<String> {
        p["rooms"].as_array().unwrap().iter().map(|r| r["room"].as_str().unwrap().into()).collect()
    };
    assert_eq!(names(&p1), ["l:a", "l:b"]);
    assert_eq!((p1["next"].as_str(), p1["total"].as_u64()), (Some("l:b"), Some(3)));
    assert_eq!(p1["rooms"][0]["members"], 2);
    let (_, p2) = call(&s, "GET", "/api/rooms?limit=2&after=l:b", Some(ORDERS), "").await;
    assert_eq!(names(&p2), ["l:c"]);
    assert_eq!(p2["next"], Value::Null);
    assert_eq!(p2["rooms"][0]["members"], 4, "members on two nodes: {p2}");
    assert_eq!(p2["rooms"][0]["nodes"].as_object().unwrap().len(), 2);
    assert_eq!(p2["errors"], json!([]));
}

#[tokio::test]
async fn the_history_is_read_from_the_owner_since_a_seq() {
    let s = with_api(2).await;
    let (mut ann, _) = join(&s.url("h:1", "ann")).await;
    for i in 1..=5 {
        publish(&s, "h:1", json!({"body": i})).await;
        assert_eq!(ann.recv_type("message").await["seq"], i);
    }
    let (status, v) =
        call(&s, "GET", "/api/rooms/h:1/messages?since=2&limit=2", Some(ORDERS), "").await;
    assert_eq!(status, 200, "{v}");
    let seqs: Vec<u64> =
        v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4]);
    assert_eq!((v["seq"].as_u64(), v["open"].as_bool()), (Some(5), Some(true)));
    assert!(v["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(v["messages"][0]["type"], "message");
}

#[tokio::test]
async fn removing_a_member_closes_its_connections_on_every_node_with_4003() {
    let s = with_api(3).await;
    let owner = s.placement("m:1").await["node"].as_str().unwrap().to_string();
    let other = s.nodes.iter().find(|n| n.id != owner).unwrap();
    let (mut tab1, _) = join(&s.url("m:1", "troll")).await;
    let (mut tab2, _) = join(&format!("ws://{}/ws?room=m:1&user=troll", other.addr)).await;
    let (mut ann, _) = join(&s.url("m:1", "ann")).await;
    let (status, v) = call(&s, "DELETE", "/api/rooms/m:1/members/troll", Some(ORDERS), "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["closed"], 2, "{v}");
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(
            tab.closed_with_reason(Duration::from_secs(5)).await,
            Some((4003, "removed".to_string()))
        );
    }
    let left = ann.recv_type("presence").await;
    assert_eq!((left["event"].as_str(), left["user"].as_str()), (Some("leave"), Some("troll")));
    let (_, v) = call(&s, "DELETE", "/api/rooms/m:1/members/nobody", Some(ORDERS), "").await;
    assert_eq!(v["closed"], 0);
}

#[tokio::test]
async fn a_node_with_a_hop_secret_takes_internal_calls_only_signed() {
    let hub = ws_node::LocalHub::new();
    let hop = shared::auth::HopKey::new(b"hop-secret-0123456789abcdef").unwrap();
    let cfg = ws_node::Config {
        node_id: "node-a".into(),
        hop_key: Some(hop.clone()),
        ..ws_node::Config::default()
    };
    let node = TestNode::with_config(cfg, &hub).await;
    let (status, v) =
        admin(node.addr, "POST", "/internal/rooms/r/publish", &[], r#"{"body":1,"from":"x"}"#)
            .await;
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let mut c = config(&[&node]);
    c.hop_key = Some(hop);
    c.api = Some("127.0.0.1:0".parse().unwrap());
    let router = router::Router::start(c).unwrap();
    let api = router.api_addr().unwrap();
    let (status, v) = admin(api, "POST", "/api/rooms/r/publish", &[], r#"{"body":1}"#).await;
    assert_eq!((status, v["seq"].as_u64()), (200, Some(1)), "signed by the router: {v}");
    assert_eq!(v["node"], "node-a");
}

#[tokio::test]
async fn over_redis_a_durable_spanning_room_answers_once_stored_and_reaches_both_nodes() {
    let redis = shared::testkit::RedisServer::start().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let cfg =
            ws_node::Config { node_id: id.into(), durable_ack: true, ..ws_node::Config::default() };
        nodes.push(TestNode::on_redis(cfg, &redis.url(), stop.clone()).await);
    }
    let mut c = config(&nodes.iter().collect::<Vec<_>>());
    c.api = Some("127.0.0.1:0".parse().unwrap());
    let router = router::Router::start(c).unwrap();
    let api = router.api_addr().unwrap();
    let (mut ann, _) = join(&format!("ws://{}/ws?room=d:1&user=ann", nodes[0].addr)).await;
    let (mut bob, w) = join(&format!("ws://{}/ws?room=d:1&user=bob", nodes[1].addr)).await;
    assert_eq!(w["members"], json!(["ann", "bob"]), "the room spans over Redis: {w}");
    let (status, v) =
        admin(api, "POST", "/api/rooms/d:1/publish", &[], r#"{"body":"stored","id":7}"#).await;
    assert_eq!((status, v["seq"].as_u64()), (200, Some(1)), "{v}");
    for c in [&mut ann, &mut bob] {
        assert_eq!(c.recv_type("message").await["seq"], 1);
    }
    let log = redis.command(&["XLEN", "roomfleet:{d:1}:log"]).await;
    assert!(log.contains(":1"), "the message is in the room's Redis stream: {log}");
    let (_, again) =
        admin(api, "POST", "/api/rooms/d:1/publish", &[], r#"{"body":"stored","id":7}"#).await;
    assert_eq!(again, v, "a retry gets the first answer");
    stop.cancel();
}

#[tokio::test]
async fn a_durable_publish_the_store_could_not_take_is_not_delivered_again_on_retry() {
    let mut redis = shared::testkit::RedisServer::start().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = ws_node::Config {
        node_id: "node-a".into(),
        durable_ack: true,
        ..ws_node::Config::default()
    };
    let node = TestNode::on_redis(cfg, &redis.url(), stop.clone()).await;
    let mut c = config(&[&node]);
    c.api = Some("127.0.0.1:0".parse().unwrap());
    let router = router::Router::start(c).unwrap();
    let api = router.api_addr().unwrap();
    let (mut ann, _) = join(&format!("ws://{}/ws?room=d:2&user=ann", node.addr)).await;
    redis.kill();
    let body = r#"{"body":"late","id":"x-1"}"#;
    let (status, v) = admin(api, "POST", "/api/rooms/d:2/publish", &[], body).await;
    assert_eq!((status, v["code"].as_str()), (503, Some("not_stored")), "{v}");
    let m = ann.recv_type("message").await;
    assert_eq!((m["seq"].as_u64(), m["id"].as_str()), (Some(1), Some("x-1")), "delivered: {m}");
    let (status, again) = admin(api, "POST", "/api/rooms/d:2/publish", &[], body).await;
    assert_eq!((status, again["seq"].as_u64()), (200, Some(1)), "the first seq: {again}");
    let (_, next) = admin(api, "POST", "/api/rooms/d:2/publish", &[], r#"{"body":"next"}"#).await;
    assert_eq!(next["code"], "not_stored", "{next}");
    assert_eq!(ann.recv_type("message").await["seq"], 2, "x-1 did not come twice");
    stop.cancel();
}

/// `n` nodes on a `RedisBus` of `redis` and a router with the API (no keys, loopback) and
/// short drains in front of them; cancel `stop` at the end.
async fn over_redis(
    redis: &shared::testkit::RedisServer,
    n: usize,
    stop: &CancellationToken,
) -> Setup {
    let mut nodes = Vec::new();
    for i in 0..n {
        let id = format!("node-{}", (b'a' + i as u8) as char);
        let cfg = ws_node::Config { node_id: id, ..ws_node::Config::default() };
        nodes.push(TestNode::on_redis(cfg, &redis.url(), stop.clone()).await);
    }
    let mut c = config(&nodes.iter().collect::<Vec<_>>());
    c.api = Some("127.0.0.1:0".parse().unwrap());
    c.api_keys = vec![format!("orders={ORDERS}").parse().unwrap()];
    c.drain_window = Some(Duration::from_millis(50));
    let router = router::Router::start(c).unwrap();
    Setup { hub: ws_node::LocalHub::new(), nodes, router }
}

#[tokio::test]
async fn over_redis_a_retry_after_a_drain_moved_the_room_gets_the_first_answer_once() {
    let redis = shared::testkit::RedisServer::start().await;
    let stop = CancellationToken::new();
    let s = over_redis(&redis, 2, &stop).await;
    let room = "moved:1";
    let owner = s.placement(room).await["node"].as_str().unwrap().to_string();
    let (mut ann, _) = join(&s.url(room, "ann")).await;
    let order = json!({"body": "shipped", "id": "order-9"});
    let (status, first) = publish(&s, room, order.clone()).await;
    assert_eq!((status, first["seq"].as_u64()), (200, Some(1)), "{first}");
    assert_eq!(first["node"], owner.as_str());
    assert_eq!(ann.recv_type("message").await["seq"], 1);

    // The owner drains: ann is closed with 1012 and the ring places the room elsewhere.
    let (status, v) = s.admin("POST", &format!("/admin/nodes/{owner}/drain"), "").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(ann.closed(STEP).await, Some(1012));
    shared::testkit::wait_until(STEP, "the room placed on another node", || async {
        s.placement(room).await["node"] != owner.as_str()
    })
    .await;
    let (mut ann, w) = join(&s.url(room, "ann")).await;
    assert_ne!(w["node"], owner.as_str(), "{w}");
    assert_eq!(w["seq"], 1, "the room's seq went on at its new owner: {w}");

    let (status, again) = publish(&s, room, order).await;
    assert_eq!((status, &again), (200, &first), "the retry gets the first answer");
    let (_, next) = publish(&s, room, json!({"body": "next", "id": "order-10"})).await;
    assert_eq!(next["seq"], 2, "{next}");
    let m = ann.recv_type("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["id"].as_str()),
        (Some(2), Some("order-10")),
        "order-9 was not delivered again: {m}"
    );
    let mark = redis.command(&["GET", "roomfleet:{moved:1}:post:\"order-9\""]).await;
    assert!(mark.contains(&format!("1 {owner}")), "the mark in Redis: {mark:?}");
    stop.cancel();
}

#[tokio::test]
async fn over_redis_the_history_of_a_room_open_on_no_node_is_read_from_its_stream() {
    let redis = shared::testkit::RedisServer::start().await;
    let stop = CancellationToken::new();
    let s = over_redis(&redis, 2, &stop).await;
    // Nobody is in the room: each publish opens it, stores the message and closes it.
    for i in 1..=3 {
        let (status, v) = publish(&s, "quiet:1", json!({"body": i})).await;
        assert_eq!((status, v["seq"].as_u64()), (200, Some(i)), "{v}");
    }
    let path = "/api/rooms/quiet:1/messages?since=1&limit=1";
    let read = || async { call(&s, "GET", path, Some(ORDERS), "").await };
    shared::testkit::wait_until(STEP, "the room closed with its history stored", || async {
        let (status, v) = read().await;
        status == 200 && v["open"] == false && v["source"] == "store"
    })
    .await;
    let (_, v) = read().await;
    let seqs: Vec<u64> =
        v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2], "since=1&limit=1: {v}");
    assert_eq!((v["seq"].as_u64(), v["messages"][0]["body"].as_u64()), (Some(3), Some(2)), "{v}");
    assert!(v["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    // A room nothing was ever said in has nothing stored.
    let (status, none) = call(&s, "GET", "/api/rooms/never:1/messages", Some(ORDERS), "").await;
    assert_eq!(
        (status, none["source"].as_str(), none["messages"].as_array().map(Vec::len)),
        (200, Some("none"), Some(0)),
        "{none}"
    );
    stop.cancel();
}
