//! Discovery through the DHT: advertising this node under the rendezvous key, looking the
//! other providers up on a backoff, keeping foreign records out of the store, and routing only
//! through peers of this deployment.

use std::time::Duration;

use libp2p::kad::store::RecordStore;
use libp2p::{Multiaddr, PeerId, identify, kad};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::EventLoop;
use super::addrs::usable_addrs;

/// DHT provider lookups: every second at first, backing off to every 10 s.
const DISCOVERY_INTERVAL_MIN: Duration = Duration::from_secs(1);
const DISCOVERY_INTERVAL_MAX: Duration = Duration::from_secs(10);

/// When the next provider lookup is due.
pub(super) struct DiscoverySchedule {
    next_at: Instant,
    interval: Duration,
}

impl DiscoverySchedule {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next_at: now,
            interval: DISCOVERY_INTERVAL_MIN,
        }
    }

    /// Whether a lookup is due at `now`; if so, the next one is scheduled.
    fn take_due(&mut self, now: Instant) -> bool {
        if now < self.next_at {
            return false;
        }
        self.next_at = now + self.interval;
        self.interval = (self.interval * 3 / 2).min(DISCOVERY_INTERVAL_MAX);
        true
    }
}

impl EventLoop {
    pub(super) fn start_discovery(&mut self) {
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(self.rendezvous.clone())
        {
            warn!(error = %e, "cannot advertise in the DHT");
        }
        self.discovery = DiscoverySchedule::new(Instant::now());
    }

    /// Looks the providers of the rendezvous key up when due (not while leaving).
    pub(super) fn discover_if_due(&mut self, now: Instant) {
        if self.leaving.is_none() && self.discovery.take_due(now) {
            self.swarm
                .behaviour_mut()
                .kad
                .get_providers(self.rendezvous.clone());
        }
    }

    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed { result, .. } => self.on_kad_query(result),
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.on_provider_record(record),
            _ => {}
        }
    }

    fn on_kad_query(&mut self, result: kad::QueryResult) {
        match result {
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
        }
    }

    /// Stores a provider record only for our rendezvous key and from a peer not known to be of
    /// another network, so that the store stays bounded and foreign peers are not found.
    fn on_provider_record(&mut self, record: kad::ProviderRecord) {
        if record.key != self.rendezvous {
            debug!(provider = %record.provider, "ignoring provider record for a foreign key");
        } else if self.peers.is_foreign(&record.provider) {
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

    pub(super) fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        if info.protocol_version != self.identify_version
            || !info.protocols.contains(&self.kad_protocol)
        {
            debug!(peer = %peer_id, version = %info.protocol_version, "peer of another deployment; not routing through it");
            return;
        }
        if self.peers.is_foreign(&peer_id) {
            debug!(peer = %peer_id, "peer of another network; not routing through it");
            return;
        }
        let loopback = self.peers.over_loopback(&peer_id);
        for addr in usable_addrs(info.listen_addrs, loopback) {
            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
        }
    }

    /// A peer named by the DHT or by a member's gossip: dial it and Hello it.
    pub(super) fn learn_candidate(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_peer_id || self.leaving.is_some() {
            return;
        }
        self.peers.learn_candidate(peer, addrs, Instant::now());
    }
}
