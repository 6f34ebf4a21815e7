//! `ws-node`: parses flags (environment and config file too), binds, serves until SIGTERM.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shared::config::parse_secs;
use shared::registry::NodeRecord;
use shared::shutdown::Signal;
use ws_node::config::RoomPolicy;
use ws_node::history::Policy;
use ws_node::{Bus, Config, LocalBus, Node, RedisBus, RedisConfig};

/// One roomfleet ws-node. Every flag is also an environment variable (shown) and a key of
/// the `--config` TOML file (the flag name with `_` or `-`).
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// TOML config file; its keys are the long flag names.
    #[arg(long, env = "WSNODE_CONFIG")]
    config: Option<String>,
    /// Address to listen on for WebSocket upgrades and plain HTTP.
    #[arg(long, env = "WSNODE_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// `unix:PATH`: also take clients a router on this host hands over on that Unix socket
    /// (router `--node ID=ADDR,handoff=PATH`), so the router leaves the data path.
    #[arg(long, env = "WSNODE_HANDOFF", value_parser = parse_handoff)]
    handoff: Option<std::path::PathBuf>,
    /// This node's ID: in `welcome.node` and in routers' rings.
    #[arg(long, env = "WSNODE_NODE_ID", default_value = "node-a")]
    node_id: String,
    /// Largest client frame in bytes (bigger closes with 1009).
    #[arg(long, env = "WSNODE_MAX_FRAME_BYTES", default_value_t = 65536)]
    max_frame_bytes: usize,
    /// Publishes and signals per second per connection.
    #[arg(long, env = "WSNODE_PUBLISH_RATE", default_value_t = 20.0)]
    publish_rate: f64,
    /// Burst above the publish rate.
    #[arg(long, env = "WSNODE_PUBLISH_BURST", default_value_t = 40.0)]
    publish_burst: f64,
    /// Frames refused in a row for the rate limit before closing with 1008.
    #[arg(long, env = "WSNODE_RATE_ABUSE_FRAMES", default_value_t = 200)]
    rate_abuse_frames: u32,
    /// Members per room on this node.
    #[arg(long, env = "WSNODE_MAX_ROOM_MEMBERS", default_value_t = 10_000)]
    max_room_members: usize,
    /// Connections this node holds (default: open-file limit less 256).
    #[arg(long, env = "WSNODE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Frames queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "WSNODE_OUTBOUND_QUEUE", default_value_t = 1024)]
    outbound_queue: usize,
    /// Ping interval in seconds.
    #[arg(long, env = "WSNODE_PING_INTERVAL", default_value = "20", value_parser = parse_secs)]
    ping_interval: Duration,
    /// Seconds without any frame from the client before closing with 4000.
    #[arg(long, env = "WSNODE_IDLE_TIMEOUT", default_value = "60", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Default drain window in seconds for `POST /admin/drain`.
    #[arg(long, env = "WSNODE_DRAIN_WINDOW", default_value = "10", value_parser = parse_secs)]
    drain_window: Duration,
    /// Seconds shutdown waits for connections to close.
    #[arg(long, env = "WSNODE_SHUTDOWN_GRACE", default_value = "10", value_parser = parse_secs)]
    shutdown_grace: Duration,
    /// Bearer token required on `/admin/*`.
    #[arg(long, env = "WSNODE_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Redis URL for rooms spanning nodes; without it the node runs alone.
    #[arg(long, env = "WSNODE_REDIS")]
    redis: Option<String>,
    /// Prefix of Redis keys and channels.
    #[arg(long, env = "WSNODE_REDIS_PREFIX", default_value = "roomfleet")]
    redis_prefix: String,
    /// Address routers reach this node at, registered in Redis for `--discovery redis`
    /// routers (needs `--redis`). Without it the node does not register.
    #[arg(long, env = "WSNODE_ADVERTISE")]
    advertise: Option<String>,
    /// Ring weight this node registers with.
    #[arg(long, env = "WSNODE_WEIGHT", default_value_t = 1)]
    weight: u32,
    /// On SIGTERM, seconds to wait after leaving the registry before draining, so every router
    /// has stopped placing here.
    #[arg(long, env = "WSNODE_DEREGISTER_WAIT", default_value = "2", value_parser = parse_secs)]
    deregister_wait: Duration,
    /// Seconds a node opening a room waits for another holder's sync before it takes the
    /// holder for dead (prunes it and welcomes its joiners without it).
    #[arg(long, env = "WSNODE_SPAN_TIMEOUT", default_value = "0.5", value_parser = parse_secs)]
    span_timeout: Duration,
    /// Seconds between repairs: each room compares its holders with its mode and mends
    /// a split; no split room outlives one interval.
    #[arg(long, env = "WSNODE_REPAIR_INTERVAL", default_value = "2", value_parser = parse_secs)]
    repair_interval: Duration,
    /// Connection tokens (same forms as the router's --jwt-key): for clients that connect
    /// here directly and for `refresh` frames.
    #[arg(long, env = "WSNODE_JWT_KEY")]
    jwt_key: Option<String>,
    /// Secret (`env:NAME` or a file) routers sign verified identities with. With it or
    /// --jwt-key set, every upgrade needs a valid token or a router's identity header.
    #[arg(long, env = "WSNODE_HOP_SECRET")]
    hop_secret: Option<String>,
    /// PEM certificate chain: the listener then speaks TLS only (WebSocket, health, metrics,
    /// admin; reloaded on SIGHUP). Routers reach it with --node-tls-ca.
    #[arg(long, env = "WSNODE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WSNODE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Where to POST the room changes this node raises: [EVENTS@]http://HOST:PORT/PATH,
    /// EVENTS a comma list of room.occupied, room.vacated, member.joined, member.left
    /// (default all). Repeat for more (`;`-separated in the env).
    #[arg(long = "webhook", env = "WSNODE_WEBHOOK", value_delimiter = ';')]
    webhooks: Vec<ws_node::hooks::Webhook>,
    /// HMAC-SHA256 key of the webhooks' `x-roomfleet-signature` (itself, env:VAR or
    /// file:PATH; 16 bytes at least).
    #[arg(long, env = "WSNODE_WEBHOOK_SECRET")]
    webhook_secret: Option<String>,
    /// Seconds after which a silent node is pruned from room sets.
    #[arg(long, env = "WSNODE_HEARTBEAT_TTL", default_value = "10", value_parser = parse_secs)]
    heartbeat_ttl: Duration,
    /// Messages of history a room keeps (rooms no `--rooms` entry matches); 0 turns it off.
    #[arg(long, env = "WSNODE_HISTORY_SIZE", default_value_t = 100)]
    history_size: usize,
    /// Seconds a message stays in a room's history (rooms no `--rooms` entry matches).
    #[arg(long, env = "WSNODE_HISTORY_TTL", default_value = "300", value_parser = parse_secs)]
    history_ttl: Duration,
    /// History and archive per room-name pattern,
    /// `pattern=chat:*,history_size=50,history_ttl=60,archive=true,archive_days=30`; repeatable, first
    /// match wins. In the config file: `[[rooms]]` tables.
    #[arg(long = "rooms", env = "WSNODE_ROOMS", value_delimiter = ';')]
    rooms: Vec<String>,
    /// Archive the messages of rooms no `--rooms` entry sets `archive` for (needs --redis:
    /// they go to the queue `{prefix}:archive:{N}` that `archiver` drains).
    #[arg(long, env = "WSNODE_ARCHIVE")]
    archive: bool,
    /// Days the archive keeps the messages of rooms no `--rooms` entry sets `archive_days`
    /// for (the archiver deletes older ones); absent = for good.
    #[arg(long, env = "WSNODE_ARCHIVE_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    archive_days: Option<u32>,
    /// Shards of the archive queue (streams `{prefix}:archive:{0..N-1}`); every node and
    /// archiver of a fleet must use the same number.
    #[arg(long, env = "WSNODE_ARCHIVE_SHARDS", default_value_t = shared::archive::DEFAULT_SHARDS)]
    archive_shards: u32,
    /// A resume that missed more than this many messages gets `recovered:false`.
    #[arg(long, env = "WSNODE_MAX_RECOVERY", default_value_t = 500)]
    max_recovery: usize,
    /// Deliver and ack a message only once Redis holds it (needs --redis): a SIGKILL then
    /// loses no message anyone saw. Adds up to one --history-flush of latency.
    #[arg(long, env = "WSNODE_DURABLE_ACK")]
    durable_ack: bool,
    /// Seconds between history appends to Redis (one pipelined round trip per flush for
    /// every room of the node).
    #[arg(long, env = "WSNODE_HISTORY_FLUSH", default_value = "0.01", value_parser = parse_secs)]
    history_flush: Duration,
}

impl Args {
    fn redis_config(&self) -> anyhow::Result<Option<RedisConfig>> {
        let Some(url) = &self.redis else { return Ok(None) };
        let ttl = self.heartbeat_ttl;
        anyhow::ensure!(
            ttl >= Duration::from_millis(300),
            "--heartbeat-ttl must be at least 0.3 s"
        );
        anyhow::ensure!(self.weight >= 1, "--weight must be at least 1");
        let advertise = self.advertise.as_ref().map(|addr| NodeRecord {
            id: self.node_id.clone(),
            addr: addr.clone(),
            weight: self.weight,
        });
        Ok(Some(RedisConfig {
            prefix: self.redis_prefix.clone(),
            heartbeat_ttl: ttl,
            advertise,
            archive_shards: self.archive_shards,
            ..RedisConfig::new(url)
        }))
    }

    fn into_config(self) -> anyhow::Result<Config> {
        anyhow::ensure!(
            self.advertise.is_none() || self.redis.is_some(),
            "--advertise registers the node in Redis: it needs --redis"
        );
        shared::ids::UserId::parse(&self.node_id).map_err(|e| {
            anyhow::anyhow!("--node-id: {}", e.to_string().replace("user", "node id"))
        })?;
        anyhow::ensure!(self.publish_rate > 0.0, "--publish-rate must be positive");
        anyhow::ensure!(self.outbound_queue >= 2, "--outbound-queue must be at least 2");
        for (flag, d) in [
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--span-timeout", self.span_timeout),
            ("--repair-interval", self.repair_interval),
            ("--heartbeat-ttl", self.heartbeat_ttl),
        ] {
            anyhow::ensure!(!d.is_zero(), "{flag} must be more than 0");
        }
        anyhow::ensure!(self.max_room_members >= 1, "--max-room-members must be at least 1");
        anyhow::ensure!(
            !self.durable_ack || self.redis.is_some(),
            "--durable-ack waits for Redis to hold each message: it needs --redis"
        );
        anyhow::ensure!(!self.history_flush.is_zero(), "--history-flush must be more than 0");
        anyhow::ensure!(
            self.max_recovery < self.outbound_queue,
            "--max-recovery ({}) must be below --outbound-queue ({}): a replay is queued whole",
            self.max_recovery,
            self.outbound_queue
        );
        let history = Policy { size: self.history_size, ttl: self.history_ttl };
        let rooms = self
            .rooms
            .iter()
            .map(|r| RoomPolicy::parse(r, history).map_err(|e| anyhow::anyhow!("--rooms: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            (1..=shared::archive::MAX_SHARDS).contains(&self.archive_shards),
            "--archive-shards must be 1..={}",
            shared::archive::MAX_SHARDS
        );
        anyhow::ensure!(
            self.redis.is_some()
                || !(self.archive || rooms.iter().any(|r| r.archive == Some(true))),
            "archiving queues messages in Redis for the archiver: it needs --redis"
        );
        let d = Config::default();
        Ok(Config {
            node_id: self.node_id,
            max_frame_bytes: self.max_frame_bytes,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            rate_abuse_frames: self.rate_abuse_frames.max(1),
            max_room_members: self.max_room_members,
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            outbound_queue: self.outbound_queue,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            drain_window: self.drain_window,
            shutdown_grace: self.shutdown_grace,
            admin_token: self.admin_token,
            span_timeout: self.span_timeout,
            repair_interval: self.repair_interval,
            unspan_grace: self.repair_interval,
            suspect_ttl: self.heartbeat_ttl,
            history,
            rooms,
            archive: self.archive,
            archive_days: self.archive_days,
            max_recovery: self.max_recovery,
            durable_ack: self.durable_ack,
            history_flush: self.history_flush,
            jwt: match &self.jwt_key {
                Some(k) => Some(Arc::new(shared::auth::Verifier::from_arg(k)?)),
                None => None,
            },
            hop_key: match &self.hop_secret {
                Some(s) => Some(shared::auth::HopKey::from_arg(s).map_err(anyhow::Error::msg)?),
                None => None,
            },
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    let files = shared::tls::TlsFiles { cert: cert.clone(), key: key.clone() };
                    Some(Arc::new(shared::tls::Tls::load(files)?))
                }
                _ => None,
            },
            webhooks: self.webhooks.clone(),
            webhook_secret: match &self.webhook_secret {
                Some(s) => Some(ws_node::hooks::secret(s).map_err(anyhow::Error::msg)?),
                None => None,
            },
            ..d
        })
    }
}

fn parse_handoff(s: &str) -> Result<std::path::PathBuf, String> {
    match s.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(p.into()),
        _ => Err(format!("{s:?} is not unix:PATH")),
    }
}

fn main() {
    shared::shutdown::init_tracing();
    let result = shared::config::args_with_file("WSNODE_")
        .map_err(anyhow::Error::from)
        .and_then(|argv| {
            let args = Args::try_parse_from(argv).unwrap_or_else(|e| e.exit());
            let listen = Listen { tcp: args.listen, handoff: args.handoff.clone() };
            let redis = args.redis_config()?;
            let wait = args.deregister_wait;
            let config = args.into_config()?;
            let redis = redis.map(|r| RedisConfig { log_ttl: config.longest_history_ttl(), ..r });
            Ok((listen, redis, wait, config))
        })
        .and_then(|(listen, redis, wait, config)| run(listen, redis, wait, config));
    if let Err(e) = result {
        eprintln!("ws-node: {e:#}");
        std::process::exit(2);
    }
}

/// Where the node takes clients: its TCP listener, and the handoff socket when asked.
struct Listen {
    tcp: SocketAddr,
    handoff: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn run(
    listen: Listen,
    redis: Option<RedisConfig>,
    deregister_wait: Duration,
    config: Config,
) -> anyhow::Result<()> {
    let Listen { tcp: listen, handoff } = listen;
    let listener = shared::listen::bind(listen, false)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let handoff = match &handoff {
        Some(path) => Some(
            ws_node::handoff::bind(path)
                .map_err(|e| anyhow::anyhow!("--handoff unix:{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let bus_token = tokio_util::sync::CancellationToken::new();
    let registered = redis.as_ref().is_some_and(|r| r.advertise.is_some());
    let (bus, redis_bus): (Arc<dyn Bus>, _) = match redis {
        Some(r) => {
            let b = RedisBus::start(&config.node_id, r, bus_token.clone())?;
            (b.clone(), Some(b))
        }
        None => (Arc::new(LocalBus::standalone(&config.node_id)), None),
    };
    if !config.auth_on() {
        tracing::warn!("auth is off (no --jwt-key or --hop-secret): any client may name any user");
    }
    let node = Node::new(config, bus);
    tracing::info!(node = %node.config.node_id, %listen, "ws-node serving");
    let serving = tokio::spawn(ws_node::serve(node.clone(), listener));
    if let Some(l) = handoff {
        tokio::spawn(ws_node::serve_handoff(node.clone(), l));
    }
    if shared::shutdown::signal().await == Signal::Term {
        rolling_stop(&node, redis_bus.as_deref(), registered, deregister_wait).await;
    }
    node.shutdown();
    let _ = serving.await;
    // Rooms close as their last members go, storing their history first; the next owner
    // continues the same epoch only if it is all stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !node.rooms.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.rooms.flush_history().await;
    if let Some(bus) = &redis_bus
        && let Err(e) = bus.deregister().await
    {
        tracing::warn!("deregister: {e}");
    }
    bus_token.cancel();
    Ok(())
}

/// SIGTERM: leave the registry, fail readiness, give routers time to stop placing here,
/// then close clients with 1012 spread over the drain window so they reconnect through the
/// router without a stampede. Whatever is left at the end gets 1001.
async fn rolling_stop(node: &Arc<Node>, bus: Option<&RedisBus>, registered: bool, wait: Duration) {
    node.set_draining();
    if let Some(bus) = bus.filter(|_| registered) {
        if let Err(e) = bus.withdraw().await {
            tracing::warn!("withdraw from the registry: {e}");
        }
        tracing::info!(?wait, "withdrawn from the registry; waiting for routers");
        tokio::time::sleep(wait).await;
    }
    let window = node.config.drain_window;
    node.drain(window);
    let deadline = tokio::time::Instant::now() + window + node.config.shutdown_grace;
    while node.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
