//! The node's settings with their documented defaults (docs/operations.md lists each one).

use std::sync::Arc;
use std::time::Duration;

use shared::auth::{HopKey, Verifier};

/// Everything a node can be tuned with. `Default` gives the production defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name clients see in `welcome.node` and routers use in the ring.
    pub node_id: String,
    /// Largest text frame a client may send (bytes); bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Publishes and signals per second a connection may send on average.
    pub publish_rate: f64,
    /// How many frames a connection may send in a burst above the rate.
    pub publish_burst: f64,
    /// Frames refused in a row for the rate limit before the connection is closed with 1008.
    pub rate_abuse_frames: u32,
    /// Members one room may hold on this node; the next joiner is closed with 4009.
    pub max_room_members: usize,
    /// Connections this node holds at most; further upgrades get HTTP 503.
    pub max_connections: usize,
    /// Frames queued for one connection before it counts as a slow consumer (closed 1008).
    pub outbound_queue: usize,
    /// How often the node pings an otherwise quiet connection.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) this long is closed with 4000.
    pub idle_timeout: Duration,
    /// How long the node waits to write a close frame before dropping the socket.
    pub close_timeout: Duration,
    /// Default window over which `POST /admin/drain` spreads its 1012 closes.
    pub drain_window: Duration,
    /// How long shutdown waits for connections to close after sending 1001.
    pub shutdown_grace: Duration,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Bearer token `/admin/*` requires, when set.
    pub admin_token: Option<String>,
    /// How long a node opening a room waits for another holder's sync before it takes the
    /// holder for dead, prunes it and welcomes its joiners without it.
    pub span_timeout: Duration,
    /// How often every room compares its holders with its mode and repairs a split.
    pub repair_interval: Duration,
    /// How long a spanning room must be alone before it goes back to one node.
    pub unspan_grace: Duration,
    /// How long a peer that missed a span is not waited for by this node's other rooms.
    pub suspect_ttl: Duration,
    /// Verifies tokens of clients that connect directly and of `refresh` frames.
    pub jwt: Option<Arc<Verifier>>,
    /// Checks the identity header routers sign. With `jwt` or this set, auth is on: every
    /// upgrade needs a valid token or hop header.
    pub hop_key: Option<HopKey>,
    /// Largest request header block in bytes (431 above).
    pub max_header_bytes: usize,
}

impl Config {
    /// Whether upgrades need an identity (a token or a router's hop header).
    pub fn auth_on(&self) -> bool {
        self.jwt.is_some() || self.hop_key.is_some()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: "node-a".into(),
            max_frame_bytes: 64 * 1024,
            publish_rate: 20.0,
            publish_burst: 40.0,
            rate_abuse_frames: 200,
            max_room_members: 10_000,
            max_connections: default_max_connections(),
            outbound_queue: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(2),
            drain_window: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            admin_token: None,
            span_timeout: Duration::from_millis(500),
            repair_interval: Duration::from_secs(2),
            unspan_grace: Duration::from_secs(2),
            suspect_ttl: Duration::from_secs(10),
            jwt: None,
            hop_key: None,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Descriptors kept free for Redis, admin requests and accept headroom.
const FD_RESERVE: u64 = 256;

/// One descriptor per client: the open-file limit less a reserve.
pub fn default_max_connections() -> usize {
    shared::listen::open_file_limit()
        .map(|n| n.saturating_sub(FD_RESERVE).max(16) as usize)
        .unwrap_or(10_000)
}
