//! What the core asks to be made durable, and the state it starts from after a restart.
//!
//! The core never writes anything itself. It emits [`WriteOp`]s in an
//! [`Output::Persist`](crate::Output::Persist) and holds back every message and reply that was
//! produced after them until the driver reports the write durable. A driver keeps a
//! [`Recovered`] image of its disk by applying each durable write with [`Recovered::apply`],
//! and hands that image to [`Node::new`](crate::Node::new) after a restart.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{Ballot, ClusterId, Key, NetworkId, NodeId, Proposal, RequestId, Value};

/// The durable state of one key at one node (core/PROTOCOL.md, "State per key"). A key this
/// node knows nothing of is absent.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DurableKey {
    /// Not decided here yet: the highest ballot this node promised (`pb`), and the last
    /// proposal it accepted with the ballot it accepted it at (`acc`).
    Open {
        promised: Ballot,
        accepted: Option<(Ballot, Proposal)>,
    },
    /// Decided: `chosen` is the key's value forever. `seq` numbers the decisions this node
    /// learned, in the order it learned them (its own cluster catches up by it).
    Stored { chosen: Proposal, seq: u64 },
}

impl DurableKey {
    pub fn is_stored(&self) -> bool {
        matches!(self, DurableKey::Stored { .. })
    }

    /// The decided proposal, if the key is stored.
    pub fn stored(&self) -> Option<&Proposal> {
        match self {
            DurableKey::Stored { chosen, .. } => Some(chosen),
            DurableKey::Open { .. } => None,
        }
    }

    /// The accepted proposal and its ballot, if the key is open with one.
    pub fn accepted(&self) -> Option<&(Ballot, Proposal)> {
        match self {
            DurableKey::Open { accepted, .. } => accepted.as_ref(),
            DurableKey::Stored { .. } => None,
        }
    }

    /// The value a record carries (stored or accepted), for size checks.
    pub fn value(&self) -> Option<&Value> {
        match self {
            DurableKey::Stored { chosen, .. } => Some(&chosen.value),
            DurableKey::Open { accepted, .. } => accepted.as_ref().map(|(_, a)| &a.value),
        }
    }
}

/// The definite outcome of a client request, remembered for retries with the same id.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RequestOutcome {
    Stored,
    Exists(Value),
    Busy,
}

/// One remembered client request id.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Order of arrival: the oldest records are forgotten first.
    pub seq: u64,
    pub key: Key,
    /// A fingerprint of the value, to refuse a retry that reuses the id for another value.
    pub value_fingerprint: u64,
    /// The proposal id the request runs under (a retry runs the same one again).
    pub proposal: crate::types::ProposalId,
    /// Known once the request reached a definite outcome.
    pub outcome: Option<RequestOutcome>,
}

/// One durable change. A write is a batch of these, applied atomically and in order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum WriteOp {
    PutKey {
        key: Key,
        state: DurableKey,
    },
    /// A promise-only record folded into the ballot floor (core/PROTOCOL.md, "Forgetting").
    RemoveKey {
        key: Key,
    },
    /// Every Prepare and Accept below this ballot is refused on a key this node holds nothing
    /// for: the promises folded into it are kept that way.
    BallotFloor(Ballot),
    /// Proposal counters below this may have been used; a restart starts here.
    CounterCeiling(u64),
    /// Ballot rounds below this may have been used by this node; a restart starts here.
    RoundCeiling(u64),
    /// This node pulled every decision `peer` had numbered up to `seq` (catch-up).
    CaughtUp {
        peer: NodeId,
        seq: u64,
    },
    PutRequest {
        id: RequestId,
        record: RequestRecord,
    },
    RemoveRequest {
        id: RequestId,
    },
    /// Whether the node finished its join-time copy and may vote and serve reads.
    Ready(bool),
    /// A node joined the membership (discovered, or learned from a member's view). The
    /// membership is protocol state: a restarted node resumes with every member it recorded.
    AddMember {
        cluster: ClusterId,
        node: NodeId,
    },
    /// A node left the membership (its goodbye, or an operator's removal): never a member
    /// again. When it is this node itself, the node was removed: it serves nothing any more.
    Departed(NodeId),
}

/// A node's durable state: what it recovers after a restart.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Recovered {
    /// The network this node belongs to: drawn by the founder, adopted by a joiner from the
    /// peer it joins through, before anything is copied.
    pub network: NetworkId,
    /// Every other member this node recorded, with its cluster. Never includes a departed node.
    pub members: BTreeMap<NodeId, ClusterId>,
    /// The records of keys. A driver that loads only what is in flight gives the open records
    /// (and may give decisions: the node keeps none of them, it reads decisions through its
    /// [`DecidedKeys`](crate::DecidedKeys)); an image of the whole disk holds every record.
    pub keys: BTreeMap<Key, DurableKey>,
    /// The number of the last decision stored (decisions are numbered 1, 2, ... in the order
    /// this node learned them): the node numbers its next one after it.
    pub last_decision: u64,
    /// The decided keys by their number: kept by [`Recovered::apply`] for an image of the
    /// whole disk ([`DiskImage`](crate::DiskImage)); empty where a driver loads only what is
    /// in flight.
    pub decision_order: BTreeMap<u64, Key>,
    /// Keys whose record the driver found damaged: this node abstains for them (no promise, no
    /// accept, no answer to a read's query) until it learns their decision. Not written by the
    /// core: a driver fills it in when it loads a disk.
    pub damaged: BTreeSet<Key>,
    pub floor: Ballot,
    pub counter_ceiling: u64,
    pub round_ceiling: u64,
    /// For each member of this node's cluster: the last of its decisions pulled from it.
    pub caught_up: BTreeMap<NodeId, u64>,
    pub requests: BTreeMap<RequestId, RequestRecord>,
    pub ready: bool,
    pub departed: BTreeSet<NodeId>,
}

impl Recovered {
    /// The state of a node that founds the network `network` (an id its driver drew at
    /// random): nothing to copy, ready at once.
    pub fn founder(network: NetworkId) -> Self {
        Recovered {
            ready: true,
            ..Recovered::joiner(network)
        }
    }

    /// The state of a brand-new node that joins the network `network` (learned from the peer
    /// it joins through): it copies the keys from its cluster before it votes or serves reads.
    pub fn joiner(network: NetworkId) -> Self {
        Recovered {
            network,
            members: BTreeMap::new(),
            keys: BTreeMap::new(),
            last_decision: 0,
            decision_order: BTreeMap::new(),
            damaged: BTreeSet::new(),
            floor: Ballot::FAST,
            counter_ceiling: 0,
            round_ceiling: 0,
            caught_up: BTreeMap::new(),
            requests: BTreeMap::new(),
            ready: false,
            departed: BTreeSet::new(),
        }
    }

    /// The same state with these members recorded (the nodes that found a network together).
    pub fn with_members(mut self, members: impl IntoIterator<Item = (ClusterId, NodeId)>) -> Self {
        for (cluster, node) in members {
            self.apply(&WriteOp::AddMember { cluster, node });
        }
        self
    }

    /// Applies one durable change. Every op sets a value or keeps a maximum, so applying a
    /// sequence of writes again, in order, ends in the same state (a driver may replay a log
    /// its database already took).
    pub fn apply(&mut self, op: &WriteOp) {
        match op {
            WriteOp::PutKey { key, state } => {
                self.damaged.remove(key);
                if let DurableKey::Stored { seq, .. } = state {
                    self.last_decision = self.last_decision.max(*seq);
                    self.decision_order.insert(*seq, key.clone());
                }
                if let Some(DurableKey::Stored { seq, .. }) =
                    self.keys.insert(key.clone(), state.clone())
                    && !matches!(state, DurableKey::Stored { seq: now, .. } if *now == seq)
                {
                    // A decision written again (repaired) under a new number.
                    self.decision_order.remove(&seq);
                }
            }
            WriteOp::RemoveKey { key } => {
                self.keys.remove(key);
            }
            WriteOp::BallotFloor(b) => {
                if *b > self.floor {
                    self.floor = b.clone();
                }
            }
            WriteOp::CounterCeiling(c) => self.counter_ceiling = self.counter_ceiling.max(*c),
            WriteOp::RoundCeiling(c) => self.round_ceiling = self.round_ceiling.max(*c),
            WriteOp::CaughtUp { peer, seq } => {
                let s = self.caught_up.entry(peer.clone()).or_insert(0);
                *s = (*s).max(*seq);
            }
            WriteOp::PutRequest { id, record } => {
                self.requests.insert(id.clone(), record.clone());
            }
            WriteOp::RemoveRequest { id } => {
                self.requests.remove(id);
            }
            WriteOp::Ready(r) => self.ready = *r,
            WriteOp::AddMember { cluster, node } => {
                if !self.departed.contains(node) {
                    self.members.insert(node.clone(), cluster.clone());
                }
            }
            WriteOp::Departed(n) => {
                self.members.remove(n);
                self.caught_up.remove(n);
                self.departed.insert(n.clone());
            }
        }
    }

    pub fn apply_all<'a>(&mut self, ops: impl IntoIterator<Item = &'a WriteOp>) {
        for op in ops {
            self.apply(op);
        }
    }
}
