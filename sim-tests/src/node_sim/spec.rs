//! What one seed runs: the clusters, the clients' mix, the network and disks, the faults,
//! drawn from the seed (swarm testing); and the names of the driver bugs a run may carry.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_node::driver::DriverBug;

/// What one seed runs: drawn from the seed (swarm testing), printed with every failure.
#[derive(Clone, Debug)]
pub struct NodeSimSpec {
    pub seed: u64,
    pub clusters: usize,
    pub nodes_per_cluster: usize,
    pub clients: usize,
    pub hot_keys: usize,
    /// Share of PUTs to a hot key (several clients propose it at once).
    pub hot_share: f64,
    pub read_share: f64,
    pub request_id_share: f64,
    /// Share of calls made through the HTTP router instead of the driver's handle.
    pub http_share: f64,
    /// Clients now and then send more PUTs at once than a driver queues.
    pub bursts: bool,
    pub loss: f64,
    pub latency_ms: (u64, u64),
    pub fsync_us: (u64, u64),
    pub faults: Vec<FaultKind>,
    /// Time between two faults, drawn in this range.
    pub fault_gap_ms: (u64, u64),
    /// How long faults and the workload run before healing.
    pub safety_ms: u64,
    /// A minority of every cluster (one node each) killed while writes are in flight, kept
    /// down for the whole safety phase; the clients talk to the others.
    pub minority_down: bool,
    /// With `minority_down`: every call at another node must get a definite answer (what
    /// a minority down must cost: nothing). Only for fixed seeds without other faults.
    pub minority_strict: bool,
    pub bug: Option<DriverBug>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Kill a node (its unsynced writes are lost) and restart it from its disk later.
    Kill,
    /// Power loss of a whole cluster (a data centre): every node of it killed at once, while
    /// writes wait for their fsync, and restarted a moment later.
    CrashCluster,
    /// Partition a whole cluster from the rest, kill every node of it, restart them all while
    /// the partition holds, heal later.
    RestartClusterPartitioned,
    /// Cut a node off from everyone for a while.
    IsolateNode,
    /// Cut a whole cluster off from the rest for a while.
    IsolateCluster,
    /// Split the nodes into two random halves for a while.
    Split,
    /// Drop every message on one direction of one link for a while.
    Clog,
    /// Stop running a node's tasks for a while.
    Pause,
    /// Every write to a node's disk fails for a while (full or failing): its storage stalls
    /// and retries, it refuses writes and serves committed values only.
    DiskFull,
}

pub const FAULT_KINDS: [FaultKind; 9] = [
    FaultKind::Kill,
    FaultKind::CrashCluster,
    FaultKind::RestartClusterPartitioned,
    FaultKind::IsolateNode,
    FaultKind::IsolateCluster,
    FaultKind::Split,
    FaultKind::Clog,
    FaultKind::Pause,
    FaultKind::DiskFull,
];

impl NodeSimSpec {
    /// The configuration of `seed`. A driver bug, if any, is set on every node.
    pub fn draw(seed: u64, bug: Option<DriverBug>) -> NodeSimSpec {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e6f_6465_5f73_696d);
        let mut faults: Vec<FaultKind> = FAULT_KINDS
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.6))
            .collect();
        if faults.is_empty() {
            faults.push(FAULT_KINDS[rng.random_range(0..FAULT_KINDS.len())]);
        }
        let gap_min = rng.random_range(100..600);
        NodeSimSpec {
            seed,
            clusters: rng.random_range(2..=3),
            nodes_per_cluster: 3,
            clients: rng.random_range(3..=8),
            hot_keys: rng.random_range(1..=4),
            hot_share: rng.random_range(0.1..0.6),
            read_share: rng.random_range(0.2..0.5),
            request_id_share: rng.random_range(0.0..0.6),
            http_share: 0.5,
            // In a fifth of the seeds (each burst is 1,224 client calls, which makes the seed
            // several times slower to simulate); in every seed with NODE_SIM_BURSTS=1.
            bursts: rng.random_bool(0.2)
                || std::env::var("NODE_SIM_BURSTS").is_ok_and(|v| v == "1"),
            loss: if rng.random_bool(0.5) {
                0.0
            } else {
                rng.random_range(0.0..0.03)
            },
            latency_ms: (1, rng.random_range(2..=30)),
            // Fast, ordinary and slow disks (an fsync slower than a round trip keeps a whole
            // proposal's writes in one window that a crash can lose).
            fsync_us: (
                50,
                match rng.random_range(0..3) {
                    0 => rng.random_range(200..=2_000),
                    1 => rng.random_range(2_000..=20_000),
                    _ => rng.random_range(20_000..=60_000),
                },
            ),
            faults,
            fault_gap_ms: (gap_min, gap_min + rng.random_range(100..1500)),
            safety_ms: rng.random_range(3000..=6000),
            minority_down: rng.random_bool(0.25),
            minority_strict: false,
            bug,
        }
    }

    /// The nodes of the minority this spec keeps down (one of every cluster), if any.
    pub(super) fn minority(&self) -> Vec<usize> {
        if !self.minority_down {
            return Vec::new();
        }
        let k = self.seed as usize % self.nodes_per_cluster;
        (0..self.clusters)
            .map(|c| c * self.nodes_per_cluster + k)
            .collect()
    }

    pub(super) fn nodes(&self) -> usize {
        self.clusters * self.nodes_per_cluster
    }
}

pub fn bug_name(bug: DriverBug) -> &'static str {
    match bug {
        DriverBug::ForgetMembership => "forget-membership",
        DriverBug::ReleaseBeforeDurable => "release-before-durable",
    }
}

pub fn bug_from_name(name: &str) -> Option<DriverBug> {
    match name {
        "forget-membership" => Some(DriverBug::ForgetMembership),
        "release-before-durable" => Some(DriverBug::ReleaseBeforeDurable),
        _ => None,
    }
}
