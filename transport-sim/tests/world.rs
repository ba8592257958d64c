//! Scenario tests of the simulated world itself, named after the fault they inject.

use std::time::Duration;

use replicator_core::{
    Command, Config, DurableKey, GetOutcome, Key, NotReady, PutOutcome, RemoveOutcome, Reply, Time,
    Value,
};
use transport_sim::{DiskSpec, FaultSpec, NetSpec, NodeIx, Obs, TraceMode, World, WorldSpec};

fn spec(clusters: Vec<usize>, trace: TraceMode) -> WorldSpec {
    WorldSpec {
        clusters,
        config: Config {
            vote_timeout: Duration::from_millis(400),
            representative_timeout: Duration::from_millis(250),
            relay_timeout: Duration::from_millis(100),
            lease: Duration::from_millis(800),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(400),
            put_timeout: Duration::from_secs(2),
            read_wait: Duration::from_millis(60),
            read_timeout: Duration::from_millis(1500),
            ..Config::default()
        },
        net: NetSpec::default(),
        disk: DiskSpec::default(),
        faults: FaultSpec::default(),
        hello_interval_us: 100_000,
        trace,
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: Key::new(key),
        value: Value::new(value),
        request: None,
    }
}

/// Runs until `until`, returning every reply with the time it came.
fn run_until(world: &mut World, until: Time) -> Vec<(Time, NodeIx, Reply)> {
    let mut replies = Vec::new();
    for _ in 0..10_000_000u64 {
        if world.next_event_at().is_none_or(|t| t > until) {
            break;
        }
        world.step();
        let now = world.now();
        for obs in world.drain_observations() {
            match obs {
                Obs::Reply { node, reply, .. } => replies.push((now, node, reply)),
                Obs::Note {
                    note: replicator_core::Note::Violation { reason },
                    ..
                } => panic!("violation: {reason}"),
                _ => {}
            }
        }
    }
    replies
}

#[test]
fn calm_network_commits_and_every_node_stores() {
    let mut world = World::new(spec(vec![3, 3], TraceMode::Off), 1);
    world.submit(0, put("a", "1"));
    let replies = run_until(&mut world, Time::from_millis(3_000));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].2, Reply::Put(PutOutcome::Stored));
    for ix in 0..world.node_count() {
        let state = world
            .node(ix)
            .and_then(|n| n.key_state(&Key::new("a")).ok().flatten());
        assert!(state.is_some_and(|s| s.is_stored()), "node {ix}");
    }
    assert!(world.stats().bytes_sent > 0);
}

#[test]
fn same_seed_same_trace() {
    let hash = |seed| {
        let mut world = World::new(spec(vec![3, 4], TraceMode::Hash), seed);
        world.submit(0, put("a", "1"));
        world.submit(4, put("a", "2"));
        run_until(&mut world, Time::from_millis(3_000));
        world.trace_hash()
    };
    assert_eq!(hash(7), hash(7));
    assert_ne!(hash(7), hash(8));
}

#[test]
fn isolated_node_answers_unavailable_and_heals() {
    let mut world = World::new(spec(vec![3], TraceMode::Keep), 2);
    let side = (0..3).map(|ix| ix == 0).collect();
    world.partition(side, false, Time::from_millis(2_500));
    world.submit(0, put("a", "1"));
    let replies = run_until(&mut world, Time::from_millis(2_400));
    assert!(
        matches!(
            replies[..],
            [(_, 0, Reply::Put(PutOutcome::Unavailable(_)))]
        ),
        "{replies:?}"
    );
    assert!(world.trace_lines().iter().any(|l| l.contains("drop from")));
    // Healed: Unavailable meant "may still commit". The isolated node accepted its own value,
    // its recovery finds it and proposes it, and the key ends decided one way everywhere.
    run_until(&mut world, Time::from_millis(10_000));
    for ix in 0..3 {
        let state = world
            .node(ix)
            .and_then(|n| n.key_state(&Key::new("a")).ok().flatten());
        assert!(
            matches!(&state, Some(DurableKey::Stored { chosen, .. }) if chosen.value == Value::new("1")),
            "node {ix}: {state:?}"
        );
    }
}

#[test]
fn crash_keeps_durable_writes() {
    let mut world = World::new(spec(vec![3], TraceMode::Off), 3);
    world.submit(1, put("a", "1"));
    let replies = run_until(&mut world, Time::from_millis(1_000));
    assert_eq!(replies[0].2, Reply::Put(PutOutcome::Stored));
    run_until(&mut world, Time::from_millis(1_100));
    world.crash(1);
    assert!(world.node(1).is_none());
    assert!(world.disk(1).keys.contains_key(&Key::new("a")));
    world.restart(1);
    world.submit(1, Command::Get { key: Key::new("a") });
    let replies = run_until(&mut world, Time::from_millis(1_200));
    assert_eq!(
        replies[0].2,
        Reply::Get(GetOutcome::Value(Value::new("1"))),
        "{replies:?}"
    );
}

#[test]
fn paused_node_answers_after_it_resumes() {
    let mut world = World::new(spec(vec![3], TraceMode::Off), 4);
    world.pause(2, Time::from_millis(700));
    world.submit(2, Command::Get { key: Key::new("x") });
    let replies = run_until(&mut world, Time::from_millis(1_000));
    assert_eq!(replies.len(), 1);
    assert!(replies[0].0 >= Time::from_millis(700));
    assert_eq!(replies[0].2, Reply::Get(GetOutcome::Unknown));
}

#[test]
fn joined_node_copies_keys_and_becomes_ready() {
    let mut world = World::new(spec(vec![3, 3], TraceMode::Off), 5);
    world.submit(0, put("a", "1"));
    run_until(&mut world, Time::from_millis(1_000));
    let joined = world.join(1).expect("a live node to join through");
    run_until(&mut world, Time::from_millis(5_000));
    let node = world.node(joined).expect("up");
    assert!(node.is_ready());
    assert!(
        node.key_state(&Key::new("a"))
            .is_ok_and(|s| s.is_some_and(|s| s.is_stored()))
    );
}

#[test]
fn clogged_link_delivers_after_release() {
    let mut world = World::new(spec(vec![3], TraceMode::Keep), 6);
    for to in 1..3 {
        world.clog(0, to, Time::from_millis(500));
    }
    world.submit(0, put("a", "1"));
    let replies = run_until(&mut world, Time::from_millis(2_000));
    assert_eq!(replies[0].2, Reply::Put(PutOutcome::Stored));
    assert!(replies[0].0 >= Time::from_millis(500));
}

/// Runs until `until`, returning the answers to operators' removals.
fn removals_until(world: &mut World, until: Time) -> Vec<(RemoveOutcome, bool)> {
    let mut out = Vec::new();
    while world.next_event_at().is_some_and(|t| t <= until) {
        world.step();
        for obs in world.drain_observations() {
            if let Obs::Removal { outcome, clean, .. } = obs {
                out.push((outcome, clean));
            }
        }
    }
    out
}

fn members(world: &World, ix: NodeIx) -> Vec<String> {
    world
        .node(ix)
        .expect("up")
        .membership()
        .nodes()
        .map(|n| n.as_str().to_string())
        .collect()
}

#[test]
fn cut_off_joiner_discovers_only_its_side_until_the_partition_heals() {
    let mut world = World::new(spec(vec![3, 3], TraceMode::Keep), 7);
    // Cluster 0 on one side; cluster 1 and the joiner (index 6) on the other.
    let side = (0..6).map(|ix| ix < 3).collect();
    world.partition(side, false, Time::from_millis(1_500));
    let joined = world.join(1).expect("a live node to join through");
    run_until(&mut world, Time::from_millis(1_000));
    let seen = members(&world, joined);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|n| n.starts_with("n01")), "{seen:?}");
    run_until(&mut world, Time::from_millis(3_000));
    assert_eq!(members(&world, joined).len(), 7);
    assert!(
        world
            .trace_lines()
            .iter()
            .any(|l| l.contains("discovered in c00"))
    );
}

#[test]
fn node_restarted_while_cut_off_keeps_its_recorded_membership() {
    let mut world = World::new(spec(vec![3, 3], TraceMode::Off), 8);
    world.crash(0);
    let side = (0..6).map(|ix| ix == 0).collect();
    world.partition(side, false, Time::from_millis(2_000));
    world.restart(0);
    run_until(&mut world, Time::from_millis(500));
    assert_eq!(members(&world, 0).len(), 6);
}

#[test]
fn goodbye_misses_a_node_that_is_cut_off() {
    let mut world = World::new(spec(vec![4], TraceMode::Keep), 9);
    world.leave(3);
    // The leave completes once every member cleared it; node 0 is cut off right then, as the
    // goodbye leaves.
    let mut complete = false;
    while !complete && world.next_event_at().is_some() {
        world.step();
        complete = world.drain_observations().any(|o| {
            matches!(
                o,
                Obs::Note {
                    node: 3,
                    note: replicator_core::Note::LeaveComplete
                }
            )
        });
    }
    assert!(complete);
    let side = (0..4).map(|ix| ix == 0).collect();
    let until = world.now() + Duration::from_millis(1_000);
    world.partition(side, false, until);
    let later = world.now() + Duration::from_millis(500);
    run_until(&mut world, later);
    assert!(world.is_departed(3));
    assert_eq!(members(&world, 1).len(), 3);
    // Node 0 was cut off when node 3 said goodbye: it still counts it (the view exchange of a
    // later write heals it).
    assert_eq!(members(&world, 0).len(), 4);
    assert!(
        world
            .trace_lines()
            .iter()
            .any(|l| l.contains("goodbye from n00.3 lost: partition"))
    );
}

#[test]
fn removal_of_a_live_reachable_node_is_refused() {
    let mut world = World::new(spec(vec![3, 3], TraceMode::Off), 10);
    world.remove_node(0, 4, false);
    let out = removals_until(&mut world, Time::from_millis(3_000));
    assert_eq!(out, vec![(RemoveOutcome::Alive, true)]);
}

#[test]
fn node_removed_while_cut_off_learns_it_when_back_and_serves_nothing() {
    let mut world = World::new(spec(vec![3, 3], TraceMode::Off), 11);
    let side = (0..6).map(|ix| ix == 4).collect();
    world.partition(side, false, Time::from_millis(3_000));
    world.remove_node(0, 4, false);
    let out = removals_until(&mut world, Time::from_millis(2_500));
    assert_eq!(out, vec![(RemoveOutcome::Removed, false)]);
    assert!(world.is_removed(4));
    assert!(
        !world.node(4).expect("up").is_removed(),
        "it could not hear of it"
    );
    run_until(&mut world, Time::from_millis(4_000));
    // A read asks a majority of its cluster; the members answer a node they removed with
    // `Removed`, and the read is answered at once.
    world.submit(
        4,
        Command::Get {
            key: Key::new("fresh"),
        },
    );
    let replies = run_until(&mut world, Time::from_millis(6_000));
    assert_eq!(
        replies,
        vec![(
            replies[0].0,
            4,
            Reply::Get(GetOutcome::NotReady(NotReady::Removed))
        )]
    );
    assert!(world.node(4).expect("up").is_removed());
}

/// Every structured record points at its own text line, and every message copy's delivery or
/// drop names the copy; a trace that is only hashed keeps no records.
#[test]
fn structured_trace_records_match_their_lines() {
    use transport_sim::{TraceWhat, WorldChange};
    let mut world = World::new(spec(vec![3, 3], TraceMode::Keep), 3);
    world.submit(0, put("a", "1"));
    world.crash(4);
    let side = (0..6).map(|ix| ix == 1).collect();
    world.partition(side, false, Time::from_millis(300));
    run_until(&mut world, Time::from_millis(2_000));
    let events = world.take_trace_events();
    let lines = world.take_trace();
    let mut sent = std::collections::BTreeSet::new();
    let (mut ended, mut dropped, mut crashes) = (0, 0, 0);
    for e in &events {
        let line = &lines[e.line];
        assert!(line.starts_with(&e.at.to_string()), "{e:?} at {line}");
        let says = match &e.what {
            TraceWhat::Sent { msg, dup, .. } => {
                assert!(sent.insert(*msg), "copy {msg} numbered twice");
                if *dup { " send (dup) to " } else { " send to " }
            }
            TraceWhat::Lost { .. } => " lost to ",
            TraceWhat::Received { msg } => {
                assert!(sent.contains(msg), "copy {msg} received, never sent");
                ended += 1;
                " recv from "
            }
            TraceWhat::Dropped { msg, .. } => {
                assert!(sent.contains(msg), "copy {msg} dropped, never sent");
                ended += 1;
                dropped += 1;
                " drop from "
            }
            TraceWhat::Call { .. } => " client call ",
            TraceWhat::Reply { .. } => " reply ",
            TraceWhat::World { change, .. } => {
                if *change == WorldChange::Crash {
                    crashes += 1;
                }
                " FAULT "
            }
        };
        assert!(line.contains(says), "{e:?} points at {line}");
    }
    let send_lines = lines.iter().filter(|l| l.contains(" send ")).count();
    assert_eq!(sent.len(), send_lines);
    assert!(ended > 0 && dropped > 0 && crashes == 1);
    assert!(events.iter().any(|e| matches!(
        &e.what,
        TraceWhat::Call { key: Some(k), .. } if k.as_str() == "a"
    )));

    let mut hashed = World::new(spec(vec![3, 3], TraceMode::Hash), 3);
    hashed.submit(0, put("a", "1"));
    run_until(&mut hashed, Time::from_millis(500));
    assert!(hashed.take_trace_events().is_empty());
}
