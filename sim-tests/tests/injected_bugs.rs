//! Evidence that the simulator bites: each deliberately broken variant of the core is caught
//! within a bounded number of seeds (the sweep stops at the first failing seed). The membership
//! bugs must show as a broken safety rule (a split brain, a stale read), not just a run that
//! did not converge.

use sim_tests::{BUGS, bug_shape_targeted, hunt, needs_safety_failure};

/// A generous bound: with the targeted fault mix every bug was caught within 23 seeds
/// (`ForgetMembershipOnRestart` at seed 2 as two values for one key, `ReadWithoutLease` at seed
/// 22 as a stale read; see `sim bugs --targeted`, and `sim bugs` for the plain swarm's
/// numbers); a bound that is hit means the checkers or the fault mix lost their teeth.
const SEEDS_MAX: u64 = 100;

#[test]
fn every_injected_bug_is_caught() {
    let mut missed = Vec::new();
    for bug in BUGS {
        let shape = bug_shape_targeted(bug);
        match hunt(&shape, 0, SEEDS_MAX, needs_safety_failure(bug)) {
            Some((seed, seeds, what)) => {
                eprintln!("{bug:?}: caught by seed {seed} after {seeds} seeds: {what}")
            }
            None => missed.push(bug),
        }
    }
    assert!(missed.is_empty(), "not caught: {missed:?}");
}
