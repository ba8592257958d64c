//! Everything a node emits, and the durability barrier between its writes and whatever
//! depends on them (core/PROTOCOL.md, "Durability: the barrier").
//!
//! Writes asked for during one input are batched into one [`Output::Persist`] at the end of it
//! ([`Outbox::flush`]). A write is a barrier write if it holds an op asked for with
//! [`Outbox::persist`]: a message or reply produced after it is held until the driver reports
//! it durable. Ops asked for with [`Outbox::persist_lazy`] hold nothing back: a write of only
//! those is lazy, and the driver folds it into a later sync. Durability is a prefix of the
//! writes, so the next barrier write covers every lazy one before it. A message that must not
//! leave before everything asked so far is durable, lazy writes included, is sent with
//! [`Outbox::send_after_all`]; if a lazy write it needs is not durable yet, the next write is
//! a barrier write (with no ops if need be) so that the driver syncs it.
//!
//! Everything held leaves in the order it was produced, so a message never overtakes an
//! earlier one. Messages to the node itself take the same path and come back through
//! [`Outbox::next_local`]. Notes are facts about the past: they leave at once.

use std::collections::VecDeque;

use crate::api::{Note, Output, Reply, Urgency};
use crate::faults::Violation;
use crate::storage::WriteOp;
use crate::types::{CallId, NodeId, WriteId};
use crate::wire::Message;

pub(crate) struct Outbox {
    me: NodeId,
    /// Release messages without waiting for their writes: `InjectedBug::VoteBeforeDurable`.
    skip_barrier: bool,
    /// Writes asked for during the current input: the next write, once flushed.
    pending: Vec<WriteOp>,
    /// Whether the next write is a barrier write: a barrier op is pending, or a message sent
    /// with `send_after_all` needs a sync of lazy writes.
    pending_barrier: bool,
    /// The last write handed to the driver.
    last_issued: u64,
    /// The last barrier write handed to the driver.
    last_barrier: u64,
    /// Every write up to this one is durable.
    durable_upto: u64,
    /// Messages and replies waiting for a write, with the write each needs, in the order
    /// they were produced. The writes they need never decrease along the queue.
    held: VecDeque<(u64, Deferred)>,
    /// Released messages to this node itself, to handle before the input ends.
    inbox: VecDeque<Message>,
    outputs: VecDeque<Output>,
}

enum Deferred {
    Send(NodeId, Message),
    Local(Message),
    Reply(CallId, Reply),
}

impl Outbox {
    pub fn new(me: NodeId, skip_barrier: bool) -> Outbox {
        Outbox {
            me,
            skip_barrier,
            pending: Vec::new(),
            pending_barrier: false,
            last_issued: 0,
            last_barrier: 0,
            durable_upto: 0,
            held: VecDeque::new(),
            inbox: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Messages and replies held for a write.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The id the write asked for during the current input will have once flushed.
    pub fn pending_write(&self) -> u64 {
        self.last_issued + 1
    }

    /// Every write up to this one is durable.
    pub fn durable_upto(&self) -> u64 {
        self.durable_upto
    }

    // ---------------------------------------------------------------- producing

    /// Asks for `op` to be made durable, in the next write, before anything produced from now
    /// on leaves.
    pub fn persist(&mut self, op: WriteOp) {
        self.pending.push(op);
        self.pending_barrier = true;
    }

    /// Asks for `op` to be made durable, in the next write, with nothing waiting for it: a
    /// crash may lose it (and every later lazy write) until a later sync covers it. Only for a
    /// change that a restart reaches again by itself (see core/PROTOCOL.md, "Lazy writes").
    pub fn persist_lazy(&mut self, op: WriteOp) {
        self.pending.push(op);
    }

    /// Sends `msg` to `to` (to this node itself: through the inbox) once every barrier write
    /// asked for so far is durable.
    pub fn send(&mut self, to: NodeId, msg: Message) {
        let deferred = if to == self.me {
            Deferred::Local(msg)
        } else {
            Deferred::Send(to, msg)
        };
        let needs = self.barrier();
        self.defer(needs, deferred);
    }

    /// Sends `msg` to `to` once every write asked for so far, lazy ones included, is durable:
    /// for an answer that vouches for this node's durable state as a whole (that nothing here
    /// names a leaving or removed node any more).
    pub fn send_after_all(&mut self, to: NodeId, msg: Message) {
        let deferred = if to == self.me {
            Deferred::Local(msg)
        } else {
            Deferred::Send(to, msg)
        };
        let needs = self.everything();
        self.defer(needs, deferred);
    }

    /// Answers a client call once every barrier write asked for so far is durable.
    pub fn reply(&mut self, call: CallId, reply: Reply) {
        let needs = self.barrier();
        self.defer(needs, Deferred::Reply(call, reply));
    }

    pub fn note(&mut self, note: Note) {
        self.outputs.push_back(Output::Note(note));
    }

    /// The write that anything produced now depends on: the last barrier write, or the
    /// pending one if it is a barrier write.
    fn barrier(&self) -> u64 {
        if self.skip_barrier {
            return 0;
        }
        if self.pending_barrier {
            self.last_issued + 1
        } else {
            self.last_barrier
        }
    }

    /// The write that covers every write asked for so far. If that is a lazy write not yet
    /// durable, the next write becomes a barrier write (the driver syncs it, and with it every
    /// earlier one).
    fn everything(&mut self) -> u64 {
        if self.skip_barrier {
            return 0;
        }
        let lazy_undurable = self.last_issued > self.last_barrier.max(self.durable_upto);
        if !self.pending.is_empty() || lazy_undurable {
            self.pending_barrier = true;
        }
        self.barrier().max(self.last_issued)
    }

    fn defer(&mut self, needs: u64, deferred: Deferred) {
        if needs <= self.durable_upto && self.held.is_empty() {
            self.release(deferred);
        } else {
            if let Some((before, _)) = self.held.back() {
                assert!(
                    *before <= needs,
                    "held messages out of write order: {before} then {needs}"
                );
            }
            self.held.push_back((needs, deferred));
        }
    }

    fn release(&mut self, deferred: Deferred) {
        match deferred {
            Deferred::Send(to, msg) => self.outputs.push_back(Output::Send { to, msg }),
            Deferred::Local(msg) => self.inbox.push_back(msg),
            Deferred::Reply(call, reply) => self.outputs.push_back(Output::Reply { call, reply }),
        }
    }

    // ---------------------------------------------------------------- the driver's side

    /// The driver made every write up to `upto` durable: release what waited for them.
    pub fn on_persisted(&mut self, upto: WriteId) {
        if upto.0 > self.last_issued {
            self.note(Note::Violation {
                reason: Violation::PersistedBeyondIssued {
                    upto: upto.0,
                    issued: self.last_issued,
                },
            });
            return;
        }
        self.durable_upto = self.durable_upto.max(upto.0);
        assert!(self.durable_upto <= self.last_issued);
        while let Some((needs, _)) = self.held.front() {
            if *needs > self.durable_upto {
                break;
            }
            let (_, deferred) = self.held.pop_front().expect("front exists");
            self.release(deferred);
        }
    }

    /// The next released message to this node itself.
    pub fn next_local(&mut self) -> Option<Message> {
        self.inbox.pop_front()
    }

    /// Ends an input: the writes asked for during it become one write, after every earlier
    /// output. A barrier write may carry no ops: it asks the driver to sync the lazy writes
    /// before it.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() || self.pending_barrier {
            self.last_issued += 1;
            let urgency = if self.pending_barrier {
                self.last_barrier = self.last_issued;
                Urgency::Barrier
            } else {
                Urgency::Lazy
            };
            self.pending_barrier = false;
            let ops = std::mem::take(&mut self.pending);
            self.outputs.push_back(Output::Persist {
                write: WriteId(self.last_issued),
                ops,
                urgency,
            });
        }
        assert!(self.inbox.is_empty(), "a local message was left unhandled");
        assert!(
            self.held
                .back()
                .is_none_or(|(needs, _)| *needs <= self.last_issued),
            "a message waits for a write that was never issued"
        );
    }

    pub fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PutOutcome;

    fn outbox() -> Outbox {
        Outbox::new(NodeId::from("me"), false)
    }

    fn drain(o: &mut Outbox) -> Vec<Output> {
        std::iter::from_fn(|| o.poll()).collect()
    }

    /// Any message will do: the outbox never looks inside.
    fn probe(seq: u64) -> Message {
        Message::LeaveCheck { seq }
    }

    fn sent(to: &str, msg: Message) -> String {
        format!("{:?}", Output::Send { to: to.into(), msg })
    }

    fn texts(outputs: &[Output]) -> Vec<String> {
        outputs.iter().map(|o| format!("{o:?}")).collect()
    }

    #[test]
    fn without_writes_messages_leave_at_once() {
        let mut o = outbox();
        o.send("a".into(), probe(1));
        o.reply(CallId(1), Reply::Put(PutOutcome::Busy));
        o.flush();
        let out = drain(&mut o);
        assert_eq!(out.len(), 2);
        assert_eq!(texts(&out)[0], sent("a", probe(1)));
        assert!(matches!(
            out[1],
            Output::Reply {
                call: CallId(1),
                ..
            }
        ));
    }

    #[test]
    fn a_message_after_a_write_waits_until_it_is_durable() {
        let mut o = outbox();
        o.send("a".into(), probe(1));
        o.persist(WriteOp::Ready(true));
        o.send("b".into(), probe(2));
        o.flush();
        let out = texts(&drain(&mut o));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], sent("a", probe(1)));
        assert!(out[1].starts_with("Persist { write: WriteId(1)"), "{out:?}");
        assert_eq!(o.held_len(), 1);
        o.on_persisted(WriteId(1));
        assert_eq!(texts(&drain(&mut o)), vec![sent("b", probe(2))]);
        assert_eq!(o.held_len(), 0);
    }

    #[test]
    fn nothing_overtakes_a_held_message() {
        let mut o = outbox();
        o.persist(WriteOp::Ready(true));
        o.send("a".into(), probe(1));
        o.flush();
        drain(&mut o);
        // Needs no new write, but an earlier message is still held.
        o.send("b".into(), probe(2));
        o.flush();
        assert!(drain(&mut o).is_empty());
        o.on_persisted(WriteId(1));
        assert_eq!(
            texts(&drain(&mut o)),
            vec![sent("a", probe(1)), sent("b", probe(2))]
        );
    }

    #[test]
    fn messages_to_itself_come_back_through_the_inbox() {
        let mut o = outbox();
        o.send("me".into(), probe(1));
        assert_eq!(o.next_local(), Some(probe(1)));
        assert_eq!(o.next_local(), None);
        o.flush();
        assert!(drain(&mut o).is_empty());
    }

    #[test]
    fn notes_do_not_wait() {
        let mut o = outbox();
        o.persist(WriteOp::Ready(true));
        o.note(Note::Ready);
        o.flush();
        let out = drain(&mut o);
        assert!(matches!(out[0], Output::Note(Note::Ready)));
        assert!(matches!(out[1], Output::Persist { .. }));
    }

    #[test]
    fn a_report_of_a_write_never_issued_is_a_violation_and_releases_nothing() {
        let mut o = outbox();
        o.persist(WriteOp::Ready(true));
        o.send("a".into(), probe(1));
        o.flush();
        drain(&mut o);
        o.on_persisted(WriteId(2));
        let out = drain(&mut o);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Output::Note(Note::Violation { .. })));
        assert_eq!(o.held_len(), 1);
    }

    #[test]
    fn the_barrier_can_be_skipped_only_on_purpose() {
        let mut o = Outbox::new("me".into(), true);
        o.persist(WriteOp::Ready(true));
        o.send("a".into(), probe(1));
        o.flush();
        let out = texts(&drain(&mut o));
        assert_eq!(out[0], sent("a", probe(1)));
    }

    fn commit_op() -> WriteOp {
        WriteOp::PutKey {
            key: "k".into(),
            state: crate::storage::DurableKey::Stored {
                chosen: crate::types::Proposal {
                    p: crate::types::ProposalId {
                        coordinator: "c".into(),
                        counter: 1,
                    },
                    request: None,
                    value: "v".into(),
                },
                seq: 1,
            },
        }
    }

    fn urgencies(outputs: &[Output]) -> Vec<(u64, usize, Urgency)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Persist {
                    write,
                    ops,
                    urgency,
                } => Some((write.0, ops.len(), *urgency)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_message_after_a_lazy_write_leaves_at_once() {
        let mut o = outbox();
        o.persist_lazy(commit_op());
        o.send("a".into(), probe(1));
        o.reply(CallId(1), Reply::Put(PutOutcome::Stored));
        o.flush();
        let out = drain(&mut o);
        assert_eq!(texts(&out)[0], sent("a", probe(1)));
        assert!(matches!(out[1], Output::Reply { .. }));
        assert_eq!(urgencies(&out), vec![(1, 1, Urgency::Lazy)]);
        assert_eq!(o.held_len(), 0);
    }

    #[test]
    fn a_barrier_op_makes_the_whole_write_a_barrier() {
        let mut o = outbox();
        o.persist_lazy(commit_op());
        o.persist(WriteOp::Ready(true));
        o.send("a".into(), probe(1));
        o.flush();
        let out = drain(&mut o);
        assert_eq!(urgencies(&out), vec![(1, 2, Urgency::Barrier)]);
        assert_eq!(o.held_len(), 1);
        o.on_persisted(WriteId(1));
        assert_eq!(texts(&drain(&mut o)), vec![sent("a", probe(1))]);
    }

    #[test]
    fn after_a_lazy_write_messages_wait_only_for_the_barrier_before_it() {
        let mut o = outbox();
        o.persist(WriteOp::Ready(true));
        o.flush();
        o.persist_lazy(commit_op());
        o.send("a".into(), probe(1));
        o.flush();
        let out = drain(&mut o);
        assert_eq!(
            urgencies(&out),
            vec![(1, 1, Urgency::Barrier), (2, 1, Urgency::Lazy)]
        );
        assert_eq!(
            o.held_len(),
            1,
            "waits for write 1, not for the lazy write 2"
        );
        o.on_persisted(WriteId(1));
        assert_eq!(texts(&drain(&mut o)), vec![sent("a", probe(1))]);
    }

    #[test]
    fn send_after_all_turns_a_pending_lazy_write_into_a_barrier() {
        let mut o = outbox();
        o.persist_lazy(commit_op());
        o.send_after_all("a".into(), probe(1));
        o.flush();
        let out = drain(&mut o);
        assert_eq!(urgencies(&out), vec![(1, 1, Urgency::Barrier)]);
        assert_eq!(o.held_len(), 1);
        o.on_persisted(WriteId(1));
        assert_eq!(texts(&drain(&mut o)), vec![sent("a", probe(1))]);
    }

    #[test]
    fn send_after_all_asks_for_a_sync_of_an_issued_lazy_write() {
        let mut o = outbox();
        o.persist_lazy(commit_op());
        o.flush();
        assert_eq!(urgencies(&drain(&mut o)), vec![(1, 1, Urgency::Lazy)]);
        o.send_after_all("a".into(), probe(1));
        o.flush();
        // No new ops, but a barrier write: the driver syncs it and every write before it.
        assert_eq!(urgencies(&drain(&mut o)), vec![(2, 0, Urgency::Barrier)]);
        o.on_persisted(WriteId(1));
        assert!(
            drain(&mut o).is_empty(),
            "the sync covering write 1 is write 2"
        );
        o.on_persisted(WriteId(2));
        assert_eq!(texts(&drain(&mut o)), vec![sent("a", probe(1))]);
    }

    #[test]
    fn send_after_all_needs_no_sync_once_everything_is_durable() {
        let mut o = outbox();
        o.persist_lazy(commit_op());
        o.flush();
        drain(&mut o);
        o.on_persisted(WriteId(1));
        o.send_after_all("a".into(), probe(1));
        o.flush();
        assert_eq!(texts(&drain(&mut o)), vec![sent("a", probe(1))]);
    }
}
