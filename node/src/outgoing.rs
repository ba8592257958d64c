//! What the driver sends to each peer, packed per peer into frames ([`wire::Batch`]); a batch of
//! decisions alone waits a little for company.
//!
//! A decision (`Decide`, or a relay of one to another cluster) answers nobody and holds up no
//! create: the coordinator has answered its client already, and a node that misses it learns
//! the value by catch-up or by asking. Sent at once, each one is a frame of its own, and a
//! frame is the costly part of a message (a write, a wake-up of libp2p's connection task, of
//! the peer's reader and driver). So a batch that holds only decisions waits up to
//! [`DECISION_LINGER`] for the next message to that peer and leaves with it (under load within
//! a fraction of a millisecond; a lone client's next create carries the last one's decision).
//! Anything else for the peer sends the batch at once, decisions first: the order of the
//! messages to a peer is the order the core sent them.
//!
//! This changes only when a decision leaves, never what any node accepts or decides: the
//! network may delay or drop a Decide anyway, and the protocol is safe without it.

use std::collections::BTreeMap;
use std::time::Duration;

use replicator_core::{Message, NodeId, Request, wire};
use tokio::time::Instant;

/// How long decisions alone wait for another message to the same peer.
pub const DECISION_LINGER: Duration = Duration::from_millis(5);

struct Waiting {
    batch: wire::Batch,
    /// When the batch leaves if nothing else for the peer comes first; `None` while it holds
    /// a message that must leave in this turn.
    until: Option<Instant>,
}

/// The batches of one driver turn, and the decisions waiting from earlier turns.
pub struct Outgoing {
    linger: Duration,
    peers: BTreeMap<NodeId, Waiting>,
}

/// Whether `msg` may wait: a decision, to a node or through a representative.
fn may_wait(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Request(Request::Decide { .. })
            | Message::Relay {
                request: Request::Decide { .. },
                ..
            }
    )
}

impl Outgoing {
    pub fn new(linger: Duration) -> Self {
        Outgoing {
            linger,
            peers: BTreeMap::new(),
        }
    }

    /// Queues `msg` for `to`, after everything queued for it before.
    pub fn push(&mut self, now: Instant, to: NodeId, msg: &Message) {
        let waiting = self.peers.entry(to).or_insert_with(|| Waiting {
            batch: wire::Batch::default(),
            until: Some(now + self.linger),
        });
        waiting.batch.push(msg);
        if !may_wait(msg) {
            waiting.until = None;
        }
    }

    /// Hands every batch that must leave by `now` to `send`, frame by frame.
    pub fn flush(&mut self, now: Instant, mut send: impl FnMut(&NodeId, Vec<u8>)) {
        let due: Vec<NodeId> = (self.peers.iter())
            .filter(|(_, w)| w.until.is_none_or(|until| until <= now))
            .map(|(to, _)| to.clone())
            .collect();
        for to in due {
            if let Some(waiting) = self.peers.remove(&to) {
                for frame in waiting.batch.into_frames() {
                    send(&to, frame);
                }
            }
        }
    }

    /// Hands every batch to `send` (the driver stops).
    pub fn flush_all(&mut self, send: impl FnMut(&NodeId, Vec<u8>)) {
        for waiting in self.peers.values_mut() {
            waiting.until = None;
        }
        self.flush(Instant::now(), send);
    }

    /// When the next waiting batch must leave.
    pub fn deadline(&self) -> Option<Instant> {
        self.peers.values().filter_map(|w| w.until).min()
    }
}

#[cfg(test)]
mod tests {
    use replicator_core::{Proposal, ProposalId, Value};

    use super::*;

    fn decide(key: &str) -> Message {
        Message::Request(Request::Decide {
            key: key.into(),
            chosen: Proposal {
                p: ProposalId {
                    coordinator: "c".into(),
                    counter: 1,
                },
                request: None,
                value: Value::from("v"),
            },
        })
    }

    fn relayed_decide(key: &str) -> Message {
        let Message::Request(request) = decide(key) else {
            unreachable!()
        };
        Message::Relay {
            cluster: "c2".into(),
            targets: vec!["m".into()],
            request,
        }
    }

    fn urgent(seq: u64) -> Message {
        Message::CatchUp { after: seq }
    }

    fn sent(out: &mut Outgoing, now: Instant) -> Vec<(NodeId, Vec<Message>)> {
        let mut sent = Vec::new();
        out.flush(now, |to, frame| {
            sent.push((to.clone(), wire::decode_frame(&frame).expect("decodes")));
        });
        sent
    }

    #[test]
    fn decisions_alone_wait_for_the_linger_then_leave() {
        let mut out = Outgoing::new(DECISION_LINGER);
        let t0 = Instant::now();
        out.push(t0, "a".into(), &decide("k1"));
        out.push(t0, "b".into(), &relayed_decide("k2"));
        assert!(sent(&mut out, t0).is_empty());
        assert_eq!(out.deadline(), Some(t0 + DECISION_LINGER));
        let later = t0 + DECISION_LINGER / 2;
        out.push(later, "a".into(), &decide("k3"));
        assert!(sent(&mut out, later).is_empty());
        assert_eq!(
            out.deadline(),
            Some(t0 + DECISION_LINGER),
            "a later decision does not push the first one's deadline back"
        );
        let due = sent(&mut out, t0 + DECISION_LINGER);
        assert_eq!(
            due,
            vec![
                ("a".into(), vec![decide("k1"), decide("k3")]),
                ("b".into(), vec![relayed_decide("k2")]),
            ]
        );
        assert_eq!(out.deadline(), None);
    }

    #[test]
    fn any_other_message_takes_the_waiting_decisions_along_in_order() {
        let mut out = Outgoing::new(DECISION_LINGER);
        let t0 = Instant::now();
        out.push(t0, "a".into(), &decide("k1"));
        out.push(t0, "b".into(), &decide("k2"));
        out.push(t0, "a".into(), &urgent(7));
        out.push(t0, "a".into(), &decide("k3"));
        assert_eq!(
            sent(&mut out, t0),
            vec![("a".into(), vec![decide("k1"), urgent(7), decide("k3")])],
            "b's decision still waits"
        );
        out.push(t0, "c".into(), &urgent(1));
        assert_eq!(sent(&mut out, t0), vec![("c".into(), vec![urgent(1)])]);
        let mut all = Vec::new();
        out.flush_all(|to, frame| all.push((to.clone(), wire::decode_frame(&frame).unwrap())));
        assert_eq!(all, vec![("b".into(), vec![decide("k2")])]);
    }
}
