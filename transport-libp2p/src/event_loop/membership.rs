//! Membership through control messages: Hellos (sent on every new connection, answered with
//! our own, gossiping the members each side knows), Goodbyes, and the peers of another network.

use libp2p::PeerId;
use libp2p::request_response::{self as rr, OutboundRequestId, ResponseChannel};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::EventLoop;
use super::addrs::usable_addrs;
use super::peers::Admission;
use crate::control::{Control, Hello};
use crate::{MEMBER_ADDRS_MAX, MEMBERS_MAX, NetEvent};

/// Control requests (Hello, Goodbye) waiting for an answer.
const CONTROL_IN_FLIGHT_MAX: usize = 4 * MEMBERS_MAX;

impl EventLoop {
    pub(super) fn on_control(&mut self, event: rr::Event<Vec<u8>, Vec<u8>>) {
        match event {
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_control_request(peer, &request, channel),
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.on_control_response(peer, request_id, &response),
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

    fn on_control_request(
        &mut self,
        peer: PeerId,
        request: &[u8],
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let answer = match Control::decode(request) {
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

    fn on_control_response(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: &[u8],
    ) {
        self.pending_control.remove(&request_id);
        match Control::decode(response) {
            Ok(Control::Hello(hello)) => self.on_hello(peer, hello, false),
            Ok(Control::Ack) => {}
            Ok(Control::Goodbye) => warn!(%peer, "unexpected Goodbye answer; dropped"),
            Err(e) => warn!(%peer, error = %e, "malformed control answer; dropped"),
        }
        self.control_request_done(request_id);
    }

    /// A Hello from `peer`: as a request (`first_hand`, the peer contacted us itself) or as
    /// the answer to ours.
    fn on_hello(&mut self, peer: PeerId, hello: Hello, first_hand: bool) {
        if !self.hello_may_admit(peer, &hello) {
            return;
        }
        if hello.network != self.network {
            self.on_foreign_hello(peer, hello.network, first_hand);
            return;
        }
        if self.peers.is_departed(&peer) {
            if !first_hand {
                // An answer may overtake the goodbye that followed it; only the peer's own
                // new Hello brings it back.
                debug!(%peer, "Hello answer from a departed peer; ignored");
                return;
            }
            self.peers.forget_departed(&peer);
        }
        let loopback = self.peers.over_loopback(&peer);
        if !self.admit(peer, hello.cluster, hello.network, hello.addrs, loopback) {
            return;
        }
        self.contact(peer);
        for gossiped in hello.members {
            let addrs = usable_addrs(gossiped.addrs, loopback);
            self.learn_candidate(gossiped.peer, addrs);
        }
    }

    /// Whether a Hello can make anyone a member at all: not while leaving or while this node
    /// does not know its network id, not from a peer that does not know its own yet.
    fn hello_may_admit(&self, peer: PeerId, hello: &Hello) -> bool {
        if peer == self.local_peer_id || self.leaving.is_some() {
            return false;
        }
        if hello.cluster.is_empty() {
            warn!(%peer, "Hello with an empty cluster id; ignored");
            return false;
        }
        if self.network.is_empty() {
            // Only while a joiner's `start` waits for its bootstrap peer's answer.
            debug!(%peer, "Hello before this node knows its network id; ignored");
            return false;
        }
        if hello.network.is_empty() {
            // A joiner that has not learned the network id yet: it learns it from our answer
            // and Hellos again with it.
            debug!(%peer, "Hello without a network id (a joining node); answered, not a member yet");
            return false;
        }
        true
    }

    /// Makes a peer of this node's network a member, or updates it, and tells the DHT its
    /// addresses; false if the membership is full.
    fn admit(
        &mut self,
        peer: PeerId,
        cluster: String,
        network: String,
        addrs: Vec<libp2p::Multiaddr>,
        loopback: bool,
    ) -> bool {
        let addrs = usable_addrs(addrs, loopback);
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        self.peers.forget_candidate(&peer);
        match self
            .peers
            .admit(peer, cluster, network, addrs, Instant::now())
        {
            Admission::Known => true,
            Admission::New(member) => {
                info!(%peer, cluster = %member.cluster, "member discovered");
                self.outbox
                    .emit_membership(NetEvent::MemberDiscovered(member));
                true
            }
            Admission::Full => {
                warn!(%peer, max = MEMBERS_MAX, "membership full; peer ignored");
                false
            }
        }
    }

    /// A Hello with another network id than this node's: the peer is not (or no longer) a
    /// member; it is reported once, forgotten as a candidate and by the DHT, and not dialed
    /// again. Its gossip is not read.
    fn on_foreign_hello(&mut self, peer: PeerId, network: String, first_hand: bool) {
        self.peers.forget_candidate(&peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        let mut went_down = false;
        if let Some(member) = self.peers.members.get_mut(&peer) {
            if member.network != network {
                error!(%peer, ours = %self.network, theirs = %network, "a member now advertises another network id: reported down, no longer dialed");
                member.network = network.clone();
            }
            went_down = std::mem::replace(&mut member.up, false);
        }
        if went_down {
            self.outbox.emit_membership(NetEvent::PeerDown(peer));
        }
        if self.peers.remember_foreign(peer) {
            error!(%peer, ours = %self.network, theirs = %network, "peer belongs to another network: not a member");
            self.outbox
                .emit_membership(NetEvent::ForeignNetwork { peer, network });
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
        if self.peers.forget(peer) {
            info!(%peer, "member left");
            self.outbox.emit_membership(NetEvent::PeerLeft(peer));
        }
        self.links.forget(&peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
    }

    /// A successful exchange with `peer`: refreshes its liveness.
    pub(super) fn contact(&mut self, peer: PeerId) {
        if self.peers.contact(&peer, &self.network, Instant::now()) {
            info!(%peer, "member up again");
            self.outbox.emit_membership(NetEvent::PeerUp(peer));
        }
    }

    /// Hellos `peer`, unless one is in flight to it already or too many are in flight.
    pub(super) fn send_hello(&mut self, peer: PeerId) {
        if self.leaving.is_some() || self.peers.is_departed(&peer) {
            return;
        }
        if self.pending_control.len() >= CONTROL_IN_FLIGHT_MAX || self.control_in_flight(&peer) {
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

    /// Whether a control request to `peer` waits for its answer.
    pub(super) fn control_in_flight(&self, peer: &PeerId) -> bool {
        self.pending_control.values().any(|p| p == peer)
    }

    fn local_hello(&self) -> Hello {
        Hello {
            network: self.network.clone(),
            cluster: self.cluster.clone(),
            addrs: self
                .listen_addrs
                .iter()
                .filter(|a| super::addrs::usable_addr(a, true).is_some())
                .take(MEMBER_ADDRS_MAX)
                .cloned()
                .collect(),
            members: self.peers.gossip(&self.network),
        }
    }
}
