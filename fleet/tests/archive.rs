//! `fleet up` keeps what was said: every room is archived into SQLite through the
//! in-process queue, and the messages of one run are still there after a restart.

use std::time::Duration;

use fleet::{Archive, Fleet, Options};
use serde_json::json;
use shared::testkit::ws::WsClient;

async fn up(db: &str) -> Fleet {
    let router = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        api: Some("127.0.0.1:0".parse().unwrap()),
        shutdown_grace: Duration::from_secs(5),
        ..router::Config::default()
    };
    let node = ws_node::Config {
        publish_rate: 1000.0,
        publish_burst: 1000.0,
        archive: true,
        ..Default::default()
    };
    let archive = Some(Archive::new(db));
    Fleet::up(Options { nodes: 2, router, node, redis: None, archive }).await.unwrap()
}

/// Publishes `n` messages into `room` and waits for each ack.
async fn say(f: &Fleet, room: &str, n: u64) {
    let (mut c, _) = WsClient::join(&format!("{}?room={room}&user=ann", f.ws_url())).await;
    for id in 1..=n {
        c.send_json(&json!({"type": "publish", "body": {"n": id}, "id": id})).await;
        let ack = c.recv_type("ack").await;
        assert_eq!(ack["id"], id);
    }
    c.close().await;
}

async fn count(f: &Fleet, sql: &str) -> i64 {
    let Some(archiver::Store::Sqlite(pool)) = f.archive_store() else { panic!("sqlite archive") };
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn fleet_up_keeps_what_was_said_across_restarts() {
    let dir = std::env::temp_dir().join(format!("fleet-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite:{}", dir.join("roomfleet.db").display());
    for run in 1..=2i64 {
        let f = up(&db).await;
        say(&f, "keep", 30).await;
        say(&f, "other", 5).await;
        let (archived, epochs) = (
            "SELECT COUNT(*) FROM messages WHERE room = 'keep'",
            "SELECT COUNT(DISTINCT epoch) FROM messages WHERE room = 'keep'",
        );
        // Earlier runs' messages are there from the start.
        assert!(count(&f, archived).await >= 30 * (run - 1));
        let store = f.archive_store().cloned().unwrap();
        f.shutdown().await;
        // Shutdown wrote everything queued; reopen the file as the next run will.
        store.close().await;
        let again = archiver::Store::open(&db).await.unwrap();
        let archiver::Store::Sqlite(pool) = &again else { unreachable!() };
        let n: i64 = sqlx::query_scalar(archived).fetch_one(pool).await.unwrap();
        assert_eq!(n, 30 * run, "run {run}: every message once");
        let e: i64 = sqlx::query_scalar(epochs).fetch_one(pool).await.unwrap();
        assert_eq!(e, run, "each run is an epoch of its own");
        let rooms: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM rooms").fetch_one(pool).await.unwrap();
        assert_eq!(rooms, 2);
        again.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
