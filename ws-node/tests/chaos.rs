//! Chaos with real processes and a real Redis: rooms spanning four `ws-node` processes,
//! members connected straight to each, while (in a seeded order) one node is SIGKILLed,
//! Redis kills every Pub/Sub connection, Redis restarts empty and a new node joins the
//! rooms. Members that stay connected must miss, duplicate and reorder no acknowledged
//! message. `ROOMFLEET_CHAOS_SEEDS=1..20` runs more seeds (CI runs one).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::NodeProcess;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::testkit::ws::WsClient;
use shared::testkit::{RedisServer, wait_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const ROOMS: usize = 3;
/// How often each member publishes.
const EVERY: Duration = Duration::from_millis(120);

/// What one member saw.
#[derive(Debug, Default)]
struct Seen {
    node: String,
    welcome: u64,
    /// (seq, body) in arrival order.
    messages: Vec<(u64, String)>,
    /// Acknowledged publishes: seq -> body.
    acked: BTreeMap<u64, String>,
    /// The connection ended (its node died): it did not stay connected.
    dropped: bool,
}

type Log = Arc<Mutex<Seen>>;

async fn member(url: String, name: String, stop: CancellationToken) -> Log {
    let (c, w) = WsClient::join(&url).await;
    let log: Log = Arc::new(Mutex::new(Seen {
        node: w["node"].as_str().unwrap_or("").to_owned(),
        welcome: w["seq"].as_u64().unwrap(),
        ..Seen::default()
    }));
    let out = log.clone();
    tokio::spawn(async move {
        let mut ws = c.ws;
        let mut tick = tokio::time::interval(EVERY);
        let mut sent: HashMap<String, String> = HashMap::new();
        // Bounded: at most this many publishes per member.
        let mut n = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    // Keep reading until told the run is over, so late frames land.
                    break;
                }
                _ = tick.tick(), if n < 2_000 => {
                    n += 1;
                    let id = format!("{name}-{n}");
                    let body = json!({"from": name, "n": n}).to_string();
                    sent.insert(id.clone(), body.clone());
                    let f = json!({"type": "publish", "id": id, "body": {"from": name, "n": n}});
                    if ws.send(Message::text(f.to_string())).await.is_err() {
                        log.lock().unwrap().dropped = true;
                        return;
                    }
                }
                m = ws.next() => {
                    let Some(Ok(Message::Text(t))) = m else {
                        if !matches!(m, Some(Ok(_))) {
                            log.lock().unwrap().dropped = true;
                            return;
                        }
                        continue;
                    };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let mut l = log.lock().unwrap();
                    match v["type"].as_str() {
                        Some("message") => {
                            l.messages.push((v["seq"].as_u64().unwrap(), v["body"].to_string()))
                        }
                        Some("ack") => {
                            let id = v["id"].as_str().unwrap_or("");
                            if let Some(body) = sent.remove(id) {
                                l.acked.insert(v["seq"].as_u64().unwrap(), body);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        // The rest of the stream, until the test closes the socket by dropping it.
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "message" {
                    log.lock()
                        .unwrap()
                        .messages
                        .push((v["seq"].as_u64().unwrap(), v["body"].to_string()));
                }
            }
        }
    });
    out
}

fn node(id: &str, redis: &str) -> Vec<String> {
    ["--node-id", id, "--redis", redis, "--heartbeat-ttl", "2", "--repair-interval", "1"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--publish-rate", "100", "--span-timeout", "0.5"].iter().map(|s| s.to_string()))
        .collect()
}

async fn start(id: &str, redis: &str) -> NodeProcess {
    let args = node(id, redis);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    NodeProcess::start(&args, &[], None).await
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillNode,
    PubsubKill,
    RedisRestart,
    NewNode,
}

async fn run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c", "victim"] {
        nodes.push(start(id, &url).await);
    }
    let stop = CancellationToken::new();
    let mut members: Vec<(String, Log)> = Vec::new();
    for r in 0..ROOMS {
        for (i, n) in nodes.iter().enumerate() {
            let name = format!("r{r}n{i}");
            let log = member(n.url(&format!("room{r}"), &name), name.clone(), stop.clone()).await;
            members.push((format!("room{r}"), log));
        }
    }
    let mut faults = vec![Fault::KillNode, Fault::PubsubKill, Fault::RedisRestart, Fault::NewNode];
    rng.shuffle(&mut faults);
    let mut newcomer = None;
    for f in faults {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1200))).await;
        match f {
            Fault::KillNode => {
                let victim = nodes.pop().expect("the victim");
                victim.signal("KILL");
                let _ = victim.exit().await;
            }
            Fault::PubsubKill => {
                redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
            }
            Fault::RedisRestart => redis.restart().await,
            Fault::NewNode => {
                let n = start("late", &url).await;
                for r in 0..ROOMS {
                    let name = format!("r{r}late");
                    let log = member(n.url(&format!("room{r}"), &name), name, stop.clone()).await;
                    members.push((format!("room{r}"), log));
                }
                newcomer = Some(n);
            }
        }
    }
    // Traffic goes on over the repair intervals after the last fault, then stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    // Every acknowledged message reaches every member that stayed connected.
    let acked: BTreeMap<(String, u64), String> = members
        .iter()
        .flat_map(|(room, l)| {
            let l = l.lock().unwrap();
            l.acked.iter().map(|(s, b)| ((room.clone(), *s), b.clone())).collect::<Vec<_>>()
        })
        .collect();
    wait_until(Duration::from_secs(15), "acknowledged messages to arrive", || async {
        members.iter().all(|(room, l)| {
            let l = l.lock().unwrap();
            l.dropped
                || acked
                    .iter()
                    .filter(|((r, s), _)| r == room && *s > l.welcome)
                    .all(|((_, s), _)| l.messages.iter().any(|(m, _)| m == s))
        })
    })
    .await;
    let mut stayed = 0;
    for (room, l) in &members {
        let l = l.lock().unwrap();
        if l.dropped {
            assert_eq!(l.node, "victim", "seed {seed}: only the killed node's members drop");
            continue;
        }
        stayed += 1;
        let mut prev = l.welcome;
        for (s, body) in &l.messages {
            assert!(*s > prev, "seed {seed} {room} on {}: seq {s} after {prev}", l.node);
            prev = *s;
            if let Some(b) = acked.get(&(room.clone(), *s)) {
                assert_eq!(b, body, "seed {seed} {room} on {}: one order", l.node);
            }
        }
    }
    assert!(stayed >= ROOMS * 4, "seed {seed}: members that stayed: {stayed}");
    assert!(acked.len() > 100, "seed {seed}: traffic flowed ({} acked)", acked.len());
    drop(newcomer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_stay_connected_lose_nothing_through_kills_and_redis_restarts() {
    let seeds = std::env::var("ROOMFLEET_CHAOS_SEEDS").unwrap_or_else(|_| "1".into());
    let (lo, hi) = match seeds.split_once("..") {
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => (seeds.parse().unwrap(), seeds.parse().unwrap()),
    };
    for seed in lo..=hi {
        run(seed).await;
        eprintln!("chaos seed {seed}: ok");
    }
}
