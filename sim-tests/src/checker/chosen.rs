//! Which value each key's quorums chose, computed from the Accepted answers the acceptors
//! sent (the world reports each, and checks that the disk backs it), not from anything the
//! proposers say (core/PROTOCOL.md, invariants 6 and 7).
//!
//! Answers are grouped by (key, ballot, the acceptor's membership, proposal): an acceptor
//! answers only a request of its own membership, so a group is one ballot's accepts in the
//! membership its proposer counts them in. A group is chosen when it holds every member
//! (ballot 0) or a majority of every cluster (a classic ballot).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use replicator_core::quorum;
use replicator_core::{Ballot, Digest, Key, Membership, NodeId, Proposal, ProposalId, Time};

use super::{Broken, broken};
use crate::invariant::Invariant;

#[derive(Default)]
pub(super) struct Chosen {
    groups: BTreeMap<(Key, Ballot, Digest, ProposalId), Group>,
    /// The value chosen for each key, with when it was first seen chosen.
    pub chosen: BTreeMap<Key, (Proposal, Time)>,
    /// The proposal each classic ballot of each key carries.
    ballots: BTreeMap<(Key, Ballot), ProposalId>,
    /// What each proposal id carries.
    proposals: BTreeMap<ProposalId, (Key, Proposal)>,
}

struct Group {
    members: Arc<Membership>,
    acceptors: BTreeSet<NodeId>,
}

impl Chosen {
    /// `node` recorded (in memory) that it accepted `proposal` for `key` at `ballot`. No
    /// ballot carries two proposals, and no proposal id two values.
    pub fn accepted(
        &mut self,
        node: &NodeId,
        key: &Key,
        ballot: &Ballot,
        proposal: &Proposal,
    ) -> Result<(), Broken> {
        if !ballot.is_fast() {
            let first = self
                .ballots
                .entry((key.clone(), ballot.clone()))
                .or_insert_with(|| proposal.p.clone());
            if *first != proposal.p {
                return Err(broken(
                    Invariant::QuorumDiscipline,
                    Some(key),
                    format!(
                        "ballot {ballot} of {key:?} carries two proposals: {first} and {} (accepted by {node})",
                        proposal.p
                    ),
                ));
            }
        }
        let first = self
            .proposals
            .entry(proposal.p.clone())
            .or_insert_with(|| (key.clone(), proposal.clone()));
        if first.0 != *key || first.1.value != proposal.value {
            return Err(broken(
                Invariant::QuorumDiscipline,
                Some(key),
                format!(
                    "proposal id {} was used twice: for {:?} = {:?} and for {key:?} = {:?}",
                    proposal.p, first.0, first.1.value, proposal.value
                ),
            ));
        }
        Ok(())
    }

    /// `node`, whose membership was `members`, answered Accepted to `p` for `key` at `ballot`:
    /// it counts towards its group's quorum.
    pub fn answered(
        &mut self,
        node: &NodeId,
        key: &Key,
        ballot: &Ballot,
        p: &ProposalId,
        members: &Arc<Membership>,
        now: Time,
    ) -> Result<(), Broken> {
        debug_assert!(!members.is_empty());
        let Some((_, proposal)) = self.proposals.get(p) else {
            return Err(broken(
                Invariant::QuorumDiscipline,
                Some(key),
                format!("{node} answered Accepted to {p} at {ballot}, which no node ever accepted"),
            ));
        };
        let proposal = proposal.clone();
        let group = self
            .groups
            .entry((key.clone(), ballot.clone(), members.digest(), p.clone()))
            .or_insert_with(|| Group {
                members: members.clone(),
                acceptors: BTreeSet::new(),
            });
        if !group.acceptors.insert(node.clone()) {
            return Ok(());
        }
        let quorum = if ballot.is_fast() {
            quorum::everyone(&group.members, |n| group.acceptors.contains(n))
        } else {
            quorum::every_cluster_majority(&group.members, |n| group.acceptors.contains(n))
        };
        if !quorum {
            return Ok(());
        }
        match self.chosen.get(key) {
            Some((first, _)) if first.p != proposal.p => Err(broken(
                Invariant::OneOutcome,
                Some(key),
                format!(
                    "two values chosen for {key:?}: {} = {:?}, then {} = {:?} at {ballot}",
                    first.p, first.value, proposal.p, proposal.value
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.chosen.insert(key.clone(), (proposal.clone(), now));
                Ok(())
            }
        }
    }

    /// A node stores `proposal` for `key`: only a chosen value is ever stored.
    pub fn stored(&self, node: &str, key: &Key, proposal: &Proposal) -> Result<(), Broken> {
        match self.chosen.get(key) {
            Some((c, _)) if c.p == proposal.p => Ok(()),
            other => {
                let accepts: Vec<String> = self
                    .groups
                    .iter()
                    .filter(|((k, ..), _)| k == key)
                    .map(|((_, b, _, p), g)| {
                        let who: Vec<&str> = g.acceptors.iter().map(NodeId::as_str).collect();
                        format!("{p} at {b}: {who:?} of {} members", g.members.len())
                    })
                    .collect();
                Err(broken(
                    Invariant::OneOutcome,
                    Some(key),
                    format!(
                        "{node} stored {} = {:?} for {key:?}, which no quorum chose (chosen: {:?}; accepts: {accepts:?})",
                        proposal.p,
                        proposal.value,
                        other.map(|(c, _)| &c.p)
                    ),
                ))
            }
        }
    }
}
