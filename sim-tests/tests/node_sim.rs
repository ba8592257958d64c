//! The real node under madsim (see `sim-tests/src/node_sim.rs`). Only with `--cfg madsim`:
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim cargo test -p sim-tests --test node_sim
//! MADSIM_TEST_SEED=17 RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim \
//!   cargo test -p sim-tests --test node_sim replay -- --nocapture
//! NODE_SIM_START=1000 NODE_SIM_SEEDS=200 RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim \
//!   cargo test -p sim-tests --test node_sim seed_batch -- --nocapture
//! ```
#![cfg(madsim)]

use std::time::Instant;

use replicator_node::driver::{DriverBug, REQUEST_QUEUE_LEN};
use sim_tests::node_sim::{
    NodeSimSpec, bug_from_name, bug_name, burst_delivery_ms, check_seed, replay_command,
    report_with, run_seed,
};

/// Seeds of the fixed batch `cargo test` runs.
const FIXED_BATCH: u64 = 64;
/// Each reintroduced driver bug must be caught within this many seeds (from seed 0).
const BUG_SEEDS_MAX: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `MADSIM_TEST_SEED=N` (one seed), `NODE_SIM_START=N NODE_SIM_SEEDS=M` (a range), else the
/// fixed batch.
fn seeds() -> std::ops::Range<u64> {
    if let Some(seed) = env_u64("MADSIM_TEST_SEED") {
        return seed..seed + 1;
    }
    let start = env_u64("NODE_SIM_START").unwrap_or(0);
    start..start + env_u64("NODE_SIM_SEEDS").unwrap_or(FIXED_BATCH)
}

#[test]
fn seed_batch() {
    let range = seeds();
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut ops, mut kills, mut sim_ms, mut lost, mut refused) = (0, 0, 0, 0, 0);
    // The slowest seed to settle after healing: (ms, seed).
    let mut slowest_settle = (0, 0);
    for seed in range.clone() {
        let spec = NodeSimSpec::draw(seed, None);
        match check_seed(&spec) {
            Ok(stats) => {
                ops += stats.ops;
                kills += stats.kills;
                sim_ms += stats.sim_ms;
                lost += stats.writes_lost;
                refused += stats.writes_refused;
                slowest_settle = slowest_settle.max((stats.settle_ms, seed));
            }
            Err(report) => {
                eprintln!("{report}");
                failures.push(seed);
            }
        }
    }
    let wall = started.elapsed();
    println!(
        "node_sim: seeds {}..{}: {} failed; {ops} client ops, {kills} kills, {lost} unsynced disk writes lost, {refused} refused by failing disks, slowest to settle after healing: {:.1} s (seed {}), {:.1} s simulated in {:.1} s",
        range.start,
        range.end,
        failures.len(),
        slowest_settle.0 as f64 / 1000.0,
        slowest_settle.1,
        sim_ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
    for seed in &failures {
        println!(
            "node_sim: failed seed {seed}: {}",
            replay_command(*seed, None)
        );
    }
    assert!(failures.is_empty(), "node_sim: failing seeds {failures:?}");
}

/// One seed, with the driver logs on (`MADSIM_TEST_SEED`, default 0; `NODE_SIM_BUG` to run it
/// with a reintroduced driver bug).
#[test]
fn replay() {
    let seed = env_u64("MADSIM_TEST_SEED").unwrap_or(0);
    let bug = std::env::var("NODE_SIM_BUG").ok().map(|b| {
        bug_from_name(&b).unwrap_or_else(|| {
            panic!("NODE_SIM_BUG={b}: expected forget-membership or release-before-durable")
        })
    });
    if std::env::var_os("MADSIM_TEST_SEED").is_some() {
        // The drivers' logs, each line in its madsim node's span (RUST_LOG, default info).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let spec = NodeSimSpec::draw(seed, bug);
    println!("node_sim replay: seed {seed}: {spec:?}");
    match run_seed(&spec) {
        Ok(stats) => println!("node_sim replay: seed {seed} passed: {stats:?}"),
        Err(failure) => panic!("{}", report_with(&spec, &failure, usize::MAX)),
    }
}

/// The simulated network is no bottleneck of its own: four driver queues' worth of frames to
/// one peer arrive within a few simulated milliseconds (1-2 ms of latency), as with the real
/// transport, which writes everything queued for a peer at once. Sent one at a time, they took
/// a simulated millisecond each (4 s), and a burst of PUTs left the network unsettled.
#[test]
fn simulated_network_carries_a_burst() {
    let frames = 4 * REQUEST_QUEUE_LEN;
    let took_ms = burst_delivery_ms(frames);
    assert!(
        took_ms <= 20,
        "{frames} frames took {took_ms} simulated ms from one node to another"
    );
}

/// Seed 6 with a burst: 1,224 PUTs to one node and 1,224 to another in the first 20 ms, then
/// cluster power losses and partitions. It never settled while the simulated network sent one
/// frame per simulated millisecond (sim-tests/README.md, "Bursts").
#[test]
fn burst_seed_settles() {
    let mut spec = NodeSimSpec::draw(6, None);
    spec.bursts = true;
    if let Err(report) = check_seed(&spec) {
        panic!("{report}");
    }
}

/// The same seed gives the same run: the hash of its history, fault log and final disks.
#[test]
fn same_seed_same_run() {
    let spec = NodeSimSpec::draw(3, None);
    let first = run_seed(&spec).map(|s| s.hash).unwrap_or_else(|f| f.hash);
    let second = run_seed(&spec).map(|s| s.hash).unwrap_or_else(|f| f.hash);
    assert_ne!(first, 0);
    assert_eq!(first, second, "seed 3 ran differently twice");
}

/// Seeds from 0 until one fails with `bug`; how many it took.
fn seeds_to_catch(bug: DriverBug) -> Option<u64> {
    let started = Instant::now();
    for seed in 0..BUG_SEEDS_MAX {
        let spec = NodeSimSpec::draw(seed, Some(bug));
        if let Err(failure) = run_seed(&spec) {
            println!(
                "node_sim: {} caught at seed {seed} ({} seeds, {:.1} s): {}",
                bug_name(bug),
                seed + 1,
                started.elapsed().as_secs_f64(),
                failure.reason
            );
            println!("node_sim: replay: {}", replay_command(seed, Some(bug)));
            return Some(seed + 1);
        }
    }
    None
}

/// How often each driver bug is caught over a range of seeds (`NODE_SIM_SEEDS`, default 100):
/// `cargo test ... --test node_sim bug_catch_rates -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn bug_catch_rates() {
    let count = env_u64("NODE_SIM_SEEDS").unwrap_or(100);
    for bug in [DriverBug::ForgetMembership, DriverBug::ReleaseBeforeDurable] {
        let started = Instant::now();
        let caught: Vec<u64> = (0..count)
            .filter(|&seed| run_seed(&NodeSimSpec::draw(seed, Some(bug))).is_err())
            .collect();
        println!(
            "node_sim: {} caught by {} of {count} seeds (first {:?}) in {:.1} s",
            bug_name(bug),
            caught.len(),
            caught.first(),
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn bug_forget_membership_is_caught() {
    let needed = seeds_to_catch(DriverBug::ForgetMembership);
    assert!(
        needed.is_some(),
        "a restarted node that forgets its membership was not caught in {BUG_SEEDS_MAX} seeds"
    );
}

#[test]
fn bug_release_before_durable_is_caught() {
    let needed = seeds_to_catch(DriverBug::ReleaseBeforeDurable);
    assert!(
        needed.is_some(),
        "a driver that releases messages before their write is durable was not caught in {BUG_SEEDS_MAX} seeds"
    );
}

/// A minority of every cluster killed while writes are in flight costs nothing: every call at
/// the other nodes gets a definite answer (stored, exists, a value, unknown) during the whole
/// time it is down, over the real driver, storage and router. Then the minority restarts and
/// everything settles. Over a few seeds without other faults (they would cost availability
/// on their own).
#[test]
fn a_minority_of_every_cluster_down_costs_nothing() {
    for seed in 0..4 {
        let spec = NodeSimSpec {
            faults: Vec::new(),
            loss: 0.0,
            bursts: false,
            minority_down: true,
            minority_strict: true,
            safety_ms: 6_000,
            ..NodeSimSpec::draw(seed, None)
        };
        match check_seed(&spec) {
            Ok(stats) => {
                assert!(stats.stored > 0, "seed {seed}: nothing stored: {stats:?}");
                eprintln!("minority down, seed {seed}: {stats:?}");
            }
            Err(report) => panic!("seed {seed}: {report}"),
        }
    }
}
