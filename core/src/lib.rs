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

mod api;
mod config;
mod membership;
mod node;
mod storage;
mod timers;
mod types;
pub mod wire;

pub use api::{
    Command, GetOutcome, Input, Invalid, NotReady, Note, Output, PutOutcome, RemoveOutcome, Reply,
    Silence, VerifyReport,
};
pub use config::{Config, ConfigError};
pub use membership::{Digest, Membership};
pub use node::{InjectedBug, Node, Stats, validate_key, validate_put};
pub use storage::{DurableKey, Recovered, RefusalWhy, RequestOutcome, RequestRecord, WriteOp};
pub use types::{
    CallId, ClusterId, Key, NetworkId, NodeId, ProposalId, RequestId, Time, Value, WriteId,
};
pub use wire::{DenyReason, Message, ReadState, Request, Response, Vote};
