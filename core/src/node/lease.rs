//! The read lease (core/PROTOCOL.md, "The read lease"): a node answers "unknown key" only
//! while a member confirmed, within `read_lease`, that it still counts it; it renews the lease
//! with probes when a read needs it. (The other side, settling after a removal, is where a
//! removal lands: `members.rs`.)

use crate::api::{GetOutcome, NotReady, Reply, Silence};
use crate::timers::Timer;
use crate::types::{CallId, Key, NodeId, Time};
use crate::wire::Message;

use super::{InjectedBug, Node};

impl Node {
    /// Whether this node may answer "unknown key": a member confirmed, within the read lease,
    /// that it still counts this node as a member (or there is nobody who could remove it).
    fn lease_valid(&self) -> bool {
        self.bug_is(InjectedBug::ReadWithoutLease)
            || self.members.current().len() <= 1
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
        let others: Vec<NodeId> = self.other_members();
        for n in others {
            self.out.send(n, Message::Probe { sent: self.now });
        }
    }

    /// A member asks whether this node still counts it: yes, echoing its clock.
    pub(super) fn on_probe(&mut self, from: NodeId, sent: Time) {
        if self.members.contains(&from) && !self.members.this_node_removed() {
            self.out.send(from, Message::ProbeReply { sent });
        }
    }

    /// A member counted this node at some time after `sent` (this node's clock): the lease
    /// runs from `sent`, never from when the answer arrived (it may have been delayed).
    pub(super) fn on_probe_reply(&mut self, from: NodeId, sent: Time) {
        if !self.members.contains(&from) || self.members.this_node_removed() {
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
        let nodes = self.other_members();
        let silence = Silence {
            nodes,
            clusters: Vec::new(),
        };
        self.out
            .reply(call, Reply::Get(GetOutcome::Unavailable(silence)));
        true
    }

    /// This node was removed: the reads waiting for a lease will never get one.
    pub(super) fn fail_lease_reads(&mut self) {
        let waiting: Vec<CallId> = self.lease_reads.keys().copied().collect();
        for call in waiting {
            self.lease_reads.remove(&call);
            self.timers.cancel(&Timer::ReadDeadline(call));
            self.out
                .reply(call, Reply::Get(GetOutcome::NotReady(NotReady::Removed)));
        }
    }
}
