//! What [`crate::start`] waits for before it returns: the listeners' addresses, and the
//! bootstrap peer's Hello answer, which tells this node its network id (or why the bootstrap
//! peer is of no use: unreachable, of another network, or not speaking this deployment's
//! protocols).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response as rr;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, identify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::EventLoop;
use super::behaviour::{BehaviourEvent, Protocols};
use crate::NetError;
use crate::control::Control;

/// How long [`crate::start`] waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Delay between two dials of the bootstrap peer, or two Hellos to it, while [`crate::start`]
/// waits for it.
const BOOTSTRAP_REDIAL: Duration = Duration::from_millis(250);
/// When [`crate::start`] already knows it will fail, how long it waits for what makes the
/// failure clearer: the identify message of a bootstrap peer that refused the Hello protocol
/// (it names the peer's protocol id), or the Hello answer of a bootstrap peer of another
/// network (then that peer has read this node's Hello and reports it on its side too).
const BOOTSTRAP_FAILURE_GRACE: Duration = Duration::from_secs(1);
/// The longest protocol version of a foreign peer quoted in an error.
const PROTOCOL_VERSION_QUOTED_MAX: usize = 128;

/// The state of [`EventLoop::connect_bootstrap`] between two swarm events.
struct BootstrapAttempt {
    peer: PeerId,
    addr: Multiaddr,
    /// `addr` with the peer id, as errors name it.
    full_addr: Multiaddr,
    timeout: Duration,
    deadline: Instant,
    /// When to dial next, if no dial is under way.
    dial_at: Option<Instant>,
    /// Earliest time for the next Hello, while connected and none is in flight (the first
    /// one goes out when the connection is established).
    hello_at: Instant,
    last_error: String,
    /// The protocol version the peer announced (identify).
    their_version: Option<String>,
    /// When to stop waiting for the peer's identify once it refused the Hello protocol.
    refused_until: Option<Instant>,
    /// The network id of a bootstrap peer of another network (from its own Hello), and
    /// until when to wait for its answer to ours.
    foreign: Option<(String, Instant)>,
}

/// What one swarm event meant for the bootstrap attempt.
enum Progress {
    Waiting,
    /// The bootstrap peer answered our Hello with its network id.
    Answered,
    /// Nothing more to wait for (the event is not handled further).
    Finished,
}

impl BootstrapAttempt {
    fn new(peer: PeerId, addr: Multiaddr, timeout: Duration, now: Instant) -> Self {
        Self {
            full_addr: addr.clone().with(Protocol::P2p(peer)),
            peer,
            addr,
            timeout,
            deadline: now + timeout,
            dial_at: Some(now),
            hello_at: now,
            last_error: "no dial attempt finished".to_owned(),
            their_version: None,
            refused_until: None,
            foreign: None,
        }
    }

    /// When something is due next: a dial, a Hello, the end of a grace period, or the deadline.
    fn wake_at(&self, connected: bool, control_in_flight: bool) -> Instant {
        let mut wake_at = self.deadline;
        if !connected && let Some(at) = self.dial_at {
            wake_at = wake_at.min(at);
        }
        if connected && !control_in_flight {
            wake_at = wake_at.min(self.hello_at);
        }
        if let Some(until) = self.refused_until {
            wake_at = wake_at.min(until);
        }
        if let Some((_, until)) = &self.foreign {
            wake_at = wake_at.min(*until);
        }
        wake_at
    }
}

impl EventLoop {
    pub(super) async fn wait_for_listeners(
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
    pub(super) async fn connect_bootstrap(
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
        let learning = self.network.is_empty();
        let mut attempt = BootstrapAttempt::new(peer, addr, timeout, Instant::now());
        loop {
            let now = Instant::now();
            let connected = self.swarm.is_connected(&peer);
            self.bootstrap_dial_or_hello(&mut attempt, now, connected);
            if let Some(verdict) = self.bootstrap_verdict(&attempt, now, connected) {
                return verdict;
            }
            let wake_at = attempt.wake_at(connected, self.control_in_flight(&peer));
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                _ = tokio::time::sleep_until(wake_at) => continue,
            };
            match self.bootstrap_on_event(&mut attempt, &event, Instant::now())? {
                Progress::Finished => return Ok(()),
                Progress::Waiting => self.on_swarm_event(event),
                Progress::Answered => {
                    self.on_swarm_event(event);
                    break;
                }
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

    /// Dials the bootstrap peer when due and not connected; Hellos it when due, connected and
    /// no request to it is in flight.
    fn bootstrap_dial_or_hello(&mut self, a: &mut BootstrapAttempt, now: Instant, connected: bool) {
        if !connected
            && let Some(at) = a.dial_at
            && now >= at
        {
            a.dial_at = None;
            let opts = DialOpts::peer_id(a.peer)
                .addresses(vec![a.addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                a.last_error = e.to_string();
                a.dial_at = Some(now + BOOTSTRAP_REDIAL);
            }
        }
        if connected && !self.control_in_flight(&a.peer) && now >= a.hello_at {
            self.send_hello(a.peer);
            a.hello_at = now + BOOTSTRAP_REDIAL;
        }
    }

    /// How the attempt ends, if it does at `now`: a grace period ran out, or the deadline.
    fn bootstrap_verdict(
        &mut self,
        a: &BootstrapAttempt,
        now: Instant,
        connected: bool,
    ) -> Option<Result<(), NetError>> {
        if a.refused_until.is_some_and(|until| now >= until) {
            return Some(Err(
                self.protocol_mismatch(&a.full_addr, a.their_version.as_deref())
            ));
        }
        if let Some((theirs, until)) = &a.foreign
            && now >= *until
        {
            return Some(self.bootstrap_network(&a.full_addr, theirs));
        }
        if now >= a.deadline {
            warn!(bootstrap = %a.peer, addr = %a.addr, error = %a.last_error, "bootstrap peer unreachable");
            let what = if connected {
                "no Hello answer"
            } else {
                "no connection"
            };
            return Some(Err(NetError::BootstrapUnreachable {
                addr: a.full_addr.clone(),
                reason: format!(
                    "{what} within {:?}; last error: {}",
                    a.timeout, a.last_error
                ),
            }));
        }
        None
    }

    /// What a swarm event says about the bootstrap peer, before the loop handles it as usual.
    fn bootstrap_on_event(
        &mut self,
        a: &mut BootstrapAttempt,
        event: &SwarmEvent<BehaviourEvent>,
        now: Instant,
    ) -> Result<Progress, NetError> {
        let peer = a.peer;
        match event {
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(failed),
                error,
                ..
            } if *failed == peer => {
                a.last_error = error.to_string();
                debug!(bootstrap = %peer, error = %a.last_error, "bootstrap dial failed; retrying");
                a.dial_at = Some(now + BOOTSTRAP_REDIAL);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } if *peer_id == peer => {
                a.last_error = format!("connection closed: {cause:?}");
                a.dial_at = Some(now + BOOTSTRAP_REDIAL);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if *peer_id == peer => self.bootstrap_on_identify(a, &info.protocol_version)?,
            SwarmEvent::Behaviour(BehaviourEvent::Control(rr::Event::OutboundFailure {
                peer: failed,
                error,
                ..
            })) if *failed == peer => return self.bootstrap_on_hello_failure(a, error, now),
            SwarmEvent::Behaviour(BehaviourEvent::Control(rr::Event::Message {
                peer: from,
                message: rr::Message::Request { request, .. },
                ..
            })) if *from == peer => self.bootstrap_on_their_hello(a, request, now)?,
            SwarmEvent::Behaviour(BehaviourEvent::Control(rr::Event::Message {
                peer: from,
                message: rr::Message::Response { response, .. },
                ..
            })) if *from == peer => return self.bootstrap_on_answer(a, response),
            _ => {}
        }
        Ok(Progress::Waiting)
    }

    /// The bootstrap peer's identify: a peer of another deployment fails the attempt.
    fn bootstrap_on_identify(
        &mut self,
        a: &mut BootstrapAttempt,
        protocol_version: &str,
    ) -> Result<(), NetError> {
        if protocol_version != self.identify_version {
            return Err(self.protocol_mismatch(&a.full_addr, Some(protocol_version)));
        }
        a.their_version = Some(protocol_version.to_owned());
        if a.refused_until.is_some() {
            return Err(self.protocol_mismatch(&a.full_addr, a.their_version.as_deref()));
        }
        Ok(())
    }

    /// Our Hello to the bootstrap peer failed: retried, unless the peer refused the protocol
    /// (then the attempt fails, at once if its identify is known, else after a grace period)
    /// or is of another network.
    fn bootstrap_on_hello_failure(
        &mut self,
        a: &mut BootstrapAttempt,
        error: &rr::OutboundFailure,
        now: Instant,
    ) -> Result<Progress, NetError> {
        if matches!(error, rr::OutboundFailure::UnsupportedProtocols) {
            if a.their_version.is_some() {
                return Err(self.protocol_mismatch(&a.full_addr, a.their_version.as_deref()));
            }
            a.refused_until
                .get_or_insert((now + BOOTSTRAP_FAILURE_GRACE).min(a.deadline));
        }
        if let Some((theirs, _)) = a.foreign.take() {
            return self
                .bootstrap_network(&a.full_addr, &theirs)
                .map(|()| Progress::Finished);
        }
        a.last_error = format!("Hello not answered: {error}");
        debug!(bootstrap = %a.peer, error = %a.last_error, "bootstrap Hello failed; retrying");
        Ok(Progress::Waiting)
    }

    /// The bootstrap peer's own Hello may come before its answer: adopt the network id now,
    /// so that this node's answer carries it. If it is another network's, fail once the peer
    /// has answered ours (so it reports this node too), or shortly.
    fn bootstrap_on_their_hello(
        &mut self,
        a: &mut BootstrapAttempt,
        request: &[u8],
        now: Instant,
    ) -> Result<(), NetError> {
        if let Ok(Control::Hello(hello)) = Control::decode(request)
            && !hello.network.is_empty()
        {
            if self.network.is_empty() {
                self.bootstrap_network(&a.full_addr, &hello.network)?;
            } else if hello.network != self.network && a.foreign.is_none() {
                let until = (now + BOOTSTRAP_FAILURE_GRACE).min(a.deadline);
                a.foreign = Some((hello.network, until));
            }
        }
        Ok(())
    }

    /// The bootstrap peer's answer to our Hello.
    fn bootstrap_on_answer(
        &mut self,
        a: &mut BootstrapAttempt,
        response: &[u8],
    ) -> Result<Progress, NetError> {
        match Control::decode(response) {
            Ok(Control::Hello(hello)) if hello.network.is_empty() => {
                a.last_error =
                    "the bootstrap peer does not know its network id yet (it is joining)"
                        .to_owned();
            }
            Ok(Control::Hello(hello)) => {
                self.bootstrap_network(&a.full_addr, &hello.network)?;
                return Ok(Progress::Answered);
            }
            Ok(Control::Ack) => a.last_error = "the bootstrap peer is leaving".to_owned(),
            Ok(Control::Goodbye) => a.last_error = "unexpected Goodbye answer".to_owned(),
            Err(e) => a.last_error = format!("malformed Hello answer: {e}"),
        }
        Ok(Progress::Waiting)
    }

    /// The bootstrap peer's network id: adopted if this node has none yet, else checked.
    pub(super) fn bootstrap_network(
        &mut self,
        addr: &Multiaddr,
        theirs: &str,
    ) -> Result<(), NetError> {
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
    pub(super) fn protocol_mismatch(
        &self,
        addr: &Multiaddr,
        their_version: Option<&str>,
    ) -> NetError {
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
}
