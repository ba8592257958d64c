//! The transport's events as the driver's, made in the driver's own task as it takes them: no
//! task or channel in between, so that a received frame costs one channel hop and one task
//! wake-up less than through a forwarding task.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use replicator_core::{ClusterId, NetworkId, NodeId};
use tokio::sync::mpsc;
use tracing::debug;
use transport_libp2p::NetEvent;
use transport_libp2p::libp2p::PeerId;

use super::ID_CACHE_MAX;
use crate::address_book::AddressBook;
use crate::dashboard::{Dashboard, report};
use crate::driver::{TransportEvent, TransportEvents};

/// The driver's events from the libp2p transport's. Members' reports about themselves go to
/// the dashboard instead: they are not for the core. Discovered members' addresses go to the
/// address book (a small file, rewritten only when they changed: once per member, rarely
/// more) and to the dashboard.
pub struct NetEvents {
    net: mpsc::Receiver<NetEvent>,
    book: AddressBook,
    dashboard: Arc<Dashboard>,
    /// The node id of each peer that sent frames, made once rather than per frame.
    ids: HashMap<PeerId, NodeId>,
}

impl NetEvents {
    pub fn new(
        net: mpsc::Receiver<NetEvent>,
        book: AddressBook,
        dashboard: Arc<Dashboard>,
    ) -> Self {
        NetEvents {
            net,
            book,
            dashboard,
            ids: HashMap::new(),
        }
    }

    /// The driver's event for `ev`, if it has one.
    fn translate(&mut self, ev: NetEvent) -> Option<TransportEvent> {
        Some(match ev {
            NetEvent::Message { from, frame } if report::is_report(&frame) => {
                match report::decode(&frame) {
                    Ok(r) => self.dashboard.record_report(&from.to_string(), r),
                    Err(e) => debug!(peer = %from, error = %e, "status report dropped"),
                }
                return None;
            }
            NetEvent::Message { from, frame } => TransportEvent::Message {
                from: self.node_id(from),
                frame,
            },
            // The transport makes no member of another network, but the core decides: it is
            // told the network the member announced.
            NetEvent::MemberDiscovered(m) => {
                // Where it listens, for a restart of this node without --bootstrap.
                self.book.record(m.peer, &m.addrs);
                self.dashboard.record_addrs(
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
        })
    }

    fn node_id(&mut self, peer: PeerId) -> NodeId {
        if self.ids.len() >= ID_CACHE_MAX && !self.ids.contains_key(&peer) {
            self.ids.clear();
        }
        self.ids
            .entry(peer)
            .or_insert_with(|| NodeId::new(peer.to_string()))
            .clone()
    }
}

impl TransportEvents for NetEvents {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>> {
        // Past the events that are not for the driver, to one that is or to `Pending` (which
        // registered the waker).
        loop {
            let Some(ev) = ready!(self.net.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            if let Some(ev) = self.translate(ev) {
                return Poll::Ready(Some(ev));
            }
        }
    }

    fn try_event(&mut self) -> Option<TransportEvent> {
        while let Ok(ev) = self.net.try_recv() {
            if let Some(ev) = self.translate(ev) {
                return Some(ev);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Wake, Waker};

    use transport_libp2p::Member;
    use transport_libp2p::libp2p::Multiaddr;
    use transport_libp2p::libp2p::identity::Keypair;

    use super::*;
    use crate::dashboard::report::NodeReport;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn node(peer: PeerId) -> NodeId {
        NodeId::new(peer.to_string())
    }

    struct Harness {
        net: mpsc::Sender<NetEvent>,
        events: NetEvents,
        dashboard: Arc<Dashboard>,
        dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (net, rx) = mpsc::channel(64);
        let dashboard = Arc::new(Dashboard::default());
        let events = NetEvents::new(rx, AddressBook::load(dir.path()), dashboard.clone());
        Harness {
            net,
            events,
            dashboard,
            dir,
        }
    }

    fn frame_event(from: PeerId, frame: Vec<u8>) -> NetEvent {
        NetEvent::Message { from, frame }
    }

    fn report_frame(keys_stored: u64) -> Vec<u8> {
        report::encode(&NodeReport {
            keys_stored,
            ..NodeReport::default()
        })
    }

    #[test]
    fn frames_reach_the_driver_from_their_sender_and_reports_reach_the_dashboard() {
        let mut h = harness();
        let (a, b) = (peer(), peer());
        let core_frame = vec![replicator_core::wire::WIRE_VERSION, 1, 2, 3];
        let unknown = vec![0x42];
        for ev in [
            frame_event(a, core_frame.clone()),
            frame_event(b, report_frame(7)),
            // A report this node cannot read is dropped too: the core never sees a report.
            frame_event(b, vec![report::REPORT_TAG, 99, b'{']),
            // Anything else goes to the core, which rejects what it cannot decode (counted).
            frame_event(b, unknown.clone()),
        ] {
            h.net.try_send(ev).unwrap();
        }
        let got: Vec<_> = std::iter::from_fn(|| h.events.try_event()).collect();
        let frames: Vec<(NodeId, Vec<u8>)> = got
            .into_iter()
            .map(|ev| match ev {
                TransportEvent::Message { from, frame } => (from, frame),
                other => panic!("not a frame: {other:?}"),
            })
            .collect();
        assert_eq!(frames, vec![(node(a), core_frame), (node(b), unknown)]);
        let (report, _) = h.dashboard.report_of(&b.to_string()).expect("b's report");
        assert_eq!(report.keys_stored, 7);
        assert!(h.dashboard.report_of(&a.to_string()).is_none());
    }

    /// A waker that remembers it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn waiting_skips_reports_and_ends_with_the_transport() {
        let mut h = harness();
        let a = peer();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        // Only a report: it is taken, and the driver waits, to be woken by what comes next.
        h.net.try_send(frame_event(a, report_frame(1))).unwrap();
        assert!(h.events.poll_event(&mut cx).is_pending());
        assert_eq!(
            h.dashboard.report_of(&a.to_string()).unwrap().0.keys_stored,
            1
        );
        assert!(!flag.0.load(Ordering::SeqCst));
        h.net.try_send(frame_event(a, report_frame(2))).unwrap();
        assert!(flag.0.load(Ordering::SeqCst), "the waiting driver is woken");
        // A report and a frame behind it: one poll gives the frame.
        h.net.try_send(frame_event(a, vec![1])).unwrap();
        let ev = h.events.poll_event(&mut cx);
        assert!(
            matches!(ev, Poll::Ready(Some(TransportEvent::Message { from, frame })) if from == node(a) && frame == [1])
        );
        assert_eq!(
            h.dashboard.report_of(&a.to_string()).unwrap().0.keys_stored,
            2
        );
        drop(h.net);
        assert!(matches!(h.events.poll_event(&mut cx), Poll::Ready(None)));
        assert!(h.events.try_event().is_none());
    }

    #[test]
    fn membership_events_name_nodes_and_discoveries_are_remembered() {
        let mut h = harness();
        let (m, f) = (peer(), peer());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let member = Member {
            peer: m,
            cluster: "c2".into(),
            network: "net".into(),
            addrs: vec![addr.clone()],
            up: true,
        };
        for ev in [
            NetEvent::MemberDiscovered(member),
            NetEvent::PeerDown(m),
            NetEvent::PeerUp(m),
            NetEvent::PeerLeft(m),
            NetEvent::ForeignNetwork {
                peer: f,
                network: "other".into(),
            },
        ] {
            h.net.try_send(ev).unwrap();
        }
        let got: Vec<_> = std::iter::from_fn(|| h.events.try_event()).collect();
        let [discovered, down, up, left, foreign] = got.try_into().expect("five events");
        assert!(
            matches!(discovered, TransportEvent::Discovered { cluster, node: n, network }
            if cluster == ClusterId::new("c2") && n == node(m) && network == NetworkId::new("net"))
        );
        assert!(matches!(down, TransportEvent::Down(n) if n == node(m)));
        assert!(matches!(up, TransportEvent::Up(n) if n == node(m)));
        assert!(matches!(left, TransportEvent::Left(n) if n == node(m)));
        assert!(
            matches!(foreign, TransportEvent::ForeignNetwork { node: n, network }
            if n == node(f) && network == NetworkId::new("other"))
        );
        // Where the member listens: in the address book's file, for a restart.
        let p2p = transport_libp2p::libp2p::multiaddr::Protocol::P2p(m);
        assert_eq!(
            AddressBook::load(h.dir.path()).addresses(),
            vec![addr.with(p2p)]
        );
    }

    #[test]
    fn the_cache_of_node_ids_stays_bounded() {
        let mut h = harness();
        for _ in 0..=ID_CACHE_MAX {
            let p = peer();
            assert_eq!(h.events.node_id(p), node(p));
            assert!(h.events.ids.len() <= ID_CACHE_MAX);
        }
        // A known peer's id is the cached one, not a new copy of its text.
        let p = peer();
        let first = h.events.node_id(p);
        assert!(std::ptr::eq(first.as_str(), h.events.node_id(p).as_str()));
    }
}
