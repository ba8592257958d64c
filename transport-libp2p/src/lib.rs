//! The libp2p network layer of `replicator`: it moves opaque byte frames between nodes and
//! discovers the members of the replication group. It contains no protocol logic: the protocol
//! (`replicator-core`) encodes its messages to bytes, this crate carries them.
//!
//! # Shape
//! [`start`] builds a libp2p swarm (TCP + noise + yamux, identify, ping, a private Kademlia DHT,
//! a request-response protocol for membership, and frame streams) and returns three things:
//! - a [`Client`]: a cheap, cloneable handle that queues frames and sends commands to the
//!   event loop;
//! - a `tokio::sync::mpsc::Receiver<NetEvent>`: what the network tells the node
//!   ([`NetEvent::Message`], membership changes);
//! - an [`EventLoop`]: owns the swarm; spawn [`EventLoop::run`] on a tokio runtime.
//!
//! ```no_run
//! # async fn demo() -> Result<(), transport_libp2p::NetError> {
//! use transport_libp2p::{start, NetConfig, NetEvent};
//! let keypair = libp2p::identity::Keypair::generate_ed25519();
//! let mut cfg = NetConfig::new(keypair, "cluster-a");
//! cfg.network = Some("9f1c2e".into()); // the founder's id; a joiner sets `bootstrap` instead
//! let (client, mut events, event_loop) = start(cfg).await?;
//! tokio::spawn(event_loop.run());
//! while let Some(event) = events.recv().await {
//!     match event {
//!         NetEvent::Message { from, frame } => {
//!             // Answer: queued at once, written by the peer's writer task.
//!             let _ = client.send(from, frame);
//!         }
//!         other => tracing::info!(?other, "membership"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Wiring it into a node
//! - Spawn [`EventLoop::run`] right after [`start`]; nothing moves until it runs.
//! - [`start`] returns only once the bootstrap peer has answered this node's Hello, so the
//!   network id is known ([`Client::network`]; a joiner started without one must persist it
//!   before it copies anything), or fails: [`NetError::BootstrapUnreachable`],
//!   [`NetError::ForeignNetwork`], [`NetError::ProtocolMismatch`]. There is nothing else to
//!   wait for. Members then arrive as [`NetEvent::MemberDiscovered`] over the next seconds;
//!   poll [`Client::members`] or count the events to decide when the view is complete enough.
//! - Read the event receiver continuously: while [`NetConfig::event_queue_len`] frames wait
//!   there, this node stops reading its frame streams, and its senders' queues fill up.
//! - [`Client::send`] is a plain function: it queues the frame for the peer and returns at
//!   once, without waiting for anything or spawning anything. There is no acknowledgement:
//!   delivery is best effort, like packets (see "Frames" below); [`Client::stats`] counts
//!   what was sent, received, dropped and lost. Frames to one peer arrive in the order they
//!   were sent. Nothing needs flushing: the peer's writer wakes when its queue stops being
//!   empty and writes whatever is queued by then.
//! - Encode protocol messages yourself; a frame is at most [`NetConfig::frame_max_bytes`].
//! - On shutdown, call [`Client::goodbye`] only once the protocol allows leaving (see
//!   PROTOCOL.md, "Leaving safely"); otherwise [`Client::shutdown`] (others see the node down).
//!
//! # Frames
//! A node sends its frames to a peer on one long-lived libp2p stream
//! (`/replicator/<protocol_id>/frames/1.0.0`, over the one yamux connection to the peer), not
//! one stream per frame. The stream starts with a one-byte version exchange (the opener sends
//! its version, the acceptor answers with the same byte or resets the stream); after it every
//! frame is a big-endian `u32` length and the bytes. Each direction has its own stream.
//! - Per peer a *writer* task (spawned by the first send to it, ended when the peer leaves or
//!   is forgotten) takes everything queued for the peer, writes it length-prefixed in chunks of
//!   64 KiB, and flushes once: frames sent in one burst share yamux frames, noise messages and
//!   TCP segments. No task, timer, stream, negotiation or acknowledgement per frame.
//! - The writer opens the stream when it has frames and none is open, dialing the peer if it
//!   is not connected. If that fails within [`NetConfig::request_timeout`], the frames queued
//!   then are dropped (counted in [`FrameCounts::frames_failed`]) and the writer tries again
//!   for the next frames after a backoff (100 ms doubling to 2 s, cut short when a connection
//!   to the peer comes up).
//! - When a stream breaks (the connection closed, the peer restarted or reset the stream),
//!   the writer notices it, at the latest at its next write, and opens a new one, on a new
//!   connection if needed. A batch of which no byte was accepted by the broken stream is sent
//!   again on the new one; frames written to the broken stream are lost (counted failed when
//!   the write itself failed). The protocol above has its own timeouts and recovery: the
//!   transport owes it the order of frames within a stream, nothing more.
//! - The acceptor of inbound streams runs one *reader* per peer (a new stream from a peer
//!   replaces its older one). It reads frames through a 16 KiB buffer and hands each to the
//!   node's event channel, waiting while the channel is full (so flow control holds the
//!   sender back). A peer that breaks the protocol (a wrong version byte, none within 10 s,
//!   a frame longer than [`NetConfig::frame_max_bytes`]) has its stream reset, counted in
//!   [`FrameCounts::streams_refused`]; the length is checked before anything is allocated.
//! - Nodes of the previous transport (one request-response exchange per frame, protocol
//!   `/replicator/<protocol_id>/frame/1.0.0`) and of this one do not exchange frames: upgrade
//!   every node of a network together.
//!
//! What it costs, measured with `examples/throughput.rs` (two nodes in one process on
//! loopback, 2 tokio threads, 64-byte frames, in a network namespace of its own; both nodes'
//! CPU): about 400,000 frames/s at 1.0 to 1.3 µs of CPU per frame when the sender floods,
//! 0.006 TCP segments per frame; a frame there and one back, one at a time, 2 TCP segments
//! and 35 to 100 µs of CPU per round trip. The request-response transport before it: about
//! 13,000 frames/s at 82 to 95 µs per frame and 5 to 7 segments per frame; 24 segments and
//! 270 to 450 µs per round trip.
//!
//! # Discovery and membership
//! A node started without [`NetConfig::bootstrap`] is the bootstrap peer of the DHT. Every other
//! node dials the bootstrap address first and Hellos it; [`start`] returns only once the
//! bootstrap peer's Hello answer arrived, and fails with [`NetError::BootstrapUnreachable`]
//! after [`NetConfig::bootstrap_timeout`] if none did. A bootstrap peer that does not speak this
//! node's `/replicator/<protocol_id>/...` protocols fails [`start`] at once with
//! [`NetError::ProtocolMismatch`] (seen from identify, or from the refused Hello).
//! Every node then advertises itself as a provider of [`NetConfig::rendezvous`] in the DHT and
//! periodically looks the providers up (every second at first, backing off to every 10 s).
//! Whenever two nodes connect they exchange a *Hello* (network id, cluster id, listen
//! addresses, and the members each already knows, so that views converge fast). The first
//! Hello from a peer of this node's network makes it a member: [`NetEvent::MemberDiscovered`],
//! exactly once per peer.
//!
//! ## The network id
//! Every network has an identity ([`NetConfig::network`]): the founder draws it, and a joiner
//! started without one adopts the id of its bootstrap peer during [`start`] (its first Hello
//! carries no id; the bootstrap peer answers without making it a member; once it adopted the
//! id it Hellos again and becomes a member). [`Client::network`] tells the id in force. A joiner
//! started with an id that differs from its bootstrap peer's fails with
//! [`NetError::ForeignNetwork`]. So two networks founded apart with the same protocol id and
//! rendezvous, whose DHTs meet, never merge:
//! - a Hello with another network id never makes its sender a member: the node logs an error
//!   naming both ids and emits [`NetEvent::ForeignNetwork`], once per peer (as long as it
//!   remembers it: the last [`MEMBERS_MAX`] such peers); the peer is not gossiped, not
//!   redialed, not dialed again when the DHT or a member names it, and its DHT records are
//!   ignored. A member that Hellos with another id (its data was wiped and it joined another
//!   network) is reported [`NetEvent::PeerDown`] and stays down until it Hellos with this
//!   node's id again;
//! - members are learned from the gossip of same-network Hellos only;
//! - a Hello without a network id (a joiner that has not learned it yet) is answered, so the
//!   joiner learns the id, but makes nobody a member.
//!
//! Membership never shrinks on suspicion: a member with no successful contact (connection,
//! ping, Hello) for [`NetConfig::down_after`] is reported [`NetEvent::PeerDown`] and stays
//! a member; the event loop keeps redialing it (backoff 250 ms doubling to 5 s) and reports
//! [`NetEvent::PeerUp`] when contact is back. A member leaves only when it says goodbye
//! ([`Client::goodbye`], seen by the others as [`NetEvent::PeerLeft`]) or when the operator
//! removes it locally ([`Client::forget_peer`]).
//!
//! # Bounds
//! Every queue and map is bounded:
//! - members: [`MEMBERS_MAX`]; peers learned but not yet Helloed: as many; peers that left or
//!   were forgotten (remembered so gossip does not revive them): as many, oldest dropped first;
//! - connections: `2 × MEMBERS_MAX` established, 4 per peer, 128 pending inbound;
//! - received frames waiting for the node: [`NetConfig::event_queue_len`] (then the frame
//!   streams are not read: flow control holds the senders back; yamux buffers at most its
//!   receive window per stream); membership events: `event_queue_len + 4 × MEMBERS_MAX`
//!   (then dropped, logged as an error condition: the node is not reading its events);
//! - frames queued to send: [`NetConfig::send_queue_frames_max`] and
//!   [`NetConfig::send_queue_bytes_max`] per peer, [`NetConfig::send_queue_total_frames_max`]
//!   and [`NetConfig::send_queue_total_bytes_max`] over all peers (then dropped, counted in
//!   [`FrameCounts::frames_dropped`], and [`Client::send`] says [`NetError::QueueFull`]);
//!   frames to this node itself: 1024 waiting for the event loop, then as many as
//!   `event_queue_len` allows (then dropped);
//! - peers with a frame queue, writer or reader: `2 × MEMBERS_MAX` (beyond it frames to a new
//!   peer are dropped and its inbound streams refused); one reader per peer, one outbound
//!   stream per peer; a writer copies at most 64 KiB of frames at a time, a reader buffers
//!   16 KiB; inbound frame streams waiting for the acceptor: 64 (then reset); the state kept
//!   per connection for opening streams is dropped with the connection;
//! - frame size: [`NetConfig::frame_max_bytes`]; control messages: [`CONTROL_FRAME_BYTES_MAX`],
//!   decoded with per-field bounds ([`MEMBER_ADDRS_MAX`], [`CLUSTER_ID_BYTES_MAX`],
//!   [`NETWORK_ID_BYTES_MAX`], [`MULTIADDR_BYTES_MAX`]);
//! - peers of another network remembered (so they are reported and dialed once):
//!   [`MEMBERS_MAX`], oldest dropped first;
//! - the DHT stores provider records for the rendezvous key only, at most [`MEMBERS_MAX`].
//!
//! Input from peers that breaks a bound or does not decode is dropped with a log line; it
//! never panics.

// Where things are: `client.rs` the handle and its commands; `event_loop.rs` the loop that owns
// the swarm (its own map lists the files under `event_loop/`: setup, behaviours, bootstrap,
// commands, connections and liveness, membership, leaving, discovery, the peer table, the event
// outbox); `frames.rs` and `streams.rs` the per-peer frame streams; `control.rs` the Hello and
// Goodbye messages; `codec.rs` their framing; `admission.rs` who may connect at all.
mod admission;
mod client;
mod codec;
mod control;
mod event_loop;
mod frames;
mod streams;

use std::time::Duration;

use libp2p::{Multiaddr, PeerId, identity::Keypair};

pub use client::Client;
pub use event_loop::EventLoop;

/// Re-export of the libp2p version this crate is built on, so that callers name the same
/// `PeerId`, `Multiaddr` and `Keypair` types.
pub use libp2p;

/// The most members (other nodes) a node keeps. Hello messages naming more are truncated, and a
/// new peer beyond this bound is refused with a log line.
pub const MEMBERS_MAX: usize = 1024;

/// The most addresses kept (and advertised) per member.
pub const MEMBER_ADDRS_MAX: usize = 8;

/// The longest cluster id, in bytes of UTF-8.
pub const CLUSTER_ID_BYTES_MAX: usize = 256;

/// The longest network id, in bytes (ASCII letters, digits, `-` and `_`).
pub const NETWORK_ID_BYTES_MAX: usize = 64;

/// The longest encoded multiaddr accepted from a peer, in bytes.
pub const MULTIADDR_BYTES_MAX: usize = 256;

/// The largest control message (Hello, Goodbye) accepted from a peer, in bytes. A Hello that
/// lists [`MEMBERS_MAX`] members with every field at its maximum stays below this.
pub const CONTROL_FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Default for [`NetConfig::frame_max_bytes`]: 4 MiB.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// Configuration of one node's network layer. Build it with [`NetConfig::new`], then set the
/// fields that differ from the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetConfig {
    /// The node's identity; its `PeerId` is the node's id everywhere.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` or `/ip4/127.0.0.1/tcp/0` (an
    /// ephemeral port; [`Client::listen_addrs`] tells the bound one).
    /// Default: `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// The bootstrap peer's address; it must end with `/p2p/<peer id>`. `None` means this node is
    /// the bootstrap peer. Default: `None`.
    pub bootstrap: Option<Multiaddr>,
    /// Addresses of peers this node knew before (each ending with `/p2p/<peer id>`), e.g. the
    /// members a restarted node recorded: added to the DHT's routing table and dialed once at
    /// [`start`], so that a node restarted without a bootstrap peer reaches its members itself
    /// (and a member that removed it can tell it so). Unreachable ones are not an error; a
    /// malformed one is skipped with a warning. Default: empty.
    pub redial: Vec<Multiaddr>,
    /// The private namespace of this deployment: the Kademlia, frame and membership protocols
    /// are `/replicator/<protocol_id>/{kad,frames,member}/1.0.0`, so nodes of another deployment
    /// (or the public IPFS DHT) never mix with this one. ASCII letters, digits, `.`, `_`, `-`;
    /// 1 to 64 bytes. Default: `"replicator"`.
    pub protocol_id: String,
    /// The DHT key under which every member advertises itself. Default: `"members"`.
    pub rendezvous: String,
    /// This node's cluster id, advertised to the other members. At most
    /// [`CLUSTER_ID_BYTES_MAX`] bytes, not empty.
    pub cluster: String,
    /// The identity of the network this node belongs to: 1 to [`NETWORK_ID_BYTES_MAX`] ASCII
    /// letters, digits, `-` or `_`. Peers advertising another id are never members (see
    /// "The network id" in the crate docs). `None`: a joiner that does not know it yet; it
    /// adopts the id of its bootstrap peer during [`start`] ([`Client::network`] tells it), so
    /// `None` needs [`NetConfig::bootstrap`] (otherwise [`NetError::InvalidConfig`]).
    /// Default: `None`.
    pub network: Option<String>,
    /// The largest frame [`Client::send`] accepts and the largest one this node reads from a
    /// peer; a peer that announces a larger frame has its frame stream reset before the frame
    /// is read (its later frames go on a new stream). Default: [`FRAME_BYTES_MAX_DEFAULT`]
    /// (4 MiB). Use the same value on every node.
    pub frame_max_bytes: usize,
    /// How long [`start`] keeps trying to connect to the bootstrap peer and to get its Hello
    /// answer before it fails with [`NetError::BootstrapUnreachable`]. Default: 10 s.
    pub bootstrap_timeout: Duration,
    /// A member with no successful contact for this long is reported [`NetEvent::PeerDown`].
    /// Pings run every quarter of it (at least every 100 ms, at most every 15 s).
    /// Default: 5 s.
    pub down_after: Duration,
    /// How long a Hello or Goodbye may take to be answered, and how long opening a frame
    /// stream to a peer may take (dial, negotiation, version exchange) before the frames
    /// queued for it are dropped. Default: 10 s.
    pub request_timeout: Duration,
    /// The capacity of the [`NetEvent`] channel: the most received frames waiting for the
    /// node. While it is full the frame streams are not read, so flow control holds the
    /// senders back (their queues fill, then they drop frames). Membership events are never
    /// held back for this reason (they have [`MEMBERS_MAX`] extra room). Default: 1024.
    pub event_queue_len: usize,
    /// The most frames queued for one peer; [`Client::send`] beyond it drops the frame
    /// ([`NetError::QueueFull`], counted in [`FrameCounts::frames_dropped`]). Default: 8192.
    pub send_queue_frames_max: usize,
    /// The most bytes queued for one peer (frame bytes, without framing); beyond it frames are
    /// dropped as above. At least [`NetConfig::frame_max_bytes`]. Default: 32 MiB.
    pub send_queue_bytes_max: usize,
    /// The most frames queued over all peers; beyond it frames are dropped as above.
    /// Default: 65536.
    pub send_queue_total_frames_max: usize,
    /// The most bytes queued over all peers; beyond it frames are dropped as above. At least
    /// [`NetConfig::send_queue_bytes_max`]. Default: 256 MiB.
    pub send_queue_total_bytes_max: usize,
    /// The network's pre-shared key (libp2p `pnet`, the `swarm.key` format): with it, only
    /// peers holding the same key complete a connection (see [`parse_network_key`]). `None`:
    /// anyone who reaches the listen address can connect. Default: `None`.
    pub psk: Option<libp2p::pnet::PreSharedKey>,
    /// If set, only these peers complete a connection (inbound or outbound), checked right
    /// after the noise handshake authenticated them. Default: `None` (any peer).
    pub allow_peers: Option<Vec<PeerId>>,
    /// How long a connection's handshakes (pnet, noise, yamux) may take. Default: 5 s.
    pub handshake_timeout: Duration,
    /// The most inbound connections from one IP address still in their handshake; more are
    /// closed at once. Default: 8.
    pub pending_handshakes_per_ip_max: usize,
}

impl NetConfig {
    /// A configuration with the defaults documented on each field: no `bootstrap`, no
    /// `network` (set one of them), listening on an ephemeral loopback port.
    pub fn new(keypair: Keypair, cluster: impl Into<String>) -> Self {
        Self {
            keypair,
            listen: vec![
                "/ip4/127.0.0.1/tcp/0"
                    .parse()
                    .expect("a constant multiaddr parses"),
            ],
            bootstrap: None,
            redial: Vec::new(),
            protocol_id: "replicator".to_owned(),
            rendezvous: "members".to_owned(),
            cluster: cluster.into(),
            network: None,
            frame_max_bytes: FRAME_BYTES_MAX_DEFAULT,
            bootstrap_timeout: Duration::from_secs(10),
            down_after: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            event_queue_len: 1024,
            send_queue_frames_max: 8192,
            send_queue_bytes_max: 32 * 1024 * 1024,
            send_queue_total_frames_max: 65536,
            send_queue_total_bytes_max: 256 * 1024 * 1024,
            psk: None,
            allow_peers: None,
            handshake_timeout: Duration::from_secs(5),
            pending_handshakes_per_ip_max: 8,
        }
    }
}

/// Parses a network key in the `swarm.key` format (`/key/swarm/psk/1.0.0/`, `/base16/`, then
/// 64 hex digits, one per line), as [`generate_network_key`] writes it.
pub fn parse_network_key(text: &str) -> Result<libp2p::pnet::PreSharedKey, String> {
    text.parse().map_err(|e| {
        format!(
            "not a network key ({e}): expected three lines, /key/swarm/psk/1.0.0/, /base16/ and 64 hex digits"
        )
    })
}

/// A new network key from 32 random bytes, in the `swarm.key` format.
pub fn generate_network_key(random: [u8; 32]) -> String {
    libp2p::pnet::PreSharedKey::new(random).to_string()
}

/// What a node knows about another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's identity (authenticated by the noise handshake).
    pub peer: PeerId,
    /// The cluster id the member advertised in its Hello.
    pub cluster: String,
    /// The network id the member advertised in its Hello: this node's, unless the member
    /// later Helloed with another one (then it is down, see [`NetEvent::PeerDown`]).
    pub network: String,
    /// The addresses the member listens on, as far as this node can use them (without `/p2p`).
    pub addrs: Vec<Multiaddr>,
    /// False while the member is reported down (see [`NetEvent::PeerDown`]).
    pub up: bool,
}

/// What the network layer tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A frame sent by `from` with [`Client::send`]. Frames from one sender arrive in the
    /// order it sent them; some may be missing (dropped from a full queue, or lost with a
    /// broken connection), none is duplicated. A frame may arrive before the
    /// [`NetEvent::MemberDiscovered`] of its sender, or after its [`NetEvent::PeerLeft`].
    Message {
        /// The authenticated sender.
        from: PeerId,
        /// The bytes, exactly as sent.
        frame: Vec<u8>,
    },
    /// A peer became a member: the first Hello from it arrived. Emitted once per peer (again
    /// only if it left or was forgotten and came back).
    MemberDiscovered(Member),
    /// A member had no successful contact for [`NetConfig::down_after`]. It stays a member.
    PeerDown(PeerId),
    /// A member reported down is reachable again.
    PeerUp(PeerId),
    /// A member said goodbye: it left the membership and is forgotten.
    PeerLeft(PeerId),
    /// A peer Helloed with another network id than this node's: it is not (or no longer) a
    /// member, it is not gossiped nor dialed again. Emitted once per peer (while this node
    /// remembers it: the last [`MEMBERS_MAX`] such peers).
    ForeignNetwork {
        /// The peer of the other network.
        peer: PeerId,
        /// The network id it advertised.
        network: String,
    },
}

/// Frame counters, of one peer or of all of them ([`Client::stats`]). Every counter only
/// grows (a peer's counters start again from zero if its entry was dropped: see
/// [`NetStats::peers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameCounts {
    /// Frames written to a peer's stream (and flushed). Written is not delivered: a frame
    /// written just before a connection breaks is lost, like a packet.
    pub frames_sent: u64,
    /// Bytes of those frames, with their 4-byte length prefixes.
    pub bytes_sent: u64,
    /// Flushed writes that carried them: `frames_sent / writes` is the mean batch.
    pub writes: u64,
    /// Frames read from peers' streams.
    pub frames_received: u64,
    /// Bytes of those frames, without length prefixes.
    pub bytes_received: u64,
    /// Frames [`Client::send`] refused with [`NetError::QueueFull`] (or accepted just as the
    /// peer was forgotten).
    pub frames_dropped: u64,
    /// Frames queued and then discarded: no stream to the peer could be opened within
    /// [`NetConfig::request_timeout`], the stream broke while they were being written (they
    /// may or may not have arrived), or the peer was forgotten or left.
    pub frames_failed: u64,
    /// Frame streams opened to peers (one per peer and connection, in the normal case).
    pub streams_opened: u64,
    /// Inbound frame streams reset for breaking the protocol (wrong version, a frame above
    /// [`NetConfig::frame_max_bytes`], no version byte in time) or refused for lack of room.
    pub streams_refused: u64,
}

/// The counters of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer.
    pub peer: PeerId,
    /// Its counters.
    pub counts: FrameCounts,
    /// Frames queued for it, not yet written.
    pub frames_queued: usize,
    /// Bytes of those frames.
    pub bytes_queued: usize,
}

/// A snapshot of the frame counters ([`Client::stats`]): reading it takes one lock and a few
/// atomic loads per peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Over every peer, since [`start`].
    pub total: FrameCounts,
    /// Frames queued over all peers, not yet written.
    pub frames_queued: usize,
    /// Bytes of those frames.
    pub bytes_queued: usize,
    /// Per peer, ordered by peer id: every peer this node sends to (until it leaves or is
    /// forgotten) or currently reads a frame stream from.
    pub peers: Vec<PeerStats>,
}

/// Errors of the network layer. The variant says who is at fault: the caller's configuration
/// or arguments (`InvalidConfig`, `FrameTooLarge`), the network or the peer
/// (`BootstrapUnreachable`), the deployment (`ForeignNetwork`, `ProtocolMismatch`: the
/// bootstrap peer belongs to another network; trying again does not help), or load
/// (`QueueFull`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// The configuration is unusable (the caller's mistake).
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// The transport or a listener could not be set up.
    #[error("cannot set up the network: {0}")]
    Setup(String),
    /// The bootstrap peer could not be connected within [`NetConfig::bootstrap_timeout`].
    #[error("cannot reach bootstrap peer at {addr}: {reason}")]
    BootstrapUnreachable {
        /// The configured bootstrap address (it ends with `/p2p/<bootstrap peer id>`).
        addr: Multiaddr,
        /// The timeout and the last dial error.
        reason: String,
    },
    /// The bootstrap peer answered, but it belongs to another network than
    /// [`NetConfig::network`]: joining through it would merge two networks.
    #[error(
        "the bootstrap peer at {addr} belongs to network {theirs:?}, this node to network {ours:?}: a node never joins another network"
    )]
    ForeignNetwork {
        /// The configured bootstrap address.
        addr: Multiaddr,
        /// This node's network id ([`NetConfig::network`]).
        ours: String,
        /// The network id the bootstrap peer advertised.
        theirs: String,
    },
    /// The bootstrap peer is connected but does not speak this node's
    /// `/replicator/<protocol_id>/...` protocols: it was started with another protocol id (or
    /// is not a replicator node).
    #[error(
        "the bootstrap peer at {addr} does not speak this node's protocols: this node uses protocol id {ours:?}, the peer {}",
        describe_protocol(theirs)
    )]
    ProtocolMismatch {
        /// The configured bootstrap address.
        addr: Multiaddr,
        /// This node's [`NetConfig::protocol_id`].
        ours: String,
        /// The bootstrap peer's protocol id, as it announced it (identify's protocol version
        /// `/replicator/<protocol_id>/1.0.0`); that protocol version itself if it has another
        /// form; empty if the peer announced none.
        theirs: String,
    },
    /// The frame is larger than [`NetConfig::frame_max_bytes`] (the caller's mistake).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The frame was dropped: the queue of frames for this peer (or over all peers) is full
    /// (see [`NetConfig::send_queue_frames_max`] and the bounds after it), or this node
    /// already has [`MEMBERS_MAX`]` × 2` peers to send to. Counted in
    /// [`FrameCounts::frames_dropped`].
    #[error("the send queue for {peer} is full: frame dropped")]
    QueueFull {
        /// The destination.
        peer: PeerId,
    },
    /// The event loop has stopped (goodbye, shutdown, or it was never spawned and dropped).
    #[error("the network event loop has stopped")]
    Stopped,
}

fn describe_protocol(theirs: &str) -> String {
    if theirs.is_empty() {
        "announced no protocol version".to_owned()
    } else if theirs.contains('/') {
        format!("announces protocol version {theirs:?}")
    } else {
        format!("uses protocol id {theirs:?}")
    }
}

/// Builds the swarm, starts listening and, unless this node is the bootstrap peer, connects to
/// the bootstrap peer (trying again every 250 ms until [`NetConfig::bootstrap_timeout`]) and
/// waits for its Hello answer, which tells the network id.
///
/// Returns the [`Client`], the receiver of [`NetEvent`]s (capacity
/// [`NetConfig::event_queue_len`]) and the [`EventLoop`], which must be spawned
/// (`tokio::spawn(event_loop.run())`) for anything to happen. Must be called inside a tokio
/// runtime.
///
/// # Errors
/// [`NetError::InvalidConfig`] for a bad configuration (including no `network` and no
/// `bootstrap`), [`NetError::Setup`] if a listener cannot be opened,
/// [`NetError::BootstrapUnreachable`] if the bootstrap peer cannot be connected, or does not
/// answer the Hello, in time, [`NetError::ForeignNetwork`] if it belongs to another network
/// than [`NetConfig::network`], [`NetError::ProtocolMismatch`] if it does not speak this
/// node's protocols.
pub async fn start(
    cfg: NetConfig,
) -> Result<(Client, tokio::sync::mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    event_loop::start(cfg).await
}
