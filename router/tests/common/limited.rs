//! The router binary under `ulimit -n 64`, for the tests about its file limit.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use shared::testkit::ws::STEP;
use shared::testkit::{free_port, http, wait_until};

/// The router under `ulimit -n 64`, with `extra` inherited descriptors, a connection cap far
/// above what 64 descriptors hold (only the file limit can stop it), and one `--node SPEC`.
pub struct LimitedRouter {
    child: Child,
    pub admin: SocketAddr,
    pub port: u16,
}

impl LimitedRouter {
    pub async fn start(node_spec: &str, extra: usize) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let bin = env!("CARGO_BIN_EXE_router");
        let inherit = "exec {fd}</dev/null; ".repeat(extra);
        let script = format!(
            "ulimit -n 64 && {inherit}exec {bin} --listen 127.0.0.1:{port} \
             --admin 127.0.0.1:{admin_port} --api 127.0.0.1:0 --node {node_spec} --max-connections 1000"
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn router");
        let admin = ([127, 0, 0, 1], admin_port).into();
        wait_until(STEP * 3, "the router to serve", || async move {
            http(admin, "GET", "/healthz", &[], "").await.is_ok()
        })
        .await;
        Self { child, admin, port }
    }

    /// The WebSocket URL of `room` for `user`.
    pub fn url(&self, room: &str, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?room={room}&user={user}", self.port)
    }

    pub async fn get(&self, path: &str) -> String {
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
