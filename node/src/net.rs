//! The libp2p transport behind the driver's [`Transport`] seam.

use std::sync::Arc;

use replicator_core::{ClusterId, NetworkId, NodeId};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use transport_libp2p::libp2p::PeerId;
use transport_libp2p::{Client, NetEvent};

use crate::driver::{Transport, TransportEvent};
use crate::metrics::Metrics;

/// Transport events waiting for the driver.
const EVENTS_QUEUE_LEN: usize = 1024;

pub struct Libp2pTransport {
    client: Client,
    metrics: Arc<Metrics>,
}

impl Libp2pTransport {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Libp2pTransport { client, metrics }
    }
}

impl Transport for Libp2pTransport {
    fn send(&self, to: &NodeId, frame: Vec<u8>) {
        let peer: PeerId = match to.as_str().parse() {
            Ok(p) => p,
            Err(e) => {
                warn!(peer = %to, error = %e, "not a libp2p peer id: frame dropped");
                return;
            }
        };
        // Client::send waits for the peer's acknowledgement; the driver must not. The number
        // of these tasks is bounded by the transport's sends_in_flight_max (beyond it, send
        // fails at once).
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = client.send(peer, frame).await {
                metrics.inc(&metrics.frames_send_failed);
                debug!(peer = %peer, error = %e, "frame not delivered");
            }
        });
    }

    fn forget(&self, node: &NodeId) {
        let Ok(peer) = node.as_str().parse::<PeerId>() else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move { client.forget_peer(peer).await });
    }
}

/// Turns the network's events into the driver's.
pub fn pump_events(mut net: mpsc::Receiver<NetEvent>) -> mpsc::Receiver<TransportEvent> {
    let (tx, rx) = mpsc::channel(EVENTS_QUEUE_LEN);
    tokio::spawn(async move {
        while let Some(ev) = net.recv().await {
            let ev = match ev {
                NetEvent::Message { from, frame } => TransportEvent::Message {
                    from: NodeId::new(from.to_string()),
                    frame,
                },
                // The transport makes no member of another network, but the core decides:
                // it is told the network the member announced.
                NetEvent::MemberDiscovered(m) => TransportEvent::Discovered {
                    cluster: ClusterId::new(&m.cluster),
                    node: NodeId::new(m.peer.to_string()),
                    network: NetworkId::new(&m.network),
                },
                NetEvent::PeerDown(p) => TransportEvent::Down(NodeId::new(p.to_string())),
                NetEvent::PeerUp(p) => TransportEvent::Up(NodeId::new(p.to_string())),
                NetEvent::PeerLeft(p) => TransportEvent::Left(NodeId::new(p.to_string())),
                // The transport reports each such peer once and never makes it a member; the
                // driver logs it with both ids and counts it.
                NetEvent::ForeignNetwork { peer, network } => TransportEvent::ForeignNetwork {
                    node: NodeId::new(peer.to_string()),
                    network: NetworkId::from(network),
                },
            };
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    rx
}
