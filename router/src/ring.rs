//! The consistent-hash ring as pure data: node IDs with weights placed on a
//! `consistent_hash_ring` ring hashed with FNV-1a, so every router process computes the same
//! placement. A ring is never changed in place: membership builds a new one with the next
//! generation and swaps it in.

use std::hash::{BuildHasher, Hasher};

use consistent_hash_ring::{Ring as HashRing, RingBuilder};
use fnv::FnvHasher;
use shared::ids::NodeId;

use crate::Error;

/// Virtual nodes per unit of weight: enough that three nodes stay within about 10% of an
/// even share, few enough that a rebuild takes well under a millisecond.
pub const DEFAULT_VNODES: usize = 160;

/// The hasher of keys and vnodes: FNV-1a, which has no random seed (unlike the std
/// `RandomState`), so two routers, or one router after a restart, place every room on the
/// same node. Its result goes through MurmurHash3's 64-bit finalizer: plain FNV-1a moves a
/// key by very little when only its last characters change, so `room-1` ... `room-9` would
/// land within 0.1% of the ring, on one node.
#[derive(Debug, Clone, Copy, Default)]
pub struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = MixedFnv;

    fn build_hasher(&self) -> MixedFnv {
        MixedFnv(FnvHasher::default())
    }
}

/// FNV-1a with a finalizer; see [`StableHasher`].
#[derive(Default)]
pub struct MixedFnv(FnvHasher);

impl Hasher for MixedFnv {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0.finish();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// One immutable ring. Cheap to read from many tasks; rebuilt on every change.
#[derive(Clone)]
pub struct Ring {
    generation: u64,
    hashes: HashRing<NodeId, StableHasher>,
    /// The ring's arcs in order, as (last hash of the arc, index into `nodes`): the
    /// clockwise walk that yields fallbacks runs over these.
    arcs: Vec<(u64, u32)>,
    /// Distinct members, sorted by ID.
    nodes: Vec<NodeId>,
    /// Each member's fraction of the 64-bit key space, same order as `nodes`.
    shares: Vec<f64>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("generation", &self.generation)
            .field("nodes", &self.nodes)
            .field("vnodes", &self.hashes.vnodes())
            .finish()
    }
}

impl Ring {
    /// A ring of `members` (ID, weight), each with `weight * vnodes_per_weight` virtual nodes.
    /// A weight of 0 leaves the member out; duplicate IDs keep the last weight.
    pub fn build(
        generation: u64,
        members: impl IntoIterator<Item = (NodeId, u32)>,
        vnodes_per_weight: usize,
    ) -> Self {
        let mut weighted: Vec<(NodeId, usize)> = Vec::new();
        for (id, weight) in members {
            weighted.retain(|(n, _)| *n != id);
            if weight > 0 {
                weighted.push((id, (weight as usize).saturating_mul(vnodes_per_weight.max(1))));
            }
        }
        let hashes =
            RingBuilder::new(StableHasher).weighted_nodes_iter(weighted.iter().cloned()).build();
        let mut nodes: Vec<NodeId> = weighted.into_iter().map(|(id, _)| id).collect();
        nodes.sort();
        let mut arcs = Vec::new();
        let mut shares = vec![0.0; nodes.len()];
        for arc in hashes.resident_ranges() {
            let Ok(i) = nodes.binary_search(arc.node()) else { continue };
            let keys = arc.keys();
            shares[i] += (keys.end() - keys.start()) as f64 + 1.0;
            arcs.push((*keys.end(), i as u32));
        }
        let space = 2f64.powi(64);
        for s in &mut shares {
            *s /= space;
        }
        Self { generation, hashes, arcs, nodes, shares }
    }

    /// The ring with no members: every lookup is [`Error::EmptyRing`].
    pub fn empty(generation: u64) -> Self {
        Self::build(generation, [], DEFAULT_VNODES)
    }

    /// Rises by one on every rebuild; proxied requests and admin answers name it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Members sorted by ID.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.binary_search(id).is_ok()
    }

    /// The member's fraction of the key space (0 when it is not on the ring).
    pub fn share(&self, id: &NodeId) -> f64 {
        self.nodes.binary_search(id).map(|i| self.shares[i]).unwrap_or(0.0)
    }

    /// The position of `key` on the ring: [`StableHasher`] over the key as `Hash for str`
    /// feeds it (its bytes, then 0xff).
    pub fn hash_key(key: &str) -> u64 {
        StableHasher.hash_one(key)
    }

    /// The ring drawn as arcs, clockwise from hash 0: (first hash, last hash, owner), with
    /// neighbouring arcs of one member merged. The first arc's start is above its end when it
    /// wraps past 2^64 - 1 to 0. Empty for an empty ring.
    pub fn arcs(&self) -> Vec<(u64, u64, &NodeId)> {
        let mut out: Vec<(u64, u64, &NodeId)> = Vec::new();
        let Some(&(last_end, _)) = self.arcs.last() else { return out };
        let mut start = last_end.wrapping_add(1);
        for &(end, i) in &self.arcs {
            let node = &self.nodes[i as usize];
            match out.last_mut() {
                Some(prev) if prev.2 == node => prev.1 = end,
                _ => out.push((start, end, node)),
            }
            start = end.wrapping_add(1);
        }
        // The last arc and the wrapping first one are one arc when a member holds both.
        if out.len() > 1
            && out[0].2 == out[out.len() - 1].2
            && let Some((s, _, _)) = out.pop()
        {
            out[0].0 = s;
        }
        out
    }

    /// The member that owns `key`.
    pub fn try_get(&self, key: &str) -> Result<&NodeId, Error> {
        self.hashes.try_get(key).ok_or(Error::EmptyRing)
    }

    /// Every member once, in the order a key falls back through them: the owner first, then
    /// the next distinct members clockwise. The second member is where the key goes when the
    /// owner leaves the ring, so retries land where the next ring will place the room.
    /// Filtering this walk to a subset gives the placement of a ring built from that subset.
    pub fn candidates(&self, key: &str) -> Candidates<'_> {
        self.candidates_at(Self::hash_key(key))
    }

    /// [`Ring::candidates`] for an already hashed key.
    pub fn candidates_at(&self, hash: u64) -> Candidates<'_> {
        let start = self.arcs.partition_point(|(end, _)| *end < hash);
        let start = if start == self.arcs.len() { 0 } else { start };
        Candidates { ring: self, next: start, walked: 0, seen: vec![false; self.nodes.len()] }
    }
}

/// The distinct members for a key in fallback order; see [`Ring::candidates`].
#[derive(Debug)]
pub struct Candidates<'a> {
    ring: &'a Ring,
    next: usize,
    walked: usize,
    seen: Vec<bool>,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a NodeId;

    fn next(&mut self) -> Option<&'a NodeId> {
        let arcs = &self.ring.arcs;
        while self.walked < arcs.len() {
            let (_, i) = arcs[self.next];
            self.next = (self.next + 1) % arcs.len();
            self.walked += 1;
            let i = i as usize;
            if !self.seen[i] {
                self.seen[i] = true;
                return Some(&self.ring.nodes[i]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn ring(ids: &[&str]) -> Ring {
        Ring::build(1, ids.iter().map(|s| (id(s), 1)), DEFAULT_VNODES)
    }

    #[test]
    fn an_empty_ring_is_an_error_not_a_panic() {
        let r = Ring::empty(7);
        assert!(matches!(r.try_get("room"), Err(Error::EmptyRing)));
        assert_eq!(r.candidates("room").count(), 0);
        assert_eq!(r.generation(), 7);
    }

    #[test]
    fn candidates_start_at_the_owner_and_name_every_node_once() {
        let r = ring(&["node-a", "node-b", "node-c"]);
        for i in 0..2000 {
            let key = format!("room-{i}");
            let c: Vec<_> = r.candidates(&key).collect();
            assert_eq!(c[0], r.try_get(&key).unwrap(), "{key}");
            let mut sorted = c.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
        }
    }

    #[test]
    fn the_second_candidate_owns_the_key_once_the_first_leaves() {
        let full = ring(&["node-a", "node-b", "node-c", "node-d"]);
        for i in 0..2000 {
            let key = format!("r{i}");
            let c: Vec<_> = full.candidates(&key).cloned().collect();
            let rest: Vec<&str> = ["node-a", "node-b", "node-c", "node-d"]
                .into_iter()
                .filter(|n| *n != c[0].as_str())
                .collect();
            assert_eq!(ring(&rest).try_get(&key).unwrap(), &c[1], "{key}");
        }
    }

    #[test]
    fn weights_scale_shares_and_shares_sum_to_one() {
        let r = Ring::build(1, [(id("a"), 1), (id("b"), 3), (id("z"), 0)], DEFAULT_VNODES);
        assert_eq!(r.len(), 2);
        assert!(!r.contains(&id("z")));
        let (a, b) = (r.share(&id("a")), r.share(&id("b")));
        assert!((a + b - 1.0).abs() < 1e-9, "{a} + {b}");
        assert!(b > 2.0 * a, "weight 3 gets clearly more than weight 1: {a} vs {b}");
    }

    #[test]
    fn arcs_cover_the_circle_once_and_match_the_owner_of_every_key() {
        let r = ring(&["node-a", "node-b", "node-c"]);
        let arcs = r.arcs();
        assert!(arcs.len() > 3);
        let span = |a: &(u64, u64, &NodeId)| a.1.wrapping_sub(a.0) as u128 + 1;
        assert_eq!(arcs.iter().map(span).sum::<u128>(), 1u128 << 64);
        for w in arcs.windows(2) {
            assert_eq!(w[0].1.wrapping_add(1), w[1].0, "arcs are contiguous");
            assert_ne!(w[0].2, w[1].2, "neighbours of one member are merged");
        }
        for i in 0..500 {
            let key = format!("room-{i}");
            let h = Ring::hash_key(&key);
            let inside = |a: &&(u64, u64, &NodeId)| h.wrapping_sub(a.0) <= a.1.wrapping_sub(a.0);
            let arc = arcs.iter().find(inside).unwrap();
            assert_eq!(arc.2, r.try_get(&key).unwrap(), "{key}");
        }
        assert!(Ring::empty(1).arcs().is_empty());
        assert_eq!(ring(&["solo"]).arcs().len(), 1);
    }

    #[test]
    fn key_hashes_are_fixed() {
        // FNV-1a of the bytes and 0xff, then fmix64 (checked against an independent
        // implementation). A change here moves every room of every deployed fleet.
        assert_eq!(Ring::hash_key("room-1"), 0xd285_8771_c6fa_10a8);
        assert_eq!(Ring::hash_key(""), 0x1bbd_5c81_3c69_a8d7);
    }

    #[test]
    fn neighbouring_ids_spread_over_the_nodes() {
        let r = ring(&["node-a", "node-b", "node-c"]);
        let owners: std::collections::HashSet<_> =
            (0..10).map(|i| r.try_get(&format!("room-{i}")).unwrap().clone()).collect();
        assert_eq!(owners.len(), 3, "room-0..room-9 do not cluster on one node");
    }
}
