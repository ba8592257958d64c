//! A libp2p behaviour that hands out raw streams of one protocol: [`Opener::open`] opens an
//! outbound one to a peer (dialing it if needed), and every inbound one goes to a bounded
//! channel. The frame writers and readers (`frames.rs`) do the rest.
//!
//! Like `libp2p-stream`, but with every map bounded: its state per connection is dropped when
//! the connection closes, and requests for a peer without a connection are dropped when they
//! are answered or given up.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, DialError,
    FromSwarm, NetworkBehaviour, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Inbound streams waiting for the acceptor; more are reset.
const INBOUND_QUEUE_LEN: usize = 64;
/// Outbound stream requests waiting for one connection's handler (one writer per peer asks for
/// one stream at a time).
const REQUESTS_PER_CONNECTION_MAX: usize = 4;
/// Dials requested by openers and not yet taken by the swarm.
const DIALS_QUEUED_MAX: usize = 64;

/// The answer to an outbound stream request.
type Answer = oneshot::Sender<Result<Stream, String>>;

#[derive(Debug, Default)]
struct Shared {
    /// Every established connection: its peer and its handler's request channel. Entries are
    /// removed when the connection closes.
    connections: HashMap<ConnectionId, (PeerId, mpsc::Sender<Answer>)>,
    /// Requests for peers without a connection, until one is established or the dial fails.
    /// Only requests whose opener still waits are kept.
    waiting: HashMap<PeerId, Vec<Answer>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The behaviour; put it in the swarm.
pub(crate) struct Behaviour {
    protocol: StreamProtocol,
    open_timeout: Duration,
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    dials: mpsc::Receiver<PeerId>,
}

/// Opens outbound streams; cheap to clone.
#[derive(Clone)]
pub(crate) struct Opener {
    shared: Arc<Mutex<Shared>>,
    dials: mpsc::Sender<PeerId>,
}

/// A new behaviour for `protocol`, the opener of its outbound streams, and the receiver of
/// its inbound ones. Negotiating an outbound stream may take `open_timeout`.
pub(crate) fn new(
    protocol: StreamProtocol,
    open_timeout: Duration,
) -> (Behaviour, Opener, mpsc::Receiver<(PeerId, Stream)>) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE_LEN);
    let (dials_tx, dials) = mpsc::channel(DIALS_QUEUED_MAX);
    let behaviour = Behaviour {
        protocol,
        open_timeout,
        shared: shared.clone(),
        inbound,
        dials,
    };
    let opener = Opener {
        shared,
        dials: dials_tx,
    };
    (behaviour, opener, inbound_rx)
}

impl Opener {
    /// Opens a stream to `peer` on one of its connections, or dials it and opens the stream on
    /// the new connection. Not bounded in time by itself when a dial is pending: the caller
    /// times it out.
    pub(crate) async fn open(&self, peer: PeerId) -> Result<Stream, String> {
        let (answer, stream) = oneshot::channel();
        {
            let mut shared = lock(&self.shared);
            let connection = shared
                .connections
                .values()
                .find(|(p, requests)| *p == peer && !requests.is_closed());
            match connection {
                Some((_, requests)) => requests
                    .try_send(answer)
                    .map_err(|e| format!("cannot ask the connection for a stream: {e}"))?,
                None => {
                    shared.waiting.retain(|_, answers| {
                        answers.retain(|a| !a.is_closed());
                        !answers.is_empty()
                    });
                    shared.waiting.entry(peer).or_default().push(answer);
                    if self.dials.try_send(peer).is_err() {
                        debug!(%peer, "dial queue full: waiting for a connection");
                    }
                }
            }
        }
        stream
            .await
            .map_err(|_| "the connection closed before the stream opened".to_owned())?
    }
}

impl Behaviour {
    fn handler(&mut self, connection: ConnectionId, peer: PeerId) -> Handler {
        let (requests_tx, requests) = mpsc::channel(REQUESTS_PER_CONNECTION_MAX);
        let mut shared = lock(&self.shared);
        // Handlers whose connection was denied after they were made never see a close.
        shared
            .connections
            .retain(|_, (_, requests)| !requests.is_closed());
        for answer in shared.waiting.remove(&peer).unwrap_or_default() {
            if !answer.is_closed() {
                let _ = requests_tx.try_send(answer);
            }
        }
        shared.connections.insert(connection, (peer, requests_tx));
        Handler {
            peer,
            protocol: self.protocol.clone(),
            open_timeout: self.open_timeout,
            requests,
            inbound: self.inbound.clone(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(connection, peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(connection, peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(closed) => {
                lock(&self.shared).connections.remove(&closed.connection_id);
            }
            FromSwarm::DialFailure(failure) => {
                let Some(peer) = failure.peer_id else { return };
                // Another dial to the peer is under way: its outcome decides.
                if matches!(failure.error, DialError::DialPeerConditionFalse(_)) {
                    return;
                }
                let answers = lock(&self.shared).waiting.remove(&peer);
                for answer in answers.unwrap_or_default() {
                    let _ = answer.send(Err(format!("dial failed: {}", failure.error)));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.dials.poll_recv(cx) {
            Poll::Ready(Some(peer)) => Poll::Ready(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            }),
            _ => Poll::Pending,
        }
    }
}

/// One connection's side: opens the requested outbound streams, passes on the inbound ones.
pub(crate) struct Handler {
    peer: PeerId,
    protocol: StreamProtocol,
    open_timeout: Duration,
    requests: mpsc::Receiver<Answer>,
    inbound: mpsc::Sender<(PeerId, Stream)>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Answer;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Answer, Self::ToBehaviour>> {
        match self.requests.poll_recv(cx) {
            Poll::Ready(Some(answer)) => {
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(
                        ReadyUpgrade::new(self.protocol.clone()),
                        answer,
                    )
                    .with_timeout(self.open_timeout),
                })
            }
            _ => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Answer>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                // A stream that does not fit is dropped, which resets it: its opener tries
                // again later.
                let queued = self.inbound.try_send((self.peer, stream));
                if queued.is_err() {
                    debug!(peer = %self.peer, "too many inbound frame streams waiting: reset");
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: answer,
            }) => {
                let _ = answer.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: answer,
                error,
            }) => {
                let reason = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        "the peer does not speak the frame protocol".to_owned()
                    }
                    StreamUpgradeError::Timeout => "stream negotiation timed out".to_owned(),
                    StreamUpgradeError::Io(e) => format!("stream negotiation failed: {e}"),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = answer.send(Err(reason));
            }
            _ => {}
        }
    }
}
