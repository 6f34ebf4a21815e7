//! The ws-node binary reads the example config file of deploy/ and lets flags and the
//! environment override it; a bad config exits non-zero with one clear line.

mod common;

use std::process::Command;
use std::time::Duration;

use common::NodeProcess;
use shared::testkit::{RedisServer, http, wait_until};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/ws-node.toml");

#[tokio::test]
async fn the_example_config_runs_with_overrides() {
    let redis = RedisServer::start().await;
    let envs = [("WSNODE_REDIS", redis.url()), ("WSNODE_NODE_ID", "from-env".to_string())];
    // The file says 0.0.0.0:7001; the --listen flag NodeProcess adds must win.
    let node = NodeProcess::start(&["--config", EXAMPLE], &envs, None).await;
    let addr = node.addr();
    wait_until(Duration::from_secs(10), "the node to serve", || async move {
        http(addr, "GET", "/admin/rooms", &[], "")
            .await
            .is_ok_and(|(s, b)| s == 200 && b.contains("from-env"))
    })
    .await;
    // It reached Redis from the environment, not the file's compose host name.
    wait_until(Duration::from_secs(10), "the node's heartbeat", || async {
        redis.command(&["EXISTS", "roomfleet:hb:from-env"]).await.contains(":1")
    })
    .await;
}

#[test]
fn bad_config_exits_non_zero_with_one_line() {
    let dir = std::env::temp_dir().join(format!("wsnode-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \n").unwrap();
    for args in [
        vec!["--config".to_string(), bad.display().to_string()],
        vec!["--config".into(), "/nonexistent/ws-node.toml".into()],
        vec!["--node-id".into(), "bad id".into()],
        vec!["--advertise".into(), "127.0.0.1:1".into()],
        // A zero interval used to panic the timer wheel (--ping-interval 0).
        vec!["--ping-interval".into(), "0".into()],
        vec!["--repair-interval".into(), "0".into()],
        vec!["--span-timeout".into(), "0".into()],
        // The archive queue lives in Redis.
        vec!["--archive".into()],
        vec!["--rooms".into(), "pattern=chat:*,archive=true".into()],
        vec!["--rooms".into(), "pattern=chat:*,archive=maybe".into()],
        vec!["--archive-shards".into(), "0".into()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ws-node")).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ws-node: "), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
