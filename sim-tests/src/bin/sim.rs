//! Large simulation sweeps, the simulator benchmark, the scale run and the bug hunt.
//!
//! ```text
//! cargo run --release -p sim-tests --bin sim -- sweep [--start N] [--seeds M] [--clusters C]
//!     [--nodes K] [--clients L] [--faults crash,pause,isolate-node,isolate-cluster,split,
//!     one-way,clog,restart-cluster,restart-split,remove|none] [--lose-unsynced] [--bug NAME]
//!     [--joins J] [--leaves L] [--lulls|--no-lulls]
//!     [--minority down|paused|cut-off|slow [--coming-and-going]]
//! cargo run --release -p sim-tests --bin sim -- trace N [--html FILE] [shape flags]
//!     # one seed's trace (`target/sim-traces/seed-N.trace`) and its picture (an HTML page next
//!     # to it, or FILE); `trace --start N` works too
//! cargo run --release -p sim-tests --bin sim -- bench        # fixed 5 clusters x 3 nodes
//! cargo run --release -p sim-tests --bin sim -- scale        # 50 clusters x 5 nodes
//! cargo run --release -p sim-tests --bin sim -- bugs [--seeds M] [--targeted] [--bug NAME]
//!     # seeds needed per injected bug (plain swarm, or each bug's targeted fault mix)
//! cargo run --release -p sim-tests --bin sim -- races [--start SEED] [--seeds RACES]
//!     # same-instant races on one key, production timeouts: how many end with one winner
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use replicator_core::InjectedBug;
use sim_tests::{BUGS, RunStats, Shape, check_seed, percentile};
use transport_sim::{FaultKind, MinorityKind, TraceMode};

fn usage() -> ExitCode {
    eprintln!(
        "usage: sim [sweep|bench|scale|bugs|trace [SEED] [--html FILE]|races] [--start N] [--seeds M] \
         [--clusters C] [--nodes K] [--clients L] [--ops O] [--faults LIST|none] [--lose-unsynced] [--bug NAME] [--targeted] \
         [--minority down|paused|cut-off|slow [--coming-and-going]]"
    );
    ExitCode::from(2)
}

fn bug(name: &str) -> Option<InjectedBug> {
    BUGS.iter()
        .copied()
        .find(|b| format!("{b:?}").eq_ignore_ascii_case(name))
}

/// Totals over a sweep.
#[derive(Default)]
struct Totals {
    seeds: u64,
    failed: Vec<u64>,
    events: u64,
    sim_us: u64,
    faults: u64,
    messages: u64,
    bytes: u64,
    outcomes: BTreeMap<&'static str, u64>,
    latencies: Vec<u64>,
    rejected: BTreeMap<replicator_core::PeerFaultKind, u64>,
    removals: BTreeMap<&'static str, u64>,
    recoveries: u64,
    recover_exists: u64,
    verifies_checked: u64,
    verifies_strict: u64,
    hellos: u64,
    hellos_lost: u64,
    goodbyes: u64,
    goodbyes_lost: u64,
    cluster_restarts: u64,
    failed_reads: u64,
}

impl Totals {
    fn add(&mut self, s: &RunStats) {
        self.seeds += 1;
        self.events += s.world.events;
        self.sim_us += s.sim_us;
        self.faults += s.world.faults();
        self.messages += s.world.messages_sent;
        self.bytes += s.world.bytes_sent;
        for (k, v) in &s.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.latencies.extend(&s.commit_latencies_us);
        for (k, v) in &s.rejected {
            *self.rejected.entry(*k).or_default() += v;
        }
        for (k, v) in &s.removals {
            *self.removals.entry(k).or_default() += v;
        }
        self.recoveries += s.recoveries;
        self.recover_exists += s.recover_exists;
        self.verifies_checked += s.verifies_checked;
        self.verifies_strict += s.verifies_strict;
        self.hellos += s.world.hellos_sent;
        self.hellos_lost += s.world.hellos_lost;
        self.goodbyes += s.world.goodbyes_sent;
        self.goodbyes_lost += s.world.goodbyes_lost;
        self.cluster_restarts += s.world.cluster_restarts;
        self.failed_reads += s.world.failed_reads;
    }

    fn summary(&mut self, wall: f64) {
        self.latencies.sort_unstable();
        let l = &self.latencies;
        eprintln!("---- summary");
        eprintln!(
            "seeds {} ({} failed{}) in {wall:.2}s: {:.1} seeds/s, {:.0} seeds/min",
            self.seeds,
            self.failed.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(": {:?}", self.failed)
            },
            self.seeds as f64 / wall,
            self.seeds as f64 * 60.0 / wall
        );
        eprintln!(
            "events {} ({:.0}/s), messages {} ({} bytes), simulated {:.1}s = {:.1}x wall time",
            self.events,
            self.events as f64 / wall,
            self.messages,
            self.bytes,
            self.sim_us as f64 / 1e6,
            self.sim_us as f64 / 1e6 / wall
        );
        eprintln!(
            "faults injected {} (restarts during a partition {}), reads of decisions failed {}",
            self.faults, self.cluster_restarts, self.failed_reads
        );
        let removals: Vec<String> = self
            .removals
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        eprintln!("operator removals by outcome: {}", removals.join(", "));
        eprintln!(
            "hellos {} ({} lost), goodbyes {} ({} lost)",
            self.hellos, self.hellos_lost, self.goodbyes, self.goodbyes_lost
        );
        eprintln!(
            "request-id recoveries {} (told Exists with another proposal's value: {})",
            self.recoveries, self.recover_exists
        );
        eprintln!(
            "verify reports checked {} (strictly after healing: {})",
            self.verifies_checked, self.verifies_strict
        );
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        eprintln!("operations by outcome: {}", outcomes.join(", "));
        for (kind, n) in &self.rejected {
            eprintln!("peer input rejected {n}x: {kind}");
        }
        eprintln!(
            "commit latency (simulated, {} PUTs stored): p50 {:.1}ms p90 {:.1}ms p99 {:.1}ms max {:.1}ms",
            l.len(),
            percentile(l, 50) as f64 / 1e3,
            percentile(l, 90) as f64 / 1e3,
            percentile(l, 99) as f64 / 1e3,
            l.last().copied().unwrap_or(0) as f64 / 1e3
        );
    }
}

fn sweep(start: u64, seeds: u64, shape: &Shape, stop_at_first: bool) -> (Totals, f64) {
    let began = Instant::now();
    let mut totals = Totals::default();
    let mut last_progress = Instant::now();
    for seed in start..start + seeds {
        match check_seed(seed, shape) {
            Ok(stats) => totals.add(&stats),
            Err(report) => {
                totals.seeds += 1;
                eprintln!("{report}");
                totals.failed.push(seed);
                if stop_at_first {
                    break;
                }
            }
        }
        if last_progress.elapsed().as_secs_f64() >= 1.0 {
            last_progress = Instant::now();
            let wall = began.elapsed().as_secs_f64();
            eprintln!(
                "progress: seed {seed} ({}/{seeds}), {} failed, {:.1} seeds/s, {:.0} events/s",
                totals.seeds,
                totals.failed.len(),
                totals.seeds as f64 / wall,
                totals.events as f64 / wall
            );
        }
    }
    (totals, began.elapsed().as_secs_f64())
}

/// One seed, its full trace and its picture written to files whether it passes or not.
fn trace(seed: u64, shape: &Shape, html: Option<std::path::PathBuf>) -> ExitCode {
    let spec = sim_tests::run::with_trace(&sim_tests::draw(seed, shape), TraceMode::Keep);
    eprintln!("{}", spec.describe());
    let outcome = sim_tests::run(&spec);
    let path = sim_tests::trace_dir().join(format!("seed-{seed}.trace"));
    let page = html.unwrap_or_else(|| sim_tests::trace_html::page_path(&path));
    let written = std::fs::create_dir_all(sim_tests::trace_dir())
        .and_then(|()| std::fs::write(&path, outcome.trace.join("\n") + "\n"));
    let drawn = sim_tests::trace_html::write_page(&page, seed, &outcome);
    match &outcome.result {
        Ok(()) => eprintln!("seed {seed} passed"),
        Err(f) => eprintln!(
            "seed {seed} failed ({}: {})",
            f.broken.invariant, f.broken.detail
        ),
    }
    let mut ok = true;
    for (what, file, result) in [("trace", &path, written), ("page", &page, drawn)] {
        match result {
            Ok(()) => eprintln!("{what}: {}", file.display()),
            Err(e) => {
                ok = false;
                eprintln!("could not write the {what} {}: {e}", file.display());
            }
        }
    }
    if ok {
        // The page's path alone on stdout, for scripts (`open "$(just trace-html 3)"`).
        println!("{}", page.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut mode = "sweep".to_string();
    let mut start = 0u64;
    let mut seeds: Option<u64> = None;
    let mut shape = Shape::default();
    let mut targeted = false;
    let mut html: Option<std::path::PathBuf> = None;
    let mut i = 0;
    // Bounded by the argument count.
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let num = || value.parse::<u64>().ok();
        match args[i].as_str() {
            "sweep" | "bench" | "scale" | "bugs" | "trace" | "races" => {
                mode = args[i].clone();
                i += 1;
                continue;
            }
            "--lose-unsynced" => {
                shape.lose_unsynced = Some(true);
                i += 1;
                continue;
            }
            "--lulls" | "--no-lulls" => {
                shape.lulls = Some(args[i] == "--lulls");
                i += 1;
                continue;
            }
            "--targeted" => {
                targeted = true;
                i += 1;
                continue;
            }
            "--coming-and-going" => {
                if let Some((_, toggling)) = &mut shape.minority {
                    *toggling = true;
                }
                i += 1;
                continue;
            }
            "--minority" => {
                let Some(kind) = MinorityKind::from_flag(&value) else {
                    return usage();
                };
                shape.minority = Some((kind, false));
            }
            // `trace SEED`: the seed as a plain argument.
            seed if mode == "trace" && seed.parse::<u64>().is_ok() => {
                start = seed.parse().unwrap_or(0);
                i += 1;
                continue;
            }
            "--html" if !value.is_empty() => html = Some(value.clone().into()),
            "--start" => start = num().unwrap_or(0),
            "--seeds" => seeds = num(),
            "--clusters" => shape.clusters = num().map(|n| n as usize),
            "--nodes" => shape.nodes = num().map(|n| n as usize),
            "--clients" => shape.clients = num().map(|n| n as usize),
            "--ops" => shape.ops_per_client = num().map(|n| n as usize),
            "--joins" => shape.joins = num().map(|n| n as usize),
            "--leaves" => shape.leaves = num().map(|n| n as usize),
            "--faults" if value == "none" => shape.faults = Some(Vec::new()),
            "--faults" => {
                let kinds: Option<Vec<FaultKind>> =
                    value.split(',').map(FaultKind::from_flag).collect();
                let Some(kinds) = kinds else { return usage() };
                shape.faults = Some(kinds);
            }
            "--bug" => {
                let Some(b) = bug(&value) else { return usage() };
                shape.bug = Some(b);
            }
            _ => return usage(),
        }
        i += 2;
    }
    match mode.as_str() {
        "sweep" => {
            let (mut totals, wall) = sweep(start, seeds.unwrap_or(1000), &shape, false);
            totals.summary(wall);
            if totals.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        "trace" => trace(start, &shape, html),
        "races" => {
            // Same-instant races on a healthy network, production timeouts: one seed per shape.
            for (clusters, nodes, racers) in [(1, 3, 2), (3, 3, 2), (3, 3, 3)] {
                let spec = sim_tests::races::RaceSpec {
                    clusters: shape.clusters.unwrap_or(clusters),
                    nodes: shape.nodes.unwrap_or(nodes),
                    racers,
                    races: seeds.unwrap_or(1000) as usize,
                };
                let tally =
                    sim_tests::races::run_races(start, spec, replicator_core::Config::default());
                println!(
                    "{}x{}, {} racers, seed {start}: {tally}",
                    spec.clusters, spec.nodes, spec.racers
                );
            }
            ExitCode::SUCCESS
        }
        "bench" => {
            shape.clusters = Some(5);
            shape.nodes = Some(3);
            eprintln!("benchmark: 5 clusters x 3 nodes, swarm-drawn workload and faults");
            let (mut totals, wall) = sweep(start, seeds.unwrap_or(200), &shape, false);
            totals.summary(wall);
            ExitCode::SUCCESS
        }
        "scale" => {
            shape.clusters = Some(50);
            shape.nodes = Some(5);
            shape.clients = shape.clients.or(Some(100));
            shape.joins = shape.joins.or(Some(0));
            shape.leaves = shape.leaves.or(Some(0));
            shape.faults = shape.faults.or(Some(Vec::new()));
            eprintln!(
                "scale: 50 clusters x 5 nodes (250 nodes), {:?} clients",
                shape.clients
            );
            let (mut totals, wall) = sweep(start, seeds.unwrap_or(1), &shape, false);
            totals.summary(wall);
            ExitCode::SUCCESS
        }
        "bugs" => {
            let limit = seeds.unwrap_or(500);
            let mut missed = 0;
            let mut lines = Vec::new();
            let bugs: Vec<InjectedBug> = match shape.bug {
                Some(b) => vec![b],
                None => BUGS.to_vec(),
            };
            for b in bugs {
                let base = if targeted {
                    sim_tests::bug_shape_targeted(b)
                } else {
                    sim_tests::bug_shape(b)
                };
                let s = Shape {
                    clusters: shape.clusters,
                    nodes: shape.nodes,
                    clients: shape.clients,
                    faults: shape.faults.clone().or(base.faults.clone()),
                    lulls: shape.lulls.or(base.lulls),
                    ..base
                };
                let began = Instant::now();
                let safety = sim_tests::needs_safety_failure(b);
                let line = match sim_tests::hunt(&s, start, limit, safety) {
                    Some((seed, seeds, what)) => {
                        let what: String = what.chars().take(240).collect();
                        format!(
                            "{b:?}: caught by seed {seed}, after {seeds} seeds ({:.1}s){}: {what}\n    replay: {}\n    picture: {}",
                            began.elapsed().as_secs_f64(),
                            if safety { ", a safety failure" } else { "" },
                            sim_tests::replay_command(seed, &s),
                            sim_tests::picture_command(seed, &s)
                        )
                    }
                    None => {
                        missed += 1;
                        format!(
                            "{b:?}: NOT caught in {limit} seeds{}",
                            if safety { " (as a safety failure)" } else { "" }
                        )
                    }
                };
                eprintln!("{line}");
                lines.push(line);
            }
            eprintln!("---- injected bugs");
            for l in &lines {
                eprintln!("{l}");
            }
            if missed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}
