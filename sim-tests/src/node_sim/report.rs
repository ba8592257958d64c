//! What a run returns: its stats, or a failure with the run's log; the report of a failure
//! and the command that replays its seed.

use std::fmt::Write as _;

use replicator_node::driver::DriverBug;

use super::run::run_seed;
use super::spec::{NodeSimSpec, bug_name};

/// The command that replays `seed` (with the bug, if any, that it ran with).
pub fn replay_command(seed: u64, bug: Option<DriverBug>) -> String {
    let bug = match bug {
        None => String::new(),
        Some(b) => format!("NODE_SIM_BUG={} ", bug_name(b)),
    };
    format!(
        "{bug}MADSIM_TEST_SEED={seed} RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/madsim \
         cargo test -p sim-tests --test node_sim replay -- --nocapture"
    )
}

/// What a passing run measured.
#[derive(Clone, Debug, Default)]
pub struct NodeSimStats {
    pub ops: usize,
    pub stored: usize,
    pub faults: usize,
    pub kills: usize,
    pub sim_ms: u64,
    pub messages: u64,
    pub writes_lost: u64,
    /// Disk writes refused while a disk was failing.
    pub writes_refused: u64,
    /// Simulated time from healing until every client call was answered, a probe PUT stored
    /// through every cluster and every view settled (the liveness bound is 60 s).
    pub settle_ms: u64,
    /// A hash of everything the run observed (history, fault log, final disks): the same seed
    /// gives the same hash.
    pub hash: u64,
}

/// A failed run: why, and what happened.
#[derive(Clone, Debug)]
pub struct NodeSimFailure {
    pub reason: String,
    pub log: Vec<String>,
    pub hash: u64,
}

/// Runs one seed; on failure, a report that starts and ends with the seed and the replay
/// command.
pub fn check_seed(spec: &NodeSimSpec) -> Result<NodeSimStats, String> {
    run_seed(spec).map_err(|f| report(spec, &f))
}

pub fn report(spec: &NodeSimSpec, failure: &NodeSimFailure) -> String {
    report_with(spec, failure, 60)
}

/// The report with the last `lines` lines of the run's log (faults, restarts, liveness).
pub fn report_with(spec: &NodeSimSpec, failure: &NodeSimFailure, lines: usize) -> String {
    let replay = replay_command(spec.seed, spec.bug);
    let mut r = String::new();
    let _ = writeln!(r, "NODE SIMULATION FAILED: seed {}", spec.seed);
    let _ = writeln!(r, "replay: {replay}");
    let _ = writeln!(r, "config: {spec:?}");
    let _ = writeln!(r, "why: {}", failure.reason);
    let tail = failure.log.len().saturating_sub(lines);
    let _ = writeln!(
        r,
        "log (last {} of {} lines):",
        failure.log.len() - tail,
        failure.log.len()
    );
    for line in &failure.log[tail..] {
        let _ = writeln!(r, "  {line}");
    }
    let _ = writeln!(r, "why: {}", failure.reason);
    let _ = writeln!(
        r,
        "NODE SIMULATION FAILED: seed {}; replay: {replay}",
        spec.seed
    );
    r
}
