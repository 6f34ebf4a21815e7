//! The node's settings with their documented defaults (docs/operations.md lists each one).

use std::sync::Arc;
use std::time::Duration;

use shared::auth::{HopKey, Verifier};

use crate::history::Policy;

/// A `[[rooms]]` table: the history and archive policy of rooms whose name matches
/// `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPolicy {
    /// A room id, or a prefix followed by `*`.
    pub pattern: String,
    pub history: Policy,
    /// Whether the rooms' messages go to the archive; `None` = the node's `archive`.
    pub archive: Option<bool>,
    /// Days the archive keeps the rooms' messages; `None` = the node's `archive_days`.
    pub archive_days: Option<u32>,
}

impl RoomPolicy {
    /// Parses `pattern=chat:*,history_size=50,history_ttl=60,archive=true,archive_days=30` (what a
    /// `[[rooms]]` table becomes on the command line); sizes and TTLs left out take
    /// `defaults`.
    pub fn parse(s: &str, defaults: Policy) -> Result<Self, String> {
        let mut pattern = None;
        let mut history = defaults;
        let mut archive = None;
        let mut archive_days = None;
        for part in s.split(',') {
            let (k, v) =
                part.split_once('=').ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
            match k.trim() {
                "pattern" => pattern = Some(v.trim().to_string()),
                "history_size" => {
                    history.size = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("history_size {v:?} is not a count"))?
                }
                "history_ttl" => history.ttl = shared::config::parse_secs(v)?,
                "archive" => {
                    archive = Some(match v.trim() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("archive {v:?} is not true or false")),
                    })
                }
                "archive_days" => {
                    let d: u32 = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("archive_days {v:?} is not a number of days"))?;
                    if d == 0 {
                        return Err(
                            "archive_days must be at least 1 (leave it out to keep for good)"
                                .into(),
                        );
                    }
                    archive_days = Some(d);
                }
                other => {
                    return Err(format!(
                        "unknown [[rooms]] key {other:?} (pattern, history_size, history_ttl, archive, archive_days)"
                    ));
                }
            }
        }
        let pattern = pattern.ok_or("a [[rooms]] table needs a pattern")?;
        let id = pattern.strip_suffix('*').unwrap_or(&pattern);
        if !id.is_empty() {
            shared::ids::RoomId::parse(id).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        }
        Ok(Self { pattern, history, archive, archive_days })
    }
}

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
    /// The listener's certificate (`--tls-cert/--tls-key`, reloaded on SIGHUP); `None` =
    /// plain TCP. Routers reach a TLS node with `--node-tls-ca`.
    pub tls: Option<Arc<shared::tls::Tls>>,
    /// Largest request header block in bytes (431 above).
    pub max_header_bytes: usize,
    /// The history of rooms no `rooms` entry matches.
    pub history: Policy,
    /// History per room-name pattern; the first match wins.
    pub rooms: Vec<RoomPolicy>,
    /// Whether rooms whose `rooms` entry does not say go to the archive (off for a node,
    /// on in `fleet up`).
    pub archive: bool,
    /// Days the archive keeps the messages of rooms whose `rooms` entry does not say;
    /// `None` = for good.
    pub archive_days: Option<u32>,
    /// A resume that missed more than this many messages gets `recovered:false`.
    pub max_recovery: usize,
    /// Messages a room stamps go out and are acked only once the store holds them.
    pub durable_ack: bool,
    /// How often the node appends new history to the store (one round trip per flush).
    pub history_flush: Duration,
    /// Where this node POSTs the room changes it raises ([`crate::hooks`]).
    pub webhooks: Vec<crate::hooks::Webhook>,
    /// The HMAC-SHA256 key webhook bodies are signed with; `None` = unsigned.
    pub webhook_secret: Option<Arc<[u8]>>,
}

impl Config {
    /// Whether upgrades need an identity (a token or a router's hop header).
    pub fn auth_on(&self) -> bool {
        self.jwt.is_some() || self.hop_key.is_some()
    }

    /// The history policy of `room`: the first matching `rooms` entry, else the default.
    pub fn history_of(&self, room: &str) -> Policy {
        self.rooms
            .iter()
            .find(|r| shared::ids::pattern_matches(&r.pattern, room))
            .map_or(self.history, |r| r.history)
    }

    /// Whether `room`'s messages go to the archive: the first matching `rooms` entry that
    /// says, else `archive`.
    pub fn archive_of(&self, room: &str) -> bool {
        self.rooms
            .iter()
            .find(|r| shared::ids::pattern_matches(&r.pattern, room))
            .and_then(|r| r.archive)
            .unwrap_or(self.archive)
    }

    /// Days the archive keeps `room`'s messages: the first matching `rooms` entry that
    /// says, else `archive_days` (`None`: for good).
    pub fn archive_days_of(&self, room: &str) -> Option<u32> {
        self.rooms
            .iter()
            .find(|r| shared::ids::pattern_matches(&r.pattern, room) && r.archive_days.is_some())
            .and_then(|r| r.archive_days)
            .or(self.archive_days)
    }

    /// The longest history TTL of any room (how long the store keeps spanning rooms' logs).
    pub fn longest_history_ttl(&self) -> Duration {
        self.rooms.iter().map(|r| r.history.ttl).fold(self.history.ttl, Duration::max)
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
            tls: None,
            max_header_bytes: 16 * 1024,
            history: Policy::default(),
            rooms: Vec::new(),
            archive: false,
            archive_days: None,
            max_recovery: 500,
            durable_ack: false,
            history_flush: Duration::from_millis(10),
            webhooks: Vec::new(),
            webhook_secret: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_tables_parse_and_the_first_match_wins() {
        let d = Policy::default();
        let chat = RoomPolicy::parse("pattern=chat:*,history_size=5,history_ttl=1.5", d).unwrap();
        assert_eq!(chat.history, Policy { size: 5, ttl: Duration::from_millis(1500) });
        let off = RoomPolicy::parse("pattern=*,history_size=0", d).unwrap();
        assert_eq!(off.history.ttl, d.ttl);
        let cfg = Config { rooms: vec![chat.clone(), off.clone()], ..Config::default() };
        assert_eq!(cfg.history_of("chat:1"), chat.history);
        assert_eq!(cfg.history_of("game"), off.history);
        assert_eq!(Config::default().history_of("x"), d);
        assert!(!cfg.archive_of("chat:1"), "archive is off by default");
    }

    #[test]
    fn archive_follows_the_first_matching_table_that_says() {
        let d = Policy::default();
        let on = RoomPolicy::parse("pattern=chat:*,archive=true", d).unwrap();
        let off = RoomPolicy::parse("pattern=chat:tmp*,archive=false", d).unwrap();
        let silent = RoomPolicy::parse("pattern=game*,history_size=5", d).unwrap();
        assert_eq!((on.archive, silent.archive), (Some(true), None));
        let cfg = Config { rooms: vec![off, on, silent], ..Config::default() };
        assert!(cfg.archive_of("chat:1"));
        assert!(!cfg.archive_of("chat:tmp1"));
        assert!(!cfg.archive_of("game1"), "a table that does not say takes the node's default");
        assert!(Config { archive: true, ..cfg.clone() }.archive_of("game1"));
        assert!(!Config { archive: true, ..cfg }.archive_of("chat:tmp1"));
    }

    #[test]
    fn archive_days_follow_the_first_matching_table_that_says() {
        let d = Policy::default();
        let month = RoomPolicy::parse("pattern=chat:*,archive=true,archive_days=30", d).unwrap();
        let week = RoomPolicy::parse("pattern=chat:tmp*,archive_days=7", d).unwrap();
        let silent = RoomPolicy::parse("pattern=chat:x*,history_size=5", d).unwrap();
        let cfg = Config { rooms: vec![silent, week, month], ..Config::default() };
        assert_eq!(cfg.archive_days_of("chat:x1"), Some(30), "a table that does not say");
        assert_eq!(cfg.archive_days_of("chat:tmp1"), Some(7));
        assert_eq!(cfg.archive_days_of("game"), None, "kept for good by default");
        assert_eq!(Config { archive_days: Some(2), ..cfg }.archive_days_of("game"), Some(2));
        for bad in [
            "history_size=5",
            "pattern=a b",
            "pattern=x,archive=yes",
            "pattern=x,history_size=-1",
            "pattern=x,archive_days=0",
            "pattern=x,archive_days=soon",
        ] {
            assert!(RoomPolicy::parse(bad, d).is_err(), "{bad}");
        }
    }
}
