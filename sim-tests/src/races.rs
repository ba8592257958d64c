//! Same-instant races (issue 11, item 4): nodes in different clusters propose one fresh key at
//! the same instant, on a healthy network with the production timeouts. How often does nobody
//! win (every racer told Busy)? The race rule of core/PROTOCOL.md ("Writing a key", step 5)
//! should make that rare; `sim races` prints the tally and a test holds it under 5 %.

use std::fmt;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::{CallId, Command, Config, Key, PutOutcome, Reply, Time, Value};
use transport_sim::{DiskSpec, FaultSpec, NetSpec, NodeIx, Obs, TraceMode, World, WorldSpec};

/// How the races of one run ended.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RaceTally {
    pub races: usize,
    /// One racer Stored, every other told Exists with its value.
    pub one_winner: usize,
    /// One racer Stored, some other told Busy (no harm, but that client must look again).
    pub winner_and_busy: usize,
    /// Every racer told Busy: the key stayed free although someone wanted it.
    pub no_winner: usize,
    /// Some racer got another answer (Unavailable, NotReady...): no verdict.
    pub undecided: usize,
    /// More than one racer told Stored, or an Exists with a value nobody stored: a safety bug.
    pub broken: usize,
}

impl RaceTally {
    /// The share of decided races that ended with no winner.
    pub fn no_winner_share(&self) -> f64 {
        let decided = self.one_winner + self.winner_and_busy + self.no_winner;
        if decided == 0 {
            0.0
        } else {
            self.no_winner as f64 / decided as f64
        }
    }
}

impl fmt::Display for RaceTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} races: {} one winner (the rest Exists), {} one winner (some Busy), {} no winner ({:.1} %), {} undecided, {} broken",
            self.races,
            self.one_winner,
            self.winner_and_busy,
            self.no_winner,
            100.0 * self.no_winner_share(),
            self.undecided,
            self.broken
        )
    }
}

/// The shape of a race run.
#[derive(Clone, Copy, Debug)]
pub struct RaceSpec {
    pub clusters: usize,
    pub nodes: usize,
    /// Racers per key, each on a node of another cluster where there are enough clusters.
    pub racers: usize,
    pub races: usize,
}

/// Runs `spec.races` races, one after the other, on a fresh healthy world drawn from `seed`.
pub fn run_races(seed: u64, spec: RaceSpec, config: Config) -> RaceTally {
    let mut world = World::new(
        WorldSpec {
            clusters: vec![spec.nodes; spec.clusters],
            config,
            net: NetSpec::default(),
            disk: DiskSpec::default(),
            faults: FaultSpec::default(),
            hello_interval_us: 50_000,
            trace: TraceMode::Off,
        },
        seed,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ace);
    // Time for every node to discover every other.
    run_until(&mut world, Time::from_millis(2_000));
    let mut tally = RaceTally::default();
    for race in 0..spec.races {
        let key = Key::new(format!("race{race}"));
        let racers = pick_racers(&world, spec, &mut rng);
        let mut calls: Vec<(CallId, Value)> = Vec::new();
        for (i, node) in racers.iter().enumerate() {
            let value = Value::new(format!("v{race}-{i}"));
            let cmd = Command::Put {
                key: key.clone(),
                value: value.clone(),
                request: None,
            };
            calls.push((world.submit(*node, cmd), value));
        }
        let replies = collect_replies(&mut world, &calls);
        tally.races += 1;
        judge(&mut tally, &calls, &replies);
    }
    tally
}

/// `spec.racers` distinct nodes, spread over the clusters first.
fn pick_racers(world: &World, spec: RaceSpec, rng: &mut ChaCha8Rng) -> Vec<NodeIx> {
    let mut clusters: Vec<usize> = Vec::new();
    let mut picked = Vec::new();
    for _ in 0..spec.racers {
        if clusters.is_empty() {
            clusters = (0..spec.clusters).collect();
        }
        let c = clusters.swap_remove(rng.random_range(0..clusters.len()));
        let candidates: Vec<NodeIx> = (0..world.node_count())
            .filter(|ix| world.cluster_of(*ix) == c && !picked.contains(ix))
            .collect();
        // Empty only with more racers than nodes in the cluster: then fewer racers.
        if !candidates.is_empty() {
            picked.push(candidates[rng.random_range(0..candidates.len())]);
        }
    }
    picked
}

/// Steps the world until every call is answered (bounded by the PUT timeout and then some).
fn collect_replies(world: &mut World, calls: &[(CallId, Value)]) -> Vec<Option<PutOutcome>> {
    let mut replies: Vec<Option<PutOutcome>> = vec![None; calls.len()];
    let give_up = world.now() + std::time::Duration::from_secs(30);
    while replies.iter().any(Option::is_none) && world.now() < give_up && world.step() {
        for obs in world.drain_observations() {
            if let Obs::Reply {
                call,
                reply: Reply::Put(outcome),
                ..
            } = obs
                && let Some(i) = calls.iter().position(|(c, _)| *c == call)
            {
                replies[i] = Some(outcome);
            }
        }
    }
    // Let the commits and aborts land before the next race.
    let settle = world.now() + std::time::Duration::from_millis(500);
    run_until(world, settle);
    replies
}

fn judge(tally: &mut RaceTally, calls: &[(CallId, Value)], replies: &[Option<PutOutcome>]) {
    let stored: Vec<&Value> = calls
        .iter()
        .zip(replies)
        .filter(|(_, r)| matches!(r, Some(PutOutcome::Stored)))
        .map(|((_, v), _)| v)
        .collect();
    let exists_other_than = |winner: &Value| {
        replies
            .iter()
            .any(|r| matches!(r, Some(PutOutcome::Exists { value }) if value != winner))
    };
    let all = |want: fn(&PutOutcome) -> bool| replies.iter().all(|r| r.as_ref().is_some_and(want));
    match stored.as_slice() {
        [_, _, ..] => tally.broken += 1,
        [one] if exists_other_than(one) => tally.broken += 1,
        [_] if all(|r| matches!(r, PutOutcome::Stored | PutOutcome::Exists { .. })) => {
            tally.one_winner += 1
        }
        [_] if all(|r| {
            matches!(
                r,
                PutOutcome::Stored | PutOutcome::Exists { .. } | PutOutcome::Busy
            )
        }) =>
        {
            tally.winner_and_busy += 1
        }
        [] if all(|r| matches!(r, PutOutcome::Busy)) => tally.no_winner += 1,
        _ => tally.undecided += 1,
    }
}

fn run_until(world: &mut World, until: Time) {
    while world.next_event_at().is_some_and(|t| t <= until) {
        world.step();
        world.drain_observations().for_each(drop);
    }
}
