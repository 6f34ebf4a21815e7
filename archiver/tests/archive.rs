//! The archive end to end, with real processes: a `redis-server`, a PostgreSQL, `ws-node`s
//! that queue archived rooms' messages, and `archiver`s. Every message acknowledged to a
//! client ends up in the database exactly once through a database outage under load, an
//! archiver SIGKILLed with a batch in hand, a node SIGKILLed, and a poison message.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::testkit::postgres::PostgresServer;
use shared::testkit::process::{Process, workspace_bin};
use shared::testkit::{RedisServer, free_port, http, wait_until};
use tokio_tungstenite::tungstenite::Message;

/// One archived message: room, epoch, seq.
type Key = (String, String, i64);

/// How long the archive may take to catch up at the end of a scenario.
const CATCH_UP: Duration = Duration::from_secs(60);

struct Node {
    port: u16,
    process: Process,
}

impl Node {
    async fn start(redis: &RedisServer, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--node-id".into(),
            format!("n{port}"),
            "--redis".into(),
            redis.url(),
            "--archive".into(),
            "--publish-rate".into(),
            "10000".into(),
            "--publish-burst".into(),
            "10000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Process::bin("ws-node", &args);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_until(Duration::from_secs(15), "ws-node to be ready", || async move {
            http(addr, "GET", "/readyz", &[], "").await.is_ok_and(|(s, _)| s == 200)
        })
        .await;
        Self { port, process }
    }

    fn url(&self, room: &str, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?room={room}&user={user}", self.port)
    }
}

struct Archiver {
    metrics: SocketAddr,
    process: Process,
}

impl Archiver {
    async fn start(redis: &RedisServer, db: &str, name: &str, batch: usize) -> Self {
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = std::process::Command::new(workspace_bin("archiver"));
        cmd.args(["--queue", &redis.url(), "--db", db, "--consumer", name])
            .args(["--batch", &batch.to_string(), "--block", "0.1", "--claim-idle", "1"])
            .args(["--metrics", &metrics.to_string()])
            .env_remove("ARCHIVER_CONFIG")
            .env("RUST_LOG", "warn");
        let process = Process::spawn(cmd);
        wait_until(Duration::from_secs(30), "the archiver's /metrics", || async move {
            http(metrics, "GET", "/healthz", &[], "").await.is_ok_and(|(s, _)| s == 200)
        })
        .await;
        Self { metrics, process }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = http(self.metrics, "GET", "/metrics", &[], "").await.map(|r| r.1);
        text.ok().and_then(|t| shared::metrics::sample(&t, name)).unwrap_or(0.0)
    }
}

/// Clients that publish one message after another (each waits for its ack) into their own
/// rooms, and remember every acknowledged one.
struct Chatter {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<BTreeSet<Key>>>,
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Chatter {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            acked: Default::default(),
            count: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        }
    }

    /// Starts a client in `room` on `url` that publishes until stopped or its connection
    /// breaks; bodies carry `poison` every 50th message when asked.
    fn spawn(&mut self, url: String, room: &str, poison: bool) {
        let (stop, acked, count, room) =
            (self.stop.clone(), self.acked.clone(), self.count.clone(), room.to_string());
        self.tasks.push(tokio::spawn(async move {
            let Ok(Ok((mut ws, _))) =
                tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
                    .await
            else {
                return;
            };
            let mut epoch = String::new();
            let mut id = 0u64;
            // Bounded: at most this many messages per client, whatever the test does.
            while !stop.load(Ordering::Relaxed) && id < 100_000 {
                if !epoch.is_empty() {
                    id += 1;
                    let body = if poison && id.is_multiple_of(50) {
                        json!("bad\u{0}")
                    } else {
                        json!({"n": id})
                    };
                    let frame = json!({"type": "publish", "body": body, "id": id}).to_string();
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                    let Ok(Some(Ok(Message::Text(t)))) = next else {
                        match next {
                            Ok(Some(Ok(_))) => continue,
                            _ => return,
                        }
                    };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("welcome") => {
                            epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                            break;
                        }
                        Some("ack") if v["id"] == id => {
                            let seq = v["seq"].as_i64().unwrap_or_default();
                            acked.lock().unwrap().insert((room.clone(), epoch.clone(), seq));
                            count.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some("error") => return,
                        _ => {}
                    }
                }
            }
        }));
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` more messages were acknowledged.
    async fn more(&self, n: u64, what: &str) {
        let want = self.count() + n;
        wait_until(Duration::from_secs(30), what, || async move { self.count() >= want }).await;
    }

    /// Stops every client; the set of acknowledged messages.
    async fn finish(self) -> BTreeSet<Key> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.acked.lock().unwrap().clone()
    }
}

/// The archive database of a scenario: a PostgreSQL of the test's own, or an SQLite file.
/// "Stopping" SQLite holds its write lock from another connection (`BEGIN EXCLUSIVE`):
/// the archivers' writes fail (busy) as a PostgreSQL that is down fails them.
enum Db {
    Postgres(PostgresServer),
    Sqlite { dir: std::path::PathBuf, lock: Option<sqlx::SqliteConnection> },
}

impl Db {
    async fn postgres() -> Self {
        Self::Postgres(PostgresServer::start().await)
    }

    fn sqlite(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("archiver-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::Sqlite { dir, lock: None }
    }

    fn url(&self) -> String {
        match self {
            Self::Postgres(pg) => pg.url(),
            Self::Sqlite { dir, .. } => format!("sqlite:{}", dir.join("archive.db").display()),
        }
    }

    async fn stop(&mut self) {
        let url = self.url();
        match self {
            Self::Postgres(pg) => pg.stop(),
            Self::Sqlite { lock, .. } => {
                use sqlx::Connection;
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE").execute(&mut c).await.unwrap();
                *lock = Some(c);
            }
        }
    }

    async fn start_again(&mut self) {
        match self {
            Self::Postgres(pg) => pg.start_again().await,
            Self::Sqlite { lock, .. } => {
                if let Some(mut c) = lock.take() {
                    sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
                }
            }
        }
    }

    /// Every message in the archive (empty while it cannot be read).
    async fn archived(&self) -> Vec<Key> {
        let sql = "SELECT room, epoch, seq FROM messages ORDER BY room, epoch, seq";
        let Ok(store) = archiver::Store::open(&self.url()).await else { return Vec::new() };
        let rows = match &store {
            archiver::Store::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
            archiver::Store::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
        };
        store.close().await;
        rows.unwrap_or_default()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Self::Sqlite { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits until the archive holds every message of `acked`, then checks it holds each once
/// and (unless `extra` allows some: unacknowledged messages a dead node had stamped)
/// nothing else.
async fn assert_archived(db: &Db, acked: &BTreeSet<Key>, extra: usize) {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let got: BTreeSet<Key> = db.archived().await.into_iter().collect();
        let missing: Vec<&Key> = acked.difference(&got).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged messages are not archived after {CATCH_UP:?}, e.g. {:?}; archived {}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)],
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = db.archived().await;
    let distinct: BTreeSet<Key> = rows.iter().cloned().collect();
    assert_eq!(rows.len(), distinct.len(), "a message archived twice");
    let others: Vec<&Key> = distinct.difference(acked).collect();
    assert!(others.len() <= extra, "messages nobody sent: {:?}", &others[..others.len().min(5)]);
}

async fn connect(pg: &PostgresServer) -> sqlx::PgPool {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&pg.url()).await;
    pool.unwrap_or_else(|e| panic!("connect to the test's PostgreSQL: {e}"))
}

/// Entries of the archive queue read but not acknowledged yet, over every shard.
async fn pending(redis: &RedisServer) -> u64 {
    let mut n = 0;
    for s in 0..shared::archive::DEFAULT_SHARDS {
        let key = shared::archive::stream_key("roomfleet", s);
        let r = redis.command(&["XPENDING", &key, shared::archive::GROUP]).await;
        n += r
            .lines()
            .nth(1)
            .and_then(|l| l.trim_start_matches(':').parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

async fn dead_letters(redis: &RedisServer) -> usize {
    let dead = redis.command(&["XLEN", &shared::archive::dead_key("roomfleet")]).await;
    dead.trim().trim_start_matches(':').parse().unwrap_or(0)
}

async fn outage_under_load(mut db: Db) {
    let redis = RedisServer::start().await;
    let node = Node::start(&redis, &[]).await;
    let archiver = Archiver::start(&redis, &db.url(), "a1", 100).await;
    let mut chat = Chatter::new();
    for i in 0..4 {
        chat.spawn(node.url(&format!("chat:{i}"), "ann"), &format!("chat:{i}"), false);
    }
    chat.more(200, "messages before the outage").await;
    db.stop().await;
    // Ten seconds without the database; the rooms go on (their acks keep coming) and the
    // queue holds what the archive cannot take yet.
    let outage = tokio::time::Instant::now();
    let mut rounds = 0;
    while outage.elapsed() < Duration::from_secs(10) && rounds < 100_000 {
        chat.more(20, "acks while the database is down").await;
        rounds += 1;
    }
    wait_until(Duration::from_secs(10), "the archiver to report the outage", || async {
        archiver.metric("archiver_failures_total").await > 0.0
    })
    .await;
    assert!(archiver.metric("archiver_lag_entries").await > 0.0, "the queue holds the backlog");
    db.start_again().await;
    chat.more(100, "messages after the outage").await;
    let acked = chat.finish().await;
    assert_archived(&db, &acked, 0).await;
    wait_until(Duration::from_secs(10), "the lag back to zero", || async {
        archiver.metric("archiver_lag_entries").await == 0.0
    })
    .await;
    drop(archiver.process);
}

#[tokio::test]
async fn a_database_outage_under_load_loses_nothing_and_slows_no_room() {
    outage_under_load(Db::postgres().await).await;
}

#[tokio::test]
async fn a_locked_sqlite_under_load_loses_nothing_and_slows_no_room() {
    outage_under_load(Db::sqlite("outage")).await;
}

async fn takeover(mut db: Db) {
    let redis = RedisServer::start().await;
    let node = Node::start(&redis, &[]).await;
    let first = Archiver::start(&redis, &db.url(), "first", 50).await;
    let mut chat = Chatter::new();
    for i in 0..4 {
        chat.spawn(node.url(&format!("room-{i}"), "bob"), &format!("room-{i}"), false);
    }
    chat.more(200, "messages").await;
    // Kill it while it holds entries it read but has not acknowledged: with the database
    // down it cannot commit (and so cannot acknowledge) what it read, whatever the timing.
    db.stop().await;
    wait_until(Duration::from_secs(30), "the first archiver to hold a batch", || async {
        pending(&redis).await > 0
    })
    .await;
    first.process.signal("KILL");
    db.start_again().await;
    chat.more(200, "messages after the kill").await;
    let second = Archiver::start(&redis, &db.url(), "second", 50).await;
    chat.more(100, "messages with the second archiver").await;
    let acked = chat.finish().await;
    assert_archived(&db, &acked, 0).await;
    wait_until(Duration::from_secs(10), "the dead one's entries claimed", || async {
        second.metric("archiver_claimed_total").await > 0.0
    })
    .await;
    wait_until(Duration::from_secs(10), "nothing left pending", || async {
        pending(&redis).await == 0
    })
    .await;
}

#[tokio::test]
async fn an_archiver_killed_with_a_batch_in_hand_is_taken_over() {
    takeover(Db::postgres().await).await;
}

#[tokio::test]
async fn an_archiver_killed_with_a_batch_in_hand_is_taken_over_on_sqlite() {
    takeover(Db::sqlite("takeover")).await;
}

async fn killed_node(db: Db) {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, &["--durable-ack"]).await;
    let _archiver = Archiver::start(&redis, &db.url(), "a1", 100).await;
    let mut chat = Chatter::new();
    for i in 0..4 {
        chat.spawn(a.url(&format!("k{i}"), "cat"), &format!("k{i}"), false);
    }
    chat.more(300, "messages on the first node").await;
    a.process.signal("KILL");
    // The rooms' clients come back on another node (as through a router) and go on.
    let b = Node::start(&redis, &["--durable-ack"]).await;
    let before = chat.count();
    for i in 0..4 {
        chat.spawn(b.url(&format!("k{i}"), "dan"), &format!("k{i}"), false);
    }
    wait_until(Duration::from_secs(30), "messages on the second node", || async {
        chat.count() >= before + 200
    })
    .await;
    let acked = chat.finish().await;
    // A message the dead node stored but never acked may be archived too (one per client).
    assert_archived(&db, &acked, 4).await;
}

#[tokio::test]
async fn a_killed_node_loses_no_acknowledged_message() {
    killed_node(Db::postgres().await).await;
}

#[tokio::test]
async fn a_killed_node_loses_no_acknowledged_message_on_sqlite() {
    killed_node(Db::sqlite("node")).await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_while_the_rest_flow() {
    let redis = RedisServer::start().await;
    let db = Db::postgres().await;
    let node = Node::start(&redis, &[]).await;
    let archiver = Archiver::start(&redis, &db.url(), "a1", 100).await;
    let mut chat = Chatter::new();
    // PostgreSQL's jsonb refuses a \u0000 in a string: such a body can never be archived.
    chat.spawn(node.url("p:1", "eve"), "p:1", true);
    chat.spawn(node.url("p:2", "fay"), "p:2", false);
    chat.more(300, "messages").await;
    let acked = chat.finish().await;
    let rows = db.archived().await;
    wait_until(CATCH_UP, "the poison messages dead-lettered", || async {
        let dead = dead_letters(&redis).await;
        let n = db.archived().await.len();
        dead > 0 && n + dead == acked.len()
    })
    .await;
    assert!(rows.len() <= acked.len());
    let good: BTreeSet<Key> = acked.iter().filter(|k| k.0 == "p:2").cloned().collect();
    let got: BTreeSet<Key> = db.archived().await.into_iter().collect();
    assert!(good.is_subset(&got), "the clean room is archived whole");
    let dead_key = shared::archive::dead_key("roomfleet");
    let dead = redis.command(&["XRANGE", &dead_key, "-", "+", "COUNT", "1"]).await;
    assert!(dead.contains("refused 3 times") && dead.contains("Unicode"), "the reason: {dead}");
    assert!(archiver.metric("archiver_dead_total").await > 0.0);
}

/// SQLite keeps any JSON text, a \u0000 too, so nothing a client can send is poison to it;
/// what is poison is an entry no node would write (a frame that is not a message), put on
/// the queue between the rooms' messages. It is dead-lettered with the reason; the rooms'
/// messages are all archived.
#[tokio::test]
async fn a_poison_entry_is_dead_lettered_while_the_rest_flow_on_sqlite() {
    let redis = RedisServer::start().await;
    let db = Db::sqlite("poison");
    let node = Node::start(&redis, &[]).await;
    let archiver = Archiver::start(&redis, &db.url(), "a1", 100).await;
    let mut chat = Chatter::new();
    chat.spawn(node.url("p:1", "eve"), "p:1", false);
    chat.spawn(node.url("p:2", "fay"), "p:2", false);
    let key = shared::archive::stream_key("roomfleet", shared::archive::shard("p:1", 4));
    for i in 0..5 {
        chat.more(40, "messages").await;
        let seq = (1000 + i).to_string();
        let fields = ["k", "m", "room", "p:1", "epoch", "e", "seq", &seq, "f", "not a frame"];
        let mut cmd = vec!["XADD", &key, "*"];
        cmd.extend(fields);
        redis.command(&cmd).await;
    }
    chat.more(100, "messages after the poison").await;
    let acked = chat.finish().await;
    assert_archived(&db, &acked, 0).await;
    wait_until(CATCH_UP, "the five poison entries dead-lettered", || async {
        dead_letters(&redis).await == 5
    })
    .await;
    let dead_key = shared::archive::dead_key("roomfleet");
    let dead = redis.command(&["XRANGE", &dead_key, "-", "+", "COUNT", "1"]).await;
    assert!(dead.contains("frame:"), "the reason: {dead}");
    assert_eq!(archiver.metric("archiver_dead_total").await, 5.0);
}

/// Read markers round-trip through Redis into PostgreSQL: a member's `read` reaches the
/// room's other member at once, and the archive ends up with each user's read and
/// delivered markers of the room's epoch (the delivered one written when they leave).
#[tokio::test]
async fn read_markers_round_trip_into_postgres() {
    use shared::testkit::ws::WsClient;
    let redis = RedisServer::start().await;
    let pg = PostgresServer::start().await;
    let node = Node::start(&redis, &[]).await;
    let _archiver = Archiver::start(&redis, &pg.url(), "m1", 100).await;
    let (mut ann, welcome) = WsClient::join(&node.url("reads", "ann")).await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let (mut bob, _) = WsClient::join(&node.url("reads", "bob")).await;
    for n in 1..=3 {
        ann.publish(json!({"n": n})).await;
        assert_eq!(bob.recv_type("message").await["seq"], n);
    }
    bob.send_json(&json!({"type": "read", "seq": 2})).await;
    let told = ann.recv_type("read").await;
    assert_eq!((told["user"].as_str(), told["seq"].as_u64()), (Some("bob"), Some(2)));
    bob.close().await;
    let pool = connect(&pg).await;
    type M = (String, String, i64, i64);
    let sql = r#"SELECT "user", epoch, read_seq, delivered_seq FROM markers WHERE room = 'reads' ORDER BY "user""#;
    let want: Vec<M> = vec![("bob".into(), epoch.clone(), 2, 3)];
    wait_until(Duration::from_secs(20), "bob's markers in PostgreSQL", || async {
        let got: Vec<M> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap_or_default();
        got == want
    })
    .await;
    ann.close().await;
    let want: Vec<M> = vec![("ann".into(), epoch.clone(), 0, 3), ("bob".into(), epoch, 2, 3)];
    wait_until(Duration::from_secs(20), "ann's delivered marker once she left", || async {
        let got: Vec<M> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap_or_default();
        got == want
    })
    .await;
}

/// One `XREADGROUP` takes up to `--batch` entries from every shard: with 4 full shards
/// and `--batch 5000` that is 20,000 rows, more bind parameters than one PostgreSQL
/// statement takes. The archiver writes them `--batch` at a time and gets through.
#[tokio::test]
async fn a_read_bigger_than_one_statement_is_written_in_parts() {
    let redis = RedisServer::start().await;
    let pg = PostgresServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    const PER_SHARD: usize = 3000;
    let mut pipe = redis::pipe();
    for shard in 0..4u32 {
        let key = shared::archive::stream_key("roomfleet", shard);
        for i in 0..PER_SHARD {
            let rec = shared::archive::Record::Message(shared::archive::Message {
                room: format!("big-{shard}"),
                epoch: "e".into(),
                seq: i as u64 + 1,
                frame: format!(r#"{{"type":"message","from":"ann","ts":1,"body":{i}}}"#),
                keep_days: None,
            });
            pipe.cmd("XADD").arg(&key).arg("*").arg(&rec.fields()[..]).ignore();
        }
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let archiver = Archiver::start(&redis, &pg.url(), "big", 5000).await;
    let pool = connect(&pg).await;
    wait_until(Duration::from_secs(60), "all 12,000 entries archived", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM messages").fetch_one(&pool).await.unwrap_or(0);
        n == 4 * PER_SHARD as i64
    })
    .await;
    assert_eq!(archiver.metric("archiver_dead_total").await, 0.0);
}
