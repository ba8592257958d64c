//! What the core asks to be made durable, and the state it starts from after a restart.
//!
//! The core never writes anything itself. It emits [`WriteOp`]s in an
//! [`Output::Persist`](crate::Output::Persist) and holds back every message and reply that was
//! produced after them until the driver reports the write durable. A driver keeps a
//! [`Recovered`] image of its disk by applying each durable write with [`Recovered::apply`],
//! and hands that image to [`Node::new`](crate::Node::new) after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::types::{ClusterId, Key, NetworkId, NodeId, ProposalId, RequestId, Value};

/// The durable state of one key. `Free` keys are simply absent.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DurableKey {
    /// This node granted `p`; `participants` is the membership `p` started with.
    Reserved {
        p: ProposalId,
        value: Value,
        participants: Arc<Membership>,
    },
    /// Committed. Permanent.
    Stored { p: ProposalId, value: Value },
}

impl DurableKey {
    pub fn proposal(&self) -> &ProposalId {
        match self {
            DurableKey::Reserved { p, .. } | DurableKey::Stored { p, .. } => p,
        }
    }
    pub fn value(&self) -> &Value {
        match self {
            DurableKey::Reserved { value, .. } | DurableKey::Stored { value, .. } => value,
        }
    }
    pub fn is_stored(&self) -> bool {
        matches!(self, DurableKey::Stored { .. })
    }
}

/// Why this node refused a proposal. Kept so that a late or duplicated Reserve of it is
/// refused again, never granted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RefusalWhy {
    /// Denied a Reserve (the reason the Reserve got).
    Denied(crate::wire::DenyReason),
    /// Fenced by a Status: the node held nothing for it.
    Fenced,
    /// Saw it aborted.
    Aborted,
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
    /// The latest proposal run for the request.
    pub proposal: ProposalId,
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
    RemoveKey {
        key: Key,
    },
    PutRefusal {
        p: ProposalId,
        why: RefusalWhy,
    },
    RemoveRefusal {
        p: ProposalId,
    },
    /// Refuse every proposal of `coordinator` numbered at or below `counter` that this node
    /// did not grant.
    Watermark {
        coordinator: NodeId,
        counter: u64,
    },
    /// Proposal counters below this may have been used; a restart starts here.
    CounterCeiling(u64),
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
    /// A node left the membership (its goodbye, or an operator's removal): counted as fenced
    /// for any proposal from now on, and never a member again. When it is this node itself, the
    /// node was removed: it serves nothing any more.
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
    pub keys: BTreeMap<Key, DurableKey>,
    pub refusals: BTreeMap<ProposalId, RefusalWhy>,
    pub watermarks: BTreeMap<NodeId, u64>,
    pub counter_ceiling: u64,
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
    /// it joins through): it copies the keys from a member before it votes or serves reads.
    pub fn joiner(network: NetworkId) -> Self {
        Recovered {
            network,
            members: BTreeMap::new(),
            keys: BTreeMap::new(),
            refusals: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            counter_ceiling: 0,
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

    /// Applies one durable change.
    pub fn apply(&mut self, op: &WriteOp) {
        match op {
            WriteOp::PutKey { key, state } => {
                self.keys.insert(key.clone(), state.clone());
            }
            WriteOp::RemoveKey { key } => {
                self.keys.remove(key);
            }
            WriteOp::PutRefusal { p, why } => {
                self.refusals.insert(p.clone(), *why);
            }
            WriteOp::RemoveRefusal { p } => {
                self.refusals.remove(p);
            }
            WriteOp::Watermark {
                coordinator,
                counter,
            } => {
                let w = self.watermarks.entry(coordinator.clone()).or_insert(0);
                *w = (*w).max(*counter);
            }
            WriteOp::CounterCeiling(c) => self.counter_ceiling = self.counter_ceiling.max(*c),
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
