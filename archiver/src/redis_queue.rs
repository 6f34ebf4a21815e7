//! The Redis archive queue: the streams `{prefix}:archive:{N}` (one per shard) read in the
//! consumer group `archivers`. Entries are read in batches, written in one transaction,
//! and acknowledged (XACK, then XDEL: the stream holds only what is not archived yet)
//! only after the commit. At (re)connect an archiver first takes back its own pending
//! entries; every `claim_idle / 2` it claims the entries a silent archiver left pending
//! (XAUTOCLAIM). A malformed entry, or one the database refused `max_failures` times, goes
//! to `{prefix}:archive:dead` with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use shared::archive::{GROUP, Record, dead_key, stream_key};
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::metrics::Metrics;
use crate::store::{Item, MAX_BATCH, Store, now_ms};

/// Where and how to read the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub redis: String,
    /// The key prefix of the nodes (`--redis-prefix`).
    pub prefix: String,
    /// The nodes' `--archive-shards`.
    pub shards: u32,
    /// This archiver's name in the group; unique per archiver.
    pub consumer: String,
    /// Entries per batch (one transaction).
    pub batch: usize,
    /// How long one read waits for new entries.
    pub block: Duration,
    /// How long an entry stays pending with a silent archiver before another claims it.
    pub claim_idle: Duration,
    /// Refusals by the database after which an entry is dead-lettered.
    pub max_failures: u32,
}

impl QueueConfig {
    fn streams(&self) -> Vec<String> {
        (0..self.shards).map(|s| stream_key(&self.prefix, s)).collect()
    }
}

/// How often the lag gauges are read from Redis.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Drains the queue into `store` until `token` is cancelled, reconnecting with back-off.
pub async fn run(store: Store, cfg: QueueConfig, metrics: Arc<Metrics>, token: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut failures: HashMap<String, u32> = HashMap::new();
    // The lag is read on a connection of its own, so it keeps growing in `/metrics` while
    // the database is away and the consumer waits on it.
    tokio::spawn(watch_lag(cfg.clone(), metrics.clone(), token.clone()));
    loop {
        match consume(&store, &cfg, &metrics, &token, &mut failures).await {
            Ok(()) => return,
            Err(e) => {
                metrics.queue_errors.inc();
                tracing::warn!(redis = %cfg.redis, "archive queue: {e}; reconnecting");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One entry read from a shard's stream.
struct Entry {
    stream: String,
    raw: StreamId,
}

async fn consume(
    store: &Store,
    cfg: &QueueConfig,
    metrics: &Metrics,
    token: &CancellationToken,
    failures: &mut HashMap<String, u32>,
) -> redis::RedisResult<()> {
    let mut conn = shared::streams::connect(&cfg.redis, cfg.block).await?;
    let streams = cfg.streams();
    for s in &streams {
        shared::streams::ensure_group(&mut conn, s, GROUP).await?;
    }
    tracing::info!(shards = cfg.shards, consumer = cfg.consumer, "reading the archive queue");
    let batch = cfg.batch.clamp(1, MAX_BATCH);
    // Our own pending entries first (a restart under the same name, a lost connection).
    let mut own = true;
    let mut carry: Vec<Entry> = Vec::new();
    let mut next_claim = tokio::time::Instant::now();
    loop {
        if token.is_cancelled() {
            return Ok(());
        }
        if !carry.is_empty() {
            // Entries the database refused go again on their own, so they never spoil
            // a batch of good ones.
            let again = std::mem::take(&mut carry);
            let Some(left) = handle(&mut conn, store, cfg, metrics, token, failures, again).await?
            else {
                return Ok(());
            };
            carry = left;
        }
        let now = tokio::time::Instant::now();
        let mut entries: Vec<Entry> = Vec::new();
        if now >= next_claim {
            next_claim = now + cfg.claim_idle.max(Duration::from_millis(200)) / 2;
            for s in &streams {
                let claimed = claim(&mut conn, cfg, s, batch).await?;
                if !claimed.is_empty() {
                    metrics.claimed.add(claimed.len() as u64);
                    tracing::info!(
                        stream = s,
                        entries = claimed.len(),
                        "claimed entries left pending"
                    );
                    entries.extend(claimed.into_iter().map(|raw| Entry { stream: s.clone(), raw }));
                }
            }
        }
        if entries.len() < batch {
            let want = batch - entries.len();
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(GROUP).arg(&cfg.consumer).arg("COUNT").arg(want);
            if !own && entries.is_empty() {
                read.arg("BLOCK").arg(cfg.block.as_millis() as u64);
            }
            read.arg("STREAMS").arg(&streams);
            for _ in &streams {
                read.arg(if own { "0" } else { ">" });
            }
            let read = read.query_async::<Option<StreamReadReply>>(&mut conn);
            let reply = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                r = read => r?,
            };
            let mut got = 0;
            for k in reply.map(|r| r.keys).unwrap_or_default() {
                for raw in k.ids {
                    got += 1;
                    entries.push(Entry { stream: k.key.clone(), raw });
                }
            }
            if own && got == 0 {
                own = false;
            }
        }
        // One read takes up to COUNT entries from every shard (and claims add theirs):
        // write them `batch` at a time, each its own transaction.
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(batch));
            let one = std::mem::replace(&mut entries, rest);
            let Some(left) = handle(&mut conn, store, cfg, metrics, token, failures, one).await?
            else {
                return Ok(());
            };
            carry.extend(left);
        }
    }
}

/// Writes a batch, acknowledges what is archived, dead-letters what never will be, and
/// returns what is to be tried again (refused fewer than `max_failures` times). `None`
/// when `token` stopped the write.
async fn handle(
    conn: &mut MultiplexedConnection,
    store: &Store,
    cfg: &QueueConfig,
    metrics: &Metrics,
    token: &CancellationToken,
    failures: &mut HashMap<String, u32>,
    entries: Vec<Entry>,
) -> redis::RedisResult<Option<Vec<Entry>>> {
    let mut dead: Vec<(Entry, String)> = Vec::new();
    let mut ok: Vec<Entry> = Vec::new();
    let mut rows: Vec<(Entry, Item)> = Vec::new();
    let mut seen: std::collections::HashSet<(String, String)> = Default::default();
    for e in entries {
        // A claimed entry may also be among our own pending ones.
        if !seen.insert((e.stream.clone(), e.raw.id.clone())) {
            continue;
        }
        if e.raw.map.is_empty() {
            // Pending but deleted: another archiver archived it after claiming it.
            ok.push(e);
            continue;
        }
        match parse(&e.raw).and_then(|r| batch::item(&r)) {
            Ok(row) => rows.push((e, row)),
            Err(why) => dead.push((e, why)),
        }
    }
    let only: Vec<Item> = rows.iter().map(|(_, r)| r.clone()).collect();
    let Some(outcomes) = batch::write(store, &only, metrics, token).await else {
        return Ok(None);
    };
    let mut again = Vec::new();
    for ((e, _), outcome) in rows.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                failures.remove(&e.raw.id);
                ok.push(e)
            }
            Err(why) => {
                let n = failures.entry(e.raw.id.clone()).or_default();
                *n += 1;
                if *n >= cfg.max_failures {
                    let why = format!("refused {n} times: {why}");
                    failures.remove(&e.raw.id);
                    dead.push((e, why));
                } else {
                    tracing::debug!(entry = e.raw.id, "refused ({n}): {why}; trying again");
                    again.push(e);
                }
            }
        }
    }
    ack(conn, &ok).await?;
    for (e, why) in dead {
        bury(conn, cfg, &e, &why).await?;
        metrics.dead.inc();
    }
    Ok(Some(again))
}

/// The record an entry carries, or why it is malformed.
fn parse(e: &StreamId) -> Result<Record, String> {
    Record::from_fields(|name| e.get::<String>(name))
}

/// XACK then XDEL for every entry, per stream, in one round trip.
async fn ack(conn: &mut MultiplexedConnection, entries: &[Entry]) -> redis::RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut by_stream: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in entries {
        by_stream.entry(&e.stream).or_default().push(&e.raw.id);
    }
    let mut pipe = redis::pipe();
    for (stream, ids) in by_stream {
        pipe.cmd("XACK").arg(stream).arg(GROUP).arg(&ids).ignore();
        pipe.cmd("XDEL").arg(stream).arg(&ids).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Moves an entry to the dead-letter stream with `why`, and acknowledges and deletes it.
async fn bury(
    conn: &mut MultiplexedConnection,
    cfg: &QueueConfig,
    e: &Entry,
    why: &str,
) -> redis::RedisResult<()> {
    tracing::warn!(entry = e.raw.id, reason = why, "archive: dead-lettered");
    let dead = dead_key(&cfg.prefix);
    let grave =
        shared::streams::Grave { stream: &e.stream, group: GROUP, dead: &dead, delete: true };
    shared::streams::bury(conn, grave, &e.raw, why, &[("stream", &e.stream)]).await
}

/// Claims up to `count` entries of `stream` pending longer than `claim_idle`.
async fn claim(
    conn: &mut MultiplexedConnection,
    cfg: &QueueConfig,
    stream: &str,
    count: usize,
) -> redis::RedisResult<Vec<StreamId>> {
    let idle = cfg.claim_idle;
    let r = shared::streams::claim(conn, stream, GROUP, &cfg.consumer, idle, "0-0", count).await?;
    // Entries deleted meanwhile come back without fields: someone archived them.
    Ok(r.claimed.into_iter().filter(|e| !e.map.is_empty()).collect())
}

/// Reads the lag every [`LAG_EVERY`] until `token` is cancelled.
async fn watch_lag(cfg: QueueConfig, metrics: Arc<Metrics>, token: CancellationToken) {
    let streams = cfg.streams();
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(LAG_EVERY) => {}
        }
        if conn.is_none() {
            let client = redis::Client::open(cfg.redis.as_str());
            conn = match client {
                Ok(c) => c.get_multiplexed_async_connection().await.ok(),
                Err(_) => None,
            };
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = read_lag(c, &streams, &metrics).await
        {
            tracing::debug!("archive lag: {e}");
            conn = None;
        }
    }
}

/// Entries waiting (XLEN: acknowledged ones are deleted) and the age of the oldest, over
/// every shard, in one round trip.
async fn read_lag(
    conn: &mut MultiplexedConnection,
    streams: &[String],
    metrics: &Metrics,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for s in streams {
        pipe.cmd("XLEN").arg(s);
        pipe.cmd("XRANGE").arg(s).arg("-").arg("+").arg("COUNT").arg(1);
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut entries = 0i64;
    let mut oldest: Option<i64> = None;
    for pair in replies.chunks(2) {
        let [len, first] = pair else { continue };
        entries += redis::from_redis_value_ref::<i64>(len).unwrap_or(0);
        if let Ok(r) = redis::from_redis_value_ref::<redis::streams::StreamRangeReply>(first)
            && let Some(ms) = r.ids.first().and_then(|e| id_ms(&e.id))
        {
            oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
        }
    }
    metrics.lag_entries.set(entries);
    metrics.lag_ms.set(oldest.map_or(0, |ms| (now_ms() - ms).max(0)));
    Ok(())
}

/// The milliseconds part of a stream entry id (when Redis took the entry).
fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        let map = fields
            .iter()
            .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.as_bytes().to_vec())))
            .collect();
        StreamId { id: "1-0".into(), map, ..Default::default() }
    }

    #[test]
    fn entries_parse_or_say_why() {
        let ok = entry(&[("k", "m"), ("room", "r"), ("epoch", "e"), ("seq", "3"), ("f", "{}")]);
        let Ok(Record::Message(m)) = parse(&ok) else { panic!("a message") };
        assert_eq!(m.seq, 3);
        assert_eq!(parse(&entry(&[("k", "x")])).unwrap_err(), "unknown kind \"x\"");
        assert_eq!(parse(&entry(&[("k", "m")])).unwrap_err(), "no room field");
        let bad = entry(&[("k", "m"), ("room", "r"), ("epoch", "e"), ("seq", "z"), ("f", "{}")]);
        assert!(parse(&bad).unwrap_err().contains("not a number"));
        let marker = entry(&[
            ("k", "u"),
            ("room", "r"),
            ("epoch", "e"),
            ("user", "ann"),
            ("delivered", "4"),
            ("at", "17"),
        ]);
        let Ok(Record::Marker(m)) = parse(&marker) else { panic!("a marker") };
        assert_eq!((m.user.as_str(), m.read, m.delivered), ("ann", None, 4));
        assert_eq!(id_ms("1700-3"), Some(1700));
    }
}
