//! The workspace's real binaries as child processes, for tests about processes: where a
//! binary is, a child a test can signal and that is killed on drop, and a `router` on free
//! ports with the admin calls tests ask it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_port, http, wait_until};

/// A workspace binary next to the running test's executable (`cargo test --workspace`
/// builds them all); fails the test with the command that builds it when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/debug").to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A child process, killed on drop.
pub struct Process {
    child: Option<Child>,
}

impl Process {
    /// Spawns `cmd` with its output discarded (set `RUST_LOG` on it to see logs in a run).
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Self { child: Some(child) }
    }

    /// Runs workspace binary `name` with `args`, logging warnings only.
    pub fn bin(name: &str, args: &[String]) -> Self {
        let mut cmd = Command::new(workspace_bin(name));
        cmd.args(args).env("RUST_LOG", "warn");
        Self::spawn(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits for the process to exit.
    pub async fn exit(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("the wait task")
            .expect("wait for the child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The real `router` binary listening on free ports; killed on drop.
pub struct RouterProcess {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl RouterProcess {
    /// Runs `router --listen 127.0.0.1:P --admin 127.0.0.1:A ARGS` and waits until its
    /// admin API answers.
    pub async fn start(args: &[&str]) -> Self {
        let (addr, admin): (SocketAddr, SocketAddr) =
            (([127, 0, 0, 1], free_port()).into(), ([127, 0, 0, 1], free_port()).into());
        let mut cmd = Command::new(workspace_bin("router"));
        // `--api` on a port of its own: the default (9091) would collide between routers.
        cmd.args([
            "--listen",
            &addr.to_string(),
            "--admin",
            &admin.to_string(),
            "--api",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("ROUTER_CONFIG")
        .env("RUST_LOG", "warn");
        let r = Self { process: Process::spawn(cmd), addr, admin };
        wait_until(Duration::from_secs(15), "the router's admin API", || async move {
            http(admin, "GET", "/healthz", &[], "").await.is_ok()
        })
        .await;
        r
    }

    /// `ws://HOST:PORT/ws`: append `?room=R&user=U`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// An admin GET's JSON body when it answers 200.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let (s, body) = http(self.admin, "GET", path, &[], "").await.ok()?;
        (s == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// The IDs of the nodes the ring places rooms on (healthy, not draining), sorted.
    pub async fn placeable(&self) -> Vec<String> {
        let Some(ring) = self.get("/admin/ring").await else { return Vec::new() };
        let mut ids: Vec<String> = ring["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["healthy"] == true && n["draining"] == false)
            .filter_map(|n| n["id"].as_str().map(String::from))
            .collect();
        ids.sort();
        ids
    }

    /// The node `/admin/placement` names for `room`.
    pub async fn placed(&self, room: &str) -> String {
        let p = self.get(&format!("/admin/placement?room={room}")).await.expect("placement");
        p["node"].as_str().expect("a node").to_string()
    }
}

/// The real `ws-node` binary on a free loopback port: `--listen 127.0.0.1:P --node-id ID
/// ARGS`; returns the process and its address. It may not be listening yet: see
/// [`node_ready`].
pub fn ws_node(id: &str, args: &[&str]) -> (Process, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut all = vec!["--listen".to_owned(), addr.to_string(), "--node-id".into(), id.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    (Process::bin("ws-node", &all), addr)
}

/// Waits until the node at `addr` answers `/readyz` with 200: listening and, with
/// `--redis`, connected. Waiting for a router's ring is not enough: a router counts a node
/// given by `--node` as ready until its first probe says otherwise.
pub async fn node_ready(addr: SocketAddr) {
    wait_until(Duration::from_secs(15), "the node's /readyz", || async move {
        matches!(http(addr, "GET", "/readyz", &[], "").await, Ok((200, _)))
    })
    .await;
}
