//! A room's history at its owner: the last `size` stamped messages for `ttl`, under an
//! epoch that changes whenever the history is lost, and the replay a resuming member gets.
//! The entries are always one unbroken run of `seq`s ending at the room's last delivered
//! one, so "every message after SEQ is held" is one comparison.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How much history a room keeps (node config, per room-name pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Messages kept; 0 turns history off.
    pub size: usize,
    /// How long a message stays in the history.
    pub ttl: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self { size: 100, ttl: Duration::from_secs(300) }
    }
}

impl Policy {
    pub fn is_on(&self) -> bool {
        self.size > 0
    }
}

/// What a room found in the store when it opened: the epoch to continue (or a fresh one),
/// the last `seq` stamped, and the messages still held, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub epoch: String,
    pub seq: u64,
    pub entries: Vec<(u64, Instant, Utf8Bytes)>,
}

/// A new random epoch: 16 hex digits, so two nodes never pick the same one by chance.
pub fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    at: Instant,
    frame: Utf8Bytes,
}

#[derive(Debug, Clone)]
pub struct History {
    policy: Policy,
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl History {
    pub fn new(policy: Policy) -> Self {
        Self { policy, entries: VecDeque::new(), bytes: 0 }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Bytes of frames held (the `/metrics` gauge).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest `seq` held.
    pub fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// The newest `seq` held.
    pub fn last(&self) -> Option<u64> {
        self.entries.back().map(|e| e.seq)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Keeps a delivered message. One that does not follow the newest held (a gap the room
    /// skipped) starts the run again: what came before it can no longer be replayed whole.
    pub fn push(&mut self, seq: u64, at: Instant, frame: Utf8Bytes) {
        if !self.policy.is_on() {
            return;
        }
        match self.last() {
            Some(last) if seq <= last => return,
            Some(last) if seq != last + 1 => self.clear(),
            _ => {}
        }
        self.bytes += frame.len();
        self.entries.push_back(Entry { seq, at, frame });
        while self.entries.len() > self.policy.size {
            self.pop();
        }
    }

    /// Replaces the history with what the store held; only the unbroken run that ends at
    /// the newest entry is kept.
    pub fn load(&mut self, entries: Vec<(u64, Instant, Utf8Bytes)>, now: Instant) {
        self.clear();
        let mut run: Vec<(u64, Instant, Utf8Bytes)> = Vec::new();
        for e in entries {
            if run.last().is_some_and(|l| e.0 != l.0 + 1) {
                run.clear();
            }
            if run.last().is_none_or(|l| e.0 > l.0) {
                run.push(e);
            }
        }
        for (seq, at, frame) in run {
            self.push(seq, at, frame);
        }
        self.trim(now);
    }

    /// Drops what is older than the TTL.
    pub fn trim(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > self.policy.ttl)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.frame.len();
        }
    }

    /// At most `limit` messages with a `seq` after `since`, oldest first (the server API's
    /// read of the history).
    pub fn after(&self, since: u64, limit: usize) -> Vec<Utf8Bytes> {
        let skip = self.entries.partition_point(|e| e.seq <= since);
        self.entries.iter().skip(skip).take(limit).map(|e| e.frame.clone()).collect()
    }

    /// The newest `n` messages up to `last` (a first connect's `history=N`), oldest first.
    pub fn newest(&self, last: u64, n: usize) -> Vec<Utf8Bytes> {
        let end = self.entries.partition_point(|e| e.seq <= last);
        self.entries.range(end.saturating_sub(n)..end).map(|e| e.frame.clone()).collect()
    }

    /// The messages after `since` up to `last` (the room's last delivered `seq`), when the
    /// history holds every one of them and they are at most `max`; `None` otherwise.
    pub fn replay(&self, since: u64, last: u64, max: usize) -> Option<Vec<Utf8Bytes>> {
        if since == last {
            return Some(Vec::new());
        }
        if since > last || last - since > max as u64 {
            return None;
        }
        let (first, newest) = (self.first()?, self.last()?);
        if newest != last || first > since + 1 {
            return None;
        }
        let skip = (since + 1 - first) as usize;
        Some(self.entries.iter().skip(skip).map(|e| e.frame.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(size: usize, ttl: u64) -> History {
        History::new(Policy { size, ttl: Duration::from_secs(ttl) })
    }
    fn f(seq: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("m{seq}"))
    }

    #[test]
    fn replays_what_came_after_since() {
        let t = Instant::now();
        let mut x = h(10, 60);
        for s in 1..=5 {
            x.push(s, t, f(s));
        }
        assert_eq!(x.replay(2, 5, 100).unwrap(), vec![f(3), f(4), f(5)]);
        assert_eq!(x.replay(5, 5, 100).unwrap(), Vec::<Utf8Bytes>::new());
        assert_eq!(x.replay(0, 5, 100).unwrap().len(), 5);
        assert!(x.replay(6, 5, 100).is_none(), "since ahead of the room");
        assert!(x.replay(1, 5, 3).is_none(), "more than max_recovery missed");
        assert_eq!(x.newest(5, 2), vec![f(4), f(5)]);
        assert_eq!(x.newest(4, 2), vec![f(3), f(4)]);
        assert_eq!(x.newest(5, 99).len(), 5);
        assert!(x.newest(5, 0).is_empty());
    }

    #[test]
    fn reads_a_page_after_since() {
        let t = Instant::now();
        let mut x = h(10, 60);
        for s in 1..=5 {
            x.push(s, t, f(s));
        }
        assert_eq!(x.after(2, 2), vec![f(3), f(4)]);
        assert_eq!(x.after(0, 100).len(), 5);
        assert!(x.after(5, 10).is_empty());
    }

    #[test]
    fn trimmed_by_size_and_ttl() {
        let t = Instant::now();
        let mut x = h(3, 10);
        for s in 1..=5 {
            x.push(s, t + Duration::from_secs(s), f(s));
        }
        assert_eq!((x.first(), x.last(), x.len()), (Some(3), Some(5), 3));
        assert!(x.replay(1, 5, 100).is_none(), "4 and 5 held but 2 is gone");
        assert_eq!(x.replay(2, 5, 100).unwrap().len(), 3);
        x.trim(t + Duration::from_secs(14));
        assert_eq!(x.first(), Some(4));
        assert_eq!(x.bytes(), 4);
    }

    #[test]
    fn a_gap_starts_the_run_again() {
        let t = Instant::now();
        let mut x = h(10, 60);
        x.push(1, t, f(1));
        x.push(2, t, f(2));
        x.push(5, t, f(5));
        assert_eq!(x.first(), Some(5));
        assert!(x.replay(1, 5, 100).is_none());
        x.load(vec![(1, t, f(1)), (3, t, f(3)), (4, t, f(4))], t);
        assert_eq!((x.first(), x.last()), (Some(3), Some(4)));
    }

    #[test]
    fn off_keeps_nothing() {
        let mut x = h(0, 60);
        x.push(1, Instant::now(), f(1));
        assert!(x.is_empty());
        assert!(x.replay(0, 1, 100).is_none());
        assert!(x.replay(1, 1, 100).is_some());
    }

    #[test]
    fn new_epochs_are_valid_and_differ() {
        assert!(shared::ids::valid_epoch(&new_epoch()));
        assert_ne!(new_epoch(), new_epoch());
    }
}
