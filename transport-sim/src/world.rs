//! The simulated world: its nodes, clock and event queue; the driver's commands; stepping
//! through events; feeding a node an input and executing its outputs. The other jobs of the
//! world live in the files below `world/`.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicator_core::wire::{self, Answer, Message, Request, Response};
use replicator_core::{
    CallId, ClusterId, Command, DiskImage, DurableKey, ImageGuard, Input, Key, NetworkId, Node,
    NodeId, Note, Output, Recovered, RemoveOutcome, Reply, Time, Urgency, WriteId, WriteOp,
};

use crate::obs::{Obs, WorldStats};
use crate::spec::{FaultKind, Micros, NodeIx, TraceMode, WorldSpec};
use crate::trace_event::{MessageAbout, TraceEvent, TraceWhat, WorldChange};

mod discovery;
mod disk;
mod events;
mod lifecycle;
mod minority;
mod nemesis;
mod network;
mod tracer;

use events::{Ev, Scheduled};
use tracer::Tracer;

struct SimNode {
    id: NodeId,
    cluster: usize,
    node: Option<Node>,
    incarnation: u64,
    /// The node's disk: what it recovers after a restart, and where it reads its decisions.
    disk: DiskImage,
    /// Writes issued and not yet durable, in order, with their completion time.
    inflight: VecDeque<(WriteId, Vec<WriteOp>)>,
    disk_busy_until: Time,
    timer_at: Option<Time>,
    paused_until: Time,
    /// Extra latency of every message to or from this node (a slow node).
    extra_us: Micros,
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
    /// Every classic round this node sent a Prepare for, with its key, over its lifetime.
    rounds_sent: BTreeMap<u64, Key>,
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
    /// Seeds each node's failing reads (`DiskSpec::read_fail_permille`).
    read_faults_seed: u64,
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
    /// The faulty minority of every cluster, if the spec asks for one (minority.rs).
    minority: Vec<NodeIx>,
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

fn draw(rng: &mut ChaCha8Rng, (lo, hi): (Micros, Micros)) -> Micros {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

/// The key a client's command is about, for the structured trace.
fn command_key(cmd: &Command) -> Option<Key> {
    match cmd {
        Command::Put { key, .. } | Command::Get { key } | Command::Verify { key } => {
            Some(key.clone())
        }
        Command::RemoveNode { .. } => None,
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
        // Drawn last: the draws above (and so every seed's run) are as before read faults.
        let read_faults_seed = master.random::<u64>();
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
            minority: Vec::new(),
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
            read_faults_seed,
            obs: Vec::new(),
            stats: WorldStats::default(),
            tr: Tracer::new(spec.trace),
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
        world.start_minority();
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
        let failed_reads = self.nodes.iter().map(|n| n.disk.failed_reads()).sum();
        WorldStats {
            failed_reads,
            ..self.stats
        }
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
    pub fn disk(&self, ix: NodeIx) -> ImageGuard<'_> {
        self.nodes[ix].disk.lock()
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
    /// The faulty minority of every cluster (empty unless the spec asks for one).
    pub fn minority(&self) -> &[NodeIx] {
        &self.minority
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
    /// The structured records of the kept trace ([`TraceMode::Keep`] only), each naming its
    /// line; take them before [`World::take_trace`] empties the lines they point at.
    pub fn take_trace_events(&mut self) -> Vec<TraceEvent> {
        std::mem::take(&mut self.tr.events)
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
            Ev::Deliver {
                from,
                to,
                msg,
                frame,
            } => self.deliver(from, to, msg, frame),
            Ev::Client { to, call, cmd } => {
                if self.nodes[to].node.is_none() {
                    self.tr.node(
                        self.now,
                        &self.nodes,
                        to,
                        format_args!("client call {} lost: node down", call.0),
                    );
                    let node = self.nodes[to].id.clone();
                    self.tr.record(self.now, || TraceWhat::Call {
                        node,
                        call: call.0,
                        key: command_key(&cmd),
                        lost: true,
                    });
                    self.call_lost(to, call);
                    return true;
                }
                self.tr.node(
                    self.now,
                    &self.nodes,
                    to,
                    format_args!("client call {} {cmd:?}", call.0),
                );
                self.tr.record(self.now, || TraceWhat::Call {
                    node: self.nodes[to].id.clone(),
                    call: call.0,
                    key: command_key(&cmd),
                    lost: false,
                });
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
            Ev::Minority { node, start } => self.minority_fault(node, start),
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
                    self.tr.record(self.now, || TraceWhat::World {
                        node: None,
                        change: WorldChange::Heal { id: partition },
                    });
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
                    self.tr.record(self.now, || TraceWhat::Reply {
                        node: self.nodes[ix].id.clone(),
                        call: call.0,
                    });
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
}
