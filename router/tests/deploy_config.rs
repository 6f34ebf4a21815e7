//! The router binary runs the example config of deploy/ (as docker-compose.yml does) with
//! the environment overriding it, and follows the node registry in Redis from there.

use std::process::{Command, Stdio};
use std::time::Duration;

use shared::testkit::{RedisServer, free_port, http, wait_until};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/router.toml");

#[tokio::test]
async fn the_example_config_runs_with_overrides() {
    let redis = RedisServer::start().await;
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--config", EXAMPLE])
        .env("ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env("ROUTER_ADMIN", format!("127.0.0.1:{admin}"))
        .env("ROUTER_API", "127.0.0.1:0")
        .env("ROUTER_REDIS", redis.url())
        .env("ROUTER_ADMIN_TOKEN", "s3cret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn router");
    let addr = ([127, 0, 0, 1], admin).into();
    let auth = [("authorization", "Bearer s3cret")];
    wait_until(Duration::from_secs(10), "the router's admin API", || async move {
        http(addr, "GET", "/admin/ring", &auth, "").await.is_ok_and(|(s, _)| s == 200)
    })
    .await;
    let (s, _) = http(addr, "GET", "/admin/ring", &[], "").await.unwrap();
    assert_eq!(s, 401, "the token from the environment guards the admin API");
    // A node registered in Redis shows up in the ring: discovery came from the file.
    redis
        .command(&[
            "HSET",
            "roomfleet:registry",
            "node-x",
            r#"{"id":"node-x","addr":"127.0.0.1:1","weight":1}"#,
        ])
        .await;
    redis.command(&["SET", "roomfleet:hb:node-x", "1", "EX", "60"]).await;
    wait_until(Duration::from_secs(10), "node-x in the ring", || async move {
        http(addr, "GET", "/admin/ring", &auth, "").await.is_ok_and(|(_, b)| b.contains("node-x"))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
