//! The archive queue's wire format, shared by the nodes that fill it and the archivers that
//! drain it: one [`Record`] per stamped message, the Redis Stream keys it goes to (sharded
//! by room, one hash tag per shard) and the in-process queue `fleet up` uses instead.

use std::hash::Hasher;

use tokio::sync::mpsc;

/// The consumer group every archiver reads the queue in.
pub const GROUP: &str = "archivers";

/// Shards of the queue when nothing says otherwise: a Redis Cluster spreads them over its
/// masters; nodes and archivers must agree on the number.
pub const DEFAULT_SHARDS: u32 = 4;

/// Most shards (a bound on the keys one archiver reads in one `XREADGROUP`).
pub const MAX_SHARDS: u32 = 256;

/// The kinds of entries in the queue (the `k` field). Read and delivery markers will be a
/// second kind, next to messages.
pub const KIND_MESSAGE: &str = "m";

/// One stamped message on its way to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub room: String,
    /// The room's history epoch: with `seq` it names the message for good.
    pub epoch: String,
    pub seq: u64,
    /// The `message` frame as members got it (JSON text with `from`, `ts`, `body`).
    pub frame: String,
}

impl Record {
    /// The stream fields of the record, in the order `XADD` takes them.
    pub fn fields(&self) -> [(&'static str, String); 5] {
        [
            ("k", KIND_MESSAGE.to_string()),
            ("room", self.room.clone()),
            ("epoch", self.epoch.clone()),
            ("seq", self.seq.to_string()),
            ("f", self.frame.clone()),
        ]
    }
}

/// The shard of `room`: FNV-1a of its name (no random seed, so every process agrees)
/// modulo `shards`.
pub fn shard(room: &str, shards: u32) -> u32 {
    let mut h = fnv::FnvHasher::default();
    h.write(room.as_bytes());
    (h.finish() % u64::from(shards.clamp(1, MAX_SHARDS))) as u32
}

/// The stream of shard `shard`: `{prefix}:archive:{N}`, the braces a Redis Cluster hash
/// tag, so each shard is one slot and the shards spread over the cluster.
pub fn stream_key(prefix: &str, shard: u32) -> String {
    format!("{prefix}:archive:{{{shard}}}")
}

/// Where entries that could not be archived go, with the reason.
pub fn dead_key(prefix: &str) -> String {
    format!("{prefix}:archive:dead")
}

/// The in-process queue of `fleet up`: bounded, so a slow database makes the nodes' history
/// writer wait (it never drops) while the rooms go on.
pub fn local_queue(capacity: usize) -> (mpsc::Sender<Record>, mpsc::Receiver<Record>) {
    mpsc::channel(capacity.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard("chat:1", 4), shard("chat:1", 4));
        assert_eq!(shard("x", 1), 0);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[shard(&format!("room-{i}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
        assert_eq!(stream_key("rf", 3), "rf:archive:{3}");
    }
}
