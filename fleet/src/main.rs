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
    Up(Box<Up>),
    /// Print an HS256 connection token (for operators and tests).
    Token(Token),
}

#[derive(clap::Args, Debug)]
struct Token {
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// A room grant PATTERN=r|rw (`chat:*=rw`, `status:u42=r`); repeat for more.
    #[arg(long = "room", value_parser = shared::auth::parse_room_grant, required = true)]
    rooms: Vec<(String, shared::auth::Rights)>,
    /// Seconds the token is valid (`3600`, or with a unit: `90s`, `30m`, `1h`, `2d`).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// The HS256 secret: `env:NAME` or a file (the fleet's --jwt-key).
    #[arg(long, env = "ROUTER_JWT_KEY")]
    key: String,
    /// JSON shown to the other members (`welcome`, `presence`).
    #[arg(long, value_parser = parse_json)]
    info: Option<serde_json::Value>,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 1h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(n * mult)
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("--info is not JSON: {e}"))
}

/// The secret of `--key`: the variable's value or the file's text, trimmed.
fn token_secret(key: &str) -> Result<String, String> {
    let s = match key.strip_prefix("env:") {
        Some(name) => {
            std::env::var(name).map_err(|_| format!("--key env:{name}: variable not set"))?
        }
        None => std::fs::read_to_string(key).map_err(|e| format!("--key {key}: {e}"))?,
    };
    Ok(s.trim().to_string())
}

fn token(t: Token) -> Result<(), String> {
    shared::ids::UserId::parse(&t.sub).map_err(|e| format!("--sub: {e}"))?;
    let secret = token_secret(&t.key)?;
    if secret.len() < 16 {
        return Err("--key: an HS256 secret needs at least 16 bytes".into());
    }
    let claims = shared::auth::TokenClaims {
        sub: t.sub,
        exp: shared::auth::unix_secs() + t.ttl,
        nbf: None,
        rooms: t.rooms.into_iter().collect(),
        info: t.info,
    };
    println!("{}", shared::auth::sign_hs256(&claims, secret.as_bytes()));
    Ok(())
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
    /// The server API for back ends (`/api/*`); needs --api-key off loopback.
    #[arg(long, env = "FLEET_API", default_value = "127.0.0.1:9091")]
    api: SocketAddr,
    /// The nodes' webhooks: [EVENTS@]http://HOST:PORT/PATH (see ws-node --webhook).
    #[arg(long = "webhook", env = "FLEET_WEBHOOK", value_delimiter = ';')]
    webhooks: Vec<ws_node::hooks::Webhook>,
    /// HMAC-SHA256 key the webhooks are signed with (itself, env:VAR or file:PATH).
    #[arg(long, env = "FLEET_WEBHOOK_SECRET", value_parser = ws_node::hooks::secret)]
    webhook_secret: Option<std::sync::Arc<[u8]>>,
    /// Members one room may hold on each node; the next joiner is closed with 4009.
    #[arg(long, env = "FLEET_MAX_ROOM_MEMBERS", default_value_t = 10_000)]
    max_room_members: usize,
    /// How the router passes clients to the nodes: `handoff` (it reads the request, places
    /// it and hands the socket to the node: no loopback hop) or `proxy` (every byte crosses
    /// the router, as with nodes on other hosts).
    #[arg(long, env = "FLEET_DATA_PATH", default_value = "handoff")]
    data_path: fleet::DataPath,
    /// Archive nothing (no database, no archiver). Otherwise every room is archived, into
    /// --archive-db (default sqlite:roomfleet.db in the working directory).
    #[arg(long, env = "FLEET_NO_ARCHIVE")]
    no_archive: bool,
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
            let up = match cli.command {
                Command::Up(up) => *up,
                Command::Token(t) => {
                    if let Err(e) = token(t) {
                        eprintln!("fleet token: {e}");
                        std::process::exit(2);
                    }
                    std::process::exit(0);
                }
            };
            // The nodes share the router's Redis and prefix: the inbox, the registry and
            // the rooms' keys stay together when several fleets use one Redis.
            let redis = up.router.redis.clone().map(|url| ws_node::RedisConfig {
                prefix: up.router.redis_prefix.clone(),
                ..ws_node::RedisConfig::new(url)
            });
            let archive_db = up.router.archive_db.clone();
            if up.max_room_members == 0 {
                return Err("--max-room-members must be at least 1".to_owned());
            }
            let router = up.router.build(up.listen, up.admin, Vec::new());
            router
                .and_then(|mut router| {
                    router.api = Some(up.api);
                    // Router and nodes share this process: a hop secret nobody else knows.
                    if router.jwt.is_some() && router.hop_key.is_none() {
                        router.hop_key = Some(shared::auth::HopKey::random());
                    }
                    router.validate().map(|()| router)
                })
                .map_err(|e| e.to_string())
                .map(|router| Options {
                    nodes: up.nodes,
                    node: ws_node::Config {
                        jwt: router.jwt.clone(),
                        hop_key: router.hop_key.clone(),
                        max_room_members: up.max_room_members,
                        webhooks: up.webhooks.clone(),
                        webhook_secret: up.webhook_secret.clone(),
                        archive: !up.no_archive,
                        ..ws_node::Config::default()
                    },
                    router,
                    redis,
                    data_path: up.data_path,
                    archive: (!up.no_archive).then(|| {
                        let db = archive_db.clone();
                        fleet::Archive::new(db.unwrap_or_else(|| "sqlite:roomfleet.db".into()))
                    }),
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
