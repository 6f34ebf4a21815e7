//! Spanning-room scenarios, run over the in-process hub (spanning.rs) and over a real
//! Redis (redis.rs): the same node state machine behind two buses.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::json;
use shared::testkit::wait_until;

use super::{Client, STEP, TestNode};

/// Members on 3 nodes: one order, contiguous seq.
pub async fn a_room_on_three_nodes_has_one_order(ns: &[TestNode]) {
    let mut clients = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let (c, w) = Client::join(&n.url("wide", &format!("u{i}"))).await;
        assert_eq!(w["node"], format!("n{i}"));
        assert_eq!(w["members"].as_array().unwrap().len(), i + 1, "{w}");
        clients.push(c);
    }
    for i in 0..30 {
        let k = i % 3;
        clients[k].publish(json!({"k": k, "i": i})).await;
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 30 {
            let m = c.recv_type("message").await;
            seen.push((m["seq"].as_u64().unwrap(), m["body"].clone()));
        }
        let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    assert_eq!(ns[0].metric("wsnode_spanning_rooms").await, 1.0);
}

/// A local room that starts spanning keeps its seq; presence crosses nodes.
pub async fn seq_continues_and_presence_crosses_nodes(ns: &[TestNode]) {
    let (mut a, _) = Client::join(&ns[0].url("r", "ann")).await;
    for i in 0..5 {
        a.publish(json!(i)).await;
        a.recv_type("message").await;
    }
    let (mut b, wb) = Client::join(&ns[1].url("r", "bob")).await;
    assert_eq!(wb["seq"], 5);
    assert_eq!(wb["members"], json!(["ann", "bob"]));
    assert_eq!(a.recv().await, json!({"type": "presence", "event": "join", "user": "bob"}));
    b.publish(json!("hi")).await;
    assert_eq!(a.recv().await["seq"], 6);
    assert_eq!(b.recv().await["seq"], 6);
    drop(b);
    assert_eq!(a.recv().await, json!({"type": "presence", "event": "leave", "user": "bob"}));
}

/// A member joining on a second node gets every message after its welcome.
pub async fn a_joiner_misses_nothing_while_20_senders_publish(ns: &[TestNode]) {
    let mut senders = Vec::new();
    for i in 0..20 {
        senders.push(Client::join(&ns[0].url("busy", &format!("s{i}"))).await.0);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for mut s in senders {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: at most 400 publishes per sender, and stopped by the test.
            while !stop.is_cancelled() && n < 400 {
                s.publish(json!(n)).await;
                n += 1;
                // Read our own copies so we never become a slow consumer.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(
                    Duration::from_millis(1),
                    futures_util::StreamExt::next(&mut s.ws),
                )
                .await
                {}
            }
            (s, n)
        }));
    }
    wait_until(STEP, "traffic to flow", || async {
        ns[0].metric("wsnode_messages_in_total").await > 200.0
    })
    .await;
    let (mut joiner, w) = Client::join(&ns[1].url("busy", "late")).await;
    let mut last = w["seq"].as_u64().unwrap();
    wait_until(STEP, "more traffic after the join", || async {
        ns[0].metric("wsnode_messages_in_total").await > (last + 500) as f64
    })
    .await;
    stop.cancel();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().1;
    }
    // Every message after the welcome arrives once, in order, up to the last one.
    while last < total {
        let m = joiner.recv_type("message").await;
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "no loss, no duplicate, no reorder");
        last = seq;
    }
}

/// Once the room is back on one node, publishing no longer touches the bus.
pub async fn a_room_back_on_one_node_stops_using_the_bus(ns: &[TestNode]) {
    let (mut a, _) = Client::join(&ns[0].url("r", "a")).await;
    let (b, _) = Client::join(&ns[1].url("r", "b")).await;
    a.recv().await; // b's join
    a.publish(json!(1)).await;
    assert_eq!(a.recv().await["seq"], 1);
    assert_eq!(ns[0].metric("wsnode_redis_publishes_total").await, 1.0);
    drop(b);
    assert_eq!(a.recv().await["event"], "leave");
    wait_until(Duration::from_secs(20), "room back on one node", || async {
        ns[0].metric("wsnode_spanning_rooms").await == 0.0
    })
    .await;
    let before = ns[0].metric("wsnode_redis_publishes_total").await;
    for i in 0..10 {
        a.publish(json!(i)).await;
        assert_eq!(a.recv().await["seq"], 2 + i);
    }
    assert_eq!(ns[0].metric("wsnode_redis_publishes_total").await, before);
}

/// After `kill` takes node 1 off the bus, node 0's members see its users leave.
pub async fn a_dead_node_is_pruned_and_its_members_leave(ns: &[TestNode], kill: impl FnOnce()) {
    let (mut a, _) = Client::join(&ns[0].url("r", "a")).await;
    let (_b, _) = Client::join(&ns[1].url("r", "b")).await;
    assert_eq!(a.recv().await["event"], "join");
    kill();
    assert_eq!(a.recv().await, json!({"type": "presence", "event": "leave", "user": "b"}));
    wait_until(Duration::from_secs(20), "room back on one node", || async {
        ns[0].metric("wsnode_spanning_rooms").await == 0.0
    })
    .await;
    a.publish(json!("alone")).await;
    assert_eq!(a.recv().await["seq"], 1);
}
