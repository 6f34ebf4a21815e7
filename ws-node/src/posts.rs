//! Idempotent server publishes: the answer each `(room, id)` got, kept for a window, so a
//! back end that retries a publish (a timeout, a router that died before it acknowledged
//! an inbox entry) gets the first answer instead of a second message. A retry that comes
//! while the first is still in flight waits for it. Failures are not kept: they may be
//! retried. This is the node's own memory; with Redis, internal.rs also keeps a mark in
//! Redis for the room's next owner.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::ids::RoomId;
use tokio::sync::OnceCell;

/// How long a publish `id` is remembered.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Ids remembered at most; past it the oldest go first (and a retry that late is new).
pub const MAX_IDS: usize = 100_000;

type Slot<T> = (Instant, Arc<OnceCell<T>>);

/// The answers of recent publishes with an id; `T` is what a publish answers.
#[derive(Debug)]
pub struct Posts<T> {
    seen: Mutex<HashMap<(RoomId, String), Slot<T>>>,
}

impl<T> Default for Posts<T> {
    fn default() -> Self {
        Self { seen: Mutex::default() }
    }
}

impl<T: Clone> Posts<T> {
    /// Runs `publish` unless `(room, id)` was published within the window; either way the
    /// `seq`. Without an `id` every call publishes.
    pub async fn once<F, Fut, E>(
        &self,
        room: &RoomId,
        id: Option<String>,
        publish: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Some(id) = id else { return publish().await };
        let cell = self.slot(room, id, Instant::now());
        cell.get_or_try_init(publish).await.cloned()
    }

    fn slot(&self, room: &RoomId, id: String, now: Instant) -> Arc<OnceCell<T>> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_IDS {
            seen.retain(|_, (at, _)| now.duration_since(*at) < WINDOW);
            if seen.len() >= MAX_IDS {
                // Still full inside the window: forget the oldest tenth.
                let mut ages: Vec<Instant> = seen.values().map(|(at, _)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 10];
                seen.retain(|_, (at, _)| *at > cut);
            }
        }
        let key = (room.clone(), id);
        match seen.get(&key) {
            Some((at, cell)) if now.duration_since(*at) < WINDOW => cell.clone(),
            _ => {
                let cell = Arc::new(OnceCell::new());
                seen.insert(key, (now, cell.clone()));
                cell
            }
        }
    }

    /// Ids remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn a_retried_id_gets_the_first_seq_and_a_failure_is_not_kept() {
        let posts = Posts::<u64>::default();
        let room = RoomId::parse("r").unwrap();
        let next = AtomicU64::new(0);
        let publish = || async { Ok::<_, ()>(next.fetch_add(1, Ordering::SeqCst) + 1) };
        assert_eq!(posts.once(&room, Some("a".into()), publish).await, Ok(1));
        assert_eq!(posts.once(&room, Some("a".into()), publish).await, Ok(1));
        assert_eq!(posts.once(&room, None, publish).await, Ok(2));
        let other = RoomId::parse("s").unwrap();
        assert_eq!(posts.once(&other, Some("a".into()), publish).await, Ok(3));
        let failed = posts.once(&room, Some("b".into()), || async { Err::<u64, _>("down") }).await;
        assert_eq!(failed, Err("down"));
        assert_eq!(posts.once(&room, Some("b".into()), publish).await, Ok(4), "retried");
    }

    #[tokio::test]
    async fn a_retry_while_the_first_is_in_flight_waits_for_it() {
        let posts = Arc::new(Posts::<u64>::default());
        let room = RoomId::parse("r").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
        let first = {
            let (posts, room) = (posts.clone(), room.clone());
            tokio::spawn(async move {
                posts
                    .once(&room, Some("x".into()), || async { Ok::<_, ()>(rx.await.unwrap()) })
                    .await
            })
        };
        shared::testkit::wait_until(Duration::from_secs(5), "the first post in flight", || {
            let n = posts.len();
            async move { n == 1 }
        })
        .await;
        let second = {
            let (posts, room) = (posts.clone(), room.clone());
            tokio::spawn(async move {
                posts.once(&room, Some("x".into()), || async { Ok::<_, ()>(99) }).await
            })
        };
        tx.send(7).unwrap();
        assert_eq!(first.await.unwrap(), Ok(7));
        assert_eq!(second.await.unwrap(), Ok(7), "not published a second time");
    }
}
