//! The Redis inbox: workers that only speak Redis append entries (`room`, `body` as JSON
//! text, optional `id` and `from`) to the stream `{prefix}:inbox`; the routers read it in
//! one consumer group and publish each entry like `POST /api/rooms/{room}/publish`. An
//! entry is acknowledged only once the room's owner stamped it; the entries a dead router
//! left pending are claimed by another (`XAUTOCLAIM`) and published again, idempotently
//! (an entry without `id` is published with its stream id as `id`). A malformed entry, or
//! one that failed [`MAX_DELIVERIES`] times, goes to `{prefix}:inbox:dead` with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use serde_json::value::RawValue;
use shared::api::{ApiError, PublishRequest};
use shared::ids::{RoomId, UserId};
use shared::protocol::ClientId;
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;

/// The consumer group every router reads the inbox in.
pub const GROUP: &str = "routers";
/// Entries read per round.
const BATCH: usize = 100;
/// Rooms published to at once; one room's entries go in stream order.
const ROOMS_AT_ONCE: usize = 32;
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_millis(500);
/// Deliveries after which an entry that keeps failing is dead-lettered.
pub const MAX_DELIVERIES: u64 = 10;
/// The caller name of inbox publishes without `from`.
const INBOX: &str = "inbox";

/// Where and how to read the inbox (`--inbox`).
#[derive(Debug, Clone)]
pub struct InboxConfig {
    pub redis: String,
    /// The key prefix: the stream is `{prefix}:inbox`.
    pub prefix: String,
    /// This router's consumer name in the group; unique per router.
    pub consumer: String,
    /// How long an entry stays pending (its reader silent) before another router claims it.
    pub claim_idle: Duration,
}

impl InboxConfig {
    pub fn stream(&self) -> String {
        format!("{}:inbox", self.prefix)
    }
    pub fn dead(&self) -> String {
        format!("{}:inbox:dead", self.prefix)
    }
}

/// Reads and publishes until `token` is cancelled, reconnecting with back-off.
pub(crate) async fn run(proxy: Arc<Proxy>, cfg: InboxConfig, token: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match consume(&proxy, &cfg, &token).await {
            Ok(()) => return,
            Err(e) => {
                proxy.metrics.inbox_errors.inc();
                tracing::warn!(redis = %cfg.redis, "inbox: {e}; reconnecting");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn consume(
    proxy: &Proxy,
    cfg: &InboxConfig,
    token: &CancellationToken,
) -> redis::RedisResult<()> {
    let mut conn = shared::streams::connect(&cfg.redis, BLOCK).await?;
    let stream = cfg.stream();
    shared::streams::ensure_group(&mut conn, &stream, GROUP).await?;
    tracing::info!(stream, consumer = cfg.consumer, "reading the inbox");
    let mut next_claim = tokio::time::Instant::now();
    loop {
        if token.is_cancelled() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + cfg.claim_idle.max(BLOCK) / 2;
            let n = dead_letter_failing(&mut conn, cfg).await?;
            proxy.metrics.inbox_dead.add(n);
            let mut start = "0-0".to_string();
            loop {
                let (idle, who) = (cfg.claim_idle, &cfg.consumer);
                let r = shared::streams::claim(&mut conn, &stream, GROUP, who, idle, &start, BATCH)
                    .await?;
                if !r.claimed.is_empty() {
                    proxy.metrics.inbox_claimed.add(r.claimed.len() as u64);
                    tracing::info!(
                        entries = r.claimed.len(),
                        "inbox: claimed entries left pending"
                    );
                    handle(proxy, cfg, &mut conn, r.claimed).await?;
                }
                if r.next_stream_id == "0-0" {
                    break;
                }
                start = r.next_stream_id;
            }
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&cfg.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        let read = read.query_async::<Option<StreamReadReply>>(&mut conn);
        let reply = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            r = read => r?,
        };
        let entries: Vec<StreamId> =
            reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default();
        if !entries.is_empty() {
            handle(proxy, cfg, &mut conn, entries).await?;
        }
    }
}

/// What an entry asks for, or why it cannot be published.
struct Entry {
    raw: StreamId,
    room: RoomId,
    publish: PublishRequest,
}

fn field(e: &StreamId, name: &str) -> Option<String> {
    e.get::<String>(name)
}

/// Reads an entry's fields; the reason it is malformed otherwise.
fn parse(e: &StreamId) -> Result<Entry, String> {
    let room = field(e, "room").ok_or("no room field")?;
    let room = RoomId::parse(&room).map_err(|err| format!("room: {err}"))?;
    let body = field(e, "body").ok_or("no body field")?;
    let body = RawValue::from_string(body).map_err(|err| format!("body is not JSON: {err}"))?;
    let id = field(e, "id").unwrap_or_else(|| e.id.clone());
    let from = match field(e, "from") {
        Some(f) => Some(UserId::parse(&f).map_err(|err| format!("from: {err}"))?.to_string()),
        None => None,
    };
    for k in e.map.keys() {
        if !matches!(k.as_str(), "room" | "body" | "id" | "from") {
            return Err(format!("unknown field {k:?}"));
        }
    }
    let publish = PublishRequest { body, id: Some(ClientId::Str(id)), from };
    shared::api::check_id(&publish.id).map_err(|err| err.message)?;
    Ok(Entry { raw: e.clone(), room, publish })
}

/// Whether a publish failure is the entry's own fault (it would fail every time).
fn permanent(e: &ApiError) -> bool {
    e.status.is_client_error()
}

/// Publishes a batch (each room's entries in order, rooms at once), acknowledging every
/// entry that was stamped and dead-lettering the malformed ones. Failed ones stay pending.
async fn handle(
    proxy: &Proxy,
    cfg: &InboxConfig,
    conn: &mut MultiplexedConnection,
    entries: Vec<StreamId>,
) -> redis::RedisResult<()> {
    let mut rooms: BTreeMap<RoomId, Vec<Entry>> = BTreeMap::new();
    let mut dead: Vec<(StreamId, String)> = Vec::new();
    for e in entries {
        match parse(&e) {
            Ok(entry) => rooms.entry(entry.room.clone()).or_default().push(entry),
            Err(why) => dead.push((e, why)),
        }
    }
    let caller = UserId::parse(INBOX).expect("a valid user id");
    let results: Vec<Vec<(StreamId, Result<(), ApiError>)>> = futures_util::stream::iter(rooms)
        .map(|(room, entries)| {
            let caller = &caller;
            async move {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    let r = crate::api::publish(proxy, &room, e.publish, caller).await.map(|_| ());
                    out.push((e.raw, r));
                }
                out
            }
        })
        .buffer_unordered(ROOMS_AT_ONCE)
        .collect()
        .await;
    let mut ack: Vec<String> = Vec::new();
    for (raw, r) in results.into_iter().flatten() {
        match r {
            Ok(()) => {
                proxy.metrics.inbox_published.inc();
                ack.push(raw.id);
            }
            Err(e) if permanent(&e) => dead.push((raw, e.to_string())),
            Err(e) => tracing::debug!(entry = raw.id, "inbox: {e}; left pending for a retry"),
        }
    }
    for (e, why) in dead {
        bury(conn, cfg, &e, &why).await?;
        proxy.metrics.inbox_dead.inc();
    }
    if !ack.is_empty() {
        let _: u64 =
            redis::cmd("XACK").arg(cfg.stream()).arg(GROUP).arg(&ack).query_async(conn).await?;
    }
    Ok(())
}

/// Moves entry `e` to the dead-letter stream with `why`, then acknowledges it, atomically.
async fn bury(
    conn: &mut MultiplexedConnection,
    cfg: &InboxConfig,
    e: &StreamId,
    why: &str,
) -> redis::RedisResult<()> {
    tracing::warn!(entry = e.id, reason = why, "inbox: dead-lettered");
    let (stream, dead) = (cfg.stream(), cfg.dead());
    let grave =
        shared::streams::Grave { stream: &stream, group: GROUP, dead: &dead, delete: false };
    shared::streams::bury(conn, grave, e, why, &[]).await
}

/// Dead-letters pending entries delivered [`MAX_DELIVERIES`] times or more; how many.
async fn dead_letter_failing(
    conn: &mut MultiplexedConnection,
    cfg: &InboxConfig,
) -> redis::RedisResult<u64> {
    let mut n = 0;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(cfg.stream())
        .arg(GROUP)
        .arg("IDLE")
        .arg(cfg.claim_idle.as_millis() as u64)
        .arg("-")
        .arg("+")
        .arg(BATCH)
        .query_async(conn)
        .await?;
    for (id, _, _, deliveries) in pending.into_iter().filter(|p| p.3 >= MAX_DELIVERIES) {
        let found: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(cfg.stream()).arg(&id).arg(&id).query_async(conn).await?;
        let e =
            found.ids.into_iter().next().unwrap_or_else(|| StreamId { id, ..Default::default() });
        bury(conn, cfg, &e, &format!("not published after {deliveries} deliveries")).await?;
        n += 1;
    }
    Ok(n)
}
