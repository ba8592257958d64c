//! Deterministic simulation tests of the replication protocol: workloads, invariant checkers,
//! swarm-drawn configurations and failure reports (see this crate's README for what the
//! simulator must do and how to replay a seed).
//!
//! ## Where each job lives
//!
//! | file (in `src/`) | what it does |
//! |---|---|
//! | `lib.rs` | checking one seed and its failure report, the seed range from the environment, the injected bugs and their hunts |
//! | `swarm.rs` | what a seed runs ([`RunSpec`], [`Shape`]), drawn from the seed |
//! | `run.rs` | one seed of the core simulator: the run's state, the wake tags, the bounds of the phases |
//! | `run/event_loop.rs` | [`run()`]: stepping the world, every observation to the checker, the reactions |
//! | `run/ops.rs` | a client's ops: attempts, answers, their form for the linearizability checker |
//! | `run/workload.rs` | the clients and the safety phase's workload (retries, bursts, leaves, lulls) |
//! | `run/liveness.rs` | the liveness phase: quiesce, the probe PUT, convergence, the final reads |
//! | `run/checks.rs` | the harness's checks of answers as they come and of the whole history at the end |
//! | `run/report.rs` | what a run returns ([`Outcome`], [`RunStats`], [`Failure`]) and the history around a failure |
//! | `checker/` | the safety invariants, checked on every observation (its own map in `checker/mod.rs`) |
//! | `invariant.rs` | the invariants a failure names |
//! | `linearizability.rs` | the linearizability checker: its model and algorithm |
//! | `linearizability/history.rs` | the history: ops and their answers |
//! | `linearizability/search.rs` | the check, key by key: the winning write and its point |
//! | `linearizability/report.rs` | a violation and how ops and values are shown |
//! | `linearizability/tests.rs`, `linearizability/tests/cross_check.rs` | its tests: hand-made histories; random ones against a brute-force search |
//! | `races.rs` | same-instant races: how often nobody wins |
//! | `node_sim.rs` | the real node under madsim (`--cfg madsim` only): what it simulates and checks, the shared constants |
//! | `node_sim/spec.rs` | what one seed runs, drawn from the seed; the driver bugs' names |
//! | `node_sim/report.rs` | stats, failures, the failure report and the replay command |
//! | `node_sim/run.rs` | one seed in a fresh madsim runtime: build, safety phase, healing, end checks, stats |
//! | `node_sim/network.rs` | the simulated network and each node's network task |
//! | `node_sim/world.rs` | machines, a node's process from its disk, kill, restart, clogs and partitions, the log |
//! | `node_sim/faults.rs` | the fault injector |
//! | `node_sim/clients.rs` | the clients: calls through the handle or the HTTP router, retries, bursts |
//! | `node_sim/checks.rs` | the end checks: liveness after healing, the disks, honesty |
//! | `trace_html.rs`, `trace_html/` | a run as a picture: one self-contained HTML page drawn from the structured trace |
//! | `bin/sim.rs` | sweeps, the benchmark, the scale run, the bug hunt, one seed's trace and its page |

pub mod checker;
pub mod invariant;
pub mod linearizability;
/// The real node (driver, storage, HTTP router) under madsim; `--cfg madsim` only.
#[cfg(madsim)]
pub mod node_sim;
pub mod races;
pub mod run;
pub mod swarm;
pub mod trace_html;

use std::fmt::Write as _;
use std::path::PathBuf;

use replicator_core::InjectedBug;
use transport_sim::{FaultKind, TraceMode};

pub use run::{Failure, Outcome, RunStats, run};
pub use swarm::{RunSpec, Shape, draw};

/// The command that replays one seed of `shape`.
pub fn replay_command(seed: u64, shape: &Shape) -> String {
    if shape.is_default() {
        format!("SIM_SEED={seed} cargo test -p sim-tests replay -- --nocapture")
    } else {
        format!(
            "cargo run --release -p sim-tests --bin sim -- sweep --start {seed} --seeds 1 {}",
            shape.args()
        )
    }
}

/// The command that writes one seed's trace and its picture (an HTML page next to it).
pub fn picture_command(seed: u64, shape: &Shape) -> String {
    let args = shape.args();
    format!(
        "cargo run --release -p sim-tests --bin sim -- trace {seed}{}{args}",
        if args.is_empty() { "" } else { " " }
    )
}

/// Where failing runs write their traces: `$CARGO_TARGET_DIR/sim-traces`, else the workspace's
/// `target/sim-traces`.
pub fn trace_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("sim-traces")
}

/// Runs one seed of `shape`; on failure, replays it with the full trace kept, writes the
/// trace and its picture (an HTML page) to files and returns a report that starts and ends with the seed and the replay
/// command.
pub fn check_seed(seed: u64, shape: &Shape) -> Result<RunStats, String> {
    let spec = draw(seed, shape);
    let outcome = run(&spec);
    match outcome.result {
        Ok(()) => Ok(outcome.stats),
        Err(failure) => Err(report_failure(&spec, shape, &failure)),
    }
}

/// Builds the report of a failed run (replaying it to write its trace and its picture).
pub fn report_failure(spec: &RunSpec, shape: &Shape, failure: &Failure) -> String {
    let replay = run::run(&run::with_trace(spec, TraceMode::Keep));
    let dir = trace_dir();
    let path = dir.join(format!("seed-{}.trace", spec.seed));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, replay.trace.join("\n") + "\n"));
    let page = trace_html::page_path(&path);
    let drawn = trace_html::write_page(&page, spec.seed, &replay);
    let mut r = String::new();
    let _ = writeln!(r, "SIMULATION FAILED: seed {}", spec.seed);
    let _ = writeln!(r, "replay: {}", replay_command(spec.seed, shape));
    let _ = writeln!(r, "config: {}", spec.describe());
    let _ = writeln!(
        r,
        "broken invariant: {} at {}\n  {}",
        failure.broken.invariant, failure.at, failure.broken.detail
    );
    if replay
        .result
        .as_ref()
        .err()
        .map(|f| f.broken.detail.as_str())
        != Some(failure.broken.detail.as_str())
    {
        let _ = writeln!(
            r,
            "WARNING: the replay with the trace on did not fail the same way"
        );
    }
    match written {
        Ok(()) => {
            let _ = writeln!(
                r,
                "full trace ({} lines): {}",
                replay.trace.len(),
                path.display()
            );
        }
        Err(e) => {
            let _ = writeln!(r, "could not write the trace to {}: {e}", path.display());
        }
    }
    match drawn {
        Ok(()) => {
            let _ = writeln!(
                r,
                "the run as a picture: {} (open it in a browser; again with: {})",
                page.display(),
                picture_command(spec.seed, shape)
            );
        }
        Err(e) => {
            let _ = writeln!(r, "could not write the picture to {}: {e}", page.display());
        }
    }
    let _ = writeln!(r, "client history around it:");
    for line in &failure.history {
        let _ = writeln!(r, "  {line}");
    }
    if let Some(key) = &failure.broken.key {
        let needle = key.as_str();
        let lines: Vec<&String> = replay
            .trace
            .iter()
            .filter(|l| mentions(l, needle))
            .collect();
        let from = lines.len().saturating_sub(40);
        let _ = writeln!(
            r,
            "last {} trace lines about {needle} (of {}):",
            lines.len() - from,
            lines.len()
        );
        for line in &lines[from..] {
            let shown: String = line.chars().take(300).collect();
            let _ = writeln!(r, "  {shown}");
        }
    }
    let _ = writeln!(r, "config: {}", spec.describe());
    let _ = writeln!(r, "SIMULATION FAILED: seed {}", spec.seed);
    let _ = write!(r, "replay: {}", replay_command(spec.seed, shape));
    r
}

/// Whether `line` names `key` as a whole word (keys print unquoted in traces).
fn mentions(line: &str, key: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '-' || c == '_' || c == '.';
    line.match_indices(key).any(|(i, _)| {
        let before = line[..i].chars().next_back().is_none_or(|c| !word(c));
        let after = line[i + key.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word(c));
        before && after
    })
}

/// The seeds to run: `SIM_SEED=N` (one), `SIM_START=N SIM_SEEDS=M` (a range), else the
/// default range.
pub fn seeds_from_env(default_start: u64, default_count: u64) -> std::ops::Range<u64> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seed) = var("SIM_SEED") {
        return seed..seed + 1;
    }
    let start = var("SIM_START").unwrap_or(default_start);
    let count = var("SIM_SEEDS").unwrap_or(default_count);
    start..start + count
}

/// Percentile `q` (0..=100) of sorted values.
pub fn percentile(sorted: &[u64], q: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as u64 * q / 100) as usize;
    sorted[i]
}

/// Every deliberately broken variant of the core the simulator must catch.
pub const BUGS: [InjectedBug; 13] = [
    InjectedBug::PhaseTwoOwnClusterOnly,
    InjectedBug::IgnoreAcceptedValues,
    InjectedBug::PromiseNotDurable,
    InjectedBug::AcceptBelowPromise,
    InjectedBug::UnknownFromLocalState,
    InjectedBug::ReadAcceptedBeforeChosen,
    InjectedBug::BusyAfterAcceptLeft,
    InjectedBug::LazyRoundCeiling,
    InjectedBug::LazyCounterCeiling,
    InjectedBug::FastRoundAllButOne,
    InjectedBug::VoteBeforeDurable,
    InjectedBug::ForgetMembershipOnRestart,
    InjectedBug::ClearBeforeLazyDurable,
];

/// The swarm shape that hunts `bug`: the default draw, with crashes that lose unsynced writes
/// where the bug needs them to show.
pub fn bug_shape(bug: InjectedBug) -> Shape {
    Shape {
        bug: Some(bug),
        lose_unsynced: matches!(
            bug,
            InjectedBug::VoteBeforeDurable
                | InjectedBug::PromiseNotDurable
                | InjectedBug::LazyRoundCeiling
                | InjectedBug::LazyCounterCeiling
        )
        .then_some(true),
        // A check answer that outruns a lazy write needs a leave to be checked.
        leaves: (bug == InjectedBug::ClearBeforeLazyDurable).then_some(2),
        ..Shape::default()
    }
}

/// Like [`bug_shape`], with the fault mix that shows the bug soonest: a lost unsynced write
/// needs a crash (but see the ceilings); a node that forgets its membership on restart founds a network of its own
/// only if it restarts where it cannot reach the rest (a cluster, or a side of clusters,
/// restarted during a partition).
pub fn bug_shape_targeted(bug: InjectedBug) -> Shape {
    let faults = match bug {
        InjectedBug::VoteBeforeDurable | InjectedBug::PromiseNotDurable => {
            Some(vec![FaultKind::Crash, FaultKind::Pause])
        }
        // A lazily written ceiling is lost only by a crash within a few milliseconds of a
        // block's first id. Crashes and pauses alone missed LazyCounterCeiling in 300 seeds;
        // the plain draw, whose crash-heavy seeds crash eight times as often, catches both
        // (2026-12-07: LazyRoundCeiling at its 161st seed, LazyCounterCeiling at its 51st).
        InjectedBug::LazyRoundCeiling | InjectedBug::LazyCounterCeiling => None,
        InjectedBug::ForgetMembershipOnRestart => {
            Some(vec![FaultKind::RestartCluster, FaultKind::RestartSplit])
        }
        _ => None,
    };
    Shape {
        faults,
        ..bug_shape(bug)
    }
}

/// Whether a bug must show as a broken safety rule (a liveness failure does not count): every
/// one of them, but the ones whose only symptom can be a run that does not converge.
pub fn needs_safety_failure(bug: InjectedBug) -> bool {
    !matches!(bug, InjectedBug::ClearBeforeLazyDurable)
}

/// Runs seeds `start..start + limit` of `shape` (which sets the bug) until one fails (with
/// `safety_only`, until one breaks a safety rule). Returns the failing seed, how many seeds it
/// took and what broke.
pub fn hunt(
    shape: &Shape,
    start: u64,
    limit: u64,
    safety_only: bool,
) -> Option<(u64, u64, String)> {
    (start..start + limit).find_map(|seed| {
        let failure = run(&draw(seed, shape)).result.err()?;
        if safety_only && failure.broken.invariant.is_liveness() {
            return None;
        }
        let what = format!("{}: {}", failure.broken.invariant, failure.broken.detail);
        Some((seed, seed - start + 1, what))
    })
}
