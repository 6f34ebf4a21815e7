//! `fleet up`: one router and N ws-nodes in one process, the nodes on free loopback ports
//! over one in-process bus (or Redis), so the whole fleet runs on a laptop and in the
//! end-to-end tests, with an archiver that keeps archived rooms in SQLite (or any
//! database `archiver` takes). [`Fleet::up`] starts it; tests use port 0 everywhere.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use router::{NodeSpec, Router};
use tokio_util::sync::CancellationToken;
use ws_node::{Bus, LocalHub, Node, RedisBus, RedisConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node {id}: cannot listen on 127.0.0.1: {source}")]
    Bind { id: String, source: std::io::Error },
    #[error("node {id}: {source}")]
    Bus { id: String, source: ws_node::bus::BusError },
    #[error("router: {0}")]
    Router(#[from] router::Error),
    #[error("--nodes must be 1..={max}")]
    Nodes { max: usize },
    #[error("archive: {0}")]
    Archive(#[from] archiver::store::Error),
}

/// How long shutdown waits for each node to close its connections.
const NODE_STOP: Duration = Duration::from_secs(15);

/// Most nodes one `fleet up` starts.
pub const MAX_NODES: usize = 64;

/// How the router passes clients to the nodes of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataPath {
    /// The router proxies each client to its node over loopback (every byte crosses it).
    Proxy,
    /// The router reads the request, places it, and hands the socket to the node, which
    /// completes the upgrade itself: no loopback hop, no tunnel.
    #[default]
    Handoff,
}

impl std::str::FromStr for DataPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "proxy" => Ok(DataPath::Proxy),
            "handoff" => Ok(DataPath::Handoff),
            _ => Err(format!("{s:?}: --data-path is proxy or handoff")),
        }
    }
}

/// Records the in-process archive queue holds before the nodes' history writers wait.
const ARCHIVE_QUEUE: usize = 10_000;

/// How often the in-process archiver deletes messages past their rooms' `archive_days`.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// How long shutdown waits for the archiver to write what was queued.
const ARCHIVE_STOP: Duration = Duration::from_secs(10);

/// The archiver `fleet up` runs in its process.
#[derive(Debug, Clone)]
pub struct Archive {
    /// `sqlite:PATH` (the default `sqlite:roomfleet.db`) or `postgres://...`.
    pub db: String,
    /// Messages per transaction.
    pub batch: usize,
    /// Times the database may refuse a message before it is given up (logged).
    pub max_failures: u32,
}

impl Archive {
    pub fn new(db: impl Into<String>) -> Self {
        Self { db: db.into(), batch: 500, max_failures: 3 }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    /// The router's config; its `nodes` are filled in with the started nodes.
    pub router: router::Config,
    /// Settings every node shares; `node_id` is set per node.
    pub node: ws_node::Config,
    /// Redis for spanning rooms (URL and key prefix); `None` = one in-process hub.
    pub redis: Option<RedisConfig>,
    pub data_path: DataPath,
    /// The archiver to run in this process: it drains the in-process queue (or, with
    /// `redis`, the Redis queue) into its database. Which rooms are archived is the
    /// nodes' `archive` / `rooms` setting.
    pub archive: Option<Archive>,
}

/// One started node.
#[derive(Debug)]
pub struct FleetNode {
    pub id: String,
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

/// A running fleet. Dropping it stops everything; [`Fleet::shutdown`] does it gracefully.
#[derive(Debug)]
pub struct Fleet {
    pub router: Router,
    pub nodes: Vec<FleetNode>,
    bus_token: CancellationToken,
    auth_off: bool,
    archiver: Option<Archiver>,
}

/// The archiver running in the fleet's process.
#[derive(Debug)]
struct Archiver {
    /// The database URL, password hidden (for the banner).
    db: String,
    store: archiver::Store,
    metrics: Arc<archiver::Metrics>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// `node-a` ... `node-z`, then `node-27` and on.
pub fn node_id(i: usize) -> String {
    match u8::try_from(i).ok().filter(|i| *i < 26) {
        Some(i) => format!("node-{}", (b'a' + i) as char),
        None => format!("node-{}", i + 1),
    }
}

impl Fleet {
    /// Starts the nodes, then the router in front of them.
    pub async fn up(opts: Options) -> Result<Self, Error> {
        if !(1..=MAX_NODES).contains(&opts.nodes) {
            return Err(Error::Nodes { max: MAX_NODES });
        }
        opts.router.validate()?;
        let hub = LocalHub::new();
        let bus_token = CancellationToken::new();
        let archiver = match &opts.archive {
            Some(a) => Some(start_archiver(a, &hub, opts.redis.as_ref()).await?),
            None => None,
        };
        let mut nodes = Vec::with_capacity(opts.nodes);
        for i in 0..opts.nodes {
            let id = node_id(i);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| Error::Bind { id: id.clone(), source })?;
            let addr =
                listener.local_addr().map_err(|source| Error::Bind { id: id.clone(), source })?;
            let bus: Arc<dyn Bus> = match &opts.redis {
                Some(redis) => RedisBus::start(&id, redis.clone(), bus_token.clone())
                    .map_err(|source| Error::Bus { id: id.clone(), source })?,
                None => Arc::new(hub.bus(&id)),
            };
            let node = Node::new(ws_node::Config { node_id: id.clone(), ..opts.node.clone() }, bus);
            let serving = Some(tokio::spawn(ws_node::serve(node.clone(), listener)));
            nodes.push(FleetNode { id, addr, node, serving });
        }
        let mut config = opts.router;
        // The server API serves the archive the in-process archiver writes.
        if let Some(a) = &archiver {
            config.archive.get_or_insert_with(|| a.store.clone());
            config.archiver_metrics = Some(a.metrics.clone());
        }
        config.nodes = nodes
            .iter()
            .map(|n| NodeSpec::new(&n.id, &n.addr.to_string(), None))
            .collect::<Result<_, _>>()
            .map_err(|e| router::Error::Config(format!("node address: {e}")))?;
        if opts.data_path == DataPath::Handoff {
            config.in_process = nodes
                .iter()
                .map(|n| (n.id.clone(), router::InProcess(ws_node::taker(&n.node))))
                .collect();
        }
        let auth_off = config.jwt.is_none();
        let router = Router::start(config)?;
        Ok(Self { router, nodes, bus_token, auth_off, archiver })
    }

    /// Where WebSocket clients connect.
    pub fn ws_url(&self) -> String {
        let scheme = if self.router.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.router.proxy_addr())
    }

    /// The demo chat page (and `/roomfleet.js`).
    pub fn chat_url(&self) -> String {
        format!("http://{}", self.router.proxy_addr())
    }

    /// The admin UI and API.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.router.admin_addr())
    }

    pub fn node(&self, id: &str) -> Option<&FleetNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Stops one node as a crash looks to the router: its listener closes at once and its
    /// clients are closed (1001) in the background. False for an unknown node.
    pub fn stop_node(&self, id: &str) -> bool {
        let Some(n) = self.node(id) else { return false };
        n.node.shutdown();
        true
    }

    /// The in-process archiver's metrics (`None` without an archive).
    pub fn archive_metrics(&self) -> Option<&archiver::Metrics> {
        self.archiver.as_ref().map(|a| &*a.metrics)
    }

    /// The archive database of the in-process archiver.
    pub fn archive_store(&self) -> Option<&archiver::Store> {
        self.archiver.as_ref().map(|a| &a.store)
    }

    /// Stops the router (tunnels get its grace), then the nodes, then the archiver once it
    /// wrote what they queued.
    pub async fn shutdown(mut self) {
        if !self.router.shutdown().await {
            tracing::warn!("router: some tunnels were cut at the end of the grace");
        }
        for n in &self.nodes {
            n.node.shutdown();
        }
        for n in &mut self.nodes {
            if let Some(h) = n.serving.take() {
                let _ = tokio::time::timeout(NODE_STOP, h).await;
            }
        }
        for n in &self.nodes {
            n.node.rooms.flush_history().await;
        }
        if let Some(a) = self.archiver.take() {
            a.token.cancel();
            if tokio::time::timeout(ARCHIVE_STOP, a.task).await.is_err() {
                tracing::warn!("archiver: stopped before it wrote everything queued");
            }
            a.store.close().await;
        }
        self.bus_token.cancel();
    }

    /// The start-up banner: every URL a user needs.
    pub fn banner(&self) -> String {
        let mut out = format!(
            "roomfleet up: {} nodes behind one router\n  chat:   {}/  (demo chat: open it in a browser)\n  ws:     {}?room=ROOM&user=USER\n  admin:  {}/  (admin UI; API {}/admin/ring, /admin/placement?room=ROOM, /metrics)\n",
            self.nodes.len(),
            self.chat_url(),
            self.ws_url(),
            self.admin_url(),
            self.admin_url(),
        );
        if let Some(api) = self.router.api_addr() {
            out.push_str(&format!(
                "  api:    http://{api}/api/rooms  (server API: POST /api/rooms/ROOM/publish; docs/api.md)\n"
            ));
        }
        for n in &self.nodes {
            out.push_str(&format!(
                "  {}: ws://{}/ws  (http://{}/admin/rooms)\n",
                n.id, n.addr, n.addr
            ));
        }
        if let Some(a) = &self.archiver {
            out.push_str(&format!("  archive: {} (archived rooms are kept there)\n", a.db));
        }
        if self.auth_off {
            out.push_str("  WARNING: auth is off (no --jwt-key): anyone may connect as any user\n");
        }
        out
    }
}

/// Opens the archive database (running its migrations) and starts draining the queue:
/// the in-process one, which `hub`'s nodes then fill, or Redis's with `redis`.
async fn start_archiver(
    a: &Archive,
    hub: &LocalHub,
    redis: Option<&RedisConfig>,
) -> Result<Archiver, Error> {
    let store = archiver::Store::open(&a.db).await?;
    let metrics = archiver::Metrics::new();
    let token = CancellationToken::new();
    let retention =
        archiver::retention::run(store.clone(), RETENTION_EVERY, metrics.clone(), token.clone());
    tokio::spawn(retention);
    let task = match redis {
        None => {
            let (tx, rx) = shared::archive::local_queue(ARCHIVE_QUEUE);
            hub.archive_to(tx);
            let run = archiver::local::run(
                store.clone(),
                rx,
                a.batch,
                a.max_failures,
                metrics.clone(),
                token.clone(),
            );
            tokio::spawn(run)
        }
        Some(redis) => {
            let cfg = archiver::QueueConfig {
                redis: redis.url.clone(),
                prefix: redis.prefix.clone(),
                shards: shared::archive::DEFAULT_SHARDS,
                consumer: format!("fleet-{}", std::process::id()),
                batch: a.batch,
                block: Duration::from_millis(500),
                claim_idle: Duration::from_secs(30),
                max_failures: a.max_failures,
            };
            tokio::spawn(archiver::redis_queue::run(
                store.clone(),
                cfg,
                metrics.clone(),
                token.clone(),
            ))
        }
    };
    Ok(Archiver { db: archiver::store::redact(&a.db), store, metrics, token, task })
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.node.shutdown();
        }
        if let Some(a) = &self.archiver {
            a.token.cancel();
        }
        self.bus_token.cancel();
    }
}
