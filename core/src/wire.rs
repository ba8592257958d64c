//! The wire format: every message nodes exchange, and its one encoding.
//!
//! A frame is one version byte, the frame's table of node ids (a bincode sequence of their
//! texts; inside the messages a node id is its index in it, see `wire/node_ids.rs`), then the bincode
//! (2.0.1, standard config) encodings of one or more [`Message`]s, back to back, to be handled
//! in that order. A [`Batch`] packs what one driver turn sends to one peer (many votes and
//! decisions under load) into few frames, so a frame's fixed cost (allocation, queueing,
//! wake-ups, a read) is paid per batch, not per message. Decoding is bounded: bincode refuses
//! any length prefix that would read or allocate past [`FRAME_BYTES_MAX`], a frame holds at
//! most [`MESSAGES_PER_FRAME_MAX`] messages, and nothing here panics on any input. Semantic
//! limits (key and value sizes, list lengths) are checked by the node against its
//! [`Config`](crate::Config) when the message is handled.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::membership::{Digest, Membership};
use crate::storage::DurableKey;
use crate::types::{Ballot, ClusterId, Key, NodeId, Proposal, ProposalId, Value};

pub(crate) mod node_ids;

/// The version byte every frame starts with. Bump it on any incompatible change.
pub const WIRE_VERSION: u8 = 7;
/// No frame is ever longer than this; decoding never allocates past it.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A frame holds at most this many messages: what a decoded frame holds in memory stays
/// bounded by it, whatever the frame's bytes.
pub const MESSAGES_PER_FRAME_MAX: usize = 1024;
/// A [`Batch`] adds a message to its current frame only while the frame is shorter than this;
/// then it starts another. So a frame is at most this plus one message long, well below
/// [`FRAME_BYTES_MAX`] (the largest message, a sync page, is at most half of it).
pub const BATCH_FRAME_BYTES: usize = 64 * 1024;

/// A message between two nodes. The sender is known from the transport (an authenticated
/// libp2p peer id, or the simulator's link), not from the message.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Asks the receiver itself; it answers the sender with a [`Response`] (a Decide needs none).
    Request(Request),
    Response(Response),
    /// Asks the receiver to act as representative of its cluster: send `request` to each of
    /// `targets` (nodes of its own cluster, itself included) and forward their answers in
    /// [`Message::RelayReply`]s. It never answers for a node.
    Relay {
        cluster: ClusterId,
        targets: Vec<NodeId>,
        request: Request,
    },
    /// Answers a representative gathered, each node's own (maybe not all of them yet).
    RelayReply {
        cluster: ClusterId,
        responses: Vec<Response>,
    },
    /// A joining node asks for the records (promises, accepted values, decisions) after
    /// `after`. `digest`: the joiner's membership; a member whose own differs answers with
    /// its view and refuses (`SyncRefusal::MembershipChanged`), so every page a joiner copies
    /// was cut in the view the joiner counts its sources in.
    SyncRequest {
        after: Option<Key>,
        digest: Digest,
    },
    /// One page of a member's records, in key order. `floor`: the member's ballot floor.
    /// `seq`: the member's last numbered decision when the page was cut (the joiner's catch-up
    /// from this member starts at the first page's).
    SyncPage {
        /// The `after` of the request this page answers: a late or duplicated page of an
        /// earlier request is told apart from a page out of order.
        after: Option<Key>,
        entries: Vec<(Key, DurableKey)>,
        floor: Ballot,
        seq: u64,
        done: bool,
    },
    SyncRefused {
        reason: SyncRefusal,
    },
    /// Catch-up: the decisions the receiver numbered after `after`.
    CatchUp {
        after: u64,
    },
    /// The answer: decisions in the order the sender numbered them, `last` the number of the
    /// last one (`after` if none), `latest` the sender's newest.
    CatchUpPage {
        entries: Vec<(Key, Proposal)>,
        last: u64,
        latest: u64,
    },
    /// The sender is leaving: it decided every value it had accepted; a member of its cluster
    /// pulls its decisions up to `seq` (catch-up), then answers.
    LeaveCheck {
        seq: u64,
    },
    /// The answer to a [`Message::LeaveCheck`]: this node holds every decision the leaving
    /// node numbered up to `seq` (`u64::MAX`: it needs none, being of another cluster).
    LeaveClear {
        seq: u64,
    },
    /// An operator removed `node` at the sender: remove it here too.
    Removed {
        node: NodeId,
    },
    /// An operator asks to remove `node`: do you agree on its cluster's members? (Asked of the
    /// node itself too: if it answers, it is alive.)
    RemoveCheck {
        node: NodeId,
    },
    /// The answer: the members of `node`'s cluster as the sender knows them.
    RemoveCheckReply {
        node: NodeId,
        cluster: Vec<NodeId>,
    },
    /// The sender's membership and the nodes it knows departed (at most
    /// `clusters_max * cluster_nodes_max` of them): sent to a node whose view differs, so
    /// that views converge although a goodbye or a removal was missed.
    View {
        members: Membership,
        departed: Vec<NodeId>,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Phase 1: promise `ballot` (a classic one) for `key`.
    Prepare {
        key: Key,
        ballot: Ballot,
        digest: Digest,
    },
    /// Phase 2 (a classic ballot) or the fast round (ballot 0): accept `proposal` for `key`.
    Accept {
        key: Key,
        ballot: Ballot,
        proposal: Proposal,
        digest: Digest,
    },
    /// `chosen` is the value of `key`. Needs no answer.
    Decide { key: Key, chosen: Proposal },
    /// A read's question to a majority of the reader's cluster: what do you hold for `key`?
    Query { key: Key, tag: u64, digest: Digest },
    /// A verify read: what do you hold for `key`? `tag` matches the answer to the question.
    Read { key: Key, tag: u64 },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Response {
    /// `node`'s answer to a Prepare (`proposal` is `None`) or to an Accept of `proposal`, of
    /// `key` at `ballot`. Ballot 0 is shared by every coordinator: the proposal tells whose
    /// Accept an answer is for.
    Ballot {
        key: Key,
        ballot: Ballot,
        proposal: Option<ProposalId>,
        node: NodeId,
        /// The membership `node` answered in (a promise or an accept counts in it only).
        digest: Digest,
        answer: Answer,
    },
    Query {
        key: Key,
        tag: u64,
        node: NodeId,
        state: QueryState,
    },
    Read {
        key: Key,
        tag: u64,
        node: NodeId,
        state: ReadState,
    },
}

/// An acceptor's answer to a Prepare or an Accept.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Answer {
    /// To a Prepare: promised, with what this node last accepted for the key.
    Promise {
        accepted: Option<(Ballot, Proposal)>,
    },
    /// To an Accept: accepted (durably).
    Accepted,
    /// Refused for the ballot: this node promised `promised`, or (at ballot 0) accepted
    /// another proposal, `holder`. `folded`: `promised` is this node's ballot floor (it holds
    /// no record of the key), not the ballot of a proposer at work on it.
    Nack {
        promised: Ballot,
        holder: Option<ProposalId>,
        folded: bool,
    },
    /// The key is decided here: `chosen` is its value.
    Stored { chosen: Proposal },
    /// This node takes no part now; it changed nothing.
    Refused { reason: RefuseReason },
}

/// Why a node takes no part in a ballot or a read's question (it changed nothing).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The request's membership digest differs from the node's.
    MembershipChanged,
    /// The node is still copying the records it joined with.
    NotReady,
    /// The node is leaving the network and promises or accepts nothing new.
    Leaving,
    /// The node was removed from the network.
    Departed,
    /// The node holds as many undecided keys as it may.
    Overloaded,
    /// The node's record of the key was damaged: it abstains until it learns the decision.
    Abstaining,
}

/// What a node holds for a key, as a read's question asks it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum QueryState {
    Stored(Proposal),
    /// Accepted, not known to be decided.
    Accepted(Ballot, Proposal),
    Nothing,
    Refused(RefuseReason),
}

/// What a node holds for a key, as a verify read reports it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ReadState {
    Stored(Value),
    /// A value accepted here, not known to be decided.
    Undecided,
    Free,
    NotReady,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SyncRefusal {
    /// The asked node does not count the joining node as a member yet.
    NotMember,
    /// The asked node is not ready itself.
    NotReady,
    /// The asked node's membership differs from the joiner's: it sent its view; the joiner
    /// asks the same page again once the views agree.
    MembershipChanged,
}

/// A frame that could not be decoded. Always the sender's fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes exceeds the limit of {FRAME_BYTES_MAX}")]
    TooLarge(usize),
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("more than {MESSAGES_PER_FRAME_MAX} messages in one frame")]
    TooManyMessages,
    #[error("{0} messages where one was expected")]
    Messages(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Encodes a message into one frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut batch = Batch::default();
    batch.push(msg);
    batch
        .into_frames()
        .pop()
        .expect("a pushed message makes a frame")
}

/// A frame being built: its node ids and its messages' bytes.
#[derive(Debug, Default)]
struct FrameBuilder {
    ids: node_ids::EncodingTable,
    messages: Vec<u8>,
    count: usize,
}

impl FrameBuilder {
    fn append(&mut self, msg: &Message) {
        let messages = &mut self.messages;
        // Encoding to a Vec of our own serde types cannot fail but for exceeding the limit,
        // which messages built by the core never do (pages are bounded by the config).
        let encoded = node_ids::encoding(&mut self.ids, || {
            bincode::serde::encode_into_std_write(msg, messages, config())
        });
        if let Err(e) = encoded {
            panic!("encoding a message failed: {e}");
        }
        self.count += 1;
    }

    fn len(&self) -> usize {
        1 + self.ids.encoded_len() + self.messages.len()
    }

    /// The version byte, the table of node ids (their texts), the messages.
    fn finish(self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.len());
        frame.push(WIRE_VERSION);
        // Outside an encoding scope the ids are written as text.
        if let Err(e) = bincode::serde::encode_into_std_write(self.ids.ids(), &mut frame, config())
        {
            panic!("encoding a frame's node ids failed: {e}");
        }
        frame.extend_from_slice(&self.messages);
        frame
    }
}

/// The messages one driver turn sends to one peer, packed into as few frames as the bounds
/// allow, in the order they were added.
#[derive(Debug, Default)]
pub struct Batch {
    frames: Vec<FrameBuilder>,
}

impl Batch {
    pub fn push(&mut self, msg: &Message) {
        let room = self
            .frames
            .last()
            .is_some_and(|f| f.len() < BATCH_FRAME_BYTES && f.count < MESSAGES_PER_FRAME_MAX);
        if !room {
            self.frames.push(FrameBuilder::default());
        }
        self.frames.last_mut().expect("pushed above").append(msg);
    }

    /// The frames, to send in this order.
    pub fn into_frames(self) -> Vec<Vec<u8>> {
        self.frames.into_iter().map(FrameBuilder::finish).collect()
    }
}

/// Decodes one frame into its messages, all or nothing: a frame with any bad part is an error
/// and yields no message. Never panics; holds at most [`MESSAGES_PER_FRAME_MAX`] messages.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Message>, WireError> {
    let (&version, body) = frame.split_first().ok_or(WireError::Empty)?;
    if frame.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(frame.len()));
    }
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    if body.is_empty() {
        return Err(WireError::Empty);
    }
    // Outside a decoding scope the table's ids are read as text.
    let (ids, used) = bincode::serde::decode_from_slice::<Vec<NodeId>, _>(body, config())
        .map_err(|e| WireError::Malformed(format!("node id table: {e}")))?;
    let mut body = &body[used..];
    if body.is_empty() {
        return Err(WireError::Empty);
    }
    node_ids::decoding_with(ids, || {
        let mut msgs = Vec::new();
        while !body.is_empty() {
            if msgs.len() == MESSAGES_PER_FRAME_MAX {
                return Err(WireError::TooManyMessages);
            }
            let (msg, used) = bincode::serde::decode_from_slice::<Message, _>(body, config())
                .map_err(|e| WireError::Malformed(e.to_string()))?;
            msgs.push(msg);
            body = &body[used..];
        }
        Ok(msgs)
    })
}

/// Decodes a frame that must hold exactly one message (what [`encode`] makes).
pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    let mut msgs = decode_frame(frame)?;
    match msgs.len() {
        1 => Ok(msgs.pop().expect("one message")),
        n => Err(WireError::Messages(n)),
    }
}

/// Encodes any serde value with the same bounded configuration (for storage records).
pub fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes a record written by [`encode_record`]; bounded like frames.
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (v, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::Trailing(bytes.len() - used));
    }
    Ok(v)
}
