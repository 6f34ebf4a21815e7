//! The owner of one room: a task that applies every event to the room's [`RoomCore`] and
//! carries out its actions (fan-out to members' bounded queues, bus operations). Bus
//! operations run one at a time, in order, on the room's lane task, so a slow Redis never
//! stalls the room's local fan-out; their results come back as events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde_json::value::RawValue;
use shared::archive::Marker;
use shared::ids::{Resume, RoomId, UserId};
use shared::protocol::{ClientId, close};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::appender::{self, Appender};
use crate::bus::{Bus, BusError, Control, Envelope, LoadRequest};
use crate::history::{Loaded, new_epoch};
use crate::hooks::{HookEvent, Hooks};
use crate::metrics::Metrics;
use crate::outbox;
use crate::outlet::{Outlet, Refused};
use crate::room_core::{
    Action, BusOp, Conn, Event, Hook, Mode, POST, PostError, RoomCore, Settings, To, Welcome,
};
use crate::suspects::Suspects;

/// Inputs a room queues before its senders wait (sessions and the bus reader).
pub const ROOM_QUEUE: usize = 1024;
/// Bus operations a room queues for its lane before the room waits.
const LANE_QUEUE: usize = 256;
/// The largest room that writes to its members' sockets from its own task (see
/// `Owner::deliver`).
const DIRECT_FANOUT: usize = 128;

/// Why the node closes a connection: the close code and reason it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const SLOW_CONSUMER: Self = Self { code: close::POLICY, reason: "slow consumer" };
    pub const DRAIN: Self = Self { code: close::SERVICE_RESTART, reason: "node draining" };
    pub const REMOVED: Self = Self { code: close::REMOVED, reason: "removed" };
}

/// Lets the room (slow consumer) or the node (drain, shutdown) close one connection from
/// outside. Its token is a child of the node's, so a session waits on one future for both.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: std::sync::OnceLock<CloseReason>,
    /// Set by [`Kill::kill`]: fan-out checks this plain flag for every member of every
    /// message, which is cheaper than asking the token.
    dead: AtomicBool,
}

impl Kill {
    /// A switch that also trips when `parent` (the node's shutdown token) is cancelled.
    pub fn child_of(parent: &CancellationToken) -> Self {
        Self { token: parent.child_token(), reason: Default::default(), dead: Default::default() }
    }

    /// The token a session waits on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Asks the connection to close with `reason`; the first reason wins.
    pub fn kill(&self, reason: CloseReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        self.dead.store(true, Ordering::Relaxed);
        self.token.cancel();
        first
    }
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }
    pub fn is_killed(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

/// A frame queued for one connection. A welcome stays a snapshot until the connection's
/// own session writes it, so admitting a member costs the room O(1), not O(members).
#[derive(Debug)]
pub enum Outbound {
    /// A text frame encoded for the wire ([`outbox::text`]), shared by every recipient.
    Wire(bytes::Bytes),
    Welcome(Box<Welcome>),
}

/// One connection in a room, as the room sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: u64,
    pub user: UserId,
    /// The `info` shown to other members (from the connection's token), as JSON text.
    pub info: Option<Arc<str>>,
    /// Where the room hands the connection its frames.
    pub out: Arc<Outlet>,
    pub kill: Arc<Kill>,
    /// Where the connection asks to resume from (`since`/`epoch`).
    pub resume: Option<Resume>,
    /// `history=N`: how many of the room's last messages a first connect asks for.
    pub history: usize,
}

/// Why a join was refused after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    RoomFull,
}

/// A room as `GET /admin/rooms` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub room: String,
    pub members: usize,
    pub users: usize,
    pub seq: u64,
    pub epoch: String,
    /// Messages in the room's history here, and the oldest `seq` among them.
    pub history: usize,
    pub history_from: Option<u64>,
    pub mode: &'static str,
    pub remote_nodes: Vec<String>,
}

/// What a room's owner is sent.
#[derive(Debug)]
pub(crate) enum Input {
    Join {
        member: Member,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Leave {
        conn: u64,
    },
    Publish {
        conn: u64,
        env: Envelope,
        id: Option<ClientId>,
    },
    Signal {
        conn: u64,
        body: Box<RawValue>,
    },
    Read {
        conn: u64,
        seq: u64,
    },
    Bus(Event),
    Inspect(oneshot::Sender<RoomInfo>),
    /// A server publish (frames.rs built it); answered with its `seq` or why not.
    Post {
        env: Envelope,
        reply: oneshot::Sender<Result<u64, PostError>>,
    },
    /// Who is connected here, one entry per user.
    Members(oneshot::Sender<Vec<MemberInfo>>),
    /// Closes every connection of `user` here with 4003; answered with how many.
    Remove {
        user: UserId,
        reply: oneshot::Sender<usize>,
    },
    /// The messages of the history after `since`, at most `limit`, with the room's state.
    Messages {
        since: u64,
        limit: usize,
        reply: oneshot::Sender<(RoomInfo, Vec<Utf8Bytes>)>,
    },
}

/// A user connected to a room on this node, as the server API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberInfo {
    pub user: String,
    /// Its connections here (tabs, devices).
    pub connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

static NEXT_ROOM: AtomicU64 = AtomicU64::new(1);

/// A way to reach a room's owner. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    pub id: RoomId,
    /// Tells this room apart from a later one of the same name.
    pub(crate) serial: u64,
    pub(crate) tx: mpsc::Sender<Input>,
}

impl RoomHandle {
    /// The room's state right now, or `None` when it has just closed.
    pub async fn info(&self) -> Option<RoomInfo> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Input::Inspect(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The users connected here, or `None` when the room has just closed.
    pub async fn members(&self) -> Option<Vec<MemberInfo>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Input::Members(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Closes `user`'s connections here with 4003 `removed`; how many.
    pub async fn remove(&self, user: UserId) -> Option<usize> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Remove { user, reply }).await.ok()?;
        rx.await.ok()
    }

    /// The room's state and the history after `since` (at most `limit` messages).
    pub async fn messages(&self, since: u64, limit: usize) -> Option<(RoomInfo, Vec<Utf8Bytes>)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Messages { since, limit, reply }).await.ok()?;
        rx.await.ok()
    }
}

/// What every room of a node shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub suspects: Arc<Suspects>,
    /// The node's history writer.
    pub appender: Appender,
    /// The node's webhooks.
    pub hooks: Arc<Hooks>,
    /// This node's id, for the events it raises.
    pub node: Arc<str>,
    /// Called once the room has closed, to take it out of the node's rooms.
    pub on_close: Arc<dyn Fn(&RoomHandle) + Send + Sync>,
}

/// Starts the owner and lane of a new room; the first join follows.
pub(crate) fn spawn(settings: Settings, shared: Shared) -> RoomHandle {
    let (tx, rx) = mpsc::channel(ROOM_QUEUE);
    let handle = RoomHandle {
        id: settings.room.clone(),
        serial: NEXT_ROOM.fetch_add(1, Ordering::Relaxed),
        tx,
    };
    let (lane_tx, lane_rx) = mpsc::channel(LANE_QUEUE);
    // Room results never outnumber the lane's queue plus the one in flight, so the lane
    // never waits on a room that waits on the lane.
    let (res_tx, res_rx) = mpsc::channel(LANE_QUEUE + 2);
    let load = LoadRequest {
        policy: settings.history,
        proposal: String::new(),
        durable: settings.durable,
        writer: false,
    };
    tokio::spawn(lane(settings.room.clone(), load, shared.clone(), lane_rx, res_tx));
    let owner = Owner {
        core: RoomCore::new(settings),
        handle: handle.clone(),
        shared,
        members: HashMap::new(),
        pending: HashMap::new(),
        posts: HashMap::new(),
        next_post: 0,
        left: None,
        lane: lane_tx,
        opened_at: Instant::now(),
        history_bytes: 0,
    };
    tokio::spawn(owner.run(rx, res_rx));
    handle
}

struct Owner {
    core: RoomCore,
    handle: RoomHandle,
    shared: Shared,
    members: HashMap<u64, Member>,
    /// Joiners waiting for their welcome.
    pending: HashMap<u64, (Member, oneshot::Sender<Result<(), JoinError>>)>,
    /// Server publishes waiting for their answer, by their [`POST`] conn.
    posts: HashMap<Conn, oneshot::Sender<Result<u64, PostError>>>,
    next_post: u64,
    /// Why the connection of the leave being applied was closed, for `member.left`.
    left: Option<CloseReason>,
    lane: mpsc::Sender<BusOp>,
    opened_at: Instant,
    /// The history bytes last counted into the node's gauge.
    history_bytes: usize,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, mut results: mpsc::Receiver<Event>) {
        let first = self.core.start(now());
        if self.exec(first).await {
            return self.close(rx);
        }
        loop {
            let timeout = self.core.poll_timeout();
            let sleep = async move {
                match timeout {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            let actions = tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    match self.input(input) {
                        Some(ev) => self.core.on(ev, now()),
                        None => continue,
                    }
                }
                ev = results.recv() => {
                    let Some(ev) = ev else { return };
                    self.result(ev)
                }
                _ = sleep => self.core.on(Event::Tick, now()),
            };
            if self.exec(actions).await {
                return self.close(rx);
            }
        }
    }

    /// Turns an input into the core's event, keeping the members' queues here.
    fn input(&mut self, input: Input) -> Option<Event> {
        match input {
            Input::Join { member, reply } => {
                let ev = Event::Join {
                    conn: member.conn,
                    user: member.user.clone(),
                    info: member.info.clone(),
                    resume: member.resume.clone(),
                    history: member.history,
                };
                self.pending.insert(member.conn, (member, reply));
                Some(ev)
            }
            Input::Leave { conn } => {
                self.left = self.members.remove(&conn).and_then(|m| m.kill.reason());
                self.pending.remove(&conn);
                Some(Event::Leave { conn })
            }
            Input::Publish { conn, env, id } => Some(Event::Publish { conn, env, id }),
            Input::Signal { conn, body } => Some(Event::Signal { conn, body }),
            Input::Read { conn, seq } => Some(Event::Read { conn, seq }),
            Input::Bus(ev) => Some(ev),
            Input::Inspect(reply) => {
                let _ = reply.send(self.info());
                None
            }
            Input::Post { env, reply } => {
                self.next_post += 1;
                let post = POST | self.next_post;
                self.posts.insert(post, reply);
                Some(Event::Post { post, env: Envelope { conn: post, ..env } })
            }
            Input::Members(reply) => {
                let mut by_user: std::collections::BTreeMap<&UserId, MemberInfo> =
                    Default::default();
                for m in self.members.values() {
                    let e = by_user.entry(&m.user).or_insert_with(|| MemberInfo {
                        user: m.user.to_string(),
                        connections: 0,
                        info: m.info.as_deref().and_then(|i| RawValue::from_string(i.into()).ok()),
                    });
                    e.connections += 1;
                }
                let _ = reply.send(by_user.into_values().collect());
                None
            }
            Input::Remove { user, reply } => {
                let n = self
                    .members
                    .values()
                    .filter(|m| m.user == user && m.kill.kill(CloseReason::REMOVED))
                    .count();
                let _ = reply.send(n);
                None
            }
            Input::Messages { since, limit, reply } => {
                let frames = self.core.history().after(since, limit);
                let _ = reply.send((self.info(), frames));
                None
            }
        }
    }

    /// Sends a room change to the webhooks that want it.
    fn hook(&self, h: Hook) {
        let hooks = &self.shared.hooks;
        if hooks.is_empty() {
            return;
        }
        let mut e = HookEvent {
            id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            event: "",
            room: self.handle.id.to_string(),
            node: self.shared.node.to_string(),
            ts: shared::protocol::unix_ms(),
            user: None,
            info: None,
            code: None,
            reason: None,
        };
        match h {
            Hook::Occupied => e.event = "room.occupied",
            Hook::Vacated => e.event = "room.vacated",
            Hook::Joined { user, info } => {
                e.event = "member.joined";
                e.user = Some(user.to_string());
                e.info = info.and_then(|i| RawValue::from_string(i.to_string()).ok());
            }
            Hook::Left { user } => {
                let why = self.left.unwrap_or(CloseReason { code: close::NORMAL, reason: "" });
                e.event = "member.left";
                e.user = Some(user.to_string());
                e.code = Some(why.code);
                e.reason = Some(why.reason.to_string());
            }
        }
        hooks.emit(&e);
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            room: self.handle.id.to_string(),
            members: self.core.members(),
            users: self.core.users(),
            seq: self.core.delivered(),
            epoch: self.core.epoch().to_string(),
            history: self.core.history().len(),
            history_from: self.core.history().first(),
            mode: self.core.mode().name(),
            remote_nodes: self.core.remote_nodes(),
        }
    }

    /// A bus result; holders other rooms already found dead are not waited for.
    fn result(&mut self, ev: Event) -> Vec<Action> {
        let suspects: Vec<String> = match &ev {
            Event::Registered(Some(others)) => {
                let t = now();
                others.iter().filter(|n| self.shared.suspects.is_suspect(n, t)).cloned().collect()
            }
            _ => Vec::new(),
        };
        let mut actions = self.core.on(ev, now());
        for node in suspects {
            actions.extend(self.core.on(Event::Forget { node }, now()));
        }
        actions
    }

    /// Carries out the core's actions; true once the room has closed.
    async fn exec(&mut self, actions: Vec<Action>) -> bool {
        let mut closed = false;
        for a in actions {
            match a {
                Action::Deliver { to, frame } => self.deliver(to, frame),
                Action::Admit { conn, welcome, replay } => {
                    if let Some((m, reply)) = self.pending.remove(&conn) {
                        if m.resume.is_some() {
                            let c = &self.shared.metrics;
                            if welcome.recovered {
                                c.resumes_recovered.inc()
                            } else {
                                c.resumes_lost.inc()
                            }
                        }
                        // The queue is empty: the welcome is the member's first frame, and
                        // what it missed comes before anything live.
                        let _ = m.out.push(Outbound::Welcome(welcome), false);
                        self.members.insert(conn, m);
                        for frame in replay {
                            self.deliver(To::One(conn), frame);
                        }
                        let _ = reply.send(Ok(()));
                    }
                }
                Action::Store { seq, frame } => self.shared.appender.append(appender::Entry {
                    room: self.handle.id.clone(),
                    epoch: self.core.epoch().clone(),
                    policy: self.core.history().policy(),
                    seq,
                    frame,
                    owner: self.core.durable().then(|| self.handle.tx.clone()),
                    archive: self.core.archived().then(|| self.core.archive_days()),
                }),
                Action::Archive { seq, frame } => self.shared.appender.archive(
                    &self.handle.id,
                    self.core.epoch(),
                    seq,
                    &frame,
                    self.core.archive_days(),
                ),
                Action::Mark { user, read, delivered } => self.shared.appender.mark(Marker {
                    room: self.handle.id.to_string(),
                    epoch: self.core.epoch().to_string(),
                    user: user.to_string(),
                    read,
                    delivered,
                    at: shared::protocol::unix_ms() as i64,
                }),
                Action::Refuse { conn } => {
                    if let Some((_, reply)) = self.pending.remove(&conn) {
                        let _ = reply.send(Err(JoinError::RoomFull));
                    }
                }
                Action::Bus(op) => {
                    if self.lane.send(op).await.is_err() {
                        return true;
                    }
                }
                Action::Suspect { node } => {
                    tracing::warn!(room = %self.handle.id, node, "no span sync in time; taking the node for dead");
                    self.shared.suspects.mark(&node, now());
                }
                Action::Gap { expected, got } => {
                    self.shared.metrics.bus_gaps.inc();
                    tracing::warn!(room = %self.handle.id, expected, got, "room order skipped messages the bus no longer had");
                }
                Action::Duplicate { seq } => {
                    self.shared.metrics.bus_duplicates.inc();
                    tracing::debug!(room = %self.handle.id, seq, "bus message already delivered");
                }
                Action::Mode { from, to } => self.mode_changed(from, to),
                Action::Hook(h) => self.hook(h),
                Action::Posted { post, result } => {
                    if let Some(reply) = self.posts.remove(&post) {
                        let _ = reply.send(result);
                    }
                }
                Action::Close => closed = true,
            }
        }
        self.count_history();
        closed
    }

    /// Keeps the node's history gauges in step with this room's history.
    fn count_history(&mut self) {
        let now = self.core.history().bytes();
        if now == self.history_bytes {
            return;
        }
        let m = &self.shared.metrics;
        m.history_bytes.add(now as i64 - self.history_bytes as i64);
        match (self.history_bytes, now) {
            (0, _) => m.history_rooms.inc(),
            (_, 0) => m.history_rooms.dec(),
            _ => {}
        }
        self.history_bytes = now;
    }

    fn mode_changed(&mut self, from: Mode, to: Mode) {
        let spanning = |m: Mode| matches!(m, Mode::Spanning | Mode::Unspanning);
        let m = &self.shared.metrics;
        match (spanning(from), spanning(to)) {
            (false, true) => m.spanning_rooms.inc(),
            (true, false) => m.spanning_rooms.dec(),
            _ => {}
        }
        if from == Mode::Opening && to == Mode::Spanning {
            m.span_handshake.observe(self.opened_at.elapsed());
        }
        if to == Mode::Opening {
            self.opened_at = Instant::now();
        }
        tracing::debug!(room = %self.handle.id, from = from.name(), to = to.name(), "room mode");
    }

    /// Hands `frame` to the chosen members, encoded as a WebSocket frame once for all of
    /// them; a member whose queue is full is a slow consumer and is closed, so it never
    /// slows the room. In a room of at most [`DIRECT_FANOUT`] members the room writes to an
    /// idle connection itself; a bigger room wakes its members' writers, which spreads its
    /// fan-out over the runtime's threads.
    fn deliver(&self, to: To, frame: Utf8Bytes) {
        let metrics = &self.shared.metrics;
        let wire = outbox::text(frame);
        let direct = self.members.len() <= DIRECT_FANOUT;
        let send = |m: &Member| -> u64 {
            if m.kill.is_killed() {
                return 0;
            }
            match m.out.push(Outbound::Wire(wire.clone()), direct) {
                Ok(()) => 1,
                Err(Refused::Full) => {
                    if m.kill.kill(CloseReason::SLOW_CONSUMER) {
                        metrics.slow_consumer_closes.inc();
                        tracing::info!(conn = m.conn, user = %m.user, "slow consumer: closing");
                    }
                    0
                }
                Err(Refused::Closed) => 0,
            }
        };
        let n: u64 = match to {
            To::All => self.members.values().map(send).sum(),
            To::AllBut(c) => self.members.values().filter(|m| m.conn != c).map(send).sum(),
            To::One(c) => self.members.get(&c).map(send).unwrap_or(0),
        };
        metrics.deliveries.add(n);
    }

    /// Takes the room out of the node; whoever still queued a join starts a new room.
    fn close(mut self, mut rx: mpsc::Receiver<Input>) {
        if self.history_bytes > 0 {
            self.shared.metrics.history_bytes.add(-(self.history_bytes as i64));
            self.shared.metrics.history_rooms.dec();
            self.history_bytes = 0;
        }
        (self.shared.on_close)(&self.handle);
        rx.close();
        while let Ok(input) = rx.try_recv() {
            drop(input);
        }
    }
}

/// Runs a room's bus operations in order and reports their results.
async fn lane(
    room: RoomId,
    load: LoadRequest,
    shared: Shared,
    mut ops: mpsc::Receiver<BusOp>,
    results: mpsc::Sender<Event>,
) {
    let bus = shared.bus.clone();
    let m = shared.metrics.clone();
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        m.redis_errors.inc();
        tracing::warn!(room = %room, "{what}: {e}");
    };
    while let Some(op) = ops.recv().await {
        let ev = match op {
            BusOp::Register => Some(Event::Registered(match bus.join(&room).await {
                Ok(o) => Some(o),
                Err(e) => {
                    failed("cannot register room", &e);
                    None
                }
            })),
            BusOp::Unregister => Some(Event::Unregistered(match bus.leave(&room).await {
                Ok(o) => Some(o),
                Err(e) => {
                    failed("cannot unregister room", &e);
                    None
                }
            })),
            BusOp::Subscribe => Some(Event::Subscribed(match bus.subscribe(&room).await {
                Ok(()) => true,
                Err(e) => {
                    failed("cannot subscribe", &e);
                    false
                }
            })),
            BusOp::Unsubscribe => {
                if let Err(e) = bus.unsubscribe(&room).await {
                    tracing::debug!(room = %room, "unsubscribe: {e}");
                }
                None
            }
            BusOp::RaiseSeq(s) => Some(Event::SeqRaised(match bus.raise_seq(&room, s).await {
                Ok(()) => true,
                Err(e) => {
                    failed("cannot raise seq", &e);
                    false
                }
            })),
            BusOp::ReadSeq => Some(Event::BusSeq(bus.current_seq(&room).await.ok())),
            BusOp::Holders => Some(Event::Holders(bus.holders(&room).await.ok())),
            BusOp::Prune(node) => {
                if let Err(e) = bus.prune(&room, &node).await {
                    tracing::debug!(room = %room, node, "prune: {e}");
                }
                None
            }
            BusOp::LoadHistory { local } => {
                let req = LoadRequest { proposal: new_epoch(), writer: local, ..load.clone() };
                let fresh = req.proposal.clone();
                let at = now();
                Some(Event::HistoryLoaded(match bus.load_history(&room, req).await {
                    Ok(s) => Loaded {
                        epoch: s.epoch,
                        seq: s.seq,
                        entries: s
                            .entries
                            .into_iter()
                            .map(|(seq, age, f)| (seq, at.checked_sub(age).unwrap_or(at), f))
                            .collect(),
                    },
                    Err(e) => {
                        // History works in memory meanwhile, under an epoch of its own, so
                        // no resume is wrongly recovered from what this node never saw.
                        failed("cannot read history", &e);
                        Loaded { epoch: fresh, ..Loaded::default() }
                    }
                }))
            }
            BusOp::FlushHistory => {
                shared.appender.flush().await;
                None
            }
            BusOp::CatchUp { after } => {
                Some(Event::CaughtUp(match bus.catch_up(&room, after).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        failed("cannot catch up", &e);
                        None
                    }
                }))
            }
            BusOp::Publish { conn, id, env } => {
                let seq = match bus.publish(&room, env).await {
                    Ok(s) => {
                        m.redis_publishes.inc();
                        Some(s)
                    }
                    Err(e) => {
                        failed("publish", &e);
                        None
                    }
                };
                Some(Event::Published { conn, id, seq })
            }
            BusOp::Send(env) => {
                // Notes (conn 0) are the protocol's own traffic, counted apart from members'.
                let note = env.conn == 0;
                match bus.publish(&room, env).await {
                    Ok(_) if note => m.bus_notes.inc(),
                    Ok(_) => m.redis_publishes.inc(),
                    Err(e) => tracing::debug!(room = %room, "unsequenced publish: {e}"),
                }
                None
            }
            BusOp::Span { to } => {
                match bus.send_control(&to, Control::Span { room: room.clone() }).await {
                    // Nobody hears the node: it is dead (a live one between two connections
                    // registers again on its restore). Prune it and do not wait for it.
                    Err(BusError::NotListening(n)) => {
                        let _ = bus.prune(&room, &n).await;
                        Some(Event::Absent { from: n })
                    }
                    Err(e) => {
                        tracing::debug!(node = to, "span: {e}");
                        None
                    }
                    Ok(()) => None,
                }
            }
            BusOp::Absent { to } => {
                control(&*bus, &to, Control::Absent { room: room.clone() }).await
            }
            BusOp::Left { to } => control(&*bus, &to, Control::Left { room: room.clone() }).await,
        };
        if let Some(ev) = ev
            && results.send(ev).await.is_err()
        {
            return;
        }
    }
}

/// Sends a control message; a lost one is repaired by the next repair tick.
async fn control(bus: &dyn Bus, to: &str, msg: Control) -> Option<Event> {
    if let Err(e) = bus.send_control(to, msg).await {
        tracing::debug!(node = to, "control: {e}");
    }
    None
}
