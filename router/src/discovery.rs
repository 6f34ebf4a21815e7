//! `--discovery redis`: follows the node registry the ws-nodes keep in Redis. Every
//! registry event and a periodic full read replace the registry's members of the ring, so
//! routers reading the same registry place rooms identically; Redis going away keeps the
//! last membership and reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use shared::registry::{NodeRecord, Registry};
use tokio_util::sync::CancellationToken;

use crate::membership::{Membership, NodeSpec, Source};
use crate::metrics::Metrics;

/// Where the registry is and how often it is read in full.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub redis: String,
    /// Key and channel prefix; the nodes' `--redis-prefix`.
    pub prefix: String,
    /// Period of the full read that backs up the change notifications.
    pub interval: Duration,
}

/// Runs until `token` is cancelled.
pub async fn run(
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    d: Discovery,
    token: CancellationToken,
) {
    let registry = Registry::new(&d.prefix);
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow(&membership, &metrics, &d, &registry, &token).await {
            Ok(()) => return,
            Err(e) => {
                metrics.registry_errors.inc();
                tracing::warn!(redis = %d.redis, "registry: {e}; keeping the last membership");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's worth: subscribe, read, and read again on every event or tick.
async fn follow(
    membership: &Membership,
    metrics: &Metrics,
    d: &Discovery,
    registry: &Registry,
    token: &CancellationToken,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(d.redis.as_str())?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client.get_multiplexed_async_connection_with_config(&cfg).await?;
    let (mut sink, mut events) = client.get_async_pubsub().await?.split();
    sink.subscribe(registry.events_channel()).await?;
    tracing::info!(redis = %d.redis, "following the node registry");
    sync(membership, metrics, registry, &mut conn).await?;
    let mut tick = tokio::time::interval(d.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            ev = events.next() => {
                if ev.is_none() {
                    return Err(redis::RedisError::from((redis::ErrorKind::Io, "registry subscription closed")));
                }
            }
            _ = tick.tick() => {}
        }
        sync(membership, metrics, registry, &mut conn).await?;
    }
}

/// Reads the live registry and makes it the ring's registry members.
async fn sync(
    membership: &Membership,
    metrics: &Metrics,
    registry: &Registry,
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    let records = registry.live(conn).await?;
    membership.sync(Source::Registry, specs(&records));
    metrics.registry_syncs.inc();
    Ok(())
}

/// Registry records as ring members; an unusable record is logged and skipped.
fn specs(records: &[NodeRecord]) -> Vec<NodeSpec> {
    records
        .iter()
        .filter_map(|r| match NodeSpec::new(&r.id, &r.addr, Some(r.weight)) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(node = %r.id, addr = %r.addr, "registry entry skipped: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_specs_and_bad_ones_are_skipped() {
        let recs = [
            NodeRecord { id: "node-a".into(), addr: "127.0.0.1:7001".into(), weight: 2 },
            NodeRecord { id: "bad id".into(), addr: "127.0.0.1:7002".into(), weight: 1 },
            NodeRecord { id: "node-c".into(), addr: "nowhere".into(), weight: 1 },
        ];
        let s = specs(&recs);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].id.as_str(), "node-a");
        assert_eq!(s[0].weight, 2);
    }
}
