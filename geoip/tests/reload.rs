//! Reloading: direct `reload()`, change detection, the watcher task, and failures that must
//! leave the loaded database answering.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Scratch, ip, net};
use geoip::testdb::{self, Layout};
use geoip::{Error, GeoDb};
use tokio_util::sync::CancellationToken;

fn code(db: &GeoDb, addr: &str) -> Option<String> {
    db.lookup(ip(addr)).map(|c| c.to_string())
}

fn write(path: &std::path::Path, country: &str) {
    testdb::write(path, &[(net("127.1.0.0/16"), country)], Layout::Country).unwrap();
}

/// Waits for `condition` by polling, failing after a generous timeout instead of sleeping a
/// fixed time.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn reload_picks_up_a_rewritten_file() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    write(&path, "DE");
    let db = GeoDb::open(&path).unwrap();
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("DE"));

    write(&path, "AT");
    db.reload().unwrap();
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("AT"));
    assert_eq!(db.generation(), 1);
}

#[test]
fn failed_reload_keeps_the_old_database() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    write(&path, "DE");
    let db = GeoDb::open(&path).unwrap();

    std::fs::write(&path, b"not a database").unwrap();
    let err = db.reload().unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("DE"));

    std::fs::remove_file(&path).unwrap();
    let err = db.reload().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("DE"));
    assert_eq!(db.generation(), 0);
}

#[test]
fn reload_if_changed_only_reloads_new_versions() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    write(&path, "DE");
    let db = GeoDb::open(&path).unwrap();
    assert!(!db.reload_if_changed().unwrap());

    write(&path, "AT");
    assert!(db.reload_if_changed().unwrap());
    assert!(!db.reload_if_changed().unwrap());
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("AT"));

    // A broken version is reported once, then left alone until the file changes again.
    std::fs::write(&path, b"garbage").unwrap();
    assert!(db.reload_if_changed().is_err());
    assert!(!db.reload_if_changed().unwrap());
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("AT"));

    write(&path, "CH");
    assert!(db.reload_if_changed().unwrap());
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("CH"));
    assert_eq!(db.generation(), 2);
}

/// Overwriting in place (same inode, same size) is detected through the modification time.
#[test]
fn in_place_rewrite_is_detected_by_mtime() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    write(&path, "DE");
    let db = GeoDb::open(&path).unwrap();
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();

    let bytes =
        testdb::encode(&[(net("127.1.0.0/16"), "AT")], Layout::Country, testdb::Tree::V6).unwrap();
    std::fs::write(&path, bytes).unwrap();
    // Coarse file-system clocks can give two quick writes the same mtime; make it differ.
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(before + Duration::from_secs(10)).unwrap();
    drop(file);

    assert!(db.reload_if_changed().unwrap());
    assert_eq!(code(&db, "127.1.0.1").as_deref(), Some("AT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_when_the_file_changes_and_stops_on_cancel() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    write(&path, "DE");
    let db = Arc::new(GeoDb::open(&path).unwrap());
    let token = CancellationToken::new();
    let task =
        geoip::spawn_reloader_every(Arc::clone(&db), token.clone(), Duration::from_millis(10));

    write(&path, "AT");
    wait_for("the watcher to load AT", || code(&db, "127.1.0.1").as_deref() == Some("AT")).await;

    // A broken file leaves AT in place; the next good one is picked up.
    std::fs::write(scratch.path("broken.mmdb"), b"garbage").unwrap();
    std::fs::rename(scratch.path("broken.mmdb"), &path).unwrap();
    write(&path, "CH");
    wait_for("the watcher to load CH", || code(&db, "127.1.0.1").as_deref() == Some("CH")).await;

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("reloader stops after cancel")
        .unwrap();
}

/// Readers on many threads never see a gap while the database is swapped under them.
#[test]
fn lookups_during_reloads_always_answer() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    write(&path, "DE");
    let db = Arc::new(GeoDb::open(&path).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let found = code(&db, "127.1.0.1");
                    assert!(matches!(found.as_deref(), Some("DE" | "AT")), "{found:?}");
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for round in 0..50 {
        write(&path, if round % 2 == 0 { "AT" } else { "DE" });
        db.reload().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(db.generation(), 50);
}
