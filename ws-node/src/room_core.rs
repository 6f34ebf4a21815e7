//! A room as a sans-IO state machine: its members, presence, `seq`, and the mode that says
//! where the room's order is decided (here, or on the bus while it spans nodes).
//! [`RoomCore::on`] takes one event and the time and returns the actions to carry out; it
//! does no I/O, holds no lock and reads no clock, so every race is a unit test. One owner
//! task per room drives it (room.rs); bus operations it asks for come back as events, in
//! the order they were asked for.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use shared::ids::{Resume, RoomId, UserId};
use shared::protocol::{ClientId, ErrorCode, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Envelope, Note, stamp};
use crate::frames;
use crate::history::{History, Loaded, Policy};
use crate::markers::{Markers, Reads, Snapshot};
use crate::presence::{Change, Everyone, Presence};

/// A member's connection on this node, or (with [`POST`] set) a server publish waiting
/// for its answer: both publish the same way and are answered the same way, one as an
/// `ack` frame, the other as [`Action::Posted`].
pub type Conn = u64;

/// The bit that marks a [`Conn`] as a server publish (the node's connections count up
/// from 1 and never reach it).
pub const POST: Conn = 1 << 63;

/// Whether `conn` is a server publish rather than a member.
pub fn is_post(conn: Conn) -> bool {
    conn & POST != 0
}

/// The room's tunables (node config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: Arc<str>,
    pub room: RoomId,
    /// Members the room holds on this node; the next joiner is refused (4009).
    pub max_members: usize,
    /// How long a joining node waits for a holder's sync before taking it for dead.
    pub span_timeout: Duration,
    /// How often the room compares its holders with its mode and repairs the difference.
    pub repair_interval: Duration,
    /// How long a spanning room must be alone before it goes back to one node.
    pub unspan_grace: Duration,
    /// Publishes held while the room changes mode; past this they fail with `degraded`.
    pub max_queued: usize,
    /// How much history the room keeps.
    pub history: Policy,
    /// A resume that missed more than this many messages is not recovered.
    pub max_recovery: usize,
    /// A message this room stamps goes out (and is acked) only once the store holds it.
    pub durable: bool,
    /// Users whose read (and delivered) markers the room keeps at most.
    pub max_markers: usize,
    /// The room's messages go to the archive queue as well (`[[rooms]] archive`), and so
    /// do its users' markers.
    pub archive: bool,
    /// Days the archive keeps them (`[[rooms]] archive_days`); `None` = for good.
    pub archive_days: Option<u32>,
}

/// Where the room's events are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Registering with the bus and waiting for the other holders' syncs; joiners wait.
    Opening,
    /// On this node only: the room stamps `seq` and fans out in memory.
    Local,
    /// Becoming spanning (subscribing, handing `seq` to the bus); publishes wait.
    Switching,
    /// Members on several nodes: the bus stamps `seq`; every node delivers in its order.
    Spanning,
    /// Alone again: catching up with the bus's last `seq` before going `Local`.
    Unspanning,
    /// Emptied and leaving the bus; joiners wait and the room opens again after.
    Closing,
    /// Gone; the owner removes it.
    Closed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Opening => "opening",
            Mode::Local => "local",
            Mode::Switching => "switching",
            Mode::Spanning => "spanning",
            Mode::Unspanning => "unspanning",
            Mode::Closing => "closing",
            Mode::Closed => "closed",
        }
    }
}

/// Who a frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    All,
    AllBut(Conn),
    One(Conn),
}

/// Something that happened to the room.
#[derive(Debug, Clone)]
pub enum Event {
    Join {
        conn: Conn,
        user: UserId,
        info: Option<Arc<str>>,
        resume: Option<Resume>,
        /// `history=N` of a first connect: the last N messages follow the welcome.
        history: usize,
    },
    Leave {
        conn: Conn,
    },
    /// A member says its user has read the room up to `seq`.
    Read {
        conn: Conn,
        seq: u64,
    },
    /// A member's message, pre-serialized without its `seq` (frames.rs).
    Publish {
        conn: Conn,
        env: Envelope,
        id: Option<ClientId>,
    },
    Signal {
        conn: Conn,
        body: Box<RawValue>,
    },
    /// A message from no member (the server API): `post` has [`POST`] set and is answered
    /// with [`Action::Posted`]. It is stamped like a member's message under the room's
    /// mode; a room with no members stays open until its posts are answered.
    Post {
        post: Conn,
        env: Envelope,
    },
    // Results of the bus operations the room asked for, in the order asked.
    /// `Register`: the other live holders, or `None` when the bus failed.
    Registered(Option<Vec<String>>),
    /// `Unregister`: the holders left, or `None` when the bus failed.
    Unregistered(Option<Vec<String>>),
    Subscribed(bool),
    SeqRaised(bool),
    /// `ReadSeq`: the bus's last stamped `seq`.
    BusSeq(Option<u64>),
    Holders(Option<Vec<String>>),
    /// `Publish`: the `seq` the bus stamped, `None` when it failed.
    Published {
        conn: Conn,
        id: Option<ClientId>,
        seq: Option<u64>,
    },
    CaughtUp(Option<Vec<(u64, Utf8Bytes)>>),
    /// `LoadHistory`: what the store held (a fresh epoch when it could not be read).
    HistoryLoaded(Loaded),
    /// The store holds this room's messages up to `upto` (`ok`), or could not take them.
    Persisted {
        upto: u64,
        ok: bool,
    },
    // From other nodes.
    SpanRequest {
        from: String,
    },
    Absent {
        from: String,
    },
    Left {
        from: String,
    },
    /// A frame on the room's channel: `seq` 0 when unsequenced (signals, notes).
    BusFrame {
        seq: u64,
        origin: Arc<str>,
        conn: Conn,
        frame: Utf8Bytes,
    },
    BusLost,
    BusRestored,
    /// Time passed; the owner sends it at [`RoomCore::poll_timeout`].
    Tick,
    /// Stop waiting for `node`'s sync: another room of this node already found it dead.
    Forget {
        node: String,
    },
}

/// A bus operation the owner carries out, one at a time in order, answering with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum BusOp {
    Register,
    Unregister,
    Subscribe,
    Unsubscribe,
    RaiseSeq(u64),
    ReadSeq,
    Holders,
    Prune(String),
    CatchUp {
        after: u64,
    },
    /// Reads the room's stored history, epoch and `seq`; `local` when the room will stamp
    /// its own messages (it opens alone).
    LoadHistory {
        local: bool,
    },
    /// Waits until the store holds every message this room stamped so far; no event.
    FlushHistory,
    /// Sequenced: stamped and published atomically by the bus.
    Publish {
        conn: Conn,
        id: Option<ClientId>,
        env: Envelope,
    },
    /// Unsequenced, fire and forget (signals, notes): no event comes back.
    Send(Envelope),
    /// Control to one node; no event comes back.
    Span {
        to: String,
    },
    Absent {
        to: String,
    },
    Left {
        to: String,
    },
}

/// The joiner's first frame, as a snapshot: the session serializes it off the room's path.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub room: RoomId,
    pub user: UserId,
    pub node: Arc<str>,
    pub seq: u64,
    pub epoch: Arc<str>,
    pub recovered: bool,
    pub members: Everyone,
    pub reads: Reads,
    /// How many of the room's last messages follow (`history=N`), 0 for none.
    pub history: usize,
}

impl Welcome {
    pub fn to_json(&self) -> String {
        let members: Vec<UserId> = self.members.keys().cloned().collect();
        let info: BTreeMap<UserId, Box<RawValue>> = self
            .members
            .iter()
            .filter_map(|(u, p)| {
                let raw = RawValue::from_string(p.info.as_deref()?.to_owned()).ok()?;
                Some((u.clone(), raw))
            })
            .collect();
        ServerFrame::Welcome {
            room: self.room.clone(),
            user: self.user.clone(),
            node: self.node.to_string(),
            members,
            seq: self.seq,
            epoch: self.epoch.to_string(),
            recovered: self.recovered,
            info: (!info.is_empty()).then_some(info),
            reads: (!self.reads.is_empty())
                .then(|| self.reads.iter().map(|(u, s)| (u.clone(), *s)).collect()),
            history: (self.history > 0).then_some(self.history),
        }
        .to_json()
    }
}

/// What the owner must do.
#[derive(Debug, Clone)]
pub enum Action {
    Deliver {
        to: To,
        frame: Utf8Bytes,
    },
    /// Admit the joiner: its welcome is the first frame it gets, then the messages it
    /// missed (a recovered resume) or asked for (`history=N`), then live ones.
    Admit {
        conn: Conn,
        welcome: Box<Welcome>,
        replay: Vec<Utf8Bytes>,
    },
    /// The room is full: the joiner is closed with 4009.
    Refuse {
        conn: Conn,
    },
    Bus(BusOp),
    /// Append a message this room stamped to the store's history (batched by the node),
    /// and to the archive queue when the room is archived.
    Store {
        seq: u64,
        frame: Utf8Bytes,
    },
    /// Queue a message the bus stamped (a spanning room) for the archive. Every holder
    /// queues it, so it is archived while any of them lives; the archive keeps it once.
    Archive {
        seq: u64,
        frame: Utf8Bytes,
    },
    /// Queue a user's markers for the archive (an archived room): its read marker rose to
    /// `read`, or its last connection here left; `delivered` is how far this node handed
    /// the room to it.
    Mark {
        user: UserId,
        read: Option<u64>,
        delivered: u64,
    },
    /// `node` did not sync in time: do not wait on it in other rooms for a while.
    Suspect {
        node: String,
    },
    /// The room's order on this node skipped from `expected` to `got` (a split healed,
    /// or the bus's log no longer reached back): logged and counted.
    Gap {
        expected: u64,
        got: u64,
    },
    /// A bus message this node had already delivered: counted.
    Duplicate {
        seq: u64,
    },
    /// The mode changed (for gauges and logs).
    Mode {
        from: Mode,
        to: Mode,
    },
    /// A server publish is done: the `seq` it was stamped with (after the store took it,
    /// for a durable room), or why not.
    Posted {
        post: Conn,
        result: Result<u64, PostError>,
    },
    /// A change of the room as the whole fleet sees it, told where it happened (so once
    /// across the fleet): for webhooks.
    Hook(Hook),
    /// The room is closed; the owner removes it.
    Close,
}

/// A room change for webhooks. Each is raised only by the node where it happened: a
/// member's own node raises its join and leave, and occupied / vacated when that join or
/// leave made the room non-empty or empty across every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Occupied,
    Vacated,
    Joined {
        user: UserId,
        info: Option<Arc<str>>,
    },
    /// The owner adds the close code and reason of the member's last connection.
    Left {
        user: UserId,
    },
}

/// Why a server publish got no `seq`, or got one without the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// The room spans nodes and the bus is unavailable (or too much waits): not published.
    Degraded,
    /// A durable room delivered it as `seq` but the store could not take it.
    NotStored(u64),
}

/// A joiner waiting for the room to open.
#[derive(Debug, Clone)]
struct Joiner {
    conn: Conn,
    user: UserId,
    info: Option<Arc<str>>,
    resume: Option<Resume>,
    history: usize,
}

/// A publish waiting for the room to settle.
#[derive(Debug, Clone)]
struct Queued {
    conn: Conn,
    env: Envelope,
    id: Option<ClientId>,
}

/// A stamped message waiting for the store before it goes out (`durable`).
#[derive(Debug, Clone)]
struct Unstored {
    seq: u64,
    frame: Utf8Bytes,
    conn: Conn,
    id: Option<ClientId>,
}

#[derive(Debug, Clone)]
pub struct RoomCore {
    cfg: Settings,
    mode: Mode,
    /// The last `seq` stamped or delivered here; never moves backwards.
    seq: u64,
    /// The room's history and its epoch (empty until the store was read).
    history: History,
    epoch: Arc<str>,
    /// An opening room reads its history last; this is the mode it goes to then.
    loading: Option<Mode>,
    /// Stamped but not yet stored (`durable`), oldest first.
    unstored: VecDeque<Unstored>,
    /// The time of the event being applied (the core has no clock of its own).
    now: Instant,
    members: HashMap<Conn, UserId>,
    presence: Presence,
    /// Read markers (every node's users) and delivered markers (this node's).
    markers: Markers,
    joins: Vec<Joiner>,
    queued: VecDeque<Queued>,
    /// Server publishes taken and not yet answered: the room stays open for them.
    posts: usize,
    bus_up: bool,
    subscribed: bool,
    /// Holders whose sync a joining room waits for, until `deadline`.
    waiting: HashSet<String>,
    deadline: Option<Instant>,
    /// Holders that synced with this room while it spans.
    synced: HashSet<String>,
    /// Bus messages that arrived ahead of a gap, while a catch-up reads what is missing.
    ahead: BTreeMap<u64, Utf8Bytes>,
    catching_up: bool,
    /// The catch-up in flight was asked before the last bus restore: it may have read the
    /// log before messages the lost channel then dropped, so another one follows it.
    catch_up_stale: bool,
    /// Registered again after a bus restore: publishes wait for the `seq` to be raised.
    resync: bool,
    /// When the room was first seen alone while spanning.
    alone_since: Option<Instant>,
    /// The bus's last `seq` an unspanning room must reach.
    unspan_to: Option<u64>,
    next_repair: Option<Instant>,
    /// A holders query is in flight (repairs never overlap).
    repairing: bool,
    /// Someone must be told the room spans: after a switch, these nodes get a `Span`.
    span_after_switch: Vec<String>,
    /// An opening room was asked to span before it subscribed: it syncs once it has.
    sync_owed: bool,
}

impl RoomCore {
    pub fn new(cfg: Settings) -> Self {
        Self {
            history: History::new(cfg.history),
            markers: Markers::new(cfg.max_markers),
            cfg,
            mode: Mode::Opening,
            seq: 0,
            epoch: Arc::from(""),
            loading: None,
            unstored: VecDeque::new(),
            now: Instant::now(),
            members: HashMap::new(),
            presence: Presence::default(),
            joins: Vec::new(),
            queued: VecDeque::new(),
            posts: 0,
            bus_up: true,
            subscribed: false,
            waiting: HashSet::new(),
            deadline: None,
            synced: HashSet::new(),
            ahead: BTreeMap::new(),
            catching_up: false,
            catch_up_stale: false,
            resync: false,
            alone_since: None,
            unspan_to: None,
            next_repair: None,
            repairing: false,
            span_after_switch: Vec::new(),
            sync_owed: false,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn members(&self) -> usize {
        self.members.len()
    }
    pub fn users(&self) -> usize {
        self.presence.local_users().len()
    }
    pub fn remote_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.presence.remote_nodes().cloned().collect();
        v.sort();
        v
    }
    pub fn everyone(&self) -> &Everyone {
        self.presence.everyone()
    }
    /// Whether its messages go out only once stored.
    pub fn durable(&self) -> bool {
        self.cfg.durable
    }
    /// Whether its messages go to the archive.
    pub fn archived(&self) -> bool {
        self.cfg.archive
    }

    /// Days the archive keeps its messages (`None`: for good).
    pub fn archive_days(&self) -> Option<u32> {
        self.cfg.archive_days
    }
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }
    pub fn history(&self) -> &History {
        &self.history
    }
    /// The last `seq` every member here was sent (stamped ones may wait for the store).
    pub fn delivered(&self) -> u64 {
        self.unstored.front().map_or(self.seq, |u| u.seq - 1)
    }
    /// Every user's read marker, and the delivered marker of this node's users (for the
    /// archive and the server API).
    pub fn markers(&self) -> Snapshot {
        self.markers.snapshot(self.presence.local_users().iter().map(|(u, _)| u), self.delivered())
    }

    /// When the owner must send [`Event::Tick`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.deadline, self.next_repair].into_iter().flatten().min()
    }

    /// Applies one event at time `now`.
    pub fn on(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let before = self.mode;
        self.now = now;
        self.step(ev, now, &mut out);
        self.settle(now, &mut out);
        if self.mode != before {
            out.push(Action::Mode { from: before, to: self.mode });
        }
        out
    }

    fn set_mode(&mut self, m: Mode) {
        self.mode = m;
    }

    fn step(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        match ev {
            Event::Join { conn, user, info, resume, history } => {
                self.on_join(Joiner { conn, user, info, resume, history }, now, out)
            }
            Event::Leave { conn } => self.on_leave(conn, out),
            Event::Read { conn, seq } => self.on_read(conn, seq, out),
            Event::Publish { conn, env, id } => self.on_publish(Queued { conn, env, id }, out),
            Event::Signal { conn, body } => self.on_signal(conn, body, out),
            Event::Post { post, env } => self.on_post(post, env, now, out),
            Event::Registered(r) => self.on_registered(r, now, out),
            Event::Unregistered(r) => self.on_unregistered(r, out),
            Event::Subscribed(ok) => self.on_subscribed(ok, now, out),
            Event::SeqRaised(ok) => self.on_seq_raised(ok, out),
            Event::BusSeq(s) => self.on_bus_seq(s, out),
            Event::Holders(h) => self.on_holders(h, now, out),
            Event::Published { conn, id, seq } => self.on_published(conn, id, seq, out),
            Event::CaughtUp(r) => self.on_caught_up(r, out),
            Event::HistoryLoaded(l) => self.on_history_loaded(l, out),
            Event::Persisted { upto, ok } => self.on_persisted(upto, ok, out),
            Event::SpanRequest { from } => self.on_span_request(from, out),
            Event::Absent { from } => {
                self.waiting.remove(&from);
                self.synced.remove(&from);
                self.opened_if_synced(out);
            }
            Event::Left { from } => {
                self.synced.remove(&from);
                // Check the holders soon rather than at the next repair.
                if self.mode == Mode::Spanning {
                    self.next_repair = Some(now);
                }
            }
            Event::BusFrame { seq, origin, conn, frame } => {
                self.on_bus_frame(seq, &origin, conn, frame, out)
            }
            Event::BusLost => self.on_bus_lost(out),
            Event::BusRestored => self.on_bus_restored(out),
            Event::Tick => self.on_tick(now, out),
            Event::Forget { node } => self.on_forget(node, out),
        }
    }

    // ---- members -------------------------------------------------------------------

    fn on_join(&mut self, j: Joiner, now: Instant, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Opening | Mode::Closing => self.joins.push(j),
            Mode::Closed => {
                // A closed room takes nobody: open it again.
                self.joins.push(j);
                self.open(now, out);
            }
            _ => self.admit(j, out),
        }
    }

    fn admit(&mut self, j: Joiner, out: &mut Vec<Action>) {
        let Joiner { conn, user, info, resume, history } = j;
        if self.members.len() >= self.cfg.max_members {
            out.push(Action::Refuse { conn });
            return;
        }
        let was_empty = self.presence.everyone().is_empty();
        let (first_here, change) = self.presence.join_local(&user, info.clone());
        if was_empty {
            out.push(Action::Hook(Hook::Occupied));
        }
        if change.is_some() {
            out.push(Action::Hook(Hook::Joined { user: user.clone(), info: info.clone() }));
        }
        self.members.insert(conn, user.clone());
        let last = self.delivered();
        self.history.trim(self.now);
        let (recovered, replay) = match resume {
            Some(r) if *r.epoch == *self.epoch => {
                match self.history.replay(r.since, last, self.cfg.max_recovery) {
                    Some(replay) => (true, replay),
                    None => (false, Vec::new()),
                }
            }
            Some(_) => (false, Vec::new()),
            // A first connect: the room's last messages, as many as held and allowed.
            None => (false, self.history.newest(last, history.min(self.cfg.max_recovery))),
        };
        let welcome = Welcome {
            room: self.cfg.room.clone(),
            user: user.clone(),
            node: self.cfg.node.clone(),
            seq: last,
            epoch: self.epoch.clone(),
            recovered,
            members: self.presence.everyone().clone(),
            reads: self.markers.reads().clone(),
            history: if recovered { 0 } else { replay.len() },
        };
        out.push(Action::Admit { conn, welcome: Box::new(welcome), replay });
        if let Some(c) = change {
            out.push(presence_frame(&c, To::AllBut(conn)));
        }
        if first_here && self.spans() {
            let info = info.map(|i| i.to_string());
            out.push(Action::Bus(BusOp::Send(
                Note::Presence { user, present: true, info }.envelope(),
            )));
        }
    }

    fn on_leave(&mut self, conn: Conn, out: &mut Vec<Action>) {
        if let Some(i) = self.joins.iter().position(|j| j.conn == conn) {
            self.joins.remove(i);
            return;
        }
        let Some(user) = self.members.remove(&conn) else { return };
        self.queued.retain(|q| q.conn != conn);
        let (last_here, change) = self.presence.leave_local(&user);
        if last_here {
            let delivered = self.delivered();
            let presence = &self.presence;
            self.markers.left(&user, delivered, |u| presence.everyone().contains_key(u));
            if self.cfg.archive {
                out.push(Action::Mark { user: user.clone(), read: None, delivered });
            }
        }
        if let Some(c) = change {
            out.push(presence_frame(&c, To::All));
            out.push(Action::Hook(Hook::Left { user: user.clone() }));
            if self.presence.everyone().is_empty() {
                out.push(Action::Hook(Hook::Vacated));
            }
        }
        if last_here && self.spans() {
            out.push(Action::Bus(BusOp::Send(
                Note::Presence { user, present: false, info: None }.envelope(),
            )));
        }
    }

    /// A member's read marker: checked against what the room delivered, kept when it rises,
    /// told to the other members here and (through the channel) on every node.
    fn on_read(&mut self, conn: Conn, seq: u64, out: &mut Vec<Action>) {
        let Some(user) = self.members.get(&conn).cloned() else { return };
        let last = self.delivered();
        if seq > last {
            let why = format!("read seq {seq} is above the room's seq {last}");
            let frame = frames::text(&ServerFrame::error(ErrorCode::BadRead, why));
            out.push(Action::Deliver { to: To::One(conn), frame });
            return;
        }
        let presence = &self.presence;
        if !self.markers.read(&user, seq, |u| presence.everyone().contains_key(u)) {
            return;
        }
        if self.cfg.archive {
            out.push(Action::Mark { user: user.clone(), read: Some(seq), delivered: last });
        }
        let frame = frames::text(&ServerFrame::Read { user: user.clone(), seq });
        out.push(Action::Deliver { to: To::AllBut(conn), frame });
        if self.spans() && self.bus_up {
            out.push(Action::Bus(BusOp::Send(Note::Read { user, seq }.envelope())));
        }
        // Otherwise the next sync carries it: a switch, a restore and a span all sync.
    }

    /// A read marker from another node. One above what this node delivered (a message it
    /// lost and is catching up, a history being read) waits until it has, so a member
    /// never hears of a read before the message: see [`RoomCore::release_reads`].
    fn remote_read(&mut self, user: UserId, seq: u64, out: &mut Vec<Action>) {
        if seq > self.delivered() {
            self.markers.hold(&user, seq);
            return;
        }
        let presence = &self.presence;
        if self.markers.read(&user, seq, |u| presence.everyone().contains_key(u))
            && !self.members.is_empty()
        {
            let frame = frames::text(&ServerFrame::Read { user, seq });
            out.push(Action::Deliver { to: To::All, frame });
        }
    }

    /// Applies the other nodes' markers that waited for this node to deliver their `seq`.
    fn release_reads(&mut self, out: &mut Vec<Action>) {
        for (user, seq) in self.markers.release(self.delivered()) {
            self.remote_read(user, seq, out);
        }
    }

    /// Whether the room's channel carries this node's notes (it is subscribed and others
    /// listen).
    fn spans(&self) -> bool {
        matches!(self.mode, Mode::Spanning | Mode::Unspanning | Mode::Switching) && self.subscribed
    }

    // ---- publishing ----------------------------------------------------------------

    fn on_post(&mut self, post: Conn, env: Envelope, now: Instant, out: &mut Vec<Action>) {
        debug_assert!(is_post(post));
        self.posts += 1;
        if self.mode == Mode::Closed {
            // A closed room takes nothing: open it again for the post.
            self.open(now, out);
        }
        self.on_publish(Queued { conn: post, env, id: None }, out);
    }

    fn on_publish(&mut self, q: Queued, out: &mut Vec<Action>) {
        if !is_post(q.conn) && !self.members.contains_key(&q.conn) {
            return;
        }
        match self.mode {
            Mode::Local => self.stamp_here(q, out),
            Mode::Spanning if !self.resync && self.bus_up => {
                out.push(Action::Bus(BusOp::Publish { conn: q.conn, id: q.id, env: q.env }));
            }
            Mode::Spanning if !self.bus_up => self.degraded(q.conn, out),
            _ => {
                if self.queued.len() >= self.cfg.max_queued {
                    self.degraded(q.conn, out);
                } else {
                    self.queued.push_back(q);
                }
            }
        }
    }

    fn stamp_here(&mut self, q: Queued, out: &mut Vec<Action>) {
        self.seq += 1;
        let frame = stamp(&q.env, self.seq);
        if self.cfg.history.is_on() || self.cfg.archive {
            out.push(Action::Store { seq: self.seq, frame: frame.clone() });
            if self.cfg.durable {
                let u = Unstored { seq: self.seq, frame, conn: q.conn, id: q.id };
                self.unstored.push_back(u);
                return;
            }
        }
        self.history.push(self.seq, self.now, frame.clone());
        out.push(Action::Deliver { to: To::All, frame });
        self.ack(q.conn, q.id, self.seq, out);
    }

    /// The store took (or could not take) this room's messages up to `upto`: the ones that
    /// waited for it go out; without the store they still go out, but unacknowledged.
    fn on_persisted(&mut self, upto: u64, ok: bool, out: &mut Vec<Action>) {
        while self.unstored.front().is_some_and(|u| u.seq <= upto) {
            let Some(u) = self.unstored.pop_front() else { break };
            self.history.push(u.seq, self.now, u.frame.clone());
            out.push(Action::Deliver { to: To::All, frame: u.frame });
            if ok {
                self.ack(u.conn, u.id, u.seq, out);
            } else {
                self.not_stored(u.conn, u.seq, out);
            }
        }
    }

    /// Sends the publishes that waited, now that the room has settled.
    fn flush_queued(&mut self, out: &mut Vec<Action>) {
        // Each once: one that must wait again (a resync still raising `seq`) goes back to
        // the end in order, and the room does not spin on it.
        for _ in 0..self.queued.len() {
            let Some(q) = self.queued.pop_front() else { break };
            self.on_publish(q, out);
            if !matches!(self.mode, Mode::Local | Mode::Spanning) {
                break;
            }
        }
    }

    fn on_published(
        &mut self,
        conn: Conn,
        id: Option<ClientId>,
        seq: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        match seq {
            Some(seq) => self.ack(conn, id, seq, out),
            None => self.degraded(conn, out),
        }
    }

    fn on_signal(&mut self, conn: Conn, body: Box<RawValue>, out: &mut Vec<Action>) {
        let Some(user) = self.members.get(&conn) else { return };
        let frame = ServerFrame::Signal { from: user.clone(), body };
        if self.spans() && self.bus_up {
            out.push(Action::Bus(BusOp::Send(frames::unsequenced(conn, &frame))));
        } else if self.spans() {
            self.degraded(conn, out);
        } else {
            out.push(Action::Deliver { to: To::AllBut(conn), frame: frames::text(&frame) });
        }
    }

    // ---- opening and closing -------------------------------------------------------

    fn open(&mut self, _now: Instant, out: &mut Vec<Action>) {
        self.set_mode(Mode::Opening);
        self.loading = None;
        self.waiting.clear();
        self.synced.clear();
        self.deadline = None;
        out.push(Action::Bus(BusOp::Register));
    }

    /// The first event of a new room.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.open(now, &mut out);
        out
    }

    fn on_registered(&mut self, r: Option<Vec<String>>, now: Instant, out: &mut Vec<Action>) {
        let others: Vec<String> = match r {
            Some(o) => o.into_iter().filter(|n| **n != *self.cfg.node).collect(),
            None => {
                // The room works on this node meanwhile; a restore registers it again.
                if self.mode == Mode::Opening {
                    self.finish_open(Mode::Local, out);
                }
                return;
            }
        };
        match self.mode {
            Mode::Opening if others.is_empty() => self.finish_open(Mode::Local, out),
            Mode::Opening => {
                self.waiting = others.into_iter().collect();
                self.deadline = Some(now + self.cfg.span_timeout);
                out.push(Action::Bus(BusOp::Subscribe));
            }
            Mode::Local if !others.is_empty() => self.switch(others, out),
            Mode::Spanning => {
                // After a restore: make sure every holder spans with us again.
                for n in others {
                    out.push(Action::Bus(BusOp::Span { to: n }));
                }
            }
            _ => {}
        }
    }

    fn on_subscribed(&mut self, ok: bool, _now: Instant, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Opening => {
                if !ok {
                    // Cannot span: stay on this node; the repair tries again.
                    self.waiting.clear();
                    self.deadline = None;
                    self.finish_open(Mode::Local, out);
                    return;
                }
                self.subscribed = true;
                let mut waiting: Vec<&String> = self.waiting.iter().collect();
                waiting.sort();
                for n in waiting {
                    out.push(Action::Bus(BusOp::Span { to: n.clone() }));
                }
                if std::mem::take(&mut self.sync_owed) {
                    self.sync(out);
                }
                self.opened_if_synced(out);
            }
            Mode::Switching => {
                if ok {
                    self.subscribed = true;
                    out.push(Action::Bus(BusOp::RaiseSeq(self.seq)));
                } else {
                    self.set_mode(Mode::Local);
                    self.span_after_switch.clear();
                    self.flush_queued(out);
                }
            }
            _ => {}
        }
    }

    /// Local -> spanning: subscribe, hand `seq` to the bus, then sync.
    fn switch(&mut self, tell: Vec<String>, out: &mut Vec<Action>) {
        self.set_mode(Mode::Switching);
        self.span_after_switch = tell;
        // What this node stamped is stored before the bus stamps: a holder that reads the
        // history after our sync finds all of it.
        out.push(Action::Bus(BusOp::FlushHistory));
        if self.subscribed {
            out.push(Action::Bus(BusOp::RaiseSeq(self.seq)));
        } else {
            out.push(Action::Bus(BusOp::Subscribe));
        }
    }

    fn on_seq_raised(&mut self, ok: bool, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Switching if ok => {
                self.set_mode(Mode::Spanning);
                self.alone_since = None;
                self.sync(out);
                for n in std::mem::take(&mut self.span_after_switch) {
                    out.push(Action::Bus(BusOp::Span { to: n }));
                }
                self.flush_queued(out);
            }
            Mode::Switching => {
                // No Sync: nobody is told we span when we do not.
                self.set_mode(Mode::Local);
                self.span_after_switch.clear();
                self.subscribed = false;
                out.push(Action::Bus(BusOp::Unsubscribe));
                self.flush_queued(out);
            }
            Mode::Spanning if self.resync => {
                if ok {
                    self.resync = false;
                    self.sync(out);
                    self.flush_queued(out);
                } else {
                    // Still down; the next restore raises again.
                    self.fail_queued(out);
                }
            }
            _ => {}
        }
    }

    fn sync(&self, out: &mut Vec<Action>) {
        let users =
            self.presence.local_users().into_iter().map(|(u, i)| (u, i.map(|i| i.to_string())));
        // Held markers too: this node may be the only one left that was told them.
        let reads = self.markers.known();
        let note = Note::Sync { seq: self.seq, users: users.collect(), reads };
        out.push(Action::Bus(BusOp::Send(note.envelope())));
    }

    fn opened_if_synced(&mut self, out: &mut Vec<Action>) {
        if self.mode == Mode::Opening
            && self.subscribed
            && self.waiting.is_empty()
            && self.loading.is_none()
        {
            self.deadline = None;
            if self.synced.is_empty() {
                // Every other holder was gone: the room is ours alone.
                self.subscribed = false;
                out.push(Action::Bus(BusOp::Unsubscribe));
                self.ahead.clear();
                self.finish_open(Mode::Local, out);
            } else {
                self.finish_open(Mode::Spanning, out);
            }
        }
    }

    fn admit_waiting(&mut self, out: &mut Vec<Action>) {
        for j in std::mem::take(&mut self.joins) {
            self.admit(j, out);
        }
        self.flush_queued(out);
    }

    /// The last step of opening: read the history (after every holder synced, so it holds
    /// all they stamped), then go to `target` and welcome the joiners.
    fn finish_open(&mut self, target: Mode, out: &mut Vec<Action>) {
        if self.loading.is_none() {
            self.loading = Some(target);
            out.push(Action::Bus(BusOp::LoadHistory { local: target == Mode::Local }));
        }
    }

    fn on_history_loaded(&mut self, l: Loaded, out: &mut Vec<Action>) {
        if self.mode != Mode::Opening {
            return;
        }
        let Some(target) = self.loading.take() else { return };
        self.epoch = Arc::from(l.epoch);
        self.history.load(l.entries, self.now);
        self.seq = self.seq.max(l.seq);
        // What the channel carried while the store was read: the part it did not hold.
        for (seq, frame) in std::mem::take(&mut self.ahead) {
            if seq > self.seq {
                self.deliver_bus(seq, frame, out);
            }
        }
        self.set_mode(target);
        if target == Mode::Spanning {
            self.sync(out);
        }
        self.admit_waiting(out);
        if self.mode == Mode::Local && std::mem::take(&mut self.sync_owed) {
            // Asked to span after it had found itself alone: the asker waits for our sync
            // (and would take us for dead without it), so span now rather than split.
            self.switch(Vec::new(), out);
        }
    }

    /// After every event: an empty room closes; a settled room sends what waited.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.release_reads(out);
        if self.members.is_empty()
            && self.joins.is_empty()
            && self.posts == 0
            && matches!(self.mode, Mode::Local | Mode::Spanning)
        {
            self.set_mode(Mode::Closing);
            self.queued.clear();
            self.ahead.clear();
            if self.subscribed {
                self.subscribed = false;
                out.push(Action::Bus(BusOp::Unsubscribe));
            }
            // The next owner reads the history once we have left: it must all be stored.
            out.push(Action::Bus(BusOp::FlushHistory));
            out.push(Action::Bus(BusOp::Unregister));
        }
        if matches!(self.mode, Mode::Local | Mode::Spanning) && self.next_repair.is_none() {
            self.next_repair = Some(now + self.cfg.repair_interval);
        }
    }

    fn on_unregistered(&mut self, left: Option<Vec<String>>, out: &mut Vec<Action>) {
        if self.mode != Mode::Closing {
            return;
        }
        for n in left.unwrap_or_default().into_iter().filter(|n| **n != *self.cfg.node) {
            out.push(Action::Bus(BusOp::Left { to: n }));
        }
        self.presence = Presence::default();
        self.synced.clear();
        self.next_repair = None;
        if self.joins.is_empty() && self.posts == 0 {
            // Every user has left: their markers go with the room (the archive keeps them).
            self.markers.clear();
            self.set_mode(Mode::Closed);
            out.push(Action::Close);
        } else {
            // Joiners or posts came while closing: the room opens again, keeping its `seq`.
            self.set_mode(Mode::Opening);
            out.push(Action::Bus(BusOp::Register));
        }
    }

    // ---- spanning ------------------------------------------------------------------

    fn on_span_request(&mut self, from: String, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Local => self.switch(Vec::new(), out),
            Mode::Spanning if !self.resync => self.sync(out),
            // Two nodes opening at once wait for each other: an opening room has nobody
            // to welcome yet, so it can say it spans as soon as it listens. The asker
            // listens already and takes our sync as a promise: it counts as synced, so this
            // room opens spanning too rather than alone (a split) when nobody else syncs.
            Mode::Opening if self.subscribed => {
                self.synced.insert(from);
                self.sync(out)
            }
            Mode::Opening => {
                self.synced.insert(from);
                self.sync_owed = true
            }
            Mode::Closing | Mode::Closed => out.push(Action::Bus(BusOp::Absent { to: from })),
            Mode::Unspanning => {
                self.set_mode(Mode::Spanning);
                self.unspan_to = None;
                self.alone_since = None;
                self.sync(out);
                self.flush_queued(out);
            }
            // Switching syncs when it is done; a resync once `seq` is raised.
            _ => {}
        }
    }

    fn on_bus_frame(
        &mut self,
        seq: u64,
        origin: &str,
        conn: Conn,
        frame: Utf8Bytes,
        out: &mut Vec<Action>,
    ) {
        match self.mode {
            Mode::Local | Mode::Closing | Mode::Closed => return,
            _ if !self.subscribed => return,
            _ => {}
        }
        if seq > 0 {
            self.on_bus_message(seq, frame, out);
            return;
        }
        let own = origin == &*self.cfg.node;
        if !frame.as_str().starts_with(Note::PREFIX) {
            // A signal: our own skips its sender.
            if !self.members.is_empty() {
                let to = if own { To::AllBut(conn) } else { To::All };
                out.push(Action::Deliver { to, frame });
            }
            return;
        }
        if own {
            return;
        }
        let Ok(note) = serde_json::from_str::<Note>(frame.as_str()) else { return };
        match note {
            Note::Sync { seq, users, reads } => {
                let users = users.into_iter().map(|(u, i)| (u, i.map(Arc::from))).collect();
                for c in self.presence.replace_remote(origin, users) {
                    out.push(presence_frame(&c, To::All));
                }
                self.synced.insert(origin.to_owned());
                self.waiting.remove(origin);
                if self.mode == Mode::Opening {
                    self.seq = self.seq.max(seq);
                }
                for (user, at) in reads {
                    self.remote_read(user, at, out);
                }
                self.alone_since = None;
                self.opened_if_synced(out);
            }
            Note::Presence { user, present, info } => {
                self.synced.insert(origin.to_owned());
                let info = info.map(Arc::from);
                if let Some(c) = self.presence.set_remote(origin, &user, present, info) {
                    out.push(presence_frame(&c, To::All));
                }
            }
            Note::Read { user, seq } => self.remote_read(user, seq, out),
        }
    }

    fn on_bus_message(&mut self, seq: u64, frame: Utf8Bytes, out: &mut Vec<Action>) {
        if self.mode == Mode::Opening {
            if self.loading.is_some() {
                // The history is being read: whatever it lacks comes from here.
                self.ahead.insert(seq, frame);
            } else {
                // Nobody is welcomed yet; the history read after the syncs holds this.
                self.seq = self.seq.max(seq);
            }
            return;
        }
        if seq <= self.seq {
            out.push(Action::Duplicate { seq });
            return;
        }
        if seq == self.seq + 1 && self.ahead.is_empty() {
            self.deliver_bus(seq, frame, out);
            self.unspanned_if_caught_up(out);
            return;
        }
        self.ahead.insert(seq, frame);
        if !self.catching_up {
            self.catching_up = true;
            out.push(Action::Bus(BusOp::CatchUp { after: self.seq }));
        }
    }

    fn deliver_bus(&mut self, seq: u64, frame: Utf8Bytes, out: &mut Vec<Action>) {
        if seq != self.seq + 1 {
            out.push(Action::Gap { expected: self.seq + 1, got: seq });
        }
        self.seq = seq;
        self.history.push(seq, self.now, frame.clone());
        if self.cfg.archive {
            out.push(Action::Archive { seq, frame: frame.clone() });
        }
        if !self.members.is_empty() {
            out.push(Action::Deliver { to: To::All, frame });
        }
    }

    fn on_caught_up(&mut self, r: Option<Vec<(u64, Utf8Bytes)>>, out: &mut Vec<Action>) {
        for (seq, frame) in r.unwrap_or_default() {
            self.ahead.entry(seq).or_insert(frame);
        }
        if std::mem::take(&mut self.catch_up_stale)
            && matches!(self.mode, Mode::Spanning | Mode::Unspanning)
        {
            // Read before the restore: what it lacks may still be in the log. What follows
            // on without a gap goes out; the rest waits for a catch-up read after it.
            while let Some(e) = self.ahead.first_entry()
                && *e.key() <= self.seq + 1
            {
                let (seq, frame) = e.remove_entry();
                if seq > self.seq {
                    self.deliver_bus(seq, frame, out);
                }
            }
            out.push(Action::Bus(BusOp::CatchUp { after: self.seq }));
            return;
        }
        self.catching_up = false;
        // Everything held now goes out in order; what the bus no longer had is a gap.
        for (seq, frame) in std::mem::take(&mut self.ahead) {
            if seq > self.seq {
                self.deliver_bus(seq, frame, out);
            }
        }
        self.unspanned_if_caught_up(out);
    }

    fn on_holders(&mut self, h: Option<Vec<String>>, now: Instant, out: &mut Vec<Action>) {
        self.repairing = false;
        let Some(holders) = h else { return };
        let me_in = holders.iter().any(|n| **n == *self.cfg.node);
        let others: Vec<String> =
            holders.iter().filter(|n| **n != *self.cfg.node).cloned().collect();
        if !me_in && matches!(self.mode, Mode::Local | Mode::Spanning) {
            // Pruned by a peer that took us for dead: register again (and span then).
            out.push(Action::Bus(BusOp::Register));
        }
        match self.mode {
            Mode::Local if !others.is_empty() => {
                // A split: another node holds the room and we did not know.
                self.switch(others, out);
            }
            Mode::Spanning => {
                // Nodes that left or died: their users leave.
                let gone: Vec<String> =
                    self.presence.remote_nodes().filter(|n| !others.contains(n)).cloned().collect();
                for n in gone {
                    self.synced.remove(&n);
                    for c in self.presence.drop_remote(&n) {
                        out.push(presence_frame(&c, To::All));
                    }
                }
                self.synced.retain(|n| others.contains(n));
                // Holders we never heard from get our span again (it may have been lost).
                for n in others.iter().filter(|n| !self.synced.contains(*n)) {
                    out.push(Action::Bus(BusOp::Span { to: n.clone() }));
                }
                if others.is_empty() && me_in {
                    let since = *self.alone_since.get_or_insert(now);
                    if now.duration_since(since) >= self.cfg.unspan_grace {
                        self.set_mode(Mode::Unspanning);
                        out.push(Action::Bus(BusOp::ReadSeq));
                    } else {
                        self.next_repair = Some(since + self.cfg.unspan_grace);
                    }
                } else {
                    self.alone_since = None;
                }
            }
            _ => {}
        }
    }

    fn on_bus_seq(&mut self, s: Option<u64>, out: &mut Vec<Action>) {
        if self.mode != Mode::Unspanning {
            return;
        }
        let last = s.unwrap_or(self.seq);
        self.unspan_to = Some(last);
        if self.seq < last && !self.catching_up {
            self.catching_up = true;
            out.push(Action::Bus(BusOp::CatchUp { after: self.seq }));
        }
        self.unspanned_if_caught_up(out);
    }

    fn unspanned_if_caught_up(&mut self, out: &mut Vec<Action>) {
        if self.mode != Mode::Unspanning || self.catching_up {
            return;
        }
        let Some(last) = self.unspan_to else { return };
        // The catch-up delivered all the bus still had; what it did not have is lost.
        self.seq = self.seq.max(last);
        self.unspan_to = None;
        self.alone_since = None;
        self.subscribed = false;
        self.synced.clear();
        for n in self.presence.remote_nodes().cloned().collect::<Vec<_>>() {
            for c in self.presence.drop_remote(&n) {
                out.push(presence_frame(&c, To::All));
            }
        }
        out.push(Action::Bus(BusOp::Unsubscribe));
        self.set_mode(Mode::Local);
        self.flush_queued(out);
    }

    // ---- the bus going away and coming back ----------------------------------------

    fn on_bus_lost(&mut self, out: &mut Vec<Action>) {
        self.bus_up = false;
        if self.mode == Mode::Spanning && !self.members.is_empty() {
            let frame = frames::text(&ServerFrame::error(
                ErrorCode::Degraded,
                "room spans nodes and Redis is unreachable; publishes fail until it is back",
            ));
            out.push(Action::Deliver { to: To::All, frame });
        }
    }

    fn on_bus_restored(&mut self, out: &mut Vec<Action>) {
        self.bus_up = true;
        match self.mode {
            Mode::Local => out.push(Action::Bus(BusOp::Register)),
            Mode::Spanning => {
                // Redis may have restarted empty: raise its `seq` from ours before anyone
                // publishes again, catch up on what the channel dropped, and span again.
                self.resync = true;
                out.push(Action::Bus(BusOp::Register));
                out.push(Action::Bus(BusOp::RaiseSeq(self.seq)));
                if self.catching_up {
                    self.catch_up_stale = true;
                } else {
                    self.catching_up = true;
                    out.push(Action::Bus(BusOp::CatchUp { after: self.seq }));
                }
            }
            _ => {}
        }
    }

    fn fail_queued(&mut self, out: &mut Vec<Action>) {
        for q in std::mem::take(&mut self.queued) {
            self.degraded(q.conn, out);
        }
    }

    // ---- time ----------------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.history.trim(now);
        if let Some(d) = self.deadline
            && now >= d
        {
            self.deadline = None;
            // Holders that never synced are taken for dead: prune them, go on without.
            let mut dead: Vec<String> = self.waiting.drain().collect();
            dead.sort();
            for n in dead {
                out.push(Action::Suspect { node: n.clone() });
                out.push(Action::Bus(BusOp::Prune(n)));
            }
            self.opened_if_synced(out);
        }
        if let Some(r) = self.next_repair
            && now >= r
        {
            self.next_repair = Some(now + self.cfg.repair_interval);
            if !self.repairing && self.bus_up && matches!(self.mode, Mode::Local | Mode::Spanning) {
                self.repairing = true;
                out.push(Action::Bus(BusOp::Holders));
            }
        }
    }

    fn on_forget(&mut self, node: String, out: &mut Vec<Action>) {
        if self.waiting.remove(&node) {
            out.push(Action::Bus(BusOp::Prune(node)));
            self.opened_if_synced(out);
        }
    }
}

fn presence_frame(c: &Change, to: To) -> Action {
    let info = c.info.as_deref().and_then(|i| RawValue::from_string(i.to_owned()).ok());
    let frame = ServerFrame::Presence { event: c.event, user: c.user.clone(), info };
    Action::Deliver { to, frame: frames::text(&frame) }
}

impl RoomCore {
    /// Answers a publisher: an `ack` to a member that sent an `id`, the `seq` to a post.
    fn ack(&mut self, conn: Conn, id: Option<ClientId>, seq: u64, out: &mut Vec<Action>) {
        if is_post(conn) {
            self.posted(conn, Ok(seq), out);
        } else if let Some(id) = id {
            let frame = frames::text(&ServerFrame::Ack { id, seq });
            out.push(Action::Deliver { to: To::One(conn), frame });
        }
    }

    fn not_stored(&mut self, conn: Conn, seq: u64, out: &mut Vec<Action>) {
        if is_post(conn) {
            return self.posted(conn, Err(PostError::NotStored(seq)), out);
        }
        let frame = frames::text(&ServerFrame::error(
            ErrorCode::Degraded,
            "the history store is unavailable; the message went out but is not acknowledged",
        ));
        out.push(Action::Deliver { to: To::One(conn), frame });
    }

    fn degraded(&mut self, conn: Conn, out: &mut Vec<Action>) {
        if is_post(conn) {
            return self.posted(conn, Err(PostError::Degraded), out);
        }
        let frame = frames::text(&ServerFrame::error(
            ErrorCode::Degraded,
            "room spans nodes and the bus is unavailable; the message was not published",
        ));
        out.push(Action::Deliver { to: To::One(conn), frame });
    }

    fn posted(&mut self, post: Conn, result: Result<u64, PostError>, out: &mut Vec<Action>) {
        self.posts = self.posts.saturating_sub(1);
        out.push(Action::Posted { post, result });
    }
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
