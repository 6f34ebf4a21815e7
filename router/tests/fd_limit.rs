//! At the process's open-file limit the router refuses new clients with a clear 503 and
//! keeps the tunnels it has (the real binary under a lowered `ulimit -n`).
//!
//! A proxied client costs two descriptors, so whether the last one runs out at `accept` or
//! at the connect to the node depends on how many the process started with. Each scenario
//! runs twice, the second time with one more inherited descriptor, so both are exercised
//! whatever the machine hands the process.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use shared::testkit::ws::fill_until_refused;
use shared::testkit::{free_port, http, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_refuses_at_the_file_limit_and_keeps_open_tunnels() {
    let hub = ws_node::LocalHub::new();
    let node = TestNode::start("node-a", &hub).await;
    for extra in [0, 1] {
        let router = LimitedRouter::start(&node, extra).await;
        let refused = fill_until_refused(&router.url, 100).await;
        assert!(refused.contains("503"), "with {extra} extra descriptors: {refused}");
        let metrics = router.get("/metrics").await;
        let counted =
            shared::metrics::sample(&metrics, "router_refused_total{reason=\"fd_limit\"}");
        assert!(counted.is_some_and(|n| n > 0.0), "fd_limit refusals not counted:\n{metrics}");
    }
}

/// The router binary under `ulimit -n 64`, with `extra` inherited descriptors, a connection
/// cap far above what 64 descriptors hold (only the file limit can stop it), and node-a.
struct LimitedRouter {
    child: Child,
    admin: std::net::SocketAddr,
    url: String,
}

impl LimitedRouter {
    async fn start(node: &TestNode, extra: usize) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let bin = env!("CARGO_BIN_EXE_router");
        let inherit = "exec {fd}</dev/null; ".repeat(extra);
        let script = format!(
            "ulimit -n 64 && {inherit}exec {bin} --listen 127.0.0.1:{port} \
             --admin 127.0.0.1:{admin_port} --api 127.0.0.1:0 --node node-a={} --max-connections 1000",
            node.addr
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn router");
        let admin = ([127, 0, 0, 1], admin_port).into();
        wait_until(STEP, "the router to serve", || async move {
            http(admin, "GET", "/healthz", &[], "").await.is_ok()
        })
        .await;
        Self { child, admin, url: format!("ws://127.0.0.1:{port}/ws?room=r&user=u") }
    }

    async fn get(&self, path: &str) -> String {
        let (status, body) = http(self.admin, "GET", path, &[], "").await.expect("admin answers");
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

impl Drop for LimitedRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
