//! Which value each key's quorums chose, computed from what reached the acceptors' disks, not
//! from anything the proposers say (core/PROTOCOL.md, invariants 6 and 7).
//!
//! An accept counts once it is durable (its answer never leaves before). Accepts are grouped
//! by (key, ballot, the acceptor's membership, proposal): acceptors only accept a request of
//! their own membership, so a group is one ballot's accepts in the membership its proposer
//! counted. A group is chosen when it holds every member (ballot 0) or a majority of every
//! cluster (a classic ballot).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use replicator_core::{Ballot, Digest, Key, Membership, NodeId, Proposal, ProposalId, Time, Value};
use replicator_core::quorum;

use super::{Broken, broken};
use crate::invariant::Invariant;

#[derive(Default)]
pub(super) struct Chosen {
    groups: BTreeMap<(Key, Ballot, Digest, ProposalId), Group>,
    /// The membership each node had when it accepted a value, until the accept is durable.
    pending: BTreeMap<(NodeId, Key, Ballot, ProposalId), Arc<Membership>>,
    /// The value chosen for each key, with when it was first seen chosen.
    pub chosen: BTreeMap<Key, (Proposal, Time)>,
    /// The proposal each classic ballot of each key carries.
    ballots: BTreeMap<(Key, Ballot), ProposalId>,
    /// The value each proposal id carries.
    proposals: BTreeMap<ProposalId, (Key, Value)>,
}

struct Group {
    members: Arc<Membership>,
    acceptors: BTreeSet<NodeId>,
}

impl Chosen {
    /// `node` recorded (in memory) that it accepted `proposal` for `key` at `ballot`, while its
    /// membership was `members`. No ballot carries two proposals, and no proposal id two values.
    pub fn accepted(
        &mut self,
        node: &NodeId,
        key: &Key,
        ballot: &Ballot,
        proposal: &Proposal,
        members: Arc<Membership>,
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
            .or_insert_with(|| (key.clone(), proposal.value.clone()));
        if first.0 != *key || first.1 != proposal.value {
            return Err(broken(
                Invariant::QuorumDiscipline,
                Some(key),
                format!(
                    "proposal id {} was used twice: for {:?} = {:?} and for {key:?} = {:?}",
                    proposal.p, first.0, first.1, proposal.value
                ),
            ));
        }
        self.pending.insert(
            (node.clone(), key.clone(), ballot.clone(), proposal.p.clone()),
            members,
        );
        Ok(())
    }

    /// The accept is on `node`'s disk: it counts towards its group's quorum.
    pub fn durable(
        &mut self,
        node: &NodeId,
        key: &Key,
        ballot: &Ballot,
        proposal: &Proposal,
        now: Time,
    ) -> Result<(), Broken> {
        let id = (node.clone(), key.clone(), ballot.clone(), proposal.p.clone());
        let Some(members) = self.pending.remove(&id) else {
            return Ok(());
        };
        let group = self
            .groups
            .entry((key.clone(), ballot.clone(), members.digest(), proposal.p.clone()))
            .or_insert_with(|| Group {
                members,
                acceptors: BTreeSet::new(),
            });
        group.acceptors.insert(node.clone());
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
            other => Err(broken(
                Invariant::OneOutcome,
                Some(key),
                format!(
                    "{node} stored {} = {:?} for {key:?}, which no quorum chose (chosen: {:?})",
                    proposal.p,
                    proposal.value,
                    other.map(|(c, _)| &c.p)
                ),
            )),
        }
    }
}
