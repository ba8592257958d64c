//! The event loop: owns the swarm, executes [`Command`]s from [`Client`]s, turns swarm events
//! into [`NetEvent`]s and runs discovery and liveness. No protocol logic lives here.
//!
//! This file keeps the loop and the dispatch of its inputs; each concern has its own file:
//! - `setup.rs`: [`crate::start`]: checks the configuration, builds the loop, waits for it to
//!   be ready;
//! - `behaviour.rs`: the libp2p behaviours, the protocol names, the swarm;
//! - `bootstrap.rs`: waiting for the listeners and for the bootstrap peer's Hello answer;
//! - `commands.rs`: the [`Client`]s' commands;
//! - `connections.rs`: connections coming up, and the liveness tick (members down, redials);
//! - `membership.rs`: Hello and Goodbye control messages, members of another network;
//! - `leaving.rs`: a graceful leave ([`Client::goodbye`]);
//! - `discovery.rs`: the DHT: advertising, provider lookups, identify;
//! - `peers.rs`: the peer table (members, candidates, departed and foreign peers);
//! - `outbox.rs`: the bounded queue of events on their way to the node;
//! - `addrs.rs`: which reported addresses are worth dialing.
//!
//! The frame streams themselves live in `../frames.rs` and `../streams.rs`.

mod addrs;
mod behaviour;
mod bootstrap;
mod commands;
mod connections;
mod discovery;
mod leaving;
mod membership;
mod outbox;
mod peers;
mod setup;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, kad};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::client::{Client, Command};
use crate::frames::Links;
use crate::{NetConfig, NetError, NetEvent};
use behaviour::{Behaviour, BehaviourEvent};
use discovery::DiscoverySchedule;
use leaving::Leaving;
use outbox::EventOutbox;
use peers::Peers;
use setup::FrameTasks;

/// Listen addresses kept (interfaces of a wildcard listener).
const LISTEN_ADDRS_MAX: usize = 32;

/// Owns the libp2p swarm. Spawn [`EventLoop::run`]; it is the only thing that makes the network
/// layer progress.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    local_peer_id: PeerId,
    cluster: String,
    /// This node's network id; empty only while a joiner's [`crate::start`] has not learned it.
    network: String,
    rendezvous: kad::RecordKey,
    protocol_id: String,
    identify_version: String,
    kad_protocol: StreamProtocol,
    down_after: Duration,
    commands: mpsc::Receiver<Command>,
    /// Events on their way to the node.
    outbox: EventOutbox,
    listen_addrs: Vec<Multiaddr>,
    peers: Peers,
    /// The frame streams' queues, writers and counters.
    links: Arc<Links>,
    /// Stops the frame streams when the loop is dropped (also if it never ran).
    _frame_tasks: FrameTasks,
    /// Control requests (Hello, Goodbye) waiting for an answer, and to whom; bounded (see
    /// `membership.rs`).
    pending_control: HashMap<OutboundRequestId, PeerId>,
    discovery: DiscoverySchedule,
    tick_period: Duration,
    leaving: Option<Leaving>,
    /// Set when the loop must stop; holds whom to tell once it has.
    stop: Option<Vec<oneshot::Sender<()>>>,
}

pub(crate) async fn start(
    cfg: NetConfig,
) -> Result<(Client, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    setup::start(cfg).await
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
                permit = self.outbox.sender().reserve_owned(), if self.outbox.has_queued() => match permit {
                    Ok(permit) => self.outbox.send_first(permit),
                    Err(_) => self.outbox.close(),
                },
            }
            self.outbox.flush();
        }
        let replies = self.stop.take().unwrap_or_default();
        // Closes the connections, stops the frame writers and readers.
        drop(self);
        info!("network stopped");
        for reply in replies {
            let _ = reply.send(());
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
            } => self.on_connected(peer_id, &endpoint, num_established.get() == 1),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if num_established == 0 {
                    self.peers.disconnected(&peer_id, Instant::now());
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
}
