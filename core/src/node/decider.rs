//! The vote collection of one proposal, and the decision rule (core/PROTOCOL.md, "Writing a
//! key", step 3): [`decision`] is the one place that says what commits a proposal.
//!
//! A [`Decider`] collects the votes for one proposal: the coordinator's while it reserves,
//! any node's while it resolves (Resolve(P)), and a leaving node's while it confirms that every
//! participant reflects the outcome. The handlers that feed it live in `resolve.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::Silence;
use crate::membership::Membership;
use crate::types::{ClusterId, Key, NodeId, ProposalId, Value};
use crate::wire::{DenyReason, Vote};

/// What the decision rule requires to commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Rule {
    /// Every participant granted (the protocol).
    EveryParticipant,
    /// All but one granted: only `InjectedBug::CommitOnPartialVote` selects it.
    AllButOne,
}

/// The decision rule: `Some(true)` once `p` is committed, `Some(false)` once it is aborted,
/// `None` while it is undecided.
///
/// Committed exactly when every participant granted it, or as soon as one answers `Committed`
/// (it stores `p`, so all had granted). Any `Denied` aborts it. A departed participant counts
/// as fenced, but only once every live participant answered: one of them may know that `p`
/// committed (say the departed node was removed by an operator while a Commit it had granted
/// was still on its way).
///
/// O(1) per call but for the departed set (small): the vote counts are kept running, so a
/// proposal over hundreds of participants stays linear in their number.
pub(crate) fn decision(
    participants: &Membership,
    departed: &BTreeSet<NodeId>,
    votes: &Votes,
    rule: Rule,
) -> Option<bool> {
    assert!(
        votes.len() <= participants.len(),
        "more votes than participants"
    );
    let departed_silent = || {
        let departed_missing = departed
            .iter()
            .filter(|n| participants.contains(n) && !votes.contains(n))
            .count();
        let silent = participants.len() - votes.len();
        departed_missing > 0 && silent == departed_missing
    };
    if votes.committed > 0 {
        return Some(true);
    }
    if votes.denied > 0 || departed_silent() {
        return Some(false);
    }
    let missing = participants.len() - votes.granted;
    let missing_allowed = match rule {
        Rule::EveryParticipant => 0,
        Rule::AllButOne => 1,
    };
    (missing <= missing_allowed).then_some(true)
}

/// Whether `vote` reflects the outcome `committed`: a node that learned it answers
/// `Committed` (committed) or `Denied` (aborted); a `Granted` reflects neither.
pub(crate) fn reflects(vote: &Vote, committed: bool) -> bool {
    match vote {
        Vote::Committed => committed,
        Vote::Denied { .. } => !committed,
        Vote::Granted => false,
    }
}

/// Whether every live participant's answer reflects the outcome (a leaving node's check that
/// no participant still holds the proposal open).
pub(crate) fn confirmed(
    participants: &Membership,
    departed: &BTreeSet<NodeId>,
    votes: &Votes,
    committed: bool,
) -> bool {
    participants
        .nodes()
        .all(|n| departed.contains(n) || votes.get(n).is_some_and(|v| reflects(v, committed)))
}

/// A vote collection for one proposal: the coordinator's, or any node's Resolve.
pub(crate) struct Decider {
    pub key: Key,
    /// The membership the proposal started with.
    pub participants: Arc<Membership>,
    pub votes: Votes,
    pub phase: Phase,
    /// For each remote cluster: which of its nodes is the representative, and whether it
    /// answered this round.
    pub reps: BTreeMap<ClusterId, Rep>,
    /// The client PUT waiting for the outcome, if any.
    pub op: Option<u64>,
    /// Set while leaving: keep asking until every participant reflects the decision.
    pub confirm: bool,
}

impl Decider {
    pub fn new(
        key: Key,
        participants: Arc<Membership>,
        own_cluster: &ClusterId,
        phase: Phase,
        op: Option<u64>,
        confirm: bool,
    ) -> Decider {
        let reps = participants
            .clusters()
            .filter(|(c, _)| *c != own_cluster)
            .map(|(c, _)| (c.clone(), Rep::default()))
            .collect();
        Decider {
            key,
            participants,
            votes: Votes::default(),
            phase,
            reps,
            op,
            confirm,
        }
    }

    /// The participants that have not answered, and the clusters none of whose nodes did.
    pub fn silence(&self) -> Silence {
        Silence::among(&self.participants, |n| self.votes.contains(n))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    /// The coordinator's first round: Reserve sent, votes coming in.
    Reserving,
    /// Asking Status of every participant without a vote, round after round.
    Resolving { attempt: u32 },
    /// Decided; a leaving node asks until every participant reflects the outcome.
    Confirming { committed: bool, attempt: u32 },
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Rep {
    /// How many representatives of the cluster were given up on (the next one is tried).
    pub index: usize,
    pub answered: bool,
}

/// The votes heard for one proposal, with running counts so the decision rule is O(1).
#[derive(Default)]
pub(crate) struct Votes {
    map: BTreeMap<NodeId, Vote>,
    granted: usize,
    committed: usize,
    denied: usize,
}

impl Votes {
    /// Records `node`'s vote, replacing an earlier one.
    pub fn insert(&mut self, node: NodeId, vote: Vote) {
        self.count(&vote, 1);
        if let Some(old) = self.map.insert(node, vote) {
            self.count(&old, -1);
        }
        assert_eq!(
            self.granted + self.committed + self.denied,
            self.map.len(),
            "vote counts out of step"
        );
    }

    /// Keeps only the votes that reflect the outcome `committed`.
    pub fn keep_reflecting(&mut self, committed: bool) {
        self.map.retain(|_, v| reflects(v, committed));
        let votes = std::mem::take(&mut self.map);
        *self = Votes::default();
        for (n, v) in votes {
            self.insert(n, v);
        }
    }

    pub fn get(&self, node: &NodeId) -> Option<&Vote> {
        self.map.get(node)
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.map.contains_key(node)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The voters, in node order.
    pub fn voters(&self) -> impl Iterator<Item = &NodeId> {
        self.map.keys()
    }

    /// The value some participant stores for the key under another proposal, if a denial
    /// carried one: the proposal's client is told Exists, not Busy.
    pub fn stored_elsewhere(&self) -> Option<Value> {
        self.map.values().find_map(|v| match v {
            Vote::Denied {
                stored: Some(value),
                ..
            } => Some(value.clone()),
            _ => None,
        })
    }

    /// Whether the proposal was refused only "for now": every denial is one that ends by itself
    /// (a removal settling, views converging, a joiner still copying) or names a holder that
    /// `stale` says is finished (the coordinator's own earlier attempt, whose abort is on its
    /// way).
    pub fn only_passing_refusals(&self, stale: impl Fn(&ProposalId) -> bool) -> bool {
        self.denied > 0
            && self.map.values().all(|v| match v {
                Vote::Denied {
                    reason:
                        DenyReason::MembershipChanged | DenyReason::Settling | DenyReason::NotReady,
                    ..
                } => true,
                Vote::Denied {
                    reason: DenyReason::Busy,
                    holder: Some(q),
                    ..
                } => stale(q),
                Vote::Denied { .. } => false,
                Vote::Granted | Vote::Committed => true,
            })
    }

    /// The other proposals that denials named as holding the key reserved.
    pub fn holders(&self) -> impl Iterator<Item = &ProposalId> {
        self.map.values().filter_map(|v| match v {
            Vote::Denied {
                holder: Some(q), ..
            } => Some(q),
            _ => None,
        })
    }

    fn count(&mut self, vote: &Vote, delta: isize) {
        let slot = match vote {
            Vote::Granted => &mut self.granted,
            Vote::Committed => &mut self.committed,
            Vote::Denied { .. } => &mut self.denied,
        };
        let Some(counted) = slot.checked_add_signed(delta) else {
            panic!("vote count of {vote:?} would go negative")
        };
        *slot = counted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(nodes: &[&str]) -> Membership {
        Membership::from_pairs(nodes.iter().map(|n| {
            let cluster = &n[..1];
            (ClusterId::from(cluster), NodeId::from(*n))
        }))
    }

    fn votes(list: &[(&str, Vote)]) -> Votes {
        let mut v = Votes::default();
        for (n, vote) in list {
            v.insert(NodeId::from(*n), vote.clone());
        }
        v
    }

    fn denied() -> Vote {
        Vote::Denied {
            reason: DenyReason::Busy,
            stored: None,
            holder: None,
        }
    }

    #[test]
    fn passing_refusals_are_those_that_end_by_themselves() {
        let deny = |reason, holder: Option<&str>| Vote::Denied {
            reason,
            stored: None,
            holder: holder.map(|h| ProposalId {
                coordinator: NodeId::from(h),
                counter: 1,
            }),
        };
        let stale = |q: &ProposalId| q.coordinator.as_str() == "me";
        let passing = |list: &[(&str, Vote)]| votes(list).only_passing_refusals(stale);
        assert!(passing(&[
            ("a", Vote::Granted),
            ("b", deny(DenyReason::Settling, None)),
            ("c", deny(DenyReason::MembershipChanged, None)),
            ("d", deny(DenyReason::Busy, Some("me"))),
            ("e", deny(DenyReason::NotReady, None)),
        ]));
        assert!(!passing(&[("a", Vote::Granted)]), "nothing was refused");
        assert!(!passing(&[("b", deny(DenyReason::Busy, Some("other")))]));
        assert!(!passing(&[("b", deny(DenyReason::Busy, None))]));
        assert!(!passing(&[
            ("b", deny(DenyReason::Settling, None)),
            ("c", deny(DenyReason::Overloaded, None)),
        ]));
    }

    fn departed(nodes: &[&str]) -> BTreeSet<NodeId> {
        nodes.iter().map(|n| NodeId::from(*n)).collect()
    }

    const ALL: Rule = Rule::EveryParticipant;
    use Vote::{Committed, Granted};

    #[test]
    fn every_grant_commits_and_nothing_less() {
        let m = members(&["a1", "a2", "b1"]);
        let none = departed(&[]);
        assert_eq!(decision(&m, &none, &votes(&[]), ALL), None);
        let two = votes(&[("a1", Granted), ("b1", Granted)]);
        assert_eq!(decision(&m, &none, &two, ALL), None);
        let all = votes(&[("a1", Granted), ("a2", Granted), ("b1", Granted)]);
        assert_eq!(decision(&m, &none, &all, ALL), Some(true));
    }

    #[test]
    fn one_committed_vote_commits_and_one_denial_aborts() {
        let m = members(&["a1", "a2", "b1"]);
        let none = departed(&[]);
        assert_eq!(
            decision(&m, &none, &votes(&[("b1", Committed)]), ALL),
            Some(true)
        );
        assert_eq!(
            decision(&m, &none, &votes(&[("a1", Granted), ("b1", denied())]), ALL),
            Some(false)
        );
        // A Committed answer means every participant granted: it wins over a later fence.
        let both = votes(&[("a1", Committed), ("b1", denied())]);
        assert_eq!(decision(&m, &none, &both, ALL), Some(true));
    }

    #[test]
    fn a_departed_participant_counts_as_fenced_only_after_every_live_one_answered() {
        let m = members(&["a1", "a2", "b1"]);
        let gone = departed(&["b1"]);
        let one = votes(&[("a1", Granted)]);
        assert_eq!(decision(&m, &gone, &one, ALL), None, "a2 may know more");
        let live = votes(&[("a1", Granted), ("a2", Granted)]);
        assert_eq!(decision(&m, &gone, &live, ALL), Some(false));
        // A departed node that did vote counts by its vote.
        let all = votes(&[("a1", Granted), ("a2", Granted), ("b1", Granted)]);
        assert_eq!(decision(&m, &gone, &all, ALL), Some(true));
        // A node departed that is not a participant changes nothing.
        assert_eq!(decision(&m, &departed(&["c1"]), &live, ALL), None);
    }

    #[test]
    fn the_broken_rule_commits_with_one_grant_missing() {
        let m = members(&["a1", "a2", "b1"]);
        let two = votes(&[("a1", Granted), ("b1", Granted)]);
        assert_eq!(
            decision(&m, &departed(&[]), &two, Rule::AllButOne),
            Some(true)
        );
    }

    #[test]
    fn confirmed_once_every_live_participant_reflects_the_outcome() {
        let m = members(&["a1", "a2", "b1"]);
        let gone = departed(&["b1"]);
        let mut v = votes(&[("a1", Committed), ("a2", Granted)]);
        assert!(!confirmed(&m, &gone, &v, true));
        v.insert("a2".into(), Committed);
        assert!(confirmed(&m, &gone, &v, true));
        assert!(!confirmed(&m, &gone, &v, false));
    }

    #[test]
    fn counts_follow_replaced_and_dropped_votes() {
        let mut v = votes(&[("a1", Granted), ("a2", Granted), ("b1", denied())]);
        v.insert("a1".into(), Committed);
        assert_eq!((v.granted, v.committed, v.denied), (1, 1, 1));
        v.keep_reflecting(true);
        assert_eq!((v.granted, v.committed, v.denied, v.len()), (0, 1, 0, 1));
        assert!(v.contains(&"a1".into()));
    }

    #[test]
    fn a_denial_carrying_a_stored_value_is_found() {
        let stored = Vote::Denied {
            reason: DenyReason::Exists,
            stored: Some("x".into()),
            holder: None,
        };
        let v = votes(&[("a1", Granted), ("b1", stored)]);
        assert_eq!(v.stored_elsewhere(), Some(Value::from("x")));
        assert_eq!(votes(&[("a1", denied())]).stored_elsewhere(), None);
    }

    #[test]
    fn silence_names_silent_nodes_and_wholly_silent_clusters() {
        let d = {
            let mut d = Decider::new(
                "k".into(),
                Arc::new(members(&["a1", "a2", "b1", "b2"])),
                &"a".into(),
                Phase::Reserving,
                None,
                false,
            );
            d.votes.insert("a1".into(), Granted);
            d
        };
        let s = d.silence();
        assert_eq!(s.clusters, vec![ClusterId::from("b")]);
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(
            d.reps.keys().collect::<Vec<_>>(),
            vec![&ClusterId::from("b")]
        );
    }
}
