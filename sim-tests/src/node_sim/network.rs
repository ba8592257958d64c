//! The simulated network: the driver's `Transport` over madsim, and each node's network task
//! (hellos to every address, peers learnt only from what arrives, a silent peer reported
//! down, frames batched per peer as the libp2p writer does); and how fast a burst of frames
//! crosses it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::Poll;
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::runtime::{Handle as SimHandle, Runtime};
use madsim::time::Instant;
use replicator_core::{ClusterId, NetworkId, NodeId};
use replicator_node::driver::{Transport, TransportEvent};
use tokio::sync::mpsc;

use super::{DOWN_AFTER, EVENTS_QUEUE_LEN, HELLO_INTERVAL, PORT, SEND_BATCH_FRAMES_MAX, TAG};

/// A packet between two simulated nodes.
#[derive(Clone, Debug)]
enum Packet {
    Hello {
        cluster: ClusterId,
        node: NodeId,
        network: NetworkId,
        /// An answer to a hello (not answered again).
        answer: bool,
    },
    /// Every frame the sender had queued for this peer, in order (as the libp2p transport's
    /// writer sends everything queued for a peer in one write).
    Frames { from: NodeId, frames: Vec<Vec<u8>> },
}

pub(super) enum Outgoing {
    Frame(NodeId, Vec<u8>),
    Forget(NodeId),
}

/// The driver's `Transport` over madsim's network: hands frames to the node's network task.
pub(super) struct SimTransport {
    pub(super) out: mpsc::UnboundedSender<Outgoing>,
}

impl Transport for SimTransport {
    fn send(&self, to: &NodeId, frame: Vec<u8>) {
        let _ = self.out.send(Outgoing::Frame(to.clone(), frame));
    }

    fn forget(&self, node: &NodeId) {
        let _ = self.out.send(Outgoing::Forget(node.clone()));
    }
}

struct Peer {
    addr: SocketAddr,
    last_heard: Instant,
    /// A member of this network announced by a hello (not only a sender of frames).
    announced: bool,
    up: bool,
}

/// The node's network task: hellos, liveness, frames both ways. Knows a peer's address only
/// from what it received.
pub(super) async fn network_task(
    me: (ClusterId, NodeId, NetworkId),
    ep: Endpoint,
    world: Vec<SocketAddr>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::Sender<TransportEvent>,
) {
    let (cluster, id, network) = me;
    let own = ep.local_addr().expect("bound");
    let (in_tx, mut incoming) = mpsc::unbounded_channel::<(Packet, SocketAddr)>();
    let receiver = ep.clone();
    tokio::spawn(async move {
        while let Ok((payload, from)) = receiver.recv_from_raw(TAG).await {
            if let Ok(packet) = payload.downcast::<Packet>()
                && in_tx.send((*packet, from)).is_err()
            {
                break;
            }
        }
    });
    let mut peers: BTreeMap<NodeId, Peer> = BTreeMap::new();
    let mut foreign: BTreeSet<NodeId> = BTreeSet::new();
    let mut hello = tokio::time::interval(HELLO_INTERVAL);
    let hello_of = |answer| Packet::Hello {
        cluster: cluster.clone(),
        node: id.clone(),
        network: network.clone(),
        answer,
    };
    let mut turn = 0usize;
    loop {
        // Hellos, frames out and packets in, in turn (round robin): a flood of one never
        // starves the others, and the order is the same in every run of a seed.
        turn = turn.wrapping_add(1);
        let wake = poll_fn(|cx| {
            for i in 0..3 {
                let ready = match (turn + i) % 3 {
                    0 => hello.poll_tick(cx).map(|_| NetWake::Hello),
                    1 => out.poll_recv(cx).map(NetWake::Out),
                    _ => incoming.poll_recv(cx).map(NetWake::In),
                };
                if ready.is_ready() {
                    return ready;
                }
            }
            Poll::Pending
        })
        .await;
        let mut evs = Vec::new();
        match wake {
            NetWake::Hello => {
                for addr in &world {
                    if *addr != own {
                        send_packet(&ep, *addr, hello_of(false));
                    }
                }
                let now = Instant::now();
                for (node, peer) in peers.iter_mut() {
                    if peer.up && now.duration_since(peer.last_heard) > DOWN_AFTER {
                        peer.up = false;
                        if peer.announced {
                            evs.push(TransportEvent::Down(node.clone()));
                        }
                    }
                }
            }
            NetWake::Out(None) | NetWake::In(None) => return,
            NetWake::Out(Some(first)) => {
                // As the libp2p transport's writer: everything queued for a peer leaves in one
                // write, so a burst of frames costs one packet per peer, not one each.
                let mut batches: BTreeMap<NodeId, Vec<Vec<u8>>> = BTreeMap::new();
                let mut queued = 0;
                let mut next = Some(first);
                while let Some(outgoing) = next {
                    match outgoing {
                        Outgoing::Frame(to, frame) => {
                            batches.entry(to).or_default().push(frame);
                            queued += 1;
                        }
                        Outgoing::Forget(node) => {
                            // Frames queued before the forget are dropped with its queue.
                            peers.remove(&node);
                            batches.remove(&node);
                        }
                    }
                    next = if queued < SEND_BATCH_FRAMES_MAX {
                        out.try_recv().ok()
                    } else {
                        None
                    };
                }
                for (to, frames) in batches {
                    // A peer never heard from has no known address: like a failed dial.
                    if let Some(peer) = peers.get(&to) {
                        let from = id.clone();
                        send_packet(&ep, peer.addr, Packet::Frames { from, frames });
                    }
                }
            }
            NetWake::In(Some((packet, from))) => {
                let now = Instant::now();
                match packet {
                    Packet::Hello {
                        cluster,
                        node,
                        network: theirs,
                        answer,
                    } => {
                        if !answer {
                            send_packet(&ep, from, hello_of(true));
                        }
                        if theirs != network {
                            if foreign.insert(node.clone()) {
                                evs.push(TransportEvent::ForeignNetwork {
                                    node,
                                    network: theirs,
                                });
                            }
                        } else {
                            let peer = peers.entry(node.clone()).or_insert(Peer {
                                addr: from,
                                last_heard: now,
                                announced: false,
                                up: false,
                            });
                            peer.addr = from;
                            peer.last_heard = now;
                            if !peer.announced || !peer.up {
                                if peer.announced {
                                    evs.push(TransportEvent::Up(node.clone()));
                                }
                                peer.announced = true;
                                peer.up = true;
                                evs.push(TransportEvent::Discovered {
                                    cluster,
                                    node,
                                    network: theirs,
                                });
                            }
                        }
                    }
                    Packet::Frames { from: node, frames } => {
                        let peer = peers.entry(node.clone()).or_insert(Peer {
                            addr: from,
                            last_heard: now,
                            announced: false,
                            up: true,
                        });
                        peer.addr = from;
                        peer.last_heard = now;
                        if !peer.up {
                            peer.up = true;
                            if peer.announced {
                                evs.push(TransportEvent::Up(node.clone()));
                            }
                        }
                        evs.extend(frames.into_iter().map(|frame| TransportEvent::Message {
                            from: node.clone(),
                            frame,
                        }));
                    }
                }
            }
        }
        for ev in evs {
            if events.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Sends `packet` without waiting for it: madsim holds every send (and every receive) for at
/// least a simulated millisecond, so a task that awaited each send in turn would be a network
/// card of 1,000 packets a second with an unbounded queue in front of it, far below what the
/// real transport does. Packets on one link may be reordered, as madsim's latency already does.
fn send_packet(ep: &Endpoint, to: SocketAddr, packet: Packet) {
    let ep = ep.clone();
    tokio::spawn(async move {
        let _ = ep.send_to_raw(to, TAG, Box::new(packet)).await;
    });
}

/// What woke a node's network task.
enum NetWake {
    Hello,
    Out(Option<Outgoing>),
    In(Option<(Packet, SocketAddr)>),
}

/// How long, in simulated milliseconds, the simulated network takes to carry `frames` frames
/// that one node's driver sends to another at once (as a burst of PUTs does), on a network
/// with 1 ms of latency. A network task that awaited each send in turn took a simulated
/// millisecond per frame.
pub fn burst_delivery_ms(frames: usize) -> u64 {
    std::thread::spawn(move || {
        let mut config = madsim::Config::default();
        config.net.send_latency = Duration::from_millis(1)..Duration::from_millis(2);
        let rt = Runtime::with_seed_and_config(1, config);
        rt.block_on(async move {
            let network = NetworkId::new("net-burst");
            let addrs: Vec<SocketAddr> = (1..=2)
                .map(|k| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, k)), PORT))
                .collect();
            let ids = [NodeId::new("sender"), NodeId::new("receiver")];
            // Each node's network task; the test stands in for both drivers.
            let mut links = Vec::new();
            for (k, addr) in addrs.iter().enumerate() {
                let (events_tx, events) = mpsc::channel(EVENTS_QUEUE_LEN);
                let (out_tx, out_rx) = mpsc::unbounded_channel();
                let me = (ClusterId::new("c0"), ids[k].clone(), network.clone());
                let world = addrs.clone();
                let addr = *addr;
                SimHandle::current()
                    .create_node()
                    .name(ids[k].to_string())
                    .ip(addr.ip())
                    .build()
                    .spawn(async move {
                        let ep = Endpoint::bind(addr).await.expect("a free address");
                        network_task(me, ep, world, out_rx, events_tx).await;
                    });
                links.push((SimTransport { out: out_tx }, events));
            }
            let (receiver_transport, mut received) = links.pop().expect("two nodes");
            let (sender, mut sender_events) = links.pop().expect("two nodes");
            // Frames go only to a peer heard from: wait until each side heard the other.
            let heard =
                |ev: Option<TransportEvent>| matches!(ev, Some(TransportEvent::Discovered { .. }));
            while !heard(sender_events.recv().await) {}
            while !heard(received.recv().await) {}
            let started = Instant::now();
            for i in 0..frames {
                sender.send(&ids[1], (i as u64).to_le_bytes().to_vec());
            }
            let mut arrived = 0;
            while arrived < frames {
                match received.recv().await {
                    Some(TransportEvent::Message { .. }) => arrived += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            drop(receiver_transport);
            Instant::now().duration_since(started).as_millis() as u64
        })
    })
    .join()
    .expect("the measurement does not panic")
}
