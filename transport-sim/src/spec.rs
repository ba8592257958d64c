//! What a world is made of: its clusters, the core's config, the network's latencies and
//! message faults, the disks, the nemesis and how much of the trace to keep.

use replicator_core::Config;

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
    /// A lazy write ([`Urgency::Lazy`](replicator_core::Urgency)) has no sync of its own right
    /// away: like the real node's storage, the driver syncs it with the next barrier write, or
    /// after this delay if none comes. Until then a crash (with `lose_unsynced`) may lose it.
    pub lazy_sync_us: (Micros, Micros),
    /// A node's read of a decision from its disk fails with this probability, per mille, until
    /// the world calms down (the node abstains for that key meanwhile: core/PROTOCOL.md, "What
    /// a node holds in memory").
    pub read_fail_permille: u32,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            fsync_us: (100, 3_000),
            lazy_sync_us: (1_000, 20_000),
            read_fail_permille: 0,
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

/// What happens to the nodes of a minority fault ([`MinoritySpec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinorityKind {
    /// Crashed (restarted from its disk when the fault ends).
    Down,
    /// Paused: every event of the node waits.
    Paused,
    /// Cut off from every other node.
    CutOff,
    /// Slow: every message to or from it takes this much longer.
    Slow { extra_us: Micros },
}

impl MinorityKind {
    /// The name of the kind on a command line (`slow` takes its default delay).
    pub fn flag(self) -> &'static str {
        match self {
            MinorityKind::Down => "down",
            MinorityKind::Paused => "paused",
            MinorityKind::CutOff => "cut-off",
            MinorityKind::Slow { .. } => "slow",
        }
    }

    pub fn from_flag(name: &str) -> Option<MinorityKind> {
        match name {
            "down" => Some(MinorityKind::Down),
            "paused" => Some(MinorityKind::Paused),
            "cut-off" => Some(MinorityKind::CutOff),
            "slow" => Some(MinorityKind::Slow { extra_us: 150_000 }),
            _ => None,
        }
    }
}

/// A minority of every cluster (as many nodes as its majority can do without) faulty from the
/// start, for the whole safety phase or coming and going (PROTOCOL.md, invariant 9: every PUT
/// and GET at the other nodes must still be answered definitely, in time).
#[derive(Clone, Debug)]
pub struct MinoritySpec {
    pub kind: MinorityKind,
    /// `None`: faulty for the whole safety phase. `Some(range)`: each faulty node alternates
    /// faulty and healthy periods drawn from `range`.
    pub toggle_us: Option<(Micros, Micros)>,
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
    /// A minority of every cluster faulty from the start (see [`MinoritySpec`]).
    pub minority: Option<MinoritySpec>,
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
            minority: None,
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
