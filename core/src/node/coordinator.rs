//! The coordinator of a client's PUT (core/PROTOCOL.md, "Writing a key (PUT)", steps 1, 5 and
//! 6, and "At-most-once requests"): it validates the PUT, runs one proposal after another
//! until one is decided or the PUT's time is up, and answers the client.

use crate::api::{Invalid, NotReady, PutOutcome, Reply};
use crate::storage::{DurableKey, RefusalWhy, RequestOutcome, WriteOp};
use crate::timers::Timer;
use crate::types::{CallId, ClusterId, Key, NodeId, ProposalId, RequestId, Time, Value};
use crate::wire::Request;

use super::bounds::validate_put;
use super::contention::{self, Met};
use super::decider::{Decider, Phase};
use super::outbox::Outbox;
use super::requests::fingerprint;
use super::{Node, exponential};

/// A client PUT this node coordinates, across its Busy retries.
pub(super) struct PutOp {
    key: Key,
    pub(super) value: Value,
    pub(super) request: Option<RequestId>,
    calls: Vec<CallId>,
    current: Option<ProposalId>,
    retries_left: u32,
    attempt: u32,
    /// When the current (or last) attempt started: its length is the round trip the race
    /// rule of `contention.rs` scales its waits by.
    attempt_started: Time,
}

/// Proposal counters of this node: they never repeat, across restarts too, because the
/// ceiling under which ids are handed out is persisted (in blocks) before any id under it can
/// leave (it leaves behind the barrier).
pub(crate) struct ProposalIds {
    next: u64,
    ceiling: u64,
    block: u64,
}

impl ProposalIds {
    /// Counters of a node (re)started with `ceiling` recorded: it starts there.
    pub fn new(ceiling: u64, block: u64) -> ProposalIds {
        assert!(block > 0);
        ProposalIds {
            next: ceiling,
            ceiling,
            block,
        }
    }

    /// The next proposal id of `coordinator` (this node); a new ceiling is persisted first
    /// when the block is used up.
    pub fn next(&mut self, coordinator: &NodeId, out: &mut Outbox) -> ProposalId {
        if self.next >= self.ceiling {
            self.ceiling = self.next + self.block;
            out.persist(WriteOp::CounterCeiling(self.ceiling));
        }
        assert!(self.next < self.ceiling);
        let p = ProposalId {
            coordinator: coordinator.clone(),
            counter: self.next,
        };
        self.next += 1;
        p
    }
}

impl Node {
    /// A client PUT: validated, answered from the request record or the key when it can be,
    /// otherwise run as proposals until one is decided or `put_timeout` passes.
    pub(super) fn on_put(
        &mut self,
        call: CallId,
        key: Key,
        value: Value,
        request: Option<RequestId>,
    ) {
        if let Err(invalid) = validate_put(&self.config, &key, &value, request.as_ref()) {
            return self
                .out
                .reply(call, Reply::Put(PutOutcome::Invalid(invalid)));
        }
        if let Some(id) = &request {
            self.expire_requests();
            if let Some(record) = self.requests.get(id) {
                if record.key != key || record.value_fingerprint != fingerprint(&value) {
                    return self.out.reply(
                        call,
                        Reply::Put(PutOutcome::Invalid(Invalid::RequestIdReused)),
                    );
                }
                if let Some(outcome) = record.outcome.clone() {
                    return self.out.reply(call, Reply::Put(outcome_reply(outcome)));
                }
                if let Some((_, op)) = self
                    .ops
                    .iter_mut()
                    .find(|(_, op)| op.request.as_ref() == Some(id))
                {
                    op.calls.push(call);
                    return;
                }
                let p = record.proposal.clone();
                return self.recover_request(call, id.clone(), key, value, p);
            }
        }
        if let Some(refusal) = self.write_refusal() {
            return self.out.reply(call, Reply::Put(refusal));
        }
        if let Some(DurableKey::Stored { value: stored, .. }) = self.ledger.get(&key) {
            // Committed here, so committed: no need to ask anyone.
            let stored = stored.clone();
            if let Some(id) = request {
                let p = self.next_proposal();
                self.remember_request(
                    id,
                    &key,
                    &value,
                    p,
                    Some(RequestOutcome::Exists(stored.clone())),
                );
            }
            return self
                .out
                .reply(call, Reply::Put(PutOutcome::Exists { value: stored }));
        }
        let op_id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            op_id,
            PutOp {
                key,
                value,
                request,
                calls: vec![call],
                current: None,
                retries_left: self.config.busy_retries_max,
                attempt: 0,
                attempt_started: self.now,
            },
        );
        self.timers.set(
            Timer::PutDeadline(op_id),
            self.now + self.config.put_timeout,
        );
        self.start_attempt(op_id);
    }

    /// Why this node cannot start a write now, if it cannot.
    fn write_refusal(&self) -> Option<PutOutcome> {
        if !self.ready {
            return Some(PutOutcome::NotReady(NotReady::Joining));
        }
        if self.leaving {
            return Some(PutOutcome::NotReady(NotReady::Leaving));
        }
        let members = self.members.current().nodes_of(&self.cluster).len();
        if members < self.config.cluster_size_min {
            return Some(PutOutcome::NotReady(NotReady::ClusterTooSmall {
                members,
                min: self.config.cluster_size_min,
            }));
        }
        if self.ops.len() >= self.config.proposals_max {
            return Some(PutOutcome::Overloaded);
        }
        None
    }

    /// Runs one proposal for a PUT: reserve everywhere, through representatives.
    fn start_attempt(&mut self, op_id: u64) {
        let p = self.next_proposal();
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.current = Some(p.clone());
        op.attempt += 1;
        op.attempt_started = self.now;
        let (key, value, request) = (op.key.clone(), op.value.clone(), op.request.clone());
        if let Some(id) = request {
            self.remember_request(id, &key, &value, p.clone(), None);
        }
        let participants = self.members.current().clone();
        let d = Decider::new(
            key.clone(),
            participants.clone(),
            &self.cluster,
            Phase::Reserving,
            Some(op_id),
            false,
        );
        let clusters: Vec<ClusterId> = d.reps.keys().cloned().collect();
        self.deciders.insert(p.clone(), d);
        let reserve = Request::Reserve {
            p: p.clone(),
            key,
            value,
            digest: participants.digest(),
        };
        self.send_to_participants(&p, &participants, &reserve, None);
        self.timers
            .set(Timer::Vote(p.clone()), self.now + self.config.vote_timeout);
        for c in clusters {
            self.timers.set(
                Timer::Representative(p.clone(), c),
                self.now + self.config.representative_timeout,
            );
        }
    }

    /// One proposal of a PUT ended; answer the client or try again (after a wait that depends
    /// on whom the proposal `met` on its key: `contention.rs`). `passing`: it was refused only
    /// for reasons that end by themselves (`Votes::only_passing_refusals`).
    pub(super) fn finish_attempt(
        &mut self,
        op_id: u64,
        committed: bool,
        stored: Option<Value>,
        met: Met,
        passing: bool,
    ) {
        let outcome = if committed {
            RequestOutcome::Stored
        } else if let Some(value) = stored {
            RequestOutcome::Exists(value)
        } else {
            let Some(op) = self.ops.get_mut(&op_id) else {
                return;
            };
            op.current = None;
            if op.retries_left > 0 {
                // Yielding to a proposal that goes first is not a failed try, nor is a refusal
                // that ends by itself (a removal settling, views converging, this node's own
                // stale attempt): they cost no retry. The PUT's deadline still bounds the
                // waiting, and the backoff still grows with every attempt.
                let met = if passing { Met::Nobody } else { met };
                if met != Met::Behind && !passing {
                    op.retries_left -= 1;
                }
                let (min, max) = (self.config.busy_backoff_min, self.config.busy_backoff_max);
                let backoff = exponential(min, max, op.attempt, 10);
                // A round trip stretched by a timeout says nothing about the race: capped.
                let round_trip = self
                    .now
                    .since(op.attempt_started)
                    .min(self.config.put_timeout / 8);
                let delay = contention::retry_delay(met, round_trip, backoff, |d| self.jitter(d));
                self.timers.set(Timer::BusyRetry(op_id), self.now + delay);
                return;
            }
            RequestOutcome::Busy
        };
        self.end_op(op_id, Some(outcome));
    }

    /// A PUT that met a concurrent proposal: time for a fresh attempt.
    pub(super) fn on_busy_retry(&mut self, op: u64) {
        if self.ops.contains_key(&op) {
            // The node may have started leaving meanwhile: then the PUT stays Busy.
            if self.leaving || !self.ready {
                return self.end_op(op, Some(RequestOutcome::Busy));
            }
            self.start_attempt(op);
        }
    }

    /// The PUT's time is up: answer what is known.
    pub(super) fn on_put_deadline(&mut self, op: u64) {
        // Between two attempts every attempt so far was aborted: that is definite.
        let between_attempts = self.ops.get(&op).is_some_and(|o| o.current.is_none());
        let outcome = between_attempts.then_some(RequestOutcome::Busy);
        self.end_op(op, outcome)
    }

    /// Answers every call of a PUT and forgets it. `None`: the outcome is not known (Unavailable).
    fn end_op(&mut self, op_id: u64, outcome: Option<RequestOutcome>) {
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        self.timers.cancel(&Timer::BusyRetry(op_id));
        self.timers.cancel(&Timer::PutDeadline(op_id));
        let reply = match &outcome {
            Some(o) => outcome_reply(o.clone()),
            None => {
                let silence = op
                    .current
                    .as_ref()
                    .map(|p| self.silence(p))
                    .unwrap_or_default();
                PutOutcome::Unavailable(silence)
            }
        };
        if let Some(p) = &op.current
            && let Some(d) = self.deciders.get_mut(p)
        {
            d.op = None;
        }
        if let (Some(id), Some(outcome)) = (&op.request, outcome) {
            self.requests.set_outcome(id, outcome, &mut self.out);
        }
        for call in op.calls {
            self.out.reply(call, Reply::Put(reply.clone()));
        }
    }

    /// A retried request id whose proposal is not running here (a restart, or an earlier
    /// Unavailable): answer from what this node knows of the proposal, resolving it if needed.
    fn recover_request(
        &mut self,
        call: CallId,
        id: RequestId,
        key: Key,
        value: Value,
        p: ProposalId,
    ) {
        let state = self.ledger.get(&key).cloned();
        let outcome = match &state {
            Some(DurableKey::Stored { p: q, .. }) if *q == p => Some(RequestOutcome::Stored),
            Some(DurableKey::Reserved { p: q, .. }) if *q == p => None,
            _ => {
                // Not held here, and this node is the proposal's coordinator and a participant:
                // fencing it here makes sure it never commits.
                if !self.ledger.refused(&p, &key) {
                    self.ledger
                        .record_refusal(&p, RefusalWhy::Fenced, &mut self.out);
                }
                Some(match &state {
                    Some(DurableKey::Stored { value, .. }) => RequestOutcome::Exists(value.clone()),
                    _ => RequestOutcome::Busy,
                })
            }
        };
        let op_id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            op_id,
            PutOp {
                key: key.clone(),
                value,
                request: Some(id),
                calls: vec![call],
                current: Some(p.clone()),
                retries_left: 0,
                attempt: 1,
                attempt_started: self.now,
            },
        );
        if let Some(outcome) = outcome {
            return self.end_op(op_id, Some(outcome));
        }
        let Some(DurableKey::Reserved { participants, .. }) = state else {
            return;
        };
        self.timers.set(
            Timer::PutDeadline(op_id),
            self.now + self.config.put_timeout,
        );
        if !self.resolve(&p, &key, participants) {
            return self.end_op(op_id, None);
        }
        if let Some(d) = self.deciders.get_mut(&p) {
            d.op = Some(op_id);
        }
    }

    /// A fresh proposal id of this node.
    fn next_proposal(&mut self) -> ProposalId {
        self.proposal_ids.next(&self.id, &mut self.out)
    }

    /// Records the request's latest proposal (and outcome, if definite).
    fn remember_request(
        &mut self,
        id: RequestId,
        key: &Key,
        value: &Value,
        p: ProposalId,
        outcome: Option<RequestOutcome>,
    ) {
        let ops = &self.ops;
        let running = |id: &RequestId| ops.values().any(|op| op.request.as_ref() == Some(id));
        self.requests
            .remember(id, key, value, p, outcome, self.now, running, &mut self.out);
    }

    /// Forgets request records that are too old or too many (never one of a running PUT).
    fn expire_requests(&mut self) {
        let ops = &self.ops;
        let running = |id: &RequestId| ops.values().any(|op| op.request.as_ref() == Some(id));
        self.requests.expire(self.now, running, &mut self.out);
    }
}

fn outcome_reply(outcome: RequestOutcome) -> PutOutcome {
    match outcome {
        RequestOutcome::Stored => PutOutcome::Stored,
        RequestOutcome::Exists(value) => PutOutcome::Exists { value },
        RequestOutcome::Busy => PutOutcome::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Output;

    #[test]
    fn the_ceiling_is_persisted_once_per_block() {
        let mut out = Outbox::new("me".into(), false);
        let mut ids = ProposalIds::new(10, 3);
        let me = NodeId::from("me");
        let counters: Vec<u64> = (0..4).map(|_| ids.next(&me, &mut out).counter).collect();
        assert_eq!(counters, vec![10, 11, 12, 13]);
        out.flush();
        let Some(Output::Persist { ops, .. }) = out.poll() else {
            panic!("a write")
        };
        assert_eq!(
            ops,
            vec![WriteOp::CounterCeiling(13), WriteOp::CounterCeiling(16)]
        );
    }
}
