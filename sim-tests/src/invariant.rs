//! The invariants a run checks (core/PROTOCOL.md, "Invariants the simulator checks"), as one
//! enum: a failure names one, and the injected-bug hunts ask whether it is a safety one.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// 1. No two nodes store different values (or proposals) for one key.
    Agreement,
    /// 2. Every stored value was proposed by a client for that key.
    Validity,
    /// 3. A stored key never changes or disappears, in memory or on disk.
    Stability,
    /// 4. The client history is linearizable against a write-once register per key.
    Linearizability,
    /// 5. Exists only names the value the key holds.
    HonestConflicts,
    /// 6. A value is stored only if it was chosen, at most one is chosen per key, a client told
    ///    Busy never sees its value chosen and one told Stored sees no other.
    OneOutcome,
    /// 7. No node promises or accepts below its promise, no ballot carries two values, no
    ///    ballot or proposal id is used twice, a read answers "unknown" only if nothing was
    ///    chosen before it started and a value only if it was chosen.
    QuorumDiscipline,
    /// An answer never leaves before the state it reports is durable; a member clears a leaving
    /// node only with its decisions on disk.
    DurableBeforeAnswer,
    /// The core itself reported a broken invariant (a `Note::Violation`).
    CoreViolation,
    /// A verify report is consistent with its answers, and reports only the chosen value.
    VerifyReport,
    /// An operator's removal of a node that stayed up and reachable is refused (Alive).
    OnlyDeadRemoved,
    /// 8. Once faults stop and every node is up, everything converges.
    LivenessAfterHealing,
    /// 8. The final reads after healing are right.
    FinalReads,
    /// 9. While at most a minority of every cluster is down, paused or cut off, every PUT at a
    ///    live node is answered Stored or Exists and every GET a value or "unknown", in time.
    LivenessUnderMinority,
    /// The run stays within its event bound.
    BoundedRun,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::Agreement => "agreement",
            Invariant::Validity => "validity",
            Invariant::Stability => "stability",
            Invariant::Linearizability => "linearizability",
            Invariant::HonestConflicts => "honest conflicts",
            Invariant::OneOutcome => "one outcome per proposal",
            Invariant::QuorumDiscipline => "quorum discipline",
            Invariant::DurableBeforeAnswer => "durability before answers",
            Invariant::CoreViolation => "core violation",
            Invariant::VerifyReport => "verify report",
            Invariant::OnlyDeadRemoved => "only a dead node is removed",
            Invariant::LivenessAfterHealing => "liveness after healing",
            Invariant::FinalReads => "liveness (final reads)",
            Invariant::LivenessUnderMinority => "liveness under a minority down",
            Invariant::BoundedRun => "bounded run",
        }
    }

    /// Whether it is about progress, not safety (a bug that must show as a broken safety rule
    /// does not count a failure of these).
    pub fn is_liveness(self) -> bool {
        matches!(
            self,
            Invariant::LivenessAfterHealing
                | Invariant::FinalReads
                | Invariant::LivenessUnderMinority
                | Invariant::BoundedRun
        )
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
