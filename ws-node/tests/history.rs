//! History and resume with real `ws-node` processes (and a real `router` and Redis where the
//! case needs them): a member that reconnects with `since`/`epoch` after a drain, a SIGKILL
//! or a restart gets exactly what it missed, or `recovered:false` and nothing stale; replay
//! merges with live traffic; history is trimmed by size and TTL; a one-node room costs Redis
//! only batched appends; bad `since`/`epoch` values are refused before the upgrade.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, NodeProcess, STEP, UPGRADE, node, pair, router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::testkit::{RedisServer, http, wait_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// The welcome's epoch, checked against the documented alphabet.
fn epoch(w: &Value) -> String {
    let e = w["epoch"].as_str().unwrap_or_else(|| panic!("no epoch in {w}"));
    assert!(shared::ids::valid_epoch(e), "epoch {e:?} in {w}");
    e.to_owned()
}

/// Reconnects to `url` resuming after `since` in `epoch`; the welcome must say `recovered`.
async fn rejoin(url: &str, since: u64, epoch: &str, recovered: bool) -> (Client, Value) {
    let (c, w) = Client::join(&format!("{url}&since={since}&epoch={epoch}")).await;
    assert_eq!(w["recovered"], recovered, "resume since {since} in {epoch}: {w}");
    (c, w)
}

/// The next `n` messages `c` gets (other frames skipped), as (seq, body).
async fn messages(c: &mut Client, n: u64) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = c.recv_type("message").await;
        out.push((seq(&m), m["body"].clone()));
    }
    out
}

/// Publishes `bodies` from `c` and waits for its own copies; their seqs.
async fn say(c: &mut Client, bodies: &[String]) -> Vec<u64> {
    for b in bodies {
        c.publish(json!(b)).await;
    }
    messages(c, bodies.len() as u64).await.into_iter().map(|(s, _)| s).collect()
}

fn texts(prefix: &str, n: std::ops::RangeInclusive<u64>) -> Vec<String> {
    n.map(|i| format!("{prefix}{i}")).collect()
}

/// What follows a resume (its welcome and replay, up to seq `after`) is live: `p`
/// publishes and the next message `c` gets is that one, right after `after`.
async fn next_is_live(c: &mut Client, after: u64, p: &mut Client) {
    p.publish(json!("live")).await;
    let m = c.recv_type("message").await;
    assert_eq!((seq(&m), &m["body"]), (after + 1, &json!("live")), "nothing stale after {after}");
}

/// What a publisher got acked: seq -> body.
type Acked = Arc<Mutex<BTreeMap<u64, Value>>>;

/// Publishes from `c` every `every` (`"m1"`, `"m2"`, ... at most `max`) with ids, and keeps
/// what was acked. Ends when its connection does, or once `stop` is cancelled and every
/// publish was answered.
fn publisher(
    c: Client,
    every: Duration,
    max: u64,
    stop: CancellationToken,
) -> (Acked, tokio::task::JoinHandle<()>) {
    let acked = Acked::default();
    let out = acked.clone();
    let task = tokio::spawn(async move {
        let mut ws = c.ws;
        let mut tick = tokio::time::interval(every);
        let (mut sent, mut answered) = (0u64, 0u64);
        while !(stop.is_cancelled() && answered >= sent) {
            tokio::select! {
                _ = tick.tick(), if sent < max && !stop.is_cancelled() => {
                    sent += 1;
                    let f = json!({"type": "publish", "id": sent, "body": format!("m{sent}")});
                    if ws.send(Message::text(f.to_string())).await.is_err() {
                        return;
                    }
                }
                _ = stop.cancelled(), if answered >= sent => return,
                m = ws.next() => {
                    let Some(Ok(m)) = m else { return };
                    let Message::Text(t) = m else { continue };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    match v["type"].as_str() {
                        Some("ack") => {
                            answered += 1;
                            let id = v["id"].as_u64().unwrap();
                            acked.lock().unwrap().insert(seq(&v), json!(format!("m{id}")));
                        }
                        Some("error") => answered += 1,
                        _ => {}
                    }
                }
            }
        }
    });
    (out, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_through_the_router_after_a_drain_gets_every_missed_message_in_order() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = pair(&url, &[]).await;
    let router = router(&[("node-a", &a), ("node-b", &b)]).await;
    let room = "drained";
    let owner = router.placed(room).await;
    let owner_addr = if owner == "node-a" { a.addr() } else { b.addr() };
    let x_url = format!("{}?room={room}&user=x", router.ws_url());
    let p_url = format!("{}?room={room}&user=p", router.ws_url());

    let (mut x, wx) = Client::join(&x_url).await;
    assert_eq!((wx["node"].as_str(), &wx["recovered"]), (Some(owner.as_str()), &json!(false)));
    let e = epoch(&wx);
    let (mut p, _) = Client::join(&p_url).await;
    let before = say(&mut p, &texts("a", 1..=4)).await;
    let got: Vec<u64> = messages(&mut x, 4).await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, before);
    // x resumes after its second message: the replay spans what both owners stamped.
    let since = before[1];

    let (status, body) =
        http(owner_addr, "POST", "/admin/drain?window_ms=0", &[], "").await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(x.closed(STEP).await, Some(1012), "the drain closes x");
    assert_eq!(p.closed(STEP).await, Some(1012), "the drain closes p");

    // While x is away, p comes back through the router (onto the other node) and chats.
    let (mut p, wp) = Client::join(&p_url).await;
    assert_ne!(wp["node"], owner.as_str(), "the router places p on another node: {wp}");
    assert_eq!((epoch(&wp), seq(&wp)), (e.clone(), before[3]), "the next owner goes on: {wp}");
    let after = say(&mut p, &texts("b", 1..=3)).await;

    let (mut x, w) = rejoin(&x_url, since, &e, true).await;
    assert_eq!((&w["node"], epoch(&w), seq(&w)), (&wp["node"], e, after[2]), "{w}");
    let replay = messages(&mut x, seq(&w) - since).await;
    let seqs: Vec<u64> = replay.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (since + 1..=seq(&w)).collect::<Vec<_>>(), "in order, no gap");
    let bodies: Vec<Value> = replay.into_iter().map(|m| m.1).collect();
    assert_eq!(bodies, json!(["a3", "a4", "b1", "b2", "b3"]).as_array().unwrap().clone());
    next_is_live(&mut x, seq(&w), &mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_a_drain_gets_what_a_member_on_another_node_sent_meanwhile() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = pair(&url, &[]).await;
    let router = router(&[("node-a", &a), ("node-b", &b)]).await;
    let room = "spanned";
    let owner = router.placed(room).await;
    let (owner_node, other) = if owner == "node-a" { (&a, &b) } else { (&b, &a) };
    let x_url = format!("{}?room={room}&user=x", router.ws_url());
    let (mut x, wx) = Client::join(&x_url).await;
    let e = epoch(&wx);
    // q, on the other node, chats through the drain and x's absence: the room spans.
    let (q, _) = Client::join(&other.url(room, "q")).await;
    let stop = CancellationToken::new();
    let (acked, q_task) = publisher(q, Duration::from_millis(10), 300, stop.clone());
    let mut last = seq(&wx);
    for _ in 0..20 {
        let m = x.recv_type("message").await;
        assert_eq!(seq(&m), last + 1);
        last = seq(&m);
    }
    let (status, body) =
        http(owner_node.addr(), "POST", "/admin/drain?window_ms=0", &[], "").await.unwrap();
    assert_eq!(status, 202, "{body}");
    // Up to the drain's close, x reads on: its last seq is where it resumes from.
    let close = loop {
        match tokio::time::timeout(STEP, x.ws.next()).await.expect("the drain closes x") {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(t.as_str()).unwrap();
                if m["type"] == "message" {
                    assert_eq!(seq(&m), last + 1, "no gap before the drain");
                    last = seq(&m);
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("x's connection broke: {other:?}"),
        }
    };
    assert_eq!(close, Some(1012));
    let at = acked.lock().unwrap().len();
    wait_until(STEP, "q to chat on while x is away", || async {
        acked.lock().unwrap().len() >= at + 20
    })
    .await;
    let (mut x, w) = rejoin(&x_url, last, &e, true).await;
    assert_eq!(w["node"], other_id(&owner), "{w}");
    stop.cancel();
    tokio::time::timeout(STEP, q_task).await.expect("q stops").unwrap();
    let acked = acked.lock().unwrap().clone();
    let top = *acked.keys().last().unwrap();
    // Replay then live: every seq once, in order, to q's last acknowledged message.
    while last < top {
        let m = x.recv_type("message").await;
        assert_eq!(seq(&m), last + 1, "no gap, no duplicate across the drain");
        last = seq(&m);
        if let Some(body) = acked.get(&last) {
            assert_eq!(&m["body"], body, "seq {last}");
        }
    }
}

fn other_id(id: &str) -> &'static str {
    if id == "node-a" { "node-b" } else { "node-a" }
}

/// A member that follows drains: on a 1012 it resumes through `url` with since/epoch, which
/// must be recovered; everything it gets runs on without a gap or a duplicate. It publishes
/// every `every` when given, until `stop`; then it reads on until the seq `until` names.
/// Returns its last seq and how often it resumed; `settled` counts publishers whose
/// publishes were all answered after `stop`.
async fn follower(
    url: String,
    every: Option<Duration>,
    stop: CancellationToken,
    mut until: tokio::sync::watch::Receiver<u64>,
    settled: Arc<std::sync::atomic::AtomicUsize>,
) -> (u64, u32) {
    let (mut c, w) = Client::join(&url).await;
    let (e, mut last, mut resumes) = (epoch(&w), seq(&w), 0);
    let mut tick = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
    let (mut pending, mut n, mut done) = (0u64, 0u64, false);
    // Bounded: publishes stop at `stop`; the loop ends at `until`, or fails after STEP quiet.
    loop {
        if stop.is_cancelled() && every.is_some() && pending == 0 && !done {
            done = true;
            settled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if stop.is_cancelled() && last >= *until.borrow() {
            return (last, resumes);
        }
        tokio::select! {
            _ = tick.tick(), if every.is_some() && !stop.is_cancelled() => {
                n += 1;
                let f = json!({"type": "publish", "id": n, "body": n});
                // A send racing the drain's close may fail: then no answer comes either.
                if c.ws.send(Message::text(f.to_string())).await.is_ok() {
                    pending += 1;
                }
            }
            _ = until.changed() => {}
            _ = stop.cancelled(), if !done && every.is_some() && pending == 0 => {}
            f = tokio::time::timeout(STEP, c.ws.next()) => match f.expect("a frame in time") {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    match v["type"].as_str() {
                        Some("message") => {
                            assert_eq!(seq(&v), last + 1, "{url}: no gap, no duplicate");
                            last = seq(&v);
                        }
                        Some("ack") | Some("error") => pending = pending.saturating_sub(1),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    assert_eq!(f.map(|f| u16::from(f.code)), Some(1012), "{url}: only the drain");
                    // What was in flight is stamped or lost; either way no ack comes now.
                    pending = 0;
                    resumes += 1;
                    let (next, w) = rejoin(&url, last, &e, true).await;
                    assert_eq!(epoch(&w), e);
                    c = next;
                }
                Some(Ok(_)) => {}
                other => panic!("{url}: connection broke: {other:?}"),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_room_drained_over_a_window_resumes_whole_while_two_chat() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = pair(&url, &[]).await;
    let router = router(&[("node-a", &a), ("node-b", &b)]).await;
    let room = "moving";
    let owner = router.placed(room).await;
    let (owner_node, other) = if owner == "node-a" { (&a, &b) } else { (&b, &a) };
    let stop = CancellationToken::new();
    let (target, until) = tokio::sync::watch::channel(u64::MAX);
    let settled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut members = Vec::new();
    for i in 0..6 {
        let url = format!("{}?room={room}&user=m{i}", router.ws_url());
        let every = (i < 2).then_some(Duration::from_millis(15));
        let f = follower(url, every, stop.clone(), until.clone(), settled.clone());
        members.push(tokio::spawn(f));
    }
    wait_until(STEP, "six members and some chat", || async {
        owner_node.metric("wsnode_connections").await == 6.0
            && owner_node.metric("wsnode_messages_in_total").await >= 20.0
    })
    .await;
    // Members leave over a second: for a while the room has members on both nodes.
    let (status, body) =
        http(owner_node.addr(), "POST", "/admin/drain?window_ms=1000", &[], "").await.unwrap();
    assert_eq!(status, 202, "{body}");
    wait_until(STEP, "every member on the other node", || async {
        other.metric("wsnode_connections").await == 6.0
    })
    .await;
    let moved = other.metric("wsnode_messages_in_total").await;
    wait_until(STEP, "chat on the other node", || async {
        other.metric("wsnode_messages_in_total").await >= moved + 20.0
    })
    .await;
    stop.cancel();
    wait_until(STEP, "the publishers' last acks", || async {
        settled.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    let (_, rooms) =
        http(other.addr(), "GET", &format!("/admin/rooms?room={room}"), &[], "").await.unwrap();
    let rooms: Value = serde_json::from_str(&rooms).unwrap();
    let top = seq(&rooms["rooms"][0]);
    target.send(top).unwrap();
    for m in members {
        let (last, resumes) = tokio::time::timeout(STEP, m).await.expect("members end").unwrap();
        assert_eq!((last, resumes), (top, 1), "every member resumed once and got everything");
    }
}

/// What a member saw around a SIGKILL of its room's node.
struct AfterKill {
    /// The first welcome's seq and epoch.
    from: u64,
    epoch: String,
    /// Every message before the kill and in the resume's replay: seq -> body.
    seen: BTreeMap<u64, Value>,
    /// The resume's welcome, on the other node, and its connection.
    welcome: Value,
    client: Client,
    /// The publisher's acknowledged messages.
    acked: BTreeMap<u64, Value>,
}

/// x and p in a room on node a (of two on Redis, run with `flags`); p publishes every 2 ms
/// and node a is SIGKILLed after 100 acks; x then resumes on node b from the last message it
/// got. Checks that x's messages, before and in the replay, run without a gap.
async fn resume_after_sigkill(flags: &[&str]) -> AfterKill {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let flags = [&["--redis", &url, "--heartbeat-ttl", "1"][..], flags].concat();
    let a = node(&[&["--node-id", "node-a"][..], &flags[..]].concat()).await;
    let b = node(&[&["--node-id", "node-b"][..], &flags[..]].concat()).await;
    let room = "killed";
    let (x, wx) = Client::join(&a.url(room, "x")).await;
    let (from, e) = (seq(&wx), epoch(&wx));
    let (p, _) = Client::join(&a.url(room, "p")).await;

    // x reads until its node dies.
    let reader = tokio::spawn(async move {
        let mut ws = x.ws;
        let mut seen = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(STEP, ws.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "message" {
                    seen.push((seq(&v), v["body"].clone()));
                }
            }
        }
        seen
    });
    // p publishes (at most 400, every 2 ms) until its node dies.
    let (acked, sender) = publisher(p, Duration::from_millis(2), 400, CancellationToken::new());
    wait_until(STEP, "100 acknowledged publishes", || async { acked.lock().unwrap().len() >= 100 })
        .await;
    a.signal("KILL");
    let _ = a.exit().await;
    tokio::time::timeout(STEP, sender).await.expect("p sees its node die").unwrap();
    let seen = tokio::time::timeout(STEP, reader).await.expect("x sees its node die").unwrap();
    let since = seen.last().map_or(from, |m| m.0);
    let seqs: Vec<u64> = seen.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (from + 1..=since).collect::<Vec<_>>(), "x's stream had no gap");

    let (mut x, w) = Client::join(&format!("{}&since={since}&epoch={e}", b.url(room, "x"))).await;
    let mut seen: BTreeMap<u64, Value> = seen.into_iter().collect();
    if w["recovered"] == true {
        for (s, body) in messages(&mut x, seq(&w) - since).await {
            assert!(seen.insert(s, body).is_none(), "seq {s} twice");
        }
        let seqs: Vec<u64> = seen.keys().copied().collect();
        assert_eq!(seqs, (from + 1..=seq(&w)).collect::<Vec<_>>(), "a recovered resume is whole");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100);
    // One more live message continues right after the welcome (and its replay).
    let (mut p, _) = Client::join(&b.url(room, "p")).await;
    next_is_live(&mut x, seq(&w), &mut p).await;
    AfterKill { from, epoch: e, seen, welcome: w, client: x, acked }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_owner_is_sigkilled_gets_every_acknowledged_message() {
    let k = resume_after_sigkill(&["--durable-ack"]).await;
    let w = &k.welcome;
    assert_eq!((&w["recovered"], epoch(w)), (&json!(true), k.epoch), "--durable-ack: {w}");
    for (s, body) in &k.acked {
        assert_eq!(k.seen.get(s), Some(body), "acknowledged seq {s}");
    }
    assert_eq!(k.seen.len() as u64, seq(w) - k.from);
    drop(k.client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_durable_ack_a_resume_after_a_sigkill_never_replays_around_a_hole() {
    // The node may have stamped messages Redis never got: the resume is whole (checked
    // inside) or not recovered at all, and then in a new epoch.
    let k = resume_after_sigkill(&[]).await;
    let w = &k.welcome;
    if w["recovered"] == false {
        assert_ne!(epoch(w), k.epoch, "a lost tail starts a new epoch: {w}");
    }
}

/// x and p chat on a node run with `args`; it stops with SIGTERM and starts again; p comes
/// back and chats on; x resumes from before the restart. The resume's welcome.
async fn resume_after_restart(args: &[&str]) -> (Value, String, Vec<u64>) {
    let args = [&["--node-id", "solo", "--drain-window", "0"][..], args].concat();
    let n = node(&args).await;
    let room = "restarted";
    let (mut x, wx) = Client::join(&n.url(room, "x")).await;
    let e = epoch(&wx);
    let (mut p, _) = Client::join(&n.url(room, "p")).await;
    let old = say(&mut p, &texts("old", 1..=2)).await;
    messages(&mut x, 2).await;
    n.signal("TERM");
    assert!(n.exit().await.success(), "SIGTERM stops the node cleanly");

    let n = node(&args).await;
    let (mut p, _) = Client::join(&n.url(room, "p")).await;
    // The seq goes past x's `since` either way: a resume in a new epoch must still replay
    // nothing.
    let new = say(&mut p, &texts("new", 1..=3)).await;
    let (mut x, w) =
        Client::join(&format!("{}&since={}&epoch={e}", n.url(room, "x"), old[0])).await;
    let mut got = Vec::new();
    if w["recovered"] == true {
        got = messages(&mut x, seq(&w) - old[0]).await.into_iter().map(|m| m.0).collect();
        assert_eq!(got, [&old[1..], &new[..]].concat(), "the replay runs across the restart");
    }
    next_is_live(&mut x, seq(&w), &mut p).await;
    (w, e, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_without_redis_the_epoch_changes_and_the_resume_is_not_recovered() {
    let (w, e, _) = resume_after_restart(&[]).await;
    assert_eq!(w["recovered"], false, "{w}");
    assert_ne!(epoch(&w), e, "a restart without Redis starts a new epoch: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_with_redis_the_epoch_goes_on_and_the_resume_is_recovered() {
    let redis = RedisServer::start().await;
    let (w, e, replay) = resume_after_restart(&["--redis", &redis.url()]).await;
    assert_eq!((&w["recovered"], epoch(&w)), (&json!(true), e), "{w}");
    assert_eq!(replay.len(), 4, "the old owner's last message and the three after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_a_spanning_room_resumes_on_the_surviving_node_after_a_sigkill() {
    // A spanning room's messages are stamped in Redis, so a SIGKILL loses none of them and
    // the node that still holds the room keeps its history and epoch (no --durable-ack).
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = pair(&url, &["--heartbeat-ttl", "1"]).await;
    let room = "wide";
    let (mut x, wx) = Client::join(&a.url(room, "x")).await;
    let e = epoch(&wx);
    let (q, _) = Client::join(&b.url(room, "q")).await;
    let stop = CancellationToken::new();
    let (acked, q_task) = publisher(q, Duration::from_millis(5), 300, stop.clone());
    let got = messages(&mut x, 30).await;
    let since = got[29].0;
    a.signal("KILL");
    let _ = a.exit().await;
    let at = acked.lock().unwrap().len();
    wait_until(STEP, "q to chat on after the kill", || async {
        acked.lock().unwrap().len() >= at + 20
    })
    .await;
    let (mut x, w) = rejoin(&b.url(room, "x"), since, &e, true).await;
    assert_eq!(epoch(&w), e, "{w}");
    stop.cancel();
    tokio::time::timeout(STEP, q_task).await.expect("q stops").unwrap();
    let top = *acked.lock().unwrap().keys().last().unwrap();
    let mut last = since;
    while last < top {
        let m = x.recv_type("message").await;
        assert_eq!(seq(&m), last + 1, "no gap, no duplicate across the kill");
        last = seq(&m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_of_max_recovery_messages_is_replayed_whole() {
    let n = node(&["--history-size", "1000"]).await;
    let url = n.url("long", "x");
    let (x, wx) = Client::join(&url).await;
    let e = epoch(&wx);
    x.close().await;
    let (mut p, _) = Client::join(&n.url("long", "p")).await;
    let sent = say(&mut p, &texts("m", 1..=500)).await;
    let (mut x, w) = rejoin(&url, seq(&wx), &e, true).await;
    let replay: Vec<u64> = messages(&mut x, 500).await.into_iter().map(|m| m.0).collect();
    assert_eq!((replay, seq(&w)), (sent.clone(), sent[499]), "the default --max-recovery, 500");
    next_is_live(&mut x, seq(&w), &mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_history_works_in_memory_and_a_resume_that_needs_redis_is_not_recovered() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = pair(&url, &[]).await;
    let room = "offline";
    let x_url = a.url(room, "x");
    let (mut x, wx) = Client::join(&x_url).await;
    let e = epoch(&wx);
    let (mut p, _) = Client::join(&a.url(room, "p")).await;
    let before = say(&mut p, &texts("m", 1..=2)).await;
    messages(&mut x, 2).await;
    x.close().await;

    redis.kill();
    // A one-node room goes on, and its owner still replays from memory.
    let during = say(&mut p, &texts("m", 3..=5)).await;
    let (mut x, w) = rejoin(&x_url, before[1], &e, true).await;
    let replay: Vec<u64> = messages(&mut x, 3).await.into_iter().map(|m| m.0).collect();
    assert_eq!((replay, seq(&w)), (during.clone(), during[2]));
    // Another node cannot read the history without Redis: it answers at once, unrecovered.
    let (y, w) = rejoin(&b.url(room, "y"), before[1], &e, false).await;
    assert_eq!(w["node"], "node-b");
    y.close().await;
    next_is_live(&mut x, during[2], &mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_history_is_not_recovered_and_gets_nothing_stale() {
    let n = node(&["--history-size", "5"]).await;
    let url = n.url("behind", "x");
    let (mut x, wx) = Client::join(&url).await;
    let e = epoch(&wx);
    let (mut p, _) = Client::join(&n.url("behind", "p")).await;
    let first = say(&mut p, &texts("m", 1..=1)).await[0];
    messages(&mut x, 1).await;
    x.close().await;

    // Exactly history_size missed: all still held.
    let five = say(&mut p, &texts("m", 2..=6)).await;
    let (mut x, w) = rejoin(&url, first, &e, true).await;
    let replay: Vec<u64> = messages(&mut x, 5).await.into_iter().map(|m| m.0).collect();
    assert_eq!((replay, seq(&w)), (five.clone(), five[4]));
    x.close().await;

    // One more than history_size missed: the oldest is gone, so nothing is replayed.
    let six = say(&mut p, &texts("m", 7..=12)).await;
    let (mut x, w) = rejoin(&url, five[4], &e, false).await;
    assert_eq!((epoch(&w), seq(&w)), (e.clone(), six[5]), "{w}");
    next_is_live(&mut x, seq(&w), &mut p).await;
    x.close().await;

    // A since ahead of the room is none of this epoch's messages.
    let (mut x, w) = rejoin(&url, six[5] + 10, &e, false).await;
    assert_eq!(seq(&w), six[5] + 1, "{w}");
    next_is_live(&mut x, seq(&w), &mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_missed_more_than_max_recovery_is_not_recovered() {
    let n = node(&["--max-recovery", "3"]).await;
    let url = n.url("far", "x");
    let (mut x, wx) = Client::join(&url).await;
    let e = epoch(&wx);
    let (mut p, _) = Client::join(&n.url("far", "p")).await;
    let first = say(&mut p, &texts("m", 1..=1)).await[0];
    messages(&mut x, 1).await;
    x.close().await;
    let three = say(&mut p, &texts("m", 2..=4)).await;
    let (mut x, _) = rejoin(&url, first, &e, true).await;
    let replay: Vec<u64> = messages(&mut x, 3).await.into_iter().map(|m| m.0).collect();
    assert_eq!(replay, three, "exactly max_recovery missed: replayed");
    x.close().await;
    let four = say(&mut p, &texts("m", 5..=8)).await;
    let (mut x, w) = rejoin(&url, three[2], &e, false).await;
    assert_eq!((epoch(&w), seq(&w)), (e, four[3]), "{w}");
    next_is_live(&mut x, seq(&w), &mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_by_size_and_ttl_per_rooms_table_of_the_config_file() {
    let dir = std::env::temp_dir().join(format!("roomfleet-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    let toml = "history_size = 20\n\n[[rooms]]\npattern = \"small:*\"\nhistory_size = 3\n\n\
                [[rooms]]\npattern = \"brief:*\"\nhistory_ttl = 2\n\n\
                [[rooms]]\npattern = \"off:*\"\nhistory_size = 0\n";
    std::fs::write(&file, toml).unwrap();
    let n = node(&["--config", file.to_str().unwrap()]).await;

    // By size: the table's 3 for small:*, the file's 20 for rooms no table matches, none
    // for off:*.
    let mut open = Vec::new();
    for (room, size, sent) in [("small:1", 3, 6), ("other", 20, 25), ("off:1", 0, 2)] {
        let (mut p, w) = Client::join(&n.url(room, "p")).await;
        let e = epoch(&w);
        let seqs = say(&mut p, &texts("m", 1..=sent)).await;
        let last = seqs[seqs.len() - 1];
        let oldest = last + 1 - size as u64;
        // One before the oldest held: not whole.
        let (c, _) = rejoin(&n.url(room, "early"), oldest - 2, &e, false).await;
        c.close().await;
        if size > 0 {
            let (mut c, w) = rejoin(&n.url(room, "late"), oldest - 1, &e, true).await;
            let replay: Vec<u64> =
                messages(&mut c, size as u64).await.into_iter().map(|m| m.0).collect();
            assert_eq!(replay, (oldest..=last).collect::<Vec<_>>(), "{room}: the last {size}");
            next_is_live(&mut c, seq(&w), &mut p).await;
        }
        let (_, rooms) =
            http(n.addr(), "GET", &format!("/admin/rooms?room={room}"), &[], "").await.unwrap();
        let info: Value = serde_json::from_str(&rooms).unwrap();
        assert_eq!(info["rooms"][0]["history"], size, "{room}: {info}");
        open.push(p);
    }
    assert_eq!(n.metric("wsnode_history_rooms").await, 2.0, "small:1 and other hold history");
    assert!(n.metric("wsnode_history_bytes").await > 0.0);

    // By TTL: brief:* keeps messages 2 s.
    let (mut p, w) = Client::join(&n.url("brief:1", "p")).await;
    let e = epoch(&w);
    let seqs = say(&mut p, &texts("m", 1..=2)).await;
    let url = n.url("brief:1", "x");
    let (mut x, _) = rejoin(&url, seqs[0] - 1, &e, true).await;
    assert_eq!(messages(&mut x, 2).await.len(), 2, "still held right after publishing");
    x.close().await;
    wait_until(STEP, "brief:1's messages to outlive their TTL", || async {
        let (c, w) = Client::join(&format!("{url}&since={}&epoch={e}", seqs[0] - 1)).await;
        c.close().await;
        w["recovered"] == false
    })
    .await;
    let (mut x, w) = rejoin(&url, seqs[0] - 1, &e, false).await;
    assert_eq!((epoch(&w), seq(&w)), (e, seqs[1]), "the epoch stays: only messages expired");
    next_is_live(&mut x, seq(&w), &mut p).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// History for the merge under load: the test is about the merge, so a resume that missed
/// many messages on a slow machine must still be within the limits.
const LONG_HISTORY: [&str; 6] =
    ["--history-size", "4000", "--max-recovery", "3000", "--outbound-queue", "4096"];

/// The next message `r` gets; after 5 s without one, fails with what `nodes` say of their
/// rooms (a stalled or split room shows there).
async fn next_message(r: &mut Client, nodes: &[&NodeProcess], what: &str) -> Value {
    if let Ok(m) = tokio::time::timeout(Duration::from_secs(5), r.recv_type("message")).await {
        return m;
    }
    let mut rooms = String::new();
    for n in nodes {
        let (_, t) = http(n.addr(), "GET", "/admin/rooms", &[], "").await.unwrap_or_default();
        rooms.push_str(&format!("\n{t}"));
    }
    panic!("{what}: no message in 5 s; the nodes' rooms:{rooms}");
}

/// 20 members of one room on `senders_on` publish while member `r` reads some, leaves,
/// misses some and resumes, round after round, on each of `resume_on` in turn: what `r`
/// gets, replay and live alike, runs on without a gap or a duplicate to the last message.
async fn merge_under_load(senders_on: &NodeProcess, resume_on: &[&NodeProcess]) {
    let room = "busy";
    let stop = CancellationToken::new();
    let mut senders = Vec::new();
    for i in 0..20 {
        let (s, _) = Client::join(&senders_on.url(room, &format!("s{i}"))).await;
        senders.push(publisher(s, Duration::from_millis(40), 300, stop.clone()));
    }
    let mut nodes = resume_on.to_vec();
    nodes.push(senders_on);
    let url = |round: usize| resume_on[round % resume_on.len()].url(room, "r");
    let (mut r, w) = Client::join(&url(0)).await;
    let e = epoch(&w);
    let mut last = seq(&w);
    // Bounded: 8 rounds of read some, leave, miss some, resume.
    for round in 1..=8 {
        for _ in 0..15 {
            let m = next_message(&mut r, &nodes, &format!("round {round} after {last}")).await;
            assert_eq!(seq(&m), last + 1, "round {round}: no gap, no duplicate");
            last = seq(&m);
        }
        drop(r);
        let gone = senders_on.metric("wsnode_messages_in_total").await;
        wait_until(STEP, "messages published while r is away", || async {
            senders_on.metric("wsnode_messages_in_total").await >= gone + 40.0
        })
        .await;
        let (c, w) = rejoin(&url(round), last, &e, true).await;
        assert!(seq(&w) > last, "round {round}: missed some: {w}");
        r = c;
    }
    stop.cancel();
    let mut top = 0;
    for (acked, task) in senders {
        tokio::time::timeout(STEP, task).await.expect("senders stop").unwrap();
        top = top.max(acked.lock().unwrap().keys().last().copied().unwrap_or(0));
    }
    // Everything to the last message arrives once, in order, replay and live alike.
    while last < top {
        let m = next_message(&mut r, &nodes, &format!("after the rounds, after {last}")).await;
        assert_eq!(seq(&m), last + 1, "after the rounds: no gap, no duplicate");
        last = seq(&m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_merges_with_live_traffic_from_20_senders_without_gap_or_duplicate() {
    let n = node(&LONG_HISTORY).await;
    merge_under_load(&n, &[&n]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_alternating_between_two_nodes_merge_with_20_senders_over_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = pair(&url, &LONG_HISTORY).await;
    // Every other resume lands on the senders' node: the room spans, then is one node again.
    merge_under_load(&a, &[&b, &a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_room_costs_redis_only_batched_history_appends() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let n = node(&["--redis", &url, "--history-size", "500"]).await;
    let room = "solo";
    let (mut c, _) = Client::join(&n.url(room, "a")).await;
    c.publish(json!("warm")).await;
    c.recv_type("message").await;
    let log = format!("roomfleet:{{{room}}}:log");
    let stored = |want: u64| {
        let (redis, log) = (&redis, &log);
        async move {
            let r = redis.command(&["XLEN", log]).await;
            r.trim().strip_prefix(':').and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) >= want
        }
    };
    wait_until(STEP, "the first message in the room's stream", || stored(1)).await;

    let before = redis.command_calls().await;
    for i in 0..200 {
        c.publish(json!(i)).await;
    }
    messages(&mut c, 200).await;
    wait_until(STEP, "all 201 messages in the room's stream", || stored(201)).await;
    let after = redis.command_calls().await;
    let delta: HashMap<&str, u64> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    let calls = |k: &str| delta.get(k).copied().unwrap_or(0);
    assert_eq!(calls("publish"), 0, "a one-node room never publishes: {delta:?}");
    let scripts = calls("eval") + calls("evalsha") + calls("fcall");
    assert!(scripts <= 20, "scripts are batched appends, not one per message: {delta:?}");
    // Redis counts the commands a script runs too: a stream holds one entry per XADD, so
    // the appends cost one XADD per message (never more); nothing else runs per message.
    assert!(calls("xadd") <= 200, "each message appended once: {delta:?}");
    for (cmd, d) in delta.iter().filter(|(cmd, _)| **cmd != "xadd") {
        assert!(*d <= 20, "{cmd} ran {d} times for 200 messages: {delta:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_since_and_epoch_get_400_before_the_upgrade_on_the_node_and_the_router() {
    let n = node(&["--node-id", "node-a"]).await;
    let router = router(&[("node-a", &n)]).await;
    let half = "since and epoch go together: a resume needs both";
    let since = "since must be a decimal seq number";
    let epoch = "epoch must be 1 to 64 of [A-Za-z0-9_-]";
    let long = "e".repeat(65);
    let cases = [
        ("since=3".to_string(), half),
        ("epoch=abc".to_string(), half),
        ("since=&epoch=abc".to_string(), since),
        ("since=x1&epoch=abc".to_string(), since),
        ("since=-1&epoch=abc".to_string(), since),
        ("since=%31&epoch=abc".to_string(), since),
        ("since=99999999999999999999999&epoch=abc".to_string(), since),
        ("since=3&epoch=".to_string(), epoch),
        ("since=3&epoch=a.b".to_string(), epoch),
        ("since=3&epoch=a%20b".to_string(), epoch),
        (format!("since=3&epoch={long}"), epoch),
    ];
    for addr in [n.addr(), router.addr] {
        for (query, reason) in &cases {
            let path = format!("/ws?room=r&user=u&{query}");
            let (status, body) = http(addr, "GET", &path, &UPGRADE, "").await.unwrap();
            assert_eq!((status, body.trim()), (400, *reason), "{addr} {path}");
        }
        // A well-formed resume of an unknown epoch is no error: it is just not recovered.
        let url = format!("ws://{addr}/ws?room=r&user=u");
        let (c, _) = rejoin(&url, 3, &"e".repeat(64), false).await;
        c.close().await;
    }
}
