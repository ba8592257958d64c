//! # transport-sim
//!
//! A seeded, single-threaded, discrete-event world that drives many [`replicator_core::Node`]s
//! directly through their sans-io API: a virtual clock, a network with per-link latency, loss,
//! duplication, reordering, clogged links and partitions, a simulated disk per node, crashes,
//! restarts, pauses and nodes that join mid-run. No async, no threads, no wall clock: one seed
//! replays a run exactly.
//!
//! The world executes the outputs of the nodes (sends, writes, replies) and reports what
//! happened as [`Obs`]ervations, which the checkers of `sim-tests` drain after every
//! [`World::step`]. Every message goes through [`replicator_core::wire::encode`] and is decoded at
//! delivery, so the codec is exercised on every hop.
//!
//! It also checks one rule of the protocol that only the world can see: a node's own vote
//! leaves it only once the state the vote reports reached its disk ([`Obs::Undurable`]).
//!
//! Events are ordered by `(time, seq)`, where `seq` is the order in which they were scheduled, so
//! ties break the same way in every run. Everything random comes from one seeded generator,
//! split per purpose (network, faults, disk, node seeds) so that, e.g., a change in the number of
//! messages does not shift the fault schedule.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::BuildHasherDefault;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::wire::{self, Message, Response, Vote};
use replicator_core::{
    CallId, ClusterId, Command, Config, Input, Membership, Node, NodeId, Note, Output, ProposalId,
    Recovered, Reply, Time, WriteId, WriteOp,
};

/// A node's index in the world (stable for the whole run, joined nodes get the next ones).
pub type NodeIx = usize;

/// Microseconds, the unit of every duration in the specs below.
pub type Micros = u64;

/// Latencies and message faults of the network.
#[derive(Clone, Debug)]
pub struct NetSpec {
    /// One-way latency inside a cluster, drawn per message.
    pub lan_us: (Micros, Micros),
    /// Base one-way latency between two clusters, drawn once per cluster pair.
    pub wan_us: (Micros, Micros),
    /// Jitter on a WAN link, as a fraction of its base latency.
    pub wan_jitter: f64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub dup: f64,
    /// Probability that a message is held back by an extra delay (reordering it).
    pub reorder: f64,
    pub reorder_us_max: Micros,
}

impl Default for NetSpec {
    fn default() -> Self {
        NetSpec {
            lan_us: (200, 2_000),
            wan_us: (10_000, 80_000),
            wan_jitter: 0.2,
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            reorder_us_max: 50_000,
        }
    }
}

/// The simulated disk: each write completes after an fsync latency, in order.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    pub fsync_us: (Micros, Micros),
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            fsync_us: (100, 3_000),
        }
    }
}

/// The kinds of fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Crash a node (volatile state lost) and restart it later.
    Crash,
    /// Pause a node: every event for it waits until it resumes.
    Pause,
    /// Cut one node from everyone.
    IsolateNode,
    /// Cut one cluster from the rest.
    IsolateCluster,
    /// Cut the nodes in two random halves.
    Split,
    /// A random set of nodes cannot send to the others (they still receive).
    OneWay,
    /// Hold every message on one link until it is released.
    Clog,
}

impl FaultKind {
    /// The name of the kind on a command line.
    pub fn flag(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::IsolateCluster => "isolate-cluster",
            FaultKind::Split => "split",
            FaultKind::OneWay => "one-way",
            FaultKind::Clog => "clog",
        }
    }

    pub fn from_flag(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.flag() == name)
    }

    pub const ALL: [FaultKind; 7] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::IsolateNode,
        FaultKind::IsolateCluster,
        FaultKind::Split,
        FaultKind::OneWay,
        FaultKind::Clog,
    ];
}

/// What the nemesis does, and how often. Each seed of a swarm test draws its own.
#[derive(Clone, Debug)]
pub struct FaultSpec {
    /// The fault kinds enabled, with relative weights.
    pub kinds: Vec<(FaultKind, u32)>,
    /// Time between two faults; `None`: no nemesis.
    pub interval_us: Option<(Micros, Micros)>,
    /// How long a fault lasts (a crashed node stays down, a partition holds, ...).
    pub duration_us: (Micros, Micros),
    /// A crash also loses the writes that were not yet reported durable (a random suffix).
    pub lose_unsynced: bool,
    /// At most this many nodes down at once.
    pub down_max: usize,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            kinds: Vec::new(),
            interval_us: None,
            duration_us: (50_000, 1_000_000),
            lose_unsynced: false,
            down_max: 1,
        }
    }
}

/// How much of the event trace to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    /// Nothing (fastest).
    Off,
    /// Hash every line (for determinism checks), keep nothing.
    Hash,
    /// Hash and keep every line (to write a failing run's trace to a file).
    Keep,
}

/// Everything a world is made of.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    /// Nodes per cluster.
    pub clusters: Vec<usize>,
    pub config: Config,
    pub net: NetSpec,
    pub disk: DiskSpec,
    pub faults: FaultSpec,
    /// A discovered node reaches each other node after a delay up to this.
    pub discovery_us_max: Micros,
    pub trace: TraceMode,
}

/// What happened, for the checkers. Drained with [`World::drain_observations`].
#[derive(Clone, Debug)]
pub enum Obs {
    /// The node issued a write: its in-memory state now includes these changes.
    Write {
        node: NodeIx,
        ops: Vec<WriteOp>,
    },
    /// These changes reached the node's disk.
    Durable {
        node: NodeIx,
        ops: Vec<WriteOp>,
    },
    Note {
        node: NodeIx,
        note: Note,
    },
    Reply {
        node: NodeIx,
        call: CallId,
        reply: Reply,
    },
    /// A client call was lost: its node was down or crashed before answering.
    CallLost {
        node: NodeIx,
        call: CallId,
    },
    Crashed {
        node: NodeIx,
        writes_lost: usize,
    },
    Restarted {
        node: NodeIx,
    },
    Joined {
        node: NodeIx,
    },
    /// A node sent a message that depends on state not yet on its disk.
    Undurable {
        node: NodeIx,
        key: replicator_core::Key,
        what: String,
    },
    /// The node said goodbye after a graceful leave: gone for good.
    Departed {
        node: NodeIx,
    },
    /// A wake-up the driver asked for with [`World::wake_at`].
    Wake {
        tag: u64,
    },
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorldStats {
    pub events: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    pub messages_blocked: u64,
    pub messages_duplicated: u64,
    pub bytes_sent: u64,
    pub writes: u64,
    pub writes_lost: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub clogs: u64,
    pub joins: u64,
    pub leaves: u64,
}

impl WorldStats {
    pub fn faults(&self) -> u64 {
        self.crashes + self.pauses + self.partitions + self.clogs
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: NodeIx,
        to: NodeIx,
        frame: Vec<u8>,
    },
    Client {
        to: NodeIx,
        call: CallId,
        /// Boxed: keeps every queued event small (the queue moves them on every pop).
        cmd: Box<Command>,
    },
    Timer {
        node: NodeIx,
        incarnation: u64,
        at: Time,
    },
    Disk {
        node: NodeIx,
        incarnation: u64,
        write: WriteId,
    },
    Discover {
        to: NodeIx,
        node: NodeIx,
    },
    /// `node` said goodbye; `to` hears it.
    Removed {
        to: NodeIx,
        node: NodeIx,
    },
    Goodbye {
        node: NodeIx,
    },
    Nemesis,
    Restart {
        node: NodeIx,
    },
    Heal {
        partition: u64,
    },
    Wake {
        tag: u64,
    },
}

impl Ev {
    /// The node an event happens at, if any: a paused node's events wait.
    fn target(&self) -> Option<NodeIx> {
        match self {
            Ev::Deliver { to, .. }
            | Ev::Client { to, .. }
            | Ev::Discover { to, .. }
            | Ev::Removed { to, .. } => Some(*to),
            Ev::Timer { node, .. } | Ev::Disk { node, .. } => Some(*node),
            Ev::Nemesis
            | Ev::Restart { .. }
            | Ev::Heal { .. }
            | Ev::Wake { .. }
            | Ev::Goodbye { .. } => None,
        }
    }
}

struct Scheduled {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A fast hasher for maps keyed by ids, which already carry a well-mixed hash (their `Hash`
/// writes it as one `u64`). Such maps are never iterated, so their order doesn't matter.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// A map keyed by ids, hashed with [`IdHasher`]: for lookups only, never iterated.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A set of ids, hashed with [`IdHasher`]: for lookups only, never iterated.
pub type IdSet<K> = std::collections::HashSet<K, BuildHasherDefault<IdHasher>>;

struct SimNode {
    id: NodeId,
    cluster: usize,
    node: Option<Node>,
    incarnation: u64,
    disk: Recovered,
    /// Writes issued and not yet durable, in order, with their completion time.
    inflight: VecDeque<(WriteId, Vec<WriteOp>)>,
    disk_busy_until: Time,
    timer_at: Option<Time>,
    paused_until: Time,
    /// Client calls delivered to this incarnation and not answered yet.
    calls: BTreeSet<CallId>,
    /// Asked to leave gracefully (asked again after a restart).
    leaving: bool,
    /// Said goodbye: gone for good.
    departed: bool,
    /// Every proposal that ever reached this node's disk (true once stored): a vote may be
    /// sent late (held behind a later write), but what it reports must have been durable.
    durable_ever: IdMap<ProposalId, bool>,
}

impl SimNode {
    fn apply_durable(&mut self, ops: &[WriteOp]) {
        self.disk.apply_all(ops);
        for op in ops {
            if let WriteOp::PutKey { state, .. } = op {
                let stored = self
                    .durable_ever
                    .entry(state.proposal().clone())
                    .or_insert(false);
                *stored |= state.is_stored();
            }
        }
    }
}

struct Partition {
    side: Vec<bool>,
    one_way: bool,
}

/// The simulated world. See the crate documentation.
pub struct World {
    spec: WorldSpec,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    index: BTreeMap<NodeId, NodeIx>,
    cluster_ids: Vec<ClusterId>,
    wan_us: Vec<Vec<Micros>>,
    partitions: BTreeMap<u64, Partition>,
    next_partition: u64,
    clogs: BTreeMap<(NodeIx, NodeIx), Time>,
    nemesis: bool,
    next_call: u64,
    rng_net: ChaCha8Rng,
    rng_faults: ChaCha8Rng,
    rng_disk: ChaCha8Rng,
    rng_seeds: ChaCha8Rng,
    obs: Vec<Obs>,
    stats: WorldStats,
    tr: Tracer,
}

/// The event trace: one line per event (time, node, message or fault), hashed and maybe kept.
struct Tracer {
    mode: TraceMode,
    hash: u64,
    lines: Vec<String>,
    line: String,
}

impl Tracer {
    fn node(&mut self, now: Time, nodes: &[SimNode], ix: NodeIx, args: fmt::Arguments<'_>) {
        if self.mode == TraceMode::Off {
            return;
        }
        self.write(now, nodes[ix].id.as_str(), args);
    }

    fn fault(&mut self, now: Time, nodes: &[SimNode], ix: NodeIx, args: fmt::Arguments<'_>) {
        if self.mode == TraceMode::Off {
            return;
        }
        let who = nodes.get(ix).map_or("world", |n| n.id.as_str());
        self.write(now, who, format_args!("FAULT {args}"));
    }

    fn write(&mut self, now: Time, who: &str, args: fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{now} {who} {args}");
        self.hash = fnv1a(self.hash, self.line.as_bytes());
        self.hash = fnv1a(self.hash, b"\n");
        if self.mode == TraceMode::Keep {
            self.lines.push(self.line.clone());
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A stable 64-bit FNV-1a hash, the same in every process and on every platform.
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn draw(rng: &mut ChaCha8Rng, (lo, hi): (Micros, Micros)) -> Micros {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

fn micros(d: Micros) -> Duration {
    Duration::from_micros(d)
}

impl World {
    /// Builds the founding nodes of every cluster, all knowing each other, at time zero.
    pub fn new(spec: WorldSpec, seed: u64) -> World {
        let mut master = ChaCha8Rng::seed_from_u64(seed);
        let mut split = || ChaCha8Rng::seed_from_u64(master.random::<u64>());
        let (rng_net, rng_faults, rng_disk, rng_seeds) = (split(), split(), split(), split());
        let cluster_ids: Vec<ClusterId> = (0..spec.clusters.len())
            .map(|c| ClusterId::new(format!("c{c:02}")))
            .collect();
        let mut world = World {
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            index: BTreeMap::new(),
            cluster_ids,
            wan_us: Vec::new(),
            partitions: BTreeMap::new(),
            next_partition: 0,
            clogs: BTreeMap::new(),
            nemesis: spec.faults.interval_us.is_some() && !spec.faults.kinds.is_empty(),
            next_call: 0,
            rng_net,
            rng_faults,
            rng_disk,
            rng_seeds,
            obs: Vec::new(),
            stats: WorldStats::default(),
            tr: Tracer {
                mode: spec.trace,
                hash: FNV_OFFSET,
                lines: Vec::new(),
                line: String::new(),
            },
            spec,
        };
        let n = world.spec.clusters.len();
        world.wan_us = vec![vec![0; n]; n];
        for a in 0..n {
            for b in (a + 1)..n {
                let base = draw(&mut world.rng_net, world.spec.net.wan_us);
                world.wan_us[a][b] = base;
                world.wan_us[b][a] = base;
            }
        }
        for (c, &size) in world.spec.clusters.clone().iter().enumerate() {
            for _ in 0..size {
                world.add_node(c, Recovered::founder());
            }
        }
        let membership = world.membership();
        for ix in 0..world.nodes.len() {
            world.boot(ix, membership.clone());
        }
        if world.nemesis {
            world.schedule_nemesis();
        }
        world
    }

    // ------------------------------------------------------------ getters

    pub fn now(&self) -> Time {
        self.now
    }
    pub fn spec(&self) -> &WorldSpec {
        &self.spec
    }
    pub fn stats(&self) -> WorldStats {
        self.stats
    }
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
    pub fn cluster_count(&self) -> usize {
        self.cluster_ids.len()
    }
    /// The running node, `None` while it is down.
    pub fn node(&self, ix: NodeIx) -> Option<&Node> {
        self.nodes[ix].node.as_ref()
    }
    pub fn is_up(&self, ix: NodeIx) -> bool {
        self.nodes[ix].node.is_some()
    }
    pub fn is_paused(&self, ix: NodeIx) -> bool {
        self.nodes[ix].paused_until > self.now
    }
    /// The node's disk image: every write reported durable.
    pub fn disk(&self, ix: NodeIx) -> &Recovered {
        &self.nodes[ix].disk
    }
    pub fn id(&self, ix: NodeIx) -> &NodeId {
        &self.nodes[ix].id
    }
    pub fn ix_of(&self, id: &NodeId) -> Option<NodeIx> {
        self.index.get(id).copied()
    }
    pub fn cluster_of(&self, ix: NodeIx) -> usize {
        self.nodes[ix].cluster
    }
    /// Calls delivered to a running node and not answered yet.
    pub fn calls_open(&self) -> usize {
        self.nodes.iter().map(|n| n.calls.len()).sum()
    }
    /// Whether any fault is in force (a node down or paused, a partition, a clog).
    pub fn faults_active(&self) -> bool {
        !self.partitions.is_empty()
            || self.clogs.values().any(|t| *t > self.now)
            || self
                .nodes
                .iter()
                .any(|n| (n.node.is_none() && !n.departed) || n.paused_until > self.now)
    }
    /// The hash of every trace line so far (`TraceMode::Off`: of nothing).
    pub fn trace_hash(&self) -> u64 {
        self.tr.hash
    }
    pub fn trace_lines(&self) -> &[String] {
        &self.tr.lines
    }
    pub fn take_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.tr.lines)
    }
    pub fn drain_observations(&mut self) -> std::vec::Drain<'_, Obs> {
        self.obs.drain(..)
    }
    /// The time of the next event, if any.
    pub fn next_event_at(&self) -> Option<Time> {
        self.queue.peek().map(|s| s.at)
    }

    // ------------------------------------------------------------ driver commands

    /// A client sends `cmd` to node `to` now. The answer comes back as [`Obs::Reply`] (or
    /// [`Obs::CallLost`] if the node is down or crashes first).
    pub fn submit(&mut self, to: NodeIx, cmd: Command) -> CallId {
        let call = CallId(self.next_call);
        self.next_call += 1;
        let now = self.now;
        self.push(
            now,
            Ev::Client {
                to,
                call,
                cmd: Box::new(cmd),
            },
        );
        call
    }

    /// Asks for an [`Obs::Wake`] with `tag` at `at`.
    pub fn wake_at(&mut self, at: Time, tag: u64) {
        let at = at.max(self.now);
        self.push(at, Ev::Wake { tag });
    }

    /// A new node joins cluster `cluster` now: it starts empty, knows everyone, and is
    /// discovered by each other node after its own delay.
    pub fn join(&mut self, cluster: usize) -> NodeIx {
        let ix = self.add_node(cluster, Recovered::joiner());
        let membership = self.membership();
        self.boot(ix, membership);
        // Like a restarted node, a new one learns at once who said goodbye: it may copy a
        // reservation that still names one of them.
        self.tell_departed(ix);
        self.stats.joins += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!("join cluster {}", self.cluster_ids[cluster]),
        );
        for other in 0..self.nodes.len() {
            if other != ix {
                let delay = self.rng_faults.random_range(0..=self.spec.discovery_us_max);
                let at = self.now + micros(delay);
                self.push(
                    at,
                    Ev::Discover {
                        to: other,
                        node: ix,
                    },
                );
            }
        }
        self.obs.push(Obs::Joined { node: ix });
        ix
    }

    /// Crashes a node now: volatile state is lost, durable writes kept; writes in flight are
    /// kept or (with `lose_unsynced`) a random suffix of them is lost.
    pub fn crash(&mut self, ix: NodeIx) {
        if self.nodes[ix].node.is_none() {
            return;
        }
        let lose = self.spec.faults.lose_unsynced;
        let n = &mut self.nodes[ix];
        n.node = None;
        n.incarnation += 1;
        n.timer_at = None;
        n.paused_until = Time::ZERO;
        let inflight: Vec<(WriteId, Vec<WriteOp>)> = n.inflight.drain(..).collect();
        let keep = if lose {
            self.rng_disk.random_range(0..=inflight.len())
        } else {
            inflight.len()
        };
        let writes_lost = inflight.len() - keep;
        for (_, ops) in inflight.iter().take(keep) {
            self.nodes[ix].apply_durable(ops);
            self.obs.push(Obs::Durable {
                node: ix,
                ops: ops.clone(),
            });
        }
        let calls: Vec<CallId> = std::mem::take(&mut self.nodes[ix].calls)
            .into_iter()
            .collect();
        for call in calls {
            self.obs.push(Obs::CallLost { node: ix, call });
        }
        self.stats.crashes += 1;
        self.stats.writes_lost += writes_lost as u64;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!("crash, {writes_lost} unsynced writes lost"),
        );
        self.obs.push(Obs::Crashed {
            node: ix,
            writes_lost,
        });
    }

    /// Restarts a crashed node from its disk image.
    pub fn restart(&mut self, ix: NodeIx) {
        if self.nodes[ix].node.is_some() || self.nodes[ix].departed {
            return;
        }
        let membership = self.membership();
        self.boot(ix, membership);
        self.stats.restarts += 1;
        self.tr
            .fault(self.now, &self.nodes, ix, format_args!("restart"));
        self.obs.push(Obs::Restarted { node: ix });
        // What a restarted node learns again at once: who said goodbye, and that it leaves.
        self.tell_departed(ix);
        if self.nodes[ix].leaving {
            self.handle(ix, Input::Leave);
        }
    }

    /// Feeds the node every goodbye said so far.
    fn tell_departed(&mut self, ix: NodeIx) {
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.departed)
            .map(|n| n.id.clone())
            .collect();
        for node in gone {
            self.handle(
                ix,
                Input::NodeRemoved {
                    node,
                    goodbye: true,
                },
            );
        }
    }

    /// Asks a node to leave gracefully. Once it reports [`Note::LeaveComplete`] it says
    /// goodbye: every other node hears [`Input::NodeRemoved`] after its own delay, and the
    /// node is gone for good.
    pub fn leave(&mut self, ix: NodeIx) {
        if self.nodes[ix].leaving || self.nodes[ix].departed {
            return;
        }
        self.nodes[ix].leaving = true;
        self.stats.leaves += 1;
        self.tr
            .fault(self.now, &self.nodes, ix, format_args!("leave requested"));
        self.handle(ix, Input::Leave);
    }

    pub fn is_departed(&self, ix: NodeIx) -> bool {
        self.nodes[ix].departed
    }

    pub fn is_leaving(&self, ix: NodeIx) -> bool {
        self.nodes[ix].leaving
    }

    fn goodbye(&mut self, ix: NodeIx) {
        if self.nodes[ix].departed || self.nodes[ix].node.is_none() {
            return;
        }
        let calls: Vec<CallId> = std::mem::take(&mut self.nodes[ix].calls)
            .into_iter()
            .collect();
        for call in calls {
            self.obs.push(Obs::CallLost { node: ix, call });
        }
        let n = &mut self.nodes[ix];
        n.departed = true;
        n.node = None;
        n.incarnation += 1;
        n.timer_at = None;
        n.inflight.clear();
        self.tr
            .fault(self.now, &self.nodes, ix, format_args!("goodbye"));
        self.obs.push(Obs::Departed { node: ix });
        for other in 0..self.nodes.len() {
            if other != ix && !self.nodes[other].departed {
                let delay = self.rng_faults.random_range(0..=self.spec.discovery_us_max);
                let at = self.now + micros(delay);
                self.push(
                    at,
                    Ev::Removed {
                        to: other,
                        node: ix,
                    },
                );
            }
        }
    }

    /// Every event of the node waits until `until`.
    pub fn pause(&mut self, ix: NodeIx, until: Time) {
        self.nodes[ix].paused_until = until;
        self.stats.pauses += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!("pause until {until}"),
        );
    }

    /// Cuts the nodes with `side[ix]` from the others (only their sends if `one_way`) until
    /// `until`. Returns the partition's id.
    pub fn partition(&mut self, side: Vec<bool>, one_way: bool, until: Time) -> u64 {
        let id = self.next_partition;
        self.next_partition += 1;
        let members: Vec<NodeIx> = (0..side.len()).filter(|i| side[*i]).collect();
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!("partition #{id} one_way={one_way} side={members:?} until {until}"),
        );
        self.partitions.insert(id, Partition { side, one_way });
        self.stats.partitions += 1;
        self.push(until, Ev::Heal { partition: id });
        id
    }

    /// Holds every message from `from` to `to` until `until`.
    pub fn clog(&mut self, from: NodeIx, to: NodeIx, until: Time) {
        self.clogs.insert((from, to), until);
        self.stats.clogs += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            from,
            format_args!("clog link to {} until {until}", to),
        );
    }

    /// Ends every fault: stops the nemesis, heals partitions, releases clogs, resumes paused
    /// nodes, restarts crashed ones and makes the network reliable.
    pub fn calm(&mut self) {
        self.nemesis = false;
        self.partitions.clear();
        self.clogs.clear();
        self.spec.net.loss = 0.0;
        self.spec.net.dup = 0.0;
        self.spec.net.reorder = 0.0;
        for ix in 0..self.nodes.len() {
            self.nodes[ix].paused_until = Time::ZERO;
            self.restart(ix);
        }
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!("calm: every fault healed"),
        );
    }

    /// Processes the next event. Returns false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(Scheduled { at, ev, .. }) = self.queue.pop() else {
            return false;
        };
        assert!(at >= self.now, "the clock never goes back");
        self.now = at;
        if let Some(ix) = ev.target()
            && self.nodes[ix].paused_until > at
        {
            let until = self.nodes[ix].paused_until;
            self.push(until, ev);
            return true;
        }
        self.stats.events += 1;
        match ev {
            Ev::Deliver { from, to, frame } => self.deliver(from, to, frame),
            Ev::Client { to, call, cmd } => {
                if self.nodes[to].node.is_none() {
                    self.tr.node(
                        self.now,
                        &self.nodes,
                        to,
                        format_args!("client call {} lost: node down", call.0),
                    );
                    self.obs.push(Obs::CallLost { node: to, call });
                    return true;
                }
                self.tr.node(
                    self.now,
                    &self.nodes,
                    to,
                    format_args!("client call {} {cmd:?}", call.0),
                );
                self.nodes[to].calls.insert(call);
                self.handle(to, Input::Client { call, cmd: *cmd });
            }
            Ev::Timer {
                node,
                incarnation,
                at,
            } => {
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation || n.timer_at != Some(at) {
                    return true;
                }
                n.timer_at = None;
                let due = n
                    .node
                    .as_ref()
                    .and_then(Node::poll_timeout)
                    .is_some_and(|t| t <= self.now);
                if due {
                    self.tr
                        .node(self.now, &self.nodes, node, format_args!("timeout"));
                    self.handle(node, Input::Timeout);
                } else {
                    self.arm(node);
                }
            }
            Ev::Disk {
                node,
                incarnation,
                write,
            } => self.disk_done(node, incarnation, write),
            Ev::Discover { to, node } => {
                if self.nodes[to].node.is_some() {
                    let cluster = self.cluster_ids[self.nodes[node].cluster].clone();
                    let id = self.nodes[node].id.clone();
                    self.tr.node(
                        self.now,
                        &self.nodes,
                        to,
                        format_args!("discovered {id} in {cluster}"),
                    );
                    self.handle(to, Input::NodeDiscovered { cluster, node: id });
                }
            }
            Ev::Removed { to, node } => {
                if self.nodes[to].node.is_some() {
                    let id = self.nodes[node].id.clone();
                    self.tr.node(
                        self.now,
                        &self.nodes,
                        to,
                        format_args!("removed {id} (goodbye)"),
                    );
                    self.handle(
                        to,
                        Input::NodeRemoved {
                            node: id,
                            goodbye: true,
                        },
                    );
                }
            }
            Ev::Goodbye { node } => self.goodbye(node),
            Ev::Nemesis => {
                if self.nemesis {
                    self.inject_fault();
                    self.schedule_nemesis();
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::Heal { partition } => {
                if self.partitions.remove(&partition).is_some() {
                    self.tr.fault(
                        self.now,
                        &self.nodes,
                        usize::MAX,
                        format_args!("heal partition #{partition}"),
                    );
                }
            }
            Ev::Wake { tag } => self.obs.push(Obs::Wake { tag }),
        }
        true
    }

    // ------------------------------------------------------------ internals

    fn push(&mut self, at: Time, ev: Ev) {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Scheduled { at, seq, ev });
    }

    /// Every node that has not said goodbye, in its cluster: what every node's view converges to.
    pub fn membership(&self) -> Membership {
        Membership::from_pairs(
            self.nodes
                .iter()
                .filter(|n| !n.departed)
                .map(|n| (self.cluster_ids[n.cluster].clone(), n.id.clone())),
        )
    }

    fn add_node(&mut self, cluster: usize, disk: Recovered) -> NodeIx {
        let ix = self.nodes.len();
        let k = self.nodes.iter().filter(|n| n.cluster == cluster).count();
        let id = NodeId::new(format!("n{cluster:02}.{k}"));
        self.index.insert(id.clone(), ix);
        self.nodes.push(SimNode {
            id,
            cluster,
            node: None,
            incarnation: 0,
            disk,
            inflight: VecDeque::new(),
            disk_busy_until: Time::ZERO,
            timer_at: None,
            paused_until: Time::ZERO,
            calls: BTreeSet::new(),
            leaving: false,
            departed: false,
            durable_ever: HashMap::default(),
        });
        ix
    }

    fn boot(&mut self, ix: NodeIx, membership: Membership) {
        let seed = self.rng_seeds.random::<u64>();
        let n = &mut self.nodes[ix];
        let node = Node::new(
            self.spec.config.clone(),
            n.id.clone(),
            self.cluster_ids[n.cluster].clone(),
            membership,
            n.disk.clone(),
            self.now,
            seed,
        );
        let node = match node {
            Ok(node) => node,
            Err(e) => panic!("the simulation's config is invalid: {e}"),
        };
        n.node = Some(node);
        n.disk_busy_until = self.now;
        self.arm(ix);
    }

    /// Feeds one input to a running node and executes everything it asks for.
    fn handle(&mut self, ix: NodeIx, input: Input) {
        let now = self.now;
        let mut outputs = Vec::new();
        {
            let Some(node) = self.nodes[ix].node.as_mut() else {
                return;
            };
            node.handle(now, input);
            // Bounded by what one input produces; the core's queue is finite.
            while let Some(out) = node.poll_output() {
                outputs.push(out);
            }
        }
        for out in outputs {
            match out {
                Output::Send { to, msg } => self.send(ix, &to, &msg),
                Output::Persist { write, ops } => self.persist(ix, write, ops),
                Output::Reply { call, reply } => {
                    self.nodes[ix].calls.remove(&call);
                    self.tr.node(
                        self.now,
                        &self.nodes,
                        ix,
                        format_args!("reply {} {reply:?}", call.0),
                    );
                    self.obs.push(Obs::Reply {
                        node: ix,
                        call,
                        reply,
                    });
                }
                Output::Note(note) => {
                    if note == Note::LeaveComplete {
                        let now = self.now;
                        self.push(now, Ev::Goodbye { node: ix });
                    }
                    if self.spec.trace != TraceMode::Off {
                        self.tr
                            .node(self.now, &self.nodes, ix, format_args!("note {note:?}"));
                    }
                    self.obs.push(Obs::Note { node: ix, note });
                }
            }
        }
        self.arm(ix);
    }

    /// Makes sure a timer event is scheduled for the node's next deadline.
    fn arm(&mut self, ix: NodeIx) {
        let n = &mut self.nodes[ix];
        let Some(next) = n.node.as_ref().and_then(Node::poll_timeout) else {
            return;
        };
        if n.timer_at.is_some_and(|t| t <= next) {
            return;
        }
        let at = next.max(self.now);
        n.timer_at = Some(at);
        let incarnation = n.incarnation;
        self.push(
            at,
            Ev::Timer {
                node: ix,
                incarnation,
                at,
            },
        );
    }

    fn persist(&mut self, ix: NodeIx, write: WriteId, ops: Vec<WriteOp>) {
        self.stats.writes += 1;
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                ix,
                format_args!("persist w{} {ops:?}", write.0),
            );
        }
        self.obs.push(Obs::Write {
            node: ix,
            ops: ops.clone(),
        });
        let latency = draw(&mut self.rng_disk, self.spec.disk.fsync_us);
        let n = &mut self.nodes[ix];
        let done = (self.now + micros(latency)).max(n.disk_busy_until);
        n.disk_busy_until = done;
        n.inflight.push_back((write, ops));
        let incarnation = n.incarnation;
        self.push(
            done,
            Ev::Disk {
                node: ix,
                incarnation,
                write,
            },
        );
    }

    fn disk_done(&mut self, ix: NodeIx, incarnation: u64, write: WriteId) {
        if self.nodes[ix].incarnation != incarnation || self.nodes[ix].node.is_none() {
            return;
        }
        let mut upto = None;
        while self.nodes[ix]
            .inflight
            .front()
            .is_some_and(|(w, _)| *w <= write)
        {
            let (w, ops) = self.nodes[ix].inflight.pop_front().expect("front exists");
            self.nodes[ix].apply_durable(&ops);
            self.obs.push(Obs::Durable { node: ix, ops });
            upto = Some(w);
        }
        if let Some(upto) = upto {
            self.tr.node(
                self.now,
                &self.nodes,
                ix,
                format_args!("durable upto w{}", upto.0),
            );
            self.handle(ix, Input::Persisted { upto });
        }
    }

    fn send(&mut self, from: NodeIx, to: &NodeId, msg: &Message) {
        self.check_durable_vote(from, msg);
        let mut frame = wire::encode(msg);
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += frame.len() as u64;
        let Some(to) = self.ix_of(to) else {
            self.tr.node(
                self.now,
                &self.nodes,
                from,
                format_args!("send to unknown node {to}"),
            );
            return;
        };
        let net = &self.spec.net;
        if net.loss > 0.0 && self.rng_net.random_bool(net.loss) {
            self.stats.messages_lost += 1;
            if self.spec.trace != TraceMode::Off {
                self.tr.node(
                    self.now,
                    &self.nodes,
                    from,
                    format_args!("lost to {} {msg:?}", self.nodes[to].id),
                );
            }
            return;
        }
        let copies = if net.dup > 0.0 && self.rng_net.random_bool(net.dup) {
            self.stats.messages_duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let delay = self.latency(from, to);
            let mut at = self.now + micros(delay);
            if let Some(&until) = self.clogs.get(&(from, to))
                && until > self.now
            {
                at = at.max(until + micros(delay));
            }
            if self.spec.trace != TraceMode::Off {
                self.tr.node(
                    self.now,
                    &self.nodes,
                    from,
                    format_args!(
                        "send{} to {} at {at} {msg:?}",
                        if copy > 0 { " (dup)" } else { "" },
                        self.nodes[to].id
                    ),
                );
            }
            let frame = if copy + 1 == copies {
                std::mem::take(&mut frame)
            } else {
                frame.clone()
            };
            self.push(at, Ev::Deliver { from, to, frame });
        }
    }

    /// A node's own vote may only leave it once the state it reports is on its disk
    /// (PROTOCOL.md, Durability): a grant after its reservation, a commit vote after the key.
    /// A vote may leave late (held behind later writes, or aggregated by a representative),
    /// about a reservation aborted since, so "was durable" is what is checked.
    fn check_durable_vote(&mut self, from: NodeIx, msg: &Message) {
        let responses = match msg {
            Message::Response(r) => std::slice::from_ref(r),
            Message::RelayReply { responses, .. } => responses.as_slice(),
            _ => return,
        };
        let me = &self.nodes[from];
        for r in responses {
            let Response::Vote { p, key, node, vote } = r else {
                continue;
            };
            if *node != me.id {
                continue;
            }
            let ever = me.durable_ever.get(p);
            let durable = match vote {
                Vote::Granted => ever.is_some(),
                Vote::Committed => ever == Some(&true),
                Vote::Denied { .. } => true,
            };
            if !durable {
                let what = format!(
                    "{} sent vote {vote:?} on {p} for {key:?}, which never reached its disk (it holds {:?})",
                    me.id,
                    me.disk.keys.get(key)
                );
                self.obs.push(Obs::Undurable {
                    node: from,
                    key: key.clone(),
                    what,
                });
            }
        }
    }

    fn latency(&mut self, from: NodeIx, to: NodeIx) -> Micros {
        let (a, b) = (self.nodes[from].cluster, self.nodes[to].cluster);
        let net = &self.spec.net;
        let mut delay = if a == b {
            draw(&mut self.rng_net, net.lan_us)
        } else {
            let base = self.wan_us[a][b];
            let jitter = (base as f64 * net.wan_jitter) as Micros;
            base + self.rng_net.random_range(0..=jitter)
        };
        if net.reorder > 0.0 && self.rng_net.random_bool(net.reorder) {
            delay += self.rng_net.random_range(0..=net.reorder_us_max);
        }
        delay
    }

    fn blocked(&self, from: NodeIx, to: NodeIx) -> bool {
        self.partitions.values().any(|p| {
            let (f, t) = (
                p.side.get(from).copied().unwrap_or(false),
                p.side.get(to).copied().unwrap_or(false),
            );
            if p.one_way { f && !t } else { f != t }
        })
    }

    fn deliver(&mut self, from: NodeIx, to: NodeIx, frame: Vec<u8>) {
        if self.nodes[to].node.is_none() {
            self.stats.messages_blocked += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("drop from {}: node down", self.nodes[from].id),
            );
            return;
        }
        if self.blocked(from, to) {
            self.stats.messages_blocked += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("drop from {}: partition", self.nodes[from].id),
            );
            return;
        }
        let msg = match wire::decode(&frame) {
            Ok(msg) => msg,
            Err(e) => panic!("a frame the core encoded does not decode: {e}"),
        };
        self.stats.messages_delivered += 1;
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("recv from {} {msg:?}", self.nodes[from].id),
            );
        }
        let from = self.nodes[from].id.clone();
        self.handle(to, Input::Message { from, msg });
    }

    fn schedule_nemesis(&mut self) {
        let Some(range) = self.spec.faults.interval_us else {
            return;
        };
        let delay = draw(&mut self.rng_faults, range);
        let at = self.now + micros(delay);
        self.push(at, Ev::Nemesis);
    }

    fn inject_fault(&mut self) {
        let total: u32 = self.spec.faults.kinds.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng_faults.random_range(0..total);
        let mut kind = self.spec.faults.kinds[0].0;
        for (k, w) in &self.spec.faults.kinds {
            if pick < *w {
                kind = *k;
                break;
            }
            pick -= w;
        }
        let duration = draw(&mut self.rng_faults, self.spec.faults.duration_us);
        let until = self.now + micros(duration);
        let n = self.nodes.len();
        let victim = self.rng_faults.random_range(0..n);
        if self.nodes[victim].departed {
            return;
        }
        match kind {
            FaultKind::Crash => {
                let down = self.nodes.iter().filter(|n| n.node.is_none()).count();
                if down < self.spec.faults.down_max && self.nodes[victim].node.is_some() {
                    self.crash(victim);
                    self.push(until, Ev::Restart { node: victim });
                }
            }
            FaultKind::Pause => {
                if self.nodes[victim].node.is_some() {
                    self.pause(victim, until);
                }
            }
            FaultKind::IsolateNode => {
                let side = (0..n).map(|i| i == victim).collect();
                self.partition(side, false, until);
            }
            FaultKind::IsolateCluster => {
                let c = self.nodes[victim].cluster;
                let side = self.nodes.iter().map(|x| x.cluster == c).collect();
                self.partition(side, false, until);
            }
            FaultKind::Split | FaultKind::OneWay => {
                let side = (0..n).map(|_| self.rng_faults.random_bool(0.5)).collect();
                self.partition(side, kind == FaultKind::OneWay, until);
            }
            FaultKind::Clog => {
                let to = self.rng_faults.random_range(0..n);
                if to != victim {
                    self.clog(victim, to, until);
                }
            }
        }
    }
}
