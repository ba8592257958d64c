//! The run loop: builds the run from its spec, steps the world until the run is complete or
//! broken, hands every observation to the checker and reacts to it (answers, wakes of
//! clients and phases), and gathers what it measured.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::{Key, PutOutcome, Reply, Time};
use transport_sim::{Obs, World};

use crate::checker::{Broken, Checker, Writer};
use crate::invariant::Invariant;
use crate::swarm::RunSpec;

use super::liveness::Stage;
use super::report::{Failure, Outcome, RunStats};
use super::workload::Client;
use super::{
    EVENTS_MAX, Run, TAG_BURST, TAG_CLIENT_MAX, TAG_JOIN, TAG_LEAVE, TAG_LIVENESS_CHECK,
    TAG_SAFETY_END,
};

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
        events: run.world.take_trace_events(),
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
}
