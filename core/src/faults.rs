//! What a peer can do wrong ([`PeerFault`]) and what must never happen at all
//! ([`Violation`]), as types: a driver counts peer faults by [`PeerFaultKind`], a checker
//! reads a violation's proposal and key from its fields.
//!
//! Their `Display` is the text a log shows. Their `Debug` is that same text, quoted: it is
//! what the `String`s they replaced printed, so a trace (which prints outputs with `{:?}`)
//! recorded before these types replays byte for byte (core/tests/trace_digest.rs).

use std::fmt;

use crate::api::Invalid;
use crate::types::{ClusterId, Key, NodeId, ProposalId};

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
    /// A removal check's reply lists more proposals than one may.
    RemoveCheckReplyTooLong { open: usize },
    /// A view lists more departed nodes than the limits allow.
    ViewTooManyDeparted { departed: usize },
    /// A membership a message carries is over the configured clusters or nodes per cluster.
    MembershipOverLimits,
    /// A request (other than a participant's Commit or Abort) from a node that is not a member.
    RequestFromNonMember,
    /// A relay from a node that is not a member.
    RelayFromNonMember,
    /// A relay meant for another cluster.
    RelayForAnotherCluster {
        cluster: ClusterId,
        at: NodeId,
        ours: ClusterId,
    },
    /// A Reserve of `p` for `key` while `p` reserves `other` here: no honest coordinator
    /// reuses a proposal for another key.
    ReserveOfAnotherKey { p: ProposalId, key: Key, other: Key },
    /// A sync page whose keys are not in ascending order after the last page.
    SyncPageOutOfOrder,
    /// A sync page reserves `key` for `p`, which reserves another key here.
    SyncPageReservesHeldProposal { key: Key, p: ProposalId },
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
    ReserveOfAnotherKey,
    SyncPageOutOfOrder,
    SyncPageReservesHeldProposal,
    MemberOfAnotherCluster,
    DepartedNodeReturned,
}

impl PeerFaultKind {
    /// Every kind, in a fixed order (a driver's counters are indexed by it).
    pub const ALL: [PeerFaultKind; 10] = [
        PeerFaultKind::Invalid,
        PeerFaultKind::TooLong,
        PeerFaultKind::MembershipOverLimits,
        PeerFaultKind::NotAMember,
        PeerFaultKind::RelayForAnotherCluster,
        PeerFaultKind::ReserveOfAnotherKey,
        PeerFaultKind::SyncPageOutOfOrder,
        PeerFaultKind::SyncPageReservesHeldProposal,
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
            PeerFaultKind::ReserveOfAnotherKey => "reserve_of_another_key",
            PeerFaultKind::SyncPageOutOfOrder => "sync_page_out_of_order",
            PeerFaultKind::SyncPageReservesHeldProposal => "sync_page_reserves_held_proposal",
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
            | PeerFault::ViewTooManyDeparted { .. } => PeerFaultKind::TooLong,
            PeerFault::MembershipOverLimits | PeerFault::MembershipWouldExceedLimits => {
                PeerFaultKind::MembershipOverLimits
            }
            PeerFault::RequestFromNonMember | PeerFault::RelayFromNonMember => {
                PeerFaultKind::NotAMember
            }
            PeerFault::RelayForAnotherCluster { .. } => PeerFaultKind::RelayForAnotherCluster,
            PeerFault::ReserveOfAnotherKey { .. } => PeerFaultKind::ReserveOfAnotherKey,
            PeerFault::SyncPageOutOfOrder => PeerFaultKind::SyncPageOutOfOrder,
            PeerFault::SyncPageReservesHeldProposal { .. } => {
                PeerFaultKind::SyncPageReservesHeldProposal
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
            PeerFault::RemoveCheckReplyTooLong { open } => {
                write!(f, "remove check reply lists {open} proposals")
            }
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
            PeerFault::ReserveOfAnotherKey { p, key, other } => {
                write!(f, "Reserve({p}) of {key:?}, which reserves {other:?} here")
            }
            PeerFault::SyncPageOutOfOrder => write!(f, "sync page out of key order"),
            PeerFault::SyncPageReservesHeldProposal { key, p } => {
                write!(f, "sync page reserves {key:?} for {p}, held here")
            }
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

/// What a node held for a key when a Commit for it arrived that it could not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    Nothing,
    ReservationOf(ProposalId),
    ValueStoredBy(ProposalId),
}

/// An invariant of the protocol that broke: a bug somewhere, or a peer that lies. Nothing
/// was changed. The simulator fails the run on one.
#[derive(Clone, PartialEq, Eq)]
pub enum Violation {
    /// Commit(`p`) for `key` from `from` reached `at`, which neither reserves nor stores the
    /// key for `p` (it holds `held`, and a refusal of `p` if `refused`).
    CommitWithoutReservation {
        p: ProposalId,
        key: Key,
        from: NodeId,
        at: NodeId,
        held: Held,
        refused: bool,
    },
    /// Abort(`p`) reached `at`, which stores `key` for `p`: `p` committed.
    AbortOfStored { p: ProposalId, key: Key, at: NodeId },
    /// The driver reported write `upto` durable, but only `issued` writes were issued.
    PersistedBeyondIssued { upto: u64, issued: u64 },
}

/// The kind of a [`Violation`], without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    CommitWithoutReservation,
    AbortOfStored,
    PersistedBeyondIssued,
}

impl ViolationKind {
    /// A short snake_case name, for metric labels and summaries.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::CommitWithoutReservation => "commit_without_reservation",
            ViolationKind::AbortOfStored => "abort_of_stored",
            ViolationKind::PersistedBeyondIssued => "persisted_beyond_issued",
        }
    }
}

impl Violation {
    pub fn kind(&self) -> ViolationKind {
        match self {
            Violation::CommitWithoutReservation { .. } => ViolationKind::CommitWithoutReservation,
            Violation::AbortOfStored { .. } => ViolationKind::AbortOfStored,
            Violation::PersistedBeyondIssued { .. } => ViolationKind::PersistedBeyondIssued,
        }
    }

    /// The proposal it is about, if it is about one (a driver's bug is not).
    pub fn proposal(&self) -> Option<&ProposalId> {
        match self {
            Violation::CommitWithoutReservation { p, .. } | Violation::AbortOfStored { p, .. } => {
                Some(p)
            }
            Violation::PersistedBeyondIssued { .. } => None,
        }
    }

    /// The key it is about, if it is about one.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Violation::CommitWithoutReservation { key, .. }
            | Violation::AbortOfStored { key, .. } => Some(key),
            Violation::PersistedBeyondIssued { .. } => None,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::CommitWithoutReservation {
                p,
                key,
                from,
                at,
                held,
                refused,
            } => {
                write!(
                    f,
                    "Commit({p}) for key {key:?} from {from} reached {at} holding "
                )?;
                match held {
                    Held::Nothing => write!(f, "nothing")?,
                    Held::ReservationOf(q) => write!(f, "a reservation of {q}")?,
                    Held::ValueStoredBy(q) => write!(f, "a value stored by {q}")?,
                }
                if *refused {
                    write!(f, " and a refusal of it")?;
                }
                Ok(())
            }
            Violation::AbortOfStored { p, key, at } => {
                write!(f, "Abort({p}) reached {at} which stores {key:?} for it")
            }
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
    fn debug_is_the_display_text_quoted_as_the_strings_were() {
        let fault = PeerFault::ReserveOfAnotherKey {
            p: ProposalId {
                coordinator: NodeId::from("n2"),
                counter: 1,
            },
            key: Key::new("other"),
            other: Key::new("k"),
        };
        assert_eq!(
            format!("{fault:?}"),
            format!("{:?}", "Reserve(n2#1) of other, which reserves k here")
        );
        assert_eq!(fault.kind(), PeerFaultKind::ReserveOfAnotherKey);
    }

    #[test]
    fn every_kind_is_listed_at_its_index() {
        for (i, kind) in PeerFaultKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn a_violation_names_its_proposal_and_key() {
        let p = ProposalId {
            coordinator: NodeId::from("n1"),
            counter: 7,
        };
        let v = Violation::AbortOfStored {
            p: p.clone(),
            key: Key::new("k"),
            at: NodeId::from("n3"),
        };
        assert_eq!(v.proposal(), Some(&p));
        assert_eq!(v.key(), Some(&Key::new("k")));
        assert_eq!(v.kind(), ViolationKind::AbortOfStored);
        assert_eq!(
            v.to_string(),
            "Abort(n1#7) reached n3 which stores k for it"
        );
    }
}
