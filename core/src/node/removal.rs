//! Operator removal (core/PROTOCOL.md, "Operator removal"): only a dead node is removed, and
//! only once no member holds a reservation that names it (unless forced); and the check every
//! member runs when asked.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::api::{RemoveOutcome, Reply};
use crate::membership::Membership;
use crate::timers::Timer;
use crate::types::{CallId, Key, NodeId, ProposalId};
use crate::wire::Message;

use super::Node;

/// Proposals listed in a removal's answer, at most.
pub(super) const OPEN_LISTED_MAX: usize = 100;

/// An operator's removal being checked with every member.
pub(super) struct PendingRemoval {
    call: CallId,
    node: NodeId,
    waiting: BTreeSet<NodeId>,
    open: Vec<ProposalId>,
}

impl Node {
    /// An operator removes `node`. Unless forced: only a node that does not answer is removed
    /// (a live one would serve stale reads), and every member is asked first whether a
    /// reservation it holds names the node: removing it makes Resolve count it fenced, which
    /// would abort a proposal the node granted and that committed while the commit has not
    /// reached everyone yet.
    pub(super) fn on_remove_command(&mut self, call: CallId, node: NodeId, force: bool) {
        if self.members.this_node_removed() {
            return self.out.reply(call, Reply::Remove(RemoveOutcome::Unknown));
        }
        if node == self.id || !self.members.contains(&node) {
            return self.out.reply(call, Reply::Remove(RemoveOutcome::Unknown));
        }
        if force {
            self.remove_everywhere(node);
            return self.out.reply(call, Reply::Remove(RemoveOutcome::Removed));
        }
        if !self.ready {
            // A joiner may not know every member yet: a check that misses one could let a
            // reservation naming the node outlive its removal, and a resolver would then count
            // the node fenced and abort a proposal that committed (found by sim seed
            // 315417595: a removal asked at a joiner that knew one member of its cluster).
            return self.out.reply(call, Reply::Remove(RemoveOutcome::NotReady));
        }
        if self.removal.is_some() {
            return self
                .out
                .reply(call, Reply::Remove(RemoveOutcome::InProgress));
        }
        let open = self.open_naming(&node, true);
        if !open.is_empty() {
            return self
                .out
                .reply(call, Reply::Remove(RemoveOutcome::Refused { open }));
        }
        let waiting: BTreeSet<NodeId> = self
            .members
            .current()
            .nodes()
            .filter(|n| **n != self.id && **n != node)
            .cloned()
            .collect();
        // The node itself is asked too: if it answers, it is alive.
        for n in waiting.iter().chain(std::iter::once(&node)) {
            self.out
                .send(n.clone(), Message::RemoveCheck { node: node.clone() });
        }
        self.removal = Some(PendingRemoval {
            call,
            node,
            waiting,
            open: Vec::new(),
        });
        self.timers
            .set(Timer::RemoveCheck, self.now + self.config.verify_timeout);
    }

    /// A member checks a removal: which reservations held here name `node` (this node starts
    /// resolving them)?
    pub(super) fn on_remove_check(&mut self, from: NodeId, node: NodeId) {
        if !self.members.contains(&from) || self.members.this_node_removed() {
            return;
        }
        // Asked about itself: answering is the point (it is alive); it holds nothing to settle.
        let open = if node == self.id {
            Vec::new()
        } else {
            self.open_naming(&node, true)
        };
        // After every write, lazy ones included: an empty `open` vouches for this node's
        // disk, as a leave check's answer does (core/PROTOCOL.md, "Lazy writes").
        self.send_check_answer(from, Message::RemoveCheckReply { node, open });
    }

    /// A member's answer to this node's removal check. The node itself answering means it is
    /// alive: nothing is removed.
    pub(super) fn on_remove_check_reply(
        &mut self,
        from: NodeId,
        node: NodeId,
        open: Vec<ProposalId>,
    ) {
        let Some(r) = &mut self.removal else { return };
        if r.node != node {
            return;
        }
        if from == node {
            let r = self.removal.take().expect("checked above");
            self.timers.cancel(&Timer::RemoveCheck);
            return self.out.reply(r.call, Reply::Remove(RemoveOutcome::Alive));
        }
        if !r.waiting.remove(&from) {
            return;
        }
        r.open.extend(open);
        r.open.truncate(OPEN_LISTED_MAX);
        if !r.open.is_empty() {
            let r = self.removal.take().expect("checked above");
            self.timers.cancel(&Timer::RemoveCheck);
            self.out.reply(
                r.call,
                Reply::Remove(RemoveOutcome::Refused { open: r.open }),
            );
        }
    }

    /// The check's time is up: the node did not answer. Remove it if every other member
    /// answered and none holds a reservation naming it.
    pub(super) fn on_remove_check_timer(&mut self) {
        let Some(r) = self.removal.take() else { return };
        if !r.waiting.is_empty() {
            let silent = r.waiting.into_iter().collect();
            return self
                .out
                .reply(r.call, Reply::Remove(RemoveOutcome::Unconfirmed { silent }));
        }
        if !r.open.is_empty() {
            return self.out.reply(
                r.call,
                Reply::Remove(RemoveOutcome::Refused { open: r.open }),
            );
        }
        self.remove_everywhere(r.node);
        self.out
            .reply(r.call, Reply::Remove(RemoveOutcome::Removed));
    }

    /// Removes `node` here and tells every member, and the node itself.
    fn remove_everywhere(&mut self, node: NodeId) {
        self.on_removed(node.clone(), false);
        let others: Vec<NodeId> = self.other_members();
        // The removed node is told too: if it is in fact alive, it stops serving.
        for n in others.into_iter().chain(std::iter::once(node.clone())) {
            self.out.send(n, Message::Removed { node: node.clone() });
        }
    }

    /// The open proposals held here that name `node` as a participant (at most
    /// `OPEN_LISTED_MAX`); with `resolve`, starts resolving every one of them.
    pub(super) fn open_naming(&mut self, node: &NodeId, resolve: bool) -> Vec<ProposalId> {
        let naming: Vec<(ProposalId, Key, Arc<Membership>)> = self
            .ledger
            .reservations()
            .filter_map(|(p, key)| match self.ledger.reservation(p, key) {
                Some(participants) if participants.contains(node) => {
                    Some((p.clone(), key.clone(), participants.clone()))
                }
                _ => None,
            })
            .collect();
        let listed = naming
            .iter()
            .take(OPEN_LISTED_MAX)
            .map(|(p, _, _)| p.clone())
            .collect();
        if resolve {
            for (p, key, participants) in naming {
                self.resolve_or_retry(p, &key, participants, self.config.resolve_backoff_min);
            }
        }
        listed
    }
}
