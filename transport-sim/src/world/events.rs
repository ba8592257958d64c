//! The event queue's entries: what happens next, ordered by `(time, seq)` so that ties break
//! the same way in every run.

use std::cmp::Ordering;

use replicator_core::{CallId, Command, NetworkId, Time, WriteId};

use crate::spec::NodeIx;

#[derive(Debug)]
pub(super) enum Ev {
    Deliver {
        from: NodeIx,
        to: NodeIx,
        /// The copy's number in the structured trace.
        msg: u64,
        frame: Vec<u8>,
    },
    Client {
        to: NodeIx,
        call: CallId,
        /// Boxed: keeps every queued event small (the queue moves them on every pop).
        cmd: Box<Command>,
    },
    Timer {
        node: NodeIx,
        incarnation: u64,
        at: Time,
    },
    Disk {
        node: NodeIx,
        incarnation: u64,
        write: WriteId,
    },
    /// A Hello (`answer`: the answer to one) from `from` reaches `to`; `network` is the
    /// sender's network id, read from its core when it sent the Hello.
    Hello {
        from: NodeIx,
        to: NodeIx,
        network: NetworkId,
        answer: bool,
    },
    /// Every pair of reachable nodes where one lacks the other exchanges Hellos.
    HelloRound,
    /// `from` said goodbye; the message reaches `to`.
    GoodbyeHeard {
        from: NodeIx,
        to: NodeIx,
    },
    /// `node` completed its leave: it says goodbye now.
    Goodbye {
        node: NodeIx,
    },
    Nemesis,
    Restart {
        node: NodeIx,
    },
    Heal {
        partition: u64,
    },
    /// A node of the faulty minority starts (`start`) or ends a faulty period.
    Minority {
        node: NodeIx,
        start: bool,
    },
    Wake {
        tag: u64,
    },
}

impl Ev {
    /// The node an event happens at, if any: a paused node's events wait.
    pub(super) fn target(&self) -> Option<NodeIx> {
        match self {
            Ev::Deliver { to, .. }
            | Ev::Client { to, .. }
            | Ev::Hello { to, .. }
            | Ev::GoodbyeHeard { to, .. } => Some(*to),
            Ev::Timer { node, .. } | Ev::Disk { node, .. } => Some(*node),
            Ev::Nemesis
            | Ev::Restart { .. }
            | Ev::Heal { .. }
            | Ev::Minority { .. }
            | Ev::Wake { .. }
            | Ev::HelloRound
            | Ev::Goodbye { .. } => None,
        }
    }
}

pub(super) struct Scheduled {
    pub(super) at: Time,
    pub(super) seq: u64,
    pub(super) ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
