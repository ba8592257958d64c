//! Creates across regions: three clusters 40 ms apart (one way), nodes of a cluster close
//! together, the production timeouts. With every node up a create is the fast round: one WAN
//! round trip to a representative of every other cluster (core/PROTOCOL.md, "Writing a key",
//! step 1). With a node of every cluster down or slow, the proposer stops waiting for it
//! (suspicion) and a classic ballot needs a majority of every cluster, also one WAN round trip
//! (its phase 1 stays inside the own cluster). Virtual time: these latencies are exact, not
//! measured on a machine.

use std::time::Duration;

use replicator_core::{Command, Config, Key, PutOutcome, Reply, Value};
use transport_sim::{
    DiskSpec, FaultSpec, MinorityKind, MinoritySpec, NetSpec, NodeIx, Obs, TraceMode, World,
    WorldSpec,
};

const WAN_ONE_WAY_US: u64 = 40_000;
const ROUND_TRIP: Duration = Duration::from_micros(2 * WAN_ONE_WAY_US);
const CREATES: usize = 60;
const WARM_UP: Duration = Duration::from_secs(60);

/// Latencies of `CREATES` creates of fresh keys, one after the other, through the nodes not
/// in the faulty minority, on a 3x3 network 40 ms apart.
fn create_latencies(minority: Option<MinorityKind>) -> Vec<Duration> {
    let mut world = World::new(
        WorldSpec {
            clusters: vec![3; 3],
            config: Config::default(),
            net: NetSpec {
                lan_us: (200, 500),
                wan_us: (WAN_ONE_WAY_US, WAN_ONE_WAY_US),
                wan_jitter: 0.0,
                ..NetSpec::default()
            },
            disk: DiskSpec {
                fsync_us: (100, 500),
                ..DiskSpec::default()
            },
            faults: FaultSpec {
                minority: minority.map(|kind| MinoritySpec {
                    kind,
                    toggle_us: None,
                }),
                ..FaultSpec::default()
            },
            hello_interval_us: 50_000,
            trace: TraceMode::Off,
        },
        17,
    );
    let healthy: Vec<NodeIx> = (0..world.node_count())
        .filter(|ix| !world.minority().contains(ix))
        .collect();
    // Discovery, then a minute of creates for the proposers to learn who is silent.
    run_for(&mut world, Duration::from_secs(3));
    let warm_until = world.now() + WARM_UP;
    for i in 0.. {
        if world.now() >= warm_until {
            break;
        }
        create(&mut world, healthy[i % healthy.len()], &format!("warm{i}"));
    }
    (0..CREATES)
        .map(|i| create(&mut world, healthy[i % healthy.len()], &format!("k{i}")))
        .collect()
}

/// Submits one create and steps the world until its answer; returns how long it took.
fn create(world: &mut World, node: NodeIx, key: &str) -> Duration {
    let started = world.now();
    let call = world.submit(
        node,
        Command::Put {
            key: Key::new(key),
            value: Value::new("v"),
            request: None,
        },
    );
    let give_up = started + Duration::from_secs(30);
    while world.now() < give_up && world.step() {
        let now = world.now();
        for obs in world.drain_observations() {
            if let Obs::Reply { call: c, reply, .. } = obs
                && c == call
            {
                assert_eq!(reply, Reply::Put(PutOutcome::Stored), "create {key}");
                return now.since(started);
            }
        }
    }
    panic!("create {key} at node {node:?} got no answer in 30 s");
}

fn run_for(world: &mut World, d: Duration) {
    let until = world.now() + d;
    while world.next_event_at().is_some_and(|t| t <= until) {
        world.step();
        world.drain_observations().for_each(drop);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median, the worst and how many took longer than `slow`.
fn summary(took: &[Duration], slow: Duration) -> (Duration, Duration, usize) {
    let worst = took.iter().copied().max().unwrap_or_default();
    let over = took.iter().filter(|d| **d > slow).count();
    (median(took.to_vec()), worst, over)
}

#[test]
fn with_every_node_up_a_create_takes_one_round_trip() {
    let took = create_latencies(None);
    let (p50, worst, _) = summary(&took, ROUND_TRIP);
    eprintln!("all up: p50 {p50:?}, max {worst:?} (round trip {ROUND_TRIP:?})");
    // One WAN round trip plus LAN hops and an fsync; a second round trip would be 160 ms.
    assert!(p50 <= ROUND_TRIP * 5 / 4, "p50 {p50:?}");
    assert!(worst < ROUND_TRIP * 3 / 2, "max {worst:?}");
}

/// A node of every cluster down or slow: the proposers skip the fast round while they suspect
/// it, and a classic ballot (a Prepare inside the own cluster, then the Accept) is one WAN
/// round trip too. What is left: when a suspicion runs out the fast round tries the node again
/// (about three round trips if it is still silent), less and less often as the suspicion
/// doubles. Without representatives chosen among nodes not doubted, a slow representative
/// carried its cluster's answers and vouched for itself: 24 of these 60 creates took 3.5
/// round trips.
fn a_minority_costs_no_round_trip(kind: MinorityKind, what: &str) {
    let took = create_latencies(Some(kind));
    let (p50, worst, over) = summary(&took, ROUND_TRIP * 3 / 2);
    eprintln!("{what}: p50 {p50:?}, max {worst:?}, {over} of {CREATES} over 1.5 round trips");
    assert!(p50 <= ROUND_TRIP * 5 / 4, "p50 {p50:?}");
    assert!(
        over * 10 <= CREATES,
        "{over} creates over 1.5 round trips: {took:?}"
    );
    assert!(worst < ROUND_TRIP * 4, "max {worst:?}");
}

#[test]
fn with_a_node_of_every_cluster_down_a_create_still_takes_one_round_trip() {
    a_minority_costs_no_round_trip(MinorityKind::Down, "one down per cluster");
}

#[test]
fn a_node_of_every_cluster_50_ms_slower_costs_no_round_trip() {
    a_minority_costs_no_round_trip(
        MinorityKind::Slow { extra_us: 50_000 },
        "one 50 ms slower per cluster",
    );
}

/// A node of every cluster 30 ms slower (one way): a remote one answers the fast round 60 ms
/// after the majority, within the grace (as long again as the majority took), so the fast
/// round used to wait for it every time and vouch for it (p50 1.75 round trips). An answer that
/// late is suspected even though the value was chosen: the next creates run classic ballots
/// without it.
#[test]
fn a_node_of_every_cluster_answering_within_the_grace_costs_no_round_trip() {
    a_minority_costs_no_round_trip(
        MinorityKind::Slow { extra_us: 30_000 },
        "one 30 ms slower per cluster",
    );
}
