//! The quorums of per-key Flexible Paxos (core/PROTOCOL.md, "Quorums"): the one place that
//! says how many answers decide anything. Pure functions of a membership and who answered.
//!
//! Phase 1 needs a majority of one cluster (the proposer's own); phase 2 a majority of every
//! cluster; the fast round (ballot 0) every participant. Every phase-1 quorum meets every
//! phase-2 quorum (the phase-2 quorum holds a majority of the phase-1 quorum's cluster), and
//! the fast quorum meets everything, so at most one value is ever chosen.

use crate::membership::Membership;
use crate::types::{ClusterId, NodeId};

/// A majority of `n` nodes.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Whether `answered` holds a majority of `cluster` of `participants` (phase 1; and what a
/// read's question needs).
pub fn cluster_majority(
    participants: &Membership,
    cluster: &ClusterId,
    answered: impl Fn(&NodeId) -> bool,
) -> bool {
    let nodes = participants.nodes_of(cluster);
    !nodes.is_empty() && nodes.iter().filter(|n| answered(n)).count() >= majority(nodes.len())
}

/// Whether `accepted` holds a majority of every cluster of `participants` (phase 2 of a
/// classic ballot).
pub fn every_cluster_majority(
    participants: &Membership,
    accepted: impl Fn(&NodeId) -> bool,
) -> bool {
    participants.cluster_count() > 0
        && participants
            .clusters()
            .all(|(_, nodes)| nodes.iter().filter(|n| accepted(n)).count() >= majority(nodes.len()))
}

/// Whether every participant accepted (the fast round).
pub fn everyone(participants: &Membership, accepted: impl Fn(&NodeId) -> bool) -> bool {
    !participants.is_empty() && participants.nodes().all(accepted)
}

/// How many answers a cluster of `n` members can still miss and give a majority.
pub fn tolerated(n: usize) -> usize {
    n - majority(n).min(n)
}

/// How many members of its cluster a joining node copies from (core/PROTOCOL.md, "Joining"):
/// a majority of the others, the cluster as it was before the joiner. Every value chosen
/// before has a majority of that cluster (directly or through earlier copies), and a majority
/// of it meets every such set. `None`: the joiner is alone in its cluster and copies from a
/// majority of another one.
pub fn copy_sources(others_in_cluster: usize) -> Option<usize> {
    (others_in_cluster > 0).then(|| majority(others_in_cluster))
}

/// Whether a cluster of `members` may lose one member that cannot hand over what it holds (an
/// operator's removal of a dead node; core/PROTOCOL.md, "Operator removal"). A value chosen
/// in a cluster of `n` is held by at least `ceil(n / 2)` of its members (a majority of `n`
/// then, kept through joins and such removals), which every majority of `n` meets. Losing one
/// holder leaves `ceil(n / 2) - 1`, still met by every majority of `n - 1` exactly when `n` is
/// odd.
pub fn may_lose_one(members: usize) -> bool {
    members % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> Membership {
        Membership::from_pairs(
            pairs
                .iter()
                .map(|(c, n)| (ClusterId::from(*c), NodeId::from(*n))),
        )
    }

    fn set<'a>(nodes: &'a [&'a str]) -> impl Fn(&NodeId) -> bool + 'a {
        move |n| nodes.contains(&n.as_str())
    }

    #[test]
    fn majorities() {
        assert_eq!(
            (1..=6).map(majority).collect::<Vec<_>>(),
            vec![1, 2, 2, 3, 3, 4]
        );
        assert_eq!(
            (1..=6).map(tolerated).collect::<Vec<_>>(),
            vec![0, 0, 1, 1, 2, 2]
        );
    }

    #[test]
    fn phase_two_needs_a_majority_of_every_cluster() {
        let p = m(&[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
            ("b", "b3"),
        ]);
        assert!(every_cluster_majority(&p, set(&["a1", "a2", "b2", "b3"])));
        assert!(!every_cluster_majority(&p, set(&["a1", "a2", "a3", "b3"])));
        assert!(!every_cluster_majority(&Membership::default(), set(&[])));
    }

    #[test]
    fn phase_one_needs_a_majority_of_one_cluster() {
        let p = m(&[("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")]);
        assert!(cluster_majority(&p, &"a".into(), set(&["a1", "a3"])));
        assert!(!cluster_majority(&p, &"a".into(), set(&["a1", "b1"])));
        assert!(!cluster_majority(&p, &"c".into(), set(&["a1"])));
    }

    #[test]
    fn every_phase_one_quorum_meets_every_phase_two_quorum() {
        // Exhaustive over two clusters of 3 and 4: any majority of one cluster and any set
        // with a majority of every cluster share a node.
        let nodes = ["a1", "a2", "a3", "b1", "b2", "b3", "b4"];
        let p = m(&[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
            ("b", "b3"),
            ("b", "b4"),
        ]);
        let subsets: Vec<Vec<&str>> = (0u32..1 << nodes.len())
            .map(|bits| {
                (0..nodes.len())
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| nodes[i])
                    .collect()
            })
            .collect();
        for q2 in subsets
            .iter()
            .filter(|s| every_cluster_majority(&p, set(s)))
        {
            for cluster in ["a", "b"] {
                for q1 in subsets
                    .iter()
                    .filter(|s| cluster_majority(&p, &cluster.into(), set(s)))
                {
                    assert!(q1.iter().any(|n| q2.contains(n)), "{q1:?} misses {q2:?}");
                }
            }
        }
    }

    #[test]
    fn the_fast_round_needs_everyone() {
        let p = m(&[("a", "a1"), ("a", "a2"), ("b", "b1")]);
        assert!(everyone(&p, set(&["a1", "a2", "b1"])));
        assert!(!everyone(&p, set(&["a1", "b1"])));
    }

    #[test]
    fn a_joiner_copies_from_a_majority_of_the_others() {
        assert_eq!(copy_sources(0), None);
        assert_eq!(copy_sources(2), Some(2));
        assert_eq!(copy_sources(3), Some(2));
        assert_eq!(copy_sources(4), Some(3));
    }

    #[test]
    fn only_odd_clusters_lose_a_dead_member_unforced() {
        // Cluster of 5, value held by 3 (a majority then); two removals in a row would leave
        // one holder among 3 members, which a majority of 3 can miss.
        assert!(may_lose_one(5));
        assert!(!may_lose_one(4));
        assert!(may_lose_one(3));
    }
}
