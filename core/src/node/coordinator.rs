//! The coordinator of clients' PUTs (core/PROTOCOL.md, "Writing a key", rule 5 and
//! "At-most-once requests"): what a PUT is answered, from the key's decision, the request
//! record of a retry, or its deadline. It hands the proposing to the proposer
//! (`proposer.rs`) and tells each client what the decision means for it: Stored if the chosen
//! proposal is its own (by proposal or request id, never by bytes), Exists otherwise, and at
//! its deadline Unavailable, or Busy if no Accept carrying its value ever left.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{PutOutcome, Reply, Silence};
use crate::storage::{RequestOutcome, WriteOp};
use crate::timers::Timer;
use crate::types::{CallId, Key, NodeId, Proposal, ProposalId, RequestId};

use super::Env;
use super::outbox::Outbox;
use super::requests::RequestTable;

pub(crate) struct Coordinator {
    ops: BTreeMap<u64, PutOp>,
    by_key: BTreeMap<Key, BTreeSet<u64>>,
    next_op: u64,
    pub ids: ProposalIds,
}

/// One client PUT (with the calls of its retries that joined it).
pub(crate) struct PutOp {
    pub key: Key,
    pub proposal: Proposal,
    /// Whether an Accept carrying its value left under a proposer that has stopped since.
    pub left: bool,
    calls: Vec<CallId>,
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
    /// when the block is used up (lazily only with the `LazyCounterCeiling` bug).
    pub fn next(&mut self, coordinator: &NodeId, out: &mut Outbox, lazy: bool) -> ProposalId {
        if self.next >= self.ceiling {
            self.ceiling = self.next + self.block;
            let op = WriteOp::CounterCeiling(self.ceiling);
            if lazy {
                out.persist_lazy(op);
            } else {
                out.persist(op);
            }
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

impl Coordinator {
    pub fn new(ids: ProposalIds) -> Coordinator {
        Coordinator {
            ops: BTreeMap::new(),
            by_key: BTreeMap::new(),
            next_op: 0,
            ids,
        }
    }

    /// The proposer of `key` stopped after an Accept carrying `p` left: the PUT of `p` can no
    /// longer be told Busy.
    pub fn value_left(&mut self, key: &Key, p: &ProposalId) {
        for op_id in self.by_key.get(key).into_iter().flatten() {
            if let Some(op) = self.ops.get_mut(op_id)
                && op.proposal.p == *p
            {
                op.left = true;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The running PUT of request `id`, if any.
    pub fn running_request(&self, id: &RequestId) -> Option<u64> {
        self.ops
            .iter()
            .find(|(_, op)| op.proposal.request.as_ref() == Some(id))
            .map(|(i, _)| *i)
    }

    pub fn op(&self, op: u64) -> Option<&PutOp> {
        self.ops.get(&op)
    }

    /// Adds `call` to the running PUT `op` (a retry of the same request).
    pub fn join(&mut self, op: u64, call: CallId) {
        if let Some(op) = self.ops.get_mut(&op) {
            op.calls.push(call);
        }
    }

    /// A new PUT of `proposal` for `key`, answered at the latest at `put_timeout`.
    pub fn add(&mut self, env: &mut Env, call: CallId, key: Key, proposal: Proposal) -> u64 {
        let op_id = self.next_op;
        self.next_op += 1;
        self.by_key.entry(key.clone()).or_default().insert(op_id);
        self.ops.insert(
            op_id,
            PutOp {
                key,
                proposal,
                left: false,
                calls: vec![call],
            },
        );
        env.timers
            .set(Timer::PutDeadline(op_id), env.now + env.config.put_timeout);
        op_id
    }

    /// `chosen` is the value of `key`: every PUT of it is answered, Stored if it is its own
    /// proposal (or a retry of its request at another node), Exists otherwise.
    pub fn decided(
        &mut self,
        env: &mut Env,
        requests: &mut RequestTable,
        key: &Key,
        chosen: &Proposal,
    ) {
        let Some(ops) = self.by_key.remove(key) else {
            return;
        };
        for op_id in ops {
            let Some(op) = self.ops.get(&op_id) else {
                continue;
            };
            let outcome = if chosen.answers(&op.proposal.p, op.proposal.request.as_ref()) {
                RequestOutcome::Stored
            } else {
                RequestOutcome::Exists(chosen.value.clone())
            };
            self.end(env, requests, op_id, Some(outcome), Silence::default());
        }
    }

    /// The PUT's time is up: Unavailable if an Accept carrying its value left (`left`; the
    /// value may still be chosen), else Busy (it had no effect, and the caller made sure its
    /// value never leaves now).
    pub fn deadline(
        &mut self,
        env: &mut Env,
        requests: &mut RequestTable,
        op_id: u64,
        left: bool,
        silence: Silence,
    ) {
        let outcome = (!left).then_some(RequestOutcome::Busy);
        self.end(env, requests, op_id, outcome, silence);
    }

    /// Answers every call of a PUT and forgets it. `None`: Unavailable.
    fn end(
        &mut self,
        env: &mut Env,
        requests: &mut RequestTable,
        op_id: u64,
        outcome: Option<RequestOutcome>,
        silence: Silence,
    ) {
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        if let Some(ops) = self.by_key.get_mut(&op.key) {
            ops.remove(&op_id);
            if ops.is_empty() {
                self.by_key.remove(&op.key);
            }
        }
        env.timers.cancel(&Timer::PutDeadline(op_id));
        let reply = match &outcome {
            Some(o) => outcome_reply(o.clone()),
            None => PutOutcome::Unavailable(silence),
        };
        if let (Some(id), Some(outcome)) = (&op.proposal.request, outcome) {
            requests.set_outcome(id, outcome, &mut env.out);
        }
        for call in op.calls {
            env.out.reply(call, Reply::Put(reply.clone()));
        }
    }

    /// Whether request `id` has a PUT running here.
    pub fn is_running(&self, id: &RequestId) -> bool {
        self.running_request(id).is_some()
    }
}

pub(crate) fn outcome_reply(outcome: RequestOutcome) -> PutOutcome {
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
        let counters: Vec<u64> = (0..4)
            .map(|_| ids.next(&me, &mut out, false).counter)
            .collect();
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
