//! Every room on this node: the directory from room ID to its owner, joining (which opens a
//! room on first use), the membership guard that leaves on `Drop`, and the bus reader that
//! routes each bus event to the room it concerns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde_json::value::RawValue;
use shared::ids::RoomId;
use shared::protocol::ClientId;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::appender::Appender;
use crate::bus::{Bus, BusEvent, Control, Envelope};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::room::{self, Input, JoinError, Member, RoomHandle, Shared};
use crate::room_core::{Event, PostError, Settings};
use crate::suspects::Suspects;

/// Users whose read and delivered markers a room keeps at most; past it, the lowest
/// marker of a user who is not in the room makes way.
pub const MAX_MARKERS: usize = 10_000;

/// Timing of the rooms' spanning protocol (node config).
#[derive(Debug, Clone)]
pub struct RoomTimers {
    pub span_timeout: Duration,
    pub repair_interval: Duration,
    pub unspan_grace: Duration,
    /// How long a peer that missed a span stays suspect.
    pub suspect_ttl: Duration,
}

impl RoomTimers {
    fn of(c: &Config) -> Self {
        Self {
            span_timeout: c.span_timeout,
            repair_interval: c.repair_interval,
            unspan_grace: c.unspan_grace,
            suspect_ttl: c.suspect_ttl,
        }
    }
}

/// Publishes a room holds while it changes mode, per room.
const MAX_QUEUED: usize = 4096;

pub struct Rooms {
    map: Mutex<HashMap<RoomId, RoomHandle>>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) metrics: Arc<Metrics>,
    node_id: Arc<str>,
    max_members: usize,
    timers: RoomTimers,
    suspects: Arc<Suspects>,
    /// The node's config, for each new room's history policy.
    config: Config,
    appender: Appender,
    hooks: Arc<crate::hooks::Hooks>,
    me: Weak<Rooms>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms").field("node_id", &self.node_id).finish()
    }
}

/// A member's place in its room. Dropping it leaves the room, however the session ends.
#[derive(Debug)]
pub struct Membership {
    room: RoomHandle,
    conn: u64,
}

impl Membership {
    pub fn room(&self) -> &RoomHandle {
        &self.room
    }

    /// Sends a member's message; its `ack` and the message come through the member's queue.
    pub async fn publish(&self, env: Envelope, id: Option<ClientId>) {
        let _ = self.room.tx.send(Input::Publish { conn: self.conn, env, id }).await;
    }

    pub async fn signal(&self, body: Box<RawValue>) {
        let _ = self.room.tx.send(Input::Signal { conn: self.conn, body }).await;
    }

    pub async fn read(&self, seq: u64) {
        let _ = self.room.tx.send(Input::Read { conn: self.conn, seq }).await;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let leave = Input::Leave { conn: self.conn };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(leave)) =
            self.room.tx.try_send(leave)
        {
            // A leave is never lost: wait for room in the queue on a task of its own.
            let tx = self.room.tx.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(leave).await;
                });
            }
        }
    }
}

impl Rooms {
    /// The rooms of a node, with the history writer they share.
    pub fn new(
        config: &Config,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let timers = RoomTimers::of(config);
        let hooks = Arc::new(crate::hooks::Hooks::start(
            &config.webhooks,
            config.webhook_secret.clone(),
            metrics.clone(),
            stop,
        ));
        let appender = Appender::start(bus.clone(), config.history_flush, metrics.clone());
        Arc::new_cyclic(|me| Self {
            map: Mutex::new(HashMap::new()),
            bus,
            metrics,
            node_id: Arc::from(config.node_id.as_str()),
            max_members: config.max_room_members,
            suspects: Arc::new(Suspects::new(timers.suspect_ttl)),
            timers,
            config: config.clone(),
            appender,
            hooks,
            me: me.clone(),
        })
    }

    /// Waits until every message the rooms stamped so far was offered to the store (a
    /// drain does this before it closes connections).
    pub async fn flush_history(&self) {
        self.appender.flush().await;
    }

    fn map(&self) -> MutexGuard<'_, HashMap<RoomId, RoomHandle>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &RoomId) -> Option<RoomHandle> {
        self.map().get(id).cloned()
    }

    /// A snapshot of every room, for admin.
    pub fn all(&self) -> Vec<RoomHandle> {
        self.map().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_or_open(&self, id: &RoomId) -> RoomHandle {
        let mut map = self.map();
        if let Some(h) = map.get(id) {
            return h.clone();
        }
        let settings = Settings {
            node: self.node_id.clone(),
            room: id.clone(),
            max_members: self.max_members,
            span_timeout: self.timers.span_timeout,
            repair_interval: self.timers.repair_interval,
            unspan_grace: self.timers.unspan_grace,
            max_queued: MAX_QUEUED,
            history: self.config.history_of(id.as_str()),
            max_recovery: self.config.max_recovery,
            max_markers: MAX_MARKERS,
            durable: self.config.durable_ack,
            archive: self.config.archive_of(id.as_str()),
            archive_days: self.config.archive_days_of(id.as_str()),
        };
        let me = self.me.clone();
        let shared = Shared {
            bus: self.bus.clone(),
            metrics: self.metrics.clone(),
            suspects: self.suspects.clone(),
            appender: self.appender.clone(),
            hooks: self.hooks.clone(),
            node: self.node_id.clone(),
            on_close: Arc::new(move |h: &RoomHandle| {
                if let Some(rooms) = me.upgrade() {
                    rooms.remove(h);
                }
            }),
        };
        let h = room::spawn(settings, shared);
        map.insert(id.clone(), h.clone());
        self.metrics.rooms.set(map.len() as i64);
        h
    }

    /// Takes a closed room out, unless a newer room of the same name replaced it.
    fn remove(&self, h: &RoomHandle) {
        let mut map = self.map();
        if map.get(&h.id).is_some_and(|cur| cur.serial == h.serial) {
            map.remove(&h.id);
        }
        self.metrics.rooms.set(map.len() as i64);
    }

    /// Adds `member` to its room (opening the room if needed); its `welcome` is the first
    /// frame in its queue. A room that closes under the join is opened again.
    pub async fn join(&self, id: &RoomId, member: Member) -> Result<Membership, JoinError> {
        loop {
            let h = self.get_or_open(id);
            let (reply, answer) = oneshot::channel();
            let input = Input::Join { member: member.clone(), reply };
            if h.tx.send(input).await.is_err() {
                tokio::task::yield_now().await;
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(Membership { room: h, conn: member.conn }),
                Ok(Err(e)) => return Err(e),
                // The room closed before it saw the join: try a new one.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// Publishes a message from no member (the server API) into room `id`, opening the
    /// room for it if needed; the `seq` it was stamped with, or why not. `env` is built by
    /// [`crate::frames::message`].
    pub async fn post(&self, id: &RoomId, env: Envelope) -> Result<u64, PostError> {
        loop {
            let h = self.get_or_open(id);
            let (reply, answer) = oneshot::channel();
            if h.tx.send(Input::Post { env: env.clone(), reply }).await.is_err() {
                tokio::task::yield_now().await;
                continue;
            }
            match answer.await {
                Ok(r) => return r,
                // The room closed before it saw the post: try a new one.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// Routes the bus's events to their rooms until `token` is cancelled.
    pub async fn run_bus(self: Arc<Self>, token: CancellationToken) {
        let Some(mut events) = self.bus.take_events() else { return };
        loop {
            let ev = tokio::select! {
                _ = token.cancelled() => return,
                ev = events.recv() => ev,
            };
            let Some(ev) = ev else { return };
            match ev {
                BusEvent::Room { room, seq, origin, conn, frame } => {
                    self.suspects.clear(&origin);
                    let ev = Event::BusFrame { seq, origin, conn, frame };
                    self.to_room(&room, ev).await;
                }
                BusEvent::Control { from, msg } => {
                    self.suspects.clear(&from);
                    match msg {
                        Control::Span { room } => {
                            if self.get(&room).is_some() {
                                self.to_room(&room, Event::SpanRequest { from }).await;
                            } else {
                                // Do not let the asker wait for a sync that never comes.
                                let bus = self.bus.clone();
                                tokio::spawn(async move {
                                    let _ = bus.send_control(&from, Control::Absent { room }).await;
                                });
                            }
                        }
                        Control::Absent { room } => {
                            self.to_room(&room, Event::Absent { from }).await
                        }
                        Control::Left { room } => self.to_room(&room, Event::Left { from }).await,
                    }
                }
                BusEvent::Lost => {
                    tracing::warn!("bus lost: spanning rooms are degraded");
                    self.to_all(Event::BusLost).await;
                }
                BusEvent::Restored => {
                    self.metrics.redis_reconnects.inc();
                    tracing::info!("bus restored: registering rooms again");
                    self.to_all(Event::BusRestored).await;
                }
            }
        }
    }

    async fn to_room(&self, room: &RoomId, ev: Event) {
        if let Some(h) = self.get(room) {
            let _ = h.tx.send(Input::Bus(ev)).await;
        }
    }

    async fn to_all(&self, ev: Event) {
        for h in self.all() {
            let _ = h.tx.send(Input::Bus(ev.clone())).await;
        }
    }
}
