//! A room's per-user markers: how far each user has read (what its clients said, merged
//! across nodes) and how far this node delivered to it. Both only rise, and both are
//! bounded: past the cap, the lowest marker of a user who is not here makes room.

use std::collections::{BTreeMap, HashMap};

use shared::ids::UserId;

/// A room's read markers by user, cheap to clone (a persistent map): a `welcome` takes a
/// snapshot in O(1).
pub type Reads = imbl::OrdMap<UserId, u64>;

#[derive(Debug, Clone)]
pub struct Markers {
    read: Reads,
    /// The last `seq` handed to a connection of a user that is no longer here; users still
    /// connected have the room's delivered `seq` (the room knows it).
    delivered: HashMap<UserId, u64>,
    /// Other nodes' markers for messages this node has not seen yet (a gap being caught
    /// up): applied once it has, so no marker is ever above the room's `seq` here.
    held: BTreeMap<UserId, u64>,
    cap: usize,
}

/// The markers a room holds, for the archive and the server API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub read: BTreeMap<UserId, u64>,
    pub delivered: BTreeMap<UserId, u64>,
}

impl Markers {
    /// Markers for at most `cap` users each (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            read: Reads::new(),
            delivered: HashMap::new(),
            held: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    pub fn reads(&self) -> &Reads {
        &self.read
    }

    /// Raises `user`'s read marker to `seq`; whether it moved (a lower or equal one is
    /// ignored). `here` says which users are members now: they are evicted last.
    pub fn read(&mut self, user: &UserId, seq: u64, here: impl Fn(&UserId) -> bool) -> bool {
        match self.read.get(user) {
            Some(&old) if old >= seq => return false,
            Some(_) => {}
            None => {
                if self.read.len() >= self.cap
                    && let Some(victim) = lowest(self.read.iter().map(|(u, s)| (u, *s)), &here)
                {
                    self.read.remove(&victim);
                }
            }
        }
        self.read.insert(user.clone(), seq);
        true
    }

    /// Every read marker this node knows, held ones included (the higher of the two), for
    /// a sync: a node that joins later learns a marker held here from no one else.
    pub fn known(&self) -> Vec<(UserId, u64)> {
        let mut all: BTreeMap<UserId, u64> =
            self.read.iter().map(|(u, s)| (u.clone(), *s)).collect();
        for (u, s) in &self.held {
            let e = all.entry(u.clone()).or_insert(0);
            *e = (*e).max(*s);
        }
        all.into_iter().collect()
    }

    /// Keeps `user`'s marker `seq` until the room has seen that far (at most `cap` users).
    pub fn hold(&mut self, user: &UserId, seq: u64) {
        if let Some(s) = self.held.get_mut(user) {
            *s = (*s).max(seq);
        } else if self.held.len() < self.cap {
            self.held.insert(user.clone(), seq);
        }
    }

    /// The held markers the room has now seen (`upto`), to apply with [`Markers::read`].
    pub fn release(&mut self, upto: u64) -> Vec<(UserId, u64)> {
        if self.held.values().all(|s| *s > upto) {
            return Vec::new();
        }
        let (ready, later) =
            std::mem::take(&mut self.held).into_iter().partition(|(_, s)| *s <= upto);
        self.held = later;
        ready.into_iter().collect()
    }

    /// `user`'s last connection here left after it was handed everything up to `seq`.
    pub fn left(&mut self, user: &UserId, seq: u64, here: impl Fn(&UserId) -> bool) {
        if !self.delivered.contains_key(user)
            && self.delivered.len() >= self.cap
            && let Some(victim) = lowest(self.delivered.iter().map(|(u, s)| (u, *s)), &here)
        {
            self.delivered.remove(&victim);
        }
        let e = self.delivered.entry(user.clone()).or_insert(0);
        *e = (*e).max(seq);
    }

    /// The markers with `present` (users connected here) delivered up to `delivered`.
    pub fn snapshot<'a>(
        &self,
        present: impl Iterator<Item = &'a UserId>,
        delivered: u64,
    ) -> Snapshot {
        let read = self.read.iter().map(|(u, s)| (u.clone(), *s)).collect();
        let mut d: BTreeMap<UserId, u64> =
            self.delivered.iter().map(|(u, s)| (u.clone(), *s)).collect();
        for u in present {
            let e = d.entry(u.clone()).or_insert(0);
            *e = (*e).max(delivered);
        }
        Snapshot { read, delivered: d }
    }

    /// Every marker goes (the room closed: all its users left).
    pub fn clear(&mut self) {
        self.read = Reads::new();
        self.delivered.clear();
        self.held.clear();
    }
}

/// The user with the lowest marker, preferring one that is not here.
fn lowest<'a>(
    entries: impl Iterator<Item = (&'a UserId, u64)>,
    here: impl Fn(&UserId) -> bool,
) -> Option<UserId> {
    entries.min_by_key(|(u, s)| (here(u), *s)).map(|(u, _)| u.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn read_markers_only_rise() {
        let mut m = Markers::new(10);
        assert!(m.read(&u("a"), 5, |_| true));
        assert!(!m.read(&u("a"), 5, |_| true));
        assert!(!m.read(&u("a"), 3, |_| true));
        assert!(m.read(&u("a"), 7, |_| true));
        assert_eq!(m.reads().get(&u("a")), Some(&7));
    }

    #[test]
    fn the_cap_evicts_absent_users_first() {
        let mut m = Markers::new(2);
        m.read(&u("here"), 1, |_| true);
        m.read(&u("gone"), 9, |_| true);
        m.read(&u("new"), 4, |x| x.as_str() != "gone");
        let users: Vec<&str> = m.reads().keys().map(|k| k.as_str()).collect();
        assert_eq!(users, ["here", "new"]);
        // Everyone here: the lowest goes.
        m.read(&u("third"), 2, |_| true);
        let users: Vec<&str> = m.reads().keys().map(|k| k.as_str()).collect();
        assert_eq!(users, ["new", "third"]);
    }

    #[test]
    fn held_markers_wait_for_the_room_to_see_their_seq() {
        let mut m = Markers::new(2);
        m.hold(&u("a"), 5);
        m.hold(&u("a"), 4);
        m.hold(&u("b"), 3);
        m.hold(&u("c"), 1);
        assert!(m.release(2).is_empty());
        assert_eq!(m.release(3), [(u("b"), 3)]);
        assert_eq!(m.release(9), [(u("a"), 5)]);
        assert!(m.release(9).is_empty(), "c did not fit");
    }

    #[test]
    fn known_markers_include_held_ones() {
        let mut m = Markers::new(10);
        m.read(&u("a"), 2, |_| true);
        m.read(&u("b"), 4, |_| true);
        m.hold(&u("a"), 5);
        m.hold(&u("c"), 3);
        assert_eq!(m.known(), [(u("a"), 5), (u("b"), 4), (u("c"), 3)]);
    }

    #[test]
    fn delivered_markers_merge_present_users() {
        let mut m = Markers::new(2);
        m.left(&u("a"), 4, |_| false);
        m.left(&u("b"), 6, |_| false);
        m.left(&u("c"), 8, |_| false);
        let s = m.snapshot([u("b"), u("d")].iter(), 10);
        let d: Vec<(&str, u64)> = s.delivered.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(d, [("b", 10), ("c", 8), ("d", 10)]);
        m.clear();
        assert_eq!(m.snapshot(std::iter::empty(), 3), Snapshot::default());
    }
}
