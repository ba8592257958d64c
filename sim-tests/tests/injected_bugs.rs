//! Evidence that the simulator bites: each deliberately broken variant of the core is caught
//! within a bounded number of seeds (the sweep stops at the first failing seed).

use replicator_core::InjectedBug;
use sim_tests::{BUGS, hunt};

/// Generous bounds: the sweep measured far fewer seeds (see `sim bugs`); a bound that is hit
/// means the checkers or the fault mix lost their teeth.
fn seeds_max(bug: InjectedBug) -> u64 {
    match bug {
        InjectedBug::StatusWithoutFence | InjectedBug::VoteBeforeDurable => 600,
        _ => 100,
    }
}

#[test]
fn every_injected_bug_is_caught() {
    let mut missed = Vec::new();
    for bug in BUGS {
        match hunt(bug, 0, seeds_max(bug)) {
            Some((seed, seeds, what)) => {
                eprintln!("{bug:?}: caught by seed {seed} after {seeds} seeds: {what}")
            }
            None => missed.push(bug),
        }
    }
    assert!(missed.is_empty(), "not caught: {missed:?}");
}
