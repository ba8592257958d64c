//! One seed: build the world, run the workload under faults (safety phase), then heal
//! everything and check that the system converges (liveness phase).

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::{
    CallId, Command, GetOutcome, Key, NodeId, NotReady, PutOutcome, ReadState, RemoveOutcome,
    Reply, RequestId, Time, Value, VerifyReport,
};
use transport_sim::{NodeIx, Obs, TraceMode, World, WorldStats};

use crate::checker::{Broken, Checker, Writer};
use crate::invariant::Invariant;
use crate::linearizability::{self, GetResult, Op, PutResult};
use crate::swarm::RunSpec;

/// Wake tags below this are clients; the others drive the phases.
const TAG_CLIENT_MAX: u64 = 1 << 32;
const TAG_JOIN: u64 = TAG_CLIENT_MAX + 1;
const TAG_LIVENESS_CHECK: u64 = TAG_CLIENT_MAX + 2;
const TAG_SAFETY_END: u64 = TAG_CLIENT_MAX + 3;
const TAG_LEAVE: u64 = TAG_CLIENT_MAX + 4;
const TAG_BURST: u64 = TAG_CLIENT_MAX + 5;
/// Client numbers of one-shot PUTs (bursts, the liveness probe) start here.
const ONE_SHOT_CLIENT: usize = 1 << 20;

/// How often the liveness phase looks whether the system converged.
const LIVENESS_CHECK_US: u64 = 50_000;
/// The liveness probe PUT is tried again this long after an answer other than Stored (views
/// converging, nodes settling after a removal).
const PROBE_RETRY_US: u64 = 200_000;
/// A node that still counts itself a member where the others do not is asked a read this
/// often (a read makes it renew its read lease, so it learns it was removed).
const NUDGE_US: u64 = 500_000;
/// A client retries a lost or Unavailable PUT that carries a request id at most this often.
const ATTEMPTS_MAX: u32 = 5;
/// A hard bound on events per run, far above what any seed needs.
const EVENTS_MAX: u64 = 50_000_000;

#[derive(Clone, Debug)]
enum OpKind {
    Put {
        value: Value,
        request: Option<RequestId>,
    },
    Get,
    /// A verify read: asks every node; not part of the linearizable history, but every value
    /// it reports must be the key's committed one.
    Verify,
}

/// One logical client operation (all attempts of a PUT retried with its request id).
#[derive(Clone, Debug)]
pub struct ClientOp {
    pub client: usize,
    pub key: Key,
    kind: OpKind,
    pub node: NodeIx,
    pub invoked: Time,
    pub returned: Option<Time>,
    pub attempts: u32,
    /// When the last attempt was sent.
    pub last_invoked: Time,
    /// An earlier attempt ended without a definite answer (lost or Unavailable).
    pub earlier_indeterminate: bool,
    /// The node may have forgotten the request id by the last attempt (small request
    /// tables), so the last answer may be about fresh proposals only.
    pub may_forget: bool,
    /// The last answer (`None`: lost or never answered).
    pub reply: Option<Reply>,
    /// The incarnation of the node when the last attempt was sent.
    pub incarnation: u64,
    /// The last attempt was a retry that the node answers from its request record with no
    /// outcome in it (after a restart, or an earlier Unavailable): the request-id recovery path.
    pub recovering: bool,
}

impl ClientOp {
    fn outcome_name(&self) -> &'static str {
        match (&self.kind, &self.reply) {
            (OpKind::Put { .. }, None) => "put lost",
            (OpKind::Get, None) => "get lost",
            (OpKind::Verify, None) => "verify lost",
            (_, Some(Reply::Put(o))) => match o {
                PutOutcome::Stored => "put stored",
                PutOutcome::Exists { .. } => "put exists",
                PutOutcome::Busy => "put busy",
                PutOutcome::Unavailable(_) => "put unavailable",
                PutOutcome::Invalid(_) => "put invalid",
                PutOutcome::Overloaded => "put overloaded",
                PutOutcome::NotReady(_) => "put not ready",
            },
            (_, Some(Reply::Get(o))) => match o {
                GetOutcome::Value(_) => "get value",
                GetOutcome::Unknown => "get unknown",
                GetOutcome::Unavailable(_) => "get unavailable",
                GetOutcome::Invalid(_) => "get invalid",
                GetOutcome::Overloaded => "get overloaded",
                GetOutcome::NotReady(_) => "get not ready",
            },
            // Verify reports, and any answer kind added later.
            (_, Some(other)) => match other {
                Reply::Verify(_) => "verify",
                _ => "other answer",
            },
        }
    }

    fn value(&self) -> Option<&Value> {
        match &self.kind {
            OpKind::Put { value, .. } => Some(value),
            OpKind::Get | OpKind::Verify => None,
        }
    }

    /// Whether the last answer speaks only for the last attempt's proposals: the node may
    /// have forgotten the request id, so an earlier indeterminate attempt may still commit.
    fn forgotten(&self) -> bool {
        self.may_forget && self.earlier_indeterminate
    }

    /// The proposals the last answer speaks for were started at or after this.
    fn since(&self) -> Time {
        if self.forgotten() {
            self.last_invoked
        } else {
            self.invoked
        }
    }

    /// The op in the checker's terms.
    fn to_history(&self) -> Op {
        let key = self.key.as_str().to_string();
        let invoked = self.invoked.as_micros();
        let returned = self.returned.map(Time::as_micros);
        match &self.kind {
            OpKind::Put { value, .. } => {
                let result = match &self.reply {
                    None => PutResult::Unavailable,
                    Some(Reply::Put(o)) => match o {
                        PutOutcome::Stored => PutResult::Stored,
                        // Its own earlier attempt won (a retry with the request id after the
                        // record expired): the op took effect within its interval.
                        PutOutcome::Exists { value: w } if w == value => PutResult::Stored,
                        PutOutcome::Exists { value: w } => PutResult::Exists {
                            value: w.as_bytes().to_vec(),
                        },
                        // The forgotten earlier attempt may still take effect.
                        _ if self.forgotten() => PutResult::Unavailable,
                        PutOutcome::Busy => PutResult::Busy,
                        PutOutcome::Unavailable(_) => PutResult::Unavailable,
                        PutOutcome::Invalid(_)
                        | PutOutcome::Overloaded
                        | PutOutcome::NotReady(_) => PutResult::NoEffect,
                    },
                    Some(_) => PutResult::Unavailable,
                };
                let returned = if self.reply.is_none() { None } else { returned };
                Op::put(
                    self.client as u64,
                    key,
                    value.as_bytes().to_vec(),
                    invoked,
                    returned,
                    result,
                )
            }
            OpKind::Get | OpKind::Verify => {
                let result = match &self.reply {
                    Some(Reply::Get(GetOutcome::Value(v))) => {
                        GetResult::Value(v.as_bytes().to_vec())
                    }
                    Some(Reply::Get(GetOutcome::Unknown)) => GetResult::Unknown,
                    _ => GetResult::Unavailable,
                };
                Op::get(self.client as u64, key, invoked, returned, result)
            }
        }
    }
}

struct Client {
    home: NodeIx,
    done: usize,
    /// The op in flight: its index in the history and the call carrying it.
    current: Option<(usize, Option<CallId>)>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub world: WorldStats,
    pub sim_us: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Simulated time from invocation to a Stored answer, per PUT.
    pub commit_latencies_us: Vec<u64>,
    pub ops: usize,
    pub trace_hash: u64,
    pub rejected: BTreeMap<replicator_core::PeerFaultKind, u64>,
    /// Operators' removals, by outcome.
    pub removals: BTreeMap<&'static str, u64>,
    /// Retries with a request id that took the recovery path and were told Exists with another
    /// proposal's value (the request's own proposal never committed; another one did).
    pub recover_exists: u64,
    /// Retries with a request id that took the recovery path.
    pub recoveries: u64,
    /// Verify reports checked, and those checked strictly (liveness: agree, nobody silent).
    pub verifies_checked: u64,
    pub verifies_strict: u64,
}

/// A failed run, with what is needed to understand and replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub broken: Broken,
    pub at: Time,
    /// The client history of the key concerned (or the last ops), one line each.
    pub history: Vec<String>,
}

pub struct Outcome {
    pub result: Result<(), Failure>,
    pub stats: RunStats,
    /// The full trace, when the spec asked to keep it.
    pub trace: Vec<String>,
}

struct Run {
    spec: RunSpec,
    world: World,
    checker: Checker,
    rng: ChaCha8Rng,
    clients: Vec<Client>,
    history: Vec<ClientOp>,
    calls: BTreeMap<CallId, usize>,
    hot: Vec<Key>,
    recent: Vec<Key>,
    joins_left: usize,
    safety: bool,
    obs: Vec<Obs>,
    stage: Stage,
    /// The liveness probe: a fresh PUT's op index, once sent.
    probe: Option<usize>,
    probe_attempts: u32,
    probe_retry_at: Time,
    /// When the last probe PUT was sent.
    probe_sent_at: Time,
    /// Departed nodes the liveness phase asked an operator to remove, and when.
    operator_removals: BTreeMap<NodeIx, Time>,
    /// When each node was last nudged with a read.
    nudged: BTreeMap<NodeIx, Time>,
    /// The final checks' ops (a verify read, reads at removed nodes).
    final_ops: Vec<usize>,
    liveness_deadline: Time,
    liveness_missing: String,
    removals: BTreeMap<&'static str, u64>,
    recover_exists: u64,
    recoveries: u64,
    verifies_checked: u64,
    verifies_strict: u64,
}

/// Where the liveness phase is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The workload runs, faults on.
    Safety,
    /// Faults healed: waiting for every client call to be answered, every leave to complete and
    /// every node to be up.
    Quiesce,
    /// A fresh PUT, tried until it is stored (its refusals make views converge).
    Probe,
    /// Waiting until every member agrees on the membership, is ready, holds no reservation
    /// and stores every committed key, and every removed node knows it.
    Converge,
    /// A verify read of a committed key and reads at removed nodes: their answers are checked.
    Final,
}

/// Runs one seed.
pub fn run(spec: &RunSpec) -> Outcome {
    let world = World::new(spec.world.clone(), spec.world_seed);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.workload_seed);
    let n = world.node_count();
    let clients = (0..spec.workload.clients)
        .map(|_| Client {
            home: rng.random_range(0..n),
            done: 0,
            current: None,
        })
        .collect();
    let hot = (0..spec.workload.hot_keys)
        .map(|i| Key::new(format!("hot{i}")))
        .collect();
    let mut run = Run {
        spec: spec.clone(),
        world,
        checker: Checker::default(),
        rng,
        clients,
        history: Vec::new(),
        calls: BTreeMap::new(),
        hot,
        recent: Vec::new(),
        joins_left: spec.workload.joins,
        safety: true,
        obs: Vec::new(),
        stage: Stage::Safety,
        probe: None,
        probe_attempts: 0,
        probe_retry_at: Time::ZERO,
        probe_sent_at: Time::ZERO,
        operator_removals: BTreeMap::new(),
        nudged: BTreeMap::new(),
        final_ops: Vec::new(),
        liveness_deadline: Time::MAX,
        liveness_missing: String::new(),
        removals: BTreeMap::new(),
        recover_exists: 0,
        recoveries: 0,
        verifies_checked: 0,
        verifies_strict: 0,
    };
    let result = run.go();
    let mut stats = RunStats {
        world: run.world.stats(),
        sim_us: run.world.now().as_micros(),
        ops: run.history.len(),
        trace_hash: run.world.trace_hash(),
        rejected: run.checker.rejected.clone(),
        removals: run.removals.clone(),
        recover_exists: run.recover_exists,
        recoveries: run.recoveries,
        verifies_checked: run.verifies_checked,
        verifies_strict: run.verifies_strict,
        ..RunStats::default()
    };
    for op in &run.history {
        *stats.outcomes.entry(op.outcome_name()).or_default() += 1;
        if let (Some(Reply::Put(PutOutcome::Stored)), Some(r)) = (&op.reply, op.returned) {
            stats
                .commit_latencies_us
                .push(r.as_micros() - op.invoked.as_micros());
        }
    }
    let result = result.map_err(|broken| {
        let at = run.world.now();
        let history = run.summarise(broken.key.as_ref());
        Failure {
            broken,
            at,
            history,
        }
    });
    Outcome {
        result,
        stats,
        trace: run.world.take_trace(),
    }
}

impl Run {
    fn go(&mut self) -> Result<(), Broken> {
        for c in 0..self.clients.len() {
            let (lo, hi) = self.spec.workload.think_us;
            let at = Time::from_micros(self.rng.random_range(lo..=hi.max(lo)));
            self.world.wake_at(at, c as u64);
        }
        for _ in 0..self.joins_left {
            let at = self.rng.random_range(0..self.spec.workload.safety_us / 2);
            self.world.wake_at(Time::from_micros(at), TAG_JOIN);
        }
        for _ in 0..self.spec.workload.leaves {
            let at = self.rng.random_range(0..self.spec.workload.safety_us / 2);
            self.world.wake_at(Time::from_micros(at), TAG_LEAVE);
        }
        for _ in 0..self.spec.workload.bursts {
            let at = self.rng.random_range(0..self.spec.workload.safety_us);
            self.world.wake_at(Time::from_micros(at), TAG_BURST);
        }
        self.world.wake_at(
            Time::from_micros(self.spec.workload.safety_us),
            TAG_SAFETY_END,
        );
        let mut events = 0u64;
        loop {
            events += 1;
            if events > EVENTS_MAX {
                return Err(Broken {
                    invariant: Invariant::BoundedRun,
                    detail: format!("more than {EVENTS_MAX} events"),
                    key: None,
                });
            }
            if !self.world.step() {
                return Err(Broken {
                    invariant: Invariant::LivenessAfterHealing,
                    detail: "the world ran out of events before the run ended".into(),
                    key: None,
                });
            }
            self.obs.extend(self.world.drain_observations());
            let batch = std::mem::take(&mut self.obs);
            for obs in &batch {
                let writer = match obs {
                    Obs::Write { node, .. }
                    | Obs::Durable { node, .. }
                    | Obs::Note { node, .. }
                    | Obs::Accepted { node, .. }
                    | Obs::Crashed { node, .. } => {
                        let core = self.world.node(*node);
                        Some(Writer {
                            name: self.world.id(*node),
                            members: core.map(|n| n.membership().clone()),
                            ready: core.is_some_and(|n| n.is_ready()),
                        })
                    }
                    _ => None,
                };
                self.checker.observe(obs, writer, self.world.now())?;
                match self.react(obs) {
                    Ok(true) => return self.final_checks(),
                    Ok(false) => {}
                    // A run that did not converge may have broken a safety rule on the way
                    // (say a side that founded a network of its own): that is the better report.
                    Err(b) if b.invariant.is_liveness() => {
                        self.final_checks()?;
                        return Err(b);
                    }
                    Err(b) => return Err(b),
                }
            }
            self.obs = batch;
            self.obs.clear();
        }
    }

    /// Acts on one observation. Returns true when the run is complete.
    fn react(&mut self, obs: &Obs) -> Result<bool, Broken> {
        match obs {
            Obs::Reply { call, reply, node } => {
                if let Reply::Verify(report) = reply {
                    self.check_verify(*node, report)?;
                }
                if let (Reply::Get(outcome), Some(&op)) = (reply, self.calls.get(call)) {
                    self.check_read(op, outcome)?;
                }
                if let Some(&op) = self.calls.get(call) {
                    self.check_answered_in_time(op, Some(reply))?;
                }
                self.answered(*call, Some(reply.clone()))
            }
            Obs::Removal {
                remover,
                victim,
                outcome,
                clean,
            } => self.removal_answered(*remover, *victim, outcome, *clean)?,
            Obs::CallLost { call, .. } => {
                if let Some(&op) = self.calls.get(call) {
                    self.check_answered_in_time(op, None)?;
                }
                self.answered(*call, None)
            }
            Obs::Wake { tag } if *tag < TAG_CLIENT_MAX => self.client_wake(*tag as usize),
            Obs::Wake { tag: TAG_JOIN } if self.safety => {
                let cluster = self.rng.random_range(0..self.world.cluster_count());
                let _ = self.world.join(cluster);
            }
            Obs::Wake { tag: TAG_LEAVE } if self.safety => self.start_leave(),
            Obs::Wake { tag: TAG_BURST } if self.safety && self.lull_end().is_none() => {
                self.burst()
            }
            Obs::Wake {
                tag: TAG_SAFETY_END,
            } => self.start_liveness(),
            Obs::Wake {
                tag: TAG_LIVENESS_CHECK,
            } => return self.liveness_check(),
            _ => {}
        }
        Ok(false)
    }

    /// Nodes a client may use: neither gone nor on their way out, as far as a client can tell
    /// (a node removed by an operator looks like any other until it answers NotReady(Removed)).
    fn staying(&self, ix: NodeIx) -> bool {
        !self.world.is_departed(ix) && !self.world.is_leaving(ix)
    }

    /// Nodes that take part (for bursts, leaves and the liveness probe): staying, not removed
    /// by an operator anywhere, and no removal of them being checked.
    fn member(&self, ix: NodeIx) -> bool {
        self.staying(ix) && !self.world.is_gone(ix) && !self.world.removal_pending(ix)
    }

    /// An operator's removal was answered.
    fn removal_answered(
        &mut self,
        remover: NodeIx,
        victim: NodeIx,
        outcome: &RemoveOutcome,
        clean: bool,
    ) -> Result<(), Broken> {
        let name = match outcome {
            RemoveOutcome::Removed => "removed",
            RemoveOutcome::Unknown => "unknown",
            RemoveOutcome::EvenCluster { .. } => "refused (even cluster)",
            RemoveOutcome::Unconfirmed { .. } => "unconfirmed (members silent or disagreeing)",
            RemoveOutcome::InProgress => "in progress",
            RemoveOutcome::Alive => "alive",
            RemoveOutcome::NotReady => "not ready (this node is still joining)",
        };
        *self.removals.entry(name).or_default() += 1;
        if clean && *outcome == RemoveOutcome::Removed {
            return Err(Broken {
                invariant: Invariant::OnlyDeadRemoved,
                detail: format!(
                    "{} removed {}, which was up and reachable both ways while the removal was checked (it must answer Alive)",
                    self.world.id(remover),
                    self.world.id(victim)
                ),
                key: None,
            });
        }
        Ok(())
    }

    /// Several nodes, in different clusters where there are several, propose one fresh key at
    /// the same instant: concurrent conflicting proposals.
    fn burst(&mut self) {
        let n = self.world.node_count();
        let staying: Vec<NodeIx> = (0..n)
            .filter(|ix| self.member(*ix) && !self.world.minority().contains(ix))
            .collect();
        if staying.is_empty() {
            return;
        }
        let key = Key::new(format!("burst{}", self.history.len()));
        let width = self.rng.random_range(2..=4usize);
        for i in 0..width {
            let node = staying[self.rng.random_range(0..staying.len())];
            let value = Value::new(format!("b{}-{i}", self.history.len()));
            self.checker.proposed(key.clone(), value.clone());
            let op = self.history.len();
            self.history.push(ClientOp {
                client: ONE_SHOT_CLIENT + op,
                key: key.clone(),
                kind: OpKind::Put {
                    value,
                    request: None,
                },
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
        }
        self.recent.push(key);
    }

    /// A ready node of a cluster that keeps at least 3 members leaves gracefully.
    fn start_leave(&mut self) {
        let n = self.world.node_count();
        let members = |run: &Self, c: usize| {
            (0..n)
                .filter(|ix| run.world.cluster_of(*ix) == c && run.member(*ix))
                .count()
        };
        let candidates: Vec<NodeIx> = (0..n)
            .filter(|ix| self.member(*ix) && members(self, self.world.cluster_of(*ix)) >= 4)
            .filter(|ix| self.world.node(*ix).is_some_and(|n| n.is_ready()))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let ix = candidates[self.rng.random_range(0..candidates.len())];
        self.world.leave(ix);
    }

    fn start_liveness(&mut self) {
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

    /// When the lull the safety phase is in ends, if it is in one.
    fn lull_end(&self) -> Option<Time> {
        let (period, length) = self.spec.workload.lulls?;
        let now = self.world.now().as_micros();
        let into = now % period;
        (into >= period.saturating_sub(length)).then(|| Time::from_micros(now - into + period))
    }

    fn client_wake(&mut self, c: usize) {
        if !self.safety {
            return;
        }
        if let Some(end) = self.lull_end() {
            self.world.wake_at(end, c as u64);
            return;
        }
        let client = &self.clients[c];
        match client.current {
            Some((op, None)) => {
                // A retry of a PUT with its request id.
                let node = self.history[op].node;
                let cmd = self.command(op);
                // Whether the node will answer it from a request record with no outcome (it
                // restarted since the last attempt, or answered it Unavailable): the recovery
                // path. Only this client uses the id, so nothing else changes the record.
                let incarnation = self.world.incarnation(node);
                let recovering = match &self.history[op].kind {
                    OpKind::Put {
                        request: Some(id), ..
                    } => {
                        let open = self
                            .world
                            .disk(node)
                            .requests
                            .get(id)
                            .is_some_and(|r| r.outcome.is_none());
                        let unavailable = matches!(
                            self.history[op].reply,
                            Some(Reply::Put(PutOutcome::Unavailable(_)))
                        );
                        self.world.is_up(node)
                            && open
                            && (incarnation != self.history[op].incarnation || unavailable)
                    }
                    _ => false,
                };
                let call = self.world.submit(node, cmd);
                self.history[op].incarnation = incarnation;
                self.history[op].recovering = recovering;
                self.history[op].attempts += 1;
                self.history[op].last_invoked = self.world.now();
                self.history[op].earlier_indeterminate = true;
                self.calls.insert(call, op);
                self.clients[c].current = Some((op, Some(call)));
            }
            Some((_, Some(_))) => {}
            None => {
                if client.done >= self.spec.workload.ops_per_client {
                    self.maybe_end_safety();
                    return;
                }
                self.start_op(c);
            }
        }
    }

    fn start_op(&mut self, c: usize) {
        let w = self.spec.workload.clone();
        let n = self.world.node_count();
        let mut node = if self.rng.random_bool(w.roam_share) {
            self.rng.random_range(0..n)
        } else {
            self.clients[c].home
        };
        if !self.staying(node) || self.world.minority().contains(&node) {
            let staying: Vec<NodeIx> = (0..n)
                .filter(|ix| self.staying(*ix) && !self.world.minority().contains(ix))
                .collect();
            node = staying[self.rng.random_range(0..staying.len())];
            self.clients[c].home = node;
        }
        let seq = self.clients[c].done;
        let read = self.rng.random_bool(w.read_share);
        let hot = !self.hot.is_empty() && self.rng.random_bool(w.hot_share);
        let (key, kind) = if read {
            let key = if hot || self.recent.is_empty() {
                self.hot[self.rng.random_range(0..self.hot.len())].clone()
            } else {
                let from = self.recent.len().saturating_sub(16);
                self.recent[self.rng.random_range(from..self.recent.len())].clone()
            };
            let verify = self.rng.random_bool(0.15);
            (key, if verify { OpKind::Verify } else { OpKind::Get })
        } else {
            let key = if hot {
                self.hot[self.rng.random_range(0..self.hot.len())].clone()
            } else {
                Key::new(format!("k{c}-{seq}"))
            };
            let value = Value::new(format!("v{c}-{seq}"));
            let request = self
                .rng
                .random_bool(w.request_id_share)
                .then(|| RequestId::new(format!("r{c}-{seq}")));
            self.checker.proposed(key.clone(), value.clone());
            if !hot {
                self.recent.push(key.clone());
            }
            (key, OpKind::Put { value, request })
        };
        let op = self.history.len();
        self.history.push(ClientOp {
            client: c,
            key,
            kind,
            node,
            invoked: self.world.now(),
            returned: None,
            attempts: 1,
            last_invoked: self.world.now(),
            earlier_indeterminate: false,
            may_forget: self.spec.world.config.requests_max < 1000,
            reply: None,
            incarnation: self.world.incarnation(node),
            recovering: false,
        });
        let cmd = self.command(op);
        let call = self.world.submit(node, cmd);
        self.calls.insert(call, op);
        self.clients[c].current = Some((op, Some(call)));
        self.clients[c].done += 1;
    }

    fn command(&self, op: usize) -> Command {
        let op = &self.history[op];
        match &op.kind {
            OpKind::Put { value, request } => Command::Put {
                key: op.key.clone(),
                value: value.clone(),
                request: request.clone(),
            },
            OpKind::Get => Command::Get {
                key: op.key.clone(),
            },
            OpKind::Verify => Command::Verify {
                key: op.key.clone(),
            },
        }
    }

    fn answered(&mut self, call: CallId, reply: Option<Reply>) {
        let Some(op) = self.calls.remove(&call) else {
            return;
        };
        let now = self.world.now();
        let c = self.history[op].client;
        let retry = match (&self.history[op].kind, &reply) {
            (
                OpKind::Put {
                    request: Some(_), ..
                },
                None | Some(Reply::Put(PutOutcome::Unavailable(_))),
            ) => self.safety && self.history[op].attempts < ATTEMPTS_MAX,
            _ => false,
        };
        if self.history[op].recovering && reply.is_some() {
            self.recoveries += 1;
            if let (Some(Reply::Put(PutOutcome::Exists { value: w })), Some(v)) =
                (&reply, self.history[op].value())
                && w != v
            {
                self.recover_exists += 1;
            }
        }
        let removed = matches!(
            reply,
            Some(Reply::Put(PutOutcome::NotReady(NotReady::Removed)))
                | Some(Reply::Get(GetOutcome::NotReady(NotReady::Removed)))
        );
        // A lost answer keeps the previous one (if an earlier attempt was answered).
        if reply.is_some() || self.history[op].reply.is_none() {
            self.history[op].reply = reply;
        }
        self.history[op].returned = Some(now);
        if c >= ONE_SHOT_CLIENT {
            return;
        }
        if removed {
            // The node says an operator removed it: the client goes elsewhere.
            let n = self.world.node_count();
            let members: Vec<NodeIx> = (0..n).filter(|ix| self.member(*ix)).collect();
            if !members.is_empty() {
                self.clients[c].home = members[self.rng.random_range(0..members.len())];
            }
        }
        let (lo, hi) = self.spec.workload.think_us;
        if retry {
            self.clients[c].current = Some((op, None));
            let backoff = self.rng.random_range(50_000..=200_000);
            self.world
                .wake_at(now + std::time::Duration::from_micros(backoff), c as u64);
        } else {
            self.clients[c].current = None;
            let think = self.rng.random_range(lo..=hi.max(lo));
            self.world
                .wake_at(now + std::time::Duration::from_micros(think), c as u64);
        }
    }

    fn maybe_end_safety(&mut self) {
        let all_done = self
            .clients
            .iter()
            .all(|c| c.current.is_none() && c.done >= self.spec.workload.ops_per_client);
        if all_done && self.safety {
            self.start_liveness();
        }
    }

    /// The liveness phase, every `LIVENESS_CHECK_US`: quiesce, a fresh PUT, convergence, the
    /// final reads. Returns true once everything passed.
    fn liveness_check(&mut self) -> Result<bool, Broken> {
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
                    // everywhere, and every write waits for it: the operator removes it, by
                    // force (it said goodbye, so it holds no grant that is still open; a plain
                    // removal is refused while the writes waiting for it are open).
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
            if let Some((key, state)) = node.keys().find(|(_, s)| s.accepted().is_some()) {
                missing.get_or_insert_with(|| {
                    format!("{name} still holds an accepted value of key {key:?} not known to be decided: {state:?}")
                });
                continue;
            }
            for (key, (p, _)) in self.checker.committed() {
                match node.key_state(key) {
                    Some(s) if s.stored().is_some_and(|c| c.p == *p) => {}
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
                // first, under the read lease, and they tell it it was removed).
                let node = self.world.node(ix);
                let lacking = self
                    .checker
                    .committed()
                    .iter()
                    .find(|(k, (p, _))| {
                        node.and_then(|n| n.key_state(k))
                            .and_then(|s| s.stored())
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

    /// With a minority of every cluster faulty (and nothing else), every PUT at another node
    /// is answered Stored or Exists and every GET a value or "unknown", before its deadline
    /// (PROTOCOL.md, invariant 9).
    fn check_answered_in_time(&self, op: usize, reply: Option<&Reply>) -> Result<(), Broken> {
        let o = &self.history[op];
        if self.world.minority().is_empty()
            || !self.safety
            || self.world.minority().contains(&o.node)
        {
            return Ok(());
        }
        let definite = matches!(
            reply,
            Some(Reply::Put(PutOutcome::Stored | PutOutcome::Exists { .. }))
                | Some(Reply::Get(GetOutcome::Value(_) | GetOutcome::Unknown))
                | Some(Reply::Verify(_))
        );
        if definite {
            return Ok(());
        }
        Err(Broken {
            invariant: Invariant::LivenessUnderMinority,
            detail: format!(
                "with a minority of every cluster faulty ({:?}), {} answered {:?} of {:?} invoked at {}: {reply:?}",
                self.world
                    .minority()
                    .iter()
                    .map(|ix| self.world.id(*ix).to_string())
                    .collect::<Vec<_>>(),
                self.world.id(o.node),
                o.kind,
                o.key,
                o.last_invoked
            ),
            key: Some(o.key.clone()),
        })
    }

    /// A read answers a value only once it is chosen, and "unknown" only if nothing was chosen
    /// before it started (PROTOCOL.md, invariant 7: a chosen value has a majority of every
    /// cluster, which the read's majority meets).
    fn check_read(&self, op: usize, outcome: &GetOutcome) -> Result<(), Broken> {
        let o = &self.history[op];
        let chosen = self.checker.chosen(&o.key);
        let at = self.world.id(o.node);
        let wrong = |detail: String| {
            Err(Broken {
                invariant: Invariant::QuorumDiscipline,
                detail,
                key: Some(o.key.clone()),
            })
        };
        match (outcome, chosen) {
            (GetOutcome::Unknown, Some((c, when))) if *when < o.invoked => wrong(format!(
                "{at} answered a read of {:?} (invoked at {}) \"unknown\", but {} = {:?} was chosen at {when}",
                o.key, o.invoked, c.p, c.value
            )),
            (GetOutcome::Value(v), Some((c, _))) if c.value == *v => Ok(()),
            (GetOutcome::Value(v), other) => wrong(format!(
                "{at} answered a read of {:?} with {v:?}, which is not the chosen value ({:?})",
                o.key,
                other.map(|(c, _)| &c.value)
            )),
            _ => Ok(()),
        }
    }

    /// Every value a verify read reports is the key's committed value, and the report is
    /// consistent with its answers: `agree` exactly when every answer holds one committed
    /// value or every one holds none (so never when two answers differ), and no node both
    /// answered and is listed silent.
    fn check_verify(&mut self, node: NodeIx, report: &VerifyReport) -> Result<(), Broken> {
        self.verifies_checked += 1;
        let inconsistent = |detail: String| Broken {
            invariant: Invariant::VerifyReport,
            detail,
            key: Some(report.key.clone()),
        };
        let first = report.answers.first().map(|(_, s)| s);
        let same = report.answers.iter().all(|(_, s)| Some(s) == first);
        let agree = match first {
            Some(ReadState::Stored(_)) | Some(ReadState::Free) | None => same,
            Some(_) => false,
        };
        if report.agree != agree {
            return Err(inconsistent(format!(
                "a verify read at {} reports agree={} but its answers are {:?}",
                self.world.id(node),
                report.agree,
                report.answers
            )));
        }
        if let Some((n, _)) = report
            .answers
            .iter()
            .find(|(n, _)| report.silent.nodes.contains(n))
        {
            return Err(inconsistent(format!(
                "a verify read at {} lists {n} both as answering and silent: {report:?}",
                self.world.id(node)
            )));
        }
        let committed = self.checker.committed().get(&report.key);
        for (answered, state) in &report.answers {
            if let ReadState::Stored(v) = state
                && committed.is_none_or(|(_, c)| c != v)
            {
                return Err(Broken {
                    invariant: Invariant::VerifyReport,
                    detail: format!(
                        "a verify read at {} says {answered} stores {:?} = {v:?}, but the key committed {committed:?}",
                        self.world.id(node),
                        report.key
                    ),
                    key: Some(report.key.clone()),
                });
            }
        }
        Ok(())
    }

    /// Checks on the whole history, once the run is over.
    fn final_checks(&mut self) -> Result<(), Broken> {
        let history: Vec<Op> = self
            .history
            .iter()
            .filter(|op| !matches!(op.kind, OpKind::Verify))
            .map(ClientOp::to_history)
            .collect();
        if let Some(v) = linearizability::check_all(&history).into_iter().next() {
            return Err(Broken {
                invariant: Invariant::Linearizability,
                detail: v.to_string(),
                key: Some(Key::new(&v.key)),
            });
        }
        for op in &self.history {
            let Some(value) = op.value() else { continue };
            let Some(Reply::Put(outcome)) = &op.reply else {
                continue;
            };
            let coordinator = self.world.id(op.node).clone();
            match outcome {
                PutOutcome::Exists { value: w } => {
                    match self.checker.committed().get(&op.key) {
                        Some((_, v)) if v == w => {}
                        other => {
                            return Err(Broken {
                                invariant: Invariant::HonestConflicts,
                                detail: format!(
                                    "client {} was told Exists({w:?}) for {:?} by {coordinator}, but the key committed {other:?}",
                                    op.client, op.key
                                ),
                                key: Some(op.key.clone()),
                            });
                        }
                    }
                    if w != value {
                        self.told_aborted(op, &coordinator, value, "Exists")?;
                    }
                }
                PutOutcome::Busy => self.told_aborted(op, &coordinator, value, "Busy")?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A client was told its PUT had no effect (Busy), or that another value won (Exists):
    /// none of its proposals may be the chosen one.
    fn told_aborted(
        &self,
        op: &ClientOp,
        coordinator: &replicator_core::NodeId,
        value: &Value,
        told: &str,
    ) -> Result<(), Broken> {
        let Some((chosen, _)) = self.checker.chosen(&op.key) else {
            return Ok(());
        };
        let own = self
            .checker
            .proposals_of(coordinator, &op.key, value, op.since());
        if !own.contains(&chosen.p) {
            return Ok(());
        }
        Err(Broken {
            invariant: Invariant::OneOutcome,
            detail: format!(
                "client {} was told {told} for {:?} = {value:?} by {coordinator}, but its proposal {} was chosen",
                op.client, op.key, chosen.p
            ),
            key: Some(op.key.clone()),
        })
    }

    /// The client history of `key` (or the last ops), one line per op.
    fn summarise(&self, key: Option<&Key>) -> Vec<String> {
        let ops: Vec<&ClientOp> = match key {
            Some(k) => self.history.iter().filter(|o| o.key == *k).collect(),
            None => {
                let from = self.history.len().saturating_sub(20);
                self.history[from..].iter().collect()
            }
        };
        ops.iter()
            .map(|o| {
                format!(
                    "client {} {} {:?}{} at {} attempts {} -> {:?} at {:?}",
                    o.client,
                    self.world.id(o.node),
                    o.key,
                    match &o.kind {
                        OpKind::Put { value, request } =>
                            format!(" PUT {value:?} request {request:?}"),
                        OpKind::Get => " GET".to_string(),
                        OpKind::Verify => " VERIFY".to_string(),
                    },
                    o.invoked,
                    o.attempts,
                    o.reply,
                    o.returned
                )
            })
            .collect()
    }
}

/// The spec with the trace kept, for a replay that writes it to a file.
pub fn with_trace(spec: &RunSpec, mode: TraceMode) -> RunSpec {
    let mut spec = spec.clone();
    spec.world.trace = mode;
    spec
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
