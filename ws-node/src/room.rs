//! Rooms on this node: members, presence, the per-room `seq`, fan-out to members' bounded
//! queues, and the mode that says whether the room is on this node only or spans nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::value::RawValue;
use shared::ids::{RoomId, UserId};
use shared::protocol::{ClientId, PresenceEvent, ServerFrame, close, unix_ms};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError, Envelope, stamp};
use crate::frames;
use crate::metrics::Metrics;

/// Why the node closes a connection: the close code and reason it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const SLOW_CONSUMER: Self = Self { code: close::POLICY, reason: "slow consumer" };
    pub const DRAIN: Self = Self { code: close::SERVICE_RESTART, reason: "node draining" };
}

/// Lets the room (slow consumer) or the node (drain, shutdown) close one connection from
/// outside. Its token is a child of the node's, so a session waits on one future for both.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: std::sync::OnceLock<CloseReason>,
    /// Set by [`Kill::kill`]: fan-out checks this plain flag for every member of every
    /// message, which is cheaper than asking the token.
    dead: std::sync::atomic::AtomicBool,
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
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        self.token.cancel();
        first
    }
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }
    pub fn is_killed(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One connection in a room, as the room sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: u64,
    pub user: UserId,
    pub tx: mpsc::Sender<Message>,
    pub kill: Arc<Kill>,
}

/// Where a room's events are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Registering with the bus; joiners wait.
    Opening,
    /// On this node only: the room stamps `seq` and fans out in memory.
    Local,
    /// Becoming spanning (subscribing, handing `seq` to the bus); publishers wait.
    Switching,
    /// Members on several nodes: the bus stamps `seq` and every node delivers in its order.
    Spanning,
    /// Back to one node: waiting for the last bus message before going `Local`.
    Unspanning,
    /// Emptied and leaving the bus; joiners wait and then open a new room.
    Closing,
}

#[derive(Debug)]
pub(crate) struct RoomState {
    pub(crate) members: HashMap<u64, Member>,
    /// Local users with their connection count: presence is per user, not per tab.
    pub(crate) users: HashMap<UserId, u32>,
    /// Users on other nodes (spanning rooms), per node.
    pub(crate) remote: HashMap<String, HashMap<UserId, u32>>,
    /// The last `seq` delivered here.
    pub(crate) seq: u64,
    pub(crate) mode: Mode,
    /// Subscribed to the room's bus channel.
    pub(crate) subscribed: bool,
    /// Removed from the registry: joiners must look the room up again.
    pub(crate) closed: bool,
}

/// A room on this node.
#[derive(Debug)]
pub struct Room {
    pub id: RoomId,
    state: Mutex<RoomState>,
    /// Woken on every mode change; waiters register before checking the mode.
    pub(crate) changed: Notify,
}

impl Room {
    fn new(id: RoomId) -> Self {
        Self {
            id,
            state: Mutex::new(RoomState {
                members: HashMap::new(),
                users: HashMap::new(),
                remote: HashMap::new(),
                seq: 0,
                mode: Mode::Opening,
                subscribed: false,
                closed: false,
            }),
            changed: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Sets the mode and wakes everyone waiting on it.
    pub(crate) fn set_mode(&self, st: &mut RoomState, mode: Mode) {
        st.mode = mode;
        self.changed.notify_waiters();
    }

    /// Waits until `ready` holds for the state, checking after every mode change.
    pub(crate) async fn wait_for(&self, ready: impl Fn(&RoomState) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&self.lock()) {
                return;
            }
            notified.await;
        }
    }
}

impl RoomState {
    /// Every user in the room, on every node, once each, sorted.
    pub(crate) fn all_users(&self) -> Vec<UserId> {
        let mut v: Vec<UserId> =
            self.users.keys().chain(self.remote.values().flat_map(|m| m.keys())).cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    pub(crate) fn local_users(&self) -> Vec<UserId> {
        self.users.keys().cloned().collect()
    }

    /// Queues `frame` to every member but `skip`; a member whose queue is full is a slow
    /// consumer and is closed, so it never slows the room. Returns the frames queued.
    pub(crate) fn fan_out(&self, frame: &Utf8Bytes, skip: Option<u64>, metrics: &Metrics) -> u64 {
        let mut n = 0;
        for m in self.members.values() {
            if Some(m.conn) == skip || m.kill.is_killed() {
                continue;
            }
            match m.tx.try_send(Message::Text(frame.clone())) {
                Ok(()) => n += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if m.kill.kill(CloseReason::SLOW_CONSUMER) {
                        metrics.slow_consumer_closes.inc();
                        tracing::info!(conn = m.conn, user = %m.user, "slow consumer: closing");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        metrics.deliveries.add(n);
        n
    }

    /// Applies a presence event of a user on node `node` to the remote view.
    pub(crate) fn apply_remote_presence(&mut self, node: &str, event: PresenceEvent, user: UserId) {
        let users = self.remote.entry(node.to_owned()).or_default();
        match event {
            PresenceEvent::Join => *users.entry(user).or_default() += 1,
            PresenceEvent::Leave => {
                if let Some(n) = users.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        users.remove(&user);
                    }
                }
                if users.is_empty() {
                    self.remote.remove(node);
                }
            }
        }
    }
}

/// Why a join was refused after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    RoomFull,
}

/// Why a publish did not go out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("room spans nodes and the bus is unavailable: {0}")]
    Degraded(#[from] BusError),
}

/// What a publish leads to, decided under the room lock.
enum Step {
    Done(u64),
    Bus(Envelope),
    Wait,
}

/// Every room on this node, and the bus they share.
pub struct Rooms {
    map: Mutex<HashMap<RoomId, Arc<Room>>>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) node_id: Arc<str>,
    max_members: usize,
    pub(crate) span: crate::span::Spans,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms").field("node_id", &self.node_id).finish()
    }
}

impl Rooms {
    pub fn new(
        node_id: &str,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        max_members: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            bus,
            metrics,
            node_id: Arc::from(node_id),
            max_members,
            span: Default::default(),
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<RoomId, Arc<Room>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &RoomId) -> Option<Arc<Room>> {
        self.map().get(id).cloned()
    }

    /// A snapshot of every room, for admin and drain.
    pub fn all(&self) -> Vec<Arc<Room>> {
        self.map().values().cloned().collect()
    }

    /// Adds `member` to its room (opening the room if needed) and queues its `welcome`
    /// as the first frame; the other members get a presence `join`.
    pub async fn join(
        self: &Arc<Self>,
        id: &RoomId,
        member: Member,
    ) -> Result<Arc<Room>, JoinError> {
        loop {
            let (room, fresh) = {
                let mut map = self.map();
                match map.get(id) {
                    Some(r) => (r.clone(), false),
                    None => {
                        let r = Arc::new(Room::new(id.clone()));
                        map.insert(id.clone(), r.clone());
                        self.metrics.rooms.set(map.len() as i64);
                        (r, true)
                    }
                }
            };
            if fresh {
                self.open(&room).await;
            }
            room.wait_for(|st| !matches!(st.mode, Mode::Opening | Mode::Closing) || st.closed)
                .await;
            let bus_presence = {
                let mut st = room.lock();
                if st.closed {
                    continue;
                }
                if st.members.len() >= self.max_members {
                    return Err(JoinError::RoomFull);
                }
                let first_of_user = {
                    let n = st.users.entry(member.user.clone()).or_default();
                    *n += 1;
                    *n == 1
                };
                let welcome = ServerFrame::Welcome {
                    room: id.clone(),
                    user: member.user.clone(),
                    node: self.node_id.to_string(),
                    members: st.all_users(),
                    seq: st.seq,
                };
                // Queued under the room lock, so no room frame can overtake it.
                let _ = member.tx.try_send(Message::Text(frames::text(&welcome)));
                st.members.insert(member.conn, member.clone());
                self.presence(&room, &mut st, &member, PresenceEvent::Join, first_of_user)
            };
            if let Some(env) = bus_presence {
                let _ = self.bus.publish(id, env).await;
            }
            return Ok(room);
        }
    }

    /// Presence of `member`: fanned out here for a local room, or returned for the bus.
    fn presence(
        &self,
        room: &Room,
        st: &mut RoomState,
        member: &Member,
        event: PresenceEvent,
        changed: bool,
    ) -> Option<Envelope> {
        if !changed {
            return None;
        }
        let frame = ServerFrame::Presence { event, user: member.user.clone() };
        match st.mode {
            Mode::Spanning | Mode::Switching | Mode::Unspanning => {
                Some(frames::unsequenced(member.conn, &frame))
            }
            Mode::Local | Mode::Opening | Mode::Closing => {
                let _ = room;
                st.fan_out(&frames::text(&frame), Some(member.conn), &self.metrics);
                None
            }
        }
    }

    /// Registers a new room with the bus, and spans it when other nodes hold it already.
    async fn open(self: &Arc<Self>, room: &Arc<Room>) {
        let others = match self.bus.join(&room.id).await {
            Ok(others) => others,
            Err(e) => {
                // The room still works on this node; it is registered again on `Restored`.
                self.metrics.redis_errors.inc();
                tracing::warn!(room = %room.id, "cannot register room: {e}");
                Vec::new()
            }
        };
        if others.is_empty() {
            let mut st = room.lock();
            room.set_mode(&mut st, Mode::Local);
        } else {
            self.span_open(room, others).await;
        }
    }

    /// Removes a member; the last one out closes the room and leaves the bus.
    pub async fn leave(self: &Arc<Self>, room: &Arc<Room>, conn: u64) {
        let (bus_presence, empty) = {
            let mut st = room.lock();
            let Some(member) = st.members.remove(&conn) else { return };
            let last_of_user = match st.users.get_mut(&member.user) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        st.users.remove(&member.user);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            };
            let env = self.presence(room, &mut st, &member, PresenceEvent::Leave, last_of_user);
            let empty = st.members.is_empty() && !matches!(st.mode, Mode::Opening | Mode::Closing);
            let was = st.mode;
            if empty {
                room.set_mode(&mut st, Mode::Closing);
            }
            (env, empty.then_some(was))
        };
        if let Some(env) = bus_presence {
            let _ = self.bus.publish(&room.id, env).await;
        }
        if let Some(was) = empty {
            self.close(room, was).await;
        }
    }

    /// Leaves the bus for an emptied room, tells the other holders, then forgets it.
    async fn close(&self, room: &Arc<Room>, was: Mode) {
        if was != Mode::Local {
            let _ = self.bus.unsubscribe(&room.id).await;
            self.metrics.spanning_rooms.dec();
        }
        match self.bus.leave(&room.id).await {
            Ok(rest) => {
                for node in rest.iter().filter(|n| **n != *self.node_id) {
                    let _ = self
                        .bus
                        .send_control(node, crate::bus::Control::Left { room: room.id.clone() })
                        .await;
                }
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(room = %room.id, "cannot leave room on the bus: {e}");
            }
        }
        let mut map = self.map();
        if map.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            map.remove(&room.id);
        }
        self.metrics.rooms.set(map.len() as i64);
        drop(map);
        let mut st = room.lock();
        st.closed = true;
        room.changed.notify_waiters();
    }

    /// Publishes `body` from `member`: stamped and fanned out here for a local room, or
    /// stamped by the bus for a spanning one. Returns the message's `seq`.
    pub async fn publish(
        &self,
        room: &Room,
        member: &Member,
        body: &RawValue,
        id: Option<&ClientId>,
    ) -> Result<u64, PublishError> {
        let env = frames::message(member.conn, &room.id, &member.user, unix_ms(), body, id);
        loop {
            let notified = room.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut st = room.lock();
                match st.mode {
                    Mode::Local => {
                        st.seq += 1;
                        let seq = st.seq;
                        st.fan_out(&stamp(&env, seq), None, &self.metrics);
                        self.metrics.redis_publishes_avoided.inc();
                        Step::Done(seq)
                    }
                    Mode::Spanning => Step::Bus(env.clone()),
                    _ => Step::Wait,
                }
            };
            match step {
                Step::Done(seq) => return Ok(seq),
                Step::Bus(env) => {
                    let seq = self.bus.publish(&room.id, env).await?;
                    self.metrics.redis_publishes.inc();
                    return Ok(seq);
                }
                Step::Wait => notified.await,
            }
        }
    }

    /// Relays a signal to the other members, unsequenced.
    pub async fn signal(
        &self,
        room: &Room,
        member: &Member,
        body: Box<RawValue>,
    ) -> Result<(), PublishError> {
        let frame = ServerFrame::Signal { from: member.user.clone(), body };
        let env = {
            let st = room.lock();
            match st.mode {
                Mode::Local | Mode::Opening | Mode::Closing => {
                    st.fan_out(&frames::text(&frame), Some(member.conn), &self.metrics);
                    None
                }
                _ => Some(frames::unsequenced(member.conn, &frame)),
            }
        };
        if let Some(env) = env {
            self.bus.publish(&room.id, env).await?;
            self.metrics.redis_publishes.inc();
        }
        Ok(())
    }
}
