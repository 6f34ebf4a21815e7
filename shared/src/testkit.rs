//! Helpers for tests across the workspace: waiting on a condition, a raw HTTP/1.1 client,
//! a WebSocket client ([`ws`]), the workspace's binaries as processes ([`process`]), a real
//! `redis-server` on a free port that a test can kill and restart, and a real PostgreSQL
//! ([`postgres`]).

pub mod postgres;
pub mod process;
pub mod ws;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the end-to-end suites' routers pass clients to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Upgrades proxied, bytes spliced (the router's default).
    Proxy,
    /// Sockets handed to nodes in the router's process (`fleet up`'s default).
    InProcess,
    /// Sockets handed over each node's `--handoff` Unix socket.
    Unix,
}

/// The data path a suite runs in: `ROOMFLEET_TEST_DATA_PATH` = `proxy`, `handoff` or `unix`
/// (`scripts/test` runs the suites in each), else `default`.
pub fn data_path(default: DataPath) -> DataPath {
    match std::env::var("ROOMFLEET_TEST_DATA_PATH").as_deref() {
        Err(_) | Ok("") => default,
        Ok("proxy") => DataPath::Proxy,
        Ok("handoff") => DataPath::InProcess,
        Ok("unix") => DataPath::Unix,
        Ok(other) => panic!("ROOMFLEET_TEST_DATA_PATH={other:?}: use proxy, handoff or unix"),
    }
}

/// A fresh path for a Unix socket (short: the kernel takes 107 bytes at most).
pub fn socket_path(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("rf-{what}-{}-{n}.sock", std::process::id()))
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request; returns the status and body. Errors are strings for test output.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| "response timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, dechunk(&text, body)))
}

fn dechunk(head: &str, body: String) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A `redis-server` of this test's own, on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts redis-server; fails the test with a clear message when it is not installed.
    pub async fn start() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("roomfleet-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut r = Self { port, child: None, dir };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs redis-server (run scripts/test, which installs it): {e}")
            });
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "redis-server to accept connections", || async move {
            redis_ping(port).await
        })
        .await;
    }

    /// Kills the server (SIGKILL): every client connection drops.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Runs one command through `redis-cli`-free RESP and returns the raw reply text.
    pub async fn command(&self, args: &[&str]) -> String {
        resp_command(self.port, args).await.unwrap_or_default()
    }

    /// Calls per command so far (`INFO commandstats`), by lower-case name: what a test
    /// compares before and after traffic to see which commands the traffic cost.
    pub async fn command_calls(&self) -> BTreeMap<String, u64> {
        let info = self.command(&["INFO", "commandstats"]).await;
        info.lines()
            .filter_map(|l| {
                let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn redis_ping(port: u16) -> bool {
    resp_command(port, &["PING"]).await.is_some_and(|r| r.contains("PONG"))
}

/// Sends one RESP command and returns what arrives within a short read.
async fn resp_command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 1 << 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}
