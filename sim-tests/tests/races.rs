//! The race rule (core/PROTOCOL.md, "Writing a key", step 5): two clients creating one key at
//! the same instant on nodes of different clusters almost always end with one Stored and one
//! Exists. Without the rule (blind jittered backoff) a third of such keys ended with both told
//! Busy on a 3x3 network.

use replicator_core::Config;
use sim_tests::races::{RaceSpec, run_races};

fn races(clusters: usize, racers: usize) -> sim_tests::races::RaceTally {
    let spec = RaceSpec {
        clusters,
        nodes: 3,
        racers,
        races: 150,
    };
    let tally = run_races(11, spec, Config::default());
    eprintln!("{clusters}x3, {racers} racers: {tally}");
    tally
}

#[test]
fn two_clusters_racing_on_a_key_leave_a_winner() {
    let tally = races(3, 2);
    assert_eq!(tally.broken, 0, "{tally}");
    assert!(tally.undecided * 10 <= tally.races, "{tally}");
    assert!(tally.no_winner_share() <= 0.05, "{tally}");
    // And the loser hears Exists (with the winner's value), not Busy.
    assert!(tally.winner_and_busy * 20 <= tally.races, "{tally}");
}

#[test]
fn three_racers_leave_a_winner() {
    let tally = races(3, 3);
    assert_eq!(tally.broken, 0, "{tally}");
    assert!(tally.no_winner_share() <= 0.05, "{tally}");
}

#[test]
fn two_racers_in_one_cluster_leave_a_winner() {
    let tally = races(1, 2);
    assert_eq!(tally.broken, 0, "{tally}");
    assert!(tally.no_winner_share() <= 0.05, "{tally}");
}
