//! The node's history writer: every message a room stamps itself is queued here and
//! appended to the store in batches, one round trip for all of the node's rooms per flush
//! interval (never one per message). A batch the store refuses is kept and retried, with
//! back-off, so a Redis restart loses no history the rooms still hold. Durable rooms are
//! told how far their history is stored: they deliver and ack only then. Archived rooms'
//! messages ride in the same batch to the archive queue (no round trip of their own).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::archive::{Marker, Message, Record};
use shared::ids::RoomId;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Append, Bus};
use crate::history::Policy;
use crate::metrics::Metrics;
use crate::room::Input;
use crate::room_core::Event;

/// Entries queued over all rooms before a flush starts early.
const FLUSH_AT: usize = 4096;
/// Longest wait between retries of a refused batch (durable rooms deliver unacknowledged
/// messages after each failed try, so it stays short).
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Archive records held while the queue refuses them (Redis away); past it the oldest are
/// given up on and counted (`wsnode_archive_dropped_total`).
const ARCHIVE_HOLD: usize = 200_000;

/// One stamped message for the store.
#[derive(Debug)]
pub(crate) struct Entry {
    pub room: RoomId,
    pub epoch: Arc<str>,
    pub policy: Policy,
    pub seq: u64,
    pub frame: Utf8Bytes,
    /// The owner of a durable room, told how far the store holds its history (its
    /// messages wait for that); `None` for the others, which nothing waits on.
    pub(crate) owner: Option<mpsc::Sender<Input>>,
    /// The message goes to the archive queue too, kept that many days (`Some(None)`: for
    /// good).
    pub archive: Option<Option<u32>>,
}

enum Msg {
    Entry(Entry),
    Archive(Record),
    Flush(oneshot::Sender<()>),
}

/// A handle on the node's writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Appender {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Entry(e) => write!(f, "Entry({} {})", e.room, e.seq),
            Msg::Archive(r) => write!(f, "Archive({})", r.room()),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Appender {
    /// Starts the writer; it stops with the last handle, once its last batch is out.
    pub fn start(bus: Arc<dyn Bus>, every: Duration, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(bus, every, metrics, rx));
        Self { tx }
    }

    /// Queues a message. The queue is unbounded: each room keeps at most its history size
    /// queued (older entries of a refused batch are dropped), so the bound is the rooms'.
    pub fn append(&self, e: Entry) {
        let _ = self.tx.send(Msg::Entry(e));
    }

    /// Queues a message for the archive only (a spanning room's: the bus stored its
    /// history when it stamped it).
    pub fn archive(
        &self,
        room: &RoomId,
        epoch: &str,
        seq: u64,
        frame: &Utf8Bytes,
        keep_days: Option<u32>,
    ) {
        let r = Record::Message(Message {
            room: room.to_string(),
            epoch: epoch.to_owned(),
            seq,
            frame: frame.as_str().to_owned(),
            keep_days,
        });
        let _ = self.tx.send(Msg::Archive(r));
    }

    /// Queues a user's markers for the archive (they ride with the next batch).
    pub fn mark(&self, m: Marker) {
        let _ = self.tx.send(Msg::Archive(Record::Marker(m)));
    }

    /// Returns once everything queued so far was offered to the store (stored, or kept for
    /// a retry when the store refused it).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// One room's part of the next batch.
struct Pending {
    epoch: Arc<str>,
    policy: Policy,
    entries: Vec<(u64, Utf8Bytes)>,
    owner: Option<mpsc::Sender<Input>>,
}

async fn run(
    bus: Arc<dyn Bus>,
    every: Duration,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut pending: HashMap<RoomId, Pending> = HashMap::new();
    let mut archive: Vec<Record> = Vec::new();
    let mut queued = 0usize;
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = every;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let mut waiters = Vec::new();
        tokio::select! {
            m = rx.recv() => match m {
                Some(Msg::Flush(done)) => waiters.push(done),
                Some(m) => {
                    queued += 1;
                    take(m, &mut pending, &mut archive, &metrics, &mut waiters);
                    if queued < FLUSH_AT {
                        continue;
                    }
                }
                None => {
                    flush(&*bus, &metrics, &mut pending, &mut archive).await;
                    return;
                }
            },
            _ = tick.tick() => {
                let idle = pending.is_empty() && archive.is_empty();
                if idle || retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
                    continue;
                }
            }
        }
        // Take whatever else is queued right now into the same batch.
        while let Ok(m) = rx.try_recv() {
            take(m, &mut pending, &mut archive, &metrics, &mut waiters);
        }
        queued = 0;
        if flush(&*bus, &metrics, &mut pending, &mut archive).await {
            backoff = every;
            retry_at = None;
        } else {
            backoff = (backoff * 2).min(MAX_BACKOFF);
            retry_at = Some(tokio::time::Instant::now() + backoff);
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

fn take(
    m: Msg,
    pending: &mut HashMap<RoomId, Pending>,
    archive: &mut Vec<Record>,
    metrics: &Metrics,
    waiters: &mut Vec<oneshot::Sender<()>>,
) {
    match m {
        Msg::Entry(e) => {
            if let Some(keep_days) = e.archive {
                hold(archive, record(&e, keep_days), metrics);
            }
            add(pending, e)
        }
        Msg::Archive(r) => hold(archive, r, metrics),
        Msg::Flush(done) => waiters.push(done),
    }
}

fn record(e: &Entry, keep_days: Option<u32>) -> Record {
    Record::Message(Message {
        room: e.room.to_string(),
        epoch: e.epoch.to_string(),
        seq: e.seq,
        frame: e.frame.as_str().to_owned(),
        keep_days,
    })
}

/// Keeps a record for the next batch; a hold that overflowed (the queue away for long)
/// gives up its oldest, counted.
fn hold(archive: &mut Vec<Record>, r: Record, metrics: &Metrics) {
    if archive.len() >= ARCHIVE_HOLD {
        let over = archive.len() + 1 - ARCHIVE_HOLD;
        archive.drain(..over);
        metrics.archive_dropped.add(over as u64);
        // Once per 10,000 given up, not once per message.
        if metrics.archive_dropped.get() % 10_000 < over as u64 {
            let dropped = metrics.archive_dropped.get();
            tracing::warn!(dropped, "archive queue away too long: oldest records given up");
        }
    }
    archive.push(r);
    metrics.archive_held.set(archive.len() as i64);
}

fn add(pending: &mut HashMap<RoomId, Pending>, e: Entry) {
    let p = pending.entry(e.room).or_insert_with(|| Pending {
        epoch: e.epoch.clone(),
        policy: e.policy,
        entries: Vec::new(),
        owner: e.owner.clone(),
    });
    if *p.epoch != *e.epoch {
        // The room started a new epoch: what was queued under the old one is moot.
        p.epoch = e.epoch;
        p.entries.clear();
    }
    p.owner = e.owner;
    p.entries.push((e.seq, e.frame));
    // A room never needs more stored than its history holds.
    let over = p.entries.len().saturating_sub(p.policy.size.max(1));
    if over > 0 {
        p.entries.drain(..over);
    }
}

/// Offers every room's pending entries and the archive records to the store in one call
/// and tells each room how far it got; refused rooms keep theirs for the next try, and so
/// do refused archive records. True when all were taken.
async fn flush(
    bus: &dyn Bus,
    metrics: &Metrics,
    pending: &mut HashMap<RoomId, Pending>,
    archive: &mut Vec<Record>,
) -> bool {
    if pending.is_empty() && archive.is_empty() {
        return true;
    }
    // Rooms with history off are here only to be told (durable archived rooms).
    let (stored, told): (Vec<RoomId>, Vec<RoomId>) =
        pending.keys().cloned().partition(|r| pending[r].policy.is_on());
    let batch: Vec<Append> = stored
        .iter()
        .map(|r| {
            let p = &pending[r];
            Append {
                room: r.clone(),
                epoch: p.epoch.clone(),
                policy: p.policy,
                entries: p.entries.clone(),
            }
        })
        .collect();
    let entries: usize = batch.iter().map(|a| a.entries.len()).sum();
    metrics.history_flushes.inc();
    let (took, archived) = match bus.append_history(batch, archive.clone()).await {
        Ok(a) => (a.rooms, a.archived),
        Err(e) => {
            metrics.redis_errors.inc();
            tracing::warn!(rooms = stored.len(), entries, "cannot store history: {e}");
            (vec![false; stored.len()], false)
        }
    };
    if archived {
        metrics.archive_queued.add(archive.len() as u64);
        archive.clear();
    }
    metrics.archive_held.set(archive.len() as i64);
    let took = took.into_iter().chain(std::iter::repeat(false));
    let mut all = archived;
    let results = stored.into_iter().zip(took).chain(told.into_iter().map(|r| (r, true)));
    for (room, ok) in results {
        // A durable archived room's message is safe once both took it.
        let ok = ok && archived;
        let Some(p) = pending.get(&room) else { continue };
        let upto = p.entries.last().map_or(0, |e| e.0);
        if let Some(owner) = &p.owner {
            tell(owner, Event::Persisted { upto, ok });
        }
        if ok {
            metrics.history_appends.add(p.entries.len() as u64);
            pending.remove(&room);
        } else {
            all = false;
        }
    }
    all
}

/// Tells a room; a full room queue gets it from a task of its own (never lost, never
/// stalling the writer).
fn tell(owner: &mpsc::Sender<Input>, ev: Event) {
    match owner.try_send(Input::Bus(ev)) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(input)) => {
            let owner = owner.clone();
            tokio::spawn(async move {
                let _ = owner.send(input).await;
            });
        }
    }
}
