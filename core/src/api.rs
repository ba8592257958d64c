//! The seam between the core and the world: what goes in, what comes out.

use serde::{Deserialize, Serialize};

use crate::faults::{PeerFault, Violation};
use crate::membership::Membership;
use crate::storage::WriteOp;
use crate::types::{
    Ballot, CallId, ClusterId, Key, NetworkId, NodeId, ProposalId, RequestId, Value, WriteId,
};
use crate::wire::{Message, ReadState};

/// Everything that can happen to a node.
#[derive(Clone, Debug)]
pub enum Input {
    /// A message from a peer (decoded with [`wire::decode`](crate::wire::decode)); `from` is
    /// the authenticated sender.
    Message { from: NodeId, msg: Message },
    /// A client's command; its reply carries the same `call`.
    Client { call: CallId, cmd: Command },
    /// Every write up to and including `upto` is durable.
    Persisted { upto: WriteId },
    /// Timers may be due: the driver calls this at [`Node::poll_timeout`](crate::Node::poll_timeout).
    Timeout,
    /// Discovery found a node (or confirmed one): it announced itself in `cluster` of the
    /// network `network`. Memberships only grow this way (or from a member's view), and only
    /// with nodes of this node's own network.
    NodeDiscovered {
        cluster: ClusterId,
        node: NodeId,
        network: NetworkId,
    },
    /// A node left the membership: it said goodbye (`goodbye`), or an operator removed it.
    NodeRemoved { node: NodeId, goodbye: bool },
    /// Leave the network gracefully: promise and accept nothing new, decide every value
    /// accepted here, let this cluster pull every decision this node knows, then emit
    /// [`Note::LeaveComplete`]; the driver then says goodbye.
    Leave,
}

/// A client's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Key,
        value: Value,
        request: Option<RequestId>,
    },
    Get {
        key: Key,
    },
    /// Ask every node of every cluster what it holds for the key.
    Verify {
        key: Key,
    },
    /// An operator removes a dead node from the membership, here and (through this node) on
    /// every member. Unless `force`: only a node that does not answer, and only from a cluster
    /// with an odd number of members whose other members agree on them (core/PROTOCOL.md,
    /// "Operator removal").
    RemoveNode {
        node: NodeId,
        force: bool,
    },
}

/// Whether a write holds anything back (core/PROTOCOL.md, "Durability: the barrier").
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Urgency {
    /// A message or reply waits until this write is durable: the driver syncs it now (one
    /// group commit may carry many).
    Barrier,
    /// Nothing waits for it: the driver may keep it until the next barrier write (or a short
    /// delay) and sync them together. A crash before then loses it, and every later lazy write
    /// with it; the protocol is safe either way (the one kind of lazy write is `Stored` after
    /// a decision: the durable accepted value recovers to the same decision).
    Lazy,
}

/// What the core asks the world to do. Drain with [`Node::poll_output`](crate::Node::poll_output)
/// after every input.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send `msg` to `to` (never to this node itself: the core delivers those internally).
    Send { to: NodeId, msg: Message },
    /// Make these changes durable, atomically, after every earlier write; then report
    /// [`Input::Persisted`]. A [`Urgency::Barrier`] write has messages or replies held back
    /// until it is durable: sync it now. A [`Urgency::Lazy`] one has none: fold it into the next
    /// sync. Durability is always a prefix of the writes: reporting `upto` says every write up
    /// to it, lazy or not, is durable.
    Persist {
        write: WriteId,
        ops: Vec<WriteOp>,
        urgency: Urgency,
    },
    /// The answer to a client's command.
    Reply { call: CallId, reply: Reply },
    /// Something worth logging, counting or checking.
    Note(Note),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Put(PutOutcome),
    Get(GetOutcome),
    Verify(VerifyReport),
    Remove(RemoveOutcome),
}

/// The answer to [`Command::RemoveNode`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveOutcome {
    /// Removed here; every other member was told.
    Removed,
    /// Not a member.
    Unknown,
    /// The node's cluster has an even number of members (`members`): without the node, a
    /// majority of the rest might miss a value a majority of the whole cluster accepted.
    /// Nothing was removed. Add a node to the cluster first, or force the removal.
    EvenCluster { members: usize },
    /// Some members of the node's cluster did not answer (`silent`), or know its members
    /// otherwise (`disagree`: views are still converging); nothing was removed. Retry, or force.
    Unconfirmed {
        silent: Vec<NodeId>,
        disagree: Vec<NodeId>,
    },
    /// Another removal is being checked at this node; nothing was removed.
    InProgress,
    /// The node answered: it is alive, and only a dead node is removed (a live one that is
    /// removed would serve stale reads until it hears of it). Stop it first, or force.
    Alive,
    /// This node is still joining: its view may lack members, so it cannot count the node's
    /// cluster. Ask a ready member.
    NotReady,
}

/// What a PUT can be told (core/PROTOCOL.md, "What a client can be told").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutOutcome {
    /// The key now holds this value everywhere it will ever be read.
    Stored,
    /// Another value was chosen for this key (it is `value`): choose another key.
    Exists { value: Value },
    /// The PUT had no effect: no Accept carrying its value ever left (concurrent ballots, or
    /// refusals that end by themselves, outlasted its deadline). Retry.
    Busy,
    /// Not decided in time; the value may still be chosen (the silent nodes are named).
    Unavailable(Silence),
    /// Bad key, value or request id; nothing happened.
    Invalid(Invalid),
    /// Too many calls in flight at this node; nothing happened.
    Overloaded,
    /// This node cannot accept writes yet; nothing happened.
    NotReady(NotReady),
}

impl PutOutcome {
    /// Whether the answer is final (the proposal's effect is known).
    pub fn is_definite(&self) -> bool {
        !matches!(self, PutOutcome::Unavailable(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetOutcome {
    Value(Value),
    /// No value is chosen for this key (as of this read's linearization point): a majority
    /// of this node's cluster showed nothing.
    Unknown,
    /// Not enough of this node's cluster answered, or a value accepted there could not be
    /// decided in time (the silent nodes are named).
    Unavailable(Silence),
    Invalid(Invalid),
    Overloaded,
    NotReady(NotReady),
}

/// Who did not answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub nodes: Vec<NodeId>,
    /// Clusters none of whose nodes answered.
    pub clusters: Vec<ClusterId>,
}

impl Silence {
    /// Who of `asked` did not answer: every silent node, and every cluster none of whose nodes
    /// answered.
    pub(crate) fn among(asked: &Membership, answered: impl Fn(&NodeId) -> bool) -> Silence {
        let mut silence = Silence::default();
        for (cluster, nodes) in asked.clusters() {
            let silent: Vec<&NodeId> = nodes.iter().filter(|n| !answered(n)).collect();
            if silent.len() == nodes.len() {
                silence.clusters.push(cluster.clone());
            }
            silence.nodes.extend(silent.into_iter().cloned());
        }
        silence
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalid {
    EmptyKey,
    KeyTooLong {
        bytes: usize,
        max: usize,
    },
    ValueTooLong {
        bytes: usize,
        max: usize,
    },
    RequestIdTooLong {
        bytes: usize,
        max: usize,
    },
    /// The request id was used before for another key or value.
    RequestIdReused,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::EmptyKey => write!(f, "the key is empty"),
            Invalid::KeyTooLong { bytes, max } => {
                write!(f, "the key has {bytes} bytes, more than the limit of {max}")
            }
            Invalid::ValueTooLong { bytes, max } => {
                write!(
                    f,
                    "the value has {bytes} bytes, more than the limit of {max}"
                )
            }
            Invalid::RequestIdTooLong { bytes, max } => {
                write!(
                    f,
                    "the request id has {bytes} bytes, more than the limit of {max}"
                )
            }
            Invalid::RequestIdReused => {
                write!(f, "the request id was used before for another key or value")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotReady {
    /// The node is still copying the keys of the network it joined.
    Joining,
    /// The node's own cluster has fewer members than `Config::cluster_size_min`.
    ClusterTooSmall { members: usize, min: usize },
    /// The node is leaving the network.
    Leaving,
    /// An operator removed this node from the network: it serves nothing any more. Wipe its
    /// data dir to bring the machine back as a new node.
    Removed,
}

/// The answer to a verify read: what every node holds for the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub key: Key,
    pub answers: Vec<(NodeId, ReadState)>,
    pub silent: Silence,
    /// Every node that answered stores the same value, or every one holds none.
    pub agree: bool,
}

/// Things worth logging, counting or checking. None of them needs an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// This node's ballot `ballot` chose `chosen` for `key`: a quorum accepted it (every
    /// participant at ballot 0, a majority of every cluster at a classic ballot).
    Decided {
        key: Key,
        chosen: ProposalId,
        ballot: Ballot,
    },
    /// This node finished its join-time copy and now votes and serves reads.
    Ready,
    /// Every value this node accepted is decided, and its cluster pulled its decisions: it may
    /// say goodbye.
    LeaveComplete,
    /// A node left the membership here (its goodbye, or an operator's removal): the driver
    /// forgets it too.
    NodeRemoved { node: NodeId },
    /// A node of another network announced itself; it was not added.
    ForeignNetwork {
        node: NodeId,
        network: NetworkId,
        ours: NetworkId,
    },
    /// An operator removed this node (`by` told it): from now on it serves nothing.
    SelfRemoved { by: NodeId },
    /// A peer sent something that breaks the rules; it was dropped and changed nothing.
    PeerInputRejected { from: NodeId, reason: PeerFault },
    /// An invariant of the protocol broke (a bug somewhere, or a peer that lies). Nothing was
    /// changed. The simulator fails the run on this.
    Violation { reason: Violation },
}
