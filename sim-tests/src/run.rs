//! One seed: build the world, run the workload under faults (safety phase), then heal
//! everything and check that the system converges (liveness phase).
//!
//! ## Where each part lives
//!
//! | file (in `run/`) | what it does |
//! |---|---|
//! | here | the run's state (`Run`), the wake tags and the bounds of the phases |
//! | `event_loop.rs` | [`run`]: builds the run, steps the world, hands every observation to the checker, reacts to it |
//! | `ops.rs` | a client's ops ([`ClientOp`]): attempts, answers, their names in the stats, their form for the linearizability checker |
//! | `workload.rs` | the clients and the safety phase's workload: ops, retries with request ids, bursts, joins and leaves, lulls |
//! | `liveness.rs` | the liveness phase: quiesce, the probe PUT, convergence (operators' removals, nudges), the final reads |
//! | `checks.rs` | the harness's own checks of answers (reads, verify reports, removals, a minority down) and of the whole history at the end |
//! | `report.rs` | what a run returns ([`Outcome`], [`RunStats`], [`Failure`]), the history summary of a failure, [`with_trace`] |

mod checks;
mod event_loop;
mod liveness;
mod ops;
mod report;
mod workload;

pub use event_loop::run;
pub use ops::ClientOp;
pub use report::{Failure, Outcome, RunStats, with_trace};

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use replicator_core::{CallId, Key, Time};
use transport_sim::{NodeIx, Obs, World};

use crate::checker::Checker;
use crate::swarm::RunSpec;

use liveness::Stage;
use workload::Client;

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
/// often (its read asks its cluster, whose members tell it it was removed).
const NUDGE_US: u64 = 500_000;
/// A client retries a lost or Unavailable PUT that carries a request id at most this often.
const ATTEMPTS_MAX: u32 = 5;
/// A hard bound on events per run, far above what any seed needs.
const EVENTS_MAX: u64 = 50_000_000;

/// One run's state: the world, the checker, the clients and their history, and where the
/// liveness phase is.
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
