//! The command line: `loadtest [run flags]` and `loadtest merge A.json B.json ...`. Every
//! run flag also reads a `LOADTEST_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::access::AccessArgs;
use crate::dialect::Dialect;
use crate::direct::ConnectMode;
use crate::progress::ProgressMode;
use crate::pusher::PusherApp;
use crate::reconnect::Backoff;
use crate::run::RunConfig;
use crate::scenario::{Dist, Shard};
use crate::target::{Target, parse_src_ips};

/// Load generator for roomfleet: many connections in many rooms, every delivery checked.
/// Exits 1 when any message is lost, duplicated or reordered, naming the room.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Combine shard reports (`--shard K/N` runs) into one; histograms merge exactly.
    Merge {
        /// Shard reports written with --json.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Write the merged report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the merged latency plot (SVG) here.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Publish through the server API and the Redis inbox into rooms with members on every
    /// node; publishes/s, entries/s and call-to-delivery latency, every delivery checked.
    Api(Box<crate::api::ApiArgs>),
}

/// The flags of a run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// WebSocket URL of a router or node (127.0.0.0/8 only); room and user are appended.
    #[arg(long, env = "LOADTEST_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Connections in the whole scenario (all shards together).
    #[arg(long, env = "LOADTEST_CONNS", default_value_t = 100)]
    pub conns: usize,
    /// Rooms in the scenario; every room gets at least one member.
    #[arg(long, env = "LOADTEST_ROOMS", default_value_t = 10)]
    pub rooms: usize,
    /// Room sizes: `uniform`, or `zipf:S` (a few large rooms, a long tail of small ones).
    #[arg(long, env = "LOADTEST_DIST", default_value = "uniform")]
    pub dist: Dist,
    /// Publishes per second per sender; 0 = idle mode: connect, hold for warmup + duration.
    #[arg(long, env = "LOADTEST_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Senders per room: the room's first members publish, everyone receives. The default 1
    /// keeps deliveries per second = rooms x rate x members, easy to reason about.
    #[arg(long, env = "LOADTEST_SENDERS", default_value_t = 1)]
    pub senders: u32,
    /// Publish body size in bytes (padded JSON).
    #[arg(long, env = "LOADTEST_SIZE", default_value_t = 64)]
    pub size: usize,
    /// Seconds measured, after the warmup.
    #[arg(long, env = "LOADTEST_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of publishing before measuring (still checked for loss).
    #[arg(long, env = "LOADTEST_WARMUP", default_value_t = 2.0)]
    pub warmup: f64,
    /// Longest wait in seconds after the last publish for in-flight messages.
    #[arg(long, env = "LOADTEST_DRAIN", default_value_t = 5.0)]
    pub drain: f64,
    /// New connections per second.
    #[arg(long, env = "LOADTEST_CONNECT_RATE", default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Seconds one connection may take from dial to welcome.
    #[arg(long, env = "LOADTEST_CONNECT_TIMEOUT", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Handshakes in flight at once.
    #[arg(long, env = "LOADTEST_MAX_INFLIGHT", default_value_t = 1000)]
    pub max_inflight: usize,
    /// Source addresses, round-robin: `127.0.0.2-127.0.0.254` or a comma list (loopback only).
    #[arg(long, env = "LOADTEST_SRC_IPS")]
    pub src_ips: Option<String>,
    /// Run only connections i with i % N == K; rooms come out the same in every shard.
    /// Seats go round by round (with --dist uniform and --conns a multiple of --rooms,
    /// connection i is in room i % --rooms), so a room has members in every shard only when
    /// N and --rooms have no common factor: with `--rooms 200 --shard K/2` each shard holds
    /// whole rooms, with `--rooms 199` every room is split over both (what a spanning
    /// scenario with one node per shard needs).
    #[arg(long, env = "LOADTEST_SHARD", default_value = "0/1")]
    pub shard: Shard,
    /// Runtime threads: 0 = one per core; 1 = one thread, no hand-offs between threads (the
    /// cheapest per message: run one shard per core to use them all, as bench/ does).
    #[arg(long, env = "LOADTEST_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Wire protocol.
    #[arg(long, env = "LOADTEST_DIALECT", value_enum, default_value_t = Dialect::Native)]
    pub dialect: Dialect,
    /// `url`: open `--url` (a router proxies or hands off); `direct`: ask the router's
    /// `GET /connect` where each room lives and open the node's URL it answers.
    #[arg(long, env = "LOADTEST_CONNECT", value_enum, default_value_t = ConnectMode::Url)]
    pub connect: ConnectMode,
    /// `--dialect pusher`: the app's `KEY:SECRET`; the key goes in the URL path (`/app/KEY`),
    /// the secret signs each private-channel subscription.
    #[arg(long, env = "LOADTEST_PUSHER_APP", hide_env_values = true)]
    pub pusher_app: Option<String>,
    /// Prefix of room and user names, so runs against one fleet do not meet.
    #[arg(long, env = "LOADTEST_PREFIX", default_value = "lt")]
    pub prefix: String,
    /// Write the JSON report here.
    #[arg(long, env = "LOADTEST_JSON")]
    pub json: Option<PathBuf>,
    /// Write an SVG latency plot here.
    #[arg(long, env = "LOADTEST_PLOT")]
    pub plot: Option<PathBuf>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub no_bar: bool,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub reconnect: ReconnectArgs,
}

/// `--reconnect` and its back-off (Socket.IO's and Centrifugo's clients' shape).
#[derive(Debug, Args)]
pub struct ReconnectArgs {
    /// Come back after every close or break (drain, shutdown, crash, refused upgrade) and
    /// resume with since/epoch; loss is then judged across reconnects.
    #[arg(long, env = "LOADTEST_RECONNECT")]
    pub reconnect: bool,
    /// Seconds before the first attempt after a close; doubles per failed attempt.
    #[arg(long, env = "LOADTEST_RECONNECT_DELAY", default_value_t = 0.5)]
    pub reconnect_delay: f64,
    /// Longest back-off in seconds.
    #[arg(long, env = "LOADTEST_RECONNECT_DELAY_MAX", default_value_t = 5.0)]
    pub reconnect_delay_max: f64,
    /// Each delay is scaled by a random factor in 1 ± this.
    #[arg(long, env = "LOADTEST_RECONNECT_JITTER", default_value_t = 0.5)]
    pub reconnect_jitter: f64,
    /// Failed attempts in a row after which a connection gives up.
    #[arg(long, env = "LOADTEST_RECONNECT_ATTEMPTS", default_value_t = 20)]
    pub reconnect_attempts: u32,
}

impl ReconnectArgs {
    fn backoff(&self, dialect: Dialect) -> anyhow::Result<Option<Backoff>> {
        if !self.reconnect {
            return Ok(None);
        }
        if dialect != Dialect::Native {
            bail!(
                "--reconnect needs --dialect native (Socket.IO and Pusher have no seq to resume from)"
            );
        }
        if !(self.reconnect_jitter.is_finite() && (0.0..=1.0).contains(&self.reconnect_jitter)) {
            bail!("--reconnect-jitter {}: expected 0 to 1", self.reconnect_jitter);
        }
        if self.reconnect_attempts == 0 {
            bail!("--reconnect-attempts must be at least 1");
        }
        Ok(Some(Backoff {
            first: secs(self.reconnect_delay, "reconnect-delay")?,
            max: secs(self.reconnect_delay_max, "reconnect-delay-max")?,
            jitter: self.reconnect_jitter,
            attempts: self.reconnect_attempts,
        }))
    }
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        bail!("--{flag} {v}: expected seconds between 0 and 86400");
    }
    Ok(Duration::from_secs_f64(v))
}

impl RunArgs {
    /// Validates everything before a socket opens.
    /// The tokio runtime `--threads` asks for.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.threads {
            1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
            n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        }
    }

    pub fn config(&self) -> anyhow::Result<RunConfig> {
        if !(self.rate.is_finite() && (0.0..=100_000.0).contains(&self.rate)) {
            bail!("--rate {}: expected 0 to 100000 publishes per second", self.rate);
        }
        if !(self.connect_rate.is_finite() && self.connect_rate > 0.0) {
            bail!("--connect-rate must be positive");
        }
        if self.prefix.is_empty()
            || !self.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            bail!("--prefix {:?}: use [A-Za-z0-9._:-]", self.prefix);
        }
        let mut target = Target::parse(&self.url)?;
        let pusher = match (self.dialect, &self.pusher_app) {
            (Dialect::Pusher, Some(spec)) => {
                let app = PusherApp::parse(spec)?;
                if self.prefix.contains(':') {
                    bail!("--prefix {:?}: Pusher channel names cannot hold ':'", self.prefix);
                }
                target.path = app.path();
                Some(app)
            }
            (Dialect::Pusher, None) => bail!("--dialect pusher needs --pusher-app KEY:SECRET"),
            (_, Some(_)) => bail!("--pusher-app is for --dialect pusher"),
            (_, None) => None,
        };
        if self.connect == ConnectMode::Direct && (self.dialect != Dialect::Native || target.tls) {
            bail!("--connect direct needs --dialect native and a ws:// router URL");
        }
        let config = RunConfig {
            url: self.url.clone(),
            connect: self.connect,
            access: self.access.access(target.tls)?,
            target,
            dialect: self.dialect,
            conns: self.conns,
            rooms: self.rooms,
            dist: self.dist,
            rate: self.rate,
            senders: self.senders,
            size: self.size,
            duration: secs(self.duration, "duration")?,
            warmup: secs(self.warmup, "warmup")?,
            drain: secs(self.drain, "drain")?,
            connect_rate: self.connect_rate,
            connect_timeout: secs(self.connect_timeout, "connect-timeout")?,
            max_inflight: self.max_inflight.max(1),
            src_ips: match &self.src_ips {
                Some(spec) => parse_src_ips(spec)?,
                None => Vec::new(),
            },
            shard: self.shard,
            prefix: self.prefix.clone(),
            progress: if self.no_bar { ProgressMode::Lines } else { ProgressMode::Auto },
            reconnect: self.reconnect.backoff(self.dialect)?,
            pusher,
        };
        crate::scenario::room_sizes(config.conns, config.rooms, config.dist)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_run_and_a_merge() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "--conns",
            "20000",
            "--rooms",
            "5000",
            "--dist",
            "zipf:1.1",
            "--shard",
            "1/4",
            "--src-ips",
            "127.0.0.2-127.0.0.9",
            "--rate",
            "0",
        ])
        .unwrap();
        let cfg = cli.run.config().unwrap();
        assert_eq!(cfg.shard, Shard { k: 1, n: 4 });
        assert_eq!(cfg.src_ips.len(), 8);
        assert_eq!(cfg.rate, 0.0);
        let cli =
            Cli::try_parse_from(["loadtest", "merge", "a.json", "b.json", "--json", "m.json"])
                .unwrap();
        assert!(
            matches!(cli.command, Some(Command::Merge { ref reports, .. }) if reports.len() == 2)
        );
        let bad = Cli::try_parse_from(["loadtest", "--url", "ws://8.8.8.8:80/ws"]).unwrap();
        assert!(bad.run.config().is_err());
        let bad = Cli::try_parse_from(["loadtest", "--conns", "3", "--rooms", "5"]).unwrap();
        assert!(bad.run.config().is_err());
    }

    #[test]
    fn reconnect_flags_default_to_the_browser_clients_back_off() {
        let cli = Cli::try_parse_from(["loadtest"]).unwrap();
        assert_eq!(cli.run.config().unwrap().reconnect, None);
        let cli = Cli::try_parse_from(["loadtest", "--reconnect"]).unwrap();
        assert_eq!(cli.run.config().unwrap().reconnect, Some(Backoff::default()));
        let cli =
            Cli::try_parse_from(["loadtest", "--reconnect", "--dialect", "socketio"]).unwrap();
        assert!(cli.run.config().is_err());
        let cli =
            Cli::try_parse_from(["loadtest", "--reconnect", "--reconnect-jitter", "2"]).unwrap();
        assert!(cli.run.config().is_err());
    }

    #[test]
    fn the_pusher_dialect_needs_its_app() {
        let args = ["loadtest", "--dialect", "pusher", "--url", "ws://127.0.0.1:6001"];
        assert!(Cli::try_parse_from(args).unwrap().run.config().is_err());
        let cli =
            Cli::try_parse_from([&args[..], &["--pusher-app", "app-key:app-secret"]].concat())
                .unwrap();
        let cfg = cli.run.config().unwrap();
        assert_eq!(
            cfg.target.request_url(Dialect::Pusher, "r", "u"),
            "ws://127.0.0.1:6001/app/app-key?protocol=7&client=roomfleet-loadtest&version=7.0.0&flash=false"
        );
        let native = Cli::try_parse_from(["loadtest", "--pusher-app", "k:s"]).unwrap();
        assert!(native.run.config().is_err());
    }
}
