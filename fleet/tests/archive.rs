//! `fleet up` keeps what was said: every room is archived into SQLite through the
//! in-process queue, the messages of one run are still there after a restart, the server
//! API pages through them while messages keep arriving and keeps room metadata, and read
//! markers round-trip into the archive.

use std::time::Duration;

use fleet::{Archive, Fleet, Options};
use serde_json::json;
use shared::testkit::ws::WsClient;
use shared::testkit::{http, wait_until};

async fn up(db: &str) -> Fleet {
    up_with(db, Vec::new()).await
}

/// `fleet up` with the nodes' `[[rooms]]` tables.
async fn up_with(db: &str, rooms: Vec<ws_node::config::RoomPolicy>) -> Fleet {
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
        rooms,
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
        // The in-process archiver's numbers are on the admin `/metrics`, after the router's.
        let admin = f.router.admin_addr();
        wait_until(Duration::from_secs(10), "archiver_rows_total >= 35 on /metrics", || async {
            let (_, text) = http(admin, "GET", "/metrics", &[], "").await.unwrap();
            let rows = text.lines().find_map(|l| l.strip_prefix("archiver_rows_total "));
            text.contains("router_") && rows.and_then(|n| n.parse::<u64>().ok()) >= Some(35)
        })
        .await;
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
    // Someone else keeps talking in the room the whole time the pages are read.
    let chatter = {
        let url = format!("{}?room=pages&user=cat", f.ws_url());
        tokio::spawn(async move {
            let (mut c, _) = WsClient::join(&url).await;
            // Bounded: the test aborts it long before.
            for id in 1..=100_000u64 {
                c.send_json(&json!({"type": "publish", "body": {"cat": id}, "id": id})).await;
                c.recv_type("ack").await;
            }
        })
    };
    // Archived asynchronously: wait for the last one.
    shared::testkit::wait_until(Duration::from_secs(10), "the archive to hold 25", || async {
        count(&f, "SELECT COUNT(*) FROM messages WHERE room = 'pages'").await >= 25
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
    assert!(seqs.len() >= 25, "{seqs:?}");
    let n = seqs.len() as i64;
    assert_eq!(seqs, (1..=n).collect::<Vec<i64>>(), "contiguous, in order, once");
    // Every page read again is the same page.
    for after in (0..n).step_by(10) {
        let path = format!("/api/rooms/pages/messages?after={after}&limit=10");
        let (_, a) = api(&f, "GET", &path, "").await;
        let (_, b) = api(&f, "GET", &path, "").await;
        let got = |p: &serde_json::Value| p["messages"].as_array().unwrap().len().min(10);
        let k = got(&a).min(got(&b));
        assert_eq!(a["messages"].as_array().unwrap()[..k], b["messages"].as_array().unwrap()[..k]);
    }
    chatter.abort();
    let (_, newest) = api(&f, "GET", "/api/rooms/pages/messages?before=1000&limit=3", "").await;
    let top: Vec<i64> =
        newest["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(top.len(), 3);
    assert!(top[0] > top[1] && top[1] > top[2], "newest first: {top:?}");
    let from = newest["messages"][0]["from"].as_str();
    assert!(matches!(from, Some("ann" | "cat")), "{newest}");
    assert!(newest["messages"][0]["body"].is_object());
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

#[tokio::test]
async fn read_markers_round_trip_into_the_archive() {
    let dir = std::env::temp_dir().join(format!("fleet-archive-reads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let f = up(&format!("sqlite:{}", dir.join("r.db").display())).await;
    let url = |u: &str| format!("{}?room=reads&user={u}", f.ws_url());
    let (mut ann, welcome) = WsClient::join(&url("ann")).await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let (mut bob, _) = WsClient::join(&url("bob")).await;
    for n in 1..=3 {
        ann.publish(json!({"n": n})).await;
        assert_eq!(bob.recv_type("message").await["seq"], n);
    }
    bob.send_json(&json!({"type": "read", "seq": 2})).await;
    let told = ann.recv_type("read").await;
    assert_eq!((told["user"].as_str(), told["seq"].as_u64()), (Some("bob"), Some(2)));
    // A read above what the room holds is refused, and nobody hears of it.
    bob.send_json(&json!({"type": "read", "seq": 99})).await;
    assert_eq!(bob.recv_type("error").await["code"], "bad_read");
    bob.close().await;
    let markers = |v: &serde_json::Value| -> Vec<(String, String, i64, i64)> {
        v["markers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                        let n = |k: &str| m[k].as_i64().unwrap_or(-1);
                        (s("user"), s("epoch"), n("read"), n("delivered"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let want = vec![("bob".to_string(), epoch.clone(), 2, 3)];
    shared::testkit::wait_until(Duration::from_secs(10), "bob's markers in the API", || async {
        markers(&api(&f, "GET", "/api/rooms/reads/markers", "").await.1) == want
    })
    .await;
    ann.close().await;
    let want = vec![("ann".to_string(), epoch.clone(), 0, 3), ("bob".to_string(), epoch, 2, 3)];
    shared::testkit::wait_until(Duration::from_secs(10), "ann's delivered marker", || async {
        markers(&api(&f, "GET", "/api/rooms/reads/markers", "").await.1) == want
    })
    .await;
    let (s, v) = api(&f, "GET", "/api/rooms/nobody/markers", "").await;
    assert_eq!((s, markers(&v).len()), (200, 0), "a room the archive does not know: none");
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn archive_days_mark_each_message_for_retention() {
    let dir = std::env::temp_dir().join(format!("fleet-archive-days-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let week = ws_node::config::RoomPolicy::parse(
        "pattern=short:*,archive_days=7",
        ws_node::history::Policy::default(),
    )
    .unwrap();
    let f = up_with(&format!("sqlite:{}", dir.join("d.db").display()), vec![week]).await;
    say(&f, "short:1", 3).await;
    say(&f, "long", 2).await;
    shared::testkit::wait_until(Duration::from_secs(10), "the archive to hold 5", || async {
        count(&f, "SELECT COUNT(*) FROM messages").await == 5
    })
    .await;
    let week_ms = 7 * 86_400_000;
    let sql = format!(
        "SELECT COUNT(*) FROM messages WHERE room = 'short:1' AND keep_until = at + {week_ms}"
    );
    assert_eq!(count(&f, &sql).await, 3, "a week after each was sent");
    let forever = "SELECT COUNT(*) FROM messages WHERE room = 'long' AND keep_until IS NULL";
    assert_eq!(count(&f, forever).await, 2, "rooms without archive_days are kept for good");
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
