//! Which answers of a fast round that chose its value came late (core/PROTOCOL.md,
//! "Suspicion"). The fast round waits for every participant: a node that answers within the
//! grace, but well after its cluster's majority, made this create wait and would make the next
//! ones wait again. So would a slow representative, which carries its whole cluster's answers
//! late. Both are suspected rather than vouched for, and the next creates run classic ballots,
//! which need majorities only. Speed only: what any node accepts never depends on this.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::membership::Membership;
use crate::quorum;
use crate::types::{ClusterId, NodeId, Time};

/// How many recent majority latencies of a cluster its baseline is the lowest of.
const RECENT_ROUNDS: usize = 16;

/// Per other cluster: how long its majority took to answer in recent fast rounds.
#[derive(Default)]
pub(crate) struct Lateness {
    recent: BTreeMap<ClusterId, VecDeque<Duration>>,
}

/// The late answers of one fast round.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Late {
    /// Nodes that answered well after their cluster's majority.
    pub nodes: BTreeSet<NodeId>,
    /// Other clusters whose majority answered well after it did in recent rounds (their
    /// representative is what was slow, or the path to it).
    pub clusters: BTreeSet<ClusterId>,
}

impl Lateness {
    /// Judges a fast round that started at `started` and chose its value: `answered` holds
    /// when every participant's acceptance arrived. Late: a node whose answer came more than
    /// a quarter of its cluster's majority latency (at least `margin_min`) after that
    /// majority; another cluster whose majority latency exceeds the lowest of its recent ones
    /// by half of that (at least `margin_min`). Records each other cluster's latency.
    pub fn judge(
        &mut self,
        participants: &Membership,
        own: &ClusterId,
        answered: &BTreeMap<NodeId, Time>,
        started: Time,
        margin_min: Duration,
    ) -> Late {
        self.recent
            .retain(|cluster, _| !participants.nodes_of(cluster).is_empty());
        let mut late = Late::default();
        for (cluster, nodes) in participants.clusters() {
            let mut times: Vec<(Time, &NodeId)> = nodes
                .iter()
                .filter_map(|n| answered.get(n).map(|t| (*t, n)))
                .collect();
            times.sort();
            let Some(&(majority_at, _)) = times.get(quorum::majority(nodes.len()) - 1) else {
                continue;
            };
            let took = majority_at.since(started);
            let node_margin = (took / 4).max(margin_min);
            late.nodes.extend(
                times
                    .iter()
                    .filter(|(t, _)| t.since(majority_at) > node_margin)
                    .map(|(_, n)| (*n).clone()),
            );
            if cluster == own {
                continue;
            }
            let recent = self.recent.entry(cluster.clone()).or_default();
            if let Some(best) = recent.iter().min()
                && took > *best + (*best / 2).max(margin_min)
            {
                late.clusters.insert(cluster.clone());
            }
            if recent.len() == RECENT_ROUNDS {
                recent.pop_front();
            }
            recent.push_back(took);
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        Membership::from_pairs(
            [
                ("a", "a1"),
                ("a", "a2"),
                ("a", "a3"),
                ("b", "b1"),
                ("b", "b2"),
                ("b", "b3"),
                ("c", "c1"),
                ("c", "c2"),
                ("c", "c3"),
            ]
            .iter()
            .map(|(c, n)| (ClusterId::new(*c), NodeId::new(*n))),
        )
    }

    /// Answer times in milliseconds after the start at 0.
    fn answers(ms: &[(&str, u64)]) -> BTreeMap<NodeId, Time> {
        ms.iter()
            .map(|(n, t)| (NodeId::new(*n), Time::ZERO + Duration::from_millis(*t)))
            .collect()
    }

    fn judge(l: &mut Lateness, ms: &[(&str, u64)]) -> Late {
        l.judge(
            &membership(),
            &ClusterId::new("a"),
            &answers(ms),
            Time::ZERO,
            Duration::from_millis(5),
        )
    }

    const EVEN: [(&str, u64); 9] = [
        ("a1", 0),
        ("a2", 1),
        ("a3", 1),
        ("b1", 80),
        ("b2", 81),
        ("b3", 82),
        ("c1", 80),
        ("c2", 80),
        ("c3", 84),
    ];

    #[test]
    fn answers_close_to_their_majority_are_in_time() {
        let mut l = Lateness::default();
        for _ in 0..3 {
            assert_eq!(judge(&mut l, &EVEN), Late::default());
        }
    }

    /// A node 60 ms after its cluster's majority of 80 ms: the fast round waited for it.
    #[test]
    fn a_node_well_after_its_clusters_majority_is_late() {
        let mut l = Lateness::default();
        let mut slow = EVEN;
        slow[5] = ("b3", 140);
        slow[2] = ("a3", 40);
        let late = judge(&mut l, &slow);
        let nodes: Vec<&str> = late.nodes.iter().map(NodeId::as_str).collect();
        assert_eq!(nodes, ["a3", "b3"]);
        assert!(late.clusters.is_empty());
        // Within a quarter of the majority's latency (20 ms here): in time.
        slow[5] = ("b3", 100);
        slow[2] = ("a3", 5);
        assert_eq!(judge(&mut l, &slow), Late::default());
    }

    /// A cluster whose majority answered at 200 ms where it took 80 before: its
    /// representative carried its answers late. A cluster that is always 200 ms away is not.
    #[test]
    fn a_cluster_well_behind_its_own_recent_rounds_is_late() {
        let mut l = Lateness::default();
        judge(&mut l, &EVEN);
        let mut slow = EVEN;
        for (i, t) in [(6, 200), (7, 200), (8, 201)] {
            slow[i].1 = t;
        }
        let late = judge(&mut l, &slow);
        let clusters: Vec<&str> = late.clusters.iter().map(ClusterId::as_str).collect();
        assert_eq!(clusters, ["c"]);
        assert!(late.nodes.is_empty());

        let mut far = Lateness::default();
        for _ in 0..3 {
            assert_eq!(judge(&mut far, &slow), Late::default());
        }
    }

    /// Clusters that left the membership are forgotten: what is kept stays bounded.
    #[test]
    fn the_record_is_bounded() {
        let mut l = Lateness::default();
        for _ in 0..100 {
            judge(&mut l, &EVEN);
        }
        assert!(l.recent.values().all(|r| r.len() <= RECENT_ROUNDS));
        l.recent
            .insert(ClusterId::new("gone"), VecDeque::from([Duration::ZERO]));
        judge(&mut l, &EVEN);
        assert!(!l.recent.contains_key(&ClusterId::new("gone")));
    }
}
