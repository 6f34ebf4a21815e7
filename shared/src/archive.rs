//! The archive queue's wire format, shared by the nodes that fill it and the archivers that
//! drain it: one [`Record`] per stamped message or per change of a user's markers, the
//! Redis Stream keys it goes to (sharded by room, one hash tag per shard) and the
//! in-process queue `fleet up` uses instead.

use std::hash::Hasher;

use tokio::sync::mpsc;

/// The consumer group every archiver reads the queue in.
pub const GROUP: &str = "archivers";

/// Shards of the queue when nothing says otherwise: a Redis Cluster spreads them over its
/// masters; nodes and archivers must agree on the number.
pub const DEFAULT_SHARDS: u32 = 4;

/// Most shards (a bound on the keys one archiver reads in one `XREADGROUP`).
pub const MAX_SHARDS: u32 = 256;

/// The kinds of entries in the queue (the `k` field): a message, or a user's markers.
pub const KIND_MESSAGE: &str = "m";
pub const KIND_MARKER: &str = "u";

/// One entry on its way to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(Message),
    Marker(Marker),
}

/// One stamped message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub room: String,
    /// The room's history epoch: with `seq` it names the message for good.
    pub epoch: String,
    pub seq: u64,
    /// The `message` frame as members got it (JSON text with `from`, `ts`, `body`).
    pub frame: String,
    /// Days the archive keeps it (`[[rooms]] archive_days`); `None` = for good.
    pub keep_days: Option<u32>,
}

/// A user's markers in a room as one node saw them: how far the user said it read, and
/// how far the node had delivered to it. Both only rise within an epoch, so the archive
/// keeps the highest it was told (a marker sent twice, or late, changes nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub room: String,
    pub epoch: String,
    pub user: String,
    /// The read marker, when this change is a read (`None`: only delivery moved).
    pub read: Option<u64>,
    pub delivered: u64,
    /// Unix milliseconds when the node saw it (orders markers of different epochs).
    pub at: i64,
}

impl Record {
    pub fn room(&self) -> &str {
        match self {
            Self::Message(m) => &m.room,
            Self::Marker(m) => &m.room,
        }
    }

    /// The stream fields of the record, in the order `XADD` takes them.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Message(m) => {
                let mut f = vec![
                    ("k", KIND_MESSAGE.to_string()),
                    ("room", m.room.clone()),
                    ("epoch", m.epoch.clone()),
                    ("seq", m.seq.to_string()),
                    ("f", m.frame.clone()),
                ];
                if let Some(d) = m.keep_days {
                    f.push(("days", d.to_string()));
                }
                f
            }
            Self::Marker(m) => {
                let mut f = vec![
                    ("k", KIND_MARKER.to_string()),
                    ("room", m.room.clone()),
                    ("epoch", m.epoch.clone()),
                    ("user", m.user.clone()),
                    ("delivered", m.delivered.to_string()),
                    ("at", m.at.to_string()),
                ];
                if let Some(r) = m.read {
                    f.push(("read", r.to_string()));
                }
                f
            }
        }
    }

    /// The record of an entry's fields (`get` one by name), or why it is malformed.
    pub fn from_fields(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let field = |name: &str| get(name).ok_or_else(|| format!("no {name} field"));
        let num = |name: &str| -> Result<u64, String> {
            let v = field(name)?;
            v.parse().map_err(|_| format!("{name} {v:?} is not a number"))
        };
        let opt = |name: &str| -> Result<Option<u64>, String> {
            get(name).map(|_| num(name)).transpose()
        };
        let kind = field("k")?;
        match kind.as_str() {
            KIND_MESSAGE => Ok(Self::Message(Message {
                room: field("room")?,
                epoch: field("epoch")?,
                seq: num("seq")?,
                frame: field("f")?,
                keep_days: opt("days")?
                    .map(|d| u32::try_from(d).map_err(|_| format!("days {d} is too many")))
                    .transpose()?,
            })),
            KIND_MARKER => Ok(Self::Marker(Marker {
                room: field("room")?,
                epoch: field("epoch")?,
                user: field("user")?,
                read: opt("read")?,
                delivered: num("delivered")?,
                at: i64::try_from(num("at")?).map_err(|_| "at is too big".to_string())?,
            })),
            _ => Err(format!("unknown kind {kind:?}")),
        }
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

    #[test]
    fn records_round_trip_through_their_fields() {
        let get = |r: &Record| {
            let f = r.fields();
            Record::from_fields(|n| f.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
        };
        let m = Record::Message(Message {
            room: "r".into(),
            epoch: "e".into(),
            seq: 3,
            frame: "{}".into(),
            keep_days: Some(30),
        });
        assert_eq!(get(&m), Ok(m.clone()));
        let Record::Message(inner) = &m else { unreachable!() };
        let forever = Record::Message(Message { keep_days: None, ..inner.clone() });
        assert_eq!(get(&forever), Ok(forever.clone()));
        let u = Record::Marker(Marker {
            room: "r".into(),
            epoch: "e".into(),
            user: "ann".into(),
            read: Some(4),
            delivered: 9,
            at: 1700,
        });
        assert_eq!(get(&u), Ok(u.clone()));
        let Record::Marker(inner) = &u else { unreachable!() };
        let delivered = Record::Marker(Marker { read: None, ..inner.clone() });
        assert_eq!(get(&delivered), Ok(delivered.clone()));
        let none = |_: &str| None;
        assert_eq!(Record::from_fields(none), Err("no k field".to_string()));
        let bad = |n: &str| Some(if n == "k" { "x".to_string() } else { "1".to_string() });
        assert_eq!(Record::from_fields(bad), Err("unknown kind \"x\"".to_string()));
        let seq = |n: &str| Some(if n == "k" { "m".to_string() } else { "z".to_string() });
        assert!(Record::from_fields(seq).unwrap_err().contains("not a number"));
    }
}
