//! One seed: build the world, run the workload under faults (safety phase), then heal
//! everything and check that the system converges (liveness phase).

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::{
    CallId, Command, GetOutcome, Key, ProposalId, PutOutcome, ReadState, Reply, RequestId, Time,
    Value, VerifyReport,
};
use transport_sim::{NodeIx, Obs, TraceMode, World, WorldStats};

use crate::checker::{Broken, Checker};
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
    pub rejected: BTreeMap<String, u64>,
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
    /// The liveness probe: a fresh PUT's op index, once sent.
    probe: Option<usize>,
    liveness_deadline: Time,
    liveness_missing: String,
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
        probe: None,
        liveness_deadline: Time::MAX,
        liveness_missing: String::new(),
    };
    let result = run.go();
    let mut stats = RunStats {
        world: run.world.stats(),
        sim_us: run.world.now().as_micros(),
        ops: run.history.len(),
        trace_hash: run.world.trace_hash(),
        rejected: run.checker.rejected.clone(),
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
                    invariant: "bounded run",
                    detail: format!("more than {EVENTS_MAX} events"),
                    key: None,
                });
            }
            if !self.world.step() {
                return Err(Broken {
                    invariant: "liveness",
                    detail: "the world ran out of events before the run ended".into(),
                    key: None,
                });
            }
            self.obs.extend(self.world.drain_observations());
            let batch = std::mem::take(&mut self.obs);
            for obs in &batch {
                let name = match obs {
                    Obs::Write { node, .. }
                    | Obs::Durable { node, .. }
                    | Obs::Note { node, .. }
                    | Obs::Crashed { node, .. } => self.world.id(*node).to_string(),
                    _ => String::new(),
                };
                self.checker.observe(obs, &name, self.world.now())?;
                if self.react(obs)? {
                    return self.final_checks();
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
                self.answered(*call, Some(reply.clone()))
            }
            Obs::CallLost { call, .. } => self.answered(*call, None),
            Obs::Wake { tag } if *tag < TAG_CLIENT_MAX => self.client_wake(*tag as usize),
            Obs::Wake { tag: TAG_JOIN } if self.safety => {
                let cluster = self.rng.random_range(0..self.world.cluster_count());
                self.world.join(cluster);
            }
            Obs::Wake { tag: TAG_LEAVE } if self.safety => self.start_leave(),
            Obs::Wake { tag: TAG_BURST } if self.safety => self.burst(),
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

    /// Nodes that take part: neither gone nor on their way out.
    fn staying(&self, ix: NodeIx) -> bool {
        !self.world.is_departed(ix) && !self.world.is_leaving(ix)
    }

    /// Several nodes, in different clusters where there are several, propose one fresh key at
    /// the same instant: concurrent conflicting proposals.
    fn burst(&mut self) {
        let n = self.world.node_count();
        let staying: Vec<NodeIx> = (0..n).filter(|ix| self.staying(*ix)).collect();
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
            });
            let cmd = self.command(op);
            let call = self.world.submit(node, cmd);
            self.calls.insert(call, op);
        }
        self.recent.push(key);
    }

    /// A node of a cluster that keeps at least 3 members leaves gracefully.
    fn start_leave(&mut self) {
        let n = self.world.node_count();
        let members = |run: &Self, c: usize| {
            (0..n)
                .filter(|ix| run.world.cluster_of(*ix) == c && run.staying(*ix))
                .count()
        };
        let candidates: Vec<NodeIx> = (0..n)
            .filter(|ix| self.staying(*ix) && members(self, self.world.cluster_of(*ix)) >= 4)
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
        self.liveness_deadline =
            self.world.now() + std::time::Duration::from_micros(self.spec.workload.liveness_us);
        let at = self.world.now() + std::time::Duration::from_micros(LIVENESS_CHECK_US);
        self.world.wake_at(at, TAG_LIVENESS_CHECK);
    }

    fn client_wake(&mut self, c: usize) {
        if !self.safety {
            return;
        }
        let client = &self.clients[c];
        match client.current {
            Some((op, None)) => {
                // A retry of a PUT with its request id.
                let node = self.history[op].node;
                let cmd = self.command(op);
                let call = self.world.submit(node, cmd);
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
        if !self.staying(node) {
            let staying: Vec<NodeIx> = (0..n).filter(|ix| self.staying(*ix)).collect();
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
        // A lost answer keeps the previous one (if an earlier attempt was answered).
        if reply.is_some() || self.history[op].reply.is_none() {
            self.history[op].reply = reply;
        }
        self.history[op].returned = Some(now);
        if c >= ONE_SHOT_CLIENT {
            return;
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

    /// In the liveness phase: has everything converged? Then probe with a fresh PUT.
    fn liveness_check(&mut self) -> Result<bool, Broken> {
        let now = self.world.now();
        if let Some(probe) = self.probe {
            if let Some(reply) = &self.history[probe].reply {
                return match reply {
                    Reply::Put(PutOutcome::Stored) => Ok(true),
                    other => Err(Broken {
                        invariant: "liveness",
                        detail: format!("the fresh PUT after healing was answered {other:?}"),
                        key: Some(self.history[probe].key.clone()),
                    }),
                };
            }
        } else {
            let missing = self.unconverged();
            match missing {
                None => self.send_probe(),
                Some(m) => self.liveness_missing = m,
            }
        }
        if now >= self.liveness_deadline {
            let detail = match self.probe {
                Some(_) => "the fresh PUT after healing got no answer".to_string(),
                None => format!(
                    "not converged {}us after healing: {}",
                    self.spec.workload.liveness_us, self.liveness_missing
                ),
            };
            let key = match self.probe {
                Some(probe) => Some(self.history[probe].key.clone()),
                None => crate::checker::key_in(&self.liveness_missing),
            };
            return Err(Broken {
                invariant: "liveness",
                detail,
                key,
            });
        }
        let at = now + std::time::Duration::from_micros(LIVENESS_CHECK_US);
        self.world.wake_at(at, TAG_LIVENESS_CHECK);
        Ok(false)
    }

    /// What still keeps the system from having converged, if anything.
    fn unconverged(&self) -> Option<String> {
        if let Some(c) = self.clients.iter().position(|c| c.current.is_some()) {
            return Some(format!("client {c} still waits for an answer"));
        }
        if !self.calls.is_empty() || self.world.calls_open() > 0 {
            return Some(format!("{} client calls unanswered", self.calls.len()));
        }
        let membership = self.world.membership();
        for ix in 0..self.world.node_count() {
            let name = self.world.id(ix);
            if self.world.is_departed(ix) {
                continue;
            }
            if let Some(node) = self.world.node(ix)
                && node.membership() != &membership
            {
                return Some(format!("{name} has not learned every join and goodbye yet"));
            }
            if self.world.is_leaving(ix) {
                let stats = self.world.node(ix).map(|n| n.stats());
                return Some(format!("{name} has not finished leaving: {stats:?}"));
            }
            let Some(node) = self.world.node(ix) else {
                return Some(format!("{name} is down"));
            };
            if !node.is_ready() {
                return Some(format!("{name} is not ready (join-time copy)"));
            }
            if let Some((key, state)) = node.keys().find(|(_, s)| !s.is_stored()) {
                return Some(format!(
                    "{name} still holds a reservation of {key:?} by {}",
                    state.proposal()
                ));
            }
            for (key, (p, _)) in self.checker.committed() {
                match node.key_state(key) {
                    Some(s) if s.is_stored() && s.proposal() == p => {}
                    other => {
                        return Some(format!(
                            "{name} does not store committed key {key:?} ({p}): it holds {other:?}"
                        ));
                    }
                }
            }
        }
        None
    }

    fn send_probe(&mut self) {
        let n = self.world.node_count();
        let ready: Vec<NodeIx> = (0..n)
            .filter(|ix| self.staying(*ix))
            .filter(|ix| self.world.node(*ix).is_some_and(|n| n.is_ready()))
            .filter(|ix| {
                let c = self.world.cluster_of(*ix);
                (0..n)
                    .filter(|o| self.world.cluster_of(*o) == c && self.staying(*o))
                    .count()
                    >= 3
            })
            .collect();
        let node = ready[self.rng.random_range(0..ready.len())];
        let key = Key::new("liveness-probe");
        let value = Value::new("probe");
        self.checker.proposed(key.clone(), value.clone());
        let op = self.history.len();
        self.history.push(ClientOp {
            client: ONE_SHOT_CLIENT,
            key,
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
            may_forget: self.spec.world.config.requests_max < 1000,
            reply: None,
        });
        let cmd = self.command(op);
        let call = self.world.submit(node, cmd);
        self.calls.insert(call, op);
        self.probe = Some(op);
    }

    /// Every value a verify read reports is the key's committed value.
    fn check_verify(&self, node: NodeIx, report: &VerifyReport) -> Result<(), Broken> {
        let committed = self.checker.committed().get(&report.key);
        for (answered, state) in &report.answers {
            if let ReadState::Stored(v) = state
                && committed.is_none_or(|(_, c)| c != v)
            {
                return Err(Broken {
                    invariant: "agreement (verify read)",
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
                invariant: "linearizability",
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
                                invariant: "honest conflicts",
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

    /// A client was told its PUT had no effect: none of its proposals may have committed.
    fn told_aborted(
        &self,
        op: &ClientOp,
        coordinator: &replicator_core::NodeId,
        value: &Value,
        told: &str,
    ) -> Result<(), Broken> {
        let committed: Vec<ProposalId> = self
            .checker
            .proposals_of(coordinator, &op.key, value, op.since())
            .into_iter()
            .filter(|p| self.checker.is_committed(p))
            .collect();
        if committed.is_empty() {
            return Ok(());
        }
        Err(Broken {
            invariant: "one outcome per proposal",
            detail: format!(
                "client {} was told {told} for {:?} = {value:?} by {coordinator}, but its proposal {:?} committed",
                op.client, op.key, committed
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
