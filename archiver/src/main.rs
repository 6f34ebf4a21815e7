//! `archiver`: parses flags (environment and config file too), opens the database (running
//! its migrations), and drains the Redis archive queue until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use archiver::{Metrics, QueueConfig, Store};
use clap::Parser;
use shared::config::parse_secs;

/// roomfleet's archiver. Every flag is also an environment variable (shown) and a key of
/// the `--config` TOML file.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// TOML config file; its keys are the long flag names.
    #[arg(long, env = "ARCHIVER_CONFIG")]
    config: Option<String>,
    /// Redis URL of the archive queue (the nodes' --redis).
    #[arg(long, env = "ARCHIVER_QUEUE")]
    queue: String,
    /// The database: postgres://USER:PASSWORD@HOST/DB or sqlite:PATH (created when missing).
    /// Migrations run at start.
    #[arg(long, env = "ARCHIVER_DB")]
    db: String,
    /// Prefix of the queue's keys: the nodes' --redis-prefix.
    #[arg(long, env = "ARCHIVER_PREFIX", default_value = "roomfleet")]
    prefix: String,
    /// Shards of the queue: the nodes' --archive-shards.
    #[arg(long, env = "ARCHIVER_SHARDS", default_value_t = shared::archive::DEFAULT_SHARDS)]
    shards: u32,
    /// This archiver's consumer name in the group `archivers` (default: archiver-PID-RANDOM);
    /// unique per archiver.
    #[arg(long, env = "ARCHIVER_CONSUMER")]
    consumer: Option<String>,
    /// Entries per batch (one transaction, one multi-row insert).
    #[arg(long, env = "ARCHIVER_BATCH", default_value_t = 500)]
    batch: usize,
    /// Seconds one read waits for new entries.
    #[arg(long, env = "ARCHIVER_BLOCK", default_value = "0.5", value_parser = parse_secs)]
    block: Duration,
    /// Seconds an entry stays pending with a silent archiver before another claims it.
    #[arg(long, env = "ARCHIVER_CLAIM_IDLE", default_value = "30", value_parser = parse_secs)]
    claim_idle: Duration,
    /// Times the database may refuse an entry before it is dead-lettered.
    #[arg(long, env = "ARCHIVER_MAX_FAILURES", default_value_t = 3)]
    max_failures: u32,
    /// Seconds between retention rounds (each deletes expired messages of rooms with
    /// `archive_days`, 1,000 per transaction).
    #[arg(long, env = "ARCHIVER_RETENTION_EVERY", default_value = "60", value_parser = parse_secs)]
    retention_every: Duration,

    /// Address of `GET /metrics` and `GET /healthz`.
    #[arg(long, env = "ARCHIVER_METRICS", default_value = "127.0.0.1:9102")]
    metrics: SocketAddr,
}

fn main() {
    shared::shutdown::init_tracing();
    let result = shared::config::args_with_file("ARCHIVER_")
        .map_err(anyhow::Error::from)
        .and_then(|argv| {
            let args = Args::try_parse_from(argv).unwrap_or_else(|e| e.exit());
            check(&args)?;
            Ok(args)
        })
        .and_then(run);
    if let Err(e) = result {
        eprintln!("archiver: {e:#}");
        std::process::exit(2);
    }
}

fn check(a: &Args) -> anyhow::Result<()> {
    let max = shared::archive::MAX_SHARDS;
    anyhow::ensure!((1..=max).contains(&a.shards), "--shards must be 1..={max}");
    let most = archiver::store::MAX_BATCH;
    anyhow::ensure!((1..=most).contains(&a.batch), "--batch must be 1..={most}");
    anyhow::ensure!(a.max_failures >= 1, "--max-failures must be at least 1");
    anyhow::ensure!(!a.claim_idle.is_zero(), "--claim-idle must be more than 0");
    anyhow::ensure!(!a.retention_every.is_zero(), "--retention-every must be more than 0");
    anyhow::ensure!(
        a.queue.starts_with("redis://") || a.queue.starts_with("rediss://"),
        "--queue must be a redis:// URL"
    );
    Ok(())
}

#[tokio::main]
async fn run(a: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.metrics)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics {}: {e}", a.metrics))?;
    let store = Store::open(&a.db).await?;
    let metrics = Metrics::new();
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(archiver::metrics::serve(listener, metrics.clone(), token.clone()));
    let consumer = a
        .consumer
        .unwrap_or_else(|| format!("archiver-{}-{:04x}", std::process::id(), fastrand::u16(..)));
    let cfg = QueueConfig {
        redis: a.queue,
        prefix: a.prefix,
        shards: a.shards,
        consumer,
        batch: a.batch,
        block: a.block,
        claim_idle: a.claim_idle,
        max_failures: a.max_failures,
    };
    tracing::info!(db = archiver::store::redact(&a.db), metrics = %a.metrics, "archiver running");
    let retention =
        archiver::retention::run(store.clone(), a.retention_every, metrics.clone(), token.clone());
    tokio::spawn(retention);
    let work = tokio::spawn(archiver::redis_queue::run(store.clone(), cfg, metrics, token.clone()));
    shared::shutdown::signal().await;
    // A batch in flight commits or is rolled back; either way its entries stay pending
    // until acknowledged, so stopping loses nothing.
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
    store.close().await;
    Ok(())
}
