//! `fleet up` keeps what was said: every room is archived into SQLite through the
//! in-process queue, the messages of one run are still there after a restart, and the
//! server API pages through them and keeps room metadata.

use std::time::Duration;

use fleet::{Archive, Fleet, Options};
use serde_json::json;
use shared::testkit::http;
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
    Fleet::up(Options {
        nodes: 2,
        router,
        node,
        redis: None,
        archive,
        data_path: Default::default(),
    })
    .await
    .unwrap()
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

async fn api(f: &Fleet, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let addr = f.router.api_addr().expect("the API listener");
    let (status, text) = http(addr, method, path, &[], body).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
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

#[tokio::test]
async fn the_api_pages_through_the_archive_and_keeps_room_metadata() {
    let dir = std::env::temp_dir().join(format!("fleet-archive-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let f = up(&format!("sqlite:{}", dir.join("a.db").display())).await;
    say(&f, "pages", 25).await;
    // Archived asynchronously: wait for the last one.
    shared::testkit::wait_until(Duration::from_secs(10), "the archive to hold 25", || async {
        count(&f, "SELECT COUNT(*) FROM messages WHERE room = 'pages'").await == 25
    })
    .await;
    let mut seqs: Vec<i64> = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let (s, page) =
            api(&f, "GET", &format!("/api/rooms/pages/messages?after={after}&limit=10"), "").await;
        assert_eq!(s, 200, "{page}");
        let got: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        seqs.extend(&got);
        // Arriving messages never shift a page that was read.
        say(&f, "pages", 1).await;
        match page["next"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seqs[..25], (1..=25).collect::<Vec<i64>>()[..], "contiguous, in order, once");
    let (_, newest) = api(&f, "GET", "/api/rooms/pages/messages?before=1000&limit=3", "").await;
    let top: Vec<i64> =
        newest["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(top.len(), 3);
    assert!(top[0] > top[1] && top[1] > top[2], "newest first: {top:?}");
    assert_eq!(newest["messages"][0]["from"], "ann");
    assert!(newest["messages"][0]["body"]["n"].is_number());
    for bad in [
        "after=x",
        "after=1&before=2",
        "after=1&limit=0",
        "after=1&limit=5000",
        "after=1&epoch=no%20pe",
    ] {
        let (s, v) = api(&f, "GET", &format!("/api/rooms/pages/messages?{bad}"), "").await;
        assert_eq!((s, v["code"].as_str()), (400, Some("bad_query")), "{bad}: {v}");
    }
    let (s, v) = api(&f, "GET", "/api/rooms/nobody/meta", "").await;
    assert_eq!((s, v["code"].as_str()), (404, Some("unknown_room")));
    let put = r#"{"title":"Pages","meta":{"color":"red"}}"#;
    let (s, v) = api(&f, "PUT", "/api/rooms/pages/meta", put).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["title"].as_str(), v["meta"]["color"].as_str()), (Some("Pages"), Some("red")));
    let (_, v) = api(&f, "GET", "/api/rooms/pages/meta", "").await;
    assert_eq!(v["title"], "Pages");
    assert!(v["topic"].is_null());
    let (s, v) = api(&f, "PUT", "/api/rooms/pages/meta", r#"{"meta":[1]}"#).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_meta")));
    let (s, _) = api(&f, "PUT", "/api/rooms/pages/meta", r#"{"nope":1}"#).await;
    assert_eq!(s, 400);
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
