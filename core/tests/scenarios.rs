//! Scripted scenarios on the in-memory harness, one per fault or rule: every message the test
//! does not drop is delivered, every write is durable at once (unless a disk is slow).

mod harness;

use std::time::Duration;

use harness::*;
use replicator_core::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn stored() -> PutOutcome {
    PutOutcome::Stored
}

fn exists(value: &str) -> PutOutcome {
    PutOutcome::Exists { value: v(value) }
}

#[test]
fn a_put_with_every_node_up_is_chosen_in_the_fast_round() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, call), Some(stored()));
    assert!(h.stored_everywhere("k", "v"));
    let decided = h.decisions("k");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].2, Ballot::FAST, "one round, no phase 1");
    assert_eq!(
        h.count_sent(|_, _, m| is_request(m, |r| matches!(r, Request::Prepare { .. }))),
        0
    );
    assert!(h.violations().is_empty());
}

#[test]
fn one_node_of_every_cluster_down_costs_nothing_but_the_fast_round() {
    let mut h = Harness::new(3, 3);
    for id in ["a3", "b3", "c3"] {
        h.crash(id);
    }
    let call = h.put("a1", "k", "v");
    h.run_for(ms(2000));
    assert_eq!(put_reply(&h, call), Some(stored()));
    let decided = h.decisions("k");
    assert_eq!(decided.len(), 1);
    assert!(!decided[0].2.is_fast(), "chosen by a classic ballot");
    assert!(h.stored_everywhere("k", "v"), "every live node learned it");
    // The next write skips the fast round: the silent nodes are suspected.
    let second = h.put("a1", "k2", "w");
    let before = h.now;
    h.run_for(ms(100));
    assert_eq!(put_reply(&h, second), Some(stored()));
    assert_eq!(h.now.since(before), ms(100));
    let fast = h
        .decisions("k2")
        .iter()
        .filter(|(_, _, b)| b.is_fast())
        .count();
    assert_eq!(fast, 0);
}

#[test]
fn a_minority_of_every_cluster_down_still_reads_values_and_unknown_keys() {
    let mut h = Harness::new(3, 3);
    let call = h.put("b2", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, call), Some(stored()));
    for id in ["a3", "b3", "c3"] {
        h.crash(id);
    }
    let got = h.get("c1", "k");
    let unknown = h.get("c1", "nothing-here");
    h.run_for(ms(500));
    assert_eq!(get_reply(&h, got), Some(GetOutcome::Value(v("v"))));
    assert_eq!(get_reply(&h, unknown), Some(GetOutcome::Unknown));
}

#[test]
fn unknown_needs_a_majority_of_the_cluster_not_the_node_alone() {
    let mut h = Harness::new(1, 3);
    // a1 and a2 accept a value that a3 never hears of: a3 alone knows nothing.
    let call = h.put("a1", "k", "v");
    h.deliver_all_dropping(|m| touches(m, "a3"));
    assert_eq!(put_reply(&h, call), None, "the fast round needs everyone");
    h.crash("a1");
    let read = h.get("a3", "k");
    h.run_for_dropping(ms(100), |m| m.to == n("a1"));
    // a2 shows an accepted value: a3 must find out whether it was chosen, not say unknown.
    assert_ne!(get_reply(&h, read), Some(GetOutcome::Unknown));
    h.run_for_dropping(ms(1500), |m| m.to == n("a1"));
    assert_eq!(get_reply(&h, read), Some(GetOutcome::Value(v("v"))));
}

#[test]
fn two_clients_racing_on_one_key_end_with_one_stored_and_one_exists() {
    let mut h = Harness::new(3, 3);
    let first = h.put("a1", "k", "x");
    let second = h.put("b1", "k", "y");
    h.run_for(ms(3000));
    let answers = [put_reply(&h, first), put_reply(&h, second)];
    let winner = match (&answers[0], &answers[1]) {
        (Some(PutOutcome::Stored), Some(PutOutcome::Exists { value })) => {
            assert_eq!(*value, v("x"));
            "x"
        }
        (Some(PutOutcome::Exists { value }), Some(PutOutcome::Stored)) => {
            assert_eq!(*value, v("y"));
            "y"
        }
        other => panic!("not one Stored and one Exists: {other:?}"),
    };
    assert!(h.stored_everywhere("k", winner));
    assert!(h.violations().is_empty());
}

#[test]
fn a_retry_with_the_same_request_id_at_another_node_is_told_stored() {
    let mut h = Harness::new(3, 3);
    // The first attempt's answers never come back: its client gives up and retries elsewhere.
    let first = h.put_with("a1", "k", "v", Some("req-1"));
    h.run_for_dropping(ms(50), |m| m.to == n("a1") && m.from != n("a1"));
    assert_eq!(put_reply(&h, first), None);
    let retry = h.put_with("b1", "k", "v", Some("req-1"));
    h.run_for(ms(3000));
    assert_eq!(put_reply(&h, retry), Some(stored()));
    assert!(h.stored_everywhere("k", "v"));
}

#[test]
fn a_retry_with_a_known_request_id_learns_the_outcome_without_a_second_value() {
    let mut h = Harness::new(1, 3);
    let first = h.put_with("a1", "k", "v", Some("req-1"));
    // Accepts reach a2 and a3; the coordinator hears nothing back and crashes.
    h.deliver_all_dropping(|m| m.to == n("a1") && m.from != n("a1"));
    h.crash("a1");
    h.restart("a1");
    assert_eq!(put_reply(&h, first), None);
    let retry = h.put_with("a1", "k", "v", Some("req-1"));
    h.run_for(ms(2000));
    assert_eq!(put_reply(&h, retry), Some(stored()));
    let chosen = h.stored_at("a2", "k").expect("decided");
    assert_eq!(chosen.request, Some(RequestId::from("req-1")));
}

#[test]
fn a_value_accepted_and_never_decided_is_recovered_by_its_holders() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v");
    // Every Accept arrives, the coordinator dies before any answer reaches it.
    h.deliver_all_dropping(|m| m.to == n("a1") && m.from != n("a1"));
    h.crash("a1");
    assert_eq!(put_reply(&h, call), None);
    assert!(h.undecided_left() > 0);
    h.run_for(ms(3000));
    assert_eq!(h.undecided_left(), 0);
    for id in h.ids() {
        if id != n("a1") {
            assert_eq!(h.stored_at(id.as_str(), "k").map(|c| c.value), Some(v("v")));
        }
    }
}

#[test]
fn a_busy_put_never_sees_its_value_chosen() {
    // Suspicions outlast both PUTs: the second one starts while a2 and a3 are suspected (the
    // default `suspect_for`, 2 s, ends before the first PUT's 2 s deadline has passed).
    let config = Config {
        suspect_for: ms(10_000),
        ..config()
    };
    let mut h = Harness::with_config(1, 3, config);
    // a1's PUT can never reach a majority: a2 and a3 are cut off.
    for id in ["a2", "a3"] {
        h.crash(id);
    }
    let call = h.put("a1", "k", "v");
    h.run_for(ms(2500));
    // The fast round is skipped? No: a1 did not suspect them yet, so its Accept(0) left.
    assert!(matches!(
        put_reply(&h, call),
        Some(PutOutcome::Unavailable(_))
    ));
    // A PUT whose every ballot failed in phase 1 never sent its value: Busy. (The fast round
    // is skipped: a2 and a3 are suspected since they missed the first one.)
    let busy = h.put("a1", "k2", "w");
    h.run_for(ms(2500));
    assert_eq!(put_reply(&h, busy), Some(PutOutcome::Busy));
    for id in ["a2", "a3"] {
        h.restart(id);
    }
    h.run_for(ms(3000));
    let read = h.get("a2", "k2");
    h.run_for(ms(1000));
    assert_eq!(get_reply(&h, read), Some(GetOutcome::Unknown));
}

#[test]
fn a_node_that_was_down_catches_up_from_its_cluster() {
    let mut h = Harness::new(2, 3);
    h.crash("b3");
    let calls: Vec<CallId> = (0..5).map(|i| h.put("a1", &format!("k{i}"), "v")).collect();
    h.run_for(ms(2000));
    for call in calls {
        assert_eq!(put_reply(&h, call), Some(stored()));
    }
    h.restart("b3");
    h.run_for(ms(1500));
    for i in 0..5 {
        assert!(
            h.stored_at("b3", &format!("k{i}")).is_some(),
            "k{i} caught up"
        );
    }
    assert_eq!(h.node("b3").stats().behind, 0);
}

#[test]
fn a_joiner_copies_a_majority_of_its_cluster_before_it_answers() {
    let mut h = Harness::new(1, 3);
    let call = h.put("a1", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, call), Some(stored()));
    // An accepted value only a2 and a3 hold (a1 dies).
    let open = h.put("a1", "open", "w");
    h.deliver_all_dropping(|m| m.to == n("a1") && m.from != n("a1"));
    h.crash("a1");
    assert!(h.accepted_at("a2", "open").is_some());
    h.join("a", "a4");
    // a4 copies from two of a1, a2, a3; a1 does not answer, so it moves on after
    // `sync_timeout`.
    h.run_for(ms(2500));
    assert!(h.node("a4").is_ready());
    assert_eq!(h.stored_at("a4", "k").map(|c| c.value), Some(v("v")));
    let _ = open;
    h.run_for(ms(3000));
    assert_eq!(h.stored_at("a4", "open").map(|c| c.value), Some(v("w")));
}

#[test]
fn a_removal_of_a_dead_node_needs_an_odd_cluster() {
    let mut h = Harness::new(2, 3);
    h.join("b", "b4");
    h.run_for(ms(500));
    h.crash("a3");
    h.crash("b4");
    let call = h.input_remove("a1", "a3");
    h.run_for(ms(2500));
    assert_eq!(
        h.reply(call),
        Some(&Reply::Remove(RemoveOutcome::Removed)),
        "cluster a has 3 members"
    );
    let even = h.input_remove("a1", "b4");
    h.run_for(ms(2500));
    assert_eq!(
        h.reply(even),
        Some(&Reply::Remove(RemoveOutcome::EvenCluster { members: 4 }))
    );
}

#[test]
fn two_values_are_never_both_stored_when_a_stale_proposer_wakes_up() {
    // A coordinator whose fast round was interrupted comes back after another value was
    // chosen: whatever it does, only one value is ever stored.
    let mut h = Harness::new(2, 3);
    let stale = h.put("a1", "k", "x");
    let held = h.run_for_holding(ms(10), |m| m.from == n("a1") || m.to == n("a1"));
    let winner = h.put("b1", "k", "y");
    h.run_for_dropping(ms(800), |m| touches(m, "a1"));
    assert_eq!(put_reply(&h, winner), Some(stored()));
    for m in held {
        h.deliver(m);
    }
    h.run_for(ms(3000));
    assert_eq!(put_reply(&h, stale), Some(exists("y")));
    assert!(h.stored_everywhere("k", "y"));
    assert!(h.violations().is_empty());
}
