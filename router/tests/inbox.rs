//! The Redis inbox against a real Redis: entries are published once each even when a router
//! process is SIGKILLed mid-stream (another router claims what it left pending), and
//! malformed entries are dead-lettered with their reason.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use router::inbox::InboxConfig;
use shared::testkit::{RedisServer, free_port, wait_until};

/// A router process reading the inbox; SIGKILLed on drop.
struct RouterProc {
    child: Child,
    admin: std::net::SocketAddr,
}

impl RouterProc {
    async fn start(nodes: &[&TestNode], redis: &RedisServer, consumer: &str) -> Self {
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
        cmd.args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(["--admin", &admin.to_string()])
            .args(["--redis", &redis.url(), "--inbox", "--inbox-claim-idle", "1"])
            .args(["--inbox-consumer", consumer])
            .env_remove("ROUTER_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for n in nodes {
            cmd.args(["--node", &format!("{}={}", n.id, n.addr)]);
        }
        let child = cmd.spawn().expect("the router binary");
        wait_until(STEP, "the router to be ready", || async move {
            shared::testkit::http(admin, "GET", "/readyz", &[], "")
                .await
                .is_ok_and(|(s, _)| s == 200)
        })
        .await;
        Self { child, admin }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = shared::testkit::http(self.admin, "GET", "/metrics", &[], "").await.unwrap().1;
        shared::metrics::sample(&text, name).unwrap_or(0.0)
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Appends `n` entries `{"n": from..from+n}` for `room` in one round trip.
async fn append(conn: &mut redis::aio::MultiplexedConnection, room: &str, from: u64, n: u64) {
    let mut p = redis::pipe();
    for i in from..from + n {
        p.cmd("XADD")
            .arg("roomfleet:inbox")
            .arg("*")
            .arg("room")
            .arg(room)
            .arg("body")
            .arg(format!(r#"{{"n":{i}}}"#))
            .ignore();
    }
    let () = p.query_async(conn).await.unwrap();
}

async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg("roomfleet:inbox")
        .arg("routers")
        .query_async(conn)
        .await
        .unwrap();
    match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test]
async fn entries_are_published_once_each_when_a_router_is_killed_mid_stream() {
    let redis = RedisServer::start().await;
    let hub = ws_node::LocalHub::new();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        nodes.push(TestNode::start(id, &hub).await);
    }
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let mut victim = Some(RouterProc::start(&refs, &redis, "r1").await);
    let survivor = RouterProc::start(&refs, &redis, "r2").await;
    let (_, owner) = admin(survivor.admin, "GET", "/admin/placement?room=jobs:1", &[], "").await;
    let owner = nodes.iter().find(|n| owner["node"] == n.id.as_str()).unwrap();
    let (mut member, _) = join(&format!("ws://{}/ws?room=jobs:1&user=watcher", owner.addr)).await;

    let mut conn = redis_conn(&redis).await;
    const FIRST: u64 = 600;
    const TOTAL: u64 = 800;
    append(&mut conn, "jobs:1", 0, FIRST).await;
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last_seq = 0;
    while seen.len() < TOTAL as usize {
        let m = member.recv_type("message").await;
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "one order without gaps: {m}");
        last_seq = seq;
        let n = m["body"]["n"].as_u64().unwrap();
        assert!(seen.insert(n, seq).is_none(), "entry {n} delivered twice: {m}");
        assert!(m["id"].as_str().is_some_and(|id| id.contains('-')), "the stream id as id: {m}");
        if seen.len() == 100
            && let Some(mut v) = victim.take()
        {
            // Mid-stream: the victim holds a batch it has not acknowledged yet.
            let _ = v.child.kill();
            let _ = v.child.wait();
            append(&mut conn, "jobs:1", FIRST, TOTAL - FIRST).await;
        }
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (0..TOTAL).collect::<Vec<_>>());
    wait_until(STEP, "every entry acknowledged", || {
        let mut c = conn.clone();
        async move { pending(&mut c).await == 0 }
    })
    .await;
    let dead: u64 = conn.xlen("roomfleet:inbox:dead").await.unwrap();
    assert_eq!(dead, 0);
    assert!(
        survivor.metric("router_inbox_claimed_total").await > 0.0,
        "the survivor claimed what the victim left pending"
    );
}

#[tokio::test]
async fn malformed_entries_are_dead_lettered_with_their_reason() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let s = Setup::with(2, |c| {
        c.inbox = Some(InboxConfig {
            redis: url,
            prefix: "roomfleet".into(),
            consumer: "r1".into(),
            claim_idle: Duration::from_secs(1),
        })
    })
    .await;
    let (mut member, _) = join(&s.url("ok:1", "w")).await;
    let mut conn = redis_conn(&redis).await;
    let entries: [&[(&str, &str)]; 6] = [
        &[("body", "1")],
        &[("room", "bad room"), ("body", "1")],
        &[("room", "ok:1")],
        &[("room", "ok:1"), ("body", "{not json")],
        &[("room", "ok:1"), ("body", "1"), ("colour", "red")],
        &[("room", "ok:1"), ("body", r#"{"fine":true}"#), ("id", "job-7"), ("from", "judge")],
    ];
    for fields in entries {
        let _: String = conn.xadd("roomfleet:inbox", "*", fields).await.unwrap();
    }
    let m = member.recv_type("message").await;
    assert_eq!((m["body"]["fine"].as_bool(), m["id"].as_str()), (Some(true), Some("job-7")));
    assert_eq!(m["from"], "judge");
    wait_until(STEP, "five dead letters", || {
        let mut c = conn.clone();
        async move { c.xlen::<_, u64>("roomfleet:inbox:dead").await.unwrap_or(0) == 5 }
    })
    .await;
    let dead: redis::streams::StreamRangeReply =
        conn.xrange_all("roomfleet:inbox:dead").await.unwrap();
    let reasons: Vec<String> =
        dead.ids.iter().map(|e| e.get::<String>("reason").unwrap()).collect();
    for (got, want) in reasons.iter().zip([
        "no room field",
        "room: room has a character",
        "no body field",
        "body is not JSON",
        "unknown field \"colour\"",
    ]) {
        assert!(got.starts_with(want), "{got:?} is not {want:?}");
    }
    assert_eq!(dead.ids[1].get::<String>("field:room").as_deref(), Some("bad room"));
    assert!(dead.ids[0].get::<String>("entry").is_some_and(|e| e.contains('-')));
    wait_until(STEP, "every entry acknowledged", || {
        let mut c = conn.clone();
        async move { pending(&mut c).await == 0 }
    })
    .await;
    assert_eq!(s.metric("router_inbox_dead_total").await, 5.0);
    assert_eq!(s.metric("router_inbox_published_total").await, 1.0);
}
