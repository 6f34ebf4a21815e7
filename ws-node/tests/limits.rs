//! Every limit of the node tripping with its documented error frame, close code or status.

mod common;

use std::time::Duration;

use common::{Client, STEP, TestNode, config};
use futures_util::StreamExt;
use serde_json::json;
use shared::testkit::{http, wait_until};
use tokio_tungstenite::tungstenite::Message;
use ws_node::Config;

fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
}

#[tokio::test]
async fn bad_ids_are_refused_with_400_before_the_upgrade() {
    let node = TestNode::start(config("n1")).await;
    let h = upgrade_headers();
    for (path, why) in [
        ("/ws", "room is missing"),
        ("/ws?room=a%20b", "room has a character outside"),
        ("/ws?room=ok&user=", "user is missing"),
        (&*format!("/ws?room={}", "r".repeat(129)), "room is longer than 128"),
    ] {
        let (status, body) = http(node.addr, "GET", path, &h, "").await.unwrap();
        assert_eq!(status, 400, "{path}");
        assert!(body.starts_with(why), "{path}: {body}");
    }
    let (status, _) = http(node.addr, "GET", "/ws?room=ok", &[], "").await.unwrap();
    assert_eq!(status, 426, "plain GET on /ws");
    let (status, _) = http(node.addr, "GET", "/nope", &[], "").await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(node.metric("wsnode_connections").await, 0.0);
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_usable() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("r", "a")).await;
    a.send_raw(Message::Text("not json".into())).await;
    assert_eq!(a.recv().await["code"], "bad_json");
    a.send_json(&json!({"type": "dance"})).await;
    assert_eq!(a.recv().await["code"], "unknown_type");
    a.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(a.recv().await["code"], "binary_unsupported");
    a.send_json(&json!({"type": "publish", "body": 1, "id": {"no": 1}})).await;
    assert_eq!(a.recv().await["code"], "bad_id");
    a.publish(json!("still here")).await;
    let m = a.recv().await;
    assert_eq!((m["body"].as_str(), m["seq"].as_u64()), (Some("still here"), Some(1)));
}

#[tokio::test]
async fn an_oversize_frame_gets_an_error_and_close_1009() {
    let node = TestNode::start(Config { max_frame_bytes: 1024, ..config("n1") }).await;
    let (mut a, _) = Client::join(&node.url("r", "a")).await;
    let (mut b, _) = Client::join(&node.url("r", "b")).await;
    a.publish(json!("x".repeat(2000))).await;
    assert_eq!(a.recv_type("error").await["code"], "frame_too_large");
    assert_eq!(a.closed(STEP).await, Some(1009));
    // Nobody else is disturbed: b sees a leave and the room goes on.
    assert_eq!(b.recv().await, json!({"type": "presence", "event": "leave", "user": "a"}));
    b.publish(json!("on")).await;
    assert_eq!(b.recv().await["seq"], 1);
}

#[tokio::test]
async fn publishing_over_the_rate_is_refused_then_closed() {
    let cfg =
        Config { publish_rate: 1.0, publish_burst: 3.0, rate_abuse_frames: 5, ..config("n1") };
    let node = TestNode::start(cfg).await;
    let (mut a, _) = Client::join(&node.url("r", "a")).await;
    for i in 0..3 {
        a.publish(json!(i)).await;
    }
    for _ in 0..3 {
        assert_eq!(a.recv().await["type"], "message");
    }
    a.publish(json!("over")).await;
    assert_eq!(a.recv().await["code"], "rate_limited");
    for _ in 0..10 {
        a.publish(json!("abuse")).await;
    }
    assert_eq!(a.closed_with_reason(STEP).await, Some((1008, "rate limit exceeded".into())));
    wait_until(STEP, "rate-limit close counted", || async {
        node.metrics().await.contains("wsnode_closes_total{reason=\"rate_limit\"} 1")
    })
    .await;
}

#[tokio::test]
async fn a_full_room_refuses_the_next_member_with_4009() {
    let node = TestNode::start(Config { max_room_members: 2, ..config("n1") }).await;
    let (_a, _) = Client::join(&node.url("r", "a")).await;
    let (_b, _) = Client::join(&node.url("r", "b")).await;
    let mut c = Client::connect(&node.url("r", "c")).await.unwrap();
    assert_eq!(c.recv().await["code"], "room_full");
    assert_eq!(c.closed(STEP).await, Some(4009));
    // Another room is fine.
    let (_d, _) = Client::join(&node.url("other", "d")).await;
}

#[tokio::test]
async fn the_node_refuses_connections_over_its_limit_with_503() {
    let node = TestNode::start(Config { max_connections: 2, ..config("n1") }).await;
    let (_a, _) = Client::join(&node.url("r", "a")).await;
    let (b, _) = Client::join(&node.url("r", "b")).await;
    let (status, body) =
        http(node.addr, "GET", "/ws?room=r&user=c", &upgrade_headers(), "").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("connection limit"), "{body}");
    drop(b);
    wait_until(STEP, "a slot to free up", || async {
        node.metric("wsnode_connections").await == 1.0
    })
    .await;
    let (_c, _) = Client::join(&node.url("r", "c")).await;
}

#[tokio::test]
async fn a_stalled_reader_is_closed_and_the_room_keeps_its_rate() {
    let node = TestNode::start(Config { outbound_queue: 64, ..config("n1") }).await;
    let (mut stalled, _) = Client::join(&node.url("r", "stalled")).await;
    let (mut reader, _) = Client::join(&node.url("r", "reader")).await;
    let (mut sender, _) = Client::join(&node.url("r", "sender")).await;
    let _ = reader.recv().await; // sender's join
    let big = "y".repeat(16 * 1024);
    // The stalled client reads nothing; kernel buffers fill, then its queue overflows.
    let mut sent = 0u64;
    while node.metric("wsnode_closes_total{reason=\"slow_consumer\"}").await == 0.0 {
        assert!(sent < 5000, "the stalled reader was never closed");
        for _ in 0..8 {
            sender.publish(json!(big)).await;
            sent += 1;
        }
        // The reader (and the sender, who gets its own messages) keep up.
        for _ in 0..8 {
            assert_eq!(reader.recv_type("message").await["type"], "message");
            assert_eq!(sender.recv_type("message").await["type"], "message");
        }
    }
    // Now the stalled client reads: it gets what was queued, then 1008.
    let mut code = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, stalled.ws.next()).await {
        if let Ok(Message::Close(f)) = m {
            code = f.map(|f| (u16::from(f.code), f.reason.to_string()));
            break;
        }
    }
    assert_eq!(code, Some((1008, "slow consumer".to_string())));
    // And the room goes on.
    sender.publish(json!("after")).await;
    assert_eq!(reader.recv_type("message").await["body"], "after");
    assert_eq!(
        node.metric("wsnode_closes_total{reason=\"slow_consumer\"}").await,
        1.0,
        "only the stalled one"
    );
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_with_4000() {
    let cfg = Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..config("n1")
    };
    let node = TestNode::start(cfg).await;
    let (mut quiet, _) = Client::join(&node.url("r", "quiet")).await;
    // Reading nothing means tungstenite never answers the pings.
    wait_until(STEP, "idle close", || async {
        node.metrics().await.contains("wsnode_closes_total{reason=\"idle\"} 1")
    })
    .await;
    assert_eq!(quiet.closed(STEP).await, Some(4000));
}

#[tokio::test]
async fn a_client_answering_pings_stays_connected() {
    let cfg = Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..config("n1")
    };
    let node = TestNode::start(cfg).await;
    let (mut live, _) = Client::join(&node.url("r", "live")).await;
    // Reading answers pings; after several idle windows we are still in the room.
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(m) = tokio::time::timeout_at(until, live.ws.next()).await {
        assert!(matches!(m, Some(Ok(Message::Ping(_)))), "{m:?}");
    }
    live.publish(json!("alive")).await;
    assert_eq!(live.recv().await["body"], "alive");
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("r", "a")).await;
    let (mut b, _) = Client::join(&node.url("s", "b")).await;
    let stop = tokio::spawn(node.stop());
    for c in [&mut a, &mut b] {
        assert_eq!(c.closed(STEP).await, Some(1001));
    }
    tokio::time::timeout(STEP, stop).await.expect("node exits in time").unwrap();
}

#[tokio::test]
async fn drain_closes_with_1012_and_refuses_new_upgrades() {
    let node = TestNode::start(config("n1")).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(Client::join(&node.url("r", &format!("u{i}"))).await.0);
    }
    let (s, body) = http(node.addr, "POST", "/admin/drain?window_ms=300", &[], "").await.unwrap();
    assert_eq!(s, 202, "{body}");
    assert!(body.contains("\"connections\":10"), "{body}");
    for c in clients.iter_mut() {
        assert_eq!(c.closed(STEP).await, Some(1012));
    }
    let (s, _) = http(node.addr, "GET", "/readyz", &[], "").await.unwrap();
    assert_eq!(s, 503);
    let (s, _) =
        http(node.addr, "GET", "/ws?room=r&user=late", &upgrade_headers(), "").await.unwrap();
    assert_eq!(s, 503);
    let (s, _) = http(node.addr, "POST", "/admin/drain?window_ms=soon", &[], "").await.unwrap();
    assert_eq!(s, 400);
}

#[tokio::test]
async fn admin_token_guards_admin_endpoints() {
    let node = TestNode::start(Config { admin_token: Some("t0k".into()), ..config("n1") }).await;
    let (s, _) = http(node.addr, "POST", "/admin/drain", &[], "").await.unwrap();
    assert_eq!(s, 401);
    let (s, _) = http(node.addr, "GET", "/admin/rooms", &[("authorization", "Bearer t0k")], "")
        .await
        .unwrap();
    assert_eq!(s, 200);
    let (s, _) = http(node.addr, "GET", "/healthz", &[], "").await.unwrap();
    assert_eq!(s, 200);
}
