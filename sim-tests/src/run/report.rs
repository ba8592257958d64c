//! What a run returns: its outcome, its stats, and on failure what broke with the client
//! history around it; and the spec of a replay that keeps the trace.

use std::collections::BTreeMap;

use replicator_core::{Key, Time};
use transport_sim::{TraceEvent, TraceMode, WorldStats};

use crate::checker::Broken;
use crate::swarm::RunSpec;

use super::Run;
use super::ops::{ClientOp, OpKind};

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
    /// Its structured records, each naming its line in `trace` (kept with it).
    pub events: Vec<TraceEvent>,
}

impl Run {
    /// The client history of `key` (or the last ops), one line per op.
    pub(super) fn summarise(&self, key: Option<&Key>) -> Vec<String> {
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
