//! Node health and readiness: a `GET /readyz` probe (and `/healthz` when not ready) to every
//! member each interval. A dead node leaves the ring after `fall` failed probes in a row; a
//! draining one (alive, not ready) leaves at its first such probe without counting as a
//! failure. Either comes back after `rise` ready probes. Transitions rebuild the ring.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use shared::ids::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::membership::{Member, Membership};
use crate::metrics::Metrics;
use crate::upstream::{self, Dialer};

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

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `/readyz` answered 2xx: placeable.
    Ready,
    /// `/readyz` answered 503 and `/healthz` 2xx: alive but emptying (SIGTERM, a drain).
    Draining,
    /// No answer, or an answer that says the node is broken.
    Failed,
}

/// A member's state as the probes decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probed {
    pub(crate) healthy: bool,
    pub(crate) ready: bool,
}

/// Consecutive results of one node; health flips only after a full streak, so one lost
/// probe never moves rooms. Readiness drops at once: a draining node says so itself.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Streak {
    /// Probes in a row that found the node alive (ready or draining).
    alive: u32,
    /// Probes in a row that found it ready.
    ready: u32,
    bad: u32,
}

impl Streak {
    /// Records one probe of a node now in state `now`; the new state when this result
    /// changes it.
    pub(crate) fn observe(
        &mut self,
        now: Probed,
        probe: Probe,
        cfg: &HealthConfig,
    ) -> Option<Probed> {
        let mut next = now;
        match probe {
            Probe::Ready | Probe::Draining => {
                self.alive = self.alive.saturating_add(1);
                self.bad = 0;
                next.healthy |= self.alive >= cfg.rise;
            }
            Probe::Failed => {
                self.bad = self.bad.saturating_add(1);
                self.alive = 0;
                next.healthy &= self.bad < cfg.fall;
            }
        }
        if probe == Probe::Ready {
            self.ready = self.ready.saturating_add(1);
            next.ready |= self.ready >= cfg.rise;
        } else {
            self.ready = 0;
        }
        if probe == Probe::Draining {
            next.ready = false;
        }
        (next != now).then_some(next)
    }
}

/// Probes every member over HTTP until `token` is cancelled.
pub(crate) async fn run(
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    cfg: HealthConfig,
    dialer: Dialer,
    token: CancellationToken,
) {
    let timeout = cfg.timeout;
    let probe = move |m: Member| {
        let dialer = dialer.clone();
        async move {
            // Readiness first: the common answer costs one request. A 503 there is a drain only
            // when the node is otherwise fine.
            let ready = match probe_path(&dialer, &m, "/readyz", timeout).await? {
                Ok(()) => return Some(Probe::Ready),
                Err(status) => status == Some(StatusCode::SERVICE_UNAVAILABLE),
            };
            match probe_path(&dialer, &m, "/healthz", timeout).await? {
                Ok(()) if ready => Some(Probe::Draining),
                _ => Some(Probe::Failed),
            }
        }
    };
    run_with(membership, metrics, cfg, token, probe).await
}

/// One GET: `Ok` on 2xx, `Err(status)` on any other answer or none (`None` status), and
/// `None` when the router could not open a socket: that says nothing about the node, and
/// taking it off the ring would turn a full router into an empty one.
async fn probe_path(
    dialer: &Dialer,
    m: &Member,
    path: &str,
    timeout: Duration,
) -> Option<Result<(), Option<StatusCode>>> {
    match upstream::request(dialer, m, Method::GET, path, None, timeout).await {
        Ok((status, _)) if status.is_success() => Some(Ok(())),
        Ok((status, _)) => {
            tracing::debug!(node = %m.spec.id, %status, "probe of {path}");
            Some(Err(Some(status)))
        }
        Err(Error::FdLimit(e)) => {
            tracing::debug!(node = %m.spec.id, "probe skipped: {e}");
            None
        }
        Err(e) => {
            tracing::debug!("probe of {path} failed: {e}");
            Some(Err(None))
        }
    }
}

/// The probe loop over any `probe` (tests inject one and pause time): `Some(p)` is a
/// result, `None` a probe that could not be made and leaves the streak as it is.
pub(crate) async fn run_with<P, F>(
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    cfg: HealthConfig,
    token: CancellationToken,
    probe: P,
) where
    P: Fn(Member) -> F,
    F: Future<Output = Option<Probe>> + Send + 'static,
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
            probes.spawn(async move { (m, fut.await.unwrap_or(Some(Probe::Failed))) });
        }
        let results = tokio::select! {
            _ = token.cancelled() => return,
            r = probes.join_all() => r,
        };
        streaks.retain(|(id, addr), _| {
            view.member(id).is_some_and(|m| m.spec.addr.as_str() == addr.as_str())
        });
        for (m, probe) in results {
            let Some(probe) = probe else { continue };
            if probe == Probe::Failed {
                metrics.probe_failures.inc();
            }
            let key = (m.spec.id.clone(), m.spec.addr.to_string());
            let now = Probed { healthy: m.healthy, ready: m.ready };
            let Some(next) = streaks.entry(key).or_default().observe(now, probe, &cfg) else {
                continue;
            };
            if membership.set_probed(&m.spec.id, next.healthy, next.ready).is_err() {
                continue;
            }
            let (id, addr) = (&m.spec.id, &m.spec.addr);
            match (now.healthy != next.healthy, next.healthy) {
                (true, true) => {
                    metrics.health_up.inc();
                    tracing::info!(node = %id, %addr, "node healthy");
                }
                (true, false) => {
                    metrics.health_down.inc();
                    tracing::warn!(node = %id, %addr, "node unhealthy: off the ring");
                }
                _ => {}
            }
            if now.ready != next.ready {
                let what = if next.ready { "node ready" } else { "node draining: off the ring" };
                tracing::info!(node = %id, %addr, "{what}");
            }
        }
        metrics.probe_rounds.inc();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::membership::Source;

    const UP: Probed = Probed { healthy: true, ready: true };

    /// Feeds `probes` to a fresh streak from `start`; the state after each one.
    fn walk(start: Probed, probes: &[Probe]) -> Vec<Probed> {
        let cfg = HealthConfig::default();
        let mut s = Streak::default();
        let mut now = start;
        probes
            .iter()
            .map(|p| {
                now = s.observe(now, *p, &cfg).unwrap_or(now);
                now
            })
            .collect()
    }

    #[test]
    fn health_flips_only_after_a_full_streak() {
        use Probe::{Failed as F, Ready as R};
        let down = Probed { healthy: false, ready: true };
        let states = walk(UP, &[F, F, R, F, F, F, R, R]);
        assert_eq!(states[..5], [UP; 5], "a good probe resets the bad streak");
        assert_eq!(states[5], down, "out after `fall` failures in a row");
        assert_eq!(states[6], down);
        assert_eq!(states[7], UP, "back after `rise` good ones");
    }

    #[test]
    fn a_draining_node_is_unready_at_once_and_never_a_failure() {
        use Probe::{Draining as D, Failed as F, Ready as R};
        let draining = Probed { healthy: true, ready: false };
        let states = walk(UP, &[D; 5]);
        assert_eq!(states, [draining; 5], "off at the first draining probe, still healthy");
        // Drained, then ready again (a drain that was taken back): `rise` ready probes.
        let states = walk(draining, &[R, D, R, R]);
        assert_eq!(states, [draining, draining, draining, UP], "a draining probe resets the run");
        // Draining, then the process exits: a dead node after `fall` failures.
        let dead = Probed { healthy: false, ready: false };
        assert_eq!(walk(draining, &[F, F, F]), [draining, draining, dead]);
        // A restarted node comes back healthy and ready after `rise` ready probes ...
        assert_eq!(walk(dead, &[R, R]), [dead, UP]);
        // ... and one that comes back still draining is healthy but not placed.
        assert_eq!(walk(dead, &[D, D]), [Probed { healthy: false, ready: false }, draining]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_the_router_could_not_make_moves_nobody() {
        let cfg = HealthConfig::default();
        let nodes = vec!["a=127.0.0.1:1".parse().unwrap()];
        let membership = Arc::new(Membership::new(nodes, Source::Static, 160, Arc::default()));
        let metrics = Arc::new(Metrics::default());
        let token = CancellationToken::new();
        let probe = |_m: Member| async { None::<Probe> };
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
                async move { Some(if dead { Probe::Failed } else { Probe::Ready }) }
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
    #[tokio::test(start_paused = true)]
    async fn a_draining_node_leaves_within_one_round_and_is_not_counted_down() {
        let cfg = HealthConfig::default();
        let nodes = vec!["a=127.0.0.1:1".parse().unwrap(), "b=127.0.0.1:2".parse().unwrap()];
        let membership = Arc::new(Membership::new(nodes, Source::Static, 160, Arc::default()));
        let metrics = Arc::new(Metrics::default());
        let draining: Arc<Mutex<HashSet<String>>> = Arc::default();
        let token = CancellationToken::new();
        let probe = {
            let draining = draining.clone();
            move |m: Member| {
                let d = draining.lock().unwrap().contains(m.spec.id.as_str());
                async move { Some(if d { Probe::Draining } else { Probe::Ready }) }
            }
        };
        let task =
            tokio::spawn(run_with(membership.clone(), metrics.clone(), cfg, token.clone(), probe));
        let a = NodeId::parse("a").unwrap();
        tokio::time::sleep(cfg.interval * 2).await;
        assert!(membership.view().ring.contains(&a));

        draining.lock().unwrap().insert("a".into());
        let since = tokio::time::Instant::now();
        while membership.view().ring.contains(&a) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(since.elapsed() <= cfg.interval + cfg.timeout, "out after {:?}", since.elapsed());
        let v = membership.view();
        let m = v.member(&a).unwrap();
        assert!(m.healthy && !m.ready, "listed as alive and not ready: {m:?}");
        assert_eq!((metrics.health_down.get(), metrics.probe_failures.get()), (0, 0));

        draining.lock().unwrap().clear();
        let back = tokio::time::Instant::now();
        while !membership.view().ring.contains(&a) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back.elapsed() >= cfg.interval * (cfg.rise - 1), "not before {} probes", cfg.rise);
        assert!(back.elapsed() <= cfg.interval * cfg.rise + cfg.timeout);
        token.cancel();
        task.await.unwrap();
    }
}
