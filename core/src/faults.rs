//! What a peer can do wrong ([`PeerFault`]) and what must never happen at all
//! ([`Violation`]), as types: a driver counts peer faults by [`PeerFaultKind`], a checker
//! reads a violation's proposal and key from its fields.
//!
//! Their `Display` is the text a log shows. Their `Debug` is that same text, quoted: it is
//! what the `String`s they replaced printed, so a trace (which prints outputs with `{:?}`)
//! recorded before these types replays byte for byte (core/tests/trace_digest.rs).

use std::fmt;

use crate::api::Invalid;
use crate::types::{Ballot, ClusterId, Key, NodeId, ProposalId};

/// The highest ballot round a peer may name: far beyond what a node ever uses (one per ballot
/// it runs), low enough that adding to it never overflows.
pub const ROUND_MAX: u64 = 1 << 48;

/// Why an input from a peer was dropped (it changed nothing). The peer at fault is the
/// `from` of the [`Note::PeerInputRejected`](crate::Note::PeerInputRejected) carrying it.
#[derive(Clone, PartialEq, Eq)]
pub enum PeerFault {
    /// A key or value over the configured sizes, or an empty key.
    Invalid(Invalid),
    /// A relay names more targets than a cluster may hold.
    RelayTooManyTargets { targets: usize, max: usize },
    /// A relay reply carries more responses than a cluster may hold.
    RelayReplyTooManyResponses { responses: usize },
    /// A sync page longer than the configured page.
    SyncPageTooLong { keys: usize },
    /// A removal check's reply lists more nodes than a cluster may hold.
    RemoveCheckReplyTooLong { nodes: usize },
    /// A catch-up page longer than the configured page.
    CatchUpPageTooLong { keys: usize },
    /// A view lists more departed nodes than the limits allow.
    ViewTooManyDeparted { departed: usize },
    /// A membership a message carries is over the configured clusters or nodes per cluster.
    MembershipOverLimits,
    /// A request from a node that is not a member.
    RequestFromNonMember,
    /// A relay from a node that is not a member.
    RelayFromNonMember,
    /// A relay meant for another cluster.
    RelayForAnotherCluster {
        cluster: ClusterId,
        at: NodeId,
        ours: ClusterId,
    },
    /// A ballot whose round and node do not go together (round 0 has no node, any other
    /// round has one), or whose round is beyond [`ROUND_MAX`].
    MalformedBallot { ballot: Ballot },
    /// A sync page whose keys are not in ascending order after the last page.
    SyncPageOutOfOrder,
    /// A catch-up page whose numbers go backwards.
    CatchUpPageOutOfOrder,
    /// A node claimed for `claimed` is known here in cluster `known`.
    MemberOfAnotherCluster {
        node: NodeId,
        known: ClusterId,
        claimed: ClusterId,
    },
    /// A node that left or was removed came back under the same identity.
    DepartedNodeReturned,
    /// Adding the node would take the membership over the configured limits.
    MembershipWouldExceedLimits,
}

/// The kind of a [`PeerFault`], without its details: what a driver counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerFaultKind {
    Invalid,
    TooLong,
    MembershipOverLimits,
    NotAMember,
    RelayForAnotherCluster,
    MalformedBallot,
    PageOutOfOrder,
    MemberOfAnotherCluster,
    DepartedNodeReturned,
}

impl PeerFaultKind {
    /// Every kind, in a fixed order (a driver's counters are indexed by it).
    pub const ALL: [PeerFaultKind; 9] = [
        PeerFaultKind::Invalid,
        PeerFaultKind::TooLong,
        PeerFaultKind::MembershipOverLimits,
        PeerFaultKind::NotAMember,
        PeerFaultKind::RelayForAnotherCluster,
        PeerFaultKind::MalformedBallot,
        PeerFaultKind::PageOutOfOrder,
        PeerFaultKind::MemberOfAnotherCluster,
        PeerFaultKind::DepartedNodeReturned,
    ];

    /// Its place in [`PeerFaultKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short snake_case name, for metric labels and summaries.
    pub fn name(self) -> &'static str {
        match self {
            PeerFaultKind::Invalid => "invalid",
            PeerFaultKind::TooLong => "too_long",
            PeerFaultKind::MembershipOverLimits => "membership_over_limits",
            PeerFaultKind::NotAMember => "not_a_member",
            PeerFaultKind::RelayForAnotherCluster => "relay_for_another_cluster",
            PeerFaultKind::MalformedBallot => "malformed_ballot",
            PeerFaultKind::PageOutOfOrder => "page_out_of_order",
            PeerFaultKind::MemberOfAnotherCluster => "member_of_another_cluster",
            PeerFaultKind::DepartedNodeReturned => "departed_node_returned",
        }
    }
}

impl fmt::Display for PeerFaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PeerFault {
    pub fn kind(&self) -> PeerFaultKind {
        match self {
            PeerFault::Invalid(_) => PeerFaultKind::Invalid,
            PeerFault::RelayTooManyTargets { .. }
            | PeerFault::RelayReplyTooManyResponses { .. }
            | PeerFault::SyncPageTooLong { .. }
            | PeerFault::RemoveCheckReplyTooLong { .. }
            | PeerFault::CatchUpPageTooLong { .. }
            | PeerFault::ViewTooManyDeparted { .. } => PeerFaultKind::TooLong,
            PeerFault::MembershipOverLimits | PeerFault::MembershipWouldExceedLimits => {
                PeerFaultKind::MembershipOverLimits
            }
            PeerFault::RequestFromNonMember | PeerFault::RelayFromNonMember => {
                PeerFaultKind::NotAMember
            }
            PeerFault::RelayForAnotherCluster { .. } => PeerFaultKind::RelayForAnotherCluster,
            PeerFault::MalformedBallot { .. } => PeerFaultKind::MalformedBallot,
            PeerFault::SyncPageOutOfOrder | PeerFault::CatchUpPageOutOfOrder => {
                PeerFaultKind::PageOutOfOrder
            }
            PeerFault::MemberOfAnotherCluster { .. } => PeerFaultKind::MemberOfAnotherCluster,
            PeerFault::DepartedNodeReturned => PeerFaultKind::DepartedNodeReturned,
        }
    }
}

impl fmt::Display for PeerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFault::Invalid(invalid) => write!(f, "{invalid}"),
            PeerFault::RelayTooManyTargets { targets, max } => {
                write!(f, "relay to {targets} targets, limit {max}")
            }
            PeerFault::RelayReplyTooManyResponses { responses } => {
                write!(f, "relay reply with {responses} responses")
            }
            PeerFault::SyncPageTooLong { keys } => write!(f, "sync page of {keys} keys"),
            PeerFault::RemoveCheckReplyTooLong { nodes } => {
                write!(f, "remove check reply lists {nodes} nodes")
            }
            PeerFault::CatchUpPageTooLong { keys } => write!(f, "catch-up page of {keys} keys"),
            PeerFault::ViewTooManyDeparted { departed } => {
                write!(f, "view lists {departed} departed nodes")
            }
            PeerFault::MembershipOverLimits => write!(f, "membership over the configured limits"),
            PeerFault::RequestFromNonMember => {
                write!(f, "request from a node outside the membership")
            }
            PeerFault::RelayFromNonMember => write!(f, "relay from a node outside the membership"),
            PeerFault::RelayForAnotherCluster { cluster, at, ours } => {
                write!(f, "relay for cluster {cluster} reached {at} of {ours}")
            }
            PeerFault::MalformedBallot { ballot } => write!(f, "malformed ballot {ballot}"),
            PeerFault::SyncPageOutOfOrder => write!(f, "sync page out of key order"),
            PeerFault::CatchUpPageOutOfOrder => write!(f, "catch-up page out of order"),
            PeerFault::MemberOfAnotherCluster {
                node,
                known,
                claimed,
            } => write!(f, "{node} is known in cluster {known}, not {claimed}"),
            PeerFault::DepartedNodeReturned => write!(
                f,
                "a node that left or was removed must come back with a new identity"
            ),
            PeerFault::MembershipWouldExceedLimits => {
                write!(f, "membership would exceed the configured limits")
            }
        }
    }
}

impl fmt::Debug for PeerFault {
    /// The display text, quoted (see the module's doc).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// An invariant of the protocol that broke: a bug somewhere, or a peer that lies. Nothing
/// was changed. The simulator fails the run on one.
#[derive(Clone, PartialEq, Eq)]
pub enum Violation {
    /// `from` told `at` that `key` was decided for `told`, but `at` stores it for `stored`:
    /// two values chosen for one key.
    TwoDecisions {
        key: Key,
        stored: ProposalId,
        told: ProposalId,
        from: NodeId,
        at: NodeId,
    },
    /// The driver reported write `upto` durable, but only `issued` writes were issued.
    PersistedBeyondIssued { upto: u64, issued: u64 },
}

/// The kind of a [`Violation`], without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    TwoDecisions,
    PersistedBeyondIssued,
}

impl ViolationKind {
    /// A short snake_case name, for metric labels and summaries.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::TwoDecisions => "two_decisions",
            ViolationKind::PersistedBeyondIssued => "persisted_beyond_issued",
        }
    }
}

impl Violation {
    pub fn kind(&self) -> ViolationKind {
        match self {
            Violation::TwoDecisions { .. } => ViolationKind::TwoDecisions,
            Violation::PersistedBeyondIssued { .. } => ViolationKind::PersistedBeyondIssued,
        }
    }

    /// The proposal it is about, if it is about one (a driver's bug is not).
    pub fn proposal(&self) -> Option<&ProposalId> {
        match self {
            Violation::TwoDecisions { told, .. } => Some(told),
            Violation::PersistedBeyondIssued { .. } => None,
        }
    }

    /// The key it is about, if it is about one.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Violation::TwoDecisions { key, .. } => Some(key),
            Violation::PersistedBeyondIssued { .. } => None,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TwoDecisions {
                key,
                stored,
                told,
                from,
                at,
            } => write!(
                f,
                "{from} told {at} that {key:?} was decided for {told}, but {at} stores it for {stored}"
            ),
            Violation::PersistedBeyondIssued { upto, issued } => write!(
                f,
                "driver reported write {upto} durable but only {issued} were issued"
            ),
        }
    }
}

impl fmt::Debug for Violation {
    /// The display text, quoted (see the module's doc).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_display_text_quoted() {
        let fault = PeerFault::MalformedBallot {
            ballot: Ballot {
                round: 0,
                node: Some(NodeId::from("n2")),
            },
        };
        assert_eq!(
            format!("{fault:?}"),
            format!("{:?}", "malformed ballot b0.n2")
        );
        assert_eq!(fault.kind(), PeerFaultKind::MalformedBallot);
    }

    #[test]
    fn every_kind_is_listed_at_its_index() {
        for (i, kind) in PeerFaultKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn a_violation_names_its_proposal_and_key() {
        let p = |c: u64| ProposalId {
            coordinator: NodeId::from("n1"),
            counter: c,
        };
        let v = Violation::TwoDecisions {
            key: Key::new("k"),
            stored: p(1),
            told: p(7),
            from: NodeId::from("n2"),
            at: NodeId::from("n3"),
        };
        assert_eq!(v.proposal(), Some(&p(7)));
        assert_eq!(v.key(), Some(&Key::new("k")));
        assert_eq!(v.kind(), ViolationKind::TwoDecisions);
        assert_eq!(
            v.to_string(),
            "n2 told n3 that k was decided for n1#7, but n3 stores it for n1#1"
        );
    }
}
