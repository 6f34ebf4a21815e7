//! `job-status`: the submit endpoint, the page and the workers of the job-status example in
//! one process (`--workers 0` for the endpoint alone, `--no-http` for workers alone).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use job_status::queue::Keys;
use job_status::web::Web;
use job_status::worker::{self, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// Jobs in Redis, progress pushed into each submitter's room through the roomfleet inbox.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The Redis the fleet reads its inbox from (`fleet up --redis URL --inbox`).
    #[arg(long, env = "JOB_STATUS_REDIS", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The fleet's `--redis-prefix`: statuses go to `{prefix}:inbox`.
    #[arg(long, env = "JOB_STATUS_REDIS_PREFIX", default_value = "roomfleet")]
    redis_prefix: String,
    /// Prefix of the example's own keys (the queue).
    #[arg(long, env = "JOB_STATUS_KEY_PREFIX", default_value = "job-status")]
    key_prefix: String,
    /// Where the submit endpoint and the page listen.
    #[arg(long, env = "JOB_STATUS_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// No endpoint and no page: workers only.
    #[arg(long)]
    no_http: bool,
    /// The router's WebSocket URL, for the page.
    #[arg(long, env = "JOB_STATUS_WS", default_value = "ws://127.0.0.1:8080/ws")]
    ws: String,
    /// Workers in this process.
    #[arg(long, env = "JOB_STATUS_WORKERS", default_value_t = 1)]
    workers: usize,
    /// This process's worker names are NAME-1, NAME-2...: keep them stable across restarts
    /// so a restarted worker finds the job it did not finish.
    #[arg(long, env = "JOB_STATUS_WORKER_NAME", default_value = "worker")]
    worker_name: String,
    /// Milliseconds one test takes.
    #[arg(long, env = "JOB_STATUS_STEP_MS", default_value_t = 400)]
    step_ms: u64,
}

fn main() {
    shared::shutdown::init_tracing();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("job-status: {e:#}");
        std::process::exit(2);
    }
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = redis::Client::open(cli.redis.as_str()).context("--redis")?;
    let keys = Keys { app: cli.key_prefix.clone(), fleet: cli.redis_prefix.clone() };
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    if !cli.no_http {
        let conn = job_status::connect(&client)
            .await
            .with_context(|| format!("redis at {}", cli.redis))?;
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("listen on {}", cli.listen))?;
        let web = Arc::new(Web { conn, keys: keys.clone(), ws_url: cli.ws.clone() });
        println!("job-status: page and POST /jobs on http://{}", listener.local_addr()?);
        tasks.push(tokio::spawn(job_status::web::serve(web, listener, stop.clone())));
    }
    for i in 1..=cli.workers {
        let cfg = WorkerConfig {
            name: format!("{}-{i}", cli.worker_name),
            keys: keys.clone(),
            step: Duration::from_millis(cli.step_ms),
        };
        tasks.push(tokio::spawn(worker::run(client.clone(), cfg, stop.clone())));
    }
    anyhow::ensure!(!tasks.is_empty(), "--no-http and --workers 0: nothing to run");
    shared::shutdown::signal().await;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    Ok(())
}
