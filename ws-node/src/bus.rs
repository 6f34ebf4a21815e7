//! The `Bus` between a node's rooms and the other nodes: a room's node set, its channel,
//! its shared `seq`, its stored history, and node-to-node control messages. `LocalBus` is
//! the in-process hub (one process, any number of nodes); `RedisBus` (redis_bus.rs) is the
//! same over Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shared::api::Published;
use shared::archive::Record;
use shared::ids::{RoomId, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::history::Policy;

/// Events a node's bus delivers, in channel order.
pub const EVENT_QUEUE: usize = 65_536;

/// A bus operation that failed; the room reports `degraded` to its members.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A control message reached nobody: the node it was for does not listen.
    #[error("node {0} is not listening")]
    NotListening(String),
}

pub type BusResult<T> = Result<T, BusError>;

/// A room event on its way to every node holding the room. The frame is pre-serialized by
/// the origin; a sequenced one has the room's next `seq` spliced between `head` and `tail`
/// by the bus, atomically with publishing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The connection it came from, so its own node can skip echoing presence to it.
    pub conn: u64,
    pub head: String,
    /// `Some` for sequenced frames (messages): the frame is `head + seq + tail`.
    pub tail: Option<String>,
}

/// Node-to-node control messages. Every one is idempotent: the repair re-sends them, and
/// hearing one twice changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Control {
    /// "I hold this room too: span it, and publish your [`Note::Sync`] on its channel."
    Span { room: RoomId },
    /// "I do not hold this room (any more)": do not wait for my sync.
    Absent { room: RoomId },
    /// "I no longer hold this room": a survivor may now be alone.
    Left { room: RoomId },
}

/// Node-to-node notes on a room's channel, in channel order with its messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// "I span this room from here on; these are my users, my last `seq`, and the read
    /// markers I know." Every message of the sender after this note comes through the bus.
    /// `reads` is absent from nodes that predate read markers.
    Sync {
        seq: u64,
        users: Vec<(UserId, Option<String>)>,
        #[serde(default)]
        reads: Vec<(UserId, u64)>,
    },
    /// A user appeared on (or vanished from) the sender's members.
    Presence { user: UserId, present: bool, info: Option<String> },
    /// A user of the sender's read the room up to `seq` (markers only rise: idempotent).
    Read { user: UserId, seq: u64 },
}

impl Note {
    /// Notes travel as unsequenced frames; their JSON starts with this, client frames never.
    pub const PREFIX: &'static str = r#"{"note":"#;

    pub fn envelope(&self) -> Envelope {
        Envelope { conn: 0, head: serde_json::to_string(self).unwrap_or_default(), tail: None }
    }
}

/// What a node receives from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A room frame, `seq` 0 when unsequenced, from `origin` node's connection `conn`.
    Room { room: RoomId, seq: u64, origin: Arc<str>, conn: u64, frame: Utf8Bytes },
    /// A control message from node `from`.
    Control { from: String, msg: Control },
    /// The connection to the bus was lost: spanning rooms are degraded until `Restored`.
    Lost,
    /// The bus is back: re-register rooms, resubscribe, raise `seq` keys.
    Restored,
}

/// A room's history as the store holds it.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The epoch the room continues: the stored one, or the proposed one when the history
    /// was lost (never stored, expired, flushed, or its last writer died with messages
    /// not yet stored).
    pub epoch: String,
    /// The last `seq` stamped in the room (0 when nothing is known).
    pub seq: u64,
    /// The held messages, oldest first, each with its age.
    pub entries: Vec<(u64, Duration, Utf8Bytes)>,
}

/// What one flush appends to one room's stored history.
#[derive(Debug, Clone)]
pub struct Append {
    pub room: RoomId,
    pub epoch: Arc<str>,
    pub policy: Policy,
    /// Stamped messages, in `seq` order.
    pub entries: Vec<(u64, Utf8Bytes)>,
}

/// What one flush stored: per [`Append`] of the batch whether the room's history took,
/// and whether every archive record did.
#[derive(Debug, Clone, Default)]
pub struct Appended {
    pub rooms: Vec<bool>,
    pub archived: bool,
}

/// How a room asks for its stored history.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub policy: Policy,
    /// The epoch to start when the history was lost.
    pub proposal: String,
    /// Whether every message of the room went out only once stored (`--durable-ack`): then
    /// a dead last writer lost nothing anyone saw, and the epoch goes on.
    pub durable: bool,
    /// Whether the room will stamp its messages itself (it opens alone): it becomes the
    /// room's writer.
    pub writer: bool,
}

/// A bus as a node sees it. Every method is one atomic step on the shared state.
pub trait Bus: Send + Sync + 'static {
    /// Adds this node to the room's node set; returns the other live holders.
    fn join(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>>;
    /// Removes this node from the room's node set; returns the holders left.
    fn leave(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>>;
    /// The room's live holders (this node included), pruning nodes whose heartbeat expired.
    fn holders(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>>;
    /// Removes `node` from the room's node set: it did not answer a span in time.
    fn prune(&self, room: &RoomId, node: &str) -> BoxFuture<'_, BusResult<()>>;
    /// The room's stamped messages after `after` still held by the bus, in `seq` order:
    /// what a node that lost its subscription for a while missed.
    fn catch_up(
        &self,
        room: &RoomId,
        after: u64,
    ) -> BoxFuture<'_, BusResult<Vec<(u64, Utf8Bytes)>>>;
    fn subscribe(&self, room: &RoomId) -> BoxFuture<'_, BusResult<()>>;
    fn unsubscribe(&self, room: &RoomId) -> BoxFuture<'_, BusResult<()>>;
    /// Raises the room's shared `seq` to at least `seq` (never lowers it).
    fn raise_seq(&self, room: &RoomId, seq: u64) -> BoxFuture<'_, BusResult<()>>;
    /// The room's shared `seq`: the last one stamped.
    fn current_seq(&self, room: &RoomId) -> BoxFuture<'_, BusResult<u64>>;
    /// Publishes to the room's channel; returns the stamped `seq` (0 when unsequenced).
    fn publish(&self, room: &RoomId, env: Envelope) -> BoxFuture<'_, BusResult<u64>>;
    fn send_control(&self, to: &str, msg: Control) -> BoxFuture<'_, BusResult<()>>;
    /// Reads the room's stored history, epoch and last `seq`; marks this node as the
    /// room's writer.
    fn load_history(&self, room: &RoomId, req: LoadRequest) -> BoxFuture<'_, BusResult<Stored>>;
    /// Appends new history for many rooms, and puts archived rooms' messages on the
    /// archive queue, in one round trip; says per room whether it took.
    fn append_history(
        &self,
        batch: Vec<Append>,
        archive: Vec<Record>,
    ) -> BoxFuture<'_, BusResult<Appended>>;
    /// The event stream; the node takes it once at start.
    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>>;
    /// Whether this bus reaches other processes (a Redis bus does; a local hub does not).
    fn is_remote(&self) -> bool {
        false
    }
    /// Whether the node may take clients: a room opened before the bus was first reached
    /// would start a history of its own beside the stored one.
    fn is_ready(&self) -> bool {
        true
    }
    /// The first answer (`seq`, node) of the server publish `id` in `room` while its mark
    /// lasts, whichever node stamped it: a retry after the room moved is not stamped again.
    /// A bus that keeps no marks (the local hub) says `None`: ids stay per node.
    fn post_mark(&self, _room: &RoomId, _id: &str) -> BoxFuture<'_, BusResult<Option<Published>>> {
        Box::pin(async { Ok(None) })
    }
    /// Marks that the server publish `id` in `room` got `posted`, for `ttl`.
    fn set_post_mark(
        &self,
        _room: &RoomId,
        _id: &str,
        _posted: &Published,
        _ttl: Duration,
    ) -> BoxFuture<'_, BusResult<()>> {
        Box::pin(async { Ok(()) })
    }
    /// The room's stored history after `since`, at most `limit` messages, read without
    /// opening the room (no writer mark, no epoch decided); `None` when nothing is stored.
    fn read_history(
        &self,
        _room: &RoomId,
        _since: u64,
        _limit: usize,
    ) -> BoxFuture<'_, BusResult<Option<StoredPage>>> {
        Box::pin(async { Ok(None) })
    }
}

/// A page of a room's stored history (see [`Bus::read_history`]).
#[derive(Debug, Clone, Default)]
pub struct StoredPage {
    /// The stored epoch; the room's next owner may yet start a new one (history.rs).
    pub epoch: Option<String>,
    /// The last `seq` stored for the room.
    pub seq: u64,
    /// Message frames after `since`, oldest first.
    pub frames: Vec<Utf8Bytes>,
}

/// Builds the frame an envelope becomes once stamped with `seq`.
pub fn stamp(env: &Envelope, seq: u64) -> Utf8Bytes {
    match &env.tail {
        Some(tail) => Utf8Bytes::from(format!("{}{seq}{tail}", env.head)),
        None => Utf8Bytes::from(env.head.clone()),
    }
}

/// Stamped messages the bus keeps per spanning room for [`Bus::catch_up`].
pub const LOG_SIZE: usize = 1000;

/// How long the bus keeps a spanning room's log after its last message when the room's
/// own history policy does not say (the bus stamps without knowing it).
pub const LOG_TTL: Duration = Duration::from_secs(300);

/// One room's stored history on the hub: the in-process twin of the Redis keys.
#[derive(Debug)]
struct HubHistory {
    epoch: Option<String>,
    /// The node that last stamped messages of this room itself.
    writer: Option<Arc<str>>,
    entries: VecDeque<(u64, Instant, Utf8Bytes)>,
    cap: usize,
    ttl: Duration,
    touched: Instant,
}

impl HubHistory {
    fn new(now: Instant) -> Self {
        Self {
            epoch: None,
            writer: None,
            entries: VecDeque::new(),
            cap: LOG_SIZE,
            ttl: LOG_TTL,
            touched: now,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.touched) > self.ttl
    }

    fn add(&mut self, seq: u64, now: Instant, frame: Utf8Bytes) {
        if self.entries.back().is_some_and(|(s, _, _)| *s >= seq) {
            return;
        }
        self.entries.push_back((seq, now, frame));
        while self.entries.len() > self.cap {
            self.entries.pop_front();
        }
        self.touched = now;
    }
}

/// How often the hub forgets expired histories.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct HubState {
    sets: HashMap<RoomId, HashSet<Arc<str>>>,
    logs: HashMap<RoomId, HubHistory>,
    last_sweep: Option<Instant>,
    seqs: HashMap<RoomId, u64>,
    subs: HashMap<RoomId, HashSet<Arc<str>>>,
    nodes: HashMap<Arc<str>, mpsc::Sender<BusEvent>>,
    /// Nodes [`LocalHub::kill`] cut off: their bus calls fail, as a dead process's would.
    dead: HashSet<Arc<str>>,
    /// The in-process archive queue (`fleet up`), when something archives.
    archive: Option<mpsc::Sender<Record>>,
}

/// The in-process hub behind every `LocalBus` of one process (`fleet up`, tests).
#[derive(Clone, Default)]
pub struct LocalHub {
    state: Arc<Mutex<HubState>>,
}

impl std::fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalHub")
    }
}

impl LocalHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bus of node `node_id` on this hub.
    pub fn bus(&self, node_id: &str) -> LocalBus {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let id: Arc<str> = Arc::from(node_id);
        self.lock().nodes.insert(id.clone(), tx);
        LocalBus { hub: self.clone(), id, events: Mutex::new(Some(rx)) }
    }

    /// Sends archived rooms' messages of every node of this hub to `queue` (bounded: a
    /// full queue makes the nodes' history writers wait, never drop).
    pub fn archive_to(&self, queue: mpsc::Sender<Record>) {
        self.lock().archive = Some(queue);
    }

    /// Cuts a node off as if it died: it leaves every room set, hears nothing more and
    /// every bus call it makes fails.
    pub fn kill(&self, node_id: &str) {
        let mut st = self.lock();
        st.dead.insert(Arc::from(node_id));
        st.nodes.remove(node_id);
        for set in st.sets.values_mut() {
            set.remove(node_id);
        }
        for set in st.subs.values_mut() {
            set.remove(node_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's handle on a [`LocalHub`].
pub struct LocalBus {
    hub: LocalHub,
    id: Arc<str>,
    events: Mutex<Option<mpsc::Receiver<BusEvent>>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalBus({})", self.id)
    }
}

impl LocalBus {
    /// A bus for a node that runs alone.
    pub fn standalone(node_id: &str) -> Self {
        LocalHub::new().bus(node_id)
    }

    fn now<T: Send + 'static>(v: T) -> BoxFuture<'static, BusResult<T>> {
        Box::pin(std::future::ready(Ok(v)))
    }

    fn cut_off(&self) -> bool {
        self.hub.lock().dead.contains(&self.id)
    }

    fn gone<T: Send + 'static>() -> BoxFuture<'static, BusResult<T>> {
        Box::pin(std::future::ready(Err(BusError::Unavailable("node cut off".into()))))
    }
}

fn sorted(set: impl IntoIterator<Item = Arc<str>>) -> Vec<String> {
    let mut v: Vec<String> = set.into_iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

impl Bus for LocalBus {
    fn join(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>> {
        if self.cut_off() {
            return Self::gone();
        }
        let mut st = self.hub.lock();
        let set = st.sets.entry(room.clone()).or_default();
        set.insert(self.id.clone());
        let others = sorted(set.iter().filter(|n| n.as_ref() != self.id.as_ref()).cloned());
        Self::now(others)
    }

    fn leave(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>> {
        if self.cut_off() {
            return Self::gone();
        }
        let mut st = self.hub.lock();
        let left = match st.sets.get_mut(room) {
            Some(set) => {
                set.remove(&*self.id);
                let left = sorted(set.iter().cloned());
                if set.is_empty() {
                    // The seq and the history stay for the next owner, until they expire.
                    st.sets.remove(room);
                    if let Some(h) = st.logs.get_mut(room)
                        && h.writer.as_deref() == Some(&*self.id)
                    {
                        h.writer = None;
                    }
                }
                left
            }
            None => Vec::new(),
        };
        Self::now(left)
    }

    fn holders(&self, room: &RoomId) -> BoxFuture<'_, BusResult<Vec<String>>> {
        if self.cut_off() {
            return Self::gone();
        }
        let st = self.hub.lock();
        Self::now(st.sets.get(room).map(|s| sorted(s.iter().cloned())).unwrap_or_default())
    }

    fn prune(&self, room: &RoomId, node: &str) -> BoxFuture<'_, BusResult<()>> {
        if self.cut_off() {
            return Self::gone();
        }
        if let Some(set) = self.hub.lock().sets.get_mut(room) {
            set.remove(node);
        }
        Self::now(())
    }

    fn catch_up(
        &self,
        room: &RoomId,
        after: u64,
    ) -> BoxFuture<'_, BusResult<Vec<(u64, Utf8Bytes)>>> {
        if self.cut_off() {
            return Self::gone();
        }
        let st = self.hub.lock();
        let v = st
            .logs
            .get(room)
            .map(|l| {
                l.entries.iter().filter(|(s, _, _)| *s > after).map(|(s, _, f)| (*s, f.clone()))
            })
            .into_iter()
            .flatten()
            .collect();
        Self::now(v)
    }

    fn subscribe(&self, room: &RoomId) -> BoxFuture<'_, BusResult<()>> {
        if self.cut_off() {
            return Self::gone();
        }
        self.hub.lock().subs.entry(room.clone()).or_default().insert(self.id.clone());
        Self::now(())
    }

    fn unsubscribe(&self, room: &RoomId) -> BoxFuture<'_, BusResult<()>> {
        if self.cut_off() {
            return Self::gone();
        }
        let mut st = self.hub.lock();
        if let Some(s) = st.subs.get_mut(room) {
            s.remove(&*self.id);
            if s.is_empty() {
                st.subs.remove(room);
            }
        }
        Self::now(())
    }

    fn raise_seq(&self, room: &RoomId, seq: u64) -> BoxFuture<'_, BusResult<()>> {
        if self.cut_off() {
            return Self::gone();
        }
        let mut st = self.hub.lock();
        let cur = st.seqs.entry(room.clone()).or_default();
        *cur = (*cur).max(seq);
        Self::now(())
    }

    fn current_seq(&self, room: &RoomId) -> BoxFuture<'_, BusResult<u64>> {
        if self.cut_off() {
            return Self::gone();
        }
        Self::now(self.hub.lock().seqs.get(room).copied().unwrap_or(0))
    }

    fn publish(&self, room: &RoomId, env: Envelope) -> BoxFuture<'_, BusResult<u64>> {
        if self.cut_off() {
            return Self::gone();
        }
        // Stamping and queueing under one lock is what gives every subscriber one order.
        let mut st = self.hub.lock();
        let seq = if env.tail.is_some() {
            let s = st.seqs.entry(room.clone()).or_default();
            *s += 1;
            *s
        } else {
            0
        };
        let frame = stamp(&env, seq);
        if seq > 0 {
            let now = Instant::now();
            st.logs.entry(room.clone()).or_insert_with(|| HubHistory::new(now)).add(
                seq,
                now,
                frame.clone(),
            );
        }
        let subs: Vec<Arc<str>> =
            st.subs.get(room).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for node in subs {
            if let Some(tx) = st.nodes.get(&node) {
                let ev = BusEvent::Room {
                    room: room.clone(),
                    seq,
                    origin: self.id.clone(),
                    conn: env.conn,
                    frame: frame.clone(),
                };
                if tx.try_send(ev).is_err() {
                    // Like Redis dropping a subscriber past its output buffer limit.
                    tracing::warn!(node = %node, "local bus: event queue full; node lagged");
                    let _ = tx.try_send(BusEvent::Lost);
                }
            }
        }
        drop(st);
        Self::now(seq)
    }

    fn send_control(&self, to: &str, msg: Control) -> BoxFuture<'_, BusResult<()>> {
        if self.cut_off() {
            return Self::gone();
        }
        let tx = self.hub.lock().nodes.get(to).cloned();
        let from = self.id.to_string();
        let to = to.to_owned();
        Box::pin(async move {
            match tx {
                Some(tx) => tx
                    .send(BusEvent::Control { from, msg })
                    .await
                    .map_err(|_| BusError::NotListening(to)),
                None => Err(BusError::NotListening(to)),
            }
        })
    }

    fn load_history(&self, room: &RoomId, req: LoadRequest) -> BoxFuture<'_, BusResult<Stored>> {
        if self.cut_off() {
            return Self::gone();
        }
        let now = Instant::now();
        let mut st = self.hub.lock();
        let bus_seq = st.seqs.get(room).copied().unwrap_or(0);
        // A writer that did not leave cleanly may have shown messages it never stored.
        let writer_gone = |w: &Arc<str>, st: &HubState| {
            st.dead.contains(w)
                || !st.nodes.contains_key(w)
                || !st.sets.get(room).is_some_and(|s| s.contains(w))
        };
        let lost = match st.logs.get(room) {
            None => true,
            Some(h) if h.expired(now) || h.epoch.is_none() => true,
            Some(h) => {
                !req.durable
                    && h.writer.as_ref().is_some_and(|w| *w != self.id && writer_gone(w, &st))
            }
        };
        let h = st.logs.entry(room.clone()).or_insert_with(|| HubHistory::new(now));
        if lost {
            h.entries.clear();
            h.epoch = Some(req.proposal);
        }
        if req.writer {
            h.writer = Some(self.id.clone());
        }
        h.cap = h.cap.max(req.policy.size);
        h.ttl = h.ttl.max(req.policy.ttl);
        h.touched = now;
        let ttl = req.policy.ttl;
        let entries: Vec<(u64, Duration, Utf8Bytes)> = h
            .entries
            .iter()
            .map(|(s, at, f)| (*s, now.saturating_duration_since(*at), f.clone()))
            .filter(|(_, age, _)| *age <= ttl)
            .collect();
        let skip = entries.len().saturating_sub(req.policy.size);
        let seq = bus_seq.max(h.entries.back().map_or(0, |e| e.0));
        let stored = Stored {
            epoch: h.epoch.clone().unwrap_or_default(),
            seq,
            entries: entries.into_iter().skip(skip).collect(),
        };
        Self::now(stored)
    }

    fn append_history(
        &self,
        batch: Vec<Append>,
        archive: Vec<Record>,
    ) -> BoxFuture<'_, BusResult<Appended>> {
        if self.cut_off() {
            return Self::gone();
        }
        let now = Instant::now();
        let mut st = self.hub.lock();
        if st.last_sweep.is_none_or(|t| now.duration_since(t) > SWEEP_EVERY) {
            st.last_sweep = Some(now);
            st.logs.retain(|_, h| !h.expired(now));
        }
        let mut done = Vec::with_capacity(batch.len());
        for a in batch {
            let Some(last) = a.entries.last().map(|e| e.0) else {
                done.push(true);
                continue;
            };
            let h = st.logs.entry(a.room.clone()).or_insert_with(|| HubHistory::new(now));
            if h.epoch.as_deref() != Some(&*a.epoch) {
                // Another epoch was stored meanwhile: this room's order replaces it.
                h.entries.clear();
                h.epoch = Some(a.epoch.to_string());
            }
            h.writer = Some(self.id.clone());
            h.cap = h.cap.max(a.policy.size);
            h.ttl = h.ttl.max(a.policy.ttl);
            for (seq, frame) in a.entries {
                h.add(seq, now, frame);
            }
            let s = st.seqs.entry(a.room).or_default();
            *s = (*s).max(last);
            done.push(true);
        }
        let queue = st.archive.clone();
        drop(st);
        Box::pin(async move {
            let archived = match queue {
                _ if archive.is_empty() => true,
                Some(q) => {
                    let mut ok = true;
                    for r in archive {
                        if q.send(r).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    ok
                }
                None => {
                    tracing::warn!("archived rooms on a hub without an archive queue");
                    false
                }
            };
            Ok(Appended { rooms: done, archived })
        })
    }

    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
