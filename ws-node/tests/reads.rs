//! Read markers and history on join with real `ws-node` processes (a real `router` and
//! Redis where the case needs them): a member's `read` reaches the others, on one node and
//! across two; a joiner learns the markers in its welcome and gets `history=N` messages
//! before live ones; a marker made while Redis is down crosses once it is back; bad `read`
//! frames and bad `history` values get their documented errors.

mod common;

use std::time::Duration;

use common::{Client, UPGRADE, node, pair, router};
use serde_json::{Value, json};
use shared::testkit::{RedisServer, http, wait_until};

fn read(seq: u64) -> Value {
    json!({"type": "read", "seq": seq})
}

/// Publishes `bodies` from `c` and waits for its own copies; their seqs.
async fn say(c: &mut Client, bodies: &[&str]) -> Vec<u64> {
    for b in bodies {
        c.publish(json!(b)).await;
    }
    let mut seqs = Vec::new();
    for _ in bodies {
        seqs.push(c.recv_type("message").await["seq"].as_u64().unwrap());
    }
    seqs
}

/// The next frame that is not presence (a join or leave may come first).
async fn next_but_presence(c: &mut Client) -> Value {
    loop {
        let f = c.recv().await;
        if f["type"] != "presence" {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_marker_reaches_the_others_and_a_late_joiner_gets_history_and_markers() {
    let n = node(&["--node-id", "node-a"]).await;
    let (mut ann, _) = Client::join(&n.url("chat", "ann")).await;
    let (mut bob, _) = Client::join(&n.url("chat", "bob")).await;
    let seqs = say(&mut ann, &["one", "two", "three"]).await;
    assert_eq!(seqs, [1, 2, 3]);
    for _ in 0..3 {
        bob.recv_type("message").await;
    }

    bob.send_json(&read(2)).await;
    assert_eq!(next_but_presence(&mut ann).await, json!({"type":"read","user":"bob","seq":2}));
    // Lower or equal: ignored; above the room's seq: bad_read, and the connection goes on.
    bob.send_json(&read(1)).await;
    bob.send_json(&read(2)).await;
    bob.send_json(&read(4)).await;
    let e = next_but_presence(&mut bob).await;
    assert_eq!((&e["type"], &e["code"]), (&json!("error"), &json!("bad_read")), "{e}");
    bob.send_json(&json!({"type": "read", "seq": "3"})).await;
    assert_eq!(next_but_presence(&mut bob).await["code"], "bad_json");
    bob.send_json(&read(3)).await;
    assert_eq!(
        next_but_presence(&mut ann).await,
        json!({"type":"read","user":"bob","seq":3}),
        "the ignored and refused reads sent nothing"
    );
    ann.send_json(&read(3)).await;
    assert_eq!(next_but_presence(&mut bob).await, json!({"type":"read","user":"ann","seq":3}));

    // A late joiner: the markers in its welcome, the last two messages, then live ones.
    let (mut cy, w) = Client::join(&format!("{}&history=2", n.url("chat", "cy"))).await;
    assert_eq!((&w["seq"], &w["history"], &w["recovered"]), (&json!(3), &json!(2), &json!(false)));
    assert_eq!(w["reads"], json!({"ann": 3, "bob": 3}), "{w}");
    let m = cy.recv_type("message").await;
    assert_eq!((&m["seq"], &m["body"]), (&json!(2), &json!("two")));
    let m = cy.recv_type("message").await;
    assert_eq!((&m["seq"], &m["body"]), (&json!(3), &json!("three")));
    say(&mut ann, &["four"]).await;
    let m = cy.recv_type("message").await;
    assert_eq!((&m["seq"], &m["body"]), (&json!(4), &json!("four")), "then live, no duplicate");

    // More than the room holds: what it holds.
    let (mut dee, w) = Client::join(&format!("{}&history=1000", n.url("chat", "dee"))).await;
    assert_eq!(w["history"], 4, "{w}");
    for s in 1..=4 {
        assert_eq!(dee.recv_type("message").await["seq"], s);
    }
    assert_eq!(n.metric("wsnode_reads_total").await, 6.0, "every well-formed read counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_markers_cross_nodes_in_a_spanning_room_and_reach_a_later_joiner() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis.url(), &[]).await;
    let (mut ann, _) = Client::join(&a.url("span", "ann")).await;
    let (mut bob, _) = Client::join(&b.url("span", "bob")).await;
    // The room spans once bob's welcome came: ann hears bob join.
    assert_eq!(ann.recv_type("presence").await["user"], "bob");
    let seqs = say(&mut ann, &["x", "y"]).await;
    for s in &seqs {
        assert_eq!(bob.recv_type("message").await["seq"], *s);
    }
    bob.send_json(&read(seqs[1])).await;
    assert_eq!(
        ann.recv_type("read").await,
        json!({"type":"read","user":"bob","seq":seqs[1]}),
        "node-b's marker reached node-a"
    );
    ann.send_json(&read(seqs[0])).await;
    assert_eq!(bob.recv_type("read").await, json!({"type":"read","user":"ann","seq":seqs[0]}));

    // A new member on node-a learns node-b's user's marker, and node-b's history=N works.
    let (_cy, w) = Client::join(&a.url("span", "cy")).await;
    assert_eq!(w["reads"], json!({"ann": seqs[0], "bob": seqs[1]}), "{w}");
    let (mut dee, w) = Client::join(&format!("{}&history=5", b.url("span", "dee"))).await;
    assert_eq!((&w["history"], &w["reads"]["bob"]), (&json!(2), &json!(seqs[1])), "{w}");
    for s in &seqs {
        assert_eq!(dee.recv_type("message").await["seq"], *s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_history_gets_400_before_the_upgrade_on_the_node_and_the_router() {
    let n = node(&["--node-id", "node-a"]).await;
    let router = router(&[("node-a", &n)]).await;
    let reason = format!("history must be a count from 0 to {}", shared::ids::MAX_HISTORY);
    for addr in [n.addr(), router.addr] {
        for bad in ["history=", "history=x", "history=-1", "history=1001", "history=%32"] {
            let path = format!("/ws?room=r&user=u&{bad}");
            let (status, body) = http(addr, "GET", &path, &UPGRADE, "").await.unwrap();
            assert_eq!((status, body.trim()), (400, reason.as_str()), "{addr} {path}");
        }
    }
    // Through the router: the count reaches the node.
    let (mut p, _) = Client::join(&format!("{}?room=r&user=p", router.ws_url())).await;
    say(&mut p, &["a", "b", "c"]).await;
    let (mut q, w) = Client::join(&format!("{}?room=r&user=q&history=2", router.ws_url())).await;
    assert_eq!(w["history"], 2, "{w}");
    assert_eq!(q.recv_type("message").await["body"], "b");
    assert_eq!(q.recv_type("message").await["body"], "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_marker_made_while_redis_is_down_crosses_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let (a, b) = pair(&redis.url(), &[]).await;
    let (mut ann, _) = Client::join(&a.url("outage", "ann")).await;
    let (mut bob, _) = Client::join(&b.url("outage", "bob")).await;
    assert_eq!(ann.recv_type("presence").await["user"], "bob");
    let seqs = say(&mut ann, &["before"]).await;
    assert_eq!(bob.recv_type("message").await["seq"], seqs[0]);

    redis.kill();
    assert_eq!(bob.recv_type("error").await["code"], "degraded");
    // Taken on node-b (nobody else there to tell), carried by its sync after the restore.
    bob.send_json(&read(seqs[0])).await;
    redis.restart().await;
    wait_until(Duration::from_secs(20), "both nodes to reconnect", || async {
        a.metric("wsnode_redis_reconnects_total").await >= 2.0
            && b.metric("wsnode_redis_reconnects_total").await >= 2.0
    })
    .await;
    assert_eq!(ann.recv_type("read").await, json!({"type":"read","user":"bob","seq":seqs[0]}));
}
