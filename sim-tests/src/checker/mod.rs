//! The safety invariants of PROTOCOL.md ("Invariants the simulator checks"), checked on every
//! observation of the world as it happens.
//!
//! | file | what it checks |
//! |---|---|
//! | `views.rs` | each node's records, in memory and on disk: stability, promise discipline |
//! | `chosen.rs` | which value each key's quorums chose, from the Accepted answers sent (the world checks each is on disk): one value chosen per key, stored only if chosen, one proposal per ballot, one value per proposal id (rounds never reused: the world checks the Prepares sent) |
//! | here | agreement and validity of stored values, core violations, durability on the wire, and the index of proposals that client answers are checked against |

mod chosen;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use replicator_core::{
    Ballot, Digest, DurableKey, Key, Membership, NodeId, Note, PeerFaultKind, Proposal, ProposalId,
    Time, Value, WriteOp,
};
use transport_sim::{NodeIx, Obs};

use crate::invariant::Invariant;
use chosen::Chosen;
use views::View;

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Broken {
    pub invariant: Invariant,
    pub detail: String,
    /// The key concerned, to summarise its history.
    pub key: Option<Key>,
}

pub(crate) fn broken(invariant: Invariant, key: Option<&Key>, detail: String) -> Broken {
    Broken {
        invariant,
        detail,
        key: key.cloned(),
    }
}

/// What the checker needs to know of the node a write came from.
pub struct Writer<'a> {
    pub name: &'a NodeId,
    /// Its membership now (what an answer to itself counts in).
    pub members: Option<Arc<Membership>>,
    /// Whether it finished its join-time copy (a copy merges records; it accepts nothing).
    pub ready: bool,
}

#[derive(Default)]
pub struct Checker {
    memory: Vec<View>,
    disk: Vec<View>,
    quorums: Chosen,
    /// A node's accepts of its own ballots, until they are durable: its answer to itself
    /// (which never crosses the network, so the world does not report it) leaves then.
    own_accepts: BTreeMap<(NodeIx, Key, Ballot, ProposalId), Arc<Membership>>,
    /// Every membership a node had when observed, by digest: an answer names the digest it
    /// was given in.
    memberships: BTreeMap<Digest, Arc<Membership>>,
    /// Every (key, value) a client proposed.
    proposed: BTreeSet<(Key, Value)>,
    /// The stored proposal of every key stored anywhere.
    committed: BTreeMap<Key, (ProposalId, Value)>,
    /// Every proposal seen accepted, by (coordinator, key, value), with when it was first
    /// seen: lets a client's Busy or Exists answer be matched to the proposals it was about.
    proposals_of: BTreeMap<(NodeId, Key, Value), BTreeMap<ProposalId, Time>>,
    now: Time,
    pub decisions: u64,
    /// Inputs a node refused from a peer, by kind (every peer is honest here, so each is
    /// worth a look).
    pub rejected: BTreeMap<PeerFaultKind, u64>,
}

impl Checker {
    pub fn proposed(&mut self, key: Key, value: Value) {
        self.proposed.insert((key, value));
    }

    /// The proposal and value stored for every key stored anywhere.
    pub fn committed(&self) -> &BTreeMap<Key, (ProposalId, Value)> {
        &self.committed
    }

    /// The value chosen for `key`, and when it was first seen chosen.
    pub fn chosen(&self, key: &Key) -> Option<&(Proposal, Time)> {
        self.quorums.chosen.get(key)
    }

    /// The proposals by `coordinator` of `value` for `key` first accepted at or after `since`.
    pub fn proposals_of(
        &self,
        coordinator: &NodeId,
        key: &Key,
        value: &Value,
        since: Time,
    ) -> Vec<ProposalId> {
        self.proposals_of
            .get(&(coordinator.clone(), key.clone(), value.clone()))
            .map(|s| {
                s.iter()
                    .filter(|(_, t)| **t >= since)
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn views(&mut self, node: NodeIx) {
        while self.memory.len() <= node {
            self.memory.push(View::default());
            self.disk.push(View::default());
        }
    }

    /// Checks one observation. `writer`: the node of a `Write` or `Durable` observation.
    pub fn observe(
        &mut self,
        obs: &Obs,
        writer: Option<Writer<'_>>,
        now: Time,
    ) -> Result<(), Broken> {
        self.now = now;
        if let Some(members) = writer.as_ref().and_then(|w| w.members.as_ref()) {
            self.memberships
                .entry(members.digest())
                .or_insert_with(|| members.clone());
        }
        match (obs, writer) {
            (Obs::Write { node, ops }, Some(w)) => {
                self.views(*node);
                for op in ops {
                    self.write(*node, op, &w)?;
                }
            }
            (Obs::Durable { node, ops }, Some(w)) => {
                self.views(*node);
                for op in ops {
                    self.durable(*node, op, &w)?;
                }
            }
            (Obs::Undurable { what, key, .. }, _) => {
                return Err(broken(
                    Invariant::DurableBeforeAnswer,
                    Some(key),
                    what.clone(),
                ));
            }
            (
                Obs::Accepted {
                    key,
                    ballot,
                    proposal,
                    digest,
                    ..
                },
                Some(w),
            ) => {
                let Some(members) = self.memberships.get(digest).cloned() else {
                    return Err(broken(
                        Invariant::QuorumDiscipline,
                        Some(key),
                        format!(
                            "{} answered Accepted in a membership ({digest:?}) no node was seen with",
                            w.name
                        ),
                    ));
                };
                self.quorums
                    .answered(w.name, key, ballot, proposal, &members, now)?;
            }
            (Obs::BallotReused { what, key, .. }, _) => {
                return Err(broken(Invariant::QuorumDiscipline, Some(key), what.clone()));
            }
            (Obs::Crashed { node, .. }, _) => {
                self.views(*node);
                self.memory[*node] = self.disk[*node].clone();
                self.own_accepts.retain(|(n, ..), _| n != node);
            }
            (Obs::Note { note, .. }, w) => {
                let name = w.map(|w| w.name.to_string()).unwrap_or_default();
                self.note(note, &name)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn note(&mut self, note: &Note, node_name: &str) -> Result<(), Broken> {
        match note {
            Note::Violation { reason } => Err(broken(
                Invariant::CoreViolation,
                reason.key(),
                format!("{node_name}: {reason}"),
            )),
            Note::PeerInputRejected { reason, .. } => {
                *self.rejected.entry(reason.kind()).or_default() += 1;
                Ok(())
            }
            Note::Decided { .. } => {
                self.decisions += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A write the node asked for: its memory now holds it.
    fn write(&mut self, node: NodeIx, op: &WriteOp, w: &Writer<'_>) -> Result<(), Broken> {
        let name = w.name.as_str();
        let fresh = self.memory[node].apply(op, name, "in memory", w.ready)?;
        let WriteOp::PutKey { key, state } = op else {
            return Ok(());
        };
        match state {
            DurableKey::Open {
                accepted: Some((ballot, proposal)),
                ..
            } if fresh => {
                self.quorums.accepted(w.name, key, ballot, proposal)?;
                let own = match &ballot.node {
                    Some(n) => n == w.name,
                    None => proposal.p.coordinator == *w.name,
                };
                if let (true, Some(members)) = (own && w.ready, &w.members) {
                    let id = (node, key.clone(), ballot.clone(), proposal.p.clone());
                    self.own_accepts.insert(id, members.clone());
                }
                let first = self
                    .proposals_of
                    .entry((
                        proposal.p.coordinator.clone(),
                        key.clone(),
                        proposal.value.clone(),
                    ))
                    .or_default();
                first.entry(proposal.p.clone()).or_insert(self.now);
                Ok(())
            }
            DurableKey::Stored { chosen, .. } => self.store(name, key, chosen),
            DurableKey::Open { .. } => Ok(()),
        }
    }

    /// A write reached the node's disk.
    fn durable(&mut self, node: NodeIx, op: &WriteOp, w: &Writer<'_>) -> Result<(), Broken> {
        self.disk[node].apply(op, w.name.as_str(), "on disk", false)?;
        if let WriteOp::PutKey {
            key,
            state:
                DurableKey::Open {
                    accepted: Some((ballot, proposal)),
                    ..
                },
        } = op
        {
            let id = (node, key.clone(), ballot.clone(), proposal.p.clone());
            if let Some(members) = self.own_accepts.remove(&id) {
                self.quorums
                    .answered(w.name, key, ballot, &proposal.p, &members, self.now)?;
            }
        }
        Ok(())
    }

    /// A node stores `chosen` for `key` (in memory): it was chosen, it was proposed, and no
    /// node stores anything else.
    fn store(&mut self, name: &str, key: &Key, chosen: &Proposal) -> Result<(), Broken> {
        if let Some((q, v)) = self.committed.get(key)
            && *q == chosen.p
            && *v == chosen.value
        {
            // The first node to store this ran every check below; they would pass again.
            return Ok(());
        }
        self.quorums.stored(name, key, chosen)?;
        if !self.proposed.contains(&(key.clone(), chosen.value.clone())) {
            return Err(broken(
                Invariant::Validity,
                Some(key),
                format!(
                    "{name} stored {:?} for {key:?}, never proposed for it",
                    chosen.value
                ),
            ));
        }
        match self.committed.get(key) {
            Some((q, v)) => Err(broken(
                Invariant::Agreement,
                Some(key),
                format!(
                    "{name} stored {key:?} = {:?} for {}, another node stored {v:?} for {q}",
                    chosen.value, chosen.p
                ),
            )),
            None => {
                self.committed
                    .insert(key.clone(), (chosen.p.clone(), chosen.value.clone()));
                Ok(())
            }
        }
    }
}
