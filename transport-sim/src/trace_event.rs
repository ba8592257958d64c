//! The structured trace: a record of each event a picture of the run needs (every message with
//! its delivery or loss, the faults, the client calls and their answers), kept next to the text
//! line it describes ([`TraceMode::Keep`](crate::TraceMode::Keep) only). The text line stays the
//! one the trace hash covers; a record only points at it ([`TraceEvent::line`]), so both are
//! written in one place.

use replicator_core::wire::{Message, Request, Response};
use replicator_core::{Key, NodeId, Time};

/// One structured event: when, the index of its text line in the kept trace, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at: Time,
    /// Its line in [`World::trace_lines`](crate::World::trace_lines).
    pub line: usize,
    pub what: TraceWhat,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceWhat {
    /// A copy of a message leaves `from` for `to`, due at `arrives`. `msg` numbers the copy:
    /// its [`TraceWhat::Received`] or [`TraceWhat::Dropped`] names the same number.
    Sent {
        msg: u64,
        from: NodeId,
        to: NodeId,
        arrives: Time,
        dup: bool,
        about: MessageAbout,
    },
    /// The network lost a message as it was sent: it never arrives.
    Lost {
        from: NodeId,
        to: NodeId,
        about: MessageAbout,
    },
    Received {
        msg: u64,
    },
    /// The copy arrived where it cannot be delivered (`why`: node down, partition).
    Dropped {
        msg: u64,
        why: &'static str,
    },
    /// A fault starts or ends, or the world changes (a join, a leave). `node`: where, if one
    /// node.
    World {
        node: Option<NodeId>,
        change: WorldChange,
    },
    /// A client's call reaches `node` (`lost`: the node was down).
    Call {
        node: NodeId,
        call: u64,
        key: Option<Key>,
        lost: bool,
    },
    Reply {
        node: NodeId,
        call: u64,
    },
}

/// A fault or a change of the world's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorldChange {
    Crash,
    Restart,
    Pause {
        until: Time,
    },
    /// `members` are cut from the rest (only their sends if `one_way`) until a heal, a calm,
    /// or `until`.
    Partition {
        id: u64,
        members: Vec<NodeId>,
        one_way: bool,
        until: Time,
    },
    Heal {
        id: u64,
    },
    /// Messages from the node to `to` are held until `until`.
    Clog {
        to: NodeId,
        until: Time,
    },
    Slow,
    /// Every fault ends.
    Calm,
    Join,
    Leave,
    /// The node said goodbye: gone for good.
    Goodbye,
    /// Anything else worth a mark (an operator's removal, a restart of a cluster).
    Note,
}

/// What a message is, for filtering: its kind and the key it is about, if one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageAbout {
    pub kind: &'static str,
    pub key: Option<Key>,
}

impl MessageAbout {
    pub fn of(msg: &Message) -> MessageAbout {
        let (kind, key) = match msg {
            Message::Request(r) => request_about(r),
            Message::Response(r) => response_about(r),
            Message::Relay { request, .. } => ("Relay", request_about(request).1),
            Message::RelayReply { responses, .. } => (
                "RelayReply",
                responses.first().and_then(|r| response_about(r).1),
            ),
            Message::SyncRequest { .. } => ("SyncRequest", None),
            Message::SyncPage { .. } => ("SyncPage", None),
            Message::SyncRefused { .. } => ("SyncRefused", None),
            Message::CatchUp { .. } => ("CatchUp", None),
            Message::CatchUpPage { .. } => ("CatchUpPage", None),
            Message::LeaveCheck { .. } => ("LeaveCheck", None),
            Message::LeaveClear { .. } => ("LeaveClear", None),
            Message::Removed { .. } => ("Removed", None),
            Message::RemoveCheck { .. } => ("RemoveCheck", None),
            Message::RemoveCheckReply { .. } => ("RemoveCheckReply", None),
            Message::View { .. } => ("View", None),
        };
        MessageAbout {
            kind,
            key: key.cloned(),
        }
    }
}

fn request_about(r: &Request) -> (&'static str, Option<&Key>) {
    match r {
        Request::Prepare { key, .. } => ("Prepare", Some(key)),
        Request::Accept { key, .. } => ("Accept", Some(key)),
        Request::Decide { key, .. } => ("Decide", Some(key)),
        Request::Query { key, .. } => ("Query", Some(key)),
        Request::Read { key, .. } => ("Read", Some(key)),
    }
}

fn response_about(r: &Response) -> (&'static str, Option<&Key>) {
    match r {
        Response::Ballot { key, .. } => ("BallotReply", Some(key)),
        Response::Query { key, .. } => ("QueryReply", Some(key)),
        Response::Read { key, .. } => ("ReadReply", Some(key)),
    }
}
