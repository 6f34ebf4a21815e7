//! At the process's open-file limit the router refuses new clients with a clear 503 and
//! keeps the tunnels it has (the real binary under a lowered `ulimit -n`).

mod common;

use std::process::{Command, Stdio};

use common::*;
use shared::testkit::ws::fill_until_refused;
use shared::testkit::{free_port, http, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_refuses_at_the_file_limit_and_keeps_open_tunnels() {
    let hub = ws_node::LocalHub::new();
    let node = TestNode::start("node-a", &hub).await;
    let (port, admin_port) = (free_port(), free_port());
    let bin = env!("CARGO_BIN_EXE_router");
    // 64 descriptors and a connection cap far above them: only the file limit can stop us.
    let script = format!(
        "ulimit -n 64 && exec {bin} --listen 127.0.0.1:{port} --admin 127.0.0.1:{admin_port} \
         --node node-a={} --max-connections 1000",
        node.addr
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn router");
    let admin_addr = ([127, 0, 0, 1], admin_port).into();
    wait_until(STEP, "the router to serve", || async move {
        http(admin_addr, "GET", "/healthz", &[], "").await.is_ok()
    })
    .await;
    let url = format!("ws://127.0.0.1:{port}/ws?room=r&user=u");
    let refused = fill_until_refused(&url, 100).await;
    assert!(refused.contains("503"), "{refused}");
    let _ = child.kill();
    let _ = child.wait();
}
