//! Reads (core/PROTOCOL.md, "Reading a key (GET)"): a stored value at once, a reserved key
//! after its proposal is decided (waiting, then resolving it), a free key under the read lease
//! (`lease.rs`); and verify reads, which ask every node of every cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::{GetOutcome, NotReady, Reply, Silence, VerifyReport};
use crate::membership::Membership;
use crate::storage::DurableKey;
use crate::timers::Timer;
use crate::types::{CallId, Key, NodeId, ProposalId};
use crate::wire::{Message, ReadState, Request};

use super::bounds::validate_key;
use super::representative::pick_representative;
use super::{InjectedBug, Node};

/// A read of a reserved key, waiting for the outcome of the proposal that reserved it.
pub(super) struct ReadWait {
    key: Key,
    p: ProposalId,
}

/// A verify read: every node of every cluster is asked.
pub(super) struct Verify {
    call: CallId,
    key: Key,
    participants: Arc<Membership>,
    answers: BTreeMap<NodeId, ReadState>,
}

impl Node {
    /// A client GET.
    pub(super) fn on_get(&mut self, call: CallId, key: Key) {
        if let Err(invalid) = validate_key(&self.config, &key) {
            return self
                .out
                .reply(call, Reply::Get(GetOutcome::Invalid(invalid)));
        }
        if !self.ready {
            return self
                .out
                .reply(call, Reply::Get(GetOutcome::NotReady(NotReady::Joining)));
        }
        self.read_now(call, key);
    }

    /// Answers a read from the key's state here: its value, "unknown" (under the read lease),
    /// or a wait for the outcome of the proposal that reserved it.
    pub(super) fn read_now(&mut self, call: CallId, key: Key) {
        match self.ledger.get(&key) {
            Some(DurableKey::Stored { value, .. }) => {
                let value = value.clone();
                self.timers.cancel(&Timer::ReadDeadline(call));
                self.out.reply(call, Reply::Get(GetOutcome::Value(value)))
            }
            None => self.answer_free(call, key),
            Some(DurableKey::Reserved { .. })
                if self.bug_is(InjectedBug::ReadReservedAsUnknown) =>
            {
                self.out.reply(call, Reply::Get(GetOutcome::Unknown))
            }
            Some(DurableKey::Reserved { p, .. }) => {
                if self.reads.len() >= self.config.reads_waiting_max {
                    self.timers.cancel(&Timer::ReadDeadline(call));
                    return self.out.reply(call, Reply::Get(GetOutcome::Overloaded));
                }
                let p = p.clone();
                if self.timers.get(&Timer::ReadDeadline(call)).is_none() {
                    self.timers.set(
                        Timer::ReadDeadline(call),
                        self.now + self.config.read_timeout,
                    );
                }
                self.wait_read(call, key, p);
            }
        }
    }

    /// Parks the read until the outcome of `p` arrives or `read_wait` passes.
    fn wait_read(&mut self, call: CallId, key: Key, p: ProposalId) {
        self.timers
            .set(Timer::ReadWait(call), self.now + self.config.read_wait);
        self.readers.entry(p.clone()).or_default().insert(call);
        self.reads.insert(call, ReadWait { key, p });
    }

    /// The key that `p` reserved here changed: answer or move the reads waiting on it.
    pub(super) fn key_changed(&mut self, p: &ProposalId) {
        let Some(calls) = self.readers.remove(p) else {
            return;
        };
        for call in calls {
            let Some(read) = self.reads.remove(&call) else {
                continue;
            };
            self.timers.cancel(&Timer::ReadWait(call));
            match self.ledger.get(&read.key) {
                Some(DurableKey::Reserved { p: q, .. }) => {
                    let q = q.clone();
                    self.wait_read(call, read.key, q);
                }
                _ => self.read_now(call, read.key),
            }
        }
    }

    /// A read has waited `read_wait` for the outcome: resolve the proposal that holds the key.
    pub(super) fn on_read_wait(&mut self, call: CallId) {
        let Some(read) = self.reads.get(&call) else {
            return;
        };
        let (key, p) = (read.key.clone(), read.p.clone());
        if let Some(participants) = self.ledger.reservation(&p, &key) {
            let participants = participants.clone();
            if !self.resolve(&p, &key, participants) {
                self.timers
                    .set(Timer::ReadWait(call), self.now + self.config.read_wait);
            }
        }
    }

    /// A read's time is up: it answers Unavailable, naming who did not answer.
    pub(super) fn on_read_deadline(&mut self, call: CallId) {
        if self.lease_read_deadline(call) {
            return;
        }
        let Some(read) = self.reads.remove(&call) else {
            return;
        };
        self.timers.cancel(&Timer::ReadWait(call));
        if let Some(set) = self.readers.get_mut(&read.p) {
            set.remove(&call);
            if set.is_empty() {
                self.readers.remove(&read.p);
            }
        }
        let silence = self.silence(&read.p);
        self.out
            .reply(call, Reply::Get(GetOutcome::Unavailable(silence)));
    }

    // ---------------------------------------------------------------- verify reads

    /// A client's verify read: every node of every cluster is asked (through representatives
    /// elsewhere) what it holds for `key`.
    pub(super) fn on_verify(&mut self, call: CallId, key: Key) {
        if let Err(invalid) = validate_key(&self.config, &key) {
            return self
                .out
                .reply(call, Reply::Get(GetOutcome::Invalid(invalid)));
        }
        if self.verifies.len() >= self.config.verifies_max {
            return self.out.reply(call, Reply::Get(GetOutcome::Overloaded));
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let participants = self.members.current().clone();
        self.verifies.insert(
            tag,
            Verify {
                call,
                key: key.clone(),
                participants: participants.clone(),
                answers: BTreeMap::new(),
            },
        );
        self.timers
            .set(Timer::Verify(tag), self.now + self.config.verify_timeout);
        let request = Request::Read { key, tag };
        for (cluster, nodes) in participants.clusters() {
            if *cluster == self.cluster {
                for n in nodes {
                    self.out.send(n.clone(), Message::Request(request.clone()));
                }
            } else if let Some(rep) = pick_representative(nodes, self.members.departed(), tag, 0) {
                let msg = Message::Relay {
                    cluster: cluster.clone(),
                    targets: nodes.to_vec(),
                    request: request.clone(),
                };
                self.out.send(rep, msg);
            }
        }
    }

    /// What this node holds for `key`, as a verify read asks it.
    pub(super) fn read_state(&self, key: &Key) -> ReadState {
        if !self.ready || self.members.this_node_removed() {
            return ReadState::NotReady;
        }
        match self.ledger.get(key) {
            Some(DurableKey::Stored { value, .. }) => ReadState::Stored(value.clone()),
            Some(DurableKey::Reserved { .. }) => ReadState::Reserved,
            None => ReadState::Free,
        }
    }

    /// A node's answer to a verify read of this node.
    pub(super) fn on_verify_answer(&mut self, key: Key, tag: u64, node: NodeId, state: ReadState) {
        if let Some(v) = self.verifies.get_mut(&tag)
            && v.key == key
            && v.participants.contains(&node)
        {
            v.answers.insert(node, state);
            if v.answers.len() == v.participants.len() {
                self.finish_verify(tag);
            }
        }
    }

    /// Every node answered, or the time is up: the report.
    pub(super) fn finish_verify(&mut self, tag: u64) {
        self.timers.cancel(&Timer::Verify(tag));
        let Some(v) = self.verifies.remove(&tag) else {
            return;
        };
        let silence = Silence::among(&v.participants, |n| v.answers.contains_key(n));
        let mut committed = v.answers.values().filter_map(|s| match s {
            ReadState::Stored(value) => Some(value),
            _ => None,
        });
        let agree = match committed.next() {
            Some(first) => v
                .answers
                .values()
                .all(|s| matches!(s, ReadState::Stored(x) if x == first)),
            None => v.answers.values().all(|s| matches!(s, ReadState::Free)),
        };
        let report = VerifyReport {
            key: v.key,
            answers: v.answers.into_iter().collect(),
            silent: silence,
            agree,
        };
        self.out.reply(v.call, Reply::Verify(report));
    }
}
