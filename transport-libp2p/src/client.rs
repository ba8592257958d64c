//! The handle the node uses to drive the network layer.

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::frames::Links;
use crate::{Member, NetError, NetStats};

/// A command from a [`Client`] to the [`crate::EventLoop`]; each one that has an answer carries
/// the oneshot the answer goes to.
#[derive(Debug)]
pub(crate) enum Command {
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    /// A frame to this node itself.
    Local {
        frame: Vec<u8>,
    },
    Members {
        reply: oneshot::Sender<Vec<Member>>,
    },
    ForgetPeer {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Goodbye {
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle on the network layer. All methods are safe to call concurrently
/// from any task. The [`crate::EventLoop`] stops when every `Client` is dropped, or after
/// [`Client::goodbye`] / [`Client::shutdown`]; after that every method returns
/// [`NetError::Stopped`] or an empty answer.
#[derive(Debug, Clone)]
pub struct Client {
    local_peer_id: PeerId,
    network: String,
    frame_max_bytes: usize,
    commands: mpsc::Sender<Command>,
    links: Arc<Links>,
}

impl Client {
    pub(crate) fn new(
        local_peer_id: PeerId,
        network: String,
        frame_max_bytes: usize,
        commands: mpsc::Sender<Command>,
        links: Arc<Links>,
    ) -> Self {
        Self {
            local_peer_id,
            network,
            frame_max_bytes,
            commands,
            links,
        }
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The network id in force: [`crate::NetConfig::network`], or, for a node started without
    /// one, the id it adopted from its bootstrap peer during [`crate::start`] (persist it before
    /// copying anything, and start with it next time). It never changes after `start`.
    pub fn network(&self) -> String {
        self.network.clone()
    }

    /// The addresses this node actually listens on, each ending with `/p2p/<local peer id>`, so
    /// that one of them can be handed to another node as its [`crate::NetConfig::bootstrap`].
    /// Ephemeral ports (`/tcp/0`) are resolved. Empty once the event loop has stopped.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(|reply| Command::ListenAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Queues `frame` for `to` and returns at once: it neither waits nor spawns anything. The
    /// peer's writer task writes everything queued for the peer in one go, on one long-lived
    /// stream (opened when needed, dialing the peer if it is not connected), so frames sent
    /// in a burst share writes and TCP segments. Frames to one peer arrive in the order they
    /// were queued; delivery is best effort, like packets: a frame may be lost with a broken
    /// connection, or dropped when no stream can be opened in time, and nobody is told
    /// ([`Client::stats`] counts them).
    ///
    /// Sending to [`Client::local_peer_id`] delivers the frame to this node's own event
    /// receiver, as a `Message` from itself.
    ///
    /// # Errors
    /// At once, nothing queued: [`NetError::FrameTooLarge`], [`NetError::QueueFull`] (the
    /// queue for this peer, or of all peers, is full: the frame is dropped and counted),
    /// [`NetError::Stopped`] (also while saying goodbye).
    pub fn send(&self, to: PeerId, frame: Vec<u8>) -> Result<(), NetError> {
        if to != self.local_peer_id {
            return self.links.send(to, frame);
        }
        if frame.len() > self.frame_max_bytes {
            return Err(NetError::FrameTooLarge {
                len: frame.len(),
                max: self.frame_max_bytes,
            });
        }
        if self.links.refusing() {
            return Err(NetError::Stopped);
        }
        match self.commands.try_send(Command::Local { frame }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.links.count_dropped();
                Err(NetError::QueueFull { peer: to })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NetError::Stopped),
        }
    }

    /// A snapshot of the frame counters: frames and bytes sent and received, per peer and in
    /// total, frames dropped and failed, what is queued. Cheap: one lock and a few atomic loads
    /// per peer; callable from any thread, also once the event loop has stopped.
    pub fn stats(&self) -> NetStats {
        self.links.stats()
    }

    /// The current members (every peer discovered and not left or forgotten; not this node),
    /// with their up/down state. Empty once the event loop has stopped.
    pub async fn members(&self) -> Vec<Member> {
        self.ask(|reply| Command::Members { reply })
            .await
            .unwrap_or_default()
    }

    /// Operator removal: forgets `peer` on this node only (no event is emitted, the other
    /// nodes are not told), closes its connections and ignores what other members gossip
    /// about it. If the peer is in fact alive and Hellos this node again itself, it becomes a
    /// member again ([`crate::NetEvent::MemberDiscovered`]).
    pub async fn forget_peer(&self, peer: PeerId) {
        let _ = self.ask(|reply| Command::ForgetPeer { peer, reply }).await;
    }

    /// Graceful leave: tells every member this node leaves (they emit
    /// [`crate::NetEvent::PeerLeft`] and forget it), waits for their acknowledgements (at most
    /// 3 s: unreachable members are not waited for), then stops the event loop. Returns when
    /// the event loop has stopped.
    pub async fn goodbye(&self) {
        let _ = self.ask(|reply| Command::Goodbye { reply }).await;
    }

    /// Stops the event loop without telling anyone (the others see this node go down, as if
    /// it crashed). Returns when the event loop has stopped.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }

    /// Sends a command and waits for its answer; `None` if the event loop has stopped.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.ok()?;
        answer.await.ok()
    }
}
