//! Retention: messages of rooms with `archive_days` carry when they may go
//! (`keep_until`); this deletes the expired ones in the background, [`EXPIRE_BATCH`] rows
//! per short transaction, so a month of backlog never holds a lock for long. Several
//! archivers may run it at once: a row deleted twice is deleted once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{EXPIRE_BATCH, Store};

/// Batches one round deletes at most before it sleeps again (a bound on how long one round
/// keeps the database busy; the next round goes on).
const MAX_BATCHES: u32 = 100;

/// Every `every` until `token` is cancelled, deletes what has expired.
pub async fn run(store: Store, every: Duration, metrics: Arc<Metrics>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        round(&store, &metrics, &token).await;
    }
}

/// One round: batch after batch until one comes back short, [`MAX_BATCHES`] were deleted,
/// or the database fails (the next round tries again). The rows deleted.
pub async fn round(store: &Store, metrics: &Metrics, token: &CancellationToken) -> u64 {
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        if token.is_cancelled() {
            break;
        }
        match store.expire(crate::store::now_ms()).await {
            Ok(n) => {
                total += n;
                metrics.expired.add(n);
                if n < u64::from(EXPIRE_BATCH) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("archive retention: {e}; trying again next round");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, "archive retention: expired messages deleted");
    }
    total
}
