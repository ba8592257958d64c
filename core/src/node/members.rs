//! Membership as protocol state: discovery (own network only), goodbyes and operator removals,
//! the views members exchange so that a missed goodbye or removal still converges, the read
//! lease that keeps a removed node from answering "unknown key", graceful leave.
//! (core/PROTOCOL.md, "Membership" and "Durable membership and the network identity".)

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::api::{GetOutcome, NotReady, Note, RemoveOutcome, Reply, Silence};
use crate::membership::Membership;
use crate::storage::WriteOp;
use crate::timers::Timer;
use crate::types::{CallId, ClusterId, Key, NetworkId, NodeId, ProposalId, Time};
use crate::wire::Message;

use super::{InjectedBug, Node, OPEN_LISTED_MAX, PendingRemoval};

impl Node {
    // ---------------------------------------------------------------- growing

    pub(super) fn on_discovered(&mut self, cluster: ClusterId, node: NodeId, network: NetworkId) {
        if network != self.network {
            let ours = self.network.clone();
            return self.out.note(Note::ForeignNetwork {
                node,
                network,
                ours,
            });
        }
        self.add_member(cluster, node);
    }

    /// Adds a member of this node's network (discovered, or named in a member's view) and
    /// records it durably: everything that depends on the grown membership (a proposal carrying
    /// its digest, a grant matching it) leaves only after the write, behind the barrier.
    fn add_member(&mut self, cluster: ClusterId, node: NodeId) {
        if node == self.id {
            return;
        }
        match self.membership.cluster_of(&node) {
            Some(c) if *c == cluster => return,
            Some(c) => {
                let reason = format!("{node} is known in cluster {c}, not {cluster}");
                return self
                    .out
                    .note(Note::PeerInputRejected { from: node, reason });
            }
            None => {}
        }
        if self.departed.contains(&node) {
            let reason =
                "a node that left or was removed must come back with a new identity".to_string();
            return self
                .out
                .note(Note::PeerInputRejected { from: node, reason });
        }
        let grown = self.membership.with_node(cluster.clone(), node.clone());
        if grown.cluster_count() > self.config.clusters_max
            || grown.nodes_of(&cluster).len() > self.config.cluster_nodes_max
        {
            let reason = "membership would exceed the configured limits".to_string();
            return self
                .out
                .note(Note::PeerInputRejected { from: node, reason });
        }
        self.membership = Arc::new(grown);
        self.out.persist(WriteOp::AddMember { cluster, node });
    }

    // ---------------------------------------------------------------- shrinking

    /// `node` left the membership: its goodbye (`goodbye`), or an operator's removal here or
    /// at another member. A removal makes this node grant nothing for twice the read lease: the
    /// removed node may be alive and answering reads until its lease runs out.
    pub(super) fn on_removed(&mut self, node: NodeId, goodbye: bool) {
        if node == self.id || self.departed.contains(&node) {
            return;
        }
        self.membership = Arc::new(self.membership.without_node(&node));
        self.departed.insert(node.clone());
        self.out.persist(WriteOp::Departed(node.clone()));
        if !goodbye {
            self.settled_at = self
                .settled_at
                .max(self.now + self.config.read_lease.saturating_mul(2));
        }
        self.view_sent.remove(&node);
        self.out.note(Note::NodeRemoved { node: node.clone() });
        let affected: Vec<ProposalId> = self
            .deciders
            .iter()
            .filter(|(_, d)| d.participants.contains(&node))
            .map(|(p, _)| p.clone())
            .collect();
        for p in affected {
            self.evaluate(&p);
        }
    }

    /// A member told this node that an operator removed it. From now on it serves nothing
    /// (core/PROTOCOL.md: a removed node no longer receives commits, so its reads would go
    /// stale), and it never rejoins under this identity.
    pub(super) fn on_self_removed(&mut self, by: NodeId) {
        if self.removed {
            return;
        }
        self.removed = true;
        self.departed.insert(self.id.clone());
        self.out.persist(WriteOp::Departed(self.id.clone()));
        self.out.note(Note::SelfRemoved { by });
        let waiting: Vec<CallId> = self.lease_reads.keys().copied().collect();
        for call in waiting {
            self.lease_reads.remove(&call);
            self.timers.cancel(&Timer::ReadDeadline(call));
            self.out
                .reply(call, Reply::Get(GetOutcome::NotReady(NotReady::Removed)));
        }
    }

    /// A message came from a node that left or was removed: tell it, so that a removed node
    /// that was partitioned or down when it was removed stops serving.
    pub(super) fn tell_departed_sender(&mut self, from: &NodeId) {
        if *from != self.id && self.departed.contains(from) && !self.removed {
            self.out
                .send(from.clone(), Message::Removed { node: from.clone() });
        }
    }

    // ---------------------------------------------------------------- views

    /// Sends this node's view to `to`, at most once per `resolve_backoff_min` per peer.
    pub(super) fn send_view(&mut self, to: &NodeId) {
        if *to == self.id || self.removed {
            return;
        }
        if let Some(at) = self.view_sent.get(to)
            && self.now.since(*at) < self.config.resolve_backoff_min
        {
            return;
        }
        if !self.membership.contains(to) {
            return;
        }
        self.view_sent.insert(to.clone(), self.now);
        let departed = self
            .departed
            .iter()
            .take(self.departed_listed_max())
            .cloned()
            .collect();
        let members = (*self.membership).clone();
        self.out
            .send(to.clone(), Message::View { members, departed });
    }

    pub(super) fn departed_listed_max(&self) -> usize {
        self.config
            .clusters_max
            .saturating_mul(self.config.cluster_nodes_max)
    }

    /// Merges a member's view: its departures and its members (both only ever grow), then
    /// answers with this node's own view if the sender lacks part of it.
    pub(super) fn on_view(&mut self, from: NodeId, members: Membership, departed: Vec<NodeId>) {
        if !self.membership.contains(&from) || self.removed {
            return;
        }
        for node in &departed {
            if *node == self.id {
                return self.on_self_removed(from);
            }
            self.on_removed(node.clone(), false);
        }
        for (cluster, nodes) in members.clusters() {
            for node in nodes {
                if !self.departed.contains(node) {
                    self.add_member(cluster.clone(), node.clone());
                }
            }
        }
        let theirs: BTreeSet<&NodeId> = departed.iter().collect();
        let they_lack = self.departed.iter().any(|d| !theirs.contains(d))
            || self.membership.nodes().any(|n| !members.contains(n));
        if they_lack {
            self.send_view(&from);
        }
    }

    // ---------------------------------------------------------------- the read lease

    /// Whether this node may answer "unknown key": a member confirmed, within the read lease,
    /// that it still counts this node as a member (or there is nobody who could remove it).
    pub(super) fn lease_valid(&self) -> bool {
        self.bug_is(InjectedBug::ReadWithoutLease)
            || self.membership.len() <= 1
            || self.now < self.read_lease_until
    }

    /// Answers a read of `key`, found free here: "unknown" under a valid lease, otherwise once
    /// a member renewed it (or Unavailable at the read's deadline).
    pub(super) fn answer_free(&mut self, call: CallId, key: Key) {
        if self.lease_valid() {
            self.timers.cancel(&Timer::ReadDeadline(call));
            return self.out.reply(call, Reply::Get(GetOutcome::Unknown));
        }
        if self.lease_reads.len() >= self.config.reads_waiting_max {
            self.timers.cancel(&Timer::ReadDeadline(call));
            return self.out.reply(call, Reply::Get(GetOutcome::Overloaded));
        }
        self.lease_reads.insert(call, key);
        if self.timers.get(&Timer::ReadDeadline(call)).is_none() {
            self.timers.set(
                Timer::ReadDeadline(call),
                self.now + self.config.read_timeout,
            );
        }
        self.send_probes();
    }

    /// Asks every other member whether it still counts this node, at most once per
    /// `read_wait`.
    fn send_probes(&mut self) {
        if self
            .probe_sent
            .is_some_and(|at| self.now.since(at) < self.config.read_wait)
        {
            return;
        }
        self.probe_sent = Some(self.now);
        let others: Vec<NodeId> = self
            .membership
            .nodes()
            .filter(|n| **n != self.id)
            .cloned()
            .collect();
        for n in others {
            self.out.send(n, Message::Probe { sent: self.now });
        }
    }

    pub(super) fn on_probe(&mut self, from: NodeId, sent: Time) {
        if self.membership.contains(&from) && !self.removed {
            self.out.send(from, Message::ProbeReply { sent });
        }
    }

    /// A member counted this node at some time after `sent` (this node's clock): the lease
    /// runs from `sent`, never from when the answer arrived (it may have been delayed).
    pub(super) fn on_probe_reply(&mut self, from: NodeId, sent: Time) {
        if !self.membership.contains(&from) || self.removed {
            return;
        }
        let sent = sent.min(self.now);
        self.read_lease_until = self.read_lease_until.max(sent + self.config.read_lease);
        if !self.lease_valid() {
            return;
        }
        let waiting: Vec<(CallId, Key)> =
            std::mem::take(&mut self.lease_reads).into_iter().collect();
        for (call, key) in waiting {
            self.read_now(call, key);
        }
    }

    /// Answers the lease reads still waiting when the read's deadline fires.
    pub(super) fn lease_read_deadline(&mut self, call: CallId) -> bool {
        if self.lease_reads.remove(&call).is_none() {
            return false;
        }
        let nodes = self
            .membership
            .nodes()
            .filter(|n| **n != self.id)
            .cloned()
            .collect();
        let silence = Silence {
            nodes,
            clusters: Vec::new(),
        };
        self.out
            .reply(call, Reply::Get(GetOutcome::Unavailable(silence)));
        true
    }

    // ---------------------------------------------------------------- operator removal

    /// An operator removes `node`. Unless forced: only a node that does not answer is removed
    /// (a live one would serve stale reads), and every member is asked first whether a
    /// reservation it holds names the node: removing it makes Resolve count it fenced, which
    /// would abort a proposal the node granted and that committed while the commit has not
    /// reached everyone yet.
    pub(super) fn on_remove_command(&mut self, call: CallId, node: NodeId, force: bool) {
        if self.removed {
            return self.out.reply(call, Reply::Remove(RemoveOutcome::Unknown));
        }
        if node == self.id || !self.membership.contains(&node) {
            return self.out.reply(call, Reply::Remove(RemoveOutcome::Unknown));
        }
        if force {
            self.remove_everywhere(node);
            return self.out.reply(call, Reply::Remove(RemoveOutcome::Removed));
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
            .membership
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

    pub(super) fn on_remove_check(&mut self, from: NodeId, node: NodeId) {
        if !self.membership.contains(&from) || self.removed {
            return;
        }
        // Asked about itself: answering is the point (it is alive); it holds nothing to settle.
        let open = if node == self.id {
            Vec::new()
        } else {
            self.open_naming(&node, true)
        };
        self.out
            .send(from, Message::RemoveCheckReply { node, open });
    }

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

    fn remove_everywhere(&mut self, node: NodeId) {
        self.on_removed(node.clone(), false);
        let others: Vec<NodeId> = self
            .membership
            .nodes()
            .filter(|n| **n != self.id)
            .cloned()
            .collect();
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
                if !self.resolve(&p, &key, participants) {
                    self.timers
                        .set(Timer::Lease(p), self.now + self.config.resolve_backoff_min);
                }
            }
        }
        listed
    }

    // ---------------------------------------------------------------- leaving

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
                if !self.resolve(&p, &key, participants) {
                    self.timers
                        .set(Timer::Lease(p), self.now + self.config.resolve_backoff_min);
                }
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
            .membership
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

    pub(super) fn on_leave_check(&mut self, from: NodeId) {
        if !self.membership.contains(&from) {
            return self.out.send(from, Message::LeaveClear { clear: true });
        }
        let clear = self.open_naming(&from, true).is_empty();
        self.out.send(from, Message::LeaveClear { clear });
    }

    pub(super) fn check_leave_complete(&mut self) {
        let everyone_clear = || {
            self.membership
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
