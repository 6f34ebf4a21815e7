//! The in-process archive queue of `fleet up`: the nodes' history writers send records
//! into a bounded channel (a full one makes them wait, never drop) and this drains it in
//! batches into the store. A record the database refuses `max_failures` times is logged
//! with the reason and counted as dead; nothing else is ever skipped.

use std::sync::Arc;

use shared::archive::Record;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::metrics::Metrics;
use crate::store::{MAX_BATCH, Store};

/// Drains `queue` into `store` in batches of at most `batch` until the queue closes (every
/// sender gone), or `token` is cancelled and what was queued is written.
pub async fn run(
    store: Store,
    mut queue: mpsc::Receiver<Record>,
    batch_size: usize,
    max_failures: u32,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    let batch_size = batch_size.clamp(1, MAX_BATCH);
    // Writes are not cut short by `token`: what was queued is written before the task
    // ends (the caller bounds how long it waits for that).
    let writes = CancellationToken::new();
    let mut carry: Vec<(Record, u32)> = Vec::new();
    loop {
        // Records the database refused go again on their own, so they never spoil a batch
        // of good ones.
        let mut recs: Vec<(Record, u32)> = std::mem::take(&mut carry);
        if recs.is_empty() {
            let first = tokio::select! {
                r = queue.recv() => r,
                _ = token.cancelled() => {
                    queue.close();
                    queue.recv().await
                }
            };
            match first {
                Some(r) => recs.push((r, 0)),
                None => return,
            }
        }
        while recs.len() < batch_size && !recs.iter().any(|(_, n)| *n > 0) {
            match queue.try_recv() {
                Ok(r) => recs.push((r, 0)),
                Err(_) => break,
            }
        }
        metrics.lag_entries.set((recs.len() + queue.len()) as i64);
        let mut rows = Vec::with_capacity(recs.len());
        let mut kept = Vec::with_capacity(recs.len());
        for (r, n) in recs {
            match batch::item(&r) {
                Ok(row) => {
                    rows.push(row);
                    kept.push((r, n));
                }
                Err(why) => dead(&r, &why, &metrics),
            }
        }
        let Some(outcomes) = batch::write(&store, &rows, &metrics, &writes).await else { return };
        for ((r, n), outcome) in kept.into_iter().zip(outcomes) {
            if let Err(why) = outcome {
                if n + 1 >= max_failures {
                    dead(&r, &format!("refused {} times: {why}", n + 1), &metrics);
                } else {
                    carry.push((r, n + 1));
                }
            }
        }
        metrics.lag_entries.set((carry.len() + queue.len()) as i64);
    }
}

fn dead(r: &Record, why: &str, metrics: &Metrics) {
    metrics.dead.inc();
    tracing::error!(record = ?r, reason = why, "archive: record given up");
}
