//! Connections and liveness: what a connection coming up or going down means for a peer, and
//! the periodic tick that reports silent members down, redials members and candidates, and
//! drops connections not worth keeping.

use libp2p::core::ConnectedPoint;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::EventLoop;
use super::addrs::is_loopback;
use crate::NetEvent;

impl EventLoop {
    pub(super) fn on_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint, first: bool) {
        debug!(%peer, remote = %endpoint.get_remote_address(), "connected");
        let loopback = is_loopback(endpoint.get_remote_address());
        self.peers.connected(peer, loopback);
        self.contact(peer);
        self.links.connected(&peer);
        if first {
            self.send_hello(peer);
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant) {
        self.links.collect_garbage();
        let mut to_dial = self.check_members(now);
        // Candidates: dial them, or Hello them again if connected without a Hello answer.
        let swarm = &self.swarm;
        let candidates = self.peers.candidates_due(now, |p| swarm.is_connected(p));
        to_dial.extend(candidates.to_dial);
        for (peer, addrs) in to_dial {
            self.dial(peer, addrs);
        }
        for peer in candidates.to_hello {
            self.send_hello(peer);
        }
        self.discover_if_due(now);
        self.finish_leaving_if_late(now);
    }

    /// Liveness: reports silent members down and drops the connections of down members (a
    /// connection that carries no ping answer for `down_after` is not worth keeping: a fresh
    /// dial tells more). Returns the disconnected members to redial.
    fn check_members(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let swarm = &self.swarm;
        let due = self
            .peers
            .members_due(now, &self.network, self.down_after, |p| {
                swarm.is_connected(p)
            });
        for peer in due.went_down {
            warn!(%peer, down_after = ?self.down_after, "member down");
            self.outbox.emit_membership(NetEvent::PeerDown(peer));
        }
        for peer in due.stale {
            debug!(%peer, "closing the connections of a down member");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        due.to_dial
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
}
