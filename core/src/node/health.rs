//! What this node suspects of its peers (core/PROTOCOL.md, "Suspicion"): a node that missed a
//! fast round, or a representative that did not answer, is suspected for `suspect_for`, twice
//! as long each time it is suspected again without having answered in time in between (up to
//! 64 times as long). A suspect is skipped by the fast round (which needs everyone) and as a
//! representative; quorums never depend on suspicion, only speed does.
//!
//! Only an answer in time clears a suspicion: an Accept answered by the time a ballot's quorum
//! was complete. Any message at all would not do: a slow node keeps sending, late. Until then
//! the node stays doubted after its suspicion runs out: it is tried again by the fast round,
//! but not as a representative while a node not doubted is there.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::membership::Membership;
use crate::types::{NodeId, Time};

#[derive(Default)]
pub(crate) struct Health {
    suspects: BTreeMap<NodeId, Suspicion>,
}

struct Suspicion {
    until: Time,
    /// How many times in a row it was suspected.
    strikes: u32,
}

/// A suspicion lasts at most this many times `suspect_for`.
const DOUBLINGS_MAX: u32 = 6;

impl Health {
    /// Suspects `node` from `now`: for `base`, doubled for every earlier strike.
    pub fn suspect(&mut self, node: &NodeId, now: Time, base: Duration) {
        let s = self.suspects.entry(node.clone()).or_insert(Suspicion {
            until: now,
            strikes: 0,
        });
        if s.until > now {
            // Suspected already: a second miss in the same period adds nothing.
            return;
        }
        let length = base.saturating_mul(1 << s.strikes.min(DOUBLINGS_MAX));
        s.until = now + length;
        s.strikes = s.strikes.saturating_add(1);
    }

    /// `node` answered in time: it is not suspected any more, and its strikes are forgotten.
    pub fn vouch(&mut self, node: &NodeId) {
        if !self.suspects.is_empty() {
            self.suspects.remove(node);
        }
    }

    /// Until when `node` is suspected (the origin of time if it is not).
    pub fn suspected_until(&self, node: &NodeId) -> Time {
        self.suspects.get(node).map_or(Time::ZERO, |s| s.until)
    }

    pub fn is_suspect(&self, node: &NodeId, now: Time) -> bool {
        self.suspects.get(node).is_some_and(|s| s.until > now)
    }

    /// Whether `node` was suspected and has not answered in time since, suspected now or not.
    /// A representative is picked among the nodes not doubted first: a slow node whose
    /// suspicion ran out would otherwise carry its cluster's answers, late, and the fast round
    /// would wait for them (and vouch for it).
    pub fn doubts(&self, node: &NodeId) -> bool {
        self.suspects.contains_key(node)
    }

    /// Whether any node of `participants` is suspected at `now`.
    pub fn any_suspect(&self, participants: &Membership, now: Time) -> bool {
        !self.suspects.is_empty() && participants.nodes().any(|n| self.is_suspect(n, now))
    }

    /// The nodes suspected at `now`, in id order.
    pub fn suspects(&self, now: Time) -> impl Iterator<Item = &NodeId> {
        self.suspects
            .iter()
            .filter(move |(_, s)| s.until > now)
            .map(|(n, _)| n)
    }

    /// Forgets nodes no longer members.
    pub fn prune(&mut self, members: &Membership) {
        self.suspects.retain(|n, _| members.contains(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_doubles_until_the_node_answers_in_time() {
        let mut h = Health::default();
        let a = NodeId::from("a");
        let ms = Duration::from_millis;
        h.suspect(&a, Time::from_millis(0), ms(10));
        assert!(h.is_suspect(&a, Time::from_millis(9)));
        h.suspect(&a, Time::from_millis(5), ms(10));
        assert!(
            !h.is_suspect(&a, Time::from_millis(10)),
            "no strike while suspected"
        );
        h.suspect(&a, Time::from_millis(10), ms(10));
        assert!(h.is_suspect(&a, Time::from_millis(29)), "twice as long");
        assert!(!h.is_suspect(&a, Time::from_millis(30)));
        h.vouch(&a);
        h.suspect(&a, Time::from_millis(40), ms(10));
        assert!(
            !h.is_suspect(&a, Time::from_millis(50)),
            "strikes forgotten"
        );
        assert!(h.doubts(&a), "doubted until it answers in time");
        h.vouch(&a);
        assert!(!h.doubts(&a));
        h.suspect(&a, Time::from_millis(60), ms(10));
        let m = Membership::from_pairs([("c".into(), a.clone())]);
        assert!(!h.any_suspect(&m, Time::from_millis(70)));
        assert!(h.doubts(&a), "its suspicion ran out, the doubt did not");
        assert_eq!(h.suspects(Time::from_millis(65)).count(), 1);
    }
}
