//! `fleet up`: parses flags (environment and config file too), starts a router and N nodes in
//! this process, prints the URLs, and serves until SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use fleet::{Fleet, Options};
use router::RouterArgs;

/// roomfleet on one machine: a router and N ws-nodes in one process.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Cli {
    /// TOML config file; its keys are the long flag names of `up`.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the router and the nodes; serve until Ctrl-C.
    Up(Up),
}

#[derive(clap::Args, Debug)]
struct Up {
    /// How many ws-nodes to start (on free loopback ports).
    #[arg(long, env = "FLEET_NODES", default_value_t = 3)]
    nodes: usize,
    /// Where clients connect.
    #[arg(long, env = "FLEET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The router's admin API.
    #[arg(long, env = "FLEET_ADMIN", default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// The router's flags. Their `--redis URL` also makes the nodes span rooms through that
    /// Redis instead of the in-process hub.
    #[command(flatten)]
    router: RouterArgs,
}

fn main() {
    shared::shutdown::init_tracing();
    let options =
        shared::config::args_with_file("FLEET_").map_err(|e| e.to_string()).and_then(|mut argv| {
            // The file's keys are flags of `up`: move the subcommand before them.
            if let Some(i) = argv.iter().position(|a| a == "up") {
                let up = argv.remove(i);
                argv.insert(1, up);
            }
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| e.exit());
            let Command::Up(up) = cli.command;
            let redis = up.router.redis.clone();
            let router = up.router.into_config(up.listen, up.admin, Vec::new());
            router.map_err(|e| e.to_string()).map(|router| Options {
                nodes: up.nodes,
                router,
                node: ws_node::Config::default(),
                redis,
            })
        });
    let result = options.and_then(|o| run(o).map_err(|e| e.to_string()));
    if let Err(e) = result {
        eprintln!("fleet: {e}");
        std::process::exit(2);
    }
}

#[tokio::main]
async fn run(options: Options) -> Result<(), fleet::Error> {
    let fleet = Fleet::up(options).await?;
    print!("{}", fleet.banner());
    shared::shutdown::signal().await;
    fleet.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
