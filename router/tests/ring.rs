//! Ring properties: stable placement across independently built rings, an even spread, and
//! minimal movement when a node joins or leaves.

use proptest::prelude::*;
use router::ring::{DEFAULT_VNODES, Ring};
use shared::ids::NodeId;

const ROOMS: usize = 100_000;

fn ids(names: &[String]) -> Vec<NodeId> {
    names.iter().map(|n| NodeId::parse(n).unwrap()).collect()
}

fn build(generation: u64, nodes: &[NodeId]) -> Ring {
    Ring::build(generation, nodes.iter().map(|n| (n.clone(), 1)), DEFAULT_VNODES)
}

fn room(i: usize) -> String {
    format!("room-{i}")
}

fn owners(ring: &Ring, rooms: usize) -> Vec<NodeId> {
    (0..rooms).map(|i| ring.try_get(&room(i)).unwrap().clone()).collect()
}

/// Naming schemes operators use; the spread bounds are checked on each. They are statistical
/// bounds, not properties of every name set: about 5% of random 3-name sets exceed 1.15x at
/// 160 vnodes, so they are not proptest properties.
fn schemes() -> Vec<Vec<String>> {
    let letters = ["a", "b", "c", "d"];
    vec![
        letters.iter().map(|l| format!("node-{l}")).collect(),
        (1..=4).map(|i| format!("node-{i}")).collect(),
        (0..4).map(|i| format!("ws-node-{i}")).collect(),
        (1..=4).map(|i| format!("10.0.0.{i}:7001")).collect(),
    ]
}

#[test]
fn three_nodes_share_within_15_percent_of_ideal() {
    for names in schemes() {
        let nodes = ids(&names[..3]);
        let ring = build(1, &nodes);
        let mut counts = vec![0usize; 3];
        for owner in owners(&ring, ROOMS) {
            counts[nodes.iter().position(|n| *n == owner).unwrap()] += 1;
        }
        let ideal = ROOMS as f64 / 3.0;
        let worst = *counts.iter().max().unwrap() as f64 / ideal;
        assert!(worst <= 1.15, "{names:?}: largest share {worst:.3}x ideal ({counts:?})");
    }
}

#[test]
fn a_fourth_node_takes_a_quarter_of_the_rooms_and_nothing_else_moves() {
    for names in schemes() {
        let all = ids(&names);
        let before = owners(&build(1, &all[..3]), ROOMS);
        let after = owners(&build(2, &all), ROOMS);
        let moved: Vec<usize> = (0..ROOMS).filter(|&i| before[i] != after[i]).collect();
        let frac = moved.len() as f64 / ROOMS as f64;
        assert!((0.20..=0.30).contains(&frac), "{names:?}: {frac:.3} of rooms moved");
        assert!(moved.iter().all(|&i| after[i] == all[3]), "{names:?}: a room moved elsewhere");
    }
}

fn node_names() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[a-z0-9][a-z0-9.:-]{0,20}", 2..8)
        .prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Two rings built from the same members in any order place every key alike, also
    /// the fallbacks: nothing depends on insertion order or a per-process hash seed.
    #[test]
    fn independently_built_rings_agree(names in node_names(), keys in proptest::collection::vec("[A-Za-z0-9._:-]{1,40}", 1..200)) {
        let nodes = ids(&names);
        let mut reversed = nodes.clone();
        reversed.reverse();
        let a = build(1, &nodes);
        let b = Ring::build(9, reversed.into_iter().map(|n| (n, 1)), DEFAULT_VNODES);
        for k in &keys {
            prop_assert_eq!(a.try_get(k).unwrap(), b.try_get(k).unwrap());
            prop_assert!(a.candidates(k).eq(b.candidates(k)));
        }
    }

    /// Adding a node moves rooms only onto the new node.
    #[test]
    fn adding_a_node_moves_rooms_only_to_it(names in node_names()) {
        let all = ids(&names);
        let (newcomer, rest) = all.split_last().unwrap();
        let before = owners(&build(1, rest), 5_000);
        let after = owners(&build(2, &all), 5_000);
        for i in 0..before.len() {
            prop_assert!(before[i] == after[i] || after[i] == *newcomer, "room {} moved to {:?}", i, after[i]);
        }
    }

    /// Removing a node moves exactly that node's rooms; everyone else's stay put.
    #[test]
    fn removing_a_node_moves_only_its_rooms(names in node_names(), pick in any::<prop::sample::Index>()) {
        let all = ids(&names);
        let gone = all[pick.index(all.len())].clone();
        let rest: Vec<NodeId> = all.iter().filter(|n| **n != gone).cloned().collect();
        let before = owners(&build(1, &all), 5_000);
        let after = owners(&build(2, &rest), 5_000);
        for i in 0..before.len() {
            if before[i] == gone {
                prop_assert!(after[i] != gone);
            } else {
                prop_assert_eq!(&before[i], &after[i]);
            }
        }
    }
}
