//! `router`: parses flags (environment and config file too), starts the router, serves until
//! SIGTERM or Ctrl-C, then lets open tunnels finish within the shutdown grace.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use router::membership::NodeSpec;
use router::{Config, Router, RouterArgs};

/// The roomfleet router. Every flag is also an environment variable (shown) and a key of the
/// `--config` TOML file (the flag name with `_` or `-`; `node = ["a=HOST:PORT", ...]`).
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Cli {
    /// TOML config file; its keys are the long flag names.
    #[arg(long, env = "ROUTER_CONFIG")]
    config: Option<String>,
    /// Address clients connect to (`GET /ws?room=R&user=U`).
    #[arg(long, env = "ROUTER_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of the admin API and metrics.
    #[arg(long, env = "ROUTER_ADMIN", default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Address of the server API for back ends (`/api/*`); needs --api-key off loopback.
    #[arg(long, env = "ROUTER_API", default_value = "127.0.0.1:9091")]
    api: SocketAddr,
    /// A node at start: ID=HOST:PORT[@WEIGHT][,handoff=PATH]; repeat for each
    /// (comma-separated in the env). `handoff=PATH` names the node's `--handoff unix:PATH`
    /// socket on this host: its clients are handed over there instead of proxied.
    #[arg(long = "node", env = "ROUTER_NODE", value_delimiter = ',')]
    nodes: Vec<String>,
    #[command(flatten)]
    router: RouterArgs,
}

fn main() {
    shared::shutdown::init_tracing();
    let config =
        shared::config::args_with_file("ROUTER_").map_err(|e| e.to_string()).and_then(|argv| {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| e.exit());
            let nodes = NodeSpec::parse_flags(&cli.nodes).map_err(|e| format!("--node {e}"))?;
            let archive = cli.router.archive_db.clone();
            let mut c =
                cli.router.build(cli.listen, cli.admin, nodes).map_err(|e| e.to_string())?;
            c.api = Some(cli.api);
            c.validate().map_err(|e| e.to_string())?;
            Ok((c, archive))
        });
    let result = config.and_then(|(c, a)| run(c, a).map_err(|e| e.to_string()));
    if let Err(e) = result {
        eprintln!("router: {e}");
        std::process::exit(2);
    }
}

#[tokio::main]
async fn run(mut config: Config, archive: Option<String>) -> Result<(), router::Error> {
    if let Some(url) = archive {
        let store = archiver::Store::open(&url).await;
        config.archive =
            Some(store.map_err(|e| router::Error::Config(format!("--archive-db: {e}")))?);
    }
    if config.nodes.is_empty() {
        tracing::warn!("no --node given: add nodes through POST /admin/nodes");
    }
    let router = Router::start(config)?;
    shared::shutdown::signal().await;
    if !router.shutdown().await {
        tracing::warn!("some tunnels were cut at the end of the shutdown grace");
    }
    Ok(())
}
