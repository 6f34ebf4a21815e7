//! The `router` binary: config file and flags, one-line refusals of bad config, SIGTERM;
//! and `--reuse-port` letting two routers share a port.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use shared::testkit::{free_port, wait_until};

fn router_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_router"));
    c.env_remove("ROUTER_CONFIG").env("RUST_LOG", "warn").env("ROUTER_API", "127.0.0.1:0");
    c
}

#[test]
fn bad_config_exits_2_with_one_line_before_binding() {
    let dir = std::env::temp_dir().join(format!("router-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_file = dir.join("bad.toml");
    std::fs::write(&bad_file, "vnodes = 0\n").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--admin", "0.0.0.0:9"], "router: --admin 0.0.0.0:9 is not a loopback address"),
        (
            &["--api", "0.0.0.0:9"],
            "router: --api 0.0.0.0:9 is not a loopback address: set --api-key",
        ),
        (&["--node", "a=127.0.0.1:1", "--node", "a=127.0.0.1:2"], "router: --node: node id a"),
        (&["--config", bad_file.to_str().unwrap()], "router: --vnodes must be 1..=10000"),
        (&["--config", "/nonexistent/router.toml"], "router: config file /nonexistent/router.toml"),
    ];
    for (args, want) in cases {
        let out = router_bin().args(["--listen", "127.0.0.1:0"]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_binary_reads_its_config_file_and_stops_on_sigterm() {
    let hub = ws_node::LocalHub::new();
    let a = TestNode::start("node-a", &hub).await;
    let b = TestNode::start("node-b", &hub).await;
    let admin_port = free_port();
    let dir = std::env::temp_dir().join(format!("router-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("router.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:1\"\nnode = [\"node-a={}\", \"node-b={}@2\"]\nvnodes = 40\n",
            a.addr, b.addr
        ),
    )
    .unwrap();
    let mut child = router_bin()
        .args(["--config", file.to_str().unwrap(), "--admin", &format!("127.0.0.1:{admin_port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin_addr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_until(STEP, "the router's admin API", || async move {
        shared::testkit::http(admin_addr, "GET", "/healthz", &[], "").await.is_ok()
    })
    .await;
    let (status, ring) = admin(admin_addr, "GET", "/admin/ring", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(ring["vnodes_per_weight"], 40, "the file's value");
    assert_eq!(ring["nodes"][1]["weight"], 2);
    assert_eq!(ring["nodes"].as_array().unwrap().len(), 2);

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "router exits on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reuse_port_lets_two_routers_share_one_port() {
    let hub = ws_node::LocalHub::new();
    let a = TestNode::start("node-a", &hub).await;
    let mut cfg = config(&[&a]);
    cfg.reuse_port = true;
    let first = router::Router::start(cfg.clone()).unwrap();
    cfg.listen = first.proxy_addr();
    let second = router::Router::start(cfg.clone()).unwrap();
    assert_eq!(second.proxy_addr(), first.proxy_addr());
    cfg.reuse_port = false;
    assert!(matches!(router::Router::start(cfg), Err(router::Error::Bind { .. })));
    let (_ws, w) = join(&format!("ws://{}/ws?room=r&user=u", first.proxy_addr())).await;
    assert_eq!(w["node"], "node-a");
}
