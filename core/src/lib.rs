//! # replicator-core
//!
//! The write-once multi-cluster replication protocol of `core/PROTOCOL.md` (the protocol as
//! implemented; the design it starts from is `../shared/design/PROTOCOL.md`) as a
//! pure, sans-io state machine: [`Node`]. It has no I/O, no clock, no randomness of its own,
//! no threads and no async; the real node (tokio + libp2p) and the deterministic simulator
//! drive the very same code.
//!
//! A driver feeds [`Input`]s with [`Node::handle`], drains [`Output`]s with
//! [`Node::poll_output`], and wakes the node at [`Node::poll_timeout`]. See [`Node`] for the
//! contract.
//!
//! ## Where each rule of core/PROTOCOL.md lives
//!
//! | PROTOCOL.md | file (in `src/`) |
//! |---|---|
//! | State per key; refusals and watermarks | `node/ledger.rs` |
//! | Durability: the barrier | `node/outbox.rs` |
//! | Writing a key: steps 1 (start), 5 (Busy retries), 6 (timeouts) | `node/coordinator.rs` |
//! | Writing a key: step 5, the race rule (who retries first) | `node/contention.rs` |
//! | Writing a key: steps 2 (Reserve), 4 (Commit, Abort); the lease | `node/participant.rs` |
//! | Writing a key: step 3, the decision rule | `node/decider.rs` (`decision`) |
//! | Collecting votes, deciding, telling the participants; Resolve(P) | `node/resolve.rs` |
//! | Terms: representative (choice, failover, relaying) | `node/representative.rs` |
//! | Reading a key (GET), verify reads | `node/reads.rs` |
//! | The read lease (probes; settling is in `members.rs`) | `node/lease.rs` |
//! | At-most-once requests | `node/requests.rs` (the table), `node/coordinator.rs` (retries) |
//! | Membership, durable membership, network identity, views | `node/members.rs`, `membership.rs` |
//! | Joining | `node/sync.rs` |
//! | Leaving safely | `node/leave.rs` |
//! | Operator removal | `node/removal.rs` |
//! | Bounds | `config.rs` (the limits), `node/bounds.rs` (checks of peer and client input) |
//!
//! The rest: `node.rs` holds the state of a [`Node`] and routes every input to the file above
//! that handles it; `api.rs` is the seam (inputs, outputs, replies, notes); `faults.rs` the
//! typed peer faults and violations that notes carry; `wire.rs` the wire
//! format; `storage.rs` the durable writes and the recovered image; `timers.rs` the timer
//! table; `types.rs` the ids, values, time and the one FNV-1a of the workspace.

mod api;
mod config;
mod faults;
mod membership;
mod node;
pub mod quorum;
mod storage;
mod timers;
mod types;
pub mod wire;

pub use api::{
    Command, GetOutcome, Input, Invalid, NotReady, Note, Output, PutOutcome, RemoveOutcome, Reply,
    Silence, Urgency, VerifyReport,
};
pub use config::{Config, ConfigError};
pub use faults::{PeerFault, PeerFaultKind, ROUND_MAX, Violation, ViolationKind};
pub use membership::{Digest, Membership};
pub use node::{InjectedBug, Node, Stats, validate_key, validate_put};
pub use storage::{DurableKey, Recovered, RequestOutcome, RequestRecord, WriteOp};
pub use types::{
    Ballot, CallId, ClusterId, FNV1A_OFFSET, Key, NetworkId, NodeId, Proposal, ProposalId,
    RequestId, Time, Value, WriteId, fnv1a, fnv1a_extend,
};
pub use wire::{Answer, Message, QueryState, ReadState, RefuseReason, Request, Response};
