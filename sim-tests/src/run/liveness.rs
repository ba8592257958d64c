//! The liveness phase: after healing, wait until every call is answered and every node up,
//! store a fresh PUT, wait until every view converges (an operator removes nodes that left
//! unheard, nodes removed unaware are nudged with a read), then check the final reads.

use std::collections::BTreeMap;

use rand::RngExt;
use replicator_core::{GetOutcome, Key, NodeId, NotReady, PutOutcome, ReadState, Reply, Value};
use transport_sim::NodeIx;

use crate::checker::Broken;
use crate::invariant::Invariant;

use super::ops::{ClientOp, OpKind};
use super::{
    LIVENESS_CHECK_US, NUDGE_US, ONE_SHOT_CLIENT, PROBE_RETRY_US, Run, TAG_LIVENESS_CHECK,
};

/// Where the liveness phase is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// The workload runs, faults on.
    Safety,
    /// Faults healed: waiting for every client call to be answered, every leave to complete and
    /// every node to be up.
    Quiesce,
    /// A fresh PUT, tried until it is stored (its `MembershipChanged` refusals make views
    /// converge).
    Probe,
    /// Waiting until every member agrees on the membership, is ready, holds no accepted value
    /// left undecided and stores every chosen key, and every removed node knows it.
    Converge,
    /// A verify read of a committed key and reads at removed nodes: their answers are checked.
    Final,
}

impl Run {
    pub(super) fn start_liveness(&mut self) {
        if !self.safety {
            return;
        }
        self.safety = false;
        // Clients waiting to retry give up: their op keeps its last answer.
        for c in &mut self.clients {
            if matches!(c.current, Some((_, None))) {
                c.current = None;
            }
        }
        self.world.calm();
        self.stage = Stage::Quiesce;
        self.liveness_deadline =
            self.world.now() + std::time::Duration::from_micros(self.spec.workload.liveness_us);
        let at = self.world.now() + std::time::Duration::from_micros(LIVENESS_CHECK_US);
        self.world.wake_at(at, TAG_LIVENESS_CHECK);
    }

    /// The liveness phase, every `LIVENESS_CHECK_US`: quiesce, a fresh PUT, convergence, the
    /// final reads. Returns true once everything passed.
    pub(super) fn liveness_check(&mut self) -> Result<bool, Broken> {
        let now = self.world.now();
        match self.stage {
            Stage::Safety => return Ok(false),
            Stage::Quiesce => match self.quiescing() {
                Some(m) => self.liveness_missing = m,
                None => self.stage = Stage::Probe,
            },
            Stage::Probe | Stage::Converge | Stage::Final => {}
        }
        if self.stage == Stage::Probe {
            self.probe_step()?;
        }
        if self.stage == Stage::Converge {
            match self.unconverged() {
                Some(m) if m.contains("membership differs") => {
                    // Views heal through the refusals of a write: keep writing now and then
                    // (a removed node that came back may have taught a later joiner its name).
                    let idle = now.since(self.probe_sent_at).as_micros() >= u128::from(NUDGE_US);
                    let done = self
                        .probe
                        .is_none_or(|op| self.history[op].returned.is_some());
                    if idle && done {
                        self.send_probe();
                    }
                    self.liveness_missing = m;
                }
                Some(m) => self.liveness_missing = m,
                None => {
                    self.send_final_reads();
                    self.stage = Stage::Final;
                }
            }
        }
        if self.stage == Stage::Final && self.final_reads_answered()? {
            return Ok(true);
        }
        if now >= self.liveness_deadline {
            let detail = format!(
                "not done {}us after healing ({:?}): {}",
                self.spec.workload.liveness_us, self.stage, self.liveness_missing
            );
            let key = match (self.stage, self.probe) {
                (Stage::Probe, Some(probe)) => Some(self.history[probe].key.clone()),
                _ => key_in(&self.liveness_missing),
            };
            return Err(Broken {
                invariant: Invariant::LivenessAfterHealing,
                detail,
                key,
            });
        }
        let at = now + std::time::Duration::from_micros(LIVENESS_CHECK_US);
        self.world.wake_at(at, TAG_LIVENESS_CHECK);
        Ok(false)
    }

    /// What keeps the system from being quiet, if anything: client calls still open, a node
    /// down. (A leave may need the probe's refusals to complete: it waits for every member's
    /// clearance, and learns a removal it missed through the views they exchange.)
    fn quiescing(&self) -> Option<String> {
        if let Some(c) = self.clients.iter().position(|c| c.current.is_some()) {
            return Some(format!("client {c} still waits for an answer"));
        }
        if !self.calls.is_empty() || self.world.calls_open() > 0 {
            return Some(format!("{} client calls unanswered", self.calls.len()));
        }
        for ix in 0..self.world.node_count() {
            let name = self.world.id(ix);
            if self.world.is_departed(ix) {
                continue;
            }
            if !self.world.is_up(ix) {
                return Some(format!("{name} is down"));
            }
        }
        None
    }

    /// The probe PUT: sent, then tried again (a new op, a new value) until one is stored.
    /// Refusals while views converge or nodes settle after a removal are expected; a departed
    /// node nobody heard say goodbye is removed by an operator (it shows as silent).
    fn probe_step(&mut self) -> Result<(), Broken> {
        let now = self.world.now();
        if let Some(probe) = self.probe {
            let op = &self.history[probe];
            if op.returned.is_none() {
                return Ok(());
            }
            let ours = |v: &Value| v.as_bytes().starts_with(b"probe-");
            match &op.reply {
                Some(Reply::Put(PutOutcome::Stored)) => {
                    self.stage = Stage::Converge;
                    return Ok(());
                }
                Some(Reply::Put(PutOutcome::Exists { value })) if ours(value) => {
                    self.stage = Stage::Converge;
                    return Ok(());
                }
                Some(Reply::Put(PutOutcome::Unavailable(silence))) => {
                    self.liveness_missing =
                        format!("the fresh PUT was answered Unavailable {silence:?}");
                    // A node that said goodbye while nobody could hear it is still a member
                    // everywhere: the operator removes it, by force (it said goodbye, so its
                    // cluster pulled every decision it held; a plain removal may be refused,
                    // from an even cluster).
                    let coordinator = op.node;
                    let gone: Vec<NodeIx> = silence
                        .nodes
                        .iter()
                        .filter_map(|id| self.world.ix_of(id))
                        .filter(|ix| self.world.is_departed(*ix))
                        .collect();
                    for ix in gone {
                        let due = self
                            .operator_removals
                            .get(&ix)
                            .is_none_or(|t| now.since(*t).as_micros() >= 2_000_000);
                        if due && self.world.is_up(coordinator) {
                            self.operator_removals.insert(ix, now);
                            self.world.remove_node(coordinator, ix, true);
                        }
                    }
                }
                Some(Reply::Put(
                    PutOutcome::Busy | PutOutcome::NotReady(_) | PutOutcome::Overloaded,
                ))
                | None => {
                    self.liveness_missing = format!("the fresh PUT was answered {:?}", op.reply);
                }
                Some(other) => {
                    return Err(Broken {
                        invariant: Invariant::LivenessAfterHealing,
                        detail: format!("the fresh PUT after healing was answered {other:?}"),
                        key: Some(op.key.clone()),
                    });
                }
            }
            self.probe = None;
            self.probe_retry_at = now + std::time::Duration::from_micros(PROBE_RETRY_US);
        }
        if now < self.probe_retry_at {
            return Ok(());
        }
        self.send_probe();
        Ok(())
    }

    /// The nodes that count as members in the liveness phase: up, not departed, not removed
    /// as far as they know themselves.
    fn live_members(&self) -> Vec<NodeIx> {
        (0..self.world.node_count())
            .filter(|ix| !self.world.is_departed(*ix))
            .filter(|ix| self.world.node(*ix).is_some_and(|n| !n.is_removed()))
            .collect()
    }

    /// What still keeps the system from having converged, if anything. Nodes that were
    /// removed (and know it) are left out: they keep no complete copy.
    fn unconverged(&mut self) -> Option<String> {
        if let Some(m) = self.quiescing() {
            return Some(m);
        }
        // A leaving node that an operator removed meanwhile never says goodbye: it is gone.
        if let Some(ix) = (0..self.world.node_count()).find(|ix| {
            self.world.is_leaving(*ix)
                && !self.world.is_departed(*ix)
                && !self.world.node(*ix).is_some_and(|n| n.is_removed())
        }) {
            let stats = self.world.node(ix).map(|n| n.stats());
            return Some(format!(
                "{} has not finished leaving: {stats:?}",
                self.world.id(ix)
            ));
        }
        let live = self.live_members();
        let ids: BTreeMap<&NodeId, NodeIx> =
            live.iter().map(|ix| (self.world.id(*ix), *ix)).collect();
        let mut nudge = Vec::new();
        let mut gone: Vec<(NodeIx, NodeIx)> = Vec::new();
        let mut missing = None;
        for &ix in &live {
            let name = self.world.id(ix);
            let node = self.world.node(ix).expect("live");
            let m = node.membership();
            let lacks: Vec<&NodeId> = ids.keys().filter(|id| !m.contains(id)).copied().collect();
            let extra: Vec<&NodeId> = m.nodes().filter(|id| !ids.contains_key(id)).collect();
            if !lacks.is_empty() || !extra.is_empty() {
                // A node that others do not count may have been removed without hearing of it:
                // a read makes it ask the members, who tell it.
                nudge.extend(lacks.iter().filter_map(|id| ids.get(id).copied()));
                // A node that said goodbye while nobody could hear it stays a member: writes
                // go on without it (a minority), so nothing else ever removes it. The operator
                // does, by force (it said goodbye: it decided what it held first).
                gone.extend(
                    extra
                        .iter()
                        .filter_map(|id| self.world.ix_of(id))
                        .filter(|x| self.world.is_departed(*x))
                        .map(|x| (ix, x)),
                );
                missing.get_or_insert_with(|| {
                    format!(
                        "{name}'s membership differs from the live members': it lacks {lacks:?}, has extra {extra:?}"
                    )
                });
                continue;
            }
            if !node.is_ready() {
                missing.get_or_insert_with(|| format!("{name} is not ready (join-time copy)"));
                continue;
            }
            if let Some((key, state)) = node
                .records_in_memory()
                .find(|(_, s)| s.accepted().is_some())
            {
                missing.get_or_insert_with(|| {
                    format!("{name} still holds an accepted value of key {key:?} not known to be decided: {state:?}")
                });
                continue;
            }
            for (key, (p, _)) in self.checker.committed() {
                match node.key_state(key) {
                    Ok(Some(s)) if s.stored().is_some_and(|c| c.p == *p) => {}
                    other => {
                        missing.get_or_insert_with(|| {
                            format!(
                                "{name} does not store committed key {key:?} ({p}): it holds {other:?}"
                            )
                        });
                        break;
                    }
                }
            }
        }
        nudge.sort_unstable();
        nudge.dedup();
        let now = self.world.now();
        for (remover, departed) in gone {
            let due = self
                .operator_removals
                .get(&departed)
                .is_none_or(|t| now.since(*t).as_micros() >= 2_000_000);
            if due {
                self.operator_removals.insert(departed, now);
                self.world.remove_node(remover, departed, true);
            }
        }
        for ix in nudge {
            let due = self
                .nudged
                .get(&ix)
                .is_none_or(|t| now.since(*t).as_micros() >= u128::from(NUDGE_US));
            if due {
                self.nudged.insert(ix, now);
                // A committed key the node does not store, if there is one: a removed node
                // that has not heard of it must not answer "unknown" (it asks the members
                // first, and they tell it it was removed).
                let node = self.world.node(ix);
                let lacking = self
                    .checker
                    .committed()
                    .iter()
                    .find(|(k, (p, _))| {
                        node.and_then(|n| n.key_state(k).ok().flatten())
                            .and_then(|s| s.stored().cloned())
                            .is_none_or(|c| c.p != *p)
                    })
                    .map(|(k, _)| k.clone());
                let key = lacking
                    .unwrap_or_else(|| Key::new(format!("liveness-nudge-{}", self.history.len())));
                self.one_shot(ix, key, OpKind::Get);
            }
        }
        missing
    }

    /// A one-shot client op (no retries); returns its index in the history.
    fn one_shot(&mut self, node: NodeIx, key: Key, kind: OpKind) -> usize {
        if let OpKind::Put { value, .. } = &kind {
            self.checker.proposed(key.clone(), value.clone());
        }
        let op = self.history.len();
        self.history.push(ClientOp {
            client: ONE_SHOT_CLIENT + op,
            key,
            kind,
            node,
            invoked: self.world.now(),
            returned: None,
            attempts: 1,
            last_invoked: self.world.now(),
            earlier_indeterminate: false,
            may_forget: false,
            reply: None,
            incarnation: self.world.incarnation(node),
            recovering: false,
        });
        let cmd = self.command(op);
        let call = self.world.submit(node, cmd);
        self.calls.insert(call, op);
        op
    }

    /// A fresh PUT at a ready member of a cluster that can accept writes.
    fn send_probe(&mut self) {
        let n = self.world.node_count();
        let min = self.spec.world.config.cluster_size_min;
        let eligible = |run: &Self, ix: NodeIx| {
            run.member(ix)
                && run
                    .world
                    .node(ix)
                    .is_some_and(|n| n.is_ready() && !n.is_removed())
        };
        let ready: Vec<NodeIx> = (0..n)
            .filter(|ix| eligible(self, *ix))
            .filter(|ix| {
                let c = self.world.cluster_of(*ix);
                (0..n)
                    .filter(|o| self.world.cluster_of(*o) == c && eligible(self, *o))
                    .count()
                    >= min
            })
            .collect();
        if ready.is_empty() {
            self.liveness_missing =
                "no ready node in a cluster with enough members to send the fresh PUT".into();
            return;
        }
        let node = ready[self.rng.random_range(0..ready.len())];
        self.probe_attempts += 1;
        self.probe_sent_at = self.world.now();
        let value = Value::new(format!("probe-{}", self.probe_attempts));
        let kind = OpKind::Put {
            value,
            request: None,
        };
        // A fresh key each time: an attempt left open (Unavailable) must not make the next
        // one Busy.
        let key = Key::new(format!("liveness-probe-{}", self.probe_attempts));
        let op = self.one_shot(node, key, kind);
        self.probe = Some(op);
    }

    /// The final reads: a verify read of a committed key at a live member (it must report
    /// every member agreeing, nobody silent), and a read at every node that knows it was
    /// removed (it must answer NotReady(Removed)).
    fn send_final_reads(&mut self) {
        let live = self.live_members();
        let committed: Vec<Key> = self.checker.committed().keys().cloned().collect();
        if !committed.is_empty() && !live.is_empty() {
            let key = committed[self.rng.random_range(0..committed.len())].clone();
            let node = live[self.rng.random_range(0..live.len())];
            let op = self.one_shot(node, key, OpKind::Verify);
            self.final_ops.push(op);
        }
        for ix in 0..self.world.node_count() {
            if self.world.node(ix).is_some_and(|n| n.is_removed()) {
                let key = Key::new(format!("liveness-removed-{ix}"));
                let op = self.one_shot(ix, key, OpKind::Get);
                self.final_ops.push(op);
            }
        }
    }

    /// Whether every final read is answered (and right).
    fn final_reads_answered(&mut self) -> Result<bool, Broken> {
        if self
            .final_ops
            .iter()
            .any(|op| self.history[*op].returned.is_none())
        {
            self.liveness_missing = "final reads not answered yet".into();
            return Ok(false);
        }
        let live: Vec<NodeIx> = self.live_members();
        for &op in &self.final_ops {
            let o = &self.history[op];
            let wrong = |detail: String| Broken {
                invariant: Invariant::FinalReads,
                detail,
                key: Some(o.key.clone()),
            };
            match (&o.kind, &o.reply) {
                (OpKind::Verify, Some(Reply::Verify(report))) => {
                    self.verifies_strict += 1;
                    let committed = self.checker.committed().get(&o.key).map(|(_, v)| v);
                    let all_stored = report
                        .answers
                        .iter()
                        .all(|(_, s)| matches!(s, ReadState::Stored(v) if Some(v) == committed));
                    if !report.agree
                        || !report.silent.nodes.is_empty()
                        || !report.silent.clusters.is_empty()
                        || report.answers.len() != live.len()
                        || !all_stored
                    {
                        return Err(wrong(format!(
                            "after healing, a verify read of committed {:?} = {committed:?} at {} reported {report:?} ({} live members)",
                            o.key,
                            self.world.id(o.node),
                            live.len()
                        )));
                    }
                }
                (OpKind::Get, Some(Reply::Get(GetOutcome::NotReady(NotReady::Removed)))) => {}
                (_, reply) => {
                    return Err(wrong(format!(
                        "after healing, {} answered {:?} for {:?}: {reply:?}",
                        self.world.id(o.node),
                        o.kind,
                        o.key
                    )));
                }
            }
        }
        Ok(true)
    }
}

/// The key this harness's own liveness message names (`... key k ...`), to summarise its
/// history. (The core's violations carry their key as a field.)
fn key_in(message: &str) -> Option<Key> {
    let start = message.find("key ")? + 4;
    let rest = message[start..].trim_start_matches('"');
    let len = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | ')' | '}'))
        .unwrap_or(rest.len());
    (len > 0).then(|| Key::new(&rest[..len]))
}
