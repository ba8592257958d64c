//! What this node suspects of its peers (core/PROTOCOL.md, "Suspicion"): a node that missed a
//! fast round or a representative that did not answer is suspected for `suspect_for`, or until
//! anything is heard from it. A suspect is skipped by the fast round (which needs everyone)
//! and as a representative; quorums never depend on suspicion, only speed does.

use std::collections::BTreeMap;

use crate::membership::Membership;
use crate::types::{NodeId, Time};

#[derive(Default)]
pub(crate) struct Health {
    suspect_until: BTreeMap<NodeId, Time>,
}

impl Health {
    /// Suspects `node` until `until` (keeping a later suspicion).
    pub fn suspect(&mut self, node: &NodeId, until: Time) {
        let t = self.suspect_until.entry(node.clone()).or_insert(until);
        *t = (*t).max(until);
    }

    /// Something arrived from `node` (or its own answer, relayed): it is not suspected any more.
    pub fn heard(&mut self, node: &NodeId) {
        if !self.suspect_until.is_empty() {
            self.suspect_until.remove(node);
        }
    }

    pub fn is_suspect(&self, node: &NodeId, now: Time) -> bool {
        self.suspect_until.get(node).is_some_and(|t| *t > now)
    }

    /// Whether any node of `participants` is suspected at `now`.
    pub fn any_suspect(&self, participants: &Membership, now: Time) -> bool {
        !self.suspect_until.is_empty() && participants.nodes().any(|n| self.is_suspect(n, now))
    }

    /// The nodes suspected at `now`, in id order.
    pub fn suspects(&self, now: Time) -> impl Iterator<Item = &NodeId> {
        self.suspect_until
            .iter()
            .filter(move |(_, t)| **t > now)
            .map(|(n, _)| n)
    }

    /// Forgets suspicions that ran out, and nodes no longer members.
    pub fn prune(&mut self, now: Time, members: &Membership) {
        self.suspect_until
            .retain(|n, t| *t > now && members.contains(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_ends_with_time_or_with_news() {
        let mut h = Health::default();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        h.suspect(&a, Time::from_millis(10));
        h.suspect(&b, Time::from_millis(10));
        h.suspect(&a, Time::from_millis(5));
        assert!(h.is_suspect(&a, Time::from_millis(9)), "the later suspicion stays");
        assert!(!h.is_suspect(&a, Time::from_millis(10)));
        h.heard(&b);
        assert!(!h.is_suspect(&b, Time::from_millis(1)));
        let m = Membership::from_pairs([("c".into(), a.clone())]);
        assert!(h.any_suspect(&m, Time::from_millis(1)));
        assert!(!h.any_suspect(&m, Time::from_millis(11)));
        assert_eq!(h.suspects(Time::ZERO).count(), 1);
    }
}
