//! Rooms through a real node: order, isolation, presence, acks and signals.

mod common;

use common::{Client, TestNode, config};
use serde_json::json;

#[tokio::test]
async fn three_clients_see_every_message_in_one_order() {
    let node = TestNode::start(config("n1")).await;
    let mut clients = Vec::new();
    for u in ["a", "b", "c"] {
        clients.push(Client::join(&node.url("lobby", u)).await.0);
    }
    // Each client publishes 20 messages, interleaved.
    for i in 0..20 {
        for (k, c) in clients.iter_mut().enumerate() {
            c.publish(json!({"k": k, "i": i})).await;
        }
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 60 {
            let m = c.recv().await;
            if m["type"] == "message" {
                seen.push((m["seq"].as_u64().unwrap(), m["body"].clone()));
            }
        }
        let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "contiguous seq");
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
}

#[tokio::test]
async fn rooms_never_see_each_others_traffic() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("red", "a")).await;
    let (mut b, _) = Client::join(&node.url("blue", "b")).await;
    a.publish(json!("to red")).await;
    b.publish(json!("to blue")).await;
    let ma = a.recv_type("message").await;
    let mb = b.recv_type("message").await;
    assert_eq!(
        (ma["room"].as_str(), ma["body"].as_str(), ma["seq"].as_u64()),
        (Some("red"), Some("to red"), Some(1))
    );
    assert_eq!(
        (mb["room"].as_str(), mb["body"].as_str(), mb["seq"].as_u64()),
        (Some("blue"), Some("to blue"), Some(1))
    );
    // A marker proves nothing else was queued before it.
    a.publish(json!("marker")).await;
    assert_eq!(a.recv_type("message").await["body"], "marker");
}

#[tokio::test]
async fn presence_join_and_leave_reach_the_others() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, wa) = Client::join(&node.url("p", "ann")).await;
    assert_eq!(wa["members"], json!(["ann"]));
    assert_eq!(wa["node"], "n1");
    let (b, wb) = Client::join(&node.url("p", "bob")).await;
    assert_eq!(wb["members"], json!(["ann", "bob"]));
    assert_eq!(a.recv().await, json!({"type": "presence", "event": "join", "user": "bob"}));
    drop(b);
    assert_eq!(a.recv().await, json!({"type": "presence", "event": "leave", "user": "bob"}));
}

#[tokio::test]
async fn a_second_tab_of_a_user_is_not_a_new_presence() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("p", "ann")).await;
    let (b1, _) = Client::join(&node.url("p", "bob")).await;
    assert_eq!(a.recv().await["event"], "join");
    let (b2, w) = Client::join(&node.url("p", "bob")).await;
    assert_eq!(w["members"], json!(["ann", "bob"]));
    drop(b1);
    a.publish(json!("m")).await;
    // The next frame is our own message: no join for the second tab, no leave for the first.
    assert_eq!(a.recv().await["type"], "message");
    drop(b2);
    assert_eq!(a.recv().await["event"], "leave");
}

#[tokio::test]
async fn publish_with_an_id_is_acked_with_its_seq() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("r", "a")).await;
    a.send_json(&json!({"type": "publish", "body": {"x": 1}, "id": "m-1"})).await;
    let m = a.recv().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["id"], "m-1");
    assert_eq!(a.recv().await, json!({"type": "ack", "id": "m-1", "seq": m["seq"]}));
    a.send_json(&json!({"type": "publish", "body": 2, "id": 7})).await;
    assert_eq!(a.recv_type("ack").await, json!({"type": "ack", "id": 7, "seq": 2}));
}

#[tokio::test]
async fn signals_reach_the_others_unsequenced() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("s", "a")).await;
    let (mut b, _) = Client::join(&node.url("s", "b")).await;
    let _ = a.recv().await; // b's join
    a.send_json(&json!({"type": "signal", "body": {"typing": true}})).await;
    assert_eq!(b.recv().await, json!({"type": "signal", "from": "a", "body": {"typing": true}}));
    // The sender does not get its own signal, and signals do not use up seq.
    a.publish(json!("after")).await;
    let m = a.recv().await;
    assert_eq!((m["type"].as_str(), m["seq"].as_u64()), (Some("message"), Some(1)));
}

#[tokio::test]
async fn a_user_id_is_made_up_when_absent() {
    let node = TestNode::start(config("n1")).await;
    let (_c, w) = Client::join(&format!("ws://{}/ws?room=r", node.addr)).await;
    assert!(w["user"].as_str().unwrap().starts_with("anon-"), "{w}");
}

#[tokio::test]
async fn admin_rooms_lists_rooms() {
    let node = TestNode::start(config("n1")).await;
    let (_a, _) = Client::join(&node.url("alpha", "a")).await;
    let (_b, _) = Client::join(&node.url("alpha", "b")).await;
    let (s, body) = shared::testkit::http(node.addr, "GET", "/admin/rooms", &[], "").await.unwrap();
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rooms"][0]["room"], "alpha");
    assert_eq!(v["rooms"][0]["members"], 2);
    assert_eq!(v["rooms"][0]["mode"], "local");
    let (s, _) =
        shared::testkit::http(node.addr, "GET", "/admin/rooms?limit=x", &[], "").await.unwrap();
    assert_eq!(s, 400);
}

#[tokio::test]
async fn client_pings_are_answered() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::join(&node.url("r", "a")).await;
    a.send_raw(Message::Ping(b"are you there".to_vec().into())).await;
    let pong = tokio::time::timeout(common::STEP, a.ws.next()).await.expect("pong in time");
    match pong {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

/// Frames go out pre-encoded, once per room: every member gets the same bytes, whatever
/// the frame's length format (7-bit, 16-bit, 64-bit), parsed by a real client.
#[tokio::test]
async fn every_member_gets_the_same_bytes_across_every_frame_length_format() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let node =
        TestNode::start(ws_node::Config { max_frame_bytes: 256 * 1024, ..config("n1") }).await;
    let mut clients = Vec::new();
    for u in ["a", "b", "c", "d"] {
        clients.push(Client::join(&node.url("bytes", u)).await.0);
    }
    // Bodies whose frames fall on both sides of 125/126 and 65535/65536 payload bytes.
    let sizes = [0usize, 1, 40, 70, 90, 65_380, 65_420, 65_460, 65_500, 100_000];
    for n in sizes {
        clients[0].publish(json!("x".repeat(n))).await;
    }
    let mut seen: Vec<Vec<String>> = Vec::new();
    for c in clients.iter_mut() {
        let mut texts = Vec::new();
        while texts.len() < sizes.len() {
            let m = tokio::time::timeout(common::STEP, c.ws.next()).await;
            let Ok(Some(Ok(Message::Text(t)))) = m else { panic!("no frame: {m:?}") };
            if t.as_str().starts_with(r#"{"type":"message""#) {
                texts.push(t.as_str().to_owned());
            }
        }
        seen.push(texts);
    }
    for (i, n) in sizes.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&seen[0][i]).unwrap();
        assert_eq!(v["body"].as_str().map(str::len), Some(*n));
        assert_eq!(v["seq"], i as u64 + 1);
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "every member got the same bytes");
    // The close handshake still works after raw frames: the node answers our close.
    for mut c in clients {
        c.ws.close(None).await.unwrap();
        // Frames already on their way (others' leaves) come first, then the answer.
        let answered = tokio::time::timeout(common::STEP, async {
            loop {
                match c.ws.next().await {
                    Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => continue,
                    _ => return false,
                }
            }
        });
        assert_eq!(answered.await, Ok(true), "the node answers the close");
    }
}
