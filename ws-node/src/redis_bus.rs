//! `RedisBus`: the `Bus` over Redis. Room node sets, the shared `seq`, the history stream
//! and heartbeats are keys (a room's keys share its hash tag, so a Redis Cluster keeps them
//! in one slot); room frames and control messages are Pub/Sub channels on a dedicated
//! connection that a supervisor task reconnects with backoff, resubscribing and
//! re-announcing itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as Age;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, Client, Script};
use shared::api::Published;
use shared::ids::RoomId;
use shared::registry::{NodeRecord, Registry};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    Append, Appended, Bus, BusError, BusEvent, BusResult, Control, EVENT_QUEUE, Envelope, LOG_SIZE,
    LOG_TTL, LoadRequest, Stored, StoredPage,
};
use shared::archive::Record;

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key and channel, so several fleets can share one Redis.
    pub prefix: String,
    /// A node whose heartbeat key is older than this is pruned from room sets.
    pub heartbeat_ttl: Duration,
    /// How long one Redis command may take before it counts as failed.
    pub command_timeout: Duration,
    /// When set, the node registers itself for `--discovery redis` routers.
    pub advertise: Option<NodeRecord>,
    /// How long a spanning room's stored messages outlive its last one (the longest
    /// history TTL of the node's room policies).
    pub log_ttl: Duration,
    /// Shards of the archive queue (`{prefix}:archive:{N}`), as the archivers read it.
    pub archive_shards: u32,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "roomfleet".into(),
            heartbeat_ttl: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
            advertise: None,
            log_ttl: LOG_TTL,
            archive_shards: shared::archive::DEFAULT_SHARDS,
        }
    }
}

/// Adds the node to the room set and returns the other holders whose heartbeat is alive
/// (dead ones are removed on the way). KEYS[1] = set; ARGV = node, heartbeat key prefix.
const JOIN: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if n ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[2] .. n) == 1 then table.insert(out, n)
    else redis.call('SREM', KEYS[1], n) end
  end
end
return out
"#;

/// Removes the node; returns the live holders left. The seq, history and epoch stay for
/// the room's next owner until they expire; a clean leave clears the writer mark (its
/// history is all stored). KEYS[1] = set, KEYS[2] = writer; ARGV = node, heartbeat prefix,
/// writer mark.
const LEAVE: &str = r#"
redis.call('SREM', KEYS[1], ARGV[1])
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[2] .. n) == 1 then table.insert(out, n)
  else redis.call('SREM', KEYS[1], n) end
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return out
"#;

/// Reads a room's history for its new owner and, when the owner stamps the room itself,
/// marks it as the room's writer (`NODE/INSTANCE`). The epoch goes on unless the history is
/// gone, or (without durable acks) its last writer did not leave cleanly: it is dead, no
/// longer holds the room (pruned), or was an earlier run of this very node. It may have
/// delivered messages it never stored, whose `seq`s would be stamped again. KEYS = epoch,
/// seq, log, writer, node set; ARGV = proposed epoch, TTL ms, count, writer
/// mark, heartbeat prefix, durable (1/0), this node, mark the writer (1/0). Returns epoch,
/// seq, then (seq, age ms, frame) per entry, newest first.
const LOAD: &str = r#"
local e = redis.call('GET', KEYS[1])
local lost = not e
if e and ARGV[6] == '0' then
  local w = redis.call('GET', KEYS[4])
  if w and w ~= ARGV[4] then
    local wn = string.match(w, '^(.*)/') or w
    if wn == ARGV[7] or redis.call('SISMEMBER', KEYS[5], wn) == 0
      or redis.call('EXISTS', ARGV[5] .. wn) == 0 then lost = true end
  end
end
if lost then
  e = ARGV[1]
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[1], e, 'PX', ARGV[2])
if ARGV[8] == '1' then redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[2]) end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {e, 0}
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #last > 0 then
  local top = tonumber(string.match(last[1][1], '^(%d+)'))
  if top > seq then seq = top end
end
out[2] = seq
if tonumber(ARGV[3]) > 0 then
  for _, r in ipairs(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[3])) do
    local f, ts = nil, now
    for i = 1, #r[2], 2 do
      if r[2][i] == 'f' then f = r[2][i + 1] elseif r[2][i] == 't' then ts = tonumber(r[2][i + 1]) end
    end
    if f then
      table.insert(out, tonumber(string.match(r[1], '^(%d+)')))
      table.insert(out, math.max(0, now - ts))
      table.insert(out, f)
    end
  end
end
return out
"#;

/// Appends one room's new history (one call per room per flush, pipelined for the whole
/// node). An epoch other than the stored one replaces the stored history.
/// KEYS = epoch, seq, log, writer; ARGV = epoch, TTL ms, max length, writer mark, then seq
/// and frame pairs in seq order.
const APPEND: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local top = 0
for i = 5, #ARGV, 2 do
  redis.pcall('XADD', KEYS[3], ARGV[i] .. '-1', 'f', ARGV[i + 1], 't', now)
  top = tonumber(ARGV[i])
end
redis.call('XTRIM', KEYS[3], 'MAXLEN', '~', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') < top then redis.call('SET', KEYS[2], top) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"#;

/// The live holders, pruning the dead. KEYS[1] = set; ARGV[1] = heartbeat key prefix.
const HOLDERS: &str = r#"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. n) == 1 then table.insert(out, n)
  else redis.call('SREM', KEYS[1], n) end
end
return out
"#;

/// Raises the seq key to ARGV[1] if it is lower. KEYS[1] = seq.
const RAISE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"#;

/// Stamps the next seq, keeps the frame in the room's history stream (entry ID = seq, so a
/// catch-up or a new owner reads from any seq) and publishes, in one step, so channel
/// order is seq order. KEYS[1] = seq, KEYS[2] = channel, KEYS[3] = log, KEYS[4] = epoch;
/// ARGV = "origin conn " header, frame head, frame tail, log length, log TTL in ms.
const PUBLISH: &str = r#"
local s = redis.call('INCR', KEYS[1])
local frame = ARGV[2] .. s .. ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], s .. '-1', 'f', frame, 't', now)
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
redis.call('PUBLISH', KEYS[2], s .. ' ' .. ARGV[1] .. frame)
return s
"#;

/// Removes one node from a room set. KEYS[1] = set; ARGV[1] = node.
const PRUNE: &str = "return redis.call('SREM', KEYS[1], ARGV[1])";

struct Scripts {
    prune: Script,
    join: Script,
    leave: Script,
    holders: Script,
    raise: Script,
    publish: Script,
    load: Script,
    append: Script,
}

/// A node's handle on Redis.
pub struct RedisBus {
    node: Arc<str>,
    /// `NODE/INSTANCE`: which run of this node stamped a room's history (history.rs).
    writer_mark: String,
    cfg: RedisConfig,
    client: Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    sink: Mutex<Option<PubSubSink>>,
    /// Room channels this node wants, resubscribed after every reconnect.
    rooms: Mutex<HashSet<RoomId>>,
    events_tx: mpsc::Sender<BusEvent>,
    events_rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    scripts: Scripts,
    registry: Registry,
    /// Cleared by [`RedisBus::withdraw`]: from then on heartbeats keep the node alive for
    /// its peers but never put it back into the registry routers place from.
    placeable: AtomicBool,
    /// Set once Redis was first reached; until then (or `heartbeat_ttl` after the start)
    /// the node takes no clients.
    reached: AtomicBool,
    started: std::time::Instant,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisBus({} at {})", self.node, self.cfg.url)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Checks the URL and starts the supervisor, which connects (and reconnects) in the
    /// background until `token` is cancelled.
    pub fn start(
        node_id: &str,
        cfg: RedisConfig,
        token: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let client = Client::open(cfg.url.as_str())
            .map_err(|e| unavailable(format!("redis url {}: {e}", cfg.url)))?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let registry = Registry::new(&cfg.prefix);
        let bus = Arc::new(Self {
            registry,
            writer_mark: format!("{node_id}/{:016x}", fastrand::u64(..)),
            node: Arc::from(node_id),
            cfg,
            client,
            conn: Mutex::new(None),
            sink: Mutex::new(None),
            rooms: Mutex::new(HashSet::new()),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            scripts: Scripts {
                prune: Script::new(PRUNE),
                join: Script::new(JOIN),
                leave: Script::new(LEAVE),
                holders: Script::new(HOLDERS),
                raise: Script::new(RAISE),
                publish: Script::new(PUBLISH),
                load: Script::new(LOAD),
                append: Script::new(APPEND),
            },
            placeable: AtomicBool::new(true),
            reached: AtomicBool::new(false),
            started: std::time::Instant::now(),
        });
        tokio::spawn(bus.clone().supervise(token.clone()));
        tokio::spawn(bus.clone().beat(token));
        Ok(bus)
    }

    /// Whether the command connection is up right now.
    pub fn is_connected(&self) -> bool {
        lock(&self.conn).is_some()
    }

    /// `{prefix}:{ROOM}:kind`: the braces are the room's hash tag.
    fn key(&self, kind: &str, room: &RoomId) -> String {
        format!("{}:{{{room}}}:{kind}", self.cfg.prefix)
    }
    fn room_channel(&self, room: &RoomId) -> String {
        format!("{}:room:{room}", self.cfg.prefix)
    }
    fn control_channel(&self, node: &str) -> String {
        format!("{}:ctl:{node}", self.cfg.prefix)
    }
    fn hb_prefix(&self) -> String {
        self.registry.heartbeat_key("")
    }

    fn conn(&self) -> BusResult<MultiplexedConnection> {
        lock(&self.conn).clone().ok_or_else(|| unavailable("redis is not connected"))
    }

    /// Connects, resubscribes and serves the Pub/Sub stream; reconnects with backoff.
    async fn supervise(self: Arc<Self>, token: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.connect().await {
                Ok(stream) => {
                    backoff = Duration::from_millis(100);
                    self.reached.store(true, Ordering::Release);
                    tracing::info!(node = %self.node, url = %self.cfg.url, "redis connected");
                    let _ = self.events_tx.send(BusEvent::Restored).await;
                    let stopped = self.serve(stream, &token).await;
                    *lock(&self.conn) = None;
                    *lock(&self.sink) = None;
                    if stopped {
                        return;
                    }
                    tracing::warn!(node = %self.node, "redis connection lost; reconnecting");
                    let _ = self.events_tx.send(BusEvent::Lost).await;
                }
                Err(e) => tracing::warn!(node = %self.node, "redis: {e}; retrying in {backoff:?}"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn connect(&self) -> Result<redis::aio::PubSubStream, BusError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.command_timeout))
            .set_response_timeout(Some(self.cfg.command_timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(unavailable)?;
        let pubsub = tokio::time::timeout(self.cfg.command_timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| unavailable("pubsub connect timed out"))?
            .map_err(unavailable)?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(self.control_channel(&self.node)).await.map_err(unavailable)?;
        let rooms: Vec<String> = lock(&self.rooms).iter().map(|r| self.room_channel(r)).collect();
        if !rooms.is_empty() {
            sink.subscribe(rooms).await.map_err(unavailable)?;
        }
        self.heartbeat(&mut conn, true).await?;
        *lock(&self.conn) = Some(conn);
        *lock(&self.sink) = Some(sink);
        Ok(stream)
    }

    /// Refreshes the heartbeat key, and the registry entry while the node is placeable.
    async fn heartbeat(&self, conn: &mut MultiplexedConnection, announce: bool) -> BusResult<()> {
        let ttl = self.cfg.heartbeat_ttl.as_millis() as u64;
        let r = match &self.cfg.advertise {
            Some(rec) if self.placeable.load(Ordering::Acquire) => {
                self.registry.register(conn, rec, ttl, announce).await
            }
            _ => {
                redis::cmd("SET")
                    .arg(self.registry.heartbeat_key(&self.node))
                    .arg(1)
                    .arg("PX")
                    .arg(ttl.max(1))
                    .query_async::<()>(conn)
                    .await
            }
        };
        r.map_err(unavailable)
    }

    /// The heartbeat, on a task of its own so a busy Pub/Sub reader never delays it (peers
    /// would prune this node from its rooms).
    async fn beat(self: Arc<Self>, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Ok(mut c) = self.conn() else { continue };
            if let Err(e) = self.heartbeat(&mut c, false).await {
                tracing::warn!("redis heartbeat: {e}");
            }
        }
    }

    /// Leaves the registry and drops the heartbeat, so peers prune this node from room sets
    /// at once: the last step of a shutdown, once no client is left.
    pub async fn deregister(&self) -> BusResult<()> {
        self.placeable.store(false, Ordering::Release);
        let mut conn = self.conn()?;
        self.registry.deregister(&mut conn, &self.node).await.map_err(unavailable)
    }

    /// Leaves the registry for good, so routers stop placing here at once; the heartbeat
    /// goes on, so peers keep this node in its rooms while it drains. Part of a rolling
    /// restart.
    pub async fn withdraw(&self) -> BusResult<()> {
        self.placeable.store(false, Ordering::Release);
        let mut conn = self.conn()?;
        self.registry.withdraw(&mut conn, &self.node).await.map_err(unavailable)
    }

    /// Serves one connection; returns true when stopped by the token.
    async fn serve(&self, mut stream: redis::aio::PubSubStream, token: &CancellationToken) -> bool {
        let ctl = self.control_channel(&self.node);
        let room_prefix = format!("{}:room:", self.cfg.prefix);
        loop {
            tokio::select! {
                _ = token.cancelled() => return true,
                msg = stream.next() => {
                    let Some(msg) = msg else { return false };
                    let channel = msg.get_channel_name();
                    let payload = msg.get_payload_bytes();
                    let ev = if channel == ctl {
                        parse_control(payload)
                    } else if let Some(room) = channel.strip_prefix(&room_prefix) {
                        parse_room(room, payload)
                    } else {
                        None
                    };
                    match ev {
                        // Backpressure instead of loss: if the node falls behind, Redis
                        // eventually drops this subscriber and we resync as after an outage.
                        Some(ev) => if self.events_tx.send(ev).await.is_err() { return true },
                        None => tracing::warn!(channel, "redis: unreadable bus message"),
                    }
                }
            }
        }
    }
}

fn ttl_ms(d: Age) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// The LOAD script's reply: epoch, seq, then (seq, age ms, frame) newest first.
fn parse_stored(reply: Vec<redis::Value>) -> Option<Stored> {
    use redis::FromRedisValue;
    let mut it = reply.into_iter();
    let epoch = String::from_redis_value(it.next()?).ok()?;
    let seq = u64::from_redis_value(it.next()?).ok()?;
    let mut entries = Vec::new();
    while let (Some(s), Some(age), Some(f)) = (it.next(), it.next(), it.next()) {
        let s = u64::from_redis_value(s).ok()?;
        let age = u64::from_redis_value(age).ok()?;
        let f = String::from_redis_value(f).ok()?;
        entries.push((s, Age::from_millis(age), Utf8Bytes::from(f)));
    }
    entries.reverse();
    Some(Stored { epoch, seq, entries })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ControlWire {
    from: String,
    msg: Control,
}

fn parse_control(payload: &[u8]) -> Option<BusEvent> {
    let w: ControlWire = serde_json::from_slice(payload).ok()?;
    Some(BusEvent::Control { from: w.from, msg: w.msg })
}

/// `<seq> <origin> <conn> <frame>`.
fn parse_room(room: &str, payload: &[u8]) -> Option<BusEvent> {
    let room = RoomId::parse(room).ok()?;
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, ' ');
    let seq = parts.next()?.parse().ok()?;
    let origin = parts.next()?;
    let conn = parts.next()?.parse().ok()?;
    let frame = parts.next()?;
    let frame = Utf8Bytes::try_from(Bytes::copy_from_slice(frame.as_bytes())).ok()?;
    Some(BusEvent::Room { room, seq, origin: Arc::from(origin), conn, frame })
}

impl Bus for RedisBus {
    fn join(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>> {
        let inv = {
            let mut i = self.scripts.join.prepare_invoke();
            i.key(self.key("nodes", room)).arg(&*self.node).arg(self.hb_prefix());
            i
        };
        Box::pin(async move { inv.invoke_async(&mut self.conn()?).await.map_err(unavailable) })
    }

    fn leave(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>> {
        let inv = {
            let mut i = self.scripts.leave.prepare_invoke();
            i.key(self.key("nodes", room))
                .key(self.key("writer", room))
                .arg(&*self.node)
                .arg(self.hb_prefix())
                .arg(&self.writer_mark);
            i
        };
        Box::pin(async move { inv.invoke_async(&mut self.conn()?).await.map_err(unavailable) })
    }

    fn holders(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>> {
        let inv = {
            let mut i = self.scripts.holders.prepare_invoke();
            i.key(self.key("nodes", room)).arg(self.hb_prefix());
            i
        };
        Box::pin(async move { inv.invoke_async(&mut self.conn()?).await.map_err(unavailable) })
    }

    fn prune(&self, room: &RoomId, node: &str) -> BoxFuture<'_, BusResult<()>> {
        let inv = {
            let mut i = self.scripts.prune.prepare_invoke();
            i.key(self.key("nodes", room)).arg(node);
            i
        };
        Box::pin(async move {
            inv.invoke_async::<i64>(&mut self.conn()?).await.map(|_| ()).map_err(unavailable)
        })
    }

    fn catch_up(
        &self,
        room: &RoomId,
        after: u64,
    ) -> BoxFuture<'_, BusResult<Vec<(u64, Utf8Bytes)>>> {
        let key = self.key("log", room);
        Box::pin(async move {
            // Entries are `seq-1`; "(" excludes `after-1` itself.
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({after}-1"))
                .arg("+")
                .query_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(reply.ids.len());
            for entry in reply.ids {
                let seq = entry.id.split('-').next().and_then(|s| s.parse::<u64>().ok());
                let frame: Option<String> = entry.get("f");
                if let (Some(seq), Some(frame)) = (seq, frame) {
                    out.push((seq, Utf8Bytes::from(frame)));
                }
            }
            Ok(out)
        })
    }

    fn subscribe(&self, room: &RoomId) -> BoxFuture<'_, BusResult<()>> {
        lock(&self.rooms).insert(room.clone());
        let channel = self.room_channel(room);
        Box::pin(async move {
            let mut sink =
                lock(&self.sink).clone().ok_or_else(|| unavailable("redis is not connected"))?;
            tokio::time::timeout(self.cfg.command_timeout, sink.subscribe(channel))
                .await
                .map_err(|_| unavailable("subscribe timed out"))?
                .map_err(unavailable)
        })
    }

    fn unsubscribe(&self, room: &RoomId) -> BoxFuture<'_, BusResult<()>> {
        lock(&self.rooms).remove(room);
        let channel = self.room_channel(room);
        Box::pin(async move {
            let Some(mut sink) = lock(&self.sink).clone() else { return Ok(()) };
            tokio::time::timeout(self.cfg.command_timeout, sink.unsubscribe(channel))
                .await
                .map_err(|_| unavailable("unsubscribe timed out"))?
                .map_err(unavailable)
        })
    }

    fn raise_seq(&self, room: &RoomId, seq: u64) -> BoxFuture<'_, BusResult<()>> {
        let inv = {
            let mut i = self.scripts.raise.prepare_invoke();
            i.key(self.key("seq", room)).arg(seq);
            i
        };
        Box::pin(async move {
            inv.invoke_async::<i64>(&mut self.conn()?).await.map(|_| ()).map_err(unavailable)
        })
    }

    fn current_seq(&self, room: &RoomId) -> BoxFuture<'_, BusResult<u64>> {
        let key = self.key("seq", room);
        Box::pin(async move {
            let v: Option<u64> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            Ok(v.unwrap_or(0))
        })
    }

    fn publish(&self, room: &RoomId, env: Envelope) -> BoxFuture<'_, BusResult<u64>> {
        let header = format!("{} {} ", self.node, env.conn);
        let channel = self.room_channel(room);
        let seq_key = self.key("seq", room);
        let log_key = self.key("log", room);
        let epoch_key = self.key("epoch", room);
        Box::pin(async move {
            let mut conn = self.conn()?;
            match env.tail {
                Some(tail) => {
                    let mut i = self.scripts.publish.prepare_invoke();
                    i.key(seq_key)
                        .key(channel)
                        .key(log_key)
                        .key(epoch_key)
                        .arg(header)
                        .arg(env.head)
                        .arg(tail)
                        .arg(LOG_SIZE)
                        .arg(self.cfg.log_ttl.as_millis() as u64);
                    i.invoke_async(&mut conn).await.map_err(unavailable)
                }
                None => {
                    let payload = format!("0 {header}{}", env.head);
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    Ok(0)
                }
            }
        })
    }

    fn send_control(&self, to: &str, msg: Control) -> BoxFuture<'_, BusResult<()>> {
        let channel = self.control_channel(to);
        let payload = serde_json::to_string(&ControlWire { from: self.node.to_string(), msg })
            .unwrap_or_default();
        let to = to.to_owned();
        Box::pin(async move {
            let listeners = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            // Nobody on the node's control channel: the node is dead (or between two
            // connections, and then its restore registers and spans again).
            if listeners == 0 {
                return Err(BusError::NotListening(to));
            }
            Ok(())
        })
    }

    fn load_history(&self, room: &RoomId, req: LoadRequest) -> BoxFuture<'_, BusResult<Stored>> {
        let inv = {
            let mut i = self.scripts.load.prepare_invoke();
            i.key(self.key("epoch", room))
                .key(self.key("seq", room))
                .key(self.key("log", room))
                .key(self.key("writer", room))
                .key(self.key("nodes", room))
                .arg(&req.proposal)
                .arg(ttl_ms(req.policy.ttl))
                .arg(req.policy.size)
                .arg(&self.writer_mark)
                .arg(self.hb_prefix())
                .arg(if req.durable { 1 } else { 0 })
                .arg(&*self.node)
                .arg(if req.writer { 1 } else { 0 });
            i
        };
        Box::pin(async move {
            let reply: Vec<redis::Value> =
                inv.invoke_async(&mut self.conn()?).await.map_err(unavailable)?;
            parse_stored(reply).ok_or_else(|| unavailable("unreadable history reply"))
        })
    }

    fn append_history(
        &self,
        batch: Vec<Append>,
        archive: Vec<Record>,
    ) -> BoxFuture<'_, BusResult<Appended>> {
        let mut pipe = redis::pipe();
        let n = batch.len();
        for a in &batch {
            let ttl = ttl_ms(a.policy.ttl.max(self.cfg.log_ttl));
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.scripts.append.get_hash())
                .arg(4)
                .arg(self.key("epoch", &a.room))
                .arg(self.key("seq", &a.room))
                .arg(self.key("log", &a.room))
                .arg(self.key("writer", &a.room))
                .arg(&*a.epoch)
                .arg(ttl)
                .arg(a.policy.size.max(LOG_SIZE))
                .arg(&self.writer_mark);
            for (seq, frame) in &a.entries {
                cmd.arg(*seq).arg(frame.as_str());
            }
        }
        // The archive queue rides in the same round trip: one XADD per record, to the
        // stream of its room's shard.
        for r in &archive {
            let shard = shared::archive::shard(r.room(), self.cfg.archive_shards);
            let cmd =
                pipe.cmd("XADD").arg(shared::archive::stream_key(&self.cfg.prefix, shard)).arg("*");
            for (k, v) in r.fields() {
                cmd.arg(k).arg(v);
            }
        }
        Box::pin(async move {
            let mut conn = self.conn()?;
            let no_script = redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
            let mut r: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut conn).await;
            if r.as_ref().is_err_and(|e| e.kind() == no_script) {
                // A new or restarted Redis does not know the script yet: load it, go again
                // (archive records sent twice are archived once).
                let _ = self.scripts.append.prepare_invoke().load_async(&mut conn).await;
                r = pipe.query_async(&mut conn).await;
            }
            let ok = |x: &redis::Value| !matches!(x, redis::Value::ServerError(_));
            match r {
                Ok(v) if v.len() == n + archive.len() => Ok(Appended {
                    rooms: v[..n].iter().map(ok).collect(),
                    archived: v[n..].iter().all(ok),
                }),
                Ok(_) => Ok(Appended { rooms: vec![false; n], archived: archive.is_empty() }),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        lock(&self.events_rx).take()
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn post_mark(&self, room: &RoomId, id: &str) -> BoxFuture<'_, BusResult<Option<Published>>> {
        let key = self.key(&format!("post:{id}"), room);
        Box::pin(async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            Ok(v.and_then(|v| {
                let (seq, node) = v.split_once(' ')?;
                Some(Published { seq: seq.parse().ok()?, node: node.to_owned() })
            }))
        })
    }

    fn set_post_mark(
        &self,
        room: &RoomId,
        id: &str,
        posted: &Published,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<()>> {
        let key = self.key(&format!("post:{id}"), room);
        let value = format!("{} {}", posted.seq, posted.node);
        Box::pin(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async::<()>(&mut self.conn()?)
                .await
                .map_err(unavailable)
        })
    }

    fn read_history(
        &self,
        room: &RoomId,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'_, BusResult<Option<StoredPage>>> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.key("epoch", room));
        pipe.cmd("GET").arg(self.key("seq", room));
        // Entries are `seq-1`; "(" excludes `since-1` itself.
        pipe.cmd("XRANGE").arg(self.key("log", room)).arg(format!("({since}-1")).arg("+");
        pipe.arg("COUNT").arg(limit);
        pipe.cmd("XREVRANGE").arg(self.key("log", room)).arg("+").arg("-").arg("COUNT").arg(1);
        Box::pin(async move {
            type Reply = (
                Option<String>,
                Option<u64>,
                redis::streams::StreamRangeReply,
                redis::streams::StreamRangeReply,
            );
            let (epoch, seq, page, last): Reply =
                pipe.query_async(&mut self.conn()?).await.map_err(unavailable)?;
            let seq_of = |id: &str| id.split('-').next().and_then(|s| s.parse::<u64>().ok());
            let top = last.ids.first().and_then(|e| seq_of(&e.id)).unwrap_or(0);
            let frames: Vec<Utf8Bytes> =
                page.ids.iter().filter_map(|e| e.get::<String>("f")).map(Utf8Bytes::from).collect();
            if epoch.is_none() && seq.is_none() && top == 0 {
                return Ok(None);
            }
            Ok(Some(StoredPage { epoch, seq: seq.unwrap_or(0).max(top), frames }))
        })
    }

    fn is_ready(&self) -> bool {
        // A Redis that stays away does not keep the node down for ever: past the heartbeat
        // TTL it serves alone, as it does when Redis goes away later.
        self.reached.load(Ordering::Acquire) || self.started.elapsed() > self.cfg.heartbeat_ttl
    }
}
