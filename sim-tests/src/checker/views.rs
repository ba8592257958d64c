//! The checker's own view of one node's records, built only from the writes the node asked
//! for (in memory) or that reached its disk: what it stores, what it promised and accepted.
//! A node that silently loses or changes a decision, or promises or accepts below its promise,
//! is caught here even if no message ever shows it.

use replicator_core::{Ballot, DurableKey, Key, ProposalId, WriteOp};
use transport_sim::IdMap;

use super::{Broken, broken};
use crate::invariant::Invariant;

/// One node's records as the checker sees them.
#[derive(Clone, Default)]
pub(super) struct View {
    pub stored: IdMap<Key, ProposalId>,
    /// Undecided records: the promise and the ballot of the accepted value.
    pub open: IdMap<Key, (Ballot, Option<(Ballot, ProposalId)>)>,
    pub floor: Ballot,
}

impl View {
    /// Applies one write. `discipline`: check the promise rules (in memory; a crash resets the
    /// memory to the disk, and what the node knows after it is what it must keep to). Returns
    /// whether it newly records an accepted value (for the quorum tracking).
    pub fn apply(
        &mut self,
        op: &WriteOp,
        name: &str,
        place: &str,
        discipline: bool,
    ) -> Result<bool, Broken> {
        match op {
            WriteOp::PutKey { key, state } => {
                if let Some(q) = self.stored.get(key) {
                    match state {
                        DurableKey::Stored { chosen, .. } if chosen.p == *q => return Ok(false),
                        _ => {
                            return Err(broken(
                                Invariant::Stability,
                                Some(key),
                                format!(
                                    "{name} stored {key:?} for {q} {place}, then wrote {state:?} over it"
                                ),
                            ));
                        }
                    }
                }
                match state {
                    DurableKey::Stored { chosen, .. } => {
                        self.open.remove(key);
                        self.stored.insert(key.clone(), chosen.p.clone());
                        Ok(false)
                    }
                    DurableKey::Open { promised, accepted } => {
                        let (before_p, before_a) = self
                            .open
                            .get(key)
                            .cloned()
                            .unwrap_or_else(|| (self.floor.clone(), None));
                        let accepted = accepted.as_ref().map(|(b, a)| (b.clone(), a.p.clone()));
                        let fresh = accepted.is_some() && accepted != before_a;
                        if discipline {
                            if *promised < before_p {
                                return Err(broken(
                                    Invariant::QuorumDiscipline,
                                    Some(key),
                                    format!(
                                        "{name}'s promise for {key:?} went down from {before_p} to {promised}"
                                    ),
                                ));
                            }
                            if let Some((b, p)) = &accepted
                                && fresh
                                && *b < before_p
                            {
                                return Err(broken(
                                    Invariant::QuorumDiscipline,
                                    Some(key),
                                    format!(
                                        "{name} accepted {p} for {key:?} at {b}, below its promise {before_p}"
                                    ),
                                ));
                            }
                        }
                        self.open.insert(key.clone(), (promised.clone(), accepted));
                        Ok(fresh)
                    }
                }
            }
            WriteOp::RemoveKey { key } => {
                if let Some(q) = self.stored.get(key) {
                    return Err(broken(
                        Invariant::Stability,
                        Some(key),
                        format!("{name} removed {key:?} {place}, which it stored for {q}"),
                    ));
                }
                if let Some((_, Some((b, p)))) = self.open.get(key) {
                    return Err(broken(
                        Invariant::QuorumDiscipline,
                        Some(key),
                        format!(
                            "{name} forgot {key:?} {place} although it accepted {p} at {b} and never learned the decision"
                        ),
                    ));
                }
                self.open.remove(key);
                Ok(false)
            }
            WriteOp::BallotFloor(b) => {
                if *b > self.floor {
                    self.floor = b.clone();
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }
}
