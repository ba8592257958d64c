//! The libp2p transport behind the driver's [`Transport`] seam.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use replicator_core::{ClusterId, NetworkId, NodeId};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use transport_libp2p::libp2p::PeerId;
use transport_libp2p::{Client, NetEvent};

use crate::address_book::AddressBook;
use crate::dashboard::{Dashboard, report};
use crate::driver::Handle;
use crate::driver::{Transport, TransportEvent};
use crate::metrics::Metrics;

/// Transport events waiting for the driver.
const EVENTS_QUEUE_LEN: usize = 1024;
/// How long a removed peer's queued frames get to leave before the transport forgets it.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Ids kept in each direction's cache (members and a little more); a full cache is emptied.
const ID_CACHE_MAX: usize = 4096;

pub struct Libp2pTransport {
    client: Client,
    metrics: Arc<Metrics>,
    /// The peer id of each node id sent to, parsed once.
    peers: Mutex<HashMap<NodeId, PeerId>>,
}

impl Libp2pTransport {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Libp2pTransport {
            client,
            metrics,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn peer_id(&self, node: &NodeId) -> Option<PeerId> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(node) {
            return Some(*peer);
        }
        match node.as_str().parse::<PeerId>() {
            Ok(peer) => {
                if peers.len() >= ID_CACHE_MAX {
                    peers.clear();
                }
                peers.insert(node.clone(), peer);
                Some(peer)
            }
            Err(e) => {
                warn!(peer = %node, error = %e, "not a libp2p peer id: frame dropped");
                None
            }
        }
    }
}

impl Transport for Libp2pTransport {
    fn send(&self, to: &NodeId, frame: Vec<u8>) {
        let Some(peer) = self.peer_id(to) else {
            self.metrics.inc(&self.metrics.frames_send_failed);
            return;
        };
        // Queues the frame and returns at once: no task, no acknowledgement. The peer's
        // writer sends it with whatever else this driver turn queued for that peer. Frames
        // lost later (no stream could be opened, broken connection) are counted in
        // `Client::stats`, not here.
        if let Err(e) = self.client.send(peer, frame) {
            self.metrics.inc(&self.metrics.frames_send_failed);
            debug!(peer = %peer, error = %e, "frame not sent");
        }
    }

    fn forget(&self, node: &NodeId) {
        let Some(peer) = self.peer_id(node) else {
            return;
        };
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
        // Not at once: forgetting drops what is queued for the peer, and the core has just
        // queued the `Removed` message that tells a removed node so (it would otherwise learn
        // only from a later probe).
        let client = self.client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FORGET_AFTER).await;
            client.forget_peer(peer).await
        });
    }
}

/// Turns the network's events into the driver's. Members' reports about themselves go to the
/// dashboard instead: they are not for the core.
pub fn pump_events(
    mut net: mpsc::Receiver<NetEvent>,
    mut book: AddressBook,
    dashboard: Arc<Dashboard>,
) -> mpsc::Receiver<TransportEvent> {
    let (tx, rx) = mpsc::channel(EVENTS_QUEUE_LEN);
    tokio::spawn(async move {
        // The node id of each peer, made once rather than per message.
        let mut ids: HashMap<PeerId, NodeId> = HashMap::new();
        while let Some(ev) = net.recv().await {
            let ev = match ev {
                NetEvent::Message { from, frame } if report::is_report(&frame) => {
                    match report::decode(&frame) {
                        Ok(r) => dashboard.record_report(&from.to_string(), r),
                        Err(e) => debug!(peer = %from, error = %e, "status report dropped"),
                    }
                    continue;
                }
                NetEvent::Message { from, frame } => {
                    if ids.len() >= ID_CACHE_MAX && !ids.contains_key(&from) {
                        ids.clear();
                    }
                    let from = ids
                        .entry(from)
                        .or_insert_with(|| NodeId::new(from.to_string()))
                        .clone();
                    TransportEvent::Message { from, frame }
                }
                // The transport makes no member of another network, but the core decides:
                // it is told the network the member announced.
                NetEvent::MemberDiscovered(m) => {
                    // Where it listens, for a restart of this node without --bootstrap.
                    book.record(m.peer, &m.addrs);
                    dashboard.record_addrs(
                        &m.peer.to_string(),
                        m.addrs.iter().map(|a| a.to_string()).collect(),
                    );
                    TransportEvent::Discovered {
                        cluster: ClusterId::new(&m.cluster),
                        node: NodeId::new(m.peer.to_string()),
                        network: NetworkId::new(&m.network),
                    }
                }
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

/// Sends this node's report about itself to every member it reaches, and takes a sample of
/// the network's rates, every [`report::REPORT_INTERVAL`], until the driver stops.
pub fn spawn_status_exchange(
    client: Client,
    driver: Handle,
    dashboard: Arc<Dashboard>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(report::REPORT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(status) = driver.status().await else {
                break;
            };
            dashboard.sample(&status, &metrics, crate::http::unix_ms());
            let frame = report::encode(&dashboard.own_report(&status, &metrics));
            for peer in status.peers.iter().filter(|p| p.up) {
                let Ok(to) = peer.peer.parse::<PeerId>() else {
                    continue;
                };
                // A report lost to a full queue costs its dashboard a second of freshness.
                if let Err(e) = client.send(to, frame.clone()) {
                    debug!(peer = %to, error = %e, "status report not sent");
                }
            }
        }
    });
}
