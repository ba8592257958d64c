//! The harness's own checks: each answer as it comes (reads, verify reports, an operator's
//! removal, calls while a minority is down) and the whole history at the end
//! (linearizability, honest Exists and Busy answers).

use replicator_core::{
    GetOutcome, Key, PutOutcome, ReadState, RemoveOutcome, Reply, Value, VerifyReport,
};
use transport_sim::NodeIx;

use crate::checker::Broken;
use crate::invariant::Invariant;
use crate::linearizability::{self, Op};

use super::Run;
use super::ops::{ClientOp, OpKind};

impl Run {
    /// An operator's removal was answered.
    pub(super) fn removal_answered(
        &mut self,
        remover: NodeIx,
        victim: NodeIx,
        outcome: &RemoveOutcome,
        clean: bool,
    ) -> Result<(), Broken> {
        let name = match outcome {
            RemoveOutcome::Removed => "removed",
            RemoveOutcome::Unknown => "unknown",
            RemoveOutcome::EvenCluster { .. } => "refused (even cluster)",
            RemoveOutcome::Unconfirmed { .. } => "unconfirmed (members silent or disagreeing)",
            RemoveOutcome::InProgress => "in progress",
            RemoveOutcome::Alive => "alive",
            RemoveOutcome::NotReady => "not ready (this node is still joining)",
        };
        *self.removals.entry(name).or_default() += 1;
        if clean && *outcome == RemoveOutcome::Removed {
            return Err(Broken {
                invariant: Invariant::OnlyDeadRemoved,
                detail: format!(
                    "{} removed {}, which was up and reachable both ways while the removal was checked (it must answer Alive)",
                    self.world.id(remover),
                    self.world.id(victim)
                ),
                key: None,
            });
        }
        Ok(())
    }

    /// With a minority of every cluster faulty (and nothing else), every PUT at another node
    /// is answered Stored or Exists and every GET a value or "unknown", before its deadline
    /// (PROTOCOL.md, invariant 9).
    pub(super) fn check_answered_in_time(
        &self,
        op: usize,
        reply: Option<&Reply>,
    ) -> Result<(), Broken> {
        let o = &self.history[op];
        if self.world.minority().is_empty()
            || !self.safety
            || self.world.minority().contains(&o.node)
        {
            return Ok(());
        }
        let definite = matches!(
            reply,
            Some(Reply::Put(PutOutcome::Stored | PutOutcome::Exists { .. }))
                | Some(Reply::Get(GetOutcome::Value(_) | GetOutcome::Unknown))
                | Some(Reply::Verify(_))
        );
        if definite {
            return Ok(());
        }
        Err(Broken {
            invariant: Invariant::LivenessUnderMinority,
            detail: format!(
                "with a minority of every cluster faulty ({:?}), {} answered {:?} of {:?} invoked at {}: {reply:?}",
                self.world
                    .minority()
                    .iter()
                    .map(|ix| self.world.id(*ix).to_string())
                    .collect::<Vec<_>>(),
                self.world.id(o.node),
                o.kind,
                o.key,
                o.last_invoked
            ),
            key: Some(o.key.clone()),
        })
    }

    /// A read answers a value only once it is chosen, and "unknown" only if nothing was chosen
    /// before it started (PROTOCOL.md, invariant 7: a chosen value has a majority of every
    /// cluster, which the read's majority meets).
    pub(super) fn check_read(&self, op: usize, outcome: &GetOutcome) -> Result<(), Broken> {
        let o = &self.history[op];
        let chosen = self.checker.chosen(&o.key);
        let at = self.world.id(o.node);
        let wrong = |detail: String| {
            Err(Broken {
                invariant: Invariant::QuorumDiscipline,
                detail,
                key: Some(o.key.clone()),
            })
        };
        match (outcome, chosen) {
            (GetOutcome::Unknown, Some((c, when))) if *when < o.invoked => wrong(format!(
                "{at} answered a read of {:?} (invoked at {}) \"unknown\", but {} = {:?} was chosen at {when}",
                o.key, o.invoked, c.p, c.value
            )),
            (GetOutcome::Value(v), Some((c, _))) if c.value == *v => Ok(()),
            (GetOutcome::Value(v), other) => wrong(format!(
                "{at} answered a read of {:?} with {v:?}, which is not the chosen value ({:?})",
                o.key,
                other.map(|(c, _)| &c.value)
            )),
            _ => Ok(()),
        }
    }

    /// Every value a verify read reports is the key's committed value, and the report is
    /// consistent with its answers: `agree` exactly when every answer holds one committed
    /// value or every one holds none (so never when two answers differ), and no node both
    /// answered and is listed silent.
    pub(super) fn check_verify(
        &mut self,
        node: NodeIx,
        report: &VerifyReport,
    ) -> Result<(), Broken> {
        self.verifies_checked += 1;
        let inconsistent = |detail: String| Broken {
            invariant: Invariant::VerifyReport,
            detail,
            key: Some(report.key.clone()),
        };
        let first = report.answers.first().map(|(_, s)| s);
        let same = report.answers.iter().all(|(_, s)| Some(s) == first);
        let agree = match first {
            Some(ReadState::Stored(_)) | Some(ReadState::Free) | None => same,
            Some(_) => false,
        };
        if report.agree != agree {
            return Err(inconsistent(format!(
                "a verify read at {} reports agree={} but its answers are {:?}",
                self.world.id(node),
                report.agree,
                report.answers
            )));
        }
        if let Some((n, _)) = report
            .answers
            .iter()
            .find(|(n, _)| report.silent.nodes.contains(n))
        {
            return Err(inconsistent(format!(
                "a verify read at {} lists {n} both as answering and silent: {report:?}",
                self.world.id(node)
            )));
        }
        let committed = self.checker.committed().get(&report.key);
        for (answered, state) in &report.answers {
            if let ReadState::Stored(v) = state
                && committed.is_none_or(|(_, c)| c != v)
            {
                return Err(Broken {
                    invariant: Invariant::VerifyReport,
                    detail: format!(
                        "a verify read at {} says {answered} stores {:?} = {v:?}, but the key committed {committed:?}",
                        self.world.id(node),
                        report.key
                    ),
                    key: Some(report.key.clone()),
                });
            }
        }
        Ok(())
    }

    /// Checks on the whole history, once the run is over.
    pub(super) fn final_checks(&mut self) -> Result<(), Broken> {
        let history: Vec<Op> = self
            .history
            .iter()
            .filter(|op| !matches!(op.kind, OpKind::Verify))
            .map(ClientOp::to_history)
            .collect();
        if let Some(v) = linearizability::check_all(&history).into_iter().next() {
            return Err(Broken {
                invariant: Invariant::Linearizability,
                detail: v.to_string(),
                key: Some(Key::new(&v.key)),
            });
        }
        for op in &self.history {
            let Some(value) = op.value() else { continue };
            let Some(Reply::Put(outcome)) = &op.reply else {
                continue;
            };
            let coordinator = self.world.id(op.node).clone();
            match outcome {
                PutOutcome::Exists { value: w } => {
                    match self.checker.committed().get(&op.key) {
                        Some((_, v)) if v == w => {}
                        other => {
                            return Err(Broken {
                                invariant: Invariant::HonestConflicts,
                                detail: format!(
                                    "client {} was told Exists({w:?}) for {:?} by {coordinator}, but the key committed {other:?}",
                                    op.client, op.key
                                ),
                                key: Some(op.key.clone()),
                            });
                        }
                    }
                    if w != value {
                        self.told_aborted(op, &coordinator, value, "Exists")?;
                    }
                }
                PutOutcome::Busy => self.told_aborted(op, &coordinator, value, "Busy")?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A client was told its PUT had no effect (Busy), or that another value won (Exists):
    /// none of its proposals may be the chosen one.
    fn told_aborted(
        &self,
        op: &ClientOp,
        coordinator: &replicator_core::NodeId,
        value: &Value,
        told: &str,
    ) -> Result<(), Broken> {
        let Some((chosen, _)) = self.checker.chosen(&op.key) else {
            return Ok(());
        };
        let own = self
            .checker
            .proposals_of(coordinator, &op.key, value, op.since());
        if !own.contains(&chosen.p) {
            return Ok(());
        }
        Err(Broken {
            invariant: Invariant::OneOutcome,
            detail: format!(
                "client {} was told {told} for {:?} = {value:?} by {coordinator}, but its proposal {} was chosen",
                op.client, op.key, chosen.p
            ),
            key: Some(op.key.clone()),
        })
    }
}
