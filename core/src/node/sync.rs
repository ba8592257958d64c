//! The join-time copy (core/PROTOCOL.md, "Joining"): a new node copies the stored keys and
//! open reservations from a member, page by page, resolves the reservations it adopted, and
//! only then becomes ready; and the member's side, which serves the pages.

use crate::api::Note;
use crate::faults::PeerFault;
use crate::storage::{DurableKey, WriteOp};
use crate::timers::Timer;
use crate::types::{Key, NodeId};
use crate::wire::{Message, SyncRefusal};

use super::Node;

/// Where a joining node's copy stands.
pub(super) struct SyncState {
    /// The last key copied.
    after: Option<Key>,
    /// Which member to ask next (counting through the other members).
    source_index: usize,
    /// The member asked, whose page is awaited.
    awaiting: Option<NodeId>,
    /// Every page arrived; the node is ready once its adopted reservations are decided.
    copied: bool,
}

impl Node {
    /// A node that is not ready starts (or, after a restart, restarts) its copy at once.
    pub(super) fn start_sync(&mut self) {
        self.sync = Some(SyncState {
            after: None,
            source_index: 0,
            awaiting: None,
            copied: false,
        });
        self.timers.set(Timer::Sync, self.now);
    }

    /// Asks a member (the next one, if the last did not answer) for the next page.
    pub(super) fn on_sync_timer(&mut self) {
        let Some(sync) = &mut self.sync else { return };
        if sync.copied {
            return self.check_ready();
        }
        if sync.awaiting.take().is_some() {
            sync.source_index += 1;
        }
        let sources: Vec<&NodeId> = self
            .members
            .current()
            .nodes()
            .filter(|n| **n != self.id)
            .collect();
        let retry_at = self.now + self.config.sync_timeout;
        if sources.is_empty() {
            self.timers.set(Timer::Sync, retry_at);
            return;
        }
        let source = sources[sync.source_index % sources.len()].clone();
        sync.awaiting = Some(source.clone());
        let after = sync.after.clone();
        self.out.send(source, Message::SyncRequest { after });
        self.timers.set(Timer::Sync, retry_at);
    }

    /// A joining node asks this member for the keys after `after`: one page, bounded by
    /// `sync_page_keys` and about `sync_page_bytes`.
    pub(super) fn on_sync_request(&mut self, from: NodeId, after: Option<Key>) {
        let refusal = if !self.ready || self.members.this_node_removed() {
            Some(SyncRefusal::NotReady)
        } else if !self.members.contains(&from) {
            Some(SyncRefusal::NotMember)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.out.send(from, Message::SyncRefused { reason });
        }
        let range = self.ledger.keys_after(after.as_ref());
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut done = true;
        for (key, state) in range {
            if entries.len() >= self.config.sync_page_keys || bytes >= self.config.sync_page_bytes {
                done = false;
                break;
            }
            bytes += key.as_str().len() + state.value().len();
            entries.push((key.clone(), state.clone()));
        }
        self.out.send(from, Message::SyncPage { entries, done });
    }

    /// A page of the copy: stored keys are copied; a reservation is adopted (and resolved at
    /// once) unless it names this node as a participant or this node saw it aborted.
    pub(super) fn on_sync_page(
        &mut self,
        from: NodeId,
        entries: Vec<(Key, DurableKey)>,
        done: bool,
    ) {
        let Some(sync) = &self.sync else { return };
        if sync.awaiting.as_ref() != Some(&from) {
            return;
        }
        let mut after = sync.after.clone();
        for (key, state) in entries {
            if after.as_ref().is_some_and(|a| key <= *a) {
                let reason = PeerFault::SyncPageOutOfOrder;
                return self.out.note(Note::PeerInputRejected { from, reason });
            }
            after = Some(key.clone());
            match (&state, self.ledger.get(&key)) {
                (_, Some(DurableKey::Stored { .. })) => {}
                (DurableKey::Stored { .. }, _) => {
                    if let Some(old) = self.ledger.copy_stored(&key, state, &mut self.out) {
                        self.timers.cancel(&Timer::Lease(old));
                    }
                }
                (
                    DurableKey::Reserved {
                        p, participants, ..
                    },
                    None,
                ) => {
                    // A proposal that counts this node as a participant needs this node's
                    // own grant, which a joining node never gives: never adopt it (found by
                    // seed 1079, `--leaves 1`). Any other proposal must be adopted unless it
                    // was explicitly refused (seen aborted): a watermark over-approximates
                    // refusals, and skipping a proposal that committed would leave this node
                    // without the key forever (found by seed 3186).
                    if participants.contains(&self.id) || self.ledger.refusal(p).is_some() {
                        continue;
                    }
                    if self.ledger.reserved_key(p).is_some() {
                        // No honest member holds one proposal on two keys.
                        let reason = PeerFault::SyncPageReservesHeldProposal { key, p: p.clone() };
                        return self.out.note(Note::PeerInputRejected { from, reason });
                    }
                    let p = p.clone();
                    self.ledger.adopt(&key, state, &mut self.out);
                    // Resolve it at once: the node is not ready until it is decided.
                    self.timers.set(Timer::Lease(p), self.now);
                }
                (DurableKey::Reserved { .. }, Some(DurableKey::Reserved { .. })) => {}
            }
        }
        let sync = self.sync.as_mut().expect("checked above");
        sync.after = after.clone();
        if done {
            sync.copied = true;
            sync.awaiting = None;
            self.timers.cancel(&Timer::Sync);
            self.check_ready();
        } else {
            self.out.send(from, Message::SyncRequest { after });
            self.timers
                .set(Timer::Sync, self.now + self.config.sync_timeout);
        }
    }

    /// The member asked for the copy refused. Either reason is transient (the member has not
    /// discovered this node yet, or is joining itself) and calls for the same move: ask the
    /// next member, a little later. The reason is for whoever reads the trace.
    pub(super) fn on_sync_refused(&mut self, from: NodeId, _reason: SyncRefusal) {
        let Some(sync) = &mut self.sync else { return };
        if sync.awaiting.as_ref() != Some(&from) {
            return;
        }
        sync.awaiting = None;
        sync.source_index += 1;
        self.timers
            .set(Timer::Sync, self.now + self.config.sync_timeout / 4);
    }

    /// A joining node becomes ready once its copy is complete and every reservation it copied
    /// is decided.
    fn check_ready(&mut self) {
        let copied = self.sync.as_ref().is_some_and(|s| s.copied);
        if !copied || self.ledger.reservation_count() > 0 {
            if copied {
                // Check again later: copied reservations are being resolved.
                self.timers
                    .set(Timer::Sync, self.now + self.config.sync_timeout);
            }
            return;
        }
        assert!(!self.ready, "a ready node was still copying");
        self.sync = None;
        self.ready = true;
        self.ledger.start_folding(&mut self.out);
        self.timers.cancel(&Timer::Sync);
        self.out.persist(WriteOp::Ready(true));
        self.out.note(Note::Ready);
    }
}
