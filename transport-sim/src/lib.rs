//! # transport-sim
//!
//! A seeded, single-threaded, discrete-event world that drives many [`replicator_core::Node`]s
//! directly through their sans-io API: a virtual clock, a network with per-link latency, loss,
//! duplication, reordering, clogged links and partitions, a simulated disk per node, crashes,
//! restarts (of one node, of a whole cluster or of several clusters during a partition), pauses,
//! operator removals and nodes that join mid-run. No async, no threads, no wall clock: one seed
//! replays a run exactly.
//!
//! The world is as strict as the real node (`../shared/design/SIMULATION.md`): a node boots from
//! its own disk image only (keys, refusals, membership, network id); discovery and goodbyes
//! travel over the simulated network. Discovery works like the real transport's Hello: a
//! request and its answer, each a message on the link, and a node learns a peer
//! ([`Input::NodeDiscovered`], with the peer's own network id) from the first Hello it hears
//! from it first-hand. Hello rounds run while some node lacks a peer it could reach; a
//! partitioned node does not learn of peers it cannot reach. A goodbye reaches only the nodes
//! the leaving node can reach when it says it (the core's view exchange heals the others).
//!
//! The world executes the outputs of the nodes (sends, writes, replies) and reports what
//! happened as [`Obs`]ervations, which the checkers of `sim-tests` drain after every
//! [`World::step`]. Every message goes through [`replicator_core::wire::encode`] and is decoded at
//! delivery, so the codec is exercised on every hop.
//!
//! It also checks two rules of the protocol that only the world can see: a node's own vote
//! leaves it only once the state the vote reports reached its disk, and a node clears a
//! leaving or removed node only once no reservation on its disk names it
//! ([`Obs::Undurable`]). The disk loses, in a crash with `lose_unsynced`, any suffix of the
//! writes not yet synced, lazy writes included: durability is always a prefix.
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
    CallId, ClusterId, Command, Config, DurableKey, Input, NetworkId, Node, NodeId, Note, Output,
    ProposalId, Recovered, RemoveOutcome, Reply, Time, Urgency, WriteId, WriteOp,
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

/// The simulated disk: each write completes after an fsync latency, in order. Durability is a
/// prefix: a write that completes makes every earlier write durable with it.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    pub fsync_us: (Micros, Micros),
    /// A lazy write ([`Urgency::Lazy`]) has no sync of its own right away: like the real
    /// node's storage, the driver syncs it with the next barrier write, or after this delay
    /// if none comes. Until then a crash (with `lose_unsynced`) may lose it.
    pub lazy_sync_us: (Micros, Micros),
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            fsync_us: (100, 3_000),
            lazy_sync_us: (1_000, 20_000),
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
    /// Crash every node of one cluster, cut the cluster from the rest, and restart its nodes
    /// while the partition holds: they boot from their disks, seeing only each other.
    RestartCluster,
    /// Cut the clusters in two groups, and crash and restart nodes of several clusters (whole
    /// clusters, or a whole side) while the partition holds.
    RestartSplit,
    /// An operator asks a random live node to remove a random node (live, crashed, paused or
    /// partitioned), not forced: the core must refuse a live one that answers (`Alive`).
    Remove,
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
            FaultKind::RestartCluster => "restart-cluster",
            FaultKind::RestartSplit => "restart-split",
            FaultKind::Remove => "remove",
        }
    }

    pub fn from_flag(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.flag() == name)
    }

    pub const ALL: [FaultKind; 10] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::IsolateNode,
        FaultKind::IsolateCluster,
        FaultKind::Split,
        FaultKind::OneWay,
        FaultKind::Clog,
        FaultKind::RestartCluster,
        FaultKind::RestartSplit,
        FaultKind::Remove,
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
    /// At most this many nodes down at once (crashes; a cluster restarted during a partition
    /// goes down whole).
    pub down_max: usize,
    /// At most this many nodes removed by operators ([`FaultKind::Remove`]) per run (the
    /// attempts refused do not count).
    pub removals_max: usize,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            kinds: Vec::new(),
            interval_us: None,
            duration_us: (50_000, 1_000_000),
            lose_unsynced: false,
            down_max: 1,
            removals_max: 2,
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
    /// Time between two Hello rounds (they run only while some node lacks a peer it could
    /// reach).
    pub hello_interval_us: Micros,
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
    /// The answer to an operator's removal ([`FaultKind::Remove`] or [`World::remove_node`]).
    /// `clean`: the victim was up, unpaused and reachable both ways (no loss, no clog) when the
    /// command was given, and no fault happened until the answer: a live node that answers
    /// must never be removed then.
    Removal {
        remover: NodeIx,
        victim: NodeIx,
        outcome: RemoveOutcome,
        clean: bool,
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
    /// Lazy `Stored` records (a commit) among the writes lost in crashes: the node restarted
    /// with the reservation of that proposal and had to resolve it again.
    pub commits_lost: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub clogs: u64,
    pub joins: u64,
    pub leaves: u64,
    pub hellos_sent: u64,
    pub hellos_lost: u64,
    pub goodbyes_sent: u64,
    pub goodbyes_lost: u64,
    pub cluster_restarts: u64,
    pub removals: u64,
}

impl WorldStats {
    pub fn faults(&self) -> u64 {
        self.crashes + self.pauses + self.partitions + self.clogs + self.removals
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
    /// A Hello (`answer`: the answer to one) from `from` reaches `to`; `network` is the
    /// sender's network id, read from its core when it sent the Hello.
    Hello {
        from: NodeIx,
        to: NodeIx,
        network: NetworkId,
        answer: bool,
    },
    /// Every pair of reachable nodes where one lacks the other exchanges Hellos.
    HelloRound,
    /// `from` said goodbye; the message reaches `to`.
    GoodbyeHeard {
        from: NodeIx,
        to: NodeIx,
    },
    /// `node` completed its leave: it says goodbye now.
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
            | Ev::Hello { to, .. }
            | Ev::GoodbyeHeard { to, .. } => Some(*to),
            Ev::Timer { node, .. } | Ev::Disk { node, .. } => Some(*node),
            Ev::Nemesis
            | Ev::Restart { .. }
            | Ev::Heal { .. }
            | Ev::Wake { .. }
            | Ev::HelloRound
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
    /// The peers this node's core saw leave (goodbye or removal): from its disk at boot, then
    /// from its [`Note::NodeRemoved`]s. A Hello from one of them would be refused; none is sent.
    departed_seen: BTreeSet<NodeIx>,
    /// Some node recorded an operator's removal of this one (a [`Note::NodeRemoved`] for a node
    /// that did not say goodbye). For guards and reports only: nothing on the node path reads it.
    removed: bool,
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

/// An operator's removal waiting for its answer.
struct RemovalCall {
    remover: NodeIx,
    victim: NodeIx,
    /// [`World::fault_epoch`] when it was given, if the victim was then live and reachable.
    clean_epoch: Option<(u64, u64)>,
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
    /// The id of the network the founders drew (from the seed); joiners learn it from their
    /// bootstrap node.
    network: NetworkId,
    /// A Hello round is scheduled.
    hello_scheduled: bool,
    removal_calls: BTreeMap<CallId, RemovalCall>,
    removals_done: usize,
    /// Counts every fault event (crash, restart, pause, partition, heal, clog): a removal is
    /// judged strictly only if none happened while it was checked.
    fault_epoch: u64,
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

/// The id of the `k`-th node of cluster `c`.
fn node_id(c: usize, k: usize) -> NodeId {
    NodeId::new(format!("n{c:02}.{k}"))
}

impl World {
    /// Builds the founding nodes of every cluster at time zero. Each boots from its own disk
    /// image: a founder of the network (its id drawn from the seed) that records every founding
    /// node as a member.
    pub fn new(spec: WorldSpec, seed: u64) -> World {
        let mut master = ChaCha8Rng::seed_from_u64(seed);
        let mut split = || ChaCha8Rng::seed_from_u64(master.random::<u64>());
        let (rng_net, rng_faults, rng_disk, rng_seeds) = (split(), split(), split(), split());
        let network = NetworkId::new(format!("net-{:016x}", master.random::<u64>()));
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
            network,
            hello_scheduled: false,
            removal_calls: BTreeMap::new(),
            removals_done: 0,
            fault_epoch: 0,
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
        let mut founders = Vec::new();
        for (c, &size) in world.spec.clusters.clone().iter().enumerate() {
            for k in 0..size {
                founders.push((world.cluster_ids[c].clone(), node_id(c, k)));
            }
        }
        let disk = Recovered::founder(world.network.clone()).with_members(founders);
        for (c, &size) in world.spec.clusters.clone().iter().enumerate() {
            for _ in 0..size {
                world.add_node(c, disk.clone());
            }
        }
        for ix in 0..world.nodes.len() {
            world.boot(ix);
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
    /// How many times the node crashed or left (a new incarnation boots from the disk).
    pub fn incarnation(&self, ix: NodeIx) -> u64 {
        self.nodes[ix].incarnation
    }
    /// The network the founders drew.
    pub fn network(&self) -> &NetworkId {
        &self.network
    }
    /// Whether some node recorded an operator's removal of this node (for reports and guards).
    pub fn is_removed(&self, ix: NodeIx) -> bool {
        self.nodes[ix].removed
    }
    /// Said goodbye, or removed by an operator somewhere.
    pub fn is_gone(&self, ix: NodeIx) -> bool {
        self.nodes[ix].departed || self.nodes[ix].removed
    }
    /// An operator's removal of this node is being checked.
    pub fn removal_pending(&self, ix: NodeIx) -> bool {
        self.removal_calls.values().any(|r| r.victim == ix)
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

    /// A new node joins cluster `cluster` now. Its bootstrap node is a live node the world
    /// picks: the joiner learns the network id from it and starts empty, knowing nobody; it is
    /// discovered (and discovers) through Hellos like everyone else. `None` if no node is up to
    /// bootstrap from.
    pub fn join(&mut self, cluster: usize) -> Option<NodeIx> {
        let up: Vec<NodeIx> = (0..self.nodes.len())
            .filter(|ix| self.nodes[*ix].node.is_some())
            .collect();
        if up.is_empty() {
            self.tr.fault(
                self.now,
                &self.nodes,
                usize::MAX,
                format_args!("join skipped: no node is up to bootstrap from"),
            );
            return None;
        }
        let bootstrap = up[self.rng_faults.random_range(0..up.len())];
        let network = self.nodes[bootstrap]
            .node
            .as_ref()
            .map(|n| n.network().clone())
            .expect("picked among the live nodes");
        let ix = self.add_node(cluster, Recovered::joiner(network.clone()));
        self.stats.joins += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!(
                "join cluster {} through {} (network {network})",
                self.cluster_ids[cluster], self.nodes[bootstrap].id
            ),
        );
        self.boot(ix);
        self.obs.push(Obs::Joined { node: ix });
        Some(ix)
    }

    /// Crashes a node now: volatile state is lost, durable writes kept; writes in flight are
    /// kept or (with `lose_unsynced`) a random suffix of them is lost.
    pub fn crash(&mut self, ix: NodeIx) {
        if self.nodes[ix].node.is_none() {
            return;
        }
        self.fault_epoch += 1;
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
        let commits_lost = inflight[keep..]
            .iter()
            .flat_map(|(_, ops)| ops)
            .filter(|op| matches!(op, WriteOp::PutKey { state, .. } if state.is_stored()))
            .count();
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
            self.call_lost(ix, call);
        }
        self.stats.crashes += 1;
        self.stats.writes_lost += writes_lost as u64;
        self.stats.commits_lost += commits_lost as u64;
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

    /// Restarts a crashed node from its disk image, and nothing else: its keys, refusals,
    /// network id and the membership it recorded. (An operator that asked it to leave asks
    /// again.) A node that was removed is restarted too (a tired operator): it must learn
    /// that it was removed from its peers and serve nothing.
    pub fn restart(&mut self, ix: NodeIx) {
        if self.nodes[ix].node.is_some() || self.nodes[ix].departed {
            return;
        }
        self.fault_epoch += 1;
        self.boot(ix);
        self.stats.restarts += 1;
        let n = &self.nodes[ix];
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!(
                "restart from disk: {} members, {} departed, {} keys{}",
                n.disk.members.len(),
                n.disk.departed.len(),
                n.disk.keys.len(),
                if n.removed {
                    " (removed by an operator)"
                } else {
                    ""
                }
            ),
        );
        self.obs.push(Obs::Restarted { node: ix });
        if self.nodes[ix].leaving {
            self.handle(ix, Input::Leave);
        }
    }

    /// Asks a node to leave gracefully. Once it reports [`Note::LeaveComplete`] it says
    /// goodbye: every node it can reach then hears [`Input::NodeRemoved`] after the link's
    /// latency, and the node is gone for good.
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

    /// An operator asks `remover` to remove `victim`. The answer comes back as
    /// [`Obs::Removal`]. `force` only for a node that said goodbye (it holds no grant that is
    /// still open, so counting it fenced is right): forcing the removal of any other node is
    /// unsafe by design when reservations name it.
    pub fn remove_node(&mut self, remover: NodeIx, victim: NodeIx, force: bool) -> CallId {
        assert!(
            !force || self.nodes[victim].departed,
            "a forced removal of a node that did not say goodbye"
        );
        // Strictly judged: the victim can hear the remover and answers it (it counts the
        // remover a member and was not removed itself), and nothing can get in the way.
        let answers = self.nodes[victim]
            .node
            .as_ref()
            .is_some_and(|n| !n.is_removed() && n.membership().contains(&self.nodes[remover].id));
        let clean = answers && self.reachable_now(remover, victim) && self.spec.net.loss == 0.0;
        let clean_epoch = clean.then_some((self.fault_epoch, self.nodes[victim].incarnation));
        let node = self.nodes[victim].id.clone();
        self.tr.fault(
            self.now,
            &self.nodes,
            remover,
            format_args!(
                "operator: remove {node}{} (asked here; {})",
                if force { ", forced" } else { "" },
                self.describe_state(victim)
            ),
        );
        let call = self.submit(remover, Command::RemoveNode { node, force });
        self.removal_calls.insert(
            call,
            RemovalCall {
                remover,
                victim,
                clean_epoch,
            },
        );
        call
    }

    /// How a node stands, for the trace.
    fn describe_state(&self, ix: NodeIx) -> &'static str {
        let n = &self.nodes[ix];
        if n.departed {
            "it said goodbye"
        } else if n.node.is_none() {
            "it is down"
        } else if n.paused_until > self.now {
            "it is paused"
        } else if (0..self.nodes.len())
            .any(|j| !self.nodes[j].departed && (self.blocked(ix, j) || self.blocked(j, ix)))
        {
            "it is up, a partition holds"
        } else {
            "it is up"
        }
    }

    /// Whether `a` and `b` are up, unpaused, and can exchange messages both ways without delay.
    fn reachable_now(&self, a: NodeIx, b: NodeIx) -> bool {
        let live = |x: NodeIx| {
            let n = &self.nodes[x];
            n.node.is_some() && !n.departed && n.paused_until <= self.now
        };
        let clogged = |f: NodeIx, t: NodeIx| self.clogs.get(&(f, t)).is_some_and(|u| *u > self.now);
        live(a)
            && live(b)
            && !self.blocked(a, b)
            && !self.blocked(b, a)
            && !clogged(a, b)
            && !clogged(b, a)
    }

    /// A client call is lost (its node is down or crashed before answering).
    fn call_lost(&mut self, node: NodeIx, call: CallId) {
        if self.removal_calls.remove(&call).is_some() {
            self.tr.node(
                self.now,
                &self.nodes,
                node,
                format_args!("operator's removal call {} lost", call.0),
            );
        }
        self.obs.push(Obs::CallLost { node, call });
    }

    /// The node says goodbye: the message goes to every member its core knows, over the
    /// network (lost on a cut link or to a node that is down), and the node is gone for good.
    fn goodbye(&mut self, ix: NodeIx) {
        if self.nodes[ix].departed || self.nodes[ix].node.is_none() {
            return;
        }
        let calls: Vec<CallId> = std::mem::take(&mut self.nodes[ix].calls)
            .into_iter()
            .collect();
        for call in calls {
            self.call_lost(ix, call);
        }
        let members: Vec<NodeIx> = self.nodes[ix]
            .node
            .as_ref()
            .map(|n| {
                n.membership()
                    .nodes()
                    .filter_map(|id| self.ix_of(id))
                    .collect()
            })
            .unwrap_or_default();
        let n = &mut self.nodes[ix];
        n.departed = true;
        n.node = None;
        n.incarnation += 1;
        n.timer_at = None;
        n.inflight.clear();
        self.tr
            .fault(self.now, &self.nodes, ix, format_args!("goodbye"));
        self.obs.push(Obs::Departed { node: ix });
        for to in members {
            if to == ix || self.nodes[to].departed {
                continue;
            }
            self.stats.goodbyes_sent += 1;
            let net = &self.spec.net;
            if net.loss > 0.0 && self.rng_net.random_bool(net.loss) {
                self.stats.goodbyes_lost += 1;
                self.tr.node(
                    self.now,
                    &self.nodes,
                    ix,
                    format_args!("goodbye to {} lost (message loss)", self.nodes[to].id),
                );
                continue;
            }
            let at = self.arrival(ix, to);
            self.push(at, Ev::GoodbyeHeard { from: ix, to });
        }
    }

    /// Every event of the node waits until `until`.
    pub fn pause(&mut self, ix: NodeIx, until: Time) {
        self.fault_epoch += 1;
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
        self.fault_epoch += 1;
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
        self.fault_epoch += 1;
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
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!("calm: every fault healed, every node restarted"),
        );
        self.fault_epoch += 1;
        for ix in 0..self.nodes.len() {
            self.nodes[ix].paused_until = Time::ZERO;
            self.restart(ix);
        }
        self.schedule_hellos();
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
                    self.call_lost(to, call);
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
            Ev::Hello {
                from,
                to,
                network,
                answer,
            } => self.hello_arrived(from, to, network, answer),
            Ev::HelloRound => self.hello_round(),
            Ev::GoodbyeHeard { from, to } => self.goodbye_arrived(from, to),
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
                    self.fault_epoch += 1;
                    self.schedule_hellos();
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

    fn add_node(&mut self, cluster: usize, disk: Recovered) -> NodeIx {
        let ix = self.nodes.len();
        let k = self.nodes.iter().filter(|n| n.cluster == cluster).count();
        let id = node_id(cluster, k);
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
            departed_seen: BTreeSet::new(),
            removed: false,
            durable_ever: HashMap::default(),
        });
        ix
    }

    /// Starts the node from its disk image only.
    fn boot(&mut self, ix: NodeIx) {
        let seed = self.rng_seeds.random::<u64>();
        let departed_seen: BTreeSet<NodeIx> = self.nodes[ix]
            .disk
            .departed
            .iter()
            .filter_map(|id| self.index.get(id).copied())
            .collect();
        let n = &mut self.nodes[ix];
        n.departed_seen = departed_seen;
        let node = Node::new(
            self.spec.config.clone(),
            n.id.clone(),
            self.cluster_ids[n.cluster].clone(),
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
        // Like the real transport, a node that comes up connects and Hellos the peers it
        // can reach.
        self.schedule_hellos();
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
                Output::Persist {
                    write,
                    ops,
                    urgency,
                } => self.persist(ix, write, ops, urgency),
                Output::Reply { call, reply } => {
                    self.nodes[ix].calls.remove(&call);
                    self.tr.node(
                        self.now,
                        &self.nodes,
                        ix,
                        format_args!("reply {} {reply:?}", call.0),
                    );
                    if let Some(r) = self.removal_calls.remove(&call) {
                        self.removal_answered(r, reply);
                        continue;
                    }
                    self.obs.push(Obs::Reply {
                        node: ix,
                        call,
                        reply,
                    });
                }
                Output::Note(note) => {
                    match &note {
                        Note::LeaveComplete => {
                            let now = self.now;
                            self.push(now, Ev::Goodbye { node: ix });
                        }
                        Note::NodeRemoved { node } => {
                            if let Some(gone) = self.ix_of(node) {
                                self.nodes[ix].departed_seen.insert(gone);
                                if !self.nodes[gone].departed {
                                    self.nodes[gone].removed = true;
                                }
                            }
                        }
                        Note::SelfRemoved { .. } => self.nodes[ix].removed = true,
                        _ => {}
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

    fn persist(&mut self, ix: NodeIx, write: WriteId, ops: Vec<WriteOp>, urgency: Urgency) {
        self.stats.writes += 1;
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                ix,
                format_args!("persist w{} {urgency:?} {ops:?}", write.0),
            );
        }
        self.obs.push(Obs::Write {
            node: ix,
            ops: ops.clone(),
        });
        let latency = draw(&mut self.rng_disk, self.spec.disk.fsync_us);
        let done = match urgency {
            Urgency::Barrier => {
                let n = &mut self.nodes[ix];
                let done = (self.now + micros(latency)).max(n.disk_busy_until);
                n.disk_busy_until = done;
                done
            }
            // Synced after a delay unless a barrier write covers it first; it does not hold
            // up the barrier writes behind it.
            Urgency::Lazy => {
                let wait = draw(&mut self.rng_disk, self.spec.disk.lazy_sync_us);
                (self.now + micros(wait + latency)).max(self.nodes[ix].disk_busy_until)
            }
        };
        let n = &mut self.nodes[ix];
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
        self.check_durable_clearance(from, to, msg);
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
            let at = self.arrival(from, to);
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
            // A Committed vote needs only the grant on disk: `Stored` is a lazy write
            // (PROTOCOL.md, "Lazy writes"), and a commit it reports is stable because every
            // participant's grant is durable.
            let ever = me.durable_ever.get(p);
            let durable = match vote {
                Vote::Granted | Vote::Committed => ever.is_some(),
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

    /// An answer that a leave or removal may proceed ("clear", or no open reservation) vouches
    /// for the sender's disk: once the node is gone, a reservation naming it that a crash
    /// brings back (a commit still lazy) would be resolved with it counted fenced. So when it
    /// leaves, no reservation on the sender's disk may name that node (PROTOCOL.md, "Lazy
    /// writes").
    fn check_durable_clearance(&mut self, from: NodeIx, to: &NodeId, msg: &Message) {
        let named = match msg {
            Message::LeaveClear { clear: true } => to,
            Message::RemoveCheckReply { node, open } if open.is_empty() => node,
            _ => return,
        };
        let me = &self.nodes[from];
        if *named == me.id || !me.disk.members.contains_key(named) {
            return;
        }
        let open = me.disk.keys.iter().find(|(_, state)| {
            matches!(state, DurableKey::Reserved { participants, .. } if participants.contains(named))
        });
        if let Some((key, state)) = open {
            let what = format!(
                "{} cleared {named} to go ({msg:?}) while its disk holds {state:?}, which names it",
                me.id
            );
            self.obs.push(Obs::Undurable {
                node: from,
                key: key.clone(),
                what,
            });
        }
    }

    /// When a message sent now from `from` reaches `to`: the link's latency, held until a
    /// clog on the link is released.
    fn arrival(&mut self, from: NodeIx, to: NodeIx) -> Time {
        let delay = self.latency(from, to);
        let mut at = self.now + micros(delay);
        if let Some(&until) = self.clogs.get(&(from, to))
            && until > self.now
        {
            at = at.max(until + micros(delay));
        }
        at
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

    // ------------------------------------------------------------ discovery and goodbyes

    /// Makes sure a Hello round runs soon.
    fn schedule_hellos(&mut self) {
        if self.hello_scheduled {
            return;
        }
        self.hello_scheduled = true;
        let at = self.now + micros(self.spec.hello_interval_us.max(1));
        self.push(at, Ev::HelloRound);
    }

    /// Whether `a`'s core lacks `b`: not a member there, and not seen leaving.
    fn lacks(&self, a: NodeIx, b: NodeIx) -> bool {
        let n = &self.nodes[a];
        match &n.node {
            Some(core) => {
                !core.membership().contains(&self.nodes[b].id) && !n.departed_seen.contains(&b)
            }
            None => false,
        }
    }

    /// Whether `a`'s core lacks some node of the world (a cheap count: its members and the
    /// nodes it saw leave are disjoint and all in the world).
    fn lacks_any(&self, a: NodeIx) -> bool {
        let n = &self.nodes[a];
        let Some(core) = &n.node else { return false };
        let known = core.membership().len() + n.departed_seen.iter().filter(|d| **d != a).count();
        known < self.nodes.len()
    }

    /// Whether a node can take part in a Hello now.
    fn can_hello(&self, x: NodeIx) -> bool {
        let n = &self.nodes[x];
        n.node.is_some() && !n.departed && n.paused_until <= self.now
    }

    /// One Hello round: every pair of nodes where one lacks the other, both up and unpaused
    /// with the link open both ways, exchanges a Hello (the lacking node sends it, the other
    /// answers). Another round follows while such a pair is left that could still meet.
    fn hello_round(&mut self) {
        self.hello_scheduled = false;
        let n = self.nodes.len();
        let lacking: Vec<bool> = (0..n).map(|a| self.lacks_any(a)).collect();
        let mut again = false;
        for a in 0..n {
            if !lacking[a] {
                continue;
            }
            for (b, &b_lacks) in lacking.iter().enumerate() {
                // A pair of two lacking nodes is looked at once, from its lower index.
                if a == b || (b_lacks && b < a) {
                    continue;
                }
                let (ab, ba) = (self.lacks(a, b), b_lacks && self.lacks(b, a));
                if !ab && !ba {
                    continue;
                }
                let (a_up, b_up) = (self.nodes[a].node.is_some(), self.nodes[b].node.is_some());
                if !a_up || !b_up || self.nodes[b].departed {
                    // A restart or a join schedules the next round.
                    continue;
                }
                again = true;
                if !self.can_hello(a)
                    || !self.can_hello(b)
                    || self.blocked(a, b)
                    || self.blocked(b, a)
                {
                    continue;
                }
                let (from, to) = if ab { (a, b) } else { (b, a) };
                self.send_hello(from, to, false);
            }
        }
        if again {
            self.schedule_hellos();
        }
    }

    fn send_hello(&mut self, from: NodeIx, to: NodeIx, answer: bool) {
        let Some(network) = self.nodes[from].node.as_ref().map(|n| n.network().clone()) else {
            return;
        };
        self.stats.hellos_sent += 1;
        let what = if answer { "hello answer" } else { "hello" };
        let net = &self.spec.net;
        if net.loss > 0.0 && self.rng_net.random_bool(net.loss) {
            self.stats.hellos_lost += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                from,
                format_args!("{what} to {} lost (message loss)", self.nodes[to].id),
            );
            return;
        }
        let at = self.arrival(from, to);
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                from,
                format_args!("{what} to {} at {at}", self.nodes[to].id),
            );
        }
        self.push(
            at,
            Ev::Hello {
                from,
                to,
                network,
                answer,
            },
        );
    }

    /// A Hello reaches `to`: it learns `from` first-hand (if it lacks it), and answers a
    /// request with its own Hello.
    fn hello_arrived(&mut self, from: NodeIx, to: NodeIx, network: NetworkId, answer: bool) {
        let what = if answer { "hello answer" } else { "hello" };
        let why_lost = if self.nodes[to].node.is_none() {
            Some("node down")
        } else if self.blocked(from, to) {
            Some("partition")
        } else {
            None
        };
        if let Some(why) = why_lost {
            self.stats.hellos_lost += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("{what} from {} lost: {why}", self.nodes[from].id),
            );
            return;
        }
        if self.lacks(to, from) {
            let cluster = self.cluster_ids[self.nodes[from].cluster].clone();
            let node = self.nodes[from].id.clone();
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("{what} from {node}: discovered in {cluster} (network {network})"),
            );
            self.handle(
                to,
                Input::NodeDiscovered {
                    cluster,
                    node,
                    network,
                },
            );
        } else {
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!(
                    "{what} from {} (a member already, or seen leaving)",
                    self.nodes[from].id
                ),
            );
        }
        if !answer && self.nodes[to].node.is_some() {
            self.send_hello(to, from, true);
        }
    }

    /// `from`'s goodbye reaches `to`, unless `to` is down or cut from it.
    fn goodbye_arrived(&mut self, from: NodeIx, to: NodeIx) {
        let why_lost = if self.nodes[to].node.is_none() {
            Some("node down")
        } else if self.blocked(from, to) {
            Some("partition")
        } else {
            None
        };
        let id = self.nodes[from].id.clone();
        if let Some(why) = why_lost {
            self.stats.goodbyes_lost += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("goodbye from {id} lost: {why}"),
            );
            return;
        }
        self.tr.node(
            self.now,
            &self.nodes,
            to,
            format_args!("goodbye from {id} delivered"),
        );
        self.handle(
            to,
            Input::NodeRemoved {
                node: id,
                goodbye: true,
            },
        );
    }

    /// The answer to an operator's removal.
    fn removal_answered(&mut self, r: RemovalCall, reply: Reply) {
        let outcome = match reply {
            Reply::Remove(o) => o,
            other => panic!("a RemoveNode command was answered {other:?}"),
        };
        if outcome == RemoveOutcome::Removed {
            self.removals_done += 1;
        }
        let clean = r.clean_epoch.is_some_and(|(epoch, incarnation)| {
            epoch == self.fault_epoch && incarnation == self.nodes[r.victim].incarnation
        });
        self.tr.fault(
            self.now,
            &self.nodes,
            r.remover,
            format_args!(
                "operator: removal of {} answered {outcome:?}{}",
                self.nodes[r.victim].id,
                if clean {
                    " (the node was live and reachable throughout)"
                } else {
                    ""
                }
            ),
        );
        self.obs.push(Obs::Removal {
            remover: r.remover,
            victim: r.victim,
            outcome,
            clean,
        });
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
        // An operator may name a node that said goodbye; the other faults skip it.
        if self.nodes[victim].departed && kind != FaultKind::Remove {
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
            FaultKind::RestartCluster => {
                let c = self.nodes[victim].cluster;
                let side: Vec<bool> = self.nodes.iter().map(|x| x.cluster == c).collect();
                self.restart_during_partition(side.clone(), side, duration);
            }
            FaultKind::RestartSplit => {
                let clusters = self.cluster_ids.len();
                let (side, restarted) = if clusters >= 2 {
                    // Two non-empty groups of clusters.
                    let mut group: Vec<bool> = (0..clusters)
                        .map(|_| self.rng_faults.random_bool(0.5))
                        .collect();
                    let pick = self.rng_faults.random_range(0..clusters);
                    if group.iter().all(|g| *g) {
                        group[pick] = false;
                    } else if !group.iter().any(|g| *g) {
                        group[pick] = true;
                    }
                    // Each side restarts whole: every node of every one of its clusters (the
                    // case where a node that forgot its peers sees only its side), or some of
                    // its clusters whole.
                    let mut restart_cluster = vec![false; clusters];
                    for g in [true, false] {
                        let whole = self.rng_faults.random_bool(0.6);
                        for (c, r) in restart_cluster.iter_mut().enumerate() {
                            if group[c] == g {
                                *r = whole || self.rng_faults.random_bool(0.5);
                            }
                        }
                    }
                    let side = self.nodes.iter().map(|x| group[x.cluster]).collect();
                    let restarted = self
                        .nodes
                        .iter()
                        .map(|x| restart_cluster[x.cluster])
                        .collect();
                    (side, restarted)
                } else {
                    // One cluster: a random split of its nodes, everyone restarted.
                    let side = (0..n).map(|_| self.rng_faults.random_bool(0.5)).collect();
                    (side, vec![true; n])
                };
                self.restart_during_partition(side, restarted, duration);
            }
            FaultKind::Remove => {
                if self.removals_done + self.removal_calls.len() >= self.spec.faults.removals_max {
                    return;
                }
                let up: Vec<NodeIx> = (0..n).filter(|ix| self.nodes[*ix].node.is_some()).collect();
                if up.is_empty() {
                    return;
                }
                let remover = up[self.rng_faults.random_range(0..up.len())];
                let silent: Vec<NodeIx> = (0..n)
                    .filter(|ix| *ix != remover && !self.nodes[*ix].departed)
                    .filter(|ix| !self.reachable_now(remover, *ix))
                    .collect();
                // A third of the time the operator names any node; a third of the time a node
                // that stopped answering the remover (down, paused or cut off), if there is
                // one; a third of the time a node whose network just failed (it is cut off
                // from everyone for a while, alive), as soon as it failed.
                let (victim, cut) = match self.rng_faults.random_range(0..3) {
                    1 if !silent.is_empty() => {
                        (silent[self.rng_faults.random_range(0..silent.len())], false)
                    }
                    2 if !self.nodes[victim].departed && self.nodes[victim].node.is_some() => {
                        (victim, true)
                    }
                    _ => (victim, false),
                };
                if victim == remover || !self.removal_leaves_a_writable_cluster(victim) {
                    return;
                }
                if cut {
                    // Long enough for the removal's check to run out while it stays cut off.
                    let check = self.spec.config.verify_timeout.as_micros() as Micros;
                    let cut_for = self.rng_faults.random_range(check * 3 / 2..=check * 4);
                    let side = (0..n).map(|i| i == victim).collect();
                    self.partition(side, false, self.now + micros(cut_for));
                }
                self.stats.removals += 1;
                self.remove_node(remover, victim, false);
            }
        }
    }

    /// Crashes the nodes with `restart[ix]`, cuts the nodes with `side[ix]` from the others for
    /// `duration`, and restarts the crashed nodes while the partition holds (each boots from
    /// its disk and sees only its own side).
    fn restart_during_partition(&mut self, side: Vec<bool>, restart: Vec<bool>, duration: Micros) {
        let until = self.now + micros(duration);
        let crashed: Vec<NodeIx> = (0..self.nodes.len())
            .filter(|ix| restart.get(*ix).copied().unwrap_or(false))
            .filter(|ix| self.nodes[*ix].node.is_some() && !self.nodes[*ix].departed)
            .collect();
        self.stats.cluster_restarts += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!(
                "restart during a partition: nodes {crashed:?} crash, restart before it heals"
            ),
        );
        self.partition(side, false, until);
        for ix in crashed {
            self.crash(ix);
            // Restart within the first 60% of the partition, so that the restarted nodes
            // spend a while with only their own side in sight.
            let at = self
                .rng_faults
                .random_range(duration / 10..=duration * 6 / 10 + 1);
            let at = self.now + micros(at);
            self.push(at, Ev::Restart { node: ix });
        }
    }

    /// Whether, without `victim` (and every node gone or leaving), some cluster keeps the
    /// members it needs to accept writes: the liveness phase must be able to write.
    fn removal_leaves_a_writable_cluster(&self, victim: NodeIx) -> bool {
        let min = self.spec.config.cluster_size_min;
        (0..self.cluster_ids.len()).any(|c| {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(ix, x)| {
                    x.cluster == c
                        && *ix != victim
                        && !x.departed
                        && !x.removed
                        && !x.leaving
                        && !self.removal_pending(*ix)
                })
                .count()
                >= min
        })
    }
}
