//! # replicator-core
//!
//! The write-once multi-cluster replication protocol of `core/PROTOCOL.md` (per-key Flexible
//! Paxos: a fast round with every node, classic ballots with a majority of every cluster) as
//! a pure, sans-io state machine: [`Node`]. It has no I/O, no clock, no randomness of its own,
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
//! | Quorums | `quorum.rs` |
//! | The acceptor: state per key; forgetting (the ballot floor) | `node/acceptor.rs` |
//! | What a node holds in memory | `node/acceptor.rs` (in flight), `decided.rs` (the store's reads) |
//! | Durability: the barrier; lazy writes | `node/outbox.rs` |
//! | Reaching the participants: representatives, failover, resends | `node/fanout.rs`, `node/relay.rs`, `node/proposer.rs` |
//! | Writing a key: the client's PUT, its answers and deadline | `node/coordinator.rs` |
//! | Writing a key: fast round, classic ballots, value choice | `node/proposer.rs` |
//! | Writing a key: races (who retries when) | `node/contention.rs` |
//! | Decide and catch-up | `node/learner.rs` |
//! | Recovery (leases and restarts) | `node.rs` (`recover`), `node/acceptor.rs` (leases) |
//! | Reading a key (GET), verify reads | `node/reader.rs` |
//! | At-most-once requests | `node/requests.rs` (the table), `node/coordinator.rs` (retries) |
//! | Suspicion | `node/health.rs` |
//! | Membership, durable membership, network identity, views | `node/members.rs`, `membership.rs` |
//! | Joining | `node/sync.rs` |
//! | Leaving safely | `node/leave.rs` |
//! | Operator removal | `node/removal.rs` |
//! | Bounds | `config.rs` (the limits), `node/bounds.rs` (checks of peer and client input) |
//!
//! The rest: `node.rs` holds the state of a [`Node`] and routes every input to the file above
//! that handles it; `api.rs` is the seam (inputs, outputs, replies, notes); `faults.rs` the
//! typed peer faults and violations that notes carry; `wire.rs` the wire
//! format; `storage.rs` the durable writes and the recovered image; `decided.rs` the
//! read-only lookup of decisions in the driver's storage (and the simulator's disk image); `timers.rs` the timer
//! table; `types.rs` the ids, ballots, values, time and the one FNV-1a of the workspace.

mod api;
mod config;
mod decided;
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
pub use decided::{DecidedKeys, Decision, DiskImage, ImageGuard, PageLimit, Unreadable};
pub use faults::{PeerFault, PeerFaultKind, ROUND_MAX, Violation, ViolationKind};
pub use membership::{Digest, Membership};
pub use node::{InjectedBug, Node, Stats, validate_key, validate_put};
pub use storage::{DurableKey, Recovered, RequestOutcome, RequestRecord, WriteOp};
pub use types::{
    Ballot, CallId, ClusterId, FNV1A_OFFSET, Key, NetworkId, NodeId, Proposal, ProposalId,
    RequestId, Time, Value, WriteId, fnv1a, fnv1a_extend,
};
pub use wire::{Answer, Message, QueryState, ReadState, RefuseReason, Request, Response};
