//! The join-time copy (core/PROTOCOL.md, "Joining"): a new node copies the records of a
//! majority of its cluster's other members (or, alone in its cluster, of a majority of
//! another cluster), page by page, one member after the other, merging them (a decision is
//! stored; otherwise the highest promise and the accepted value with the highest ballot are
//! kept); only then does it promise, accept or serve reads. And the member's side, which
//! serves the pages, only once it counts the joiner as a member.
//!
//! Members that are joining themselves (they answer `NotReady` while counting this node as a
//! member) are left out of the count: they accepted nothing yet (a node is ready for good once
//! it is; a removed one answers `NotMember`), and they will only ever vote in views that
//! include this node, so no value chosen without this node can have one of them among its
//! acceptors. Without that, nodes started together deadlock: each waits for the copy of
//! another that waits for it.
//!
//! Every request carries the joiner's membership digest, and a member whose view differs
//! refuses and sends its view: a page is copied only in a view both share. So the joiner
//! counts its sources among the members its sources count; a joiner that has discovered
//! only another cluster learns its own cluster's members before it could think itself alone
//! in it (sim seed 9203489: such a joiner copied from the other cluster, became ready as its
//! cluster's only member, and formed a quorum of itself).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::Note;
use crate::faults::{PeerFault, Violation};
use crate::membership::Digest;
use crate::quorum;
use crate::storage::{DurableKey, WriteOp};
use crate::timers::Timer;
use crate::types::{Ballot, Key, NodeId};
use crate::wire::{Message, SyncRefusal};

use super::Node;

/// Where a joining node's copy stands.
#[derive(Default)]
pub(super) struct SyncState {
    /// Members whose whole copy arrived, with their decision number at its first page.
    done: BTreeMap<NodeId, u64>,
    /// The member being copied from.
    current: Option<Copying>,
    /// Which candidate to try next (counting through them).
    next: usize,
    /// Members that answered they are joining too (see the module's doc).
    joining: BTreeSet<NodeId>,
}

struct Copying {
    source: NodeId,
    /// The last key copied from it.
    after: Option<Key>,
    /// Its decision number when it cut the first page.
    seq: Option<u64>,
    /// It refused the last request because its view differed: ask the same page again
    /// (views have been exchanged meanwhile) rather than another member.
    views_differed: bool,
}

impl Node {
    /// A node that is not ready starts (or, after a restart, restarts) its copy at once.
    pub(super) fn start_sync(&mut self) {
        self.sync = Some(SyncState::default());
        self.env.timers.set(Timer::Sync, self.env.now);
    }

    /// The members to copy from, and how many of them: a majority of this cluster's other
    /// members that are not joining too, or of another cluster if there are none.
    fn sync_sources(&self) -> (Vec<NodeId>, usize) {
        let m = self.members.current();
        let joining = self.sync.as_ref().map(|s| &s.joining);
        let others: Vec<NodeId> = m
            .nodes_of(&self.env.cluster)
            .iter()
            .filter(|n| **n != self.env.id && joining.is_none_or(|j| !j.contains(*n)))
            .cloned()
            .collect();
        if let Some(needed) = quorum::copy_sources(others.len()) {
            return (others, needed);
        }
        // Another cluster's members, but for those joining too (a cluster whose nodes all
        // start together has none that is ready yet).
        m.clusters()
            .filter(|(c, _)| **c != self.env.cluster)
            .map(|(_, nodes)| -> Vec<NodeId> {
                nodes
                    .iter()
                    .filter(|n| joining.is_none_or(|j| !j.contains(*n)))
                    .cloned()
                    .collect()
            })
            .find(|nodes| !nodes.is_empty())
            .map_or((Vec::new(), 0), |nodes| {
                let needed = quorum::majority(nodes.len());
                (nodes, needed)
            })
    }

    /// Copies from the next member, or becomes ready once enough copies are complete.
    pub(super) fn on_sync_timer(&mut self) {
        let (candidates, needed) = self.sync_sources();
        let Some(sync) = &mut self.sync else { return };
        if let Some(current) = &mut sync.current
            && current.views_differed
            && candidates.contains(&current.source)
        {
            current.views_differed = false;
            let (source, after) = (current.source.clone(), current.after.clone());
            return self.ask_for_page(source, after);
        }
        if let Some(current) = sync.current.take()
            && !current.views_differed
        {
            // The member did not answer in time: try another one.
            sync.next += 1;
        }
        let done = candidates
            .iter()
            .filter(|n| sync.done.contains_key(*n))
            .count();
        if needed > 0 && done >= needed {
            return self.become_ready();
        }
        let pending: Vec<&NodeId> = candidates
            .iter()
            .filter(|n| !sync.done.contains_key(*n))
            .collect();
        if pending.is_empty() || needed == 0 {
            // Nobody to copy from yet (the members are still being discovered).
            let retry_at = self.env.now + self.env.config.sync_timeout;
            return self.env.timers.set(Timer::Sync, retry_at);
        }
        let source = pending[sync.next % pending.len()].clone();
        sync.current = Some(Copying {
            source: source.clone(),
            after: None,
            seq: None,
            views_differed: false,
        });
        self.ask_for_page(source, None);
    }

    /// Asks `source` for its page after `after`, in this node's current view (its digest),
    /// and gives it `sync_timeout` to answer.
    fn ask_for_page(&mut self, source: NodeId, after: Option<Key>) {
        let digest = self.members.current().digest();
        self.env
            .out
            .send(source, Message::SyncRequest { after, digest });
        let retry_at = self.env.now + self.env.config.sync_timeout;
        self.env.timers.set(Timer::Sync, retry_at);
    }

    /// A joining node asks this member for its records after `after`: one page, bounded by
    /// `sync_page_keys` and about `sync_page_bytes`.
    pub(super) fn on_sync_request(&mut self, from: NodeId, after: Option<Key>, digest: Digest) {
        // NotMember first: a NotReady answer tells the joiner this node counts it as a
        // member, so it leaves this node out of its copy's count (see the module's doc).
        // A removed node (which may have voted before) is no member any more.
        let refusal = if !self.members.contains(&from) || self.members.this_node_removed() {
            Some(SyncRefusal::NotMember)
        } else if !self.ready {
            Some(SyncRefusal::NotReady)
        } else if digest != self.members.current().digest() {
            // Before the refusal: the joiner asks again once it merged this view.
            self.send_view(&from);
            Some(SyncRefusal::MembershipChanged)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.env.out.send(from, Message::SyncRefused { reason });
        }
        let records = self.acceptor.records_after(
            after.as_ref(),
            self.env.config.sync_page_keys,
            self.env.config.sync_page_bytes,
        );
        // The store cannot be read now: no answer, as if the request was lost (the joiner
        // asks again when its request times out).
        let Ok((entries, done)) = records else { return };
        let page = Message::SyncPage {
            after,
            entries,
            floor: self.acceptor.floor().clone(),
            seq: self.acceptor.seq(),
            done,
        };
        // After every write: the decision number the joiner catches up from is on disk.
        self.env.out.send_after_all(from, page);
    }

    /// A page of the copy: merged record by record.
    pub(super) fn on_sync_page(
        &mut self,
        from: NodeId,
        answers: Option<Key>,
        entries: Vec<(Key, DurableKey)>,
        floor: Ballot,
        seq: u64,
        done: bool,
    ) {
        let Some(sync) = &mut self.sync else { return };
        let Some(current) = &mut sync.current else {
            return;
        };
        // Only the page of the request outstanding now: a late answer to an earlier one (asked
        // again after a timeout) or a duplicate is nobody's fault.
        if current.source != from || current.after != answers {
            return;
        }
        let mut after = current.after.clone();
        for (key, _) in &entries {
            if after.as_ref().is_some_and(|a| key <= a) {
                let reason = PeerFault::SyncPageOutOfOrder;
                return self.env.out.note(Note::PeerInputRejected { from, reason });
            }
            after = Some(key.clone());
        }
        current.after = after.clone();
        let first_seq = *current.seq.get_or_insert(seq);
        for (key, record) in &entries {
            if let Some(known) = self.acceptor.merge_copy(&mut self.env, key, record) {
                let told = record.stored().map(|c| c.p.clone());
                let reason = Violation::TwoDecisions {
                    key: key.clone(),
                    stored: known.p,
                    told: told.expect("only a decision conflicts"),
                    from: from.clone(),
                    at: self.env.id.clone(),
                };
                self.env.out.note(Note::Violation { reason });
            }
        }
        self.acceptor.raise_floor(&mut self.env, &floor);
        let sync = self.sync.as_mut().expect("checked above");
        if done {
            sync.current = None;
            sync.done.insert(from.clone(), first_seq);
            if self.members.current().cluster_of(&from) == Some(&self.env.cluster) {
                self.learner.copied_from(&mut self.env, &from, first_seq);
            }
            self.env.timers.set(Timer::Sync, self.env.now);
        } else {
            self.ask_for_page(from, after);
        }
    }

    /// The member asked for the copy refused: it has not discovered this node yet (ask the
    /// next member, a little later), it is joining itself (and no longer counts), or its view
    /// differs (it sent it; send this node's too, and ask the same page again a little later,
    /// when both views have been merged).
    pub(super) fn on_sync_refused(&mut self, from: NodeId, reason: SyncRefusal) {
        let Some(sync) = &mut self.sync else { return };
        let Some(current) = sync.current.as_mut().filter(|c| c.source == from) else {
            return;
        };
        match reason {
            SyncRefusal::MembershipChanged => {
                current.views_differed = true;
                self.send_view(&from);
            }
            SyncRefusal::NotReady => {
                sync.joining.insert(from.clone());
                sync.current = None;
                sync.next += 1;
            }
            SyncRefusal::NotMember => {
                sync.current = None;
                sync.next += 1;
            }
        }
        self.env
            .timers
            .set(Timer::Sync, self.env.now + self.env.config.sync_timeout / 4);
    }

    /// Enough copies are complete: the node promises, accepts and serves reads from now on.
    fn become_ready(&mut self) {
        assert!(!self.ready, "a ready node was still copying");
        self.sync = None;
        self.ready = true;
        self.env.timers.cancel(&Timer::Sync);
        self.env.out.persist(WriteOp::Ready(true));
        self.env.out.note(Note::Ready);
        self.env.timers.set(Timer::CatchUp, self.env.now);
        // Values copied as accepted and not known to be decided are recovered in time.
        let open: Vec<Key> = self.acceptor.accepted_undecided().cloned().collect();
        for key in open {
            let delay = self.env.jitter(self.env.config.lease);
            self.env.timers.set(Timer::Lease(key), self.env.now + delay);
        }
    }
}
