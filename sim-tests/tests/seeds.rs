//! The fixed seed batch, one-seed replay and the determinism check.

use sim_tests::{Shape, check_seed, draw, run, seeds_from_env};
use transport_sim::TraceMode;

/// Runs this part's share of the seeds (two parts, so the batch uses two cores).
fn sweep(default_start: u64, default_count: u64, part: u64) {
    let seeds = seeds_from_env(default_start, default_count);
    let shape = Shape::default();
    let mut failures = Vec::new();
    for seed in seeds.clone().filter(|s| s % 2 == part) {
        if let Err(report) = check_seed(seed, &shape) {
            eprintln!("{report}");
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed: {failures:?}",
        failures.len()
    );
}

/// The fixed batch, even seeds (`SIM_START`/`SIM_SEEDS` move and resize it).
#[test]
fn seed_batch_even() {
    sweep(0, 500, 0);
}

/// The fixed batch, odd seeds.
#[test]
fn seed_batch_odd() {
    sweep(0, 500, 1);
}

/// `SIM_SEED=N cargo test -p sim-tests replay -- --nocapture` replays one seed.
#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let spec = draw(seed, &Shape::default());
    eprintln!("{}", spec.describe());
    match check_seed(seed, &Shape::default()) {
        Ok(stats) => {
            eprintln!("seed {seed} passed: {stats:?}");
            // Keep the trace of a passing seed too, for reading.
            let traced = run(&sim_tests::run::with_trace(&spec, TraceMode::Keep));
            let path = sim_tests::trace_dir().join(format!("seed-{seed}.trace"));
            let written = std::fs::create_dir_all(sim_tests::trace_dir())
                .and_then(|()| std::fs::write(&path, traced.trace.join("\n") + "\n"));
            match written {
                Ok(()) => eprintln!("full trace: {}", path.display()),
                Err(e) => eprintln!("could not write {}: {e}", path.display()),
            }
            let page = sim_tests::trace_html::page_path(&path);
            match sim_tests::trace_html::write_page(&page, seed, &traced) {
                Ok(()) => eprintln!("the run as a picture: {}", page.display()),
                Err(e) => eprintln!("could not write {}: {e}", page.display()),
            }
        }
        Err(report) => panic!("{report}"),
    }
}

/// The same seed gives the same trace, byte for byte.
#[test]
fn same_seed_same_trace() {
    for seed in [1u64, 7, 42] {
        let mut spec = draw(seed, &Shape::default());
        spec.world.trace = TraceMode::Hash;
        let a = run(&spec);
        let b = run(&spec);
        assert!(a.stats.world.events > 100, "seed {seed} did too little");
        assert_eq!(
            a.stats.trace_hash, b.stats.trace_hash,
            "seed {seed}: two runs gave different traces"
        );
        assert_eq!(a.stats.world.events, b.stats.world.events);
    }
}
