//! The event loop: owns the swarm, executes [`Command`]s from [`Client`]s, turns swarm events
//! into [`NetEvent`]s and runs discovery and liveness. No protocol logic lives here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, kad, ping,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use crate::client::{Client, Command};
use crate::codec::FrameCodec;
use crate::control::{Control, GossipMember, Hello, valid_network_id};
use crate::frames::{Limits, Links, accept_streams};
use crate::streams;
use crate::{
    CLUSTER_ID_BYTES_MAX, CONTROL_FRAME_BYTES_MAX, MEMBER_ADDRS_MAX, MEMBERS_MAX, Member,
    NETWORK_ID_BYTES_MAX, NetConfig, NetError, NetEvent,
};

/// Control streams per connection (libp2p's request-response bound, inbound and outbound
/// together; beyond it libp2p drops streams).
const STREAMS_PER_CONNECTION_MAX: usize = 256;
/// Commands from [`Client`]s waiting for the loop (frames to other peers do not go through
/// it; frames to this node itself do, and are dropped when it is full).
const COMMANDS_QUEUE_LEN: usize = 1024;
/// Connections: a full mesh of [`MEMBERS_MAX`] members, with room for simultaneous dials and
/// short-lived connections of candidates.
const CONNECTIONS_MAX: u32 = 2 * MEMBERS_MAX as u32;
const CONNECTIONS_PER_PEER_MAX: u32 = 4;
const PENDING_INCOMING_MAX: u32 = 128;
/// Peers with a frame queue, writer or reader: every member, plus room for peers that are not
/// (yet) members.
const PEERS_WITH_FRAMES_MAX: usize = 2 * MEMBERS_MAX;
/// Peers learned from the DHT or gossip but not yet Helloed.
const CANDIDATES_MAX: usize = MEMBERS_MAX;
/// Peers that said goodbye or were forgotten, remembered so that gossip and stale DHT records
/// do not bring them back (oldest forgotten first).
const DEPARTED_MAX: usize = MEMBERS_MAX;
/// Peers that Helloed with another network id, remembered so that they are reported once and
/// not dialed again when the DHT names them (oldest forgotten first).
const FOREIGN_MAX: usize = MEMBERS_MAX;
/// Control requests (Hello, Goodbye) waiting for an answer.
const CONTROL_IN_FLIGHT_MAX: usize = 4 * MEMBERS_MAX;
/// Membership events waiting for the node, beyond the room frames may use.
const MEMBERSHIP_EVENTS_QUEUED_MAX: usize = 4 * MEMBERS_MAX;
/// Listen addresses kept (interfaces of a wildcard listener).
const LISTEN_ADDRS_MAX: usize = 32;
/// How long [`Client::goodbye`] waits for the members' acknowledgements.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);
/// How long [`start`] waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Delay between two dials of the bootstrap peer, or two Hellos to it, while [`start`] waits
/// for it.
const BOOTSTRAP_REDIAL: Duration = Duration::from_millis(250);
/// When [`start`] already knows it will fail, how long it waits for what makes the failure
/// clearer: the identify message of a bootstrap peer that refused the Hello protocol (it names
/// the peer's protocol id), or the Hello answer of a bootstrap peer of another network (then
/// that peer has read this node's Hello and reports it on its side too).
const BOOTSTRAP_FAILURE_GRACE: Duration = Duration::from_secs(1);
/// The longest protocol version of a foreign peer quoted in an error.
const PROTOCOL_VERSION_QUOTED_MAX: usize = 128;
/// Redial backoff for members without a connection.
const REDIAL_BACKOFF_MIN: Duration = Duration::from_millis(250);
const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Dial backoff for candidates that do not answer.
const CANDIDATE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const CANDIDATE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// DHT provider lookups: every second at first, backing off to every 10 s.
const DISCOVERY_INTERVAL_MIN: Duration = Duration::from_secs(1);
const DISCOVERY_INTERVAL_MAX: Duration = Duration::from_secs(10);
/// Connections are kept open between members (pings need them); an idle one is closed after
/// this and redialed when needed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const KAD_PACKET_BYTES_MAX: usize = 1024 * 1024;
const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(600);
const PROVIDER_REPUBLISH_INTERVAL: Duration = Duration::from_secs(120);

/// The libp2p behaviours of a node.
#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Bounds the connections (and so every per-connection state, here and in libp2p).
    limits: connection_limits::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    /// Carries the node's frames: one long-lived stream per peer and direction (see
    /// `frames.rs`).
    streams: streams::Behaviour,
    /// Carries [`Control`] messages.
    control: rr::Behaviour<FrameCodec>,
}

/// The private protocol names of one deployment.
struct Protocols {
    id: String,
    kad: StreamProtocol,
    frames: StreamProtocol,
    control: StreamProtocol,
    /// The identify "protocol version": peers announcing another one are not used for routing.
    identify_version: String,
}

impl Protocols {
    fn new(protocol_id: &str) -> Result<Self, NetError> {
        let valid = !protocol_id.is_empty()
            && protocol_id.len() <= 64
            && protocol_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(NetError::InvalidConfig(format!(
                "protocol_id {protocol_id:?} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'"
            )));
        }
        let name = |kind: &str| {
            StreamProtocol::try_from_owned(format!("/replicator/{protocol_id}/{kind}/1.0.0"))
                .map_err(|e| NetError::InvalidConfig(format!("protocol name: {e}")))
        };
        Ok(Self {
            id: protocol_id.to_owned(),
            kad: name("kad")?,
            frames: name("frames")?,
            control: name("member")?,
            identify_version: format!("/replicator/{protocol_id}/1.0.0"),
        })
    }
}

/// What the event loop knows about a member.
#[derive(Debug)]
struct MemberState {
    cluster: String,
    /// The network id of its last Hello: the node's, unless the member later Helloed with
    /// another one (then it is down, not contacted and not redialed).
    network: String,
    addrs: Vec<Multiaddr>,
    up: bool,
    last_contact: Instant,
    redial_at: Instant,
    redial_backoff: Duration,
}

/// A peer learned from the DHT or from gossip, not yet Helloed.
#[derive(Debug)]
struct Candidate {
    addrs: Vec<Multiaddr>,
    dial_at: Instant,
    backoff: Duration,
}

/// A graceful leave in progress.
struct Leaving {
    /// Whom to tell once the loop has stopped (every caller of goodbye).
    replies: Vec<oneshot::Sender<()>>,
    waiting: HashSet<OutboundRequestId>,
    deadline: Instant,
}

/// The frame streams' tasks, stopped when the event loop is dropped.
struct FrameTasks {
    links: Arc<Links>,
    acceptor: tokio::task::AbortHandle,
}

impl Drop for FrameTasks {
    fn drop(&mut self) {
        self.links.stop();
        self.acceptor.abort();
    }
}

/// Owns the libp2p swarm. Spawn [`EventLoop::run`]; it is the only thing that makes the network
/// layer progress.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    local_peer_id: PeerId,
    cluster: String,
    /// This node's network id; empty only while a joiner's [`start`] has not learned it.
    network: String,
    rendezvous: kad::RecordKey,
    protocol_id: String,
    identify_version: String,
    kad_protocol: StreamProtocol,
    down_after: Duration,
    event_queue_len: usize,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    /// Events not yet taken by the node's receiver (bounded: see `accepts_frame` and
    /// `emit_membership`).
    outbox: VecDeque<NetEvent>,
    /// The node dropped its event receiver: events are discarded.
    events_closed: bool,
    listen_addrs: Vec<Multiaddr>,
    /// Bounded by [`MEMBERS_MAX`].
    members: HashMap<PeerId, MemberState>,
    /// Bounded by [`CANDIDATES_MAX`].
    candidates: HashMap<PeerId, Candidate>,
    /// Bounded by [`DEPARTED_MAX`]; `departed_order` is the same set, oldest first.
    departed: HashSet<PeerId>,
    departed_order: VecDeque<PeerId>,
    /// Bounded by [`FOREIGN_MAX`]; `foreign_order` is the same set, oldest first.
    foreign: HashSet<PeerId>,
    foreign_order: VecDeque<PeerId>,
    /// Whether each connected peer's connection is over loopback (then its loopback addresses
    /// are usable). One entry per connected peer.
    connected_over_loopback: HashMap<PeerId, bool>,
    /// The frame streams' queues, writers and counters.
    links: Arc<Links>,
    /// Stops the frame streams when the loop is dropped (also if it never ran).
    _frame_tasks: FrameTasks,
    /// Bounded by [`CONTROL_IN_FLIGHT_MAX`].
    pending_control: HashMap<OutboundRequestId, PeerId>,
    discovery_at: Instant,
    discovery_interval: Duration,
    tick_period: Duration,
    leaving: Option<Leaving>,
    /// Set when the loop must stop; holds whom to tell once it has.
    stop: Option<Vec<oneshot::Sender<()>>>,
}

pub(crate) async fn start(
    cfg: NetConfig,
) -> Result<(Client, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    validate(&cfg)?;
    let local_peer_id = cfg.keypair.public().to_peer_id();
    let bootstrap = cfg.bootstrap.as_ref().map(split_p2p).transpose()?;
    let protocols = Protocols::new(&cfg.protocol_id)?;
    let (streams, opener, incoming) = streams::new(protocols.frames.clone(), cfg.request_timeout);
    let mut swarm = build_swarm(&cfg, &protocols, streams)?;
    let mut listeners = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        let listener = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Setup(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(listener);
    }

    let (command_tx, command_rx) = mpsc::channel(COMMANDS_QUEUE_LEN);
    let (event_tx, event_rx) = mpsc::channel(cfg.event_queue_len);
    let limits = Limits {
        frame_max_bytes: cfg.frame_max_bytes,
        peer_frames_max: cfg.send_queue_frames_max,
        peer_bytes_max: cfg.send_queue_bytes_max,
        total_frames_max: cfg.send_queue_total_frames_max,
        total_bytes_max: cfg.send_queue_total_bytes_max,
        peers_max: PEERS_WITH_FRAMES_MAX,
        open_timeout: cfg.request_timeout,
    };
    let links = Links::new(limits, opener);
    let acceptor = tokio::spawn(accept_streams(links.clone(), incoming, event_tx.clone()));
    let frame_tasks = FrameTasks {
        links: links.clone(),
        acceptor: acceptor.abort_handle(),
    };
    let now = Instant::now();
    let mut event_loop = EventLoop {
        swarm,
        local_peer_id,
        cluster: cfg.cluster.clone(),
        network: cfg.network.clone().unwrap_or_default(),
        rendezvous: kad::RecordKey::new(&cfg.rendezvous),
        protocol_id: protocols.id,
        identify_version: protocols.identify_version,
        kad_protocol: protocols.kad,
        down_after: cfg.down_after,
        event_queue_len: cfg.event_queue_len,
        commands: command_rx,
        events: event_tx,
        outbox: VecDeque::new(),
        events_closed: false,
        listen_addrs: Vec::new(),
        members: HashMap::new(),
        candidates: HashMap::new(),
        departed: HashSet::new(),
        departed_order: VecDeque::new(),
        foreign: HashSet::new(),
        foreign_order: VecDeque::new(),
        connected_over_loopback: HashMap::new(),
        links: links.clone(),
        _frame_tasks: frame_tasks,
        pending_control: HashMap::new(),
        discovery_at: now,
        discovery_interval: DISCOVERY_INTERVAL_MIN,
        tick_period: (cfg.down_after / 8)
            .clamp(Duration::from_millis(50), Duration::from_millis(500)),
        leaving: None,
        stop: None,
    };
    let span = tracing::info_span!("net", peer = %local_peer_id, cluster = %cfg.cluster);
    async {
        event_loop.wait_for_listeners(listeners).await?;
        if let Some((peer, addr)) = bootstrap {
            event_loop
                .connect_bootstrap(peer, addr, cfg.bootstrap_timeout)
                .await?;
        }
        event_loop.start_discovery();
        Ok::<(), NetError>(())
    }
    .instrument(span)
    .await?;
    debug_assert!(valid_network_id(&event_loop.network), "known after start");
    let client = Client::new(
        local_peer_id,
        event_loop.network.clone(),
        cfg.frame_max_bytes,
        command_tx,
        links,
    );
    Ok((client, event_rx, event_loop))
}

fn validate(cfg: &NetConfig) -> Result<(), NetError> {
    let invalid = |msg: String| Err(NetError::InvalidConfig(msg));
    if cfg.cluster.is_empty() || cfg.cluster.len() > CLUSTER_ID_BYTES_MAX {
        return invalid(format!(
            "cluster id must be 1 to {CLUSTER_ID_BYTES_MAX} bytes, got {}",
            cfg.cluster.len()
        ));
    }
    match &cfg.network {
        Some(id) if !valid_network_id(id) => {
            return invalid(format!(
                "network id {id:?} must be 1 to {NETWORK_ID_BYTES_MAX} ASCII letters, digits, '-' or '_'"
            ));
        }
        None if cfg.bootstrap.is_none() => {
            return invalid(
                "no network id and no bootstrap peer: a founder needs a network id, a joiner a bootstrap peer to learn it from"
                    .into(),
            );
        }
        _ => {}
    }
    if cfg.listen.is_empty() {
        return invalid("no listen address".into());
    }
    if cfg.rendezvous.is_empty() {
        return invalid("empty rendezvous key".into());
    }
    if cfg.frame_max_bytes == 0 || cfg.frame_max_bytes > u32::MAX as usize {
        return invalid(format!(
            "frame_max_bytes must be 1 to {}, got {}",
            u32::MAX,
            cfg.frame_max_bytes
        ));
    }
    if cfg.event_queue_len == 0
        || cfg.send_queue_frames_max == 0
        || cfg.send_queue_total_frames_max < cfg.send_queue_frames_max
    {
        return invalid(format!(
            "event_queue_len and send_queue_frames_max must be positive, and send_queue_total_frames_max at least send_queue_frames_max; got {}, {} and {}",
            cfg.event_queue_len, cfg.send_queue_frames_max, cfg.send_queue_total_frames_max
        ));
    }
    if cfg.send_queue_bytes_max < cfg.frame_max_bytes
        || cfg.send_queue_total_bytes_max < cfg.send_queue_bytes_max
    {
        return invalid(format!(
            "send_queue_bytes_max must be at least frame_max_bytes, and send_queue_total_bytes_max at least send_queue_bytes_max; got {}, {} and {}",
            cfg.send_queue_bytes_max, cfg.frame_max_bytes, cfg.send_queue_total_bytes_max
        ));
    }
    if cfg.down_after.is_zero() || cfg.request_timeout.is_zero() {
        return invalid("down_after and request_timeout must be positive".into());
    }
    Ok(())
}

/// Splits `/.../p2p/<peer>` into the peer id and the address without the suffix.
fn split_p2p(addr: &Multiaddr) -> Result<(PeerId, Multiaddr), NetError> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Ok((peer, base)),
        _ => Err(NetError::InvalidConfig(format!(
            "bootstrap address {addr} must end with /p2p/<peer id>"
        ))),
    }
}

fn build_swarm(
    cfg: &NetConfig,
    protocols: &Protocols,
    streams: streams::Behaviour,
) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| NetError::Setup(format!("{what}: {e}"));
    let local_peer_id = cfg.keypair.public().to_peer_id();
    let ping_interval =
        (cfg.down_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));

    let mut kad_config = kad::Config::new(protocols.kad.clone());
    kad_config
        .set_query_timeout(KAD_QUERY_TIMEOUT)
        .set_max_packet_size(KAD_PACKET_BYTES_MAX)
        .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
        .set_provider_publication_interval(Some(PROVIDER_REPUBLISH_INTERVAL))
        // Nothing a peer sends is stored without our say: only provider records for our
        // rendezvous key are (see `on_kad`), so the store stays bounded.
        .set_record_filtering(kad::StoreInserts::FilterBoth);
    let store = MemoryStore::with_config(
        local_peer_id,
        MemoryStoreConfig {
            max_records: 1,
            max_value_bytes: 1,
            max_providers_per_key: MEMBERS_MAX,
            max_provided_keys: 16,
        },
    );
    let mut kad = kad::Behaviour::with_config(local_peer_id, store, kad_config);
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(protocols.identify_version.clone(), cfg.keypair.public())
            .with_agent_version(format!("replicator/{}", env!("CARGO_PKG_VERSION")))
            .with_push_listen_addr_updates(true),
    );
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(ping_interval)
            .with_timeout(ping_interval.max(Duration::from_secs(1))),
    );
    let rr_config = rr::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX);
    let control = rr::Behaviour::with_codec(
        FrameCodec::new(CONTROL_FRAME_BYTES_MAX, CONTROL_FRAME_BYTES_MAX),
        [(protocols.control.clone(), ProtocolSupport::Full)],
        rr_config,
    );
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(PENDING_INCOMING_MAX))
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
            .with_max_established(Some(CONNECTIONS_MAX)),
    );
    let behaviour = Behaviour {
        limits,
        kad,
        identify,
        ping,
        streams,
        control,
    };

    let transport = crate::admission::transport(cfg)?;
    let swarm = SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .unwrap_or_else(|never| match never {})
        .with_dns()
        .map_err(|e| setup("dns resolver", &e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| setup("behaviour", &e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .with_connection_timeout(cfg.handshake_timeout)
        .build();
    Ok(swarm)
}

impl EventLoop {
    /// Runs the network layer until every [`Client`] is dropped, or [`Client::goodbye`] or
    /// [`Client::shutdown`] completes. Spawn it: `tokio::spawn(event_loop.run())`.
    pub async fn run(self) {
        let span = tracing::info_span!(
            "net",
            peer = %self.local_peer_id,
            cluster = %self.cluster,
            network = %self.network
        );
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        let mut tick = tokio::time::interval(self.tick_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.stop.is_none() {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => {
                        debug!("every client dropped: stopping");
                        self.stop = Some(Vec::new());
                    }
                },
                _ = tick.tick() => self.on_tick(Instant::now()),
                permit = self.events.clone().reserve_owned(), if !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => self.close_events(),
                },
            }
            self.flush_outbox();
        }
        let replies = self.stop.take().unwrap_or_default();
        // Closes the connections, stops the frame writers and readers.
        drop(self);
        info!("network stopped");
        for reply in replies {
            let _ = reply.send(());
        }
    }

    async fn wait_for_listeners(
        &mut self,
        listeners: Vec<libp2p::core::transport::ListenerId>,
    ) -> Result<(), NetError> {
        let deadline = Instant::now() + LISTEN_WAIT;
        let mut waiting: HashSet<_> = listeners.into_iter().collect();
        while !waiting.is_empty() {
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NetError::Setup("listeners did not report an address".into()));
                }
            };
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if waiting.contains(listener_id) => {
                    return Err(NetError::Setup(format!("listener closed: {reason:?}")));
                }
                SwarmEvent::ListenerError { listener_id, error }
                    if waiting.contains(listener_id) =>
                {
                    return Err(NetError::Setup(format!("listener failed: {error}")));
                }
                _ => {}
            }
            self.on_swarm_event(event);
        }
        Ok(())
    }

    /// Connects to the bootstrap peer and Hellos it until its Hello answer arrives, which tells
    /// its network id: adopted if this node has none, checked otherwise. Fails fast when the
    /// peer belongs to another network or does not speak this deployment's protocols.
    async fn connect_bootstrap(
        &mut self,
        peer: PeerId,
        addr: Multiaddr,
        timeout: Duration,
    ) -> Result<(), NetError> {
        if peer == self.local_peer_id {
            return Err(NetError::InvalidConfig(
                "the bootstrap address names this node itself".into(),
            ));
        }
        info!(bootstrap = %peer, %addr, "connecting to the bootstrap peer");
        self.swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, addr.clone());
        let full_addr = addr.clone().with(Protocol::P2p(peer));
        let learning = self.network.is_empty();
        let deadline = Instant::now() + timeout;
        let mut dial_at = Some(Instant::now());
        // Earliest time for the next Hello, while connected and none is in flight (the first
        // one goes out when the connection is established).
        let mut hello_at = Instant::now();
        let mut last_error = "no dial attempt finished".to_owned();
        // The protocol version the peer announced (identify), and when to stop waiting for it
        // once the peer refused the Hello protocol.
        let mut their_version: Option<String> = None;
        let mut refused_until: Option<Instant> = None;
        // The network id of a bootstrap peer of another network (from its own Hello), and
        // until when to wait for its answer to ours.
        let mut foreign: Option<(String, Instant)> = None;
        loop {
            let now = Instant::now();
            let connected = self.swarm.is_connected(&peer);
            if !connected
                && let Some(at) = dial_at
                && now >= at
            {
                dial_at = None;
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    last_error = e.to_string();
                    dial_at = Some(now + BOOTSTRAP_REDIAL);
                }
            }
            let hello_in_flight = self.pending_control.values().any(|p| *p == peer);
            if connected && !hello_in_flight && now >= hello_at {
                self.send_hello(peer);
                hello_at = now + BOOTSTRAP_REDIAL;
            }
            if refused_until.is_some_and(|until| now >= until) {
                return Err(self.protocol_mismatch(&full_addr, their_version.as_deref()));
            }
            if let Some((theirs, until)) = &foreign
                && now >= *until
            {
                let theirs = theirs.clone();
                return self.bootstrap_network(&full_addr, &theirs);
            }
            let mut wake_at = deadline;
            if !connected && let Some(at) = dial_at {
                wake_at = wake_at.min(at);
            }
            if connected && !self.pending_control.values().any(|p| *p == peer) {
                wake_at = wake_at.min(hello_at);
            }
            if let Some(until) = refused_until {
                wake_at = wake_at.min(until);
            }
            if let Some((_, until)) = &foreign {
                wake_at = wake_at.min(*until);
            }
            if now >= deadline {
                warn!(bootstrap = %peer, %addr, error = %last_error, "bootstrap peer unreachable");
                let what = if connected {
                    "no Hello answer"
                } else {
                    "no connection"
                };
                return Err(NetError::BootstrapUnreachable {
                    addr: full_addr,
                    reason: format!("{what} within {timeout:?}; last error: {last_error}"),
                });
            }
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                _ = tokio::time::sleep_until(wake_at) => continue,
            };
            let now = Instant::now();
            let mut answered = false;
            match &event {
                SwarmEvent::OutgoingConnectionError {
                    peer_id: Some(failed),
                    error,
                    ..
                } if *failed == peer => {
                    last_error = error.to_string();
                    debug!(bootstrap = %peer, error = %last_error, "bootstrap dial failed; retrying");
                    dial_at = Some(now + BOOTSTRAP_REDIAL);
                }
                SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    cause,
                    ..
                } if *peer_id == peer => {
                    last_error = format!("connection closed: {cause:?}");
                    dial_at = Some(now + BOOTSTRAP_REDIAL);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) if *peer_id == peer => {
                    if info.protocol_version != self.identify_version {
                        return Err(
                            self.protocol_mismatch(&full_addr, Some(&info.protocol_version))
                        );
                    }
                    their_version = Some(info.protocol_version.clone());
                    if refused_until.is_some() {
                        return Err(self.protocol_mismatch(&full_addr, their_version.as_deref()));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Control(rr::Event::OutboundFailure {
                    peer: failed,
                    error,
                    ..
                })) if *failed == peer => {
                    if matches!(error, rr::OutboundFailure::UnsupportedProtocols) {
                        if their_version.is_some() {
                            return Err(
                                self.protocol_mismatch(&full_addr, their_version.as_deref())
                            );
                        }
                        refused_until.get_or_insert((now + BOOTSTRAP_FAILURE_GRACE).min(deadline));
                    }
                    if let Some((theirs, _)) = foreign.take() {
                        return self.bootstrap_network(&full_addr, &theirs);
                    }
                    last_error = format!("Hello not answered: {error}");
                    debug!(bootstrap = %peer, error = %last_error, "bootstrap Hello failed; retrying");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Control(rr::Event::Message {
                    peer: from,
                    message: rr::Message::Request { request, .. },
                    ..
                })) if *from == peer => {
                    // The bootstrap peer's own Hello may come before its answer: adopt the
                    // network id now, so that this node's answer carries it. If it is another
                    // network's, fail once the peer has answered ours (so it reports this node
                    // too), or shortly.
                    if let Ok(Control::Hello(hello)) = Control::decode(request)
                        && !hello.network.is_empty()
                    {
                        if self.network.is_empty() {
                            self.bootstrap_network(&full_addr, &hello.network)?;
                        } else if hello.network != self.network && foreign.is_none() {
                            let until = (now + BOOTSTRAP_FAILURE_GRACE).min(deadline);
                            foreign = Some((hello.network, until));
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Control(rr::Event::Message {
                    peer: from,
                    message: rr::Message::Response { response, .. },
                    ..
                })) if *from == peer => match Control::decode(response) {
                    Ok(Control::Hello(hello)) if hello.network.is_empty() => {
                        last_error =
                            "the bootstrap peer does not know its network id yet (it is joining)"
                                .to_owned();
                    }
                    Ok(Control::Hello(hello)) => {
                        self.bootstrap_network(&full_addr, &hello.network)?;
                        answered = true;
                    }
                    Ok(Control::Ack) => last_error = "the bootstrap peer is leaving".to_owned(),
                    Ok(Control::Goodbye) => last_error = "unexpected Goodbye answer".to_owned(),
                    Err(e) => last_error = format!("malformed Hello answer: {e}"),
                },
                _ => {}
            }
            self.on_swarm_event(event);
            if answered {
                break;
            }
        }
        info!(bootstrap = %peer, network = %self.network, "the bootstrap peer answered");
        if learning {
            // The first Hello carried no network id, so the bootstrap peer did not make this
            // node a member; this one does.
            self.send_hello(peer);
        }
        if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
            debug!(error = %e, "kademlia bootstrap not started");
        }
        Ok(())
    }

    /// The bootstrap peer's network id: adopted if this node has none yet, else checked.
    fn bootstrap_network(&mut self, addr: &Multiaddr, theirs: &str) -> Result<(), NetError> {
        if self.network.is_empty() {
            info!(network = %theirs, "adopting the network id of the bootstrap peer");
            self.network = theirs.to_owned();
            return Ok(());
        }
        if self.network != theirs {
            error!(bootstrap = %addr, ours = %self.network, theirs = %theirs, "the bootstrap peer belongs to another network");
            return Err(NetError::ForeignNetwork {
                addr: addr.clone(),
                ours: self.network.clone(),
                theirs: theirs.to_owned(),
            });
        }
        Ok(())
    }

    /// The error for a bootstrap peer that does not speak this deployment's protocols, given
    /// the protocol version it announced (if any).
    fn protocol_mismatch(&self, addr: &Multiaddr, their_version: Option<&str>) -> NetError {
        let theirs = match their_version {
            None => String::new(),
            Some(version) => match version
                .strip_prefix("/replicator/")
                .and_then(|rest| rest.strip_suffix("/1.0.0"))
            {
                Some(id) if id != self.protocol_id && Protocols::new(id).is_ok() => id.to_owned(),
                _ => version.chars().take(PROTOCOL_VERSION_QUOTED_MAX).collect(),
            },
        };
        error!(bootstrap = %addr, ours = %self.protocol_id, theirs = %theirs, "the bootstrap peer does not speak this node's protocols");
        NetError::ProtocolMismatch {
            addr: addr.clone(),
            ours: self.protocol_id.clone(),
            theirs,
        }
    }

    fn start_discovery(&mut self) {
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(self.rendezvous.clone())
        {
            warn!(error = %e, "cannot advertise in the DHT");
        }
        self.discovery_at = Instant::now();
        self.discovery_interval = DISCOVERY_INTERVAL_MIN;
    }

    // ---- inputs -------------------------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                let local = self.local_peer_id;
                let addrs = self
                    .listen_addrs
                    .iter()
                    .map(|a| a.clone().with(Protocol::P2p(local)))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Local { frame } => {
                if self.leaving.is_none() && self.accepts_frame() {
                    let from = self.local_peer_id;
                    self.outbox.push_back(NetEvent::Message { from, frame });
                } else {
                    self.links.count_dropped();
                }
            }
            Command::Members { reply } => {
                let mut members: Vec<Member> = self
                    .members
                    .iter()
                    .map(|(peer, m)| Member {
                        peer: *peer,
                        cluster: m.cluster.clone(),
                        network: m.network.clone(),
                        addrs: m.addrs.clone(),
                        up: m.up,
                    })
                    .collect();
                members.sort_by_key(|m| m.peer);
                let _ = reply.send(members);
            }
            Command::ForgetPeer { peer, reply } => {
                if self.members.remove(&peer).is_some() {
                    info!(%peer, "member forgotten by the operator");
                }
                self.candidates.remove(&peer);
                self.remember_departed(peer);
                self.links.forget(&peer);
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
                let _ = reply.send(());
            }
            Command::Goodbye { reply } => self.start_leaving(reply),
            Command::Shutdown { reply } => {
                info!("shutting down without goodbye");
                self.stop.get_or_insert_with(Vec::new).push(reply);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => match event.result {
                Ok(_) => self.contact(event.peer),
                Err(e) => debug!(peer = %event.peer, error = %e, "ping failed"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Streams(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Control(event)) => self.on_control(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, remote = %endpoint.get_remote_address(), "connected");
                let loopback = is_loopback(endpoint.get_remote_address());
                *self
                    .connected_over_loopback
                    .entry(peer_id)
                    .or_insert(loopback) |= loopback;
                self.contact(peer_id);
                self.links.connected(&peer_id);
                if num_established.get() == 1 {
                    self.send_hello(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if num_established == 0 {
                    self.connected_over_loopback.remove(&peer_id);
                    if let Some(member) = self.members.get_mut(&peer_id) {
                        member.redial_at = Instant::now() + REDIAL_BACKOFF_MIN;
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(remote = %send_back_addr, error = %error, "inbound connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                if self.listen_addrs.len() < LISTEN_ADDRS_MAX
                    && !self.listen_addrs.contains(&address)
                {
                    self.listen_addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                warn!(reason = ?reason, "listener closed");
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(error = %error, "listener error");
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed { result, .. } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    for peer in providers {
                        self.learn_candidate(peer, Vec::new());
                    }
                }
                kad::QueryResult::GetProviders(Ok(_)) => {}
                kad::QueryResult::GetProviders(Err(e)) => {
                    debug!(error = %e, "provider lookup failed");
                }
                kad::QueryResult::StartProviding(result)
                | kad::QueryResult::RepublishProvider(result) => {
                    if let Err(e) = result {
                        debug!(error = %e, "advertising in the DHT did not reach every peer");
                    }
                }
                kad::QueryResult::Bootstrap(Err(e)) => {
                    debug!(error = %e, "kademlia bootstrap failed");
                }
                _ => {}
            },
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                if record.key != self.rendezvous {
                    debug!(provider = %record.provider, "ignoring provider record for a foreign key");
                } else if self.foreign.contains(&record.provider) {
                    debug!(provider = %record.provider, "ignoring provider record of a peer of another network");
                } else if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .add_provider(record)
                {
                    debug!(error = %e, "cannot store provider record");
                }
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        if info.protocol_version != self.identify_version
            || !info.protocols.contains(&self.kad_protocol)
        {
            debug!(peer = %peer_id, version = %info.protocol_version, "peer of another deployment; not routing through it");
            return;
        }
        if self.foreign.contains(&peer_id) {
            debug!(peer = %peer_id, "peer of another network; not routing through it");
            return;
        }
        let loopback = self.over_loopback(&peer_id);
        for addr in usable_addrs(info.listen_addrs, loopback) {
            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
        }
    }

    fn on_control(&mut self, event: rr::Event<Vec<u8>, Vec<u8>>) {
        match event {
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let answer = match Control::decode(&request) {
                    Ok(Control::Hello(hello)) => {
                        self.on_hello(peer, hello, true);
                        if self.leaving.is_some() {
                            Control::Ack
                        } else {
                            Control::Hello(self.local_hello())
                        }
                    }
                    Ok(Control::Goodbye) => {
                        self.on_goodbye(peer);
                        Control::Ack
                    }
                    Ok(Control::Ack) => {
                        warn!(%peer, "unexpected Ack request; dropped");
                        return;
                    }
                    Err(e) => {
                        warn!(%peer, error = %e, "malformed control message; dropped");
                        return;
                    }
                };
                if self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, answer.encode())
                    .is_err()
                {
                    debug!(%peer, "control answer not sent: stream closed");
                }
            }
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.pending_control.remove(&request_id);
                match Control::decode(&response) {
                    Ok(Control::Hello(hello)) => self.on_hello(peer, hello, false),
                    Ok(Control::Ack) => {}
                    Ok(Control::Goodbye) => warn!(%peer, "unexpected Goodbye answer; dropped"),
                    Err(e) => warn!(%peer, error = %e, "malformed control answer; dropped"),
                }
                self.control_request_done(request_id);
            }
            rr::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, error = %error, "control request failed");
                self.pending_control.remove(&request_id);
                self.control_request_done(request_id);
            }
            rr::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, error = %error, "inbound control request failed");
            }
            rr::Event::ResponseSent { .. } => {}
        }
    }

    /// A Hello from `peer`: as a request (`first_hand`, the peer contacted us itself) or as
    /// the answer to ours.
    fn on_hello(&mut self, peer: PeerId, hello: Hello, first_hand: bool) {
        if peer == self.local_peer_id || self.leaving.is_some() {
            return;
        }
        if hello.cluster.is_empty() {
            warn!(%peer, "Hello with an empty cluster id; ignored");
            return;
        }
        if self.network.is_empty() {
            // Only while a joiner's `start` waits for its bootstrap peer's answer.
            debug!(%peer, "Hello before this node knows its network id; ignored");
            return;
        }
        if hello.network.is_empty() {
            // A joiner that has not learned the network id yet: it learns it from our answer
            // and Hellos again with it.
            debug!(%peer, "Hello without a network id (a joining node); answered, not a member yet");
            return;
        }
        if hello.network != self.network {
            self.on_foreign_hello(peer, hello.network, first_hand);
            return;
        }
        if self.departed.contains(&peer) {
            if !first_hand {
                // An answer may overtake the goodbye that followed it; only the peer's own
                // new Hello brings it back.
                debug!(%peer, "Hello answer from a departed peer; ignored");
                return;
            }
            self.forget_departed(&peer);
        }
        let loopback = self.over_loopback(&peer);
        let addrs = usable_addrs(hello.addrs, loopback);
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        self.candidates.remove(&peer);
        let now = Instant::now();
        match self.members.get_mut(&peer) {
            Some(member) => {
                if member.network != hello.network {
                    info!(%peer, network = %hello.network, "member is back in this node's network");
                    member.network = hello.network;
                }
                if member.cluster != hello.cluster {
                    warn!(%peer, old = %member.cluster, new = %hello.cluster, "member changed its cluster id");
                    member.cluster = hello.cluster;
                }
                if !addrs.is_empty() {
                    member.addrs = addrs;
                }
            }
            None => {
                if self.members.len() >= MEMBERS_MAX {
                    warn!(%peer, max = MEMBERS_MAX, "membership full; peer ignored");
                    return;
                }
                info!(%peer, cluster = %hello.cluster, "member discovered");
                let member = Member {
                    peer,
                    cluster: hello.cluster.clone(),
                    network: hello.network.clone(),
                    addrs: addrs.clone(),
                    up: true,
                };
                self.members.insert(
                    peer,
                    MemberState {
                        cluster: hello.cluster,
                        network: hello.network,
                        addrs,
                        up: true,
                        last_contact: now,
                        redial_at: now,
                        redial_backoff: REDIAL_BACKOFF_MIN,
                    },
                );
                self.emit_membership(NetEvent::MemberDiscovered(member));
            }
        }
        self.contact(peer);
        for gossiped in hello.members {
            let addrs = usable_addrs(gossiped.addrs, loopback);
            self.learn_candidate(gossiped.peer, addrs);
        }
    }

    /// A Hello with another network id than this node's: the peer is not (or no longer) a
    /// member; it is reported once, forgotten as a candidate and by the DHT, and not dialed
    /// again. Its gossip is not read.
    fn on_foreign_hello(&mut self, peer: PeerId, network: String, first_hand: bool) {
        self.candidates.remove(&peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        let mut went_down = false;
        if let Some(member) = self.members.get_mut(&peer) {
            if member.network != network {
                error!(%peer, ours = %self.network, theirs = %network, "a member now advertises another network id: reported down, no longer dialed");
                member.network = network.clone();
            }
            went_down = std::mem::replace(&mut member.up, false);
        }
        if went_down {
            self.emit_membership(NetEvent::PeerDown(peer));
        }
        if self.remember_foreign(peer) {
            error!(%peer, ours = %self.network, theirs = %network, "peer belongs to another network: not a member");
            self.emit_membership(NetEvent::ForeignNetwork { peer, network });
        } else {
            debug!(%peer, theirs = %network, "Hello from a peer of another network; ignored");
        }
        if !first_hand {
            // Our Hello was answered, so the peer has read ours and knows we are foreign too:
            // nothing more to say on this connection. (A peer that Helloed us first is left
            // to close it once it has read our answer.)
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_goodbye(&mut self, peer: PeerId) {
        if self.members.remove(&peer).is_some() {
            info!(%peer, "member left");
            self.emit_membership(NetEvent::PeerLeft(peer));
        }
        self.candidates.remove(&peer);
        self.remember_departed(peer);
        self.links.forget(&peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
    }

    fn on_tick(&mut self, now: Instant) {
        self.links.collect_garbage();
        // Liveness: report silent members down, redial the disconnected ones, and drop the
        // connections of down members (a connection that carries no ping answer for
        // `down_after` is not worth keeping: a fresh dial tells more).
        let mut went_down = Vec::new();
        let mut to_dial = Vec::new();
        let mut stale = Vec::new();
        for (peer, member) in &mut self.members {
            if member.network != self.network {
                // A member that moved to another network: down, and not redialed.
                continue;
            }
            if member.up && now.duration_since(member.last_contact) >= self.down_after {
                member.up = false;
                went_down.push(*peer);
            }
            if now >= member.redial_at {
                if !self.swarm.is_connected(peer) {
                    to_dial.push((*peer, member.addrs.clone()));
                } else if !member.up {
                    stale.push(*peer);
                } else {
                    continue;
                }
                member.redial_at = now + member.redial_backoff;
                member.redial_backoff = (member.redial_backoff * 2).min(REDIAL_BACKOFF_MAX);
            }
        }
        for peer in went_down {
            warn!(%peer, down_after = ?self.down_after, "member down");
            self.emit_membership(NetEvent::PeerDown(peer));
        }
        for peer in stale {
            debug!(%peer, "closing the connections of a down member");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        // Candidates: dial them, or Hello them again if connected without a Hello answer.
        let mut to_hello = Vec::new();
        for (peer, candidate) in &mut self.candidates {
            if now < candidate.dial_at {
                continue;
            }
            candidate.dial_at = now + candidate.backoff;
            candidate.backoff = (candidate.backoff * 2).min(CANDIDATE_BACKOFF_MAX);
            if self.swarm.is_connected(peer) {
                to_hello.push(*peer);
            } else {
                to_dial.push((*peer, candidate.addrs.clone()));
            }
        }
        for (peer, addrs) in to_dial {
            self.dial(peer, addrs);
        }
        for peer in to_hello {
            self.send_hello(peer);
        }
        // Discovery through the DHT.
        if now >= self.discovery_at && self.leaving.is_none() {
            self.swarm
                .behaviour_mut()
                .kad
                .get_providers(self.rendezvous.clone());
            self.discovery_at = now + self.discovery_interval;
            self.discovery_interval = (self.discovery_interval * 3 / 2).min(DISCOVERY_INTERVAL_MAX);
        }
        if self.leaving.as_ref().is_some_and(|l| now >= l.deadline) {
            let waiting = self.leaving.as_ref().map_or(0, |l| l.waiting.len());
            warn!(
                unacknowledged = waiting,
                "goodbye not acknowledged by every member"
            );
            self.finish_leaving();
        }
    }

    // ---- mutators -----------------------------------------------------------------------

    /// A successful exchange with `peer`: refreshes its liveness.
    fn contact(&mut self, peer: PeerId) {
        let Some(member) = self.members.get_mut(&peer) else {
            return;
        };
        if member.network != self.network {
            return;
        }
        member.last_contact = Instant::now();
        member.redial_backoff = REDIAL_BACKOFF_MIN;
        if !member.up {
            member.up = true;
            info!(%peer, "member up again");
            self.emit_membership(NetEvent::PeerUp(peer));
        }
    }

    /// A peer named by the DHT or by a member's gossip: dial it and Hello it.
    fn learn_candidate(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_peer_id
            || self.members.contains_key(&peer)
            || self.departed.contains(&peer)
            || self.foreign.contains(&peer)
            || self.leaving.is_some()
        {
            return;
        }
        let now = Instant::now();
        if let Some(candidate) = self.candidates.get_mut(&peer) {
            let mut learned = false;
            for addr in addrs {
                if candidate.addrs.len() < MEMBER_ADDRS_MAX && !candidate.addrs.contains(&addr) {
                    candidate.addrs.push(addr);
                    learned = true;
                }
            }
            if learned {
                candidate.dial_at = now;
            }
            return;
        }
        if self.candidates.len() >= CANDIDATES_MAX {
            debug!(%peer, "too many candidates; ignored");
            return;
        }
        debug!(%peer, "candidate member");
        self.candidates.insert(
            peer,
            Candidate {
                addrs,
                dial_at: now,
                backoff: CANDIDATE_BACKOFF_MIN,
            },
        );
    }

    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "not dialing");
        }
    }

    fn send_hello(&mut self, peer: PeerId) {
        if self.leaving.is_some() || self.departed.contains(&peer) {
            return;
        }
        if self.pending_control.len() >= CONTROL_IN_FLIGHT_MAX
            || self.pending_control.values().any(|p| *p == peer)
        {
            return;
        }
        let hello = Control::Hello(self.local_hello()).encode();
        let request_id = self
            .swarm
            .behaviour_mut()
            .control
            .send_request(&peer, hello);
        self.pending_control.insert(request_id, peer);
    }

    fn local_hello(&self) -> Hello {
        let members = self
            .members
            .iter()
            .filter(|(_, m)| m.network == self.network)
            .map(|(peer, m)| GossipMember {
                peer: *peer,
                cluster: m.cluster.clone(),
                addrs: m.addrs.clone(),
            })
            .collect();
        Hello {
            network: self.network.clone(),
            cluster: self.cluster.clone(),
            addrs: self
                .listen_addrs
                .iter()
                .filter(|a| usable_addr(a, true).is_some())
                .take(MEMBER_ADDRS_MAX)
                .cloned()
                .collect(),
            members,
        }
    }

    fn start_leaving(&mut self, reply: oneshot::Sender<()>) {
        if let Some(leaving) = &mut self.leaving {
            // Already leaving: this caller is told when the loop stops, like the first.
            leaving.replies.push(reply);
            return;
        }
        info!(members = self.members.len(), "saying goodbye");
        // Frames already queued are still written; new ones are refused.
        self.links.refuse_new();
        let rendezvous = self.rendezvous.clone();
        self.swarm.behaviour_mut().kad.stop_providing(&rendezvous);
        let goodbye = Control::Goodbye.encode();
        let mut waiting = HashSet::new();
        let peers: Vec<(PeerId, Vec<Multiaddr>)> = self
            .members
            .iter()
            .filter(|(_, m)| m.network == self.network)
            .map(|(peer, m)| (*peer, m.addrs.clone()))
            .collect();
        for (peer, addrs) in peers {
            let request_id = self
                .swarm
                .behaviour_mut()
                .control
                .send_request_with_addresses(&peer, goodbye.clone(), addrs);
            self.pending_control.insert(request_id, peer);
            waiting.insert(request_id);
        }
        self.candidates.clear();
        self.leaving = Some(Leaving {
            replies: vec![reply],
            waiting,
            deadline: Instant::now() + GOODBYE_WAIT,
        });
        self.control_request_done_check();
    }

    fn control_request_done(&mut self, request_id: OutboundRequestId) {
        if let Some(leaving) = &mut self.leaving {
            leaving.waiting.remove(&request_id);
        }
        self.control_request_done_check();
    }

    fn control_request_done_check(&mut self) {
        if self.leaving.as_ref().is_some_and(|l| l.waiting.is_empty()) {
            self.finish_leaving();
        }
    }

    fn finish_leaving(&mut self) {
        if let Some(leaving) = self.leaving.take() {
            info!("goodbye done");
            self.stop
                .get_or_insert_with(Vec::new)
                .extend(leaving.replies);
        }
    }

    fn remember_departed(&mut self, peer: PeerId) {
        if !self.departed.insert(peer) {
            return;
        }
        self.departed_order.push_back(peer);
        if self.departed_order.len() > DEPARTED_MAX
            && let Some(oldest) = self.departed_order.pop_front()
        {
            self.departed.remove(&oldest);
        }
    }

    /// Remembers a peer of another network; false if it already was.
    fn remember_foreign(&mut self, peer: PeerId) -> bool {
        if !self.foreign.insert(peer) {
            return false;
        }
        self.foreign_order.push_back(peer);
        if self.foreign_order.len() > FOREIGN_MAX
            && let Some(oldest) = self.foreign_order.pop_front()
        {
            self.foreign.remove(&oldest);
        }
        true
    }

    fn forget_departed(&mut self, peer: &PeerId) {
        if self.departed.remove(peer) {
            self.departed_order.retain(|p| p != peer);
        }
    }

    /// Whether a frame from a peer may be queued for the node: fewer than `event_queue_len`
    /// events are waiting, counting those already in the channel.
    fn accepts_frame(&self) -> bool {
        let in_channel = self.events.max_capacity() - self.events.capacity();
        !self.events_closed && self.outbox.len() + in_channel < self.event_queue_len
    }

    fn emit_membership(&mut self, event: NetEvent) {
        if self.events_closed {
            return;
        }
        if self.outbox.len() >= self.event_queue_len + MEMBERSHIP_EVENTS_QUEUED_MAX {
            warn!(?event, "event queue full: membership event dropped");
            return;
        }
        self.outbox.push_back(event);
    }

    /// Moves queued events into the channel while it has room.
    fn flush_outbox(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.close_events();
                    return;
                }
            }
        }
    }

    fn close_events(&mut self) {
        if !self.events_closed {
            debug!("event receiver dropped: events are discarded");
        }
        self.events_closed = true;
        self.outbox.clear();
    }

    // ---- helpers ------------------------------------------------------------------------

    fn over_loopback(&self, peer: &PeerId) -> bool {
        self.connected_over_loopback
            .get(peer)
            .copied()
            .unwrap_or(false)
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// `addr` without a `/p2p` suffix, if it is a TCP address this node can dial: a routable IP
/// (loopback only when `allow_loopback`, i.e. the informant is on this host) or a DNS name.
fn usable_addr(addr: &Multiaddr, allow_loopback: bool) -> Option<Multiaddr> {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    let mut parts = addr.iter();
    let host_ok = match parts.next() {
        Some(Protocol::Ip4(ip)) => {
            !ip.is_unspecified()
                && !ip.is_multicast()
                && !ip.is_broadcast()
                && (allow_loopback || !ip.is_loopback())
        }
        Some(Protocol::Ip6(ip)) => {
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            !ip.is_unspecified()
                && !ip.is_multicast()
                && !link_local
                && (allow_loopback || !ip.is_loopback())
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    };
    let port_ok = matches!(parts.next(), Some(Protocol::Tcp(port)) if port != 0);
    (host_ok && port_ok && parts.next().is_none()).then_some(addr)
}

fn usable_addrs(addrs: Vec<Multiaddr>, allow_loopback: bool) -> Vec<Multiaddr> {
    let mut usable: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        if usable.len() >= MEMBER_ADDRS_MAX {
            break;
        }
        if let Some(addr) = usable_addr(&addr, allow_loopback)
            && !usable.contains(&addr)
        {
            usable.push(addr);
        }
    }
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn addresses_are_filtered() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let with_p2p = ma("/ip4/10.0.0.1/tcp/4001").with(Protocol::P2p(peer));
        assert_eq!(
            usable_addr(&with_p2p, false),
            Some(ma("/ip4/10.0.0.1/tcp/4001"))
        );
        assert_eq!(usable_addr(&ma("/ip4/127.0.0.1/tcp/4001"), false), None);
        assert!(usable_addr(&ma("/ip4/127.0.0.1/tcp/4001"), true).is_some());
        assert_eq!(usable_addr(&ma("/ip4/0.0.0.0/tcp/4001"), true), None);
        assert_eq!(usable_addr(&ma("/ip4/10.0.0.1/tcp/0"), true), None);
        assert_eq!(
            usable_addr(&ma("/ip4/10.0.0.1/udp/4001/quic-v1"), true),
            None
        );
        assert_eq!(usable_addr(&ma("/ip6/fe80::1/tcp/4001"), true), None);
        assert!(usable_addr(&ma("/dns4/node-1/tcp/4001"), false).is_some());
        let many: Vec<Multiaddr> = (1..=20)
            .map(|i| ma(&format!("/ip4/10.0.0.{i}/tcp/1")))
            .collect();
        assert_eq!(usable_addrs(many, false).len(), MEMBER_ADDRS_MAX);
    }

    #[test]
    fn protocol_ids_are_validated() {
        assert!(Protocols::new("prod-eu.1").is_ok());
        assert!(Protocols::new("").is_err());
        assert!(Protocols::new("a/b").is_err());
        assert!(Protocols::new(&"x".repeat(65)).is_err());
        let protocols = Protocols::new("t1").expect("valid");
        assert_eq!(protocols.kad.as_ref(), "/replicator/t1/kad/1.0.0");
    }

    #[test]
    fn bootstrap_address_needs_a_peer_id() {
        assert!(split_p2p(&ma("/ip4/127.0.0.1/tcp/1")).is_err());
    }
}
