//! The deployment shape end to end, with real binaries and a real Redis on a free port:
//! two routers and a pool of ws-nodes that register themselves (`--discovery redis`).
//! A node added later joins both rings; both routers place rooms alike; a node stopped
//! with SIGTERM while rooms chat hands every client over without losing a message, and
//! once it has left a router's ring it never comes back as placeable while it drains.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use shared::testkit::process::{Process, RouterProcess};
use shared::testkit::ws::WsClient;
use shared::testkit::{RedisServer, free_port, wait_until};
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(15);

fn node(redis: &str, id: &str) -> (Process, u16) {
    node_waiting(redis, id, "1.5")
}

/// A node that waits `deregister_wait` seconds after SIGTERM before it drains.
fn node_waiting(redis: &str, id: &str, deregister_wait: &str) -> (Process, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &addr,
        "--node-id",
        id,
        "--redis",
        redis,
        "--advertise",
        &addr,
        "--heartbeat-ttl",
        "3",
        "--deregister-wait",
        deregister_wait,
        "--drain-window",
        "1",
    ];
    (Process::bin("ws-node", &args.map(String::from)), port)
}

async fn router(redis: &str) -> RouterProcess {
    RouterProcess::start(&["--discovery", "redis", "--redis", redis, "--discovery-interval", "0.5"])
        .await
}

async fn ring_ids(r: &RouterProcess) -> Vec<String> {
    r.placeable().await
}

async fn placed(r: &RouterProcess, room: &str) -> String {
    r.placed(room).await
}

/// One chatting member: publishes every 100 ms with an id, follows 1012 to a new node
/// through its router, and checks that each session's seq runs on without a gap.
struct Session {
    node: String,
    /// Highest seq seen and highest seq acked for its own publishes, this session.
    seen: u64,
    acked: u64,
}

async fn member(
    url: String,
    stop: CancellationToken,
    victim_closed: CancellationToken,
) -> Vec<Session> {
    let mut sessions = Vec::new();
    let mut n = 0u64;
    'connect: for _ in 0..5 {
        let (mut c, w) = WsClient::join(&url).await;
        let mut s = Session {
            node: w["node"].as_str().unwrap().to_string(),
            seen: w["seq"].as_u64().unwrap(),
            acked: 0,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick(), if !stop.is_cancelled() => {
                    n += 1;
                    c.send_json(&json!({"type": "publish", "body": n, "id": n})).await;
                }
                m = tokio::time::timeout(Duration::from_secs(2), futures_util::StreamExt::next(&mut c.ws)) => {
                    use tokio_tungstenite::tungstenite::Message;
                    match m {
                        // Quiet for 2 s after the stop: everything has arrived.
                        Err(_) if stop.is_cancelled() => { sessions.push(s); break 'connect; }
                        Err(_) => panic!("no frame for 2 s while chatting"),
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            match v["type"].as_str() {
                                Some("message") => {
                                    let seq = v["seq"].as_u64().unwrap();
                                    assert_eq!(seq, s.seen + 1, "no gap, no duplicate on {}", s.node);
                                    s.seen = seq;
                                }
                                Some("ack") => s.acked = s.acked.max(v["seq"].as_u64().unwrap()),
                                Some("error") => panic!("error frame {v}"),
                                _ => {}
                            }
                        }
                        Ok(Some(Ok(Message::Close(f)))) => {
                            let code = f.map(|f| u16::from(f.code));
                            assert_eq!(code, Some(1012), "only the drain closes us");
                            victim_closed.cancel();
                            sessions.push(s);
                            continue 'connect;
                        }
                        Ok(Some(Ok(_))) => {}
                        other => panic!("connection broke: {other:?}"),
                    }
                }
            }
        }
    }
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_a_registered_pool_and_a_rolling_stop() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes: HashMap<String, Process> = HashMap::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.insert(id.into(), node(&url, id).0);
    }
    let routers = [router(&url).await, router(&url).await];
    for r in &routers {
        wait_until(STEP, "three registered nodes in each ring", || async {
            ring_ids(r).await.len() == 3
        })
        .await;
    }

    // A fourth node appears in both rings and takes about a quarter of new rooms.
    nodes.insert("node-d".into(), node(&url, "node-d").0);
    for r in &routers {
        wait_until(STEP, "node-d in each ring", || async { ring_ids(r).await.len() == 4 }).await;
    }
    let mut on_d = 0;
    for i in 0..1000 {
        let room = format!("room-{i}");
        let (a, b) = (placed(&routers[0], &room).await, placed(&routers[1], &room).await);
        assert_eq!(a, b, "both routers place {room} alike");
        on_d += usize::from(a == "node-d");
    }
    assert!((150..=350).contains(&on_d), "node-d got {on_d} of 1000 rooms");

    // 50 rooms chat, two members each, one through each router.
    let stop = CancellationToken::new();
    let closed = CancellationToken::new();
    let mut owners = HashMap::new();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let room = format!("chat-{i}");
        owners.insert(room.clone(), placed(&routers[0], &room).await);
        for (k, r) in routers.iter().enumerate() {
            let url = format!("{}?room={room}&user=m{k}", r.ws_url());
            tasks.push((room.clone(), tokio::spawn(member(url, stop.clone(), closed.clone()))));
        }
    }
    // Stop the node holding most of them, with SIGTERM, while they chat.
    let mut count: HashMap<&str, usize> = HashMap::new();
    owners.values().for_each(|n| *count.entry(n).or_default() += 1);
    let victim = count.iter().max_by_key(|(_, n)| **n).map(|(id, _)| id.to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // let some chat happen first
    nodes[&victim].signal("TERM");
    tokio::time::timeout(STEP, closed.cancelled()).await.expect("the victim drains its clients");
    let exited = nodes.remove(&victim).unwrap().exit().await;
    assert!(exited.success(), "the stopped node exits cleanly: {exited:?}");
    for r in &routers {
        wait_until(STEP, "the stopped node out of each ring", || async {
            !ring_ids(r).await.contains(&victim)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // chat on the new owners
    stop.cancel();

    let mut by_room: HashMap<String, Vec<Vec<Session>>> = HashMap::new();
    for (room, t) in tasks {
        by_room.entry(room).or_default().push(t.await.expect("member task"));
    }
    let mut moved = 0;
    for (room, members) in by_room {
        let last: Vec<&Session> = members.iter().map(|s| s.last().unwrap()).collect();
        assert_eq!(last[0].node, last[1].node, "{room}: both members end on one node");
        assert_ne!(last[0].node, victim, "{room}: nobody stays on the stopped node");
        if owners[&room] == victim {
            moved += 1;
            assert!(members.iter().all(|s| s.len() == 2), "{room}: every member reconnected once");
        }
        // Every message published after the last welcome arrived: each member saw the room's
        // seq run without a gap up to everything either member got acked.
        let top = last.iter().map(|s| s.acked).max().unwrap();
        for s in &last {
            assert!(s.seen >= top, "{room}: saw up to {} but {} was acked", s.seen, top);
        }
    }
    assert!(moved > 0, "the stopped node held some rooms");
}

/// Samples `r`'s ring until `exited` and returns what went wrong: `victim` still placed
/// after `leave` (first sample that lacked it), or placed again once it had left.
async fn watch_ring(
    r: &RouterProcess,
    victim: &str,
    exited: CancellationToken,
) -> Result<Duration, String> {
    let sent = tokio::time::Instant::now();
    let mut left: Option<Duration> = None;
    // Bounded: the node exits within its deregister wait and drain window; STEP * 2 is ample.
    while sent.elapsed() < STEP * 2 {
        let done = exited.is_cancelled();
        let placed = ring_ids(r).await.iter().any(|id| id == victim);
        match (placed, left) {
            (false, None) => left = Some(sent.elapsed()),
            (true, Some(at)) => {
                return Err(format!(
                    "{victim} left at {at:?} and was placeable again at {:?} after SIGTERM",
                    sent.elapsed()
                ));
            }
            _ => {}
        }
        if done {
            return left.ok_or_else(|| format!("{victim} still placed after it exited"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{victim} did not exit within {:?}", STEP * 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_a_node_is_never_placeable_again_in_any_router() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    // The victim holds a client, so it stays alive through its deregister wait and drain
    // window: about 4 s during which its heartbeat keeps running.
    let (victim, victim_port) = node_waiting(&url, "victim", "3");
    let _other = node(&url, "other").0;
    let routers = [router(&url).await, router(&url).await];
    for r in &routers {
        wait_until(STEP, "both nodes in each ring", || async { ring_ids(r).await.len() == 2 })
            .await;
    }
    let _client =
        WsClient::join(&format!("ws://127.0.0.1:{victim_port}/ws?room=held&user=u")).await;

    let exited = CancellationToken::new();
    victim.signal("TERM");
    let watchers: Vec<_> =
        routers.iter().map(|r| watch_ring(r, "victim", exited.clone())).collect();
    let waiter = async {
        let status = tokio::time::timeout(STEP * 2, victim.exit()).await.expect("the node exits");
        exited.cancel();
        status
    };
    let (results, status) = tokio::join!(futures_util::future::join_all(watchers), waiter);
    assert!(status.success(), "the stopped node exits cleanly");
    for (i, r) in results.into_iter().enumerate() {
        let left = r.unwrap_or_else(|e| panic!("router {i}: {e}"));
        eprintln!("router {i}: victim off the ring {left:?} after SIGTERM");
    }
}
