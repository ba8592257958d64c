//! The libp2p transport behind the driver's seams: [`Transport`] to send, [`NetEvents`] for
//! what arrives.

mod events;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use replicator_core::NodeId;
use tracing::{debug, warn};
use transport_libp2p::Client;
use transport_libp2p::libp2p::PeerId;

use crate::dashboard::{Dashboard, report};
use crate::driver::{Handle, Transport};
use crate::metrics::Metrics;

pub use events::NetEvents;

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
