//! The safety invariants of PROTOCOL.md ("Invariants the simulator checks"), checked on every
//! observation of the world as it happens.
//!
//! The checker keeps its own view of every node, built only from what the nodes asked to be
//! written (in memory) and what reached their disks, so a node that silently loses or changes
//! a key is caught even if no message ever shows it.

use std::collections::{BTreeMap, BTreeSet};

use replicator_core::{
    DurableKey, Key, NodeId, Note, PeerFaultKind, ProposalId, Time, Value, WriteOp,
};
use transport_sim::{IdMap, IdSet, NodeIx, Obs};

/// One node as the checker sees it: what it stores, holds and released.
#[derive(Clone, Default)]
struct View {
    stored: IdMap<Key, ProposalId>,
    reserved: IdMap<Key, ProposalId>,
    /// Proposals whose reservation this node dropped without committing them (an Abort): it
    /// must never hold them again.
    released: IdSet<ProposalId>,
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Broken {
    pub invariant: &'static str,
    pub detail: String,
    /// The key concerned, to summarise its history.
    pub key: Option<Key>,
}

#[derive(Default)]
pub struct Checker {
    memory: Vec<View>,
    disk: Vec<View>,
    /// Every (key, value) a client proposed.
    proposed: BTreeSet<(Key, Value)>,
    /// The committed proposal and value of every key stored anywhere.
    committed: BTreeMap<Key, (ProposalId, Value)>,
    committed_proposals: IdSet<ProposalId>,
    /// Proposals decided aborted by some coordinator or resolver.
    aborted: IdMap<ProposalId, NodeIx>,
    /// Every proposal seen, by (coordinator, key, value): lets a client's Busy/Exists answer
    /// be matched to the proposals it was about.
    /// Committed proposals, with the time each was first reserved.
    proposals_of: BTreeMap<(NodeId, Key, Value), BTreeMap<ProposalId, Time>>,
    /// When each proposal was first reserved anywhere.
    first_seen: IdMap<ProposalId, Time>,
    now: Time,
    pub decisions: u64,
    /// Inputs a node refused from a peer, by kind (every peer is honest here, so each is
    /// worth a look).
    pub rejected: BTreeMap<PeerFaultKind, u64>,
}

fn broken(invariant: &'static str, key: Option<&Key>, detail: String) -> Broken {
    Broken {
        invariant,
        detail,
        key: key.cloned(),
    }
}

impl Checker {
    pub fn proposed(&mut self, key: Key, value: Value) {
        self.proposed.insert((key, value));
    }

    pub fn committed(&self) -> &BTreeMap<Key, (ProposalId, Value)> {
        &self.committed
    }

    /// The committed proposals by `coordinator` of `value` for `key` first reserved at or
    /// after `since`.
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

    pub fn is_committed(&self, p: &ProposalId) -> bool {
        self.committed_proposals.contains(p)
    }

    fn views(&mut self, node: NodeIx) {
        while self.memory.len() <= node {
            self.memory.push(View::default());
            self.disk.push(View::default());
        }
    }

    /// Checks one observation.
    pub fn observe(&mut self, obs: &Obs, node_name: &str, now: Time) -> Result<(), Broken> {
        self.now = now;
        match obs {
            Obs::Write { node, ops } => {
                self.views(*node);
                for op in ops {
                    self.write(*node, op, node_name, false)?;
                }
            }
            Obs::Durable { node, ops } => {
                self.views(*node);
                for op in ops {
                    self.write(*node, op, node_name, true)?;
                }
            }
            Obs::Undurable { what, key, .. } => {
                return Err(broken(
                    "durability before messages",
                    Some(key),
                    what.clone(),
                ));
            }
            Obs::Crashed { node, .. } => {
                self.views(*node);
                self.memory[*node] = self.disk[*node].clone();
            }
            Obs::Note { note, .. } => self.note(note, node_name)?,
            _ => {}
        }
        Ok(())
    }

    fn note(&mut self, note: &Note, node_name: &str) -> Result<(), Broken> {
        match note {
            Note::Violation { reason } => Err(broken(
                "commit lands only where it may (core Violation)",
                reason.key(),
                format!("{node_name}: {reason}"),
            )),
            Note::PeerInputRejected { reason, .. } => {
                *self.rejected.entry(reason.kind()).or_default() += 1;
                Ok(())
            }
            Note::Decided { p, key, committed } => {
                self.decisions += 1;
                if *committed {
                    self.commit_proposal(p, key)?;
                } else {
                    if self.committed_proposals.contains(p) {
                        return Err(broken(
                            "one outcome per proposal",
                            Some(key),
                            format!("{node_name} decided {p} aborted, but it was committed"),
                        ));
                    }
                    self.aborted.entry(p.clone()).or_insert(0);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn commit_proposal(&mut self, p: &ProposalId, key: &Key) -> Result<(), Broken> {
        if self.aborted.contains_key(p) {
            return Err(broken(
                "one outcome per proposal",
                Some(key),
                format!("{p} is committed, but some coordinator or resolver decided it aborted"),
            ));
        }
        self.committed_proposals.insert(p.clone());
        Ok(())
    }

    fn write(
        &mut self,
        node: NodeIx,
        op: &WriteOp,
        node_name: &str,
        durable: bool,
    ) -> Result<(), Broken> {
        let place = if durable { "on disk" } else { "in memory" };
        match op {
            WriteOp::PutKey { key, state } => {
                let view = if durable {
                    &mut self.disk[node]
                } else {
                    &mut self.memory[node]
                };
                if let Some(q) = view.stored.get(key)
                    && q != state.proposal()
                {
                    return Err(broken(
                        "stability",
                        Some(key),
                        format!(
                            "{node_name} stored {key:?} for {q} {place}, then wrote {state:?} over it"
                        ),
                    ));
                }
                match state {
                    DurableKey::Reserved { p, .. } => {
                        if view.stored.contains_key(key) {
                            return Err(broken(
                                "stability",
                                Some(key),
                                format!(
                                    "{node_name} went from Stored back to Reserved({p}) {place}"
                                ),
                            ));
                        }
                        if view.released.contains(p) {
                            return Err(broken(
                                "commit lands only where it may",
                                Some(key),
                                format!(
                                    "{node_name} holds Reserved({p}) {place} again after it processed Abort({p})"
                                ),
                            ));
                        }
                        view.reserved.insert(key.clone(), p.clone());
                        if !self.first_seen.contains_key(p) {
                            self.first_seen.insert(p.clone(), self.now);
                        }
                    }
                    DurableKey::Stored { p, value } => {
                        view.reserved.remove(key);
                        view.stored.insert(key.clone(), p.clone());
                        if durable {
                            return Ok(());
                        }
                        if let Some((q, v)) = self.committed.get(key)
                            && q == p
                            && v == value
                        {
                            // The first node to store this (key, proposal, value) ran every
                            // check below and recorded it; for it they all pass again and
                            // change nothing (every record they make is insert-if-absent, and
                            // an abort decided since would have failed then).
                            return Ok(());
                        }
                        self.seen_committed(p, key, value);
                        if !self.proposed.contains(&(key.clone(), value.clone())) {
                            return Err(broken(
                                "validity",
                                Some(key),
                                format!(
                                    "{node_name} stored {value:?} for {key:?}, never proposed for it"
                                ),
                            ));
                        }
                        match self.committed.get(key) {
                            Some((q, v)) if q != p || v != value => {
                                return Err(broken(
                                    "agreement",
                                    Some(key),
                                    format!(
                                        "{node_name} stored {key:?} = {value:?} for {p}, another node stored {v:?} for {q}"
                                    ),
                                ));
                            }
                            Some(_) => {}
                            None => {
                                self.committed
                                    .insert(key.clone(), (p.clone(), value.clone()));
                            }
                        }
                        self.commit_proposal(p, key)?;
                    }
                }
            }
            WriteOp::RemoveKey { key } => {
                let view = if durable {
                    &mut self.disk[node]
                } else {
                    &mut self.memory[node]
                };
                if let Some(q) = view.stored.get(key) {
                    return Err(broken(
                        "stability",
                        Some(key),
                        format!("{node_name} removed {key:?} {place}, which it stored for {q}"),
                    ));
                }
                if let Some(p) = view.reserved.remove(key) {
                    view.released.insert(p);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Indexes a committed proposal by (coordinator, key, value), with the time it was
    /// first reserved anywhere.
    fn seen_committed(&mut self, p: &ProposalId, key: &Key, value: &Value) {
        let first = *self.first_seen.entry(p.clone()).or_insert(self.now);
        self.proposals_of
            .entry((p.coordinator.clone(), key.clone(), value.clone()))
            .or_default()
            .entry(p.clone())
            .or_insert(first);
    }
}
