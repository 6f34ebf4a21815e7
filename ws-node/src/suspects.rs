//! Peers this node took for dead: a holder that let one room's span time out is not waited
//! on by the node's other rooms either, so a crash costs one span timeout, not one per room.
//! Anything heard from the peer clears it; so does time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Suspects {
    ttl: Duration,
    map: Mutex<HashMap<String, Instant>>,
    /// Whether the map may hold anyone: `clear` runs for every bus frame, and almost
    /// always there is nobody to clear, so it skips the lock then.
    any: AtomicBool,
}

impl Suspects {
    /// Suspicion lasts `ttl` (the heartbeat TTL: by then the registry knows for sure).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, map: Mutex::new(HashMap::new()), any: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mark(&self, node: &str, now: Instant) {
        self.lock().insert(node.to_owned(), now);
        self.any.store(true, Ordering::Release);
    }

    /// `node` spoke: it is alive.
    pub fn clear(&self, node: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.lock();
        m.remove(node);
        if m.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    pub fn is_suspect(&self, node: &str, now: Instant) -> bool {
        let mut m = self.lock();
        match m.get(node) {
            Some(at) if now.duration_since(*at) < self.ttl => true,
            Some(_) => {
                m.remove(node);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_ends_when_the_peer_speaks_or_the_ttl_passes() {
        let s = Suspects::new(Duration::from_secs(10));
        let t = Instant::now();
        s.mark("b", t);
        assert!(s.is_suspect("b", t + Duration::from_secs(1)));
        assert!(!s.is_suspect("b", t + Duration::from_secs(11)));
        s.mark("b", t);
        s.clear("b");
        assert!(!s.is_suspect("b", t));
    }
}
