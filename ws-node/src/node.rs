//! The node as a whole: its config, rooms, metrics, connection slots, and drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::room::{CloseReason, Kill};
use crate::rooms::Rooms;

/// The close switches of every open connection, for drain.
#[derive(Debug, Default)]
pub(crate) struct Kills(Mutex<HashMap<u64, Arc<Kill>>>);

impl Kills {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Kill>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn insert(&self, conn: u64, kill: Arc<Kill>) {
        self.lock().insert(conn, kill);
    }
    pub(crate) fn remove(&self, conn: u64) {
        self.lock().remove(&conn);
    }
    fn all(&self) -> Vec<Arc<Kill>> {
        self.lock().values().cloned().collect()
    }
}

/// One ws-node. Build it with [`Node::new`], run it with [`crate::serve`].
#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    /// Server publish ids seen lately (idempotency).
    pub(crate) posts: crate::posts::Posts<shared::api::Published>,
    pub(crate) kills: Kills,
    /// Cancelled when the node shuts down: sessions close with 1001.
    pub(crate) token: CancellationToken,
    pub(crate) tracker: TaskTracker,
    draining: AtomicBool,
    active: AtomicUsize,
    next_conn: AtomicU64,
}

impl Node {
    pub fn new(config: Config, bus: Arc<dyn Bus>) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let token = CancellationToken::new();
        let rooms = Rooms::new(&config, bus, metrics.clone(), token.clone());
        Arc::new(Self {
            config,
            rooms,
            metrics,
            posts: Default::default(),
            kills: Kills::default(),
            token,
            tracker: TaskTracker::new(),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Open connections right now.
    pub fn connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Reserves a connection slot; `None` when the node is at `max_connections`.
    pub(crate) fn reserve_slot(&self) -> Option<u64> {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if prev >= self.config.max_connections {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.connections.inc();
        Some(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn release_slot(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.dec();
    }

    /// Fails readiness and refuses new upgrades (503), keeping open connections.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stops taking connections and closes every open one with 1012, spread uniformly
    /// over `window` so reconnecting clients do not stampede the router. Returns how many
    /// connections will be closed.
    pub fn drain(self: &Arc<Self>, window: Duration) -> usize {
        self.set_draining();
        let mut kills = self.kills.all();
        fastrand::shuffle(&mut kills);
        let n = kills.len();
        let token = self.token.clone();
        self.tracker.spawn(async move {
            let start = tokio::time::Instant::now();
            for (i, kill) in kills.into_iter().enumerate() {
                let at = start + window.mul_f64(i as f64 / n.max(1) as f64);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => { kill.kill(CloseReason::DRAIN); }
                    _ = token.cancelled() => return,
                }
            }
        });
        tracing::info!(connections = n, window_ms = window.as_millis() as u64, "draining");
        n
    }
}
