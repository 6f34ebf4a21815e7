//! Node health: a `GET /healthz` probe to every member each interval; a node leaves the ring
//! after `fall` failed probes in a row and comes back after `rise` good ones. Transitions are
//! logged and counted, and each one rebuilds the ring through membership.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use shared::ids::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::membership::{Member, Membership};
use crate::metrics::Metrics;
use crate::upstream;

/// Probe timing and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probe rounds.
    pub interval: Duration,
    /// A probe that takes longer fails.
    pub timeout: Duration,
    /// Failed probes in a row that take a healthy node out.
    pub fall: u32,
    /// Good probes in a row that bring an unhealthy node back.
    pub rise: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            fall: 3,
            rise: 2,
        }
    }
}

impl HealthConfig {
    /// Longest time from a node's death to its removal: `fall` rounds plus a probe timeout.
    pub fn window(&self) -> Duration {
        self.interval * self.fall + self.timeout
    }
}

/// Consecutive results of one node; flips health only after a full streak, so one lost
/// probe never moves rooms.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Streak {
    good: u32,
    bad: u32,
}

impl Streak {
    /// Records one probe of a node now `healthy`; the new health when this result flips it.
    pub(crate) fn observe(&mut self, healthy: bool, ok: bool, cfg: &HealthConfig) -> Option<bool> {
        if ok {
            self.good = self.good.saturating_add(1);
            self.bad = 0;
            (!healthy && self.good >= cfg.rise).then_some(true)
        } else {
            self.bad = self.bad.saturating_add(1);
            self.good = 0;
            (healthy && self.bad >= cfg.fall).then_some(false)
        }
    }
}

/// Probes every member over HTTP until `token` is cancelled.
pub(crate) async fn run(
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    cfg: HealthConfig,
    token: CancellationToken,
) {
    let timeout = cfg.timeout;
    let probe = move |m: Member| async move {
        match upstream::request(&m, Method::GET, "/healthz", None, timeout).await {
            Ok((status, _)) if status.is_success() => Some(true),
            Ok((status, _)) => {
                tracing::debug!(node = %m.spec.id, %status, "probe failed");
                Some(false)
            }
            // The router could not open a socket: that says nothing about the node, and
            // taking it off the ring would turn a full router into an empty one.
            Err(Error::FdLimit(e)) => {
                tracing::debug!(node = %m.spec.id, "probe skipped: {e}");
                None
            }
            Err(e) => {
                tracing::debug!("probe failed: {e}");
                Some(false)
            }
        }
    };
    run_with(membership, metrics, cfg, token, probe).await
}

/// The probe loop over any `probe` (tests inject one and pause time): `Some(ok)` is a
/// result, `None` a probe that could not be made and leaves the streak as it is.
pub(crate) async fn run_with<P, F>(
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    cfg: HealthConfig,
    token: CancellationToken,
    probe: P,
) where
    P: Fn(Member) -> F,
    F: Future<Output = Option<bool>> + Send + 'static,
{
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streaks: HashMap<(NodeId, String), Streak> = HashMap::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = membership.view();
        let mut probes = JoinSet::new();
        for m in view.members.values() {
            let fut = tokio::time::timeout(cfg.timeout, probe(m.clone()));
            let m = m.clone();
            probes.spawn(async move { (m, fut.await.unwrap_or(Some(false))) });
        }
        let results = tokio::select! {
            _ = token.cancelled() => return,
            r = probes.join_all() => r,
        };
        streaks.retain(|(id, addr), _| {
            view.member(id).is_some_and(|m| m.spec.addr.as_str() == addr.as_str())
        });
        for (m, ok) in results {
            let Some(ok) = ok else { continue };
            if !ok {
                metrics.probe_failures.inc();
            }
            let key = (m.spec.id.clone(), m.spec.addr.to_string());
            let Some(healthy) = streaks.entry(key).or_default().observe(m.healthy, ok, &cfg) else {
                continue;
            };
            if membership.set_healthy(&m.spec.id, healthy).is_err() {
                continue;
            }
            if healthy {
                metrics.health_up.inc();
                tracing::info!(node = %m.spec.id, addr = %m.spec.addr, "node healthy: back on the ring");
            } else {
                metrics.health_down.inc();
                tracing::warn!(node = %m.spec.id, addr = %m.spec.addr, "node unhealthy: off the ring");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::membership::Source;

    #[test]
    fn health_flips_only_after_a_full_streak() {
        let cfg = HealthConfig::default();
        let mut s = Streak::default();
        assert_eq!(s.observe(true, false, &cfg), None);
        assert_eq!(s.observe(true, false, &cfg), None);
        assert_eq!(s.observe(true, true, &cfg), None, "a good probe resets the bad streak");
        assert_eq!(s.observe(true, false, &cfg), None);
        assert_eq!(s.observe(true, false, &cfg), None);
        assert_eq!(s.observe(true, false, &cfg), Some(false));
        assert_eq!(s.observe(false, true, &cfg), None);
        assert_eq!(s.observe(false, true, &cfg), Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_the_router_could_not_make_moves_nobody() {
        let cfg = HealthConfig::default();
        let nodes = vec!["a=127.0.0.1:1".parse().unwrap()];
        let membership = Arc::new(Membership::new(nodes, Source::Static, 160, Arc::default()));
        let metrics = Arc::new(Metrics::default());
        let token = CancellationToken::new();
        let probe = |_m: Member| async { None };
        let task =
            tokio::spawn(run_with(membership.clone(), metrics.clone(), cfg, token.clone(), probe));
        tokio::time::sleep(cfg.window() * 3).await;
        let a = NodeId::parse("a").unwrap();
        assert!(membership.view().ring.contains(&a), "out of the ring for the router's trouble");
        assert_eq!(metrics.probe_failures.get(), 0);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_node_leaves_within_the_window_and_comes_back() {
        let cfg = HealthConfig::default();
        let nodes = vec!["a=127.0.0.1:1".parse().unwrap(), "b=127.0.0.1:2".parse().unwrap()];
        let membership = Arc::new(Membership::new(nodes, Source::Static, 160, Arc::default()));
        let metrics = Arc::new(Metrics::default());
        let down: Arc<Mutex<HashSet<String>>> = Arc::default();
        let token = CancellationToken::new();
        let probe = {
            let down = down.clone();
            move |m: Member| {
                let dead = down.lock().unwrap().contains(m.spec.id.as_str());
                async move { Some(!dead) }
            }
        };
        let task =
            tokio::spawn(run_with(membership.clone(), metrics.clone(), cfg, token.clone(), probe));
        let a = NodeId::parse("a").unwrap();
        tokio::time::sleep(cfg.interval * 2).await;
        assert!(membership.view().ring.contains(&a));

        down.lock().unwrap().insert("a".into());
        let died = tokio::time::Instant::now();
        while membership.view().ring.contains(&a) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(died.elapsed() <= cfg.window(), "out after {:?}", died.elapsed());
        assert!(died.elapsed() >= cfg.interval * (cfg.fall - 1), "not before {} probes", cfg.fall);
        assert_eq!(metrics.health_down.get(), 1);

        down.lock().unwrap().clear();
        let back = tokio::time::Instant::now();
        while !membership.view().ring.contains(&a) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back.elapsed() <= cfg.interval * cfg.rise + cfg.timeout);
        assert_eq!(metrics.health_up.get(), 1);
        token.cancel();
        task.await.unwrap();
    }
}
