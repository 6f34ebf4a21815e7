//! A real PostgreSQL of a test's own: `initdb` in a temporary directory, `pg_ctl` on a free
//! port, stopped and removed on drop. `initdb` and `pg_ctl` refuse to run as root, so as
//! root they run as the `postgres` user (`runuser`), the directory chowned to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// Where Debian's `postgresql-15` package puts the server binaries.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server on 127.0.0.1 and a free port, with trust authentication for the
/// user `postgres`; stopped (immediately) and deleted on drop.
pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
    running: bool,
}

impl PostgresServer {
    /// Creates the cluster and starts it; fails the test with a clear message when
    /// PostgreSQL is not installed.
    pub async fn start() -> Self {
        let initdb = Path::new(BIN).join("initdb");
        assert!(
            initdb.exists(),
            "this test needs PostgreSQL 15 ({} is missing): run scripts/test, which installs \
             Debian's postgresql-15",
            initdb.display()
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("roomfleet-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create the PostgreSQL directory");
        if as_root() {
            let (uid, gid) = postgres_ids();
            for p in [dir.clone(), dir.join("data")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let data = dir.join("data");
        let out = pg_command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = Self { port, dir, running: false };
        pg.start_again().await;
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections drop, as when
    /// the database host goes away.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = pg_command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Starts the (stopped) server again on the same port, with what it held.
    pub async fn start_again(&mut self) {
        // fsync off: a test survives a process crash (`stop` is one), not a host crash; a
        // commit still reaches the WAL before it is acknowledged (no synchronous_commit=off,
        // which would lose the last commits in a crash).
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let status = pg_command("pg_ctl")
            .args(["start", "-W", "-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl start failed: see {}", self.dir.join("log").display());
        self.running = true;
        let port = self.port;
        wait_until(Duration::from_secs(30), "PostgreSQL to accept connections", || async move {
            tokio::task::spawn_blocking(move || is_ready(port)).await.unwrap_or(false)
        })
        .await;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_ready(port: u16) -> bool {
    Command::new(Path::new(BIN).join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A server binary, run as `postgres` when this process is root.
fn pg_command(name: &str) -> Command {
    let bin = Path::new(BIN).join(name);
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn as_root() -> bool {
    id(&["-u"]) == Some(0)
}

fn postgres_ids() -> (u32, u32) {
    let uid = id(&["-u", "postgres"]);
    let gid = id(&["-g", "postgres"]);
    match (uid, gid) {
        (Some(u), Some(g)) => (u, g),
        _ => panic!("no postgres user: install Debian's postgresql-15 (scripts/test does)"),
    }
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
