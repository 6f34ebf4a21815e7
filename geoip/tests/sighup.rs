//! SIGHUP reloads even when the file looks unchanged. Its own test binary, because the signal
//! goes to the whole process.
#![cfg(unix)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Scratch, ip, net};
use geoip::GeoDb;
use geoip::testdb::{self, Layout};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_forces_a_reload() {
    let scratch = Scratch::new();
    let path = scratch.path("geo.mmdb");
    testdb::write(&path, &[(net("127.1.0.0/16"), "DE")], Layout::Flat).unwrap();
    let db = Arc::new(GeoDb::open(&path).unwrap());
    // Polling effectively off: only the signal can trigger the reload.
    let token = CancellationToken::new();
    let task =
        geoip::spawn_reloader_every(Arc::clone(&db), token.clone(), Duration::from_secs(3600));

    testdb::write(&path, &[(net("127.1.0.0/16"), "AT")], Layout::Flat).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.generation() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the SIGHUP reload");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(db.lookup(ip("127.1.0.1")).map(|c| c.to_string()).as_deref(), Some("AT"));

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("reloader stops").unwrap();
}
