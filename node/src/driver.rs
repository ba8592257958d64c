//! The driver: one tokio task that owns the sans-io [`Node`] and runs its contract.
//!
//! Inputs: decoded peer frames and membership events ([`TransportEvents`]), client calls from
//! the HTTP API (a bounded channel, each with a oneshot for its reply), durable notifications
//! from the storage thread, and timers at [`Node::poll_timeout`] on the real clock (`Time` is
//! microseconds since the driver started). Outputs: frames to the transport, writes to the
//! storage thread, replies to their oneshots, notes to the log and metrics.
//!
//! Generic over [`Transport`] and [`TransportEvents`] so that a simulated network can drive the
//! very same loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Result, bail};
use replicator_core::{
    CallId, ClusterId, Command, Input, NetworkId, Node, NodeId, Note, Output, Reply, Time, wire,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, trace, warn};

use crate::metrics::Metrics;
use crate::outgoing::{DECISION_LINGER, Outgoing};
use crate::peer_warnings::PeerWarnings;
use crate::status::{PeerInfo, Status};
use crate::storage::{DecisionReader, Durable, Loaded, PersistJob, Storage, StorageWorker};

/// What the driver loop waits on, tried in turn: see [`Wake`].
const WAKE_SOURCES: usize = 7;
/// Peer frames or client calls already queued that one turn of the loop takes after the one
/// that woke it, before it hands the core's outputs on. Under load this spreads the cost of a
/// turn (its timers, its wake-ups, its flush of frames to each peer) over many inputs; the
/// bound keeps the other sources from waiting long.
const READY_PER_TURN_MAX: usize = 64;

/// What woke the driver loop.
enum Wake {
    Event(Option<TransportEvent>),
    Request(Option<Request>),
    /// The storage reported (false: it stopped).
    Durable(bool),
    Timer,
    LeaveTimer,
    WaitLog,
    /// Decisions waiting for company must leave now.
    Linger,
}

/// Client calls waiting for the driver; more are answered Overloaded at once.
pub const REQUEST_QUEUE_LEN: usize = 1024;
/// How often the driver logs that its cluster is still too small.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// How much longer than the core's own deadlines a call may wait for its answer.
const CALL_SLACK: Duration = Duration::from_secs(2);
/// Peers of another network remembered, so that each is logged and counted once.
const FOREIGN_PEERS_MAX: usize = 1024;

/// The network as the driver sees it: send bytes to a peer. Sending never blocks and never
/// fails loudly: a lost frame is like a lost packet, and the protocol's timers cover it.
pub trait Transport: Send + 'static {
    fn send(&self, to: &NodeId, frame: Vec<u8>);
    /// The node left the membership (goodbye or operator removal): stop redialing it.
    fn forget(&self, _node: &NodeId) {}
}

/// Where the driver takes its [`TransportEvent`]s from, as it is ready for them: a channel of
/// them (a simulated network, the tests), or an adapter that makes them from another
/// transport's events right there, in the driver's task (the libp2p node: no task and no
/// channel in between, so a received frame costs one channel hop and one wake-up less).
pub trait TransportEvents: Send + 'static {
    /// The next event, waking `cx` when one comes; `Ready(None)` once none will.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>>;
    /// The next event if one is there already.
    fn try_event(&mut self) -> Option<TransportEvent>;
}

impl TransportEvents for mpsc::Receiver<TransportEvent> {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>> {
        self.poll_recv(cx)
    }

    fn try_event(&mut self) -> Option<TransportEvent> {
        self.try_recv().ok()
    }
}

/// What the network tells the driver.
#[derive(Debug)]
pub enum TransportEvent {
    Message {
        from: NodeId,
        frame: Vec<u8>,
    },
    /// A node announced itself: its cluster and the network it belongs to (the core refuses
    /// it if that is not this node's).
    Discovered {
        cluster: ClusterId,
        node: NodeId,
        network: NetworkId,
    },
    /// A node of another network answered; the transport did not make it a member.
    ForeignNetwork {
        node: NodeId,
        network: NetworkId,
    },
    Down(NodeId),
    Up(NodeId),
    /// The peer said goodbye.
    Left(NodeId),
}

/// A request to the driver from the HTTP API or `main`.
pub enum Request {
    /// A client command; the reply goes to `reply`.
    Call {
        cmd: Command,
        reply: oneshot::Sender<Reply>,
    },
    /// A snapshot for /peers, /clusters, /health and /metrics.
    Status { reply: oneshot::Sender<Status> },
    /// While writes are stalled: the value of `key` if this node holds it committed (a
    /// committed value never changes, so it can be served without the core's round trips).
    ReadStored {
        key: replicator_core::Key,
        reply: oneshot::Sender<Option<replicator_core::Value>>,
    },
    /// Leave the network: `done` gets true once every value this node accepted is decided and
    /// its cluster pulled its decisions (the driver then stops), false if `within` ran out
    /// first.
    Leave {
        within: Duration,
        done: oneshot::Sender<bool>,
    },
    /// Stop (a signal, an orderly shutdown): the driver ends its loop, commits what is queued
    /// and closes the database; the node stays a member.
    Stop,
}

/// Why a call got no answer from the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Too many calls waiting: nothing happened.
    Overloaded,
    /// The driver stopped: nothing more will happen.
    Stopped,
    /// No answer within the call's deadline (the node's writes are stalled, or it is very
    /// slow): a write may still take effect later.
    TimedOut,
}

/// A cheap handle on a running driver.
#[derive(Clone)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
    /// Why storage writes are stalled (set and cleared by the driver).
    storage_stalled: Arc<std::sync::Mutex<Option<String>>>,
    /// The longest a call may wait for the core's answer.
    call_timeout: Duration,
    /// Reads of stored decisions straight from the storage, for GETs (see
    /// [`Handle::stored_value`]). Weak: the core owns the reader, so that the database closes
    /// when the driver ends even while handles live on (a restart in the same process opens
    /// it again).
    stored: std::sync::Weak<DecisionReader>,
    /// Whether this node serves reads (ready, not removed), as of the driver's last turn.
    serves_reads: Arc<AtomicBool>,
}

impl Handle {
    /// Runs a client command.
    pub async fn call(&self, cmd: Command) -> Result<Reply, CallError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .try_send(Request::Call { cmd, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CallError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => CallError::Stopped,
            })?;
        match tokio::time::timeout(self.call_timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Stopped),
            Err(_) => Err(CallError::TimedOut),
        }
    }

    /// Why the node's storage writes fail and are being retried, if they do: writes are
    /// refused at once then, and only committed values are read.
    pub fn storage_stalled(&self) -> Option<String> {
        self.storage_stalled
            .lock()
            .expect("never poisoned: no panics inside")
            .clone()
    }

    /// The value of `key` if this node's storage holds its decision: read on the caller's
    /// thread, without the core (a decision never changes, so it needs no round trip, and a
    /// read that goes to the disk does not hold up the protocol loop). `None`: ask the core
    /// (the key is not decided here, its decision is not durable yet, the node does not serve
    /// reads, or the read failed).
    pub fn stored_value(&self, key: &replicator_core::Key) -> Option<replicator_core::Value> {
        if !self.serves_reads.load(Ordering::Relaxed) {
            return None;
        }
        let stored = self.stored.upgrade()?;
        match replicator_core::DecidedKeys::decision(stored.as_ref(), key) {
            Ok(Some((_, chosen))) => Some(chosen.value),
            Ok(None) | Err(_) => None,
        }
    }

    /// How many decided keys this node's storage shows, counted page by page. It reads every
    /// decision: for checks and tests (node_sim compares nodes with it), never for serving.
    /// `None` if the driver ended or a read failed. The core's `keys_stored` is the number of
    /// its last decision, which a key learned again (a repair, a read that failed) also takes.
    pub fn count_stored_keys(&self) -> Option<u64> {
        let mut count = 0;
        let stored = self.stored.upgrade()?;
        stored.every_decision(|_| count += 1).ok()?;
        Some(count)
    }

    /// The committed value of `key` held here, without the core (see [`Request::ReadStored`]).
    pub async fn read_stored(
        &self,
        key: replicator_core::Key,
    ) -> Result<Option<replicator_core::Value>, CallError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .try_send(Request::ReadStored { key, reply })
            .map_err(|_| CallError::Overloaded)?;
        answer.await.map_err(|_| CallError::Stopped)
    }

    pub async fn status(&self) -> Option<Status> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Status { reply }).await.ok()?;
        answer.await.ok()
    }

    /// Asks the driver to stop; it then commits what is queued, closes the database and
    /// returns from [`Driver::run`].
    pub async fn stop(&self) {
        let _ = self.requests.send(Request::Stop).await;
    }

    /// Asks the node to leave; true once it may say goodbye.
    pub async fn leave(&self, within: Duration) -> bool {
        let (done, answer) = oneshot::channel();
        if self
            .requests
            .send(Request::Leave { within, done })
            .await
            .is_err()
        {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

pub struct Driver<T: Transport, E: TransportEvents = mpsc::Receiver<TransportEvent>> {
    node: Node,
    transport: T,
    origin: Instant,
    events: E,
    requests: mpsc::Receiver<Request>,
    /// Unbounded on purpose: the core's outputs must never be dropped or block the loop, and
    /// what it asks to persist is bounded by its own limits (proposals, open keys, relays).
    persist: mpsc::UnboundedSender<PersistJob>,
    durable: watch::Receiver<Durable>,
    calls: HashMap<CallId, oneshot::Sender<Reply>>,
    next_call: u64,
    /// What the transport said about each peer (up or down), by peer.
    peers: BTreeMap<NodeId, PeerInfo>,
    /// Peers of another network already logged and counted.
    foreign: BTreeSet<NodeId>,
    leave: Option<(Instant, Vec<oneshot::Sender<bool>>)>,
    left: bool,
    /// Asked to stop: the loop ends.
    stopping: bool,
    /// Whether the own cluster was last seen with at least `cluster_size_min` members.
    cluster_big_enough: bool,
    metrics: Arc<Metrics>,
    storage_worker: StorageWorker,
    /// Which source of work the loop tries first next time (round robin).
    turn: usize,
    /// A deliberately broken behaviour: always `None` unless sim-tests' node_sim set it
    /// through [`Driver::with_bug`] (feature `bug-injection`).
    bug: Option<DriverBug>,
    /// Shared with the handles: whether this node serves reads (ready, not removed).
    serves_reads: Arc<AtomicBool>,
    /// Shared with the handles: why storage writes are stalled.
    storage_stalled: Arc<std::sync::Mutex<Option<String>>>,
    /// Damaged records the core wrote again with their decisions, as last logged.
    repaired_keys: u64,
    /// Which warnings about peers' frames to log (one per peer and kind per interval).
    peer_warnings: PeerWarnings,
    /// Messages on their way to the transport, packed per peer.
    outgoing: Outgoing,
}

/// Driver bugs that sim-tests' node_sim must catch. Only [`Driver::with_bug`] (feature
/// `bug-injection`, never in a real node) selects one: each undoes a safety rule of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverBug {
    /// The node starts from an empty membership instead of the one its disk recorded (the
    /// bug of issue 8): it only knows whom discovery finds.
    ForgetMembership,
    /// A write is reported durable to the core as soon as it is queued, so the messages and
    /// replies behind it leave before the storage made it durable.
    ReleaseBeforeDurable,
}

/// Everything needed to start a driver.
pub struct Parts<T: Transport, E: TransportEvents = mpsc::Receiver<TransportEvent>> {
    pub config: replicator_core::Config,
    pub id: NodeId,
    pub cluster: ClusterId,
    /// What the storage read back, with what it found damaged.
    pub loaded: Loaded,
    pub storage: Storage,
    pub transport: T,
    pub events: E,
    pub metrics: Arc<Metrics>,
}

impl<T: Transport, E: TransportEvents> Driver<T, E> {
    /// Builds the node, starts the storage thread; spawn [`Driver::run`] next.
    pub fn new(parts: Parts<T, E>) -> Result<(Driver<T, E>, Handle)> {
        Self::build(parts, None)
    }

    /// [`Driver::new`] with a deliberately broken behaviour.
    #[cfg(feature = "bug-injection")]
    pub fn with_bug(parts: Parts<T, E>, bug: Option<DriverBug>) -> Result<(Driver<T, E>, Handle)> {
        Self::build(parts, bug)
    }

    /// The driver with decisions lingering `linger` instead of [`DECISION_LINGER`].
    #[cfg(test)]
    fn with_decision_linger(mut self, linger: Duration) -> Self {
        self.outgoing = Outgoing::new(linger);
        self
    }

    fn has_bug(&self, bug: DriverBug) -> bool {
        self.bug == Some(bug)
    }

    fn build(parts: Parts<T, E>, bug: Option<DriverBug>) -> Result<(Driver<T, E>, Handle)> {
        let Parts {
            config,
            id,
            cluster,
            loaded,
            storage,
            transport,
            events,
            metrics,
        } = parts;
        metrics.damage.found(
            loaded.damaged_keys.len(),
            loaded.damaged_requests,
            loaded.torn_log_bytes,
        );
        let mut recovered = loaded.recovered;
        let seed = os_seed()?;
        info!(
            seed,
            node = %id,
            cluster = %cluster,
            network = %recovered.network,
            ready = recovered.ready,
            members = recovered.members.len() + 1,
            departed = recovered.departed.len(),
            open_keys = recovered.keys.len(),
            decisions = recovered.last_decision,
            damaged = recovered.damaged.len(),
            "starting the protocol core"
        );
        if bug == Some(DriverBug::ForgetMembership) {
            recovered.members.clear();
        }
        let origin = Instant::now();
        // The node starts from the membership its disk recorded, never from what the
        // transport happens to reach: rediscovery can only add to it.
        // A PUT is answered by the core within put_timeout; a read within read_timeout; the
        // rest is slack. Beyond it the node is stalled (its answers wait for a write).
        let call_timeout = config.put_timeout.max(config.read_timeout) + CALL_SLACK;
        // One reader: the core's, which the handles share for GETs.
        let stored = Arc::new(storage.decision_reader(metrics.damage.clone()));
        let decided = Box::new(stored.clone());
        let node = Node::new(config, id, cluster, recovered, decided, Time::ZERO, seed)?;
        if node.is_removed() {
            error!(
                "an operator removed this node from the network: it serves nothing; wipe its data dir to bring this machine back as a new node"
            );
        }
        let storage = storage.start(metrics.disk.clone())?;
        let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE_LEN);
        let storage_stalled = Arc::new(std::sync::Mutex::new(None));
        let serves_reads = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            serves_reads: serves_reads.clone(),
            node,
            transport,
            origin,
            events,
            requests,
            persist: storage.jobs,
            durable: storage.durable,
            calls: HashMap::new(),
            next_call: 0,
            peers: BTreeMap::new(),
            foreign: BTreeSet::new(),
            leave: None,
            left: false,
            stopping: false,
            cluster_big_enough: false,
            metrics,
            storage_worker: storage.worker,
            turn: 0,
            bug,
            storage_stalled: storage_stalled.clone(),
            repaired_keys: 0,
            peer_warnings: PeerWarnings::default(),
            outgoing: Outgoing::new(DECISION_LINGER),
        };
        Ok((
            driver,
            Handle {
                requests: requests_tx,
                storage_stalled,
                call_timeout,
                stored: Arc::downgrade(&stored),
                serves_reads,
            },
        ))
    }

    fn now(&self) -> Time {
        Time::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    /// Runs until the node has left or is asked to stop, or every request handle and the
    /// transport are gone.
    /// Fails if the storage fails (the node must stop: it cannot keep its promises).
    pub async fn run(mut self) -> Result<()> {
        let result = self.run_loop().await;
        // Let the storage commit what is queued and close the database.
        let Driver {
            persist,
            storage_worker,
            ..
        } = self;
        drop(persist);
        storage_worker.join().await;
        result
    }

    async fn run_loop(&mut self) -> Result<()> {
        let mut wait_log = tokio::time::interval(WAIT_LOG_INTERVAL);
        let mut events_open = true;
        let mut requests_open = true;
        self.drain();
        while !self.left && !self.stopping && (events_open || requests_open) {
            let deadline = self
                .node
                .poll_timeout()
                .map(|t| self.origin + Duration::from_micros(t.as_micros()));
            let leave_deadline = self.leave.as_ref().map(|(d, _)| *d);
            let linger_deadline = self.outgoing.deadline();
            // Every source of work in turn, starting from a different one each time (round
            // robin): none can starve another, and the order is the same in every run (a
            // simulated run replays exactly, which tokio::select!'s random order would not).
            self.turn = self.turn.wrapping_add(1);
            let first = self.turn;
            let wake = {
                let events = &mut self.events;
                let requests = &mut self.requests;
                let mut durable = pin!(self.durable.changed());
                let mut timer = pin!(sleep_until_opt(deadline));
                let mut leave_timer = pin!(sleep_until_opt(leave_deadline));
                let mut linger_timer = pin!(sleep_until_opt(linger_deadline));
                let wait_log = &mut wait_log;
                poll_fn(|cx| {
                    for i in 0..WAKE_SOURCES {
                        let ready = match (first + i) % WAKE_SOURCES {
                            0 if events_open => events.poll_event(cx).map(Wake::Event),
                            1 if requests_open => requests.poll_recv(cx).map(Wake::Request),
                            2 => durable
                                .as_mut()
                                .poll(cx)
                                .map(|changed| Wake::Durable(changed.is_ok())),
                            3 => timer.as_mut().poll(cx).map(|()| Wake::Timer),
                            4 => leave_timer.as_mut().poll(cx).map(|()| Wake::LeaveTimer),
                            5 => wait_log.poll_tick(cx).map(|_| Wake::WaitLog),
                            6 => linger_timer.as_mut().poll(cx).map(|()| Wake::Linger),
                            _ => Poll::Pending,
                        };
                        if ready.is_ready() {
                            return ready;
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            match wake {
                Wake::Event(Some(ev)) => {
                    self.on_transport(ev);
                    for _ in 1..READY_PER_TURN_MAX {
                        let Some(ev) = self.events.try_event() else {
                            break;
                        };
                        self.on_transport(ev);
                    }
                }
                Wake::Event(None) => events_open = false,
                Wake::Request(Some(req)) => {
                    self.on_request(req);
                    for _ in 1..READY_PER_TURN_MAX {
                        let Ok(req) = self.requests.try_recv() else {
                            break;
                        };
                        self.on_request(req);
                    }
                }
                Wake::Request(None) => requests_open = false,
                Wake::Durable(changed) => {
                    if !changed {
                        bail!("the storage thread stopped");
                    }
                    let state = self.durable.borrow_and_update().clone();
                    match state {
                        Durable::Upto(upto) => {
                            self.set_storage_stalled(None);
                            let now = self.now();
                            self.node.handle(now, Input::Persisted { upto });
                        }
                        Durable::Stalled(e) => self.set_storage_stalled(Some(e)),
                        Durable::Failed(e) => bail!("storage failed: {e}"),
                    }
                }
                Wake::Timer => {
                    let now = self.now();
                    self.node.handle(now, Input::Timeout);
                }
                Wake::LeaveTimer => {
                    warn!("leave did not complete in time");
                    for done in self.leave.take().map(|(_, w)| w).unwrap_or_default() {
                        let _ = done.send(false);
                    }
                    self.left = true;
                }
                Wake::WaitLog => self.log_cluster_size(),
                // `drain` below sends what is due.
                Wake::Linger => {}
            }
            self.drain();
            self.note_repairs();
            let serves = self.node.is_ready() && !self.node.is_removed();
            self.serves_reads.store(serves, Ordering::Relaxed);
        }
        let transport = &self.transport;
        self.outgoing
            .flush_all(|to, frame| transport.send(to, frame));
        Ok(())
    }

    /// Logs and counts the damaged keys repaired since the last turn: the node learned their
    /// decisions from its cluster (catch-up or a Decide) and serves and votes for them again.
    fn note_repairs(&mut self) {
        let repaired_now = self.node.repaired_keys();
        if repaired_now > self.repaired_keys {
            let repaired = repaired_now - self.repaired_keys;
            self.metrics.damage.repaired(repaired as usize);
            info!(
                repaired,
                left = self.node.damaged_keys(),
                "damaged keys repaired: their decisions were learned from this node's cluster"
            );
            self.repaired_keys = repaired_now;
        }
    }

    /// Storage writes fail (`Some`, disk full) or succeed again (`None`). While they fail the
    /// core's outputs wait for the stalled write; peer frames are dropped (as if this node were
    /// cut off: the protocol's retries cover it) so that nothing piles up behind the write.
    fn set_storage_stalled(&mut self, why: Option<String>) {
        let mut stalled = self
            .storage_stalled
            .lock()
            .expect("never poisoned: no panics inside");
        match (&*stalled, &why) {
            (None, Some(e)) => error!(
                error = %e,
                "storage writes fail: this node refuses writes, serves only committed values, and drops peer messages until a write succeeds again"
            ),
            (Some(_), None) => info!("storage writes succeed again: back to normal"),
            _ => {}
        }
        *stalled = why;
    }

    fn is_storage_stalled(&self) -> bool {
        self.storage_stalled
            .lock()
            .expect("never poisoned: no panics inside")
            .is_some()
    }

    /// Whether to log a warning of `kind` about what `peer` sent (`Some`: how many of its kind
    /// were left out since the last one logged); the metrics count what is left out.
    fn admit_peer_warning(&mut self, peer: &NodeId, kind: &'static str) -> Option<u64> {
        let admitted = self.peer_warnings.admit(peer, kind, Instant::now());
        if admitted.is_none() {
            self.metrics.inc(&self.metrics.peer_warnings_left_out);
        }
        admitted
    }

    fn on_transport(&mut self, ev: TransportEvent) {
        let now = self.now();
        match ev {
            TransportEvent::Message { .. } if self.is_storage_stalled() => {
                self.metrics.inc(&self.metrics.frames_dropped_stalled);
            }
            TransportEvent::Message { from, frame } => match wire::decode_frame(&frame) {
                Ok(mut msgs) => {
                    self.metrics
                        .add(&self.metrics.messages_received, msgs.len() as u64);
                    // The last message takes the sender's id itself: one clone fewer per
                    // frame, none for a frame of one message (the usual one at light load).
                    let last = msgs.pop();
                    for msg in msgs {
                        self.on_message(now, from.clone(), msg);
                    }
                    if let Some(msg) = last {
                        self.on_message(now, from, msg);
                    }
                }
                Err(e) => {
                    self.metrics.inc(&self.metrics.frames_rejected);
                    if let Some(left_out) = self.admit_peer_warning(&from, "undecodable_frame") {
                        warn!(peer = %from, error = %e, left_out, "dropping an undecodable frame");
                    }
                }
            },
            TransportEvent::Discovered {
                cluster,
                node,
                network,
            } => {
                if network == *self.node.network() {
                    info!(peer = %node, cluster = %cluster, "member discovered");
                    self.peers.insert(
                        node.clone(),
                        PeerInfo {
                            peer: node.to_string(),
                            cluster: cluster.to_string(),
                            up: true,
                        },
                    );
                }
                self.node.handle(
                    now,
                    Input::NodeDiscovered {
                        cluster,
                        node,
                        network,
                    },
                );
                self.log_cluster_size();
            }
            TransportEvent::ForeignNetwork { node, network } => {
                self.foreign_network(node, network);
            }
            TransportEvent::Down(node) => {
                warn!(peer = %node, "peer down (it stays a member; writes will name it unavailable)");
                if let Some(p) = self.peers.get_mut(&node) {
                    p.up = false;
                }
            }
            TransportEvent::Up(node) => {
                info!(peer = %node, "peer up again");
                if let Some(p) = self.peers.get_mut(&node) {
                    p.up = true;
                }
            }
            TransportEvent::Left(node) => {
                info!(peer = %node, "peer said goodbye: removed from the membership");
                self.peers.remove(&node);
                self.node.handle(
                    now,
                    Input::NodeRemoved {
                        node,
                        goodbye: true,
                    },
                );
            }
        }
    }

    fn on_message(&mut self, now: Time, from: NodeId, msg: wire::Message) {
        trace!(peer = %from, ?msg, "received");
        self.node.handle(now, Input::Message { from, msg });
    }

    fn on_request(&mut self, req: Request) {
        let now = self.now();
        match req {
            Request::Call { cmd, reply } => {
                let call = CallId(self.next_call);
                self.next_call += 1;
                self.calls.insert(call, reply);
                self.node.handle(now, Input::Client { call, cmd });
            }
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::ReadStored { key, reply } => {
                let value = match self.node.key_state(&key) {
                    Ok(Some(replicator_core::DurableKey::Stored { chosen, .. }))
                        if self.node.is_ready() && !self.node.is_removed() =>
                    {
                        Some(chosen.value.clone())
                    }
                    _ => None,
                };
                let _ = reply.send(value);
            }
            Request::Stop => {
                info!(
                    "stopping: this node stays a member (its peers see it down until it is back)"
                );
                self.stopping = true;
            }
            Request::Leave { within, done } => {
                info!(
                    "leaving the network: deciding every value this node accepted, then letting its cluster pull its decisions"
                );
                match &mut self.leave {
                    Some((_, waiters)) => waiters.push(done),
                    None => {
                        self.leave = Some((Instant::now() + within, vec![done]));
                        self.node.handle(now, Input::Leave);
                    }
                }
            }
        }
    }

    /// Executes every output the core has. The messages for one peer leave together, packed
    /// into as few frames as the wire allows, in the order the core sent them (a peer handles
    /// a frame's messages in order, as it would separate frames on one stream); decisions alone
    /// may wait a little for company (`outgoing.rs`).
    fn drain(&mut self) {
        let now = Instant::now();
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    trace!(peer = %to, ?msg, "send");
                    self.metrics.inc(&self.metrics.messages_sent);
                    self.outgoing.push(now, to, &msg);
                }
                Output::Persist {
                    write,
                    ops,
                    urgency,
                } => {
                    let job = PersistJob {
                        write,
                        ops,
                        urgency,
                    };
                    if self.persist.send(job).is_err() {
                        // The storage thread is gone; `run` stops on its Failed report.
                        error!("the storage thread stopped: a write is lost");
                    }
                    if self.has_bug(DriverBug::ReleaseBeforeDurable) {
                        let now = self.now();
                        self.node.handle(now, Input::Persisted { upto: write });
                    }
                }
                Output::Reply { call, reply } => {
                    if let Some(tx) = self.calls.remove(&call) {
                        let _ = tx.send(reply);
                    }
                }
                Output::Note(note) => self.on_note(note),
            }
        }
        let transport = &self.transport;
        self.outgoing
            .flush(now, |to, frame| transport.send(to, frame));
    }

    fn on_note(&mut self, note: Note) {
        match note {
            Note::Decided {
                key,
                chosen,
                ballot,
            } => {
                debug!(proposal = %chosen, key = %key, %ballot, "decided");
                if ballot.is_fast() {
                    self.metrics.inc(&self.metrics.decided_fast);
                } else {
                    self.metrics.inc(&self.metrics.decided_classic);
                }
            }
            Note::Ready => info!("ready: the join-time copy is complete, serving reads and votes"),
            Note::LeaveComplete => {
                info!(
                    "leave complete: every value accepted here is decided, and this cluster holds every decision"
                );
                for done in self.leave.take().map(|(_, w)| w).unwrap_or_default() {
                    let _ = done.send(true);
                }
                self.left = true;
            }
            Note::NodeRemoved { node } => {
                info!(peer = %node, "removed from the membership");
                self.peers.remove(&node);
                self.transport.forget(&node);
                self.log_cluster_size();
            }
            Note::ForeignNetwork { node, network, .. } => self.foreign_network(node, network),
            Note::SelfRemoved { by } => {
                error!(
                    by = %by,
                    "an operator removed this node from the network: it serves no reads or writes any more; wipe its data dir to bring this machine back as a new node"
                );
            }
            Note::PeerInputRejected { from, reason } => {
                let kind = reason.kind();
                self.metrics.inc(&self.metrics.frames_rejected);
                self.metrics.inc(&self.metrics.peer_faults[kind.index()]);
                if let Some(left_out) = self.admit_peer_warning(&from, kind.name()) {
                    warn!(peer = %from, %kind, %reason, left_out, "peer input rejected");
                }
            }
            Note::Violation { reason } => {
                self.metrics.inc(&self.metrics.violations);
                error!(kind = reason.kind().name(), %reason, "protocol invariant violated");
            }
        }
    }

    /// A node of another network announced itself (to the transport or to the core): never a
    /// member. Logged and counted once per peer.
    fn foreign_network(&mut self, node: NodeId, network: NetworkId) {
        if self.foreign.contains(&node) {
            return;
        }
        if self.foreign.len() >= FOREIGN_PEERS_MAX {
            self.foreign.pop_first();
        }
        self.foreign.insert(node.clone());
        self.metrics.inc(&self.metrics.foreign_network_peers);
        error!(
            peer = %node,
            theirs = %network,
            ours = %self.node.network(),
            "a node of another network (id {network}) announced itself; this node's network is {}: it is not a member, and two networks founded apart never merge",
            self.node.network()
        );
    }

    /// Every other member (recorded on disk or discovered since), with what the transport
    /// last said about it.
    fn peer_list(&self) -> Vec<PeerInfo> {
        let membership = self.node.membership();
        membership
            .clusters()
            .flat_map(|(cluster, nodes)| nodes.iter().map(move |n| (cluster, n)))
            .filter(|(_, n)| *n != self.node.id())
            .map(|(cluster, n)| match self.peers.get(n) {
                Some(p) => p.clone(),
                None => PeerInfo {
                    peer: n.to_string(),
                    cluster: cluster.to_string(),
                    up: false,
                },
            })
            .collect()
    }

    fn status(&self) -> Status {
        Status {
            id: self.node.id().clone(),
            cluster: self.node.cluster().clone(),
            network: self.node.network().clone(),
            removed: self.node.is_removed(),
            ready: self.node.is_ready(),
            leaving: self.node.is_leaving(),
            membership: (**self.node.membership()).clone(),
            peers: self.peer_list(),
            suspects: self.node.suspects().cloned().collect(),
            stats: self.node.stats(),
            cluster_size_min: self.node.config().cluster_size_min,
            storage_stalled: self
                .storage_stalled
                .lock()
                .expect("never poisoned: no panics inside")
                .clone(),
        }
    }

    fn log_cluster_size(&mut self) {
        let members = self.node.membership().nodes_of(self.node.cluster()).len();
        let min = self.node.config().cluster_size_min;
        if members < min {
            info!(
                members,
                min,
                cluster = %self.node.cluster(),
                "waiting for cluster to have at least {min} members"
            );
        } else if !self.cluster_big_enough {
            info!(
                members,
                min,
                cluster = %self.node.cluster(),
                "the cluster has enough members: accepting writes"
            );
        }
        self.cluster_big_enough = members >= min;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The jitter seed, from the OS (from the simulator's seeded randomness under madsim).
#[cfg(madsim)]
fn os_seed() -> Result<u64> {
    Ok(madsim::rand::random())
}

/// The jitter seed, from the OS.
#[cfg(not(madsim))]
fn os_seed() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the OS gave no randomness: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use replicator_core::{GetOutcome, Key, PutOutcome, Value};

    use super::*;

    /// Every frame the in-memory network carried: sender, receiver, messages.
    type SentLog = Arc<Mutex<Vec<(NodeId, NodeId, Vec<wire::Message>)>>>;

    /// An in-memory network: the same driver, another transport.
    #[derive(Clone)]
    struct MemTransport {
        me: NodeId,
        peers: Arc<Mutex<HashMap<NodeId, mpsc::Sender<TransportEvent>>>>,
        sent: SentLog,
    }

    impl Transport for MemTransport {
        fn send(&self, to: &NodeId, frame: Vec<u8>) {
            if let Ok(msgs) = wire::decode_frame(&frame) {
                let log = (self.me.clone(), to.clone(), msgs);
                self.sent.lock().unwrap().push(log);
            }
            if let Some(tx) = self.peers.lock().unwrap().get(to) {
                let _ = tx.try_send(TransportEvent::Message {
                    from: self.me.clone(),
                    frame,
                });
            }
        }
    }

    /// A driver of a fresh network's founder `id` in cluster "c", its data in `dir`.
    fn founder(
        dir: &std::path::Path,
        id: &NodeId,
        transport: MemTransport,
        events: mpsc::Receiver<TransportEvent>,
        metrics: Arc<Metrics>,
    ) -> (Driver<MemTransport>, Handle) {
        let fresh = replicator_core::Recovered::founder(NetworkId::new("net"));
        let mut storage = Storage::open(dir, Some(&fresh)).unwrap();
        let loaded = storage.load().unwrap();
        Driver::new(Parts {
            config: replicator_core::Config::default(),
            id: id.clone(),
            cluster: ClusterId::new("c"),
            loaded,
            storage,
            transport,
            events,
            metrics,
        })
        .unwrap()
    }

    /// Three founders of one cluster over the in-memory network, each knowing the others.
    struct Three {
        dirs: Vec<tempfile::TempDir>,
        ids: Vec<NodeId>,
        peers: Arc<Mutex<HashMap<NodeId, mpsc::Sender<TransportEvent>>>>,
        sent: SentLog,
        handles: Vec<Handle>,
        tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
    }

    async fn start_three(linger: Duration) -> Three {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let ids: Vec<NodeId> = (0..3).map(|i| NodeId::new(format!("n{i}"))).collect();
        let peers = Arc::new(Mutex::new(HashMap::new()));
        let sent = SentLog::default();
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (tx, rx) = mpsc::channel(1024);
            peers.lock().unwrap().insert(id.clone(), tx.clone());
            for other in &ids {
                if other != id {
                    tx.send(TransportEvent::Discovered {
                        cluster: ClusterId::new("c"),
                        node: other.clone(),
                        network: NetworkId::new("net"),
                    })
                    .await
                    .unwrap();
                }
            }
            let transport = MemTransport {
                me: id.clone(),
                peers: peers.clone(),
                sent: sent.clone(),
            };
            let metrics = Arc::new(Metrics::default());
            let (driver, handle) = founder(dirs[i].path(), id, transport, rx, metrics);
            tasks.push(tokio::spawn(driver.with_decision_linger(linger).run()));
            handles.push(handle);
        }
        // Discovery events and calls travel on different channels: wait for the view.
        for h in &handles {
            let started = Instant::now();
            while h.status().await.unwrap().membership.len() < 3 {
                assert!(started.elapsed() < Duration::from_secs(10), "no view of 3");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Three {
            dirs,
            ids,
            peers,
            sent,
            handles,
            tasks,
        }
    }

    fn put(value: &str) -> Command {
        Command::Put {
            key: Key::new("k"),
            value: Value::from(value),
            request: None,
        }
    }

    /// Whether `from` sent `to` a Decide.
    fn decide_sent(sent: &SentLog, from: &NodeId, to: &NodeId) -> bool {
        let is_decide = |m: &wire::Message| {
            matches!(
                m,
                wire::Message::Request(replicator_core::Request::Decide { .. })
            )
        };
        (sent.lock().unwrap().iter())
            .any(|(f, t, msgs)| f == from && t == to && msgs.iter().any(is_decide))
    }

    /// A decision alone waits for company (`outgoing.rs`), and leaves on its own once the
    /// linger is over: the driver wakes for it. (Nothing else to these peers would take it
    /// along before their next catch-up, 1 to 1.25 s after the one each makes at its start.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_decision_waits_for_the_linger_then_leaves_on_its_own() {
        let linger = Duration::from_millis(200);
        let Three {
            ids,
            sent,
            handles,
            dirs: _dirs,
            ..
        } = start_three(linger).await;
        // Past the catch-ups of the start.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = handles[0].call(put("one")).await.unwrap();
        assert_eq!(reply, Reply::Put(PutOutcome::Stored));
        let decided = Instant::now();
        while !(decide_sent(&sent, &ids[0], &ids[1]) && decide_sent(&sent, &ids[0], &ids[2])) {
            assert!(decided.elapsed() < linger * 2, "no Decide sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waited = decided.elapsed();
        assert!(
            waited >= linger * 2 / 3,
            "the Decide left after {waited:?}, before its linger of {linger:?}"
        );
        assert!(
            waited < linger * 2,
            "the Decide left after {waited:?}, long after its linger of {linger:?}"
        );
        for h in &handles {
            h.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_drivers_over_an_in_memory_transport() {
        let Three {
            dirs,
            ids,
            peers,
            sent,
            handles,
            tasks,
        } = start_three(DECISION_LINGER).await;
        let reply = handles[0].call(put("one")).await.unwrap();
        assert_eq!(reply, Reply::Put(PutOutcome::Stored));
        // The decision reaches the others (within the linger: nothing else follows it).
        let decided = Instant::now();
        while !(decide_sent(&sent, &ids[0], &ids[1]) && decide_sent(&sent, &ids[0], &ids[2])) {
            assert!(decided.elapsed() < Duration::from_secs(5), "no Decide sent");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let reply = handles[2].call(put("two")).await.unwrap();
        assert_eq!(
            reply,
            Reply::Put(PutOutcome::Exists {
                value: Value::from("one")
            })
        );
        let reply = handles[1]
            .call(Command::Get { key: Key::new("k") })
            .await
            .unwrap();
        assert_eq!(reply, Reply::Get(GetOutcome::Value(Value::from("one"))));
        // Once durable there, a node serves the decision from its storage, without the core.
        let mut served = None;
        for _ in 0..500 {
            served = handles[1].stored_value(&Key::new("k"));
            if served.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(served, Some(Value::from("one")));
        assert_eq!(handles[1].stored_value(&Key::new("never-written")), None);
        assert_eq!(handles[1].count_stored_keys(), Some(1));
        for (h, id) in handles.iter().zip(&ids) {
            assert!(h.leave(Duration::from_secs(5)).await);
            // Its goodbye, as the real transport would deliver it.
            let others: Vec<_> = {
                let mut peers = peers.lock().unwrap();
                peers.remove(id);
                peers.values().cloned().collect()
            };
            for tx in others {
                tx.send(TransportEvent::Left(id.clone())).await.unwrap();
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // A driver that ended closed its database: its handles no longer read it.
        assert_eq!(handles[1].stored_value(&Key::new("k")), None);
        // Everything acknowledged is on disk (and no longer in flight: a restart does not
        // load it, the core reads it when it needs it).
        for d in &dirs {
            let mut storage = Storage::open(d.path(), None).unwrap();
            let rec = storage.load().unwrap().recovered;
            assert!(!rec.keys.contains_key(&Key::new("k")));
            let reader = storage.decision_reader(Default::default());
            use replicator_core::DecidedKeys;
            assert!(reader.decision(&Key::new("k")).unwrap().is_some());
        }
    }

    /// A peer that sends frames this node cannot decode (another wire version) gets one
    /// warning per interval in the log, not one per frame; every frame is still counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_frames_are_counted_each_and_logged_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let metrics = Arc::new(Metrics::default());
        let id = NodeId::new("n0");
        let transport = MemTransport {
            me: id.clone(),
            peers: Arc::new(Mutex::new(HashMap::new())),
            sent: SentLog::default(),
        };
        let (driver, handle) = founder(dir.path(), &id, transport, rx, metrics.clone());
        let task = tokio::spawn(driver.run());
        let frames = 300;
        for i in 0..frames {
            // Wire version 0 is no version: every one of these is undecodable.
            let frame = vec![0, (i % 256) as u8];
            let event = TransportEvent::Message {
                from: NodeId::new("stranger"),
                frame,
            };
            tx.send(event).await.unwrap();
        }
        let counted = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        for _ in 0..500 {
            if counted(&metrics.frames_rejected) == frames {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counted(&metrics.frames_rejected), frames);
        // Within one interval: the first is logged, the others are left out.
        assert_eq!(counted(&metrics.peer_warnings_left_out), frames - 1);
        handle.stop().await;
        task.await.unwrap().unwrap();
    }
}
