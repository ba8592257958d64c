//! Operator removal (core/PROTOCOL.md, "Operator removal"): an operator removes a dead node.
//! A removal is no longer needed for writes or reads to go on (a minority of every cluster can
//! be down); it tidies the membership, one node per cluster at a time. Unforced, it removes
//! only a node that does not answer, only from a cluster with an odd number of members (see
//! `quorum::may_lose_one`), and only once every other member of that cluster answered with
//! the same list of its members (a join in flight would change the count).

use std::collections::BTreeSet;

use crate::api::{RemoveOutcome, Reply};
use crate::quorum;
use crate::timers::Timer;
use crate::types::{CallId, NodeId};
use crate::wire::Message;

use super::Node;

/// An operator's removal being checked with the node's cluster.
pub(super) struct PendingRemoval {
    call: CallId,
    node: NodeId,
    /// The node's cluster, as this node knows it.
    cluster: Vec<NodeId>,
    waiting: BTreeSet<NodeId>,
    disagree: Vec<NodeId>,
}

impl Node {
    /// An operator removes `node`.
    pub(super) fn on_remove_command(&mut self, call: CallId, node: NodeId, force: bool) {
        let reply = |outcome| Reply::Remove(outcome);
        if node == self.env.id || !self.members.contains(&node) {
            return self.env.out.reply(call, reply(RemoveOutcome::Unknown));
        }
        if force {
            self.remove_everywhere(node);
            return self.env.out.reply(call, reply(RemoveOutcome::Removed));
        }
        if !self.ready {
            // A joiner may not know every member yet: the count of the node's cluster could be
            // wrong.
            return self.env.out.reply(call, reply(RemoveOutcome::NotReady));
        }
        if self.removal.is_some() {
            return self.env.out.reply(call, reply(RemoveOutcome::InProgress));
        }
        let m = self.members.current();
        let cluster_id = m.cluster_of(&node).expect("a member").clone();
        let cluster = m.nodes_of(&cluster_id).to_vec();
        if !quorum::may_lose_one(cluster.len()) {
            let members = cluster.len();
            return self
                .env
                .out
                .reply(call, reply(RemoveOutcome::EvenCluster { members }));
        }
        let waiting: BTreeSet<NodeId> = cluster
            .iter()
            .filter(|n| **n != self.env.id && **n != node)
            .cloned()
            .collect();
        // The node itself is asked too: if it answers, it is alive.
        for n in waiting.iter().chain(std::iter::once(&node)) {
            self.env
                .out
                .send(n.clone(), Message::RemoveCheck { node: node.clone() });
        }
        self.removal = Some(PendingRemoval {
            call,
            node,
            cluster,
            waiting,
            disagree: Vec::new(),
        });
        self.env.timers.set(
            Timer::RemoveCheck,
            self.env.now + self.env.config.verify_timeout,
        );
    }

    /// A member checks a removal: which members has `node`'s cluster, as this node knows it?
    pub(super) fn on_remove_check(&mut self, from: NodeId, node: NodeId) {
        if !self.members.contains(&from) || self.members.this_node_removed() {
            return;
        }
        let m = self.members.current();
        let cluster = m
            .cluster_of(&node)
            .map(|c| m.nodes_of(c).to_vec())
            .unwrap_or_default();
        self.env
            .out
            .send(from, Message::RemoveCheckReply { node, cluster });
    }

    /// A member's answer to this node's removal check. The node itself answering means it is
    /// alive: nothing is removed.
    pub(super) fn on_remove_check_reply(
        &mut self,
        from: NodeId,
        node: NodeId,
        cluster: Vec<NodeId>,
    ) {
        let Some(r) = &mut self.removal else { return };
        if r.node != node {
            return;
        }
        if from == node {
            let r = self.removal.take().expect("checked above");
            self.env.timers.cancel(&Timer::RemoveCheck);
            return self
                .env
                .out
                .reply(r.call, Reply::Remove(RemoveOutcome::Alive));
        }
        if !r.waiting.remove(&from) {
            return;
        }
        if cluster != r.cluster {
            r.disagree.push(from);
        }
    }

    /// The check's time is up: the node did not answer. Remove it if every other member of
    /// its cluster answered with the same members.
    pub(super) fn on_remove_check_timer(&mut self) {
        let Some(r) = self.removal.take() else { return };
        if !r.waiting.is_empty() || !r.disagree.is_empty() {
            let outcome = RemoveOutcome::Unconfirmed {
                silent: r.waiting.into_iter().collect(),
                disagree: r.disagree,
            };
            return self.env.out.reply(r.call, Reply::Remove(outcome));
        }
        self.remove_everywhere(r.node);
        self.env
            .out
            .reply(r.call, Reply::Remove(RemoveOutcome::Removed));
    }

    /// Removes `node` here and tells every member, and the node itself.
    fn remove_everywhere(&mut self, node: NodeId) {
        self.on_removed(node.clone(), false);
        let others: Vec<NodeId> = self.other_members();
        // The removed node is told too: if it is in fact alive, it stops serving.
        for n in others.into_iter().chain(std::iter::once(node.clone())) {
            self.env
                .out
                .send(n, Message::Removed { node: node.clone() });
        }
    }
}
