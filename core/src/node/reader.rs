//! Reads (core/PROTOCOL.md, "Reading a key"): a stored value at once, with no message;
//! otherwise a question to this node's cluster (itself included), answered from a majority:
//! a decision anywhere gives the value, nothing accepted anywhere gives "unknown", and a value
//! accepted but not known to be decided is waited for or recovered first. Never "unknown"
//! from this node's own state alone, never a value not known to be chosen. And verify reads,
//! which ask every node of every cluster what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{GetOutcome, NotReady, Reply, Silence, VerifyReport};
use crate::membership::Membership;
use crate::quorum;
use crate::timers::Timer;
use crate::types::{Ballot, CallId, Key, NodeId, Proposal};
use crate::wire::{Message, QueryState, ReadState, Request};

use super::fanout::{self, Peers};
use super::{Env, InjectedBug};

#[derive(Default)]
pub(crate) struct Reader {
    reads: BTreeMap<CallId, Read>,
    /// Reads by the tag of their question, and by key.
    by_tag: BTreeMap<u64, CallId>,
    by_key: BTreeMap<Key, BTreeSet<CallId>>,
    verifies: BTreeMap<u64, Verify>,
    next_tag: u64,
}

/// A read waiting for its cluster.
struct Read {
    key: Key,
    tag: u64,
    /// The membership the question went out with: its majority is counted in it.
    asked: Arc<Membership>,
    answers: BTreeMap<NodeId, QueryState>,
    /// A majority answered and one of them accepted a value not known to be decided: the read
    /// waits for the decision (then recovers it).
    undecided: bool,
}

/// A verify read: every node of every cluster is asked.
struct Verify {
    call: CallId,
    key: Key,
    participants: Arc<Membership>,
    answers: BTreeMap<NodeId, ReadState>,
}

/// What a read needs the node to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEvent {
    /// A member answered that it stores `chosen` for `key`: store it here too (the read is
    /// answered already).
    Learned { key: Key, chosen: Proposal },
    /// A value accepted in this cluster is not known to be decided: recover `key` (the read
    /// waits for the outcome).
    Recover { key: Key },
}

impl Reader {
    pub fn waiting(&self) -> usize {
        self.reads.len()
    }

    /// A client's GET of a key not stored here: ask this node's cluster (unless the read may
    /// be answered "unknown" at once, which only the `UnknownFromLocalState` bug does).
    pub fn start(
        &mut self,
        env: &mut Env,
        call: CallId,
        key: Key,
        members: &Arc<Membership>,
        departed: &BTreeSet<NodeId>,
    ) {
        if env.bug(InjectedBug::UnknownFromLocalState) {
            return env.out.reply(call, Reply::Get(GetOutcome::Unknown));
        }
        if self.reads.len() >= env.config.reads_waiting_max {
            return env.out.reply(call, Reply::Get(GetOutcome::Overloaded));
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let query = Request::Query {
            key: key.clone(),
            tag,
            digest: members.digest(),
        };
        for n in members.nodes_of(&env.cluster) {
            if !departed.contains(n) {
                env.out.send(n.clone(), Message::Request(query.clone()));
            }
        }
        self.by_tag.insert(tag, call);
        self.by_key.entry(key.clone()).or_default().insert(call);
        self.reads.insert(
            call,
            Read {
                key,
                tag,
                asked: members.clone(),
                answers: BTreeMap::new(),
                undecided: false,
            },
        );
        env.timers
            .set(Timer::ReadDeadline(call), env.now + env.config.read_timeout);
        env.timers
            .set(Timer::ReadWait(call), env.now + env.config.read_wait);
    }

    /// A member answered a read's question.
    pub fn on_answer(
        &mut self,
        env: &mut Env,
        key: &Key,
        tag: u64,
        node: NodeId,
        state: QueryState,
    ) -> Option<ReadEvent> {
        let call = *self.by_tag.get(&tag)?;
        let read = self.reads.get_mut(&call).expect("indexed by tag");
        // Tags count from 0 again after a restart: an answer about another key is not one.
        if read.key != *key || read.asked.cluster_of(&node) != Some(&env.cluster) {
            return None;
        }
        if let QueryState::Stored(chosen) = &state {
            let (key, chosen) = (read.key.clone(), chosen.clone());
            self.answer_key(env, &key, GetOutcome::Value(chosen.value.clone()));
            return Some(ReadEvent::Learned { key, chosen });
        }
        read.answers.insert(node, state);
        if read.undecided {
            return None;
        }
        let counted = |s: &QueryState| matches!(s, QueryState::Nothing | QueryState::Accepted(..));
        let majority = quorum::cluster_majority(&read.asked, &env.cluster, |n| {
            read.answers.get(n).is_some_and(counted)
        });
        if !majority {
            return None;
        }
        let accepted = highest_accepted(&read.answers);
        let Some(accepted) = accepted else {
            // A majority of this cluster holds nothing: no value is chosen (a chosen value
            // has a majority of every cluster).
            self.finish(env, call, GetOutcome::Unknown);
            return None;
        };
        if env.bug(InjectedBug::ReadAcceptedBeforeChosen) {
            self.finish(env, call, GetOutcome::Value(accepted.value));
            return None;
        }
        read.undecided = true;
        env.timers
            .set(Timer::ReadWait(call), env.now + env.config.read_wait);
        None
    }

    /// A read waited `read_wait`: for the decision of a value accepted in its cluster (the
    /// node recovers the key), or for a majority's answers (the silent members are asked
    /// again: a question or its answer may have been lost).
    pub fn on_wait_timer(
        &mut self,
        env: &mut Env,
        call: CallId,
        departed: &BTreeSet<NodeId>,
    ) -> Option<ReadEvent> {
        let read = self.reads.get(&call)?;
        if read.undecided {
            return Some(ReadEvent::Recover {
                key: read.key.clone(),
            });
        }
        let query = Request::Query {
            key: read.key.clone(),
            tag: read.tag,
            digest: read.asked.digest(),
        };
        for n in read.asked.nodes_of(&env.cluster) {
            if !read.answers.contains_key(n) && !departed.contains(n) {
                env.out.send(n.clone(), Message::Request(query.clone()));
            }
        }
        env.timers
            .set(Timer::ReadWait(call), env.now + env.config.read_wait);
        None
    }

    /// `key` is stored here now (decided through any path): the reads waiting on it answer.
    pub fn key_stored(&mut self, env: &mut Env, key: &Key, chosen: &Proposal) {
        self.answer_key(env, key, GetOutcome::Value(chosen.value.clone()));
    }

    /// A recovery of `key` found nothing accepted by a majority of this cluster: nothing is
    /// chosen (as of its phase 1, after these reads started). The reads that waited on an
    /// undecided value answer "unknown".
    pub fn nothing_chosen(&mut self, env: &mut Env, key: &Key) {
        let calls: Vec<CallId> = self
            .by_key
            .get(key)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        for call in calls {
            if self.reads.get(&call).is_some_and(|r| r.undecided) {
                self.finish(env, call, GetOutcome::Unknown);
            }
        }
    }

    /// A read's time is up: Unavailable, naming the members of this cluster that did not
    /// answer (all answered when what it waited for was a decision still being made).
    pub fn on_deadline(&mut self, env: &mut Env, call: CallId) {
        let Some(read) = self.reads.get(&call) else {
            return;
        };
        let own = Membership::from_pairs(
            read.asked
                .nodes_of(&env.cluster)
                .iter()
                .map(|n| (env.cluster.clone(), n.clone())),
        );
        let silence = Silence::among(&own, |n| read.answers.contains_key(n));
        self.finish(env, call, GetOutcome::Unavailable(silence));
    }

    /// This node learned that an operator removed it: no member answers its questions any
    /// more, so every read waiting for them is answered `NotReady(Removed)` now rather than
    /// Unavailable at its deadline.
    pub fn removed(&mut self, env: &mut Env) {
        let calls: Vec<CallId> = self.reads.keys().copied().collect();
        for call in calls {
            self.finish(env, call, GetOutcome::NotReady(NotReady::Removed));
        }
    }

    fn answer_key(&mut self, env: &mut Env, key: &Key, outcome: GetOutcome) {
        let calls: Vec<CallId> = self
            .by_key
            .get(key)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        for call in calls {
            self.finish(env, call, outcome.clone());
        }
    }

    fn finish(&mut self, env: &mut Env, call: CallId, outcome: GetOutcome) {
        let Some(read) = self.reads.remove(&call) else {
            return;
        };
        self.by_tag.remove(&read.tag);
        if let Some(calls) = self.by_key.get_mut(&read.key) {
            calls.remove(&call);
            if calls.is_empty() {
                self.by_key.remove(&read.key);
            }
        }
        env.timers.cancel(&Timer::ReadWait(call));
        env.timers.cancel(&Timer::ReadDeadline(call));
        env.out.reply(call, Reply::Get(outcome));
    }

    // ---------------------------------------------------------------- verify reads

    /// A client's verify read: every node of every cluster is asked (through representatives
    /// elsewhere) what it holds for `key`.
    pub fn start_verify(
        &mut self,
        env: &mut Env,
        peers: &Peers<'_>,
        call: CallId,
        key: Key,
        members: &Arc<Membership>,
    ) {
        if self.verifies.len() >= env.config.verifies_max {
            return env.out.reply(call, Reply::Get(GetOutcome::Overloaded));
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.verifies.insert(
            tag,
            Verify {
                call,
                key: key.clone(),
                participants: members.clone(),
                answers: BTreeMap::new(),
            },
        );
        env.timers
            .set(Timer::Verify(tag), env.now + env.config.verify_timeout);
        let request = Request::Read { key, tag };
        fanout::send_to_participants(env, peers, members, tag, |_| 0, &request, |_| true);
    }

    /// A node's answer to a verify read of this node.
    pub fn on_verify_answer(
        &mut self,
        env: &mut Env,
        key: Key,
        tag: u64,
        node: NodeId,
        state: ReadState,
    ) {
        if let Some(v) = self.verifies.get_mut(&tag)
            && v.key == key
            && v.participants.contains(&node)
        {
            v.answers.insert(node, state);
            if v.answers.len() == v.participants.len() {
                self.finish_verify(env, tag);
            }
        }
    }

    /// Every node answered, or the time is up: the report.
    pub fn finish_verify(&mut self, env: &mut Env, tag: u64) {
        env.timers.cancel(&Timer::Verify(tag));
        let Some(v) = self.verifies.remove(&tag) else {
            return;
        };
        let silent = Silence::among(&v.participants, |n| v.answers.contains_key(n));
        let mut stored = v.answers.values().filter_map(|s| match s {
            ReadState::Stored(value) => Some(value),
            _ => None,
        });
        let agree = match stored.next() {
            Some(first) => v
                .answers
                .values()
                .all(|s| matches!(s, ReadState::Stored(x) if x == first)),
            None => v.answers.values().all(|s| matches!(s, ReadState::Free)),
        };
        let report = VerifyReport {
            key: v.key,
            answers: v.answers.into_iter().collect(),
            silent,
            agree,
        };
        env.out.reply(v.call, Reply::Verify(report));
    }
}

/// The accepted value with the highest ballot among a read's answers, if any.
fn highest_accepted(answers: &BTreeMap<NodeId, QueryState>) -> Option<Proposal> {
    let mut best: Option<(&Ballot, &Proposal)> = None;
    for state in answers.values() {
        if let QueryState::Accepted(b, a) = state
            && best.is_none_or(|(top, _)| b > top)
        {
            best = Some((b, a));
        }
    }
    best.map(|(_, a)| a.clone())
}
