//! The real node under madsim: clusters of `replicator-node` drivers (the very `Driver`,
//! `Storage` with its group commit over redb, and HTTP router of the binary) on madsim's
//! simulated network, clock and tasks, with faults drawn per seed.
//!
//! What is simulated and how:
//! - **network**: [`SimTransport`] implements the driver's `Transport` over a madsim
//!   [`Endpoint`] per node. Discovery is realistic: every node sends a small `Hello` (cluster,
//!   node, network id) to every address of the world each [`HELLO_INTERVAL`]; a node learns of
//!   a peer only from a hello (or a frame) it received, so a partitioned or restarted node learns
//!   of nobody it cannot reach. A peer silent for [`DOWN_AFTER`] is reported down.
//! - **disk**: each node's storage is the real redb over a [`SimDisk`]; a group commit is
//!   reported durable only after a drawn fsync delay, and a kill loses every write no completed
//!   fsync covers.
//! - **faults** (drawn per seed): kill and restart from the disk, a whole cluster restarted
//!   while partitioned from the rest, partitions (a node, a cluster, a random split), one-way
//!   clogged links, paused nodes, message loss.
//! - **clients**: concurrent PUTs (fresh keys and hot keys, with and without request ids, a
//!   request-id PUT retried until definite) and GETs, half through the driver's `Handle`, half
//!   through the HTTP router (run on the node, so a kill cuts the call as it cuts a connection).
//!
//! Checks: the client history is linearizable per key (the same checker as transport-sim,
//! [`crate::linearizability`]); no driver reported a protocol violation; after healing, every
//! call is answered, a fresh PUT is stored through every cluster, every view converges and no
//! reservation is left; at the end every node's disk (loaded by the real `Storage::load` after
//! a crash) agrees: no key with two values, every key a client was told Stored is stored on
//! every member with that value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::poll_fn;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use madsim::net::{Endpoint, NetSim};
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle as SimHandle, NodeHandle, Runtime};
use madsim::time::{Instant, sleep};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::{
    ClusterId, Command, Config, DurableKey, GetOutcome, Key, NetworkId, NodeId, PutOutcome,
    Recovered, Reply, RequestId, Value,
};
use replicator_node::driver::{
    CallError, Driver, DriverBug, Handle, Parts, REQUEST_QUEUE_LEN, Transport, TransportEvent,
};
use replicator_node::http;
use replicator_node::metrics::Metrics;
use replicator_node::simdisk::SimDisk;
use replicator_node::storage::Storage;
use tokio::sync::mpsc;

use crate::linearizability::{self, GetResult, Op, PutResult};

/// The API token of every node's HTTP router (writes need it).
const API_TOKEN: &str = "node-sim-token";
/// The port every node's endpoint listens on.
const PORT: u16 = 7000;
/// The endpoint tag of every packet.
const TAG: u64 = 1;
/// How often a node says hello to every address of the world.
const HELLO_INTERVAL: Duration = Duration::from_millis(300);
/// A peer silent for this long is reported down (it stays a member).
const DOWN_AFTER: Duration = Duration::from_millis(1500);
/// Transport events waiting for the driver (as the libp2p pump's queue).
const EVENTS_QUEUE_LEN: usize = 1024;
/// The most frames the network task takes from the driver's queue at once before it looks at
/// incoming packets and hellos again (the libp2p transport's per-peer send queue bound).
const SEND_BATCH_FRAMES_MAX: usize = 8192;
/// A request-id PUT is retried (with the same id) at most this often while indeterminate.
const ATTEMPTS_MAX: u32 = 4;
/// A client gives up on one call after this long (the node's own timers answer far sooner).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Liveness: how long, after healing, everything may take to settle.
const LIVENESS_WITHIN: Duration = Duration::from_secs(60);

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
    fn minority(&self) -> Vec<usize> {
        if !self.minority_down {
            return Vec::new();
        }
        let k = self.seed as usize % self.nodes_per_cluster;
        (0..self.clusters)
            .map(|c| c * self.nodes_per_cluster + k)
            .collect()
    }

    fn nodes(&self) -> usize {
        self.clusters * self.nodes_per_cluster
    }
}

/// The command that replays `seed` (with the bug, if any, that it ran with).
pub fn replay_command(seed: u64, bug: Option<DriverBug>) -> String {
    let bug = match bug {
        None => String::new(),
        Some(b) => format!("NODE_SIM_BUG={} ", bug_name(b)),
    };
    format!(
        "{bug}MADSIM_TEST_SEED={seed} RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/madsim \
         cargo test -p sim-tests --test node_sim replay -- --nocapture"
    )
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

/// What a passing run measured.
#[derive(Clone, Debug, Default)]
pub struct NodeSimStats {
    pub ops: usize,
    pub stored: usize,
    pub faults: usize,
    pub kills: usize,
    pub sim_ms: u64,
    pub messages: u64,
    pub writes_lost: u64,
    /// Disk writes refused while a disk was failing.
    pub writes_refused: u64,
    /// Simulated time from healing until every client call was answered, a probe PUT stored
    /// through every cluster and every view settled (the liveness bound is 60 s).
    pub settle_ms: u64,
    /// A hash of everything the run observed (history, fault log, final disks): the same seed
    /// gives the same hash.
    pub hash: u64,
}

/// A failed run: why, and what happened.
#[derive(Clone, Debug)]
pub struct NodeSimFailure {
    pub reason: String,
    pub log: Vec<String>,
    pub hash: u64,
}

/// Runs one seed in a fresh madsim runtime. Never panics on a finding: a panic of the run
/// itself (a node's task, the harness) is reported as a failure too.
pub fn run_seed(spec: &NodeSimSpec) -> Result<NodeSimStats, NodeSimFailure> {
    let spec = spec.clone();
    // A thread of its own: madsim's runtime is per thread, and a panic stays in it.
    let joined = std::thread::spawn(move || {
        let mut config = madsim::Config::default();
        config.net.packet_loss_rate = spec.loss;
        config.net.send_latency =
            Duration::from_millis(spec.latency_ms.0)..Duration::from_millis(spec.latency_ms.1);
        let rt = Runtime::with_seed_and_config(spec.seed, config);
        rt.block_on(world(spec))
    })
    .join();
    match joined {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(NodeSimFailure {
                reason: format!("the run panicked: {msg}"),
                log: Vec::new(),
                hash: 0,
            })
        }
    }
}

/// How long, in simulated milliseconds, the simulated network takes to carry `frames` frames
/// that one node's driver sends to another at once (as a burst of PUTs does), on a network
/// with 1 ms of latency. A network task that awaited each send in turn took a simulated
/// millisecond per frame.
pub fn burst_delivery_ms(frames: usize) -> u64 {
    std::thread::spawn(move || {
        let mut config = madsim::Config::default();
        config.net.send_latency = Duration::from_millis(1)..Duration::from_millis(2);
        let rt = Runtime::with_seed_and_config(1, config);
        rt.block_on(async move {
            let network = NetworkId::new("net-burst");
            let addrs: Vec<SocketAddr> = (1..=2)
                .map(|k| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, k)), PORT))
                .collect();
            let ids = [NodeId::new("sender"), NodeId::new("receiver")];
            // Each node's network task; the test stands in for both drivers.
            let mut links = Vec::new();
            for (k, addr) in addrs.iter().enumerate() {
                let (events_tx, events) = mpsc::channel(EVENTS_QUEUE_LEN);
                let (out_tx, out_rx) = mpsc::unbounded_channel();
                let me = (ClusterId::new("c0"), ids[k].clone(), network.clone());
                let world = addrs.clone();
                let addr = *addr;
                SimHandle::current()
                    .create_node()
                    .name(ids[k].to_string())
                    .ip(addr.ip())
                    .build()
                    .spawn(async move {
                        let ep = Endpoint::bind(addr).await.expect("a free address");
                        network_task(me, ep, world, out_rx, events_tx).await;
                    });
                links.push((SimTransport { out: out_tx }, events));
            }
            let (receiver_transport, mut received) = links.pop().expect("two nodes");
            let (sender, mut sender_events) = links.pop().expect("two nodes");
            // Frames go only to a peer heard from: wait until each side heard the other.
            let heard =
                |ev: Option<TransportEvent>| matches!(ev, Some(TransportEvent::Discovered { .. }));
            while !heard(sender_events.recv().await) {}
            while !heard(received.recv().await) {}
            let started = Instant::now();
            for i in 0..frames {
                sender.send(&ids[1], (i as u64).to_le_bytes().to_vec());
            }
            let mut arrived = 0;
            while arrived < frames {
                match received.recv().await {
                    Some(TransportEvent::Message { .. }) => arrived += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            drop(receiver_transport);
            Instant::now().duration_since(started).as_millis() as u64
        })
    })
    .join()
    .expect("the measurement does not panic")
}

/// Runs one seed; on failure, a report that starts and ends with the seed and the replay
/// command.
pub fn check_seed(spec: &NodeSimSpec) -> Result<NodeSimStats, String> {
    run_seed(spec).map_err(|f| report(spec, &f))
}

pub fn report(spec: &NodeSimSpec, failure: &NodeSimFailure) -> String {
    report_with(spec, failure, 60)
}

/// The report with the last `lines` lines of the run's log (faults, restarts, liveness).
pub fn report_with(spec: &NodeSimSpec, failure: &NodeSimFailure, lines: usize) -> String {
    let replay = replay_command(spec.seed, spec.bug);
    let mut r = String::new();
    let _ = writeln!(r, "NODE SIMULATION FAILED: seed {}", spec.seed);
    let _ = writeln!(r, "replay: {replay}");
    let _ = writeln!(r, "config: {spec:?}");
    let _ = writeln!(r, "why: {}", failure.reason);
    let tail = failure.log.len().saturating_sub(lines);
    let _ = writeln!(
        r,
        "log (last {} of {} lines):",
        failure.log.len() - tail,
        failure.log.len()
    );
    for line in &failure.log[tail..] {
        let _ = writeln!(r, "  {line}");
    }
    let _ = writeln!(r, "why: {}", failure.reason);
    let _ = writeln!(
        r,
        "NODE SIMULATION FAILED: seed {}; replay: {replay}",
        spec.seed
    );
    r
}

// ---------------------------------------------------------------------------------------------
// The network seam.

/// A packet between two simulated nodes.
#[derive(Clone, Debug)]
enum Packet {
    Hello {
        cluster: ClusterId,
        node: NodeId,
        network: NetworkId,
        /// An answer to a hello (not answered again).
        answer: bool,
    },
    /// Every frame the sender had queued for this peer, in order (as the libp2p transport's
    /// writer sends everything queued for a peer in one write).
    Frames { from: NodeId, frames: Vec<Vec<u8>> },
}

enum Outgoing {
    Frame(NodeId, Vec<u8>),
    Forget(NodeId),
}

/// The driver's `Transport` over madsim's network: hands frames to the node's network task.
struct SimTransport {
    out: mpsc::UnboundedSender<Outgoing>,
}

impl Transport for SimTransport {
    fn send(&self, to: &NodeId, frame: Vec<u8>) {
        let _ = self.out.send(Outgoing::Frame(to.clone(), frame));
    }

    fn forget(&self, node: &NodeId) {
        let _ = self.out.send(Outgoing::Forget(node.clone()));
    }
}

struct Peer {
    addr: SocketAddr,
    last_heard: Instant,
    /// A member of this network announced by a hello (not only a sender of frames).
    announced: bool,
    up: bool,
}

/// The node's network task: hellos, liveness, frames both ways. Knows a peer's address only
/// from what it received.
async fn network_task(
    me: (ClusterId, NodeId, NetworkId),
    ep: Endpoint,
    world: Vec<SocketAddr>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::Sender<TransportEvent>,
) {
    let (cluster, id, network) = me;
    let own = ep.local_addr().expect("bound");
    let (in_tx, mut incoming) = mpsc::unbounded_channel::<(Packet, SocketAddr)>();
    let receiver = ep.clone();
    tokio::spawn(async move {
        while let Ok((payload, from)) = receiver.recv_from_raw(TAG).await {
            if let Ok(packet) = payload.downcast::<Packet>()
                && in_tx.send((*packet, from)).is_err()
            {
                break;
            }
        }
    });
    let mut peers: BTreeMap<NodeId, Peer> = BTreeMap::new();
    let mut foreign: BTreeSet<NodeId> = BTreeSet::new();
    let mut hello = tokio::time::interval(HELLO_INTERVAL);
    let hello_of = |answer| Packet::Hello {
        cluster: cluster.clone(),
        node: id.clone(),
        network: network.clone(),
        answer,
    };
    let mut turn = 0usize;
    loop {
        // Hellos, frames out and packets in, in turn (round robin): a flood of one never
        // starves the others, and the order is the same in every run of a seed.
        turn = turn.wrapping_add(1);
        let wake = poll_fn(|cx| {
            for i in 0..3 {
                let ready = match (turn + i) % 3 {
                    0 => hello.poll_tick(cx).map(|_| NetWake::Hello),
                    1 => out.poll_recv(cx).map(NetWake::Out),
                    _ => incoming.poll_recv(cx).map(NetWake::In),
                };
                if ready.is_ready() {
                    return ready;
                }
            }
            Poll::Pending
        })
        .await;
        let mut evs = Vec::new();
        match wake {
            NetWake::Hello => {
                for addr in &world {
                    if *addr != own {
                        send_packet(&ep, *addr, hello_of(false));
                    }
                }
                let now = Instant::now();
                for (node, peer) in peers.iter_mut() {
                    if peer.up && now.duration_since(peer.last_heard) > DOWN_AFTER {
                        peer.up = false;
                        if peer.announced {
                            evs.push(TransportEvent::Down(node.clone()));
                        }
                    }
                }
            }
            NetWake::Out(None) | NetWake::In(None) => return,
            NetWake::Out(Some(first)) => {
                // As the libp2p transport's writer: everything queued for a peer leaves in one
                // write, so a burst of frames costs one packet per peer, not one each.
                let mut batches: BTreeMap<NodeId, Vec<Vec<u8>>> = BTreeMap::new();
                let mut queued = 0;
                let mut next = Some(first);
                while let Some(outgoing) = next {
                    match outgoing {
                        Outgoing::Frame(to, frame) => {
                            batches.entry(to).or_default().push(frame);
                            queued += 1;
                        }
                        Outgoing::Forget(node) => {
                            // Frames queued before the forget are dropped with its queue.
                            peers.remove(&node);
                            batches.remove(&node);
                        }
                    }
                    next = if queued < SEND_BATCH_FRAMES_MAX {
                        out.try_recv().ok()
                    } else {
                        None
                    };
                }
                for (to, frames) in batches {
                    // A peer never heard from has no known address: like a failed dial.
                    if let Some(peer) = peers.get(&to) {
                        let from = id.clone();
                        send_packet(&ep, peer.addr, Packet::Frames { from, frames });
                    }
                }
            }
            NetWake::In(Some((packet, from))) => {
                let now = Instant::now();
                match packet {
                    Packet::Hello {
                        cluster,
                        node,
                        network: theirs,
                        answer,
                    } => {
                        if !answer {
                            send_packet(&ep, from, hello_of(true));
                        }
                        if theirs != network {
                            if foreign.insert(node.clone()) {
                                evs.push(TransportEvent::ForeignNetwork {
                                    node,
                                    network: theirs,
                                });
                            }
                        } else {
                            let peer = peers.entry(node.clone()).or_insert(Peer {
                                addr: from,
                                last_heard: now,
                                announced: false,
                                up: false,
                            });
                            peer.addr = from;
                            peer.last_heard = now;
                            if !peer.announced || !peer.up {
                                if peer.announced {
                                    evs.push(TransportEvent::Up(node.clone()));
                                }
                                peer.announced = true;
                                peer.up = true;
                                evs.push(TransportEvent::Discovered {
                                    cluster,
                                    node,
                                    network: theirs,
                                });
                            }
                        }
                    }
                    Packet::Frames { from: node, frames } => {
                        let peer = peers.entry(node.clone()).or_insert(Peer {
                            addr: from,
                            last_heard: now,
                            announced: false,
                            up: true,
                        });
                        peer.addr = from;
                        peer.last_heard = now;
                        if !peer.up {
                            peer.up = true;
                            if peer.announced {
                                evs.push(TransportEvent::Up(node.clone()));
                            }
                        }
                        evs.extend(frames.into_iter().map(|frame| TransportEvent::Message {
                            from: node.clone(),
                            frame,
                        }));
                    }
                }
            }
        }
        for ev in evs {
            if events.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Sends `packet` without waiting for it: madsim holds every send (and every receive) for at
/// least a simulated millisecond, so a task that awaited each send in turn would be a network
/// card of 1,000 packets a second with an unbounded queue in front of it, far below what the
/// real transport does. Packets on one link may be reordered, as madsim's latency already does.
fn send_packet(ep: &Endpoint, to: SocketAddr, packet: Packet) {
    let ep = ep.clone();
    tokio::spawn(async move {
        let _ = ep.send_to_raw(to, TAG, Box::new(packet)).await;
    });
}

/// What woke a node's network task.
enum NetWake {
    Hello,
    Out(Option<Outgoing>),
    In(Option<(Packet, SocketAddr)>),
}

// ---------------------------------------------------------------------------------------------
// The nodes.

/// One simulated machine: its identity, its disk (which outlives every process on it) and
/// what its running process published.
struct Machine {
    id: NodeId,
    cluster: ClusterId,
    ip: IpAddr,
    disk: SimDisk,
    /// The state the machine's first process records on its empty disk.
    fresh: Recovered,
    running: Mutex<Option<Running>>,
    /// Protocol violations its drivers reported, over all incarnations.
    violations: Mutex<u64>,
    /// Errors its drivers stopped with.
    errors: Mutex<Vec<String>>,
    incarnation: Mutex<u64>,
}

#[derive(Clone)]
struct Running {
    handle: Handle,
    router: axum::Router,
    metrics: Arc<Metrics>,
}

struct World {
    spec: NodeSimSpec,
    machines: Vec<Arc<Machine>>,
    sim_nodes: Mutex<Vec<NodeHandle>>,
    start: Instant,
    log: Mutex<Vec<String>>,
    history: Mutex<Vec<Op>>,
    /// Keys and values clients were told Stored (for the final disk check).
    acknowledged: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Per node: whether it is down (killed, not restarted yet).
    down: Mutex<Vec<bool>>,
    paused: Mutex<Vec<bool>>,
    /// How many faults hold each directed link clogged.
    clogged: Mutex<BTreeMap<(usize, usize), u32>>,
    faults: Mutex<usize>,
    kills: Mutex<usize>,
    /// The minority kept down (no fault restarts it) until healing.
    minority: Mutex<BTreeSet<usize>>,
    /// Calls at other nodes answered indefinitely while the minority was down (checked with
    /// `minority_strict`).
    minority_misses: Mutex<Vec<String>>,
}

impl World {
    fn micros(&self) -> u64 {
        Instant::now().duration_since(self.start).as_micros() as u64
    }

    fn log(&self, line: impl AsRef<str>) {
        let t = self.micros();
        self.log.lock().unwrap().push(format!(
            "{:>6}.{:03}ms {}",
            t / 1000,
            t % 1000,
            line.as_ref()
        ));
    }

    fn running(&self, ix: usize) -> Option<Running> {
        self.machines[ix].running.lock().unwrap().clone()
    }

    fn sim_node(&self, ix: usize) -> NodeHandle {
        self.sim_nodes.lock().unwrap()[ix].clone()
    }

    fn is_down(&self, ix: usize) -> bool {
        self.down.lock().unwrap()[ix]
    }

    fn kill(&self, ix: usize) {
        let m = &self.machines[ix];
        SimHandle::current().kill(self.sim_node(ix).id());
        m.disk.crash();
        *m.running.lock().unwrap() = None;
        self.down.lock().unwrap()[ix] = true;
        self.paused.lock().unwrap()[ix] = false;
        *self.kills.lock().unwrap() += 1;
        self.log(format!("kill {} ({})", m.id, m.cluster));
    }

    /// A call at a node outside the minority got no definite answer: recorded while the
    /// minority is down (the strict check counts them).
    fn minority_miss(&self, what: String) {
        if !self.minority.lock().unwrap().is_empty() {
            let at = self.micros();
            self.minority_misses
                .lock()
                .unwrap()
                .push(format!("{what} at {at}us"));
        }
    }

    fn restart(&self, ix: usize) {
        if !self.is_down(ix) || self.minority.lock().unwrap().contains(&ix) {
            return;
        }
        self.down.lock().unwrap()[ix] = false;
        SimHandle::current().restart(self.sim_node(ix).id());
        self.log(format!("restart {}", self.machines[ix].id));
    }

    fn clog(&self, a: usize, b: usize) {
        let mut c = self.clogged.lock().unwrap();
        let n = c.entry((a, b)).or_insert(0);
        *n += 1;
        if *n == 1 {
            NetSim::current().clog_link(self.sim_node(a).id(), self.sim_node(b).id());
        }
    }

    fn unclog(&self, a: usize, b: usize) {
        let mut c = self.clogged.lock().unwrap();
        if let Some(n) = c.get_mut(&(a, b)) {
            *n -= 1;
            if *n == 0 {
                c.remove(&(a, b));
                NetSim::current().unclog_link(self.sim_node(a).id(), self.sim_node(b).id());
            }
        }
    }

    /// Clogs both directions between the two groups; returns the links to unclog.
    fn partition(&self, side: &[usize]) -> Vec<(usize, usize)> {
        let n = self.machines.len();
        let mut links = Vec::new();
        for &a in side {
            for b in 0..n {
                if !side.contains(&b) {
                    links.push((a, b));
                    links.push((b, a));
                }
            }
        }
        for &(a, b) in &links {
            self.clog(a, b);
        }
        links
    }

    fn heal(&self, links: &[(usize, usize)]) {
        for &(a, b) in links {
            self.unclog(a, b);
        }
    }

    fn nodes_of_cluster(&self, c: usize) -> Vec<usize> {
        let k = self.spec.nodes_per_cluster;
        (c * k..(c + 1) * k).collect()
    }
}

/// The process of one simulated machine, from its disk: what `replicator run` does, with the
/// simulated network and disk in place of libp2p and a file.
async fn node_process(machine: Arc<Machine>, world_addrs: Vec<SocketAddr>, bug: Option<DriverBug>) {
    let incarnation = {
        let mut i = machine.incarnation.lock().unwrap();
        *i += 1;
        *i
    };
    let fail = |what: String| {
        machine
            .errors
            .lock()
            .unwrap()
            .push(format!("incarnation {incarnation}: {what}"));
    };
    // As `replicator run`: open, bind the database to this identity, load what it recorded.
    // A node whose disk fails cannot start; its supervisor starts it again a moment later.
    let (storage, network, recovered) = loop {
        let opened =
            Storage::open_sim(&machine.disk, Some(&machine.fresh)).and_then(|mut storage| {
                storage.bind_identity(machine.id.as_str())?;
                let network = storage.network()?;
                let loaded = storage.load()?;
                Ok((storage, network, loaded.recovered))
            });
        match opened {
            Ok(started) => break started,
            Err(_) if machine.disk.is_failing() => sleep(Duration::from_millis(500)).await,
            Err(e) => return fail(format!("cannot open the storage: {e:#}")),
        }
    };
    let ep = match Endpoint::bind(SocketAddr::new(machine.ip, PORT)).await {
        Ok(ep) => ep,
        Err(e) => return fail(format!("cannot bind: {e}")),
    };
    let (events_tx, events) = mpsc::channel(EVENTS_QUEUE_LEN);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(network_task(
        (machine.cluster.clone(), machine.id.clone(), network),
        ep,
        world_addrs,
        out_rx,
        events_tx,
    ));
    let config = Config::default();
    let value_bytes_max = config.value_bytes_max;
    let metrics = Arc::new(Metrics::default());
    let built = Driver::with_bug(
        Parts {
            config,
            id: machine.id.clone(),
            cluster: machine.cluster.clone(),
            recovered,
            storage,
            transport: SimTransport { out: out_tx },
            events,
            metrics: metrics.clone(),
        },
        bug,
    );
    let (driver, handle) = match built {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot start the driver: {e:#}")),
    };
    let router = http::router(http::Api {
        driver: handle.clone(),
        metrics: metrics.clone(),
        value_bytes_max,
        network_open: false,
        // Writes need the API token (the clients send it): the check runs on every HTTP PUT.
        auth: Arc::new(http::Auth {
            token: Some(API_TOKEN.into()),
            writes: true,
            reads: false,
        }),
    });
    *machine.running.lock().unwrap() = Some(Running {
        handle,
        router,
        metrics: metrics.clone(),
    });
    let result = driver.run().await;
    *machine.violations.lock().unwrap() += metrics
        .violations
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = result {
        fail(format!("the driver stopped: {e:#}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn world(spec: NodeSimSpec) -> Result<NodeSimStats, NodeSimFailure> {
    let sim = SimHandle::current();
    let network = NetworkId::new(format!("net-{:016x}", spec.seed));
    let n = spec.nodes();
    let mut founders = Vec::new();
    let mut machines = Vec::new();
    for ix in 0..n {
        let c = ix / spec.nodes_per_cluster;
        let k = ix % spec.nodes_per_cluster;
        let cluster = ClusterId::new(format!("c{c}"));
        let id = NodeId::new(format!("n{c}-{k}"));
        founders.push((cluster.clone(), id.clone()));
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, c as u8 + 1, k as u8 + 1));
        let fsync = Duration::from_micros(spec.fsync_us.0)..Duration::from_micros(spec.fsync_us.1);
        machines.push((ix, id, cluster, ip, SimDisk::new(fsync)));
    }
    let machines: Vec<Arc<Machine>> = machines
        .into_iter()
        .map(|(_, id, cluster, ip, disk)| {
            // A network founded at once: every founder records every founding member.
            let others: Vec<_> = founders.iter().filter(|(_, n)| *n != id).cloned().collect();
            Arc::new(Machine {
                id,
                cluster,
                ip,
                disk,
                fresh: Recovered::founder(network.clone()).with_members(others),
                running: Mutex::new(None),
                violations: Mutex::new(0),
                errors: Mutex::new(Vec::new()),
                incarnation: Mutex::new(0),
            })
        })
        .collect();
    let addrs: Vec<SocketAddr> = machines
        .iter()
        .map(|m| SocketAddr::new(m.ip, PORT))
        .collect();
    let world = Arc::new(World {
        spec: spec.clone(),
        machines: machines.clone(),
        sim_nodes: Mutex::new(Vec::new()),
        start: Instant::now(),
        log: Mutex::new(Vec::new()),
        history: Mutex::new(Vec::new()),
        acknowledged: Mutex::new(BTreeMap::new()),
        down: Mutex::new(vec![false; n]),
        paused: Mutex::new(vec![false; n]),
        clogged: Mutex::new(BTreeMap::new()),
        faults: Mutex::new(0),
        kills: Mutex::new(0),
        minority: Mutex::new(BTreeSet::new()),
        minority_misses: Mutex::new(Vec::new()),
    });
    for m in &machines {
        let machine = m.clone();
        let addrs = addrs.clone();
        let bug = spec.bug;
        let node = sim
            .create_node()
            .name(m.id.to_string())
            .ip(m.ip)
            .init(move || node_process(machine.clone(), addrs.clone(), bug))
            .build();
        world.sim_nodes.lock().unwrap().push(node);
    }
    world.log(format!("{n} nodes started: {spec:?}"));

    // Safety phase: clients and faults.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..spec.clients {
        clients.push(tokio::spawn(client(world.clone(), c, stop.clone())));
    }
    let faults = tokio::spawn(fault_injector(world.clone(), stop.clone()));
    if spec.minority_down {
        // While writes are in flight: the clients started already.
        sleep(Duration::from_millis(thread_rng().gen_range(100..600))).await;
        let minority = spec.minority();
        let names: Vec<String> = minority
            .iter()
            .map(|&ix| world.machines[ix].id.to_string())
            .collect();
        world.log(format!("a minority of every cluster down: kill {names:?}"));
        world
            .minority
            .lock()
            .unwrap()
            .extend(minority.iter().copied());
        for ix in minority {
            if !world.is_down(ix) {
                world.kill(ix);
            }
        }
        sleep(Duration::from_millis(spec.safety_ms.saturating_sub(600))).await;
    } else {
        sleep(Duration::from_millis(spec.safety_ms)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = faults.await;

    // Liveness phase: heal everything.
    world.log("heal: no more loss, every link unclogged, every node resumed and restarted");
    NetSim::current().update_config(|c| c.packet_loss_rate = 0.0);
    for m in &machines {
        m.disk.set_failing(false);
    }
    let links: Vec<(usize, usize)> = world.clogged.lock().unwrap().keys().copied().collect();
    for (a, b) in links {
        NetSim::current().unclog_link(world.sim_node(a).id(), world.sim_node(b).id());
    }
    world.clogged.lock().unwrap().clear();
    world.minority.lock().unwrap().clear();
    for ix in 0..n {
        if std::mem::take(&mut world.paused.lock().unwrap()[ix]) {
            sim.resume(world.sim_node(ix).id());
        }
        world.restart(ix);
    }
    let healed = Instant::now();
    // Every check runs; a failure names each one that broke, safety first.
    let mut liveness_failures: Vec<String> = Vec::new();
    for (c, task) in clients.into_iter().enumerate() {
        let left = LIVENESS_WITHIN.saturating_sub(healed.elapsed());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => liveness_failures.push(format!("client {c} failed: {e}")),
            Err(_) => liveness_failures.push(format!(
                "liveness: client {c} still waits for an answer {LIVENESS_WITHIN:?} after healing"
            )),
        }
    }
    if liveness_failures.is_empty()
        && let Err(e) = liveness(&world, healed).await
    {
        liveness_failures.push(e);
    }
    // The disks must show it too: every acknowledged key stored everywhere once settled.
    let settled = liveness_failures.is_empty();
    let settle_ms = Instant::now().duration_since(healed).as_millis() as u64;

    // The end: every node crashes; every disk is loaded by the real storage code.
    sleep(Duration::from_millis(200)).await;
    for ix in 0..n {
        if !world.is_down(ix) {
            world.kill(ix);
        }
    }
    let mut failures: Vec<String> = Vec::new();
    let mut disks = Vec::new();
    for m in &machines {
        match Storage::open_sim(&m.disk, None).and_then(|mut s| s.load()) {
            Ok(l) => disks.push(l.recovered),
            Err(e) => {
                failures.push(format!("the disk of {} does not load: {e:#}", m.id));
                disks.push(Recovered::joiner(network.clone()));
            }
        }
    }
    let history = world.history.lock().unwrap().clone();
    for v in linearizability::check_all(&history).into_iter().take(3) {
        failures.push(format!("not linearizable: {v}"));
    }
    failures.extend(check_disks(&world, &disks, settled));
    failures.extend(check_honest(&history, &disks));
    for m in &machines {
        let v = *m.violations.lock().unwrap()
            + m.running.lock().unwrap().as_ref().map_or(0, |r| {
                r.metrics
                    .violations
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
        if v > 0 {
            failures.push(format!("{} reported {v} protocol violations", m.id));
        }
        if let Some(e) = m.errors.lock().unwrap().first() {
            failures.push(format!("{}: {e}", m.id));
        }
    }
    if spec.minority_strict {
        let misses = world.minority_misses.lock().unwrap();
        if let Some(first) = misses.first() {
            failures.push(format!(
                "liveness under a minority down: {} calls at the majority had no definite answer, first: {first}",
                misses.len()
            ));
        }
    }
    failures.extend(liveness_failures);
    let failure = (!failures.is_empty()).then(|| failures.join("; "));

    let mut hasher = std::hash::DefaultHasher::new();
    history.hash(&mut hasher);
    world.log.lock().unwrap().hash(&mut hasher);
    for d in &disks {
        format!("{:?}", d.keys).hash(&mut hasher);
    }
    let hash = hasher.finish();
    let log = world.log.lock().unwrap().clone();
    if let Some(reason) = failure {
        return Err(NodeSimFailure { reason, log, hash });
    }
    let writes_lost = machines.iter().map(|m| m.disk.stats().changes_lost).sum();
    let writes_refused = machines.iter().map(|m| m.disk.stats().writes_refused).sum();
    Ok(NodeSimStats {
        ops: history.len(),
        stored: world.acknowledged.lock().unwrap().len(),
        faults: *world.faults.lock().unwrap(),
        kills: *world.kills.lock().unwrap(),
        sim_ms: world.micros() / 1000,
        messages: NetSim::current().stat().msg_count,
        writes_lost,
        writes_refused,
        settle_ms,
        hash,
    })
}

/// After healing: a fresh PUT is stored through every cluster, then every node converges
/// (full membership, no open reservation, the same keys).
async fn liveness(world: &Arc<World>, healed: Instant) -> Result<(), String> {
    let spec = &world.spec;
    for c in 0..spec.clusters {
        let ix = world.nodes_of_cluster(c)[0];
        let mut attempt = 0;
        loop {
            if healed.elapsed() > LIVENESS_WITHIN {
                return Err(format!(
                    "liveness: no PUT stored through cluster c{c} within {LIVENESS_WITHIN:?} of healing"
                ));
            }
            let Some(running) = world.running(ix) else {
                sleep(Duration::from_millis(100)).await;
                continue;
            };
            // A fresh key each attempt: an attempt that met a settling view (Busy) or a silent
            // node (Unavailable) says nothing about the next.
            attempt += 1;
            let key = format!("probe-c{c}-{attempt}");
            let value = format!("probe-{c}-{attempt}");
            let cmd = Command::Put {
                key: Key::new(&key),
                value: Value::from(value.as_str()),
                request: None,
            };
            let invoked = world.micros();
            let reply = tokio::time::timeout(CALL_TIMEOUT, running.handle.call(cmd)).await;
            let returned = world.micros();
            let result = reply
                .as_ref()
                .map_or(PutResult::Unavailable, |r| put_result(r.clone()));
            world.history.lock().unwrap().push(Op::put(
                1_000 + c as u64,
                key.clone(),
                value.clone().into_bytes(),
                invoked,
                Some(returned),
                result.clone(),
            ));
            match result {
                PutResult::Stored => {
                    world
                        .acknowledged
                        .lock()
                        .unwrap()
                        .insert(key.clone(), value.clone().into_bytes());
                    world.log(format!("liveness: probe PUT {key} stored through c{c}"));
                    break;
                }
                PutResult::Exists { value: v } => {
                    return Err(format!(
                        "liveness: the fresh probe key {key} exists with {:?}",
                        String::from_utf8_lossy(&v)
                    ));
                }
                _ => {
                    world.log(format!("liveness: probe PUT {key} through c{c}: {reply:?}"));
                    if attempt == 5 {
                        log_statuses(world).await;
                    }
                    sleep(Duration::from_millis(200)).await
                }
            }
        }
    }
    let n = world.machines.len();
    loop {
        let mut why = None;
        let mut stored = BTreeSet::new();
        for ix in 0..n {
            let Some(running) = world.running(ix) else {
                why = Some(format!("{} is not running", world.machines[ix].id));
                break;
            };
            let Ok(Some(status)) =
                tokio::time::timeout(Duration::from_secs(1), running.handle.status()).await
            else {
                why = Some(format!("{} does not answer status", world.machines[ix].id));
                break;
            };
            if status.membership.len() != n {
                why = Some(format!(
                    "{} counts {} members of {n}",
                    status.id,
                    status.membership.len()
                ));
                break;
            }
            if status.stats.accepted_undecided > 0 || status.stats.held_messages > 0 {
                why = Some(format!(
                    "{} still holds {} accepted values not known decided, {} held messages",
                    status.id, status.stats.accepted_undecided, status.stats.held_messages
                ));
                break;
            }
            stored.insert(status.stats.keys_stored);
        }
        if why.is_none() && stored.len() > 1 {
            why = Some(format!("nodes store different numbers of keys: {stored:?}"));
        }
        match why {
            None => {
                world.log("liveness: every view converged, every accepted value decided");
                return Ok(());
            }
            Some(why) if healed.elapsed() > LIVENESS_WITHIN => {
                return Err(format!(
                    "liveness: not settled {LIVENESS_WITHIN:?} after healing: {why}"
                ));
            }
            Some(_) => sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What every running node says about itself, into the run's log (for failure reports).
async fn log_statuses(world: &World) {
    for ix in 0..world.machines.len() {
        let Some(running) = world.running(ix) else {
            world.log(format!("status {}: not running", world.machines[ix].id));
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(1), running.handle.status()).await {
            Ok(Some(s)) => world.log(format!(
                "status {}: ready {} removed {} members {} digest {:?} peers up {:?} stats {:?}",
                s.id,
                s.ready,
                s.removed,
                s.membership.len(),
                s.membership.digest(),
                s.peers
                    .iter()
                    .filter(|p| p.up)
                    .map(|p| p.peer.as_str())
                    .collect::<Vec<_>>(),
                s.stats
            )),
            _ => world.log(format!("status {}: no answer", world.machines[ix].id)),
        }
    }
}

/// No client was told its PUT had no effect (Busy, Overloaded, not ready, Exists with another
/// value) when its value is what a disk stores: "this one had no effect" must be true.
fn check_honest(history: &[Op], disks: &[Recovered]) -> Vec<String> {
    let mut told: BTreeMap<(&str, &[u8]), Vec<&PutResult>> = BTreeMap::new();
    for op in history {
        if let linearizability::OpKind::Put { value, result } = &op.kind {
            told.entry((op.key.as_str(), value.as_slice()))
                .or_default()
                .push(result);
        }
    }
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for disk in disks {
        for (key, state) in &disk.keys {
            let Some(chosen) = state.stored() else {
                continue;
            };
            if !seen.insert(key.clone()) {
                continue;
            }
            let Some(results) = told.get(&(key.as_str(), chosen.value.as_bytes())) else {
                continue;
            };
            let no_effect = results.iter().all(|r| {
                matches!(
                    r,
                    PutResult::Busy | PutResult::NoEffect | PutResult::Exists { .. }
                )
            });
            if no_effect {
                failures.push(format!(
                    "honesty: key {key} stores {:?}, but every PUT of it was told it had no effect: {results:?}",
                    chosen.value
                ));
            }
        }
    }
    failures.truncate(5);
    failures
}

/// Every disk agrees: no key with two values. Every key a client was told Stored is kept
/// with that value, and how exactly depends on whether the network settled:
/// - `settled` (every node answered with nothing undecided): stored on every disk (catch-up
///   and recovery brought the decision everywhere);
/// - not settled (a liveness failure, reported on its own): stored by some disk, or accepted
///   with that value by a majority of every cluster's disks (chosen; learning it is what did
///   not finish). Anything less lost it: a safety failure whatever the liveness.
fn check_disks(world: &World, disks: &[Recovered], settled: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let mut values: BTreeMap<&Key, (&Value, &NodeId)> = BTreeMap::new();
    for (m, disk) in world.machines.iter().zip(disks) {
        for (key, state) in &disk.keys {
            let Some(chosen) = state.stored() else {
                continue;
            };
            match values.get(key) {
                Some((v, other)) if **v != chosen.value => {
                    failures.push(format!(
                        "agreement: key {key} is stored as {:?} on {} and as {:?} on {}",
                        v, other, chosen.value, m.id
                    ));
                }
                Some(_) => {}
                None => {
                    values.insert(key, (&chosen.value, &m.id));
                }
            }
        }
    }
    let mut only_accepted = 0;
    for (key, value) in world.acknowledged.lock().unwrap().iter() {
        let key = Key::new(key);
        let holds = |s: Option<&DurableKey>| {
            s.and_then(DurableKey::value)
                .is_some_and(|v| v.as_bytes() == value.as_slice())
        };
        let stored_by: Vec<&NodeId> = world
            .machines
            .iter()
            .zip(disks)
            .filter(|(_, d)| d.keys.get(&key).is_some_and(DurableKey::is_stored))
            .map(|(m, _)| &m.id)
            .collect();
        let missing: Vec<String> = world
            .machines
            .iter()
            .zip(disks)
            .filter(|(_, d)| {
                let s = d.keys.get(&key);
                !(holds(s) && s.is_some_and(DurableKey::is_stored))
            })
            .map(|(m, d)| match d.keys.get(&key) {
                None => format!("{} holds nothing", m.id),
                Some(s) => format!("{} holds {s:?}", m.id),
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        // Chosen without every disk storing it: a majority of every cluster accepted it.
        let mut clusters: BTreeMap<&ClusterId, (usize, usize)> = BTreeMap::new();
        for (m, d) in world.machines.iter().zip(disks) {
            let e = clusters.entry(&m.cluster).or_default();
            e.0 += 1;
            e.1 += usize::from(holds(d.keys.get(&key)));
        }
        let chosen = clusters
            .values()
            .all(|(members, holding)| *holding > members / 2);
        let kept = !settled && (!stored_by.is_empty() || chosen);
        if kept {
            only_accepted += 1;
            continue;
        }
        failures.push(format!(
            "durability: key {key} was acknowledged Stored with {:?}, but {}",
            String::from_utf8_lossy(value),
            missing.join(", ")
        ));
    }
    if only_accepted > 0 {
        world.log(format!(
            "disks: {only_accepted} acknowledged keys not stored on every disk yet (the network had not settled)"
        ));
    }
    failures.truncate(5);
    failures
}

// ---------------------------------------------------------------------------------------------
// Faults.

/// Injects faults until `stop`; returns nothing to wait for (every fault heals itself or is
/// healed by the liveness phase).
async fn fault_injector(world: Arc<World>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let spec = world.spec.clone();
    let n = world.machines.len();
    if spec.faults.is_empty() {
        return;
    }
    loop {
        let gap = thread_rng().gen_range(spec.fault_gap_ms.0..=spec.fault_gap_ms.1);
        sleep(Duration::from_millis(gap)).await;
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let kind = spec.faults[thread_rng().gen_range(0..spec.faults.len())];
        *world.faults.lock().unwrap() += 1;
        let hold = Duration::from_millis(thread_rng().gen_range(200..3000));
        let w = world.clone();
        match kind {
            FaultKind::Kill => {
                let ix = thread_rng().gen_range(0..n);
                // Most kills strike while a write of the node waits for its fsync (where
                // durability bugs live): wait up to 50 ms for one.
                if thread_rng().gen_bool(0.8) {
                    for _ in 0..50 {
                        if w.machines[ix].disk.has_unsynced() {
                            break;
                        }
                        sleep(Duration::from_millis(1)).await;
                    }
                }
                if w.is_down(ix) {
                    continue;
                }
                w.kill(ix);
                let down_for = Duration::from_millis(thread_rng().gen_range(0..2000));
                tokio::spawn(async move {
                    sleep(down_for).await;
                    w.restart(ix);
                });
            }
            FaultKind::CrashCluster => {
                let c = thread_rng().gen_range(0..spec.clusters);
                let side = w.nodes_of_cluster(c);
                for _ in 0..50 {
                    if side.iter().any(|&ix| w.machines[ix].disk.has_unsynced()) {
                        break;
                    }
                    sleep(Duration::from_millis(1)).await;
                }
                w.log(format!("power loss of cluster c{c}"));
                for &ix in &side {
                    if !w.is_down(ix) {
                        w.kill(ix);
                    }
                }
                let down_for = Duration::from_millis(thread_rng().gen_range(50..1000));
                tokio::spawn(async move {
                    sleep(down_for).await;
                    for &ix in &side {
                        w.restart(ix);
                    }
                });
            }
            FaultKind::RestartClusterPartitioned => {
                let c = thread_rng().gen_range(0..spec.clusters);
                let side = w.nodes_of_cluster(c);
                w.log(format!(
                    "partition cluster c{c} from the rest; restart all of it"
                ));
                let links = w.partition(&side);
                for &ix in &side {
                    if !w.is_down(ix) {
                        w.kill(ix);
                    }
                }
                let down_for = Duration::from_millis(thread_rng().gen_range(50..1000));
                tokio::spawn(async move {
                    sleep(down_for).await;
                    for &ix in &side {
                        w.restart(ix);
                    }
                    sleep(hold).await;
                    w.log(format!("heal the partition of c{c}"));
                    w.heal(&links);
                });
            }
            FaultKind::IsolateNode => {
                let ix = thread_rng().gen_range(0..n);
                w.log(format!("isolate {}", w.machines[ix].id));
                let links = w.partition(&[ix]);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!("heal the isolation of {}", w.machines[ix].id));
                    w.heal(&links);
                });
            }
            FaultKind::IsolateCluster => {
                let c = thread_rng().gen_range(0..spec.clusters);
                w.log(format!("isolate cluster c{c}"));
                let links = w.partition(&w.nodes_of_cluster(c));
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!("heal the isolation of c{c}"));
                    w.heal(&links);
                });
            }
            FaultKind::Split => {
                let side: Vec<usize> = (0..n).filter(|_| thread_rng().gen_bool(0.5)).collect();
                if side.is_empty() || side.len() == n {
                    continue;
                }
                let names: Vec<String> =
                    side.iter().map(|&i| w.machines[i].id.to_string()).collect();
                w.log(format!("split {names:?} from the rest"));
                let links = w.partition(&side);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log("heal the split");
                    w.heal(&links);
                });
            }
            FaultKind::Clog => {
                let a = thread_rng().gen_range(0..n);
                let b = (a + thread_rng().gen_range(1..n)) % n;
                w.log(format!("clog {} -> {}", w.machines[a].id, w.machines[b].id));
                w.clog(a, b);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!(
                        "unclog {} -> {}",
                        w.machines[a].id, w.machines[b].id
                    ));
                    w.unclog(a, b);
                });
            }
            FaultKind::DiskFull => {
                let ix = thread_rng().gen_range(0..n);
                let disk = w.machines[ix].disk.clone();
                if disk.is_failing() {
                    continue;
                }
                w.log(format!("the disk of {} fails", w.machines[ix].id));
                disk.set_failing(true);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!("the disk of {} works again", w.machines[ix].id));
                    disk.set_failing(false);
                });
            }
            FaultKind::Pause => {
                let ix = thread_rng().gen_range(0..n);
                if w.is_down(ix) || w.paused.lock().unwrap()[ix] {
                    continue;
                }
                w.paused.lock().unwrap()[ix] = true;
                w.log(format!("pause {}", w.machines[ix].id));
                SimHandle::current().pause(w.sim_node(ix).id());
                let hold = Duration::from_millis(thread_rng().gen_range(50..1500));
                tokio::spawn(async move {
                    sleep(hold).await;
                    if std::mem::take(&mut w.paused.lock().unwrap()[ix]) {
                        w.log(format!("resume {}", w.machines[ix].id));
                        SimHandle::current().resume(w.sim_node(ix).id());
                    }
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What one call was answered, in terms both paths (handle and HTTP) share.
enum Answer {
    Put(PutResult),
    Get(GetResult),
}

async fn client(world: Arc<World>, c: usize, stop: Arc<std::sync::atomic::AtomicBool>) {
    let spec = world.spec.clone();
    let n = world.machines.len();
    let mut seq = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        sleep(Duration::from_millis(thread_rng().gen_range(0..40))).await;
        let ix = thread_rng().gen_range(0..n);
        if spec.minority().contains(&ix) {
            continue;
        }
        let Some(running) = world.running(ix) else {
            continue;
        };
        let via_http = thread_rng().gen_bool(spec.http_share);
        let hot = thread_rng().gen_bool(spec.hot_share);
        let key = if hot {
            format!("hot-{}", thread_rng().gen_range(0..spec.hot_keys))
        } else if thread_rng().gen_bool(0.5) && seq > 1 {
            // A key this client wrote before (a read of it must see it).
            format!("k-{c}-{}", thread_rng().gen_range(1..seq))
        } else {
            format!("k-{c}-{seq}")
        };
        if spec.bursts && thread_rng().gen_bool(0.01) {
            burst(&world, c, seq, ix, &running).await;
            continue;
        }
        if thread_rng().gen_bool(spec.read_share) {
            let invoked = world.micros();
            let answer = call(
                &world,
                ix,
                &running,
                via_http,
                CallKind::Get { key: key.clone() },
            )
            .await;
            let returned = world.micros();
            let result = match answer {
                Some(Answer::Get(r)) => r,
                _ => GetResult::Unavailable,
            };
            if matches!(result, GetResult::Unavailable) {
                world.minority_miss(format!("GET {key} at {}", world.machines[ix].id));
            }
            world.history.lock().unwrap().push(Op::get(
                c as u64,
                key,
                invoked,
                Some(returned),
                result,
            ));
            continue;
        }
        let value = format!("v-{c}-{seq}");
        let request = thread_rng()
            .gen_bool(spec.request_id_share)
            .then(|| format!("r-{c}-{seq}"));
        let invoked = world.micros();
        // The op's answer so far; `Pending` while no attempt was answered.
        let mut result = PutResult::Pending;
        let mut returned = None;
        for attempt in 0..ATTEMPTS_MAX {
            // A retry goes to the same node (the request record lives there), once it runs.
            let running = if attempt == 0 {
                Some(running.clone())
            } else {
                sleep(Duration::from_millis(200)).await;
                world.running(ix)
            };
            let Some(running) = running else {
                continue;
            };
            let kind = CallKind::Put {
                key: key.clone(),
                value: value.clone(),
                request: request.clone(),
            };
            let answer = call(&world, ix, &running, via_http, kind).await;
            let now = world.micros();
            let earlier_indeterminate = attempt > 0;
            match answer {
                Some(Answer::Put(r)) => {
                    returned = Some(now);
                    result = match r {
                        // Its own earlier attempt won: the op took effect within its interval.
                        PutResult::Exists { value: w } if w == value.as_bytes() => {
                            PutResult::Stored
                        }
                        // The retry was not even taken (overloaded, not ready): it says
                        // nothing about the earlier attempt, which may still commit.
                        PutResult::NoEffect if earlier_indeterminate => PutResult::Unavailable,
                        r => r,
                    };
                }
                _ => {
                    if result == PutResult::Pending {
                        returned = None;
                    }
                }
            }
            let definite = !matches!(result, PutResult::Unavailable | PutResult::Pending);
            if definite || request.is_none() {
                break;
            }
        }
        let returned = if result == PutResult::Pending {
            None
        } else {
            returned
        };
        if matches!(
            result,
            PutResult::Unavailable | PutResult::Pending | PutResult::NoEffect
        ) {
            world.minority_miss(format!(
                "PUT {key} at {}: {result:?}",
                world.machines[ix].id
            ));
        }
        if result == PutResult::Stored {
            world
                .acknowledged
                .lock()
                .unwrap()
                .insert(key.clone(), value.clone().into_bytes());
        }
        world.history.lock().unwrap().push(Op::put(
            c as u64,
            key,
            value.into_bytes(),
            invoked,
            returned,
            result,
        ));
    }
}

/// More PUTs of fresh keys at once than the driver queues (backpressure): the calls it cannot
/// take are answered Overloaded, and those must have had no effect.
async fn burst(world: &Arc<World>, c: usize, seq: u64, ix: usize, running: &Running) {
    const BURST_CALLS: usize = REQUEST_QUEUE_LEN + 200;
    world.log(format!(
        "client {c}: a burst of {BURST_CALLS} PUTs at {}",
        world.machines[ix].id
    ));
    let mut calls = Vec::with_capacity(BURST_CALLS);
    for i in 0..BURST_CALLS {
        let handle = running.handle.clone();
        let key = format!("burst-{c}-{seq}-{i}");
        let value = format!("b-{c}-{seq}-{i}");
        let invoked = world.micros();
        let w = world.clone();
        calls.push(tokio::spawn(async move {
            let cmd = Command::Put {
                key: Key::new(&key),
                value: Value::from(value.as_str()),
                request: None,
            };
            let reply = tokio::time::timeout(CALL_TIMEOUT, handle.call(cmd)).await;
            let result = reply.map_or(PutResult::Unavailable, put_result);
            if result == PutResult::Stored {
                w.acknowledged
                    .lock()
                    .unwrap()
                    .insert(key.clone(), value.clone().into_bytes());
            }
            let returned = w.micros();
            w.history.lock().unwrap().push(Op::put(
                c as u64,
                key,
                value.into_bytes(),
                invoked,
                Some(returned),
                result,
            ));
        }));
    }
    for call in calls {
        let _ = call.await;
    }
}

enum CallKind {
    Put {
        key: String,
        value: String,
        request: Option<String>,
    },
    Get {
        key: String,
    },
}

/// One call to node `ix`: through its driver handle, or through its HTTP router run as a task
/// of the node (a kill of the node cuts it, as it cuts a connection). `None`: no answer.
async fn call(
    world: &World,
    ix: usize,
    running: &Running,
    via_http: bool,
    kind: CallKind,
) -> Option<Answer> {
    if via_http {
        let request = match &kind {
            CallKind::Put {
                key,
                value,
                request,
            } => {
                let mut b = axum::http::Request::builder()
                    .method("PUT")
                    .uri(format!("/store/{key}"));
                if let Some(r) = request {
                    b = b.header("x-request-id", r.as_str());
                }
                b = b.header("authorization", format!("Bearer {API_TOKEN}"));
                b.body(axum::body::Body::from(value.clone())).ok()?
            }
            CallKind::Get { key } => axum::http::Request::builder()
                .method("GET")
                .uri(format!("/store/{key}"))
                .body(axum::body::Body::empty())
                .ok()?,
        };
        let router = running.router.clone();
        // The node's current process (a handle kept from before a restart spawns nowhere).
        let node = SimHandle::current().get_node(world.sim_node(ix).id())?;
        let task = node.spawn(async move {
            use tower::ServiceExt;
            let response = router.oneshot(request).await.ok()?;
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .ok()?
                .to_bytes();
            Some((status, body.to_vec()))
        });
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, task)
            .await
            .ok()?
            .ok()??;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let error = json.get("error").and_then(|e| e.as_str()).unwrap_or("");
        return Some(match kind {
            CallKind::Put { .. } => Answer::Put(match (status, error) {
                (201, _) => PutResult::Stored,
                (409, "exists") => PutResult::Exists {
                    value: json
                        .get("value")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .as_bytes()
                        .to_vec(),
                },
                (409, "busy") => PutResult::Busy,
                (503, "unavailable") => PutResult::Unavailable,
                (400 | 401 | 403 | 410 | 413, _)
                | (409, "request_id_reused")
                | (503, "not_ready" | "removed" | "storage_unavailable") => PutResult::NoEffect,
                // "overloaded" is also what the handler says when the driver dropped a call it
                // had taken (it may still commit), and anything else is unknown too.
                _ => PutResult::Unavailable,
            }),
            CallKind::Get { .. } => Answer::Get(match status {
                200 => GetResult::Value(body),
                404 if error == "unknown_key" => GetResult::Unknown,
                _ => GetResult::Unavailable,
            }),
        });
    }
    match kind {
        CallKind::Put {
            key,
            value,
            request,
        } => {
            let cmd = Command::Put {
                key: Key::new(key),
                value: Value::from(value.as_str()),
                request: request.map(RequestId::new),
            };
            let reply = tokio::time::timeout(CALL_TIMEOUT, running.handle.call(cmd))
                .await
                .ok()?;
            Some(Answer::Put(put_result(reply)))
        }
        CallKind::Get { key } => {
            let reply = tokio::time::timeout(
                CALL_TIMEOUT,
                running.handle.call(Command::Get { key: Key::new(key) }),
            )
            .await
            .ok()?;
            Some(Answer::Get(match reply {
                Ok(Reply::Get(GetOutcome::Value(v))) => GetResult::Value(v.as_bytes().to_vec()),
                Ok(Reply::Get(GetOutcome::Unknown)) => GetResult::Unknown,
                _ => GetResult::Unavailable,
            }))
        }
    }
}

/// What a PUT call's answer tells the linearizability checker (one mapping for every client).
fn put_result(reply: Result<Reply, CallError>) -> PutResult {
    match reply {
        Ok(Reply::Put(o)) => match o {
            PutOutcome::Stored => PutResult::Stored,
            PutOutcome::Exists { value } => PutResult::Exists {
                value: value.as_bytes().to_vec(),
            },
            PutOutcome::Busy => PutResult::Busy,
            PutOutcome::Unavailable(_) => PutResult::Unavailable,
            PutOutcome::Invalid(_) | PutOutcome::Overloaded | PutOutcome::NotReady(_) => {
                PutResult::NoEffect
            }
        },
        // Nothing was queued: no effect.
        Err(CallError::Overloaded) => PutResult::NoEffect,
        // Taken, then no answer (the driver stopped, or stalled): unknown.
        _ => PutResult::Unavailable,
    }
}
