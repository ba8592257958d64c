//! Leaving safely (core/PROTOCOL.md, "Leaving safely"): a leaving node grants nothing new,
//! settles every reservation it holds and every reservation elsewhere that names it, and says
//! so (`Note::LeaveComplete`); only then does its driver say goodbye.

use crate::api::Note;
use crate::timers::Timer;
use crate::types::{Key, NodeId, ProposalId};
use crate::wire::Message;

use super::Node;

impl Node {
    /// The driver asks this node to leave: grant nothing new, resolve what it holds (and keep
    /// asking until every participant reflects each outcome), ask every member to settle what
    /// names it.
    pub(super) fn on_leave(&mut self) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        for d in self.deciders.values_mut() {
            d.confirm = true;
        }
        let open: Vec<(ProposalId, Key)> = self
            .ledger
            .reservations()
            .map(|(p, k)| (p.clone(), k.clone()))
            .collect();
        for (p, key) in open {
            if let Some(participants) = self.ledger.reservation(&p, &key) {
                let participants = participants.clone();
                self.resolve_or_retry(p, &key, participants, self.config.resolve_backoff_min);
            }
        }
        self.send_leave_checks();
        self.check_leave_complete();
    }

    /// Asks every member that is not clear yet to settle the reservations that name this node.
    /// A proposal this node granted may be open elsewhere even if it is settled here (say this
    /// node stored it but the others' Commits were lost); once this node is gone, Resolve
    /// counts it Fenced, so every such proposal must be settled everywhere first.
    pub(super) fn send_leave_checks(&mut self) {
        if !self.leaving || self.leave_complete {
            return;
        }
        let pending: Vec<NodeId> = self
            .members
            .current()
            .nodes()
            .filter(|n| **n != self.id && !self.leave_clear.contains(*n))
            .cloned()
            .collect();
        for n in pending {
            self.out.send(n, Message::LeaveCheck);
        }
        let again = self.now + self.config.resolve_backoff_max;
        self.timers.set(Timer::LeaveCheck, again);
    }

    /// A leaving member asks: does a reservation here name it? This node resolves every one
    /// that does, and answers clear once there is none. The answer waits for every write so
    /// far, lazy ones included: "clear" vouches for this node's disk. A reservation turned
    /// `Stored` in memory only would come back after a crash, naming a node that is gone, and
    /// with it gone a resolver counts it fenced (core/PROTOCOL.md, "Lazy writes").
    pub(super) fn on_leave_check(&mut self, from: NodeId) {
        if !self.members.contains(&from) {
            return self.send_check_answer(from, Message::LeaveClear { clear: true });
        }
        let clear = self.open_naming(&from, true).is_empty();
        self.send_check_answer(from, Message::LeaveClear { clear });
    }

    /// Sends the answer to a leave or removal check once every write so far is durable, lazy
    /// ones included (but not with the `ClearBeforeLazyDurable` bug).
    pub(super) fn send_check_answer(&mut self, to: NodeId, msg: Message) {
        if self.bug_is(crate::InjectedBug::ClearBeforeLazyDurable) {
            self.out.send(to, msg);
        } else {
            self.out.send_after_all(to, msg);
        }
    }

    /// A member answered a leave check.
    pub(super) fn on_leave_clear(&mut self, from: NodeId, clear: bool) {
        if clear && self.leaving && self.members.contains(&from) {
            self.leave_clear.insert(from);
            self.check_leave_complete();
        }
    }

    /// A leaving node is done once it holds nothing, resolves nothing, and every member
    /// answered clear.
    pub(super) fn check_leave_complete(&mut self) {
        let everyone_clear = || {
            self.members
                .current()
                .nodes()
                .all(|n| *n == self.id || self.leave_clear.contains(n))
        };
        if self.leaving
            && !self.leave_complete
            && self.ledger.reservation_count() == 0
            && self.deciders.is_empty()
            && everyone_clear()
        {
            self.leave_complete = true;
            self.timers.cancel(&Timer::LeaveCheck);
            self.out.note(Note::LeaveComplete);
        }
    }
}
