//! Leaving safely (core/PROTOCOL.md, "Leaving safely"): a leaving node promises and accepts
//! nothing new, decides every value it accepted (recovering it), and waits until every other
//! member of its cluster pulled its decisions; only then does it say so
//! (`Note::LeaveComplete`) and its driver say goodbye. Every value chosen with this node among
//! its cluster's holders is then stored by every other member of the cluster, so its absence
//! takes nothing from any majority.

use std::collections::BTreeSet;

use crate::api::Note;
use crate::timers::Timer;
use crate::types::{Key, NodeId};
use crate::wire::Message;

use super::Node;

/// A leaving node's progress.
#[derive(Default)]
pub(super) struct Leaving {
    /// The number of its last decision once nothing was undecided here any more: its
    /// cluster must hold every decision up to it. (Later ones are of values chosen without
    /// this node, which accepts nothing from others while leaving.)
    seq: Option<u64>,
    /// The members that hold them.
    clear: BTreeSet<NodeId>,
    complete: bool,
}

impl Node {
    /// The driver asks this node to leave: refuse new PUTs, promises and accepts, decide
    /// every value accepted here, then ask every member to pull this node's decisions.
    pub(super) fn on_leave(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        self.leaving = Some(Leaving::default());
        self.on_leave_timer();
    }

    /// Recovers what is still undecided here; once nothing is, asks every member that is not
    /// clear yet. Again every `backoff_max`.
    pub(super) fn on_leave_timer(&mut self) {
        let Some(leaving) = &self.leaving else { return };
        if leaving.complete {
            return;
        }
        let open: Vec<Key> = self.acceptor.accepted_undecided().cloned().collect();
        for key in &open {
            self.recover(key, Timer::LeaveCheck);
        }
        if open.is_empty() && self.proposer.len() == 0 {
            let current = self.acceptor.seq();
            let others = self.other_members();
            let leaving = self.leaving.as_mut().expect("checked above");
            let seq = *leaving.seq.get_or_insert(current);
            let pending: Vec<NodeId> = others
                .into_iter()
                .filter(|n| !leaving.clear.contains(n))
                .collect();
            // After every write: the decisions numbered up to `seq` are on this node's disk
            // (a restart never numbers another decision with one of them).
            for n in pending {
                self.env.out.send_after_all(n, Message::LeaveCheck { seq });
            }
        }
        let again = self.env.now + self.env.config.backoff_max;
        self.env.timers.set(Timer::LeaveCheck, again);
        self.check_leave_complete();
    }

    /// A leaving member asks whether it may go. A member of another cluster holds nothing
    /// that depends on it; a member of its cluster answers clear once it pulled the leaving
    /// node's decisions up to `seq` (it starts pulling now), and only after every write so
    /// far, lazy ones included, is durable: "clear" vouches for this node's disk.
    ///
    /// A node that does not know the leaving node as a member yet (a joiner that has not
    /// heard of it) does not answer: it cannot tell which cluster it is in, so it cannot
    /// vouch for anything. The leaving node asks again.
    pub(super) fn on_leave_check(&mut self, from: NodeId, seq: u64) {
        if !self.members.contains(&from) {
            return;
        }
        let same_cluster = self.members.current().cluster_of(&from) == Some(&self.env.cluster);
        let held = if same_cluster {
            self.learner.caught_up(&from)
        } else {
            u64::MAX
        };
        if held < seq {
            self.learner.ask(&mut self.env, &from, false);
        }
        self.send_check_answer(from, Message::LeaveClear { seq: held });
    }

    /// Sends the answer to a leave check once every write so far is durable, lazy ones
    /// included (but not with the `ClearBeforeLazyDurable` bug).
    fn send_check_answer(&mut self, to: NodeId, msg: Message) {
        if self.env.bug(crate::InjectedBug::ClearBeforeLazyDurable) {
            self.env.out.send(to, msg);
        } else {
            self.env.out.send_after_all(to, msg);
        }
    }

    /// A member answered a leave check.
    pub(super) fn on_leave_clear(&mut self, from: NodeId, held: u64) {
        if !self.members.contains(&from) {
            return;
        }
        if let Some(leaving) = &mut self.leaving
            && leaving.seq.is_some_and(|seq| held >= seq)
        {
            leaving.clear.insert(from);
            self.check_leave_complete();
        }
    }

    /// A leaving node is done once nothing is undecided here, nothing is being proposed, and
    /// every member answered clear.
    pub(super) fn check_leave_complete(&mut self) {
        let Some(leaving) = &self.leaving else { return };
        let everyone_clear = self
            .members
            .current()
            .nodes()
            .all(|n| *n == self.env.id || leaving.clear.contains(n));
        if !leaving.complete
            && self.acceptor.accepted_undecided_count() == 0
            && self.proposer.len() == 0
            && everyone_clear
        {
            self.leaving.as_mut().expect("checked above").complete = true;
            self.env.timers.cancel(&Timer::LeaveCheck);
            self.env.out.note(Note::LeaveComplete);
        }
    }
}
