//! A participant: what a node does with the requests of a proposal's coordinator or resolver
//! (core/PROTOCOL.md, "Writing a key", steps 2 and 4, and the answer to Status in "Resolve(P)"),
//! and the lease of each reservation it granted.

use crate::api::Note;
use crate::faults::{Held, PeerFault, Violation};
use crate::storage::{DurableKey, RefusalWhy};
use crate::timers::Timer;
use crate::types::{Key, NodeId, ProposalId, Value};
use crate::wire::{DenyReason, Request, Response, Vote};

use super::{InjectedBug, Node};

impl Node {
    /// A request from a coordinator, a resolver or a verify read. Only members may ask, but a
    /// Commit or Abort is also taken from a participant of the reservation it settles.
    pub(super) fn on_request(&mut self, from: &NodeId, req: Request) -> Option<Response> {
        let authorised = *from == self.id
            || self.members.contains(from)
            || match &req {
                Request::Commit { p, key } | Request::Abort { p, key } => self
                    .ledger
                    .reservation(p, key)
                    .is_some_and(|participants| participants.contains(from)),
                _ => false,
            };
        if !authorised {
            self.out.note(Note::PeerInputRejected {
                from: from.clone(),
                reason: PeerFault::RequestFromNonMember,
            });
            return None;
        }
        match req {
            Request::Reserve {
                p,
                key,
                value,
                digest,
            } => {
                if let Some(other) = self.ledger.reserved_key(&p)
                    && *other != key
                {
                    // No honest coordinator reuses a proposal for another key.
                    let reason = PeerFault::ReserveOfAnotherKey {
                        p,
                        key,
                        other: other.clone(),
                    };
                    self.out.note(Note::PeerInputRejected {
                        from: from.clone(),
                        reason,
                    });
                    return None;
                }
                let vote = self.on_reserve(&p, &key, value, digest);
                Some(Response::Vote {
                    p,
                    key,
                    node: self.id.clone(),
                    vote,
                })
            }
            Request::Status { p, key } => {
                let vote = self.on_status(&p, &key);
                Some(Response::Vote {
                    p,
                    key,
                    node: self.id.clone(),
                    vote,
                })
            }
            Request::Commit { p, key } => {
                self.on_commit(from, &p, &key);
                None
            }
            Request::Abort { p, key } => {
                self.on_abort(&p, &key);
                None
            }
            Request::Read { key, tag } => {
                let state = self.read_state(&key);
                Some(Response::Read {
                    key,
                    tag,
                    node: self.id.clone(),
                    state,
                })
            }
        }
    }

    /// Reserve(P): the checks of core/PROTOCOL.md, "Writing a key", step 2, in that order.
    /// Every refusal is recorded (and persisted) before the vote leaves.
    fn on_reserve(
        &mut self,
        p: &ProposalId,
        key: &Key,
        value: Value,
        digest: crate::membership::Digest,
    ) -> Vote {
        if self.ledger.refused(p, key) {
            return self.denied(DenyReason::Fenced, p, key);
        }
        match self.ledger.get(key) {
            Some(DurableKey::Stored { p: q, .. }) if q == p => return Vote::Committed,
            Some(DurableKey::Reserved { p: q, .. }) if q == p => return Vote::Granted,
            Some(DurableKey::Stored { .. }) => return self.refuse(p, key, DenyReason::Exists),
            Some(DurableKey::Reserved { .. }) if !self.bug_is(InjectedBug::GrantWhenReserved) => {
                return self.refuse(p, key, DenyReason::Busy);
            }
            Some(DurableKey::Reserved { .. }) | None => {}
        }
        let changed = digest != self.members.current().digest();
        if changed {
            // The coordinator's view or this node's lacks a discovery, a goodbye or a
            // removal: exchange views so that the next attempt finds them equal. Whatever
            // this node answers: a leaving node that missed a removal would otherwise wait
            // forever for the removed node's clearance, refusing every write meanwhile (found
            // by sim seed 9, `--joins 1 --leaves 1 --faults remove,crash,pause,isolate-node`).
            self.send_view(&p.coordinator.clone());
        }
        let reason = if self.members.this_node_removed() {
            Some(DenyReason::Departed)
        } else if self.leaving {
            Some(DenyReason::Leaving)
        } else if !self.ready {
            Some(DenyReason::NotReady)
        } else if changed {
            Some(DenyReason::MembershipChanged)
        } else if self.now < self.settled_at {
            Some(DenyReason::Settling)
        } else if self.ledger.reservation_count() >= self.config.reservations_max {
            Some(DenyReason::Overloaded)
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.refuse(p, key, reason);
        }
        let participants = self.members.current().clone();
        let lazy_grant = self.bug_is(InjectedBug::LazyGrant);
        if let Some(old) = self
            .ledger
            .grant(p, key, value, participants, lazy_grant, &mut self.out)
        {
            // Only reachable with the GrantWhenReserved bug: the old reservation is overwritten.
            self.timers.cancel(&Timer::Lease(old));
        }
        self.timers
            .set(Timer::Lease(p.clone()), self.now + self.config.lease);
        Vote::Granted
    }

    /// Status(P), from a resolver: what this node knows of `p`. A node that holds nothing for
    /// it fences it first, so that it can never be granted here later.
    fn on_status(&mut self, p: &ProposalId, key: &Key) -> Vote {
        if self.ledger.refused(p, key) {
            return self.denied(DenyReason::Fenced, p, key);
        }
        match self.ledger.get(key) {
            Some(DurableKey::Stored { p: q, .. }) if q == p => Vote::Committed,
            Some(DurableKey::Reserved { p: q, .. }) if q == p => Vote::Granted,
            _ if self.bug_is(InjectedBug::StatusWithoutFence) => Vote::Denied {
                reason: DenyReason::Fenced,
                stored: None,
                holder: None,
            },
            _ => {
                self.ledger
                    .record_refusal(p, RefusalWhy::Fenced, &mut self.out);
                self.denied(DenyReason::Fenced, p, key)
            }
        }
    }

    /// Commit(P): `Reserved(P)` becomes `Stored(P)`. Anywhere else a Commit is a violation.
    fn on_commit(&mut self, from: &NodeId, p: &ProposalId, key: &Key) {
        match self.ledger.get(key) {
            Some(DurableKey::Reserved { p: q, .. }) if q == p => {
                self.ledger.commit(p, key, &mut self.out);
                self.timers.cancel(&Timer::Lease(p.clone()));
                self.out.note(Note::Committed {
                    p: p.clone(),
                    key: key.clone(),
                });
                self.learned(p, true);
                self.key_changed(p);
            }
            Some(DurableKey::Stored { p: q, .. }) if q == p => {}
            other => {
                let held = match other {
                    None => Held::Nothing,
                    Some(DurableKey::Reserved { p: q, .. }) => Held::ReservationOf(q.clone()),
                    Some(DurableKey::Stored { p: q, .. }) => Held::ValueStoredBy(q.clone()),
                };
                let reason = Violation::CommitWithoutReservation {
                    p: p.clone(),
                    key: key.clone(),
                    from: from.clone(),
                    at: self.id.clone(),
                    held,
                    refused: self.ledger.refusal(p).is_some(),
                };
                self.out.note(Note::Violation { reason });
            }
        }
    }

    /// Abort(P): the reservation goes and a refusal keeps `p` from being granted again.
    fn on_abort(&mut self, p: &ProposalId, key: &Key) {
        match self.ledger.get(key) {
            Some(DurableKey::Reserved { p: q, .. }) if q == p => {
                self.ledger.abort(p, key, &mut self.out);
                self.timers.cancel(&Timer::Lease(p.clone()));
                if !self.bug_is(InjectedBug::ForgetFenceOnAbort) {
                    self.ledger
                        .record_refusal(p, RefusalWhy::Aborted, &mut self.out);
                }
                self.learned(p, false);
                self.key_changed(p);
            }
            Some(DurableKey::Stored { p: q, .. }) if q == p => {
                let reason = Violation::AbortOfStored {
                    p: p.clone(),
                    key: key.clone(),
                    at: self.id.clone(),
                };
                self.out.note(Note::Violation { reason });
            }
            _ => {
                if self.ledger.refusal(p).is_none() && !self.bug_is(InjectedBug::ForgetFenceOnAbort)
                {
                    self.ledger
                        .record_refusal(p, RefusalWhy::Aborted, &mut self.out);
                }
                self.learned(p, false);
            }
        }
    }

    /// Refuses `p` for `reason`, durably, and votes so.
    fn refuse(&mut self, p: &ProposalId, key: &Key, reason: DenyReason) -> Vote {
        self.ledger
            .record_refusal(p, RefusalWhy::Denied(reason), &mut self.out);
        self.denied(reason, p, key)
    }

    /// The denial to answer for `p`: a fenced proposal reports the reason it was first
    /// refused for, and a denial carries the value this node stores for the key, if another
    /// proposal stored one (so that the client hears Exists, not Busy), or the proposal that
    /// holds it reserved (so that racing coordinators know which of them goes first).
    fn denied(&self, reason: DenyReason, p: &ProposalId, key: &Key) -> Vote {
        let reason = match (reason, self.ledger.refusal(p)) {
            (DenyReason::Fenced, Some(RefusalWhy::Aborted)) => DenyReason::Aborted,
            (DenyReason::Fenced, Some(RefusalWhy::Denied(r))) => r,
            (r, _) => r,
        };
        let (stored, holder) = match self.ledger.get(key) {
            Some(DurableKey::Stored { p: q, value }) if q != p => (Some(value.clone()), None),
            Some(DurableKey::Reserved { p: q, .. }) if q != p => (None, Some(q.clone())),
            _ => (None, None),
        };
        Vote::Denied {
            reason,
            stored,
            holder,
        }
    }

    /// A reservation's lease ran out without a Commit or an Abort: its holder resolves it
    /// (core/PROTOCOL.md, "Resolve(P)").
    pub(super) fn on_lease_timeout(&mut self, p: ProposalId) {
        let Some(key) = self.ledger.reserved_key(&p).cloned() else {
            return;
        };
        let Some(participants) = self.ledger.reservation(&p, &key).cloned() else {
            return;
        };
        self.resolve_or_retry(p, &key, participants, self.config.resolve_backoff_max);
    }
}
