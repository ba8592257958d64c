//! What a node durably knows of keys and proposals: every key it stores or has reserved, the
//! proposals it refused, and the per-coordinator watermarks that refusals fold into
//! (core/PROTOCOL.md, "State per key at a node").
//!
//! Every change goes through a method here that checks the transition and asks the outbox to
//! persist it, so the rules below hold by construction and are asserted, in release too:
//! - a key is free, `Reserved(P)` or `Stored(P)`; a stored key never changes again, and a
//!   commit only turns `Reserved(P)` into `Stored(P)`;
//! - `reservations` indexes exactly the reserved keys (checked at every change, not by a scan);
//! - a refusal is never forgotten, only folded into a watermark that covers it; watermarks
//!   only grow.
//!
//! The ledger trusts its callers: whatever a peer sent is checked before it gets here.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::membership::Membership;
use crate::storage::{DurableKey, RefusalWhy, WriteOp};
use crate::types::{Key, NodeId, ProposalId, Value};

use super::outbox::Outbox;

pub(crate) struct Ledger {
    keys: BTreeMap<Key, DurableKey>,
    /// The key of every reservation this node holds, by proposal.
    reservations: BTreeMap<ProposalId, Key>,
    refusals: BTreeMap<ProposalId, RefusalWhy>,
    watermarks: BTreeMap<NodeId, u64>,
    refusals_max: usize,
    /// Whether refusals beyond `refusals_max` are folded into watermarks: only once the node
    /// is ready (see `start_folding`).
    folding: bool,
}

impl Ledger {
    /// The ledger of a node (re)started from its durable state.
    pub fn new(
        keys: BTreeMap<Key, DurableKey>,
        refusals: BTreeMap<ProposalId, RefusalWhy>,
        watermarks: BTreeMap<NodeId, u64>,
        refusals_max: usize,
        folding: bool,
    ) -> Ledger {
        let mut reservations = BTreeMap::new();
        for (key, state) in &keys {
            if let DurableKey::Reserved { p, .. } = state {
                // Two keys reserved by one proposal: the disk holds what no node ever wrote.
                let earlier = reservations.insert(p.clone(), key.clone());
                assert!(earlier.is_none(), "{p} reserves two keys on disk");
            }
        }
        Ledger {
            keys,
            reservations,
            refusals,
            watermarks,
            refusals_max,
            folding,
        }
    }

    // ---------------------------------------------------------------- reading

    pub fn get(&self, key: &Key) -> Option<&DurableKey> {
        self.keys.get(key)
    }

    /// Every key stored or reserved, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&Key, &DurableKey)> {
        self.keys.iter()
    }

    /// Every key after `after` (from the first one without it), in key order.
    pub fn keys_after(&self, after: Option<&Key>) -> impl Iterator<Item = (&Key, &DurableKey)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.keys.range::<Key, _>((from, Bound::Unbounded))
    }

    pub fn keys_stored(&self) -> usize {
        self.keys.len() - self.reservations.len()
    }

    /// Every open reservation, by proposal.
    pub fn reservations(&self) -> impl Iterator<Item = (&ProposalId, &Key)> {
        self.reservations.iter()
    }

    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// The key `p` reserves here, if it does.
    pub fn reserved_key(&self, p: &ProposalId) -> Option<&Key> {
        self.reservations.get(p)
    }

    /// The participants of the open reservation of `p` on `key`, if there is one.
    pub fn reservation(&self, p: &ProposalId, key: &Key) -> Option<&Arc<Membership>> {
        match self.keys.get(key) {
            Some(DurableKey::Reserved {
                p: q, participants, ..
            }) if q == p => Some(participants),
            _ => None,
        }
    }

    pub fn refusal(&self, p: &ProposalId) -> Option<RefusalWhy> {
        self.refusals.get(p).copied()
    }

    pub fn refusal_count(&self) -> usize {
        self.refusals.len()
    }

    /// Whether `key` is reserved or stored by `p` here.
    pub fn holds(&self, p: &ProposalId, key: &Key) -> bool {
        self.keys.get(key).is_some_and(|s| s.proposal() == p)
    }

    /// Whether `p` is refused here: refused before, or under its coordinator's watermark and
    /// not held.
    pub fn refused(&self, p: &ProposalId, key: &Key) -> bool {
        if self.refusals.contains_key(p) {
            return true;
        }
        match self.watermarks.get(&p.coordinator) {
            Some(w) if p.counter <= *w => !self.holds(p, key),
            _ => false,
        }
    }

    // ---------------------------------------------------------------- keys

    /// Grants `p` on `key`, durably before anything produced from now on leaves (but with
    /// `lazy_grant`, the `LazyGrant` bug). Returns the reservation it overwrote: only ever one
    /// with the `GrantWhenReserved` bug, which grants over another proposal's reservation.
    pub fn grant(
        &mut self,
        p: &ProposalId,
        key: &Key,
        value: Value,
        participants: Arc<Membership>,
        lazy_grant: bool,
        out: &mut Outbox,
    ) -> Option<ProposalId> {
        assert!(!self.refused(p, key), "granting {p}, which is refused here");
        let replaced = match self.keys.get(key) {
            None => None,
            Some(DurableKey::Reserved { p: old, .. }) => {
                assert_ne!(old, p, "granting {p} twice");
                Some(old.clone())
            }
            Some(DurableKey::Stored { .. }) => panic!("granting {p} on stored key {key:?}"),
        };
        if let Some(old) = &replaced {
            self.unindex(old, key);
        }
        self.index(p, key);
        let state = DurableKey::Reserved {
            p: p.clone(),
            value,
            participants,
        };
        self.keys.insert(key.clone(), state.clone());
        let op = WriteOp::PutKey {
            key: key.clone(),
            state,
        };
        if lazy_grant {
            out.persist_lazy(op);
        } else {
            out.persist(op);
        }
        replaced
    }

    /// Commits `p` on `key`, which `p` must hold reserved here: `Reserved(P)` becomes
    /// `Stored(P)`, nothing else.
    ///
    /// The only lazy write of the protocol (core/PROTOCOL.md, "Lazy writes"): nothing waits for
    /// `Stored(P)` to be durable. A crash that loses it leaves the durable `Reserved(P)`, whose
    /// resolution can only commit `p` again: every participant's grant is durable, so none can
    /// deny it, and no participant can depart while it is open anywhere (a leave or removal
    /// check answer waits for every write, lazy ones included).
    pub fn commit(&mut self, p: &ProposalId, key: &Key, out: &mut Outbox) {
        let value = match self.keys.get(key) {
            Some(DurableKey::Reserved { p: q, value, .. }) if q == p => value.clone(),
            other => panic!("commit of {p} on {key:?}, which holds {other:?}"),
        };
        self.unindex(p, key);
        let state = DurableKey::Stored {
            p: p.clone(),
            value,
        };
        self.keys.insert(key.clone(), state.clone());
        out.persist_lazy(WriteOp::PutKey {
            key: key.clone(),
            state,
        });
    }

    /// Drops the reservation of `p` on `key` (the proposal was aborted). The caller records
    /// the refusal that keeps it from being granted again.
    pub fn abort(&mut self, p: &ProposalId, key: &Key, out: &mut Outbox) {
        match self.keys.get(key) {
            Some(DurableKey::Reserved { p: q, .. }) if q == p => {}
            other => panic!("abort of {p} on {key:?}, which holds {other:?}"),
        }
        self.unindex(p, key);
        self.keys.remove(key);
        out.persist(WriteOp::RemoveKey { key: key.clone() });
    }

    /// Stores a key copied from a member while joining, over nothing or over a reservation.
    /// Returns the reservation it replaced.
    pub fn copy_stored(
        &mut self,
        key: &Key,
        state: DurableKey,
        out: &mut Outbox,
    ) -> Option<ProposalId> {
        assert!(state.is_stored(), "copy_stored of a reservation");
        let replaced = match self.keys.get(key) {
            None => None,
            Some(DurableKey::Reserved { p, .. }) => Some(p.clone()),
            Some(DurableKey::Stored { .. }) => panic!("copying over stored key {key:?}"),
        };
        if let Some(old) = &replaced {
            self.unindex(old, key);
        }
        self.keys.insert(key.clone(), state.clone());
        out.persist(WriteOp::PutKey {
            key: key.clone(),
            state,
        });
        replaced
    }

    /// Adopts a reservation copied from a member while joining, on a free key.
    pub fn adopt(&mut self, key: &Key, state: DurableKey, out: &mut Outbox) {
        let DurableKey::Reserved { p, .. } = &state else {
            panic!("adopting a stored key as a reservation")
        };
        assert!(!self.keys.contains_key(key), "adopting {p} on a taken key");
        self.index(p, key);
        self.keys.insert(key.clone(), state.clone());
        out.persist(WriteOp::PutKey {
            key: key.clone(),
            state,
        });
    }

    fn index(&mut self, p: &ProposalId, key: &Key) {
        let earlier = self.reservations.insert(p.clone(), key.clone());
        assert!(earlier.is_none(), "{p} reserves {earlier:?} and {key:?}");
        assert!(self.reservations.len() <= self.keys.len() + 1);
    }

    fn unindex(&mut self, p: &ProposalId, key: &Key) {
        let indexed = self.reservations.remove(p);
        assert_eq!(indexed.as_ref(), Some(key), "reservation index of {p}");
    }

    // ---------------------------------------------------------------- refusals

    /// Remembers, durably, that this node refused `p`. A refusal already recorded stays as it
    /// is (its first reason is the one reported).
    pub fn record_refusal(&mut self, p: &ProposalId, why: RefusalWhy, out: &mut Outbox) {
        if self.refusals.contains_key(p) {
            return;
        }
        self.refusals.insert(p.clone(), why);
        out.persist(WriteOp::PutRefusal { p: p.clone(), why });
        if self.refusals.len() > self.refusals_max && self.folding {
            self.fold_refusals(out);
        }
    }

    /// The node is ready: bound the refusal table from now on. A joining node keeps its
    /// refusals one by one until then: the join-time copy must tell a proposal it saw aborted
    /// (never adopt it again) from one a watermark merely over-approximates (adopt it, or a
    /// committed key would be missed). Found by CI seed 242718901.
    pub fn start_folding(&mut self, out: &mut Outbox) {
        self.folding = true;
        if self.refusals.len() > self.refusals_max {
            self.fold_refusals(out);
        }
    }

    /// Folds refusals into per-coordinator watermarks, oldest coordinator first, until a
    /// quarter of the room is free. Refusing more is always safe; forgetting a refusal never
    /// is: every refusal removed here is covered by its coordinator's watermark.
    fn fold_refusals(&mut self, out: &mut Outbox) {
        let target = self.refusals_max - self.refusals_max / 4;
        while self.refusals.len() > target {
            let Some((first, _)) = self.refusals.first_key_value() else {
                break;
            };
            let coordinator = first.coordinator.clone();
            let first_of = ProposalId {
                coordinator: coordinator.clone(),
                counter: 0,
            };
            let last_of = ProposalId {
                coordinator: coordinator.clone(),
                counter: u64::MAX,
            };
            let folded: Vec<ProposalId> = self
                .refusals
                .range(first_of..=last_of)
                .map(|(p, _)| p.clone())
                .collect();
            let Some(top) = folded.last().map(|p| p.counter) else {
                break;
            };
            let w = self.watermarks.entry(coordinator.clone()).or_insert(0);
            *w = (*w).max(top);
            let watermark = *w;
            out.persist(WriteOp::Watermark {
                coordinator,
                counter: top,
            });
            for p in folded {
                assert!(p.counter <= watermark, "folding {p} above its watermark");
                self.refusals.remove(&p);
                out.persist(WriteOp::RemoveRefusal { p });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Output;
    use crate::wire::DenyReason;

    fn p(coordinator: &str, counter: u64) -> ProposalId {
        ProposalId {
            coordinator: coordinator.into(),
            counter,
        }
    }

    fn ledger(refusals_max: usize) -> Ledger {
        Ledger::new(
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            refusals_max,
            true,
        )
    }

    fn outbox() -> Outbox {
        Outbox::new("me".into(), false)
    }

    fn ops(out: &mut Outbox) -> Vec<WriteOp> {
        out.flush();
        std::iter::from_fn(|| out.poll())
            .flat_map(|o| match o {
                Output::Persist { ops, .. } => ops,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn participants() -> Arc<Membership> {
        Arc::new(Membership::from_pairs([("c".into(), "me".into())]))
    }

    /// The O(n) check that the incremental assertions stand for.
    fn assert_index_exact(l: &Ledger) {
        let reserved: BTreeMap<ProposalId, Key> = l
            .keys
            .iter()
            .filter_map(|(k, s)| match s {
                DurableKey::Reserved { p, .. } => Some((p.clone(), k.clone())),
                DurableKey::Stored { .. } => None,
            })
            .collect();
        assert_eq!(reserved, l.reservations);
    }

    #[test]
    fn grant_then_commit_stores_and_persists_each_step() {
        let (mut l, mut out) = (ledger(10), outbox());
        let k = Key::from("k");
        assert_eq!(
            l.grant(&p("a", 1), &k, "v".into(), participants(), false, &mut out),
            None
        );
        assert_eq!(l.reserved_key(&p("a", 1)), Some(&k));
        assert!(l.holds(&p("a", 1), &k));
        assert_index_exact(&l);
        l.commit(&p("a", 1), &k, &mut out);
        assert_eq!(
            l.get(&k),
            Some(&DurableKey::Stored {
                p: p("a", 1),
                value: "v".into()
            })
        );
        assert_eq!(l.reservation_count(), 0);
        assert_eq!(l.keys_stored(), 1);
        assert_index_exact(&l);
        let written = ops(&mut out);
        assert_eq!(written.len(), 2);
        assert!(matches!(
            &written[1],
            WriteOp::PutKey {
                state: DurableKey::Stored { .. },
                ..
            }
        ));
    }

    #[test]
    fn abort_frees_the_key() {
        let (mut l, mut out) = (ledger(10), outbox());
        let k = Key::from("k");
        l.grant(&p("a", 1), &k, "v".into(), participants(), false, &mut out);
        l.abort(&p("a", 1), &k, &mut out);
        assert_eq!(l.get(&k), None);
        assert_eq!(l.reservation_count(), 0);
        assert_eq!(ops(&mut out)[1], WriteOp::RemoveKey { key: k });
    }

    #[test]
    #[should_panic(expected = "commit of a#2")]
    fn commit_of_another_proposal_is_a_bug() {
        let (mut l, mut out) = (ledger(10), outbox());
        let k = Key::from("k");
        l.grant(&p("a", 1), &k, "v".into(), participants(), false, &mut out);
        l.commit(&p("a", 2), &k, &mut out);
    }

    #[test]
    #[should_panic(expected = "on stored key")]
    fn a_stored_key_is_never_granted_again() {
        let (mut l, mut out) = (ledger(10), outbox());
        let k = Key::from("k");
        l.grant(&p("a", 1), &k, "v".into(), participants(), false, &mut out);
        l.commit(&p("a", 1), &k, &mut out);
        l.grant(&p("a", 2), &k, "w".into(), participants(), false, &mut out);
    }

    #[test]
    #[should_panic(expected = "reserves")]
    fn one_proposal_never_reserves_two_keys() {
        let (mut l, mut out) = (ledger(10), outbox());
        l.grant(
            &p("a", 1),
            &"k".into(),
            "v".into(),
            participants(),
            false,
            &mut out,
        );
        l.grant(
            &p("a", 1),
            &"j".into(),
            "v".into(),
            participants(),
            false,
            &mut out,
        );
    }

    #[test]
    fn copying_a_stored_key_replaces_a_reservation() {
        let (mut l, mut out) = (ledger(10), outbox());
        let k = Key::from("k");
        let reserved = DurableKey::Reserved {
            p: p("a", 1),
            value: "v".into(),
            participants: participants(),
        };
        l.adopt(&k, reserved, &mut out);
        assert_eq!(l.reserved_key(&p("a", 1)), Some(&k));
        let stored = DurableKey::Stored {
            p: p("b", 1),
            value: "w".into(),
        };
        assert_eq!(l.copy_stored(&k, stored, &mut out), Some(p("a", 1)));
        assert_eq!(l.reservation_count(), 0);
        assert_index_exact(&l);
    }

    #[test]
    fn refusals_fold_into_a_watermark_that_covers_them() {
        let (mut l, mut out) = (ledger(4), outbox());
        let k = Key::from("k");
        for i in 1..=4 {
            l.record_refusal(&p("a", i), RefusalWhy::Fenced, &mut out);
        }
        assert_eq!(l.refusal_count(), 4);
        l.record_refusal(&p("b", 9), RefusalWhy::Denied(DenyReason::Busy), &mut out);
        // Over the limit: the oldest coordinator's refusals became a watermark.
        assert_eq!(l.refusal_count(), 1);
        assert_eq!(
            l.refusal(&p("b", 9)),
            Some(RefusalWhy::Denied(DenyReason::Busy))
        );
        for i in 0..=4 {
            assert!(l.refused(&p("a", i), &k), "a#{i} is still refused");
        }
        assert!(!l.refused(&p("a", 5), &k));
        let written = ops(&mut out);
        assert!(written.contains(&WriteOp::Watermark {
            coordinator: "a".into(),
            counter: 4
        }));
        assert_eq!(
            written
                .iter()
                .filter(|o| matches!(o, WriteOp::RemoveRefusal { .. }))
                .count(),
            4
        );
    }

    #[test]
    fn a_watermark_does_not_refuse_what_this_node_holds() {
        let (mut l, mut out) = (ledger(1), outbox());
        let k = Key::from("k");
        l.grant(&p("a", 1), &k, "v".into(), participants(), false, &mut out);
        l.record_refusal(&p("a", 2), RefusalWhy::Fenced, &mut out);
        l.record_refusal(&p("a", 3), RefusalWhy::Fenced, &mut out);
        assert_eq!(l.refusal_count(), 0);
        assert!(!l.refused(&p("a", 1), &k), "held, so not refused");
        assert!(l.refused(&p("a", 1), &"other".into()));
    }

    #[test]
    fn a_joining_node_folds_nothing_until_it_is_ready() {
        let mut l = Ledger::new(BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), 2, false);
        let mut out = outbox();
        for i in 1..=5 {
            l.record_refusal(&p("a", i), RefusalWhy::Aborted, &mut out);
        }
        assert_eq!(l.refusal_count(), 5);
        l.start_folding(&mut out);
        assert!(l.refusal_count() <= 2);
    }

    #[test]
    fn the_first_reason_of_a_refusal_stays() {
        let (mut l, mut out) = (ledger(10), outbox());
        l.record_refusal(&p("a", 1), RefusalWhy::Aborted, &mut out);
        l.record_refusal(&p("a", 1), RefusalWhy::Fenced, &mut out);
        assert_eq!(l.refusal(&p("a", 1)), Some(RefusalWhy::Aborted));
        assert_eq!(ops(&mut out).len(), 1);
    }
}
