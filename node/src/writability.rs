//! Whether a write can be decided now, as this node sees it: the one rule behind `/health`'s
//! `writable` and the dashboard's verdicts per cluster and per node.
//!
//! A write is decided by a majority of every cluster, so it needs a reachable majority in each
//! of them (this node counts as reachable for its own), at least `cluster_size_min` members in
//! the cluster of the node that takes it, and that node ready, not leaving and able to write
//! to its disk.

use replicator_core::ClusterId;

use crate::status::Status;

/// One cluster's members and how many of them this node reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterReach {
    pub cluster: ClusterId,
    pub members: usize,
    /// Members the transport does not report down (this node included when it is one).
    pub reachable: usize,
    /// Members a decision needs.
    pub majority: usize,
}

impl ClusterReach {
    pub fn has_majority(&self) -> bool {
        self.reachable >= self.majority
    }
}

/// The members the transport reports down.
pub fn silent(s: &Status) -> Vec<&str> {
    s.peers
        .iter()
        .filter(|p| !p.up)
        .map(|p| p.peer.as_str())
        .collect()
}

/// Every cluster of the membership, sorted by name.
pub fn reach(s: &Status) -> Vec<ClusterReach> {
    let silent = silent(s);
    let mut all: Vec<ClusterReach> = s
        .membership
        .clusters()
        .map(|(c, nodes)| ClusterReach {
            cluster: c.clone(),
            members: nodes.len(),
            reachable: nodes
                .iter()
                .filter(|n| **n == s.id || !silent.contains(&n.as_str()))
                .count(),
            majority: replicator_core::quorum::majority(nodes.len()),
        })
        .collect();
    // By name (a ClusterId's own order is not its name's).
    all.sort_by_key(|r| r.cluster.to_string());
    all
}

/// The clusters without a reachable majority, sorted.
pub fn without_majority(reach: &[ClusterReach]) -> Vec<String> {
    let mut names: Vec<String> = reach
        .iter()
        .filter(|r| !r.has_majority())
        .map(|r| r.cluster.to_string())
        .collect();
    names.sort();
    names
}

/// Why a write sent to this node cannot be decided now (empty: it can). The reasons are the
/// ones `/health` documents in `not_writable`.
pub fn not_writable(s: &Status, reach: &[ClusterReach]) -> Vec<&'static str> {
    let mut why = Vec::new();
    if s.removed {
        why.push("removed");
    } else if !s.ready {
        why.push("not_ready");
    }
    if s.leaving {
        why.push("leaving");
    }
    if s.membership.nodes_of(&s.cluster).len() < s.cluster_size_min {
        why.push("cluster_too_small");
    }
    if reach.iter().any(|r| !r.has_majority()) {
        why.push("no_majority");
    }
    if s.storage_stalled.is_some() {
        why.push("storage_unavailable");
    }
    why
}

/// Why a write sent to a member of `cluster` cannot be decided now, as far as this node can
/// tell from the membership and whom it reaches (a member's own state, e.g. its disk, is the
/// member's to report): `no_majority` (this cluster has no reachable majority),
/// `other_cluster_without_majority`, `cluster_too_small` (fewer members than this node's
/// `cluster_size_min`). Empty: it can.
pub fn cluster_not_writable(
    s: &Status,
    reach: &[ClusterReach],
    cluster: &ClusterId,
) -> Vec<&'static str> {
    let mut why = Vec::new();
    let own = reach.iter().find(|r| r.cluster == *cluster);
    if own.is_some_and(|r| !r.has_majority()) {
        why.push("no_majority");
    }
    if reach
        .iter()
        .any(|r| r.cluster != *cluster && !r.has_majority())
    {
        why.push("other_cluster_without_majority");
    }
    if own.map_or(0, |r| r.members) < s.cluster_size_min {
        why.push("cluster_too_small");
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PeerInfo;
    use replicator_core::{Membership, NetworkId, NodeId, Stats};

    fn status(down: &[&str]) -> Status {
        let pairs = [
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
            ("b", "b3"),
        ];
        let membership = Membership::from_pairs(
            pairs
                .iter()
                .map(|(c, n)| (ClusterId::new(*c), NodeId::new(*n))),
        );
        Status {
            id: NodeId::new("a1"),
            cluster: ClusterId::new("a"),
            network: NetworkId::new("net"),
            removed: false,
            ready: true,
            leaving: false,
            membership,
            peers: pairs[1..]
                .iter()
                .map(|(c, n)| PeerInfo {
                    peer: n.to_string(),
                    cluster: c.to_string(),
                    up: !down.contains(n),
                })
                .collect(),
            suspects: Vec::new(),
            stats: Stats::default(),
            cluster_size_min: 3,
            storage_stalled: None,
        }
    }

    #[test]
    fn a_minority_down_costs_nothing() {
        let s = status(&["b3", "a2"]);
        let r = reach(&s);
        assert!(not_writable(&s, &r).is_empty());
        assert!(cluster_not_writable(&s, &r, &ClusterId::new("a")).is_empty());
        assert!(cluster_not_writable(&s, &r, &ClusterId::new("b")).is_empty());
    }

    #[test]
    fn a_cluster_without_majority_stops_writes_everywhere() {
        let s = status(&["b2", "b3"]);
        let r = reach(&s);
        assert_eq!(without_majority(&r), vec!["b".to_string()]);
        assert_eq!(not_writable(&s, &r), vec!["no_majority"]);
        assert_eq!(
            cluster_not_writable(&s, &r, &ClusterId::new("a")),
            vec!["other_cluster_without_majority"]
        );
        assert_eq!(
            cluster_not_writable(&s, &r, &ClusterId::new("b")),
            vec!["no_majority"]
        );
    }

    #[test]
    fn this_node_counts_for_its_own_cluster_and_its_own_state_matters() {
        let mut s = status(&["a2"]);
        s.ready = false;
        s.storage_stalled = Some("disk full".into());
        s.cluster_size_min = 4;
        let r = reach(&s);
        assert!(r[0].has_majority(), "{r:?}");
        assert_eq!(
            not_writable(&s, &r),
            vec!["not_ready", "cluster_too_small", "storage_unavailable"]
        );
        assert_eq!(
            cluster_not_writable(&s, &r, &ClusterId::new("b")),
            vec!["cluster_too_small"]
        );
    }
}
