//! The commands of the [`crate::Client`] handles, executed by the loop.

use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use tokio::sync::oneshot;
use tracing::info;

use super::EventLoop;
use crate::NetEvent;
use crate::client::Command;

impl EventLoop {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                let local = self.local_peer_id;
                let addrs = self
                    .listen_addrs
                    .iter()
                    .map(|a| a.clone().with(Protocol::P2p(local)))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Local { frame } => self.deliver_locally(frame),
            Command::Members { reply } => {
                let _ = reply.send(self.peers.member_list());
            }
            Command::ForgetPeer { peer, reply } => self.forget_peer(peer, reply),
            Command::Goodbye { reply } => self.start_leaving(reply),
            Command::Shutdown { reply } => {
                info!("shutting down without goodbye");
                self.stop.get_or_insert_with(Vec::new).push(reply);
            }
        }
    }

    /// A frame the node sent to itself: queued like a frame from a peer, under the same bound.
    fn deliver_locally(&mut self, frame: Vec<u8>) {
        if self.leaving.is_none() && self.outbox.accepts_frame() {
            let from = self.local_peer_id;
            self.outbox.push_frame(NetEvent::Message { from, frame });
        } else {
            self.links.count_dropped();
        }
    }

    /// The operator removed `peer`: forgotten, remembered as departed, and disconnected.
    fn forget_peer(&mut self, peer: PeerId, reply: oneshot::Sender<()>) {
        if self.peers.forget(peer) {
            info!(%peer, "member forgotten by the operator");
        }
        self.links.forget(&peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
        let _ = reply.send(());
    }
}
