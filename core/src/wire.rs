//! The wire format: every message nodes exchange, and its one encoding.
//!
//! A frame is one version byte followed by the bincode (2.0.1, standard config) encodings of
//! one or more [`Message`]s, back to back, to be handled in that order: a [`Batch`] packs what
//! one driver turn sends to one peer (many votes and decisions under load) into few frames, so
//! a frame's fixed cost (allocation, queueing, wake-ups, a read) is paid per batch, not per
//! message. Decoding is bounded: bincode refuses any length prefix that would read or
//! allocate past [`FRAME_BYTES_MAX`], a frame holds at most [`MESSAGES_PER_FRAME_MAX`]
//! messages, and nothing here panics on any input. Semantic limits (key and value sizes, list lengths) are checked by the node
//! against its [`Config`](crate::Config) when the message is handled.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::membership::{Digest, Membership};
use crate::storage::DurableKey;
use crate::types::{ClusterId, Key, NodeId, ProposalId, Time, Value};

/// The version byte every frame starts with. Bump it on any incompatible change.
pub const WIRE_VERSION: u8 = 3;
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
    /// Asks the receiver itself; it answers the sender with a [`Response`].
    Request(Request),
    Response(Response),
    /// Asks the receiver to act as representative of its cluster: send `request` to each of
    /// `targets` (nodes of its own cluster, itself included) and answer one [`Message::RelayReply`].
    Relay {
        cluster: ClusterId,
        targets: Vec<NodeId>,
        request: Request,
    },
    /// A representative's aggregated answer: the responses it gathered (maybe not all of them).
    RelayReply {
        cluster: ClusterId,
        responses: Vec<Response>,
    },
    /// A joining node asks for the committed keys and open reservations after `after`.
    SyncRequest {
        after: Option<Key>,
    },
    SyncPage {
        entries: Vec<(Key, DurableKey)>,
        done: bool,
    },
    SyncRefused {
        reason: SyncRefusal,
    },
    /// The sender is leaving: resolve every reservation you hold that names it as a
    /// participant (while it still answers), then say whether you hold none.
    LeaveCheck,
    /// The answer to a [`Message::LeaveCheck`]: `clear` when no reservation here names the
    /// leaving node.
    LeaveClear {
        clear: bool,
    },
    /// An operator removed `node` at the sender: remove it here too.
    Removed {
        node: NodeId,
    },
    /// An operator asks to remove `node`: which reservations held here name it? The receiver
    /// also starts resolving them.
    RemoveCheck {
        node: NodeId,
    },
    /// The answer: the open proposals naming `node` here (at most 100).
    RemoveCheckReply {
        node: NodeId,
        open: Vec<ProposalId>,
    },
    /// The sender's membership and the nodes it knows departed (at most
    /// `clusters_max * cluster_nodes_max` of them): sent to a node whose view differs, so
    /// that views converge although a goodbye or a removal was missed.
    View {
        members: Membership,
        departed: Vec<NodeId>,
    },
    /// Am I still a member? Answered with [`Message::ProbeReply`] echoing `sent` (the asker's
    /// clock), or with [`Message::Removed`] naming the asker if it was removed.
    Probe {
        sent: Time,
    },
    ProbeReply {
        sent: Time,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Reserve `key` for proposal `p` with `value`, if the proposal's membership `digest`
    /// matches the receiver's.
    Reserve {
        p: ProposalId,
        key: Key,
        value: Value,
        digest: Digest,
    },
    /// What do you know of `p`? A node that holds nothing for `p` fences it first.
    Status {
        p: ProposalId,
        key: Key,
    },
    Commit {
        p: ProposalId,
        key: Key,
    },
    Abort {
        p: ProposalId,
        key: Key,
    },
    /// A verify read: what do you hold for `key`? `tag` matches the answer to the question.
    Read {
        key: Key,
        tag: u64,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Response {
    /// `node`'s vote on `p`, answering a Reserve or a Status.
    Vote {
        p: ProposalId,
        key: Key,
        node: NodeId,
        vote: Vote,
    },
    Read {
        key: Key,
        tag: u64,
        node: NodeId,
        state: ReadState,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Vote {
    /// The node holds a reservation of the proposal.
    Granted,
    /// The node stores the key for this proposal: it is committed.
    Committed,
    /// The proposal can never commit. `stored` is the value the node stores for the key under
    /// another proposal, if any: that is what lets a coordinator answer Exists, not Busy.
    /// `holder` is the other proposal that holds the key reserved, if any: that is what lets two
    /// coordinators racing on one key agree which of them tries again first (core/PROTOCOL.md,
    /// "Writing a key", step 5).
    Denied {
        reason: DenyReason,
        stored: Option<Value>,
        holder: Option<ProposalId>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum DenyReason {
    /// The key is stored by another proposal.
    Exists,
    /// The key is reserved by another proposal.
    Busy,
    /// The node had refused or fenced this proposal before (or it is under a watermark).
    Fenced,
    /// The node saw this proposal aborted.
    Aborted,
    /// The proposal's membership digest differs from the node's.
    MembershipChanged,
    /// The node is still copying the keys it joined with.
    NotReady,
    /// The node is leaving the network and grants nothing new.
    Leaving,
    /// The node holds as many reservations as it may.
    Overloaded,
    /// The node was removed from the network: it grants nothing any more.
    Departed,
    /// The node's membership shrank moments ago: it grants nothing until a removed node that
    /// might still be alive has stopped serving reads (its read lease ran out).
    Settling,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ReadState {
    Stored(Value),
    Reserved,
    Free,
    NotReady,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SyncRefusal {
    /// The asked node does not count the joining node as a member yet.
    NotMember,
    /// The asked node is not ready itself.
    NotReady,
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
    let mut frame = vec![WIRE_VERSION];
    append(&mut frame, msg);
    frame
}

fn append(frame: &mut Vec<u8>, msg: &Message) {
    // Encoding to a Vec of our own serde types cannot fail but for exceeding the limit,
    // which messages built by the core never do (pages are bounded by the config).
    if let Err(e) = bincode::serde::encode_into_std_write(msg, frame, config()) {
        panic!("encoding a message failed: {e}");
    }
}

/// The messages one driver turn sends to one peer, packed into as few frames as the bounds
/// allow, in the order they were added.
#[derive(Debug, Default)]
pub struct Batch {
    frames: Vec<Vec<u8>>,
    /// Messages in the last frame.
    in_last: usize,
}

impl Batch {
    pub fn push(&mut self, msg: &Message) {
        let room = self
            .frames
            .last()
            .is_some_and(|f| f.len() < BATCH_FRAME_BYTES && self.in_last < MESSAGES_PER_FRAME_MAX);
        if !room {
            self.frames.push(vec![WIRE_VERSION]);
            self.in_last = 0;
        }
        let frame = self.frames.last_mut().expect("pushed above");
        append(frame, msg);
        self.in_last += 1;
    }

    /// The frames, to send in this order.
    pub fn into_frames(self) -> Vec<Vec<u8>> {
        self.frames
    }
}

/// Decodes one frame into its messages, all or nothing: a frame with any bad part is an error
/// and yields no message. Never panics; holds at most [`MESSAGES_PER_FRAME_MAX`] messages.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Message>, WireError> {
    let (&version, mut body) = frame.split_first().ok_or(WireError::Empty)?;
    if frame.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(frame.len()));
    }
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    if body.is_empty() {
        return Err(WireError::Empty);
    }
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
