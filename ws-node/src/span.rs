//! Rooms that span nodes: the span handshake, delivery of bus events in channel order,
//! the way back to one node, pruning dead nodes, and what happens when the bus is lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::ids::{RoomId, UserId};
use shared::protocol::{ErrorCode, PresenceEvent, ServerFrame};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusEvent, Control};
use crate::frames;
use crate::room::{Mode, Room, Rooms};

/// How long a joining node waits for the other holders to confirm a span.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a room stays spanning after it is back on one node, against flapping.
pub const UNSPAN_GRACE: Duration = Duration::from_secs(2);
/// How often spanning rooms re-check their holders (prunes nodes that died).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Span handshakes under way on this node, by room.
#[derive(Debug, Default)]
pub struct Spans {
    pending: Mutex<HashMap<RoomId, Pending>>,
}

#[derive(Debug)]
struct Pending {
    waiting: HashSet<String>,
    users: HashMap<String, Vec<UserId>>,
    done: Option<oneshot::Sender<()>>,
}

impl Spans {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Rooms {
    /// Opens a room other nodes hold already: subscribe, ask them to span, wait for their
    /// confirmations, then take the room's `seq` from the bus. Joiners wait meanwhile, so
    /// their `welcome` comes only once every message after it will reach them.
    pub(crate) async fn span_open(self: &Arc<Self>, room: &Arc<Room>, others: Vec<String>) {
        let started = Instant::now();
        if let Err(e) = self.bus.subscribe(&room.id).await {
            tracing::warn!(room = %room.id, "cannot subscribe: {e}; room stays on this node");
            let mut st = room.lock();
            room.set_mode(&mut st, Mode::Local);
            return;
        }
        room.lock().subscribed = true;
        room.changed.notify_waiters();
        let (tx, rx) = oneshot::channel();
        self.span.lock().insert(
            room.id.clone(),
            Pending {
                waiting: others.iter().cloned().collect(),
                users: HashMap::new(),
                done: Some(tx),
            },
        );
        for node in &others {
            if let Err(e) =
                self.bus.send_control(node, Control::Span { room: room.id.clone() }).await
            {
                tracing::warn!(room = %room.id, node, "span request failed: {e}");
            }
        }
        if tokio::time::timeout(HANDSHAKE_TIMEOUT, rx).await.is_err() {
            tracing::warn!(room = %room.id, "span handshake timed out; going on without the rest");
        }
        let pending = self.span.lock().remove(&room.id);
        let seq = self.bus.current_seq(&room.id).await.unwrap_or(0);
        self.metrics.span_handshake.observe(started.elapsed());
        self.metrics.spanning_rooms.inc();
        let mut st = room.lock();
        st.seq = seq;
        if let Some(p) = pending {
            for (node, users) in p.users {
                for u in users {
                    st.apply_remote_presence(&node, PresenceEvent::Join, u);
                }
            }
        }
        room.set_mode(&mut st, Mode::Spanning);
    }

    /// Another node holds a room we hold: make sure we are spanning, then confirm.
    async fn on_span_request(self: &Arc<Self>, from: String, id: RoomId) {
        let users = match self.get(&id) {
            None => Vec::new(),
            Some(room) => {
                room.wait_for(|st| {
                    (st.subscribed || st.mode != Mode::Opening) && st.mode != Mode::Switching
                })
                .await;
                let mode = {
                    let mut st = room.lock();
                    if st.mode == Mode::Unspanning {
                        room.set_mode(&mut st, Mode::Spanning);
                    }
                    if st.mode == Mode::Local {
                        room.set_mode(&mut st, Mode::Switching);
                    }
                    st.mode
                };
                if mode == Mode::Switching {
                    self.switch_to_spanning(&room).await;
                }
                room.lock().local_users()
            }
        };
        if let Err(e) =
            self.bus.send_control(&from, Control::Confirm { room: id.clone(), users }).await
        {
            tracing::warn!(room = %id, node = from, "span confirm failed: {e}");
        }
    }

    /// Local -> spanning: subscribe, hand our `seq` to the bus, then let publishers go on
    /// through the bus, so `seq` continues without a gap or a repeat.
    async fn switch_to_spanning(&self, room: &Arc<Room>) {
        let seq = room.lock().seq;
        let ok = match self.bus.subscribe(&room.id).await {
            Ok(()) => self.bus.raise_seq(&room.id, seq).await,
            Err(e) => Err(e),
        };
        let mut st = room.lock();
        match ok {
            Ok(()) => {
                st.subscribed = true;
                self.metrics.spanning_rooms.inc();
                room.set_mode(&mut st, Mode::Spanning);
                tracing::debug!(room = %room.id, seq, "room spans nodes");
            }
            Err(e) => {
                tracing::warn!(room = %room.id, "cannot span: {e}; room stays on this node");
                room.set_mode(&mut st, Mode::Local);
            }
        }
    }

    fn on_confirm(&self, from: String, id: RoomId, users: Vec<UserId>) {
        let mut pending = self.span.lock();
        if let Some(p) = pending.get_mut(&id) {
            p.waiting.remove(&from);
            p.users.insert(from, users);
            if p.waiting.is_empty()
                && let Some(done) = p.done.take()
            {
                let _ = done.send(());
            }
        }
    }

    /// A room frame from the bus: dedupe by `seq`, deliver in channel order.
    fn on_room_event(
        &self,
        id: RoomId,
        seq: u64,
        origin: &str,
        conn: u64,
        frame: &tokio_tungstenite::tungstenite::Utf8Bytes,
    ) {
        let Some(room) = self.get(&id) else { return };
        let mut st = room.lock();
        if seq > 0 {
            if seq <= st.seq {
                return;
            }
            if seq != st.seq + 1 {
                tracing::warn!(room = %id, expected = st.seq + 1, got = seq, "seq gap on the bus");
            }
            st.seq = seq;
            st.fan_out(frame, None, &self.metrics);
            room.changed.notify_waiters();
            return;
        }
        let own = origin == &*self.node_id;
        if !own
            && frame.as_str().starts_with(r#"{"type":"presence""#)
            && let Ok(p) = serde_json::from_str::<PresenceFrame>(frame.as_str())
        {
            st.apply_remote_presence(origin, p.event, p.user);
        }
        st.fan_out(frame, own.then_some(conn), &self.metrics);
    }

    /// Re-checks a spanning room's holders; alone again (after the grace) means unspan.
    async fn check_holders(self: &Arc<Self>, room: Arc<Room>) {
        if room.mode() != Mode::Spanning {
            return;
        }
        let Ok(holders) = self.bus.holders(&room.id).await else { return };
        // Forget users of nodes that no longer hold the room (dead or gone).
        let gone: Vec<(String, Vec<UserId>)> = {
            let mut st = room.lock();
            let dead: Vec<String> =
                st.remote.keys().filter(|n| !holders.contains(n)).cloned().collect();
            dead.into_iter()
                .filter_map(|n| st.remote.remove(&n).map(|u| (n, u.into_keys().collect())))
                .collect()
        };
        for (node, users) in gone {
            tracing::info!(room = %room.id, node, "node left the room; dropping its members");
            let st = room.lock();
            for user in users.into_iter().filter(|u| !st.users.contains_key(u)) {
                let f = ServerFrame::Presence { event: PresenceEvent::Leave, user };
                st.fan_out(&frames::text(&f), None, &self.metrics);
            }
        }
        if holders.iter().all(|h| **h == *self.node_id) {
            self.unspan(&room).await;
        }
    }

    /// Spanning -> local once every bus message has arrived, unless a span request came.
    async fn unspan(&self, room: &Arc<Room>) {
        {
            let mut st = room.lock();
            if st.mode != Mode::Spanning {
                return;
            }
            room.set_mode(&mut st, Mode::Unspanning);
        }
        let last = self.bus.current_seq(&room.id).await.unwrap_or(0);
        let caught_up = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            room.wait_for(|st| st.seq >= last || st.mode != Mode::Unspanning),
        )
        .await
        .is_ok();
        let unsubscribe = {
            let mut st = room.lock();
            if st.mode != Mode::Unspanning {
                false
            } else {
                if !caught_up {
                    tracing::warn!(room = %room.id, last, have = st.seq, "unspan before the last bus message");
                    st.seq = st.seq.max(last);
                }
                st.subscribed = false;
                st.remote.clear();
                self.metrics.spanning_rooms.dec();
                room.set_mode(&mut st, Mode::Local);
                true
            }
        };
        if unsubscribe {
            tracing::debug!(room = %room.id, "room back on one node");
            let _ = self.bus.unsubscribe(&room.id).await;
        }
    }

    /// The bus is gone: spanning rooms tell their members, publishes fail with `degraded`.
    fn on_lost(&self) {
        tracing::warn!("bus lost: spanning rooms are degraded");
        let frame = frames::text(&ServerFrame::error(
            ErrorCode::Degraded,
            "room spans nodes and Redis is unreachable; publishes fail until it is back",
        ));
        for room in self.all() {
            let st = room.lock();
            if st.mode == Mode::Spanning {
                let n = st.fan_out(&frame, None, &self.metrics);
                for _ in 0..n {
                    self.metrics.error(ErrorCode::Degraded);
                }
            }
        }
    }

    /// The bus is back: register every room again, raise spanning rooms' `seq`, and span
    /// rooms that other nodes opened meanwhile.
    async fn on_restored(self: &Arc<Self>) {
        tracing::info!("bus restored: registering rooms again");
        for room in self.all() {
            let (mode, seq) = {
                let st = room.lock();
                (st.mode, st.seq)
            };
            if !matches!(mode, Mode::Local | Mode::Spanning) {
                continue;
            }
            let others = match self.bus.join(&room.id).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(room = %room.id, "re-register failed: {e}");
                    continue;
                }
            };
            if mode == Mode::Spanning {
                let _ = self.bus.raise_seq(&room.id, seq).await;
            } else if !others.is_empty() {
                {
                    let mut st = room.lock();
                    room.set_mode(&mut st, Mode::Switching);
                }
                self.switch_to_spanning(&room).await;
                for node in &others {
                    let _ =
                        self.bus.send_control(node, Control::Span { room: room.id.clone() }).await;
                }
            }
        }
    }

    /// Runs the node's bus side until `token` is cancelled: events in order, and the
    /// periodic holder check of spanning rooms.
    pub async fn run_bus(self: Arc<Self>, token: CancellationToken) {
        let Some(mut events) = self.bus.take_events() else { return };
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                ev = events.recv() => {
                    let Some(ev) = ev else { return };
                    match ev {
                        BusEvent::Room { room, seq, origin, conn, frame } => {
                            self.on_room_event(room, seq, &origin, conn, &frame)
                        }
                        BusEvent::Control { from, msg } => match msg {
                            Control::Span { room } => {
                                let rooms = self.clone();
                                tokio::spawn(async move { rooms.on_span_request(from, room).await });
                            }
                            Control::Confirm { room, users } => self.on_confirm(from, room, users),
                            Control::Left { room } => {
                                if let Some(room) = self.get(&room) {
                                    let rooms = self.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(UNSPAN_GRACE).await;
                                        rooms.check_holders(room).await;
                                    });
                                }
                            }
                        },
                        BusEvent::Lost => self.on_lost(),
                        BusEvent::Restored => {
                            self.metrics.redis_reconnects.inc();
                            let rooms = self.clone();
                            tokio::spawn(async move { rooms.on_restored().await });
                        }
                    }
                }
                _ = check.tick() => {
                    for room in self.all().into_iter().filter(|r| r.mode() == Mode::Spanning) {
                        let rooms = self.clone();
                        tokio::spawn(async move { rooms.check_holders(room).await });
                    }
                }
            }
        }
    }
}

/// The fields of a `presence` frame another node published.
#[derive(serde::Deserialize)]
struct PresenceFrame {
    event: PresenceEvent,
    user: UserId,
}
