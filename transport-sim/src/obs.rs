//! What the world reports: observations for the checkers and the counters of a run.

use replicator_core::{
    Ballot, CallId, Digest, Key, Note, ProposalId, RemoveOutcome, Reply, WriteOp,
};

use crate::spec::NodeIx;
#[allow(unused_imports)] // named in the docs
use crate::{FaultKind, World};

/// What happened, for the checkers. Drained with [`World::drain_observations`].
#[derive(Clone, Debug)]
pub enum Obs {
    /// The node issued a write: its in-memory state now includes these changes.
    Write {
        node: NodeIx,
        ops: Vec<WriteOp>,
    },
    /// These changes reached the node's disk.
    Durable {
        node: NodeIx,
        ops: Vec<WriteOp>,
    },
    Note {
        node: NodeIx,
        note: Note,
    },
    Reply {
        node: NodeIx,
        call: CallId,
        reply: Reply,
    },
    /// A client call was lost: its node was down or crashed before answering.
    CallLost {
        node: NodeIx,
        call: CallId,
    },
    Crashed {
        node: NodeIx,
        writes_lost: usize,
    },
    Restarted {
        node: NodeIx,
    },
    Joined {
        node: NodeIx,
    },
    /// A node sent a message that depends on state not yet on its disk.
    Undurable {
        node: NodeIx,
        key: Key,
        what: String,
    },
    /// A node answered an Accept of `proposal` for `key` at `ballot` with Accepted, in the
    /// membership whose digest is `digest` (the quorum it counts towards).
    Accepted {
        node: NodeIx,
        key: Key,
        ballot: Ballot,
        proposal: ProposalId,
        digest: Digest,
    },
    /// A node sent a Prepare for a round it had used before (for another key, or before a
    /// later round): ballots must never repeat, across restarts too.
    BallotReused {
        node: NodeIx,
        key: Key,
        what: String,
    },
    /// The node said goodbye after a graceful leave: gone for good.
    Departed {
        node: NodeIx,
    },
    /// A wake-up the driver asked for with [`World::wake_at`].
    Wake {
        tag: u64,
    },
    /// The answer to an operator's removal ([`FaultKind::Remove`] or [`World::remove_node`]).
    /// `clean`: the victim was up, unpaused and reachable both ways (no loss, no clog) when the
    /// command was given, and no fault happened until the answer: a live node that answers
    /// must never be removed then.
    Removal {
        remover: NodeIx,
        victim: NodeIx,
        outcome: RemoveOutcome,
        clean: bool,
    },
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorldStats {
    pub events: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    pub messages_blocked: u64,
    pub messages_duplicated: u64,
    pub bytes_sent: u64,
    pub writes: u64,
    pub writes_lost: u64,
    /// Lazy `Stored` records (a decision) among the writes lost in crashes: the node restarted
    /// with the accepted value (or nothing) and had to learn the decision again.
    pub commits_lost: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub clogs: u64,
    pub joins: u64,
    pub leaves: u64,
    pub hellos_sent: u64,
    pub hellos_lost: u64,
    pub goodbyes_sent: u64,
    pub goodbyes_lost: u64,
    pub cluster_restarts: u64,
    pub removals: u64,
    /// Reads of decisions made to fail (`DiskSpec::read_fail_permille`).
    pub failed_reads: u64,
}

impl WorldStats {
    pub fn faults(&self) -> u64 {
        self.crashes + self.pauses + self.partitions + self.clogs + self.removals
    }
}
