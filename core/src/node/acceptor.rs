//! The acceptor (core/PROTOCOL.md, "The acceptor"): every key's durable record at this node
//! (the highest ballot promised, the last value accepted, or the decision), the node's ballot
//! floor, and the numbering of the decisions it learns. It answers Prepare, Accept and a
//! read's question, and stores decisions; every answer that reports a promise or an accept
//! leaves behind the write that makes it durable (the outbox's barrier).
//!
//! It owns its records and borrows only the environment (outbox, timers, clock, config): it
//! returns its answers instead of calling any other role.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::decided::{DecidedKeys, PageLimit, Unreadable};
use crate::storage::{DurableKey, WriteOp};
use crate::timers::Timer;
use crate::types::{Ballot, Key, Proposal};
use crate::wire::{Answer, QueryState, RefuseReason};

use super::{Env, InjectedBug};

pub(crate) struct Acceptor {
    /// What is in flight (core/PROTOCOL.md, "What a node holds in memory"): every open record,
    /// and the decisions learned here whose write is not durable yet. Every other decision is
    /// read from `store`.
    keys: BTreeMap<Key, DurableKey>,
    /// The driver's storage: every decision whose write was reported durable.
    store: Box<dyn DecidedKeys>,
    /// Keys whose record was damaged on disk: no promise, no accept, no answer to a read's
    /// question until the decision is learned.
    damaged: BTreeSet<Key>,
    /// Prepare and Accept below it are refused on a key with no record here.
    floor: Ballot,
    /// The number of the last decision learned here.
    seq: u64,
    /// The decisions in `keys`, by number.
    by_seq: BTreeMap<u64, Key>,
    /// The decisions in `keys` with the write that makes each durable, in write order: once
    /// that write is durable the store has it, and memory lets it go.
    undurable: VecDeque<(u64, u64, Key)>,
    /// Open records holding an accepted value, and open records holding a promise only.
    accepted_open: BTreeSet<Key>,
    promised_only: BTreeSet<Key>,
    /// Damaged or unreadable records written again with their decision, since the start.
    repaired: u64,
}

/// What storing a decision found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Newly stored here.
    New,
    /// Stored here already, for the same proposal.
    Known,
    /// Stored here for another proposal: two values were chosen for one key.
    Conflict(Proposal),
}

impl Acceptor {
    /// Starts from the open records of `keys` (decisions among them are in `store` already:
    /// they were durable), numbering decisions after `last_decision`.
    pub fn new(
        keys: BTreeMap<Key, DurableKey>,
        store: Box<dyn DecidedKeys>,
        damaged: BTreeSet<Key>,
        floor: Ballot,
        last_decision: u64,
    ) -> Acceptor {
        let mut a = Acceptor {
            keys: BTreeMap::new(),
            store,
            damaged,
            floor,
            seq: last_decision,
            by_seq: BTreeMap::new(),
            undurable: VecDeque::new(),
            accepted_open: BTreeSet::new(),
            promised_only: BTreeSet::new(),
            repaired: 0,
        };
        for (key, state) in keys {
            match state {
                DurableKey::Stored { seq, .. } => a.seq = a.seq.max(seq),
                open => {
                    a.index(&key, &open);
                    a.keys.insert(key, open);
                }
            }
        }
        a
    }

    // ---------------------------------------------------------------- getters

    /// This node's record of `key`: in memory if in flight, else its decision in the store;
    /// `Err` if it cannot be read now, or if the key is marked damaged and no decision of it
    /// can be read. A decision that can be read is the record whatever the mark says: it is
    /// final, so answering from it is always safe, and a mark set by a read that failed for
    /// a while (see `merge_copy`) lifts by itself once the read works.
    fn record(&self, key: &Key) -> Result<Option<Cow<'_, DurableKey>>, Unreadable> {
        let damaged = self.damaged.contains(key);
        match self.keys.get(key) {
            Some(record) if record.is_stored() || !damaged => Ok(Some(Cow::Borrowed(record))),
            _ => match self.store.decision(key)? {
                Some((seq, chosen)) => Ok(Some(Cow::Owned(DurableKey::Stored { chosen, seq }))),
                None if damaged => Err(Unreadable),
                None => Ok(None),
            },
        }
    }

    /// This node's record of `key`, `Err` if it cannot be read now (see `record`).
    pub fn get(&self, key: &Key) -> Result<Option<DurableKey>, Unreadable> {
        Ok(self.record(key)?.map(Cow::into_owned))
    }

    /// The decision of `key`, if this node stores one it can read.
    pub fn stored(&self, key: &Key) -> Option<Proposal> {
        match self.record(key) {
            Ok(Some(record)) => record.stored().cloned(),
            Ok(None) | Err(Unreadable) => None,
        }
    }

    /// The records held in memory (what is in flight), in key order.
    pub fn records_in_memory(&self) -> impl Iterator<Item = (&Key, &DurableKey)> {
        self.keys.iter()
    }

    pub fn floor(&self) -> &Ballot {
        &self.floor
    }

    /// The number of the last decision learned here.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Decisions held in memory until their write is durable.
    pub fn undurable_decisions(&self) -> usize {
        self.by_seq.len()
    }

    /// Keys with an accepted value not known to be decided, in key order.
    pub fn accepted_undecided(&self) -> impl Iterator<Item = &Key> {
        self.accepted_open.iter()
    }

    pub fn accepted_undecided_count(&self) -> usize {
        self.accepted_open.len()
    }

    pub fn promised_only_count(&self) -> usize {
        self.promised_only.len()
    }

    pub fn damaged_count(&self) -> usize {
        self.damaged.len()
    }

    /// Damaged or unreadable records written again with their decision, since the start.
    pub fn repaired_count(&self) -> u64 {
        self.repaired
    }

    /// Whether this node's record of `key` shows nothing at all (no promise, no accepted value,
    /// no decision, not damaged, readable): the fast round may be worth trying.
    pub fn untouched(&self, key: &Key) -> bool {
        self.floor.is_fast() && matches!(self.record(key), Ok(None))
    }

    /// The highest ballot this node knows of for `key` (promised or accepted), at least its
    /// floor.
    pub fn highest_ballot(&self, key: &Key) -> Ballot {
        match self.keys.get(key) {
            Some(DurableKey::Open { promised, accepted }) => {
                let acc = accepted.as_ref().map(|(b, _)| b);
                promised.max(acc.unwrap_or(promised)).clone()
            }
            _ => self.floor.clone(),
        }
    }

    /// The decisions numbered after `after`, in order: one page of them (`keys_max` entries,
    /// about `bytes_max` bytes), with the number of the last one listed (`after` if none).
    /// `Err` if the store cannot be read now.
    pub fn decisions_after(
        &self,
        after: u64,
        keys_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Key, Proposal)>, u64), Unreadable> {
        let page = PageLimit {
            keys_max,
            bytes_max,
        };
        // The store's decisions are numbered below the ones in memory (durability is a prefix
        // of the writes), except those that became durable since the last report: listed once.
        let mut bytes = 0usize;
        let mut last = after;
        let mut entries = Vec::new();
        for d in self.store.decisions_after(after, page)? {
            bytes += PageLimit::bytes_of(&d.key, &d.chosen);
            last = d.seq;
            entries.push((d.key, d.chosen));
        }
        for (&seq, key) in self.by_seq.range(last.saturating_add(1)..) {
            if page.full(entries.len(), bytes) {
                break;
            }
            let Some(DurableKey::Stored { chosen, .. }) = self.keys.get(key) else {
                unreachable!("{key:?} is numbered in memory without its decision");
            };
            bytes += PageLimit::bytes_of(key, chosen);
            entries.push((key.clone(), chosen.clone()));
            last = seq;
        }
        Ok((entries, last))
    }

    /// The records after `after`, in key order (decisions from the store, what is in flight
    /// from memory): at most `keys_max` and about `bytes_max` bytes, and whether they are the
    /// last ones. Damaged keys have no record to give. `Err` if the store cannot be read now.
    pub fn records_after(
        &self,
        after: Option<&Key>,
        keys_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Key, DurableKey)>, bool), Unreadable> {
        use std::ops::Bound;
        let page = PageLimit {
            keys_max,
            bytes_max,
        };
        let (decided, store_done) = self.store.decisions_from(after, page)?;
        // Memory's records up to the last decided key of the page (every one after it if the
        // store has no more), merged in: memory's record of a key wins (it is newer).
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let to = match decided.last() {
            Some(d) if !store_done => Bound::Included(&d.key),
            _ => Bound::Unbounded,
        };
        let in_memory: Vec<(Key, DurableKey)> = self
            .keys
            .range::<Key, _>((from, to))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut merged: BTreeMap<Key, DurableKey> = decided
            .into_iter()
            .map(|d| {
                let state = DurableKey::Stored {
                    chosen: d.chosen,
                    seq: d.seq,
                };
                (d.key, state)
            })
            .collect();
        merged.extend(in_memory);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for (key, state) in merged {
            if page.full(entries.len(), bytes) {
                return Ok((entries, false));
            }
            bytes += key.as_str().len() + state.value().map_or(0, |v| v.len());
            entries.push((key, state));
        }
        Ok((entries, store_done))
    }

    /// Writes up to `upto` are durable: the decisions they carry are in the store now, and
    /// memory lets them go.
    pub fn on_durable(&mut self, upto: u64) {
        while self
            .undurable
            .front()
            .is_some_and(|(write, _, _)| *write <= upto)
        {
            let (_, seq, key) = self.undurable.pop_front().expect("front exists");
            if matches!(self.keys.get(&key), Some(DurableKey::Stored { seq: s, .. }) if *s == seq) {
                self.keys.remove(&key);
                self.by_seq.remove(&seq);
            }
        }
    }

    // ---------------------------------------------------------------- the handlers

    /// Prepare(`key`, `ballot`), a classic ballot: promise it unless a higher one was promised
    /// (answered `Nack`), or answer the decision if the key is stored.
    pub fn prepare(&mut self, env: &mut Env, key: &Key, ballot: &Ballot) -> Answer {
        assert!(!ballot.is_fast(), "Prepare of the fast round");
        let (promised, accepted) = match self.votable(env, key, false) {
            Ok(open) => open,
            Err(answer) => return answer,
        };
        if *ballot < promised {
            return nack(promised, accepted.as_ref(), !self.keys.contains_key(key));
        }
        if *ballot > promised || !self.keys.contains_key(key) {
            let state = DurableKey::Open {
                promised: ballot.clone(),
                accepted: accepted.clone(),
            };
            let lazy = env.bug(InjectedBug::PromiseNotDurable);
            self.put(env, key, state, lazy);
        }
        if accepted.is_some() {
            // Someone is deciding the key: recovering it now would only compete.
            renew_lease(env, key);
        }
        Answer::Promise { accepted }
    }

    /// Accept(`key`, `ballot`, `proposal`): at a classic ballot, accepted unless a higher one
    /// was promised; at ballot 0 only by a node that promised nothing, accepted nothing and
    /// stores nothing for the key (first value wins). Answered with the decision if the key
    /// is stored.
    pub fn accept(
        &mut self,
        env: &mut Env,
        key: &Key,
        ballot: &Ballot,
        proposal: &Proposal,
    ) -> Answer {
        let (promised, accepted) = match self.votable(env, key, ballot.is_fast()) {
            Ok(open) => open,
            Err(answer) => return answer,
        };
        if accepted
            .as_ref()
            .is_some_and(|(b, a)| b == ballot && a.p == proposal.p)
        {
            // A duplicate: accepted already, durably.
            return Answer::Accepted;
        }
        let below = *ballot < promised && !env.bug(InjectedBug::AcceptBelowPromise);
        let fast_taken = ballot.is_fast() && (accepted.is_some() || !promised.is_fast());
        if below || fast_taken {
            return nack(promised, accepted.as_ref(), !self.keys.contains_key(key));
        }
        let state = DurableKey::Open {
            promised: ballot.max(&promised).clone(),
            accepted: Some((ballot.clone(), proposal.clone())),
        };
        self.put(env, key, state, false);
        renew_lease(env, key);
        Answer::Accepted
    }

    /// The promise and accepted value a Prepare or Accept of `key` is weighed against (for a
    /// key with no record: the floor, nothing accepted), or the answer it gets without a vote:
    /// abstaining (damaged or unreadable), the decision, or no room (`fast`: for the fast
    /// round, see Bounds).
    fn votable(
        &mut self,
        env: &mut Env,
        key: &Key,
        fast: bool,
    ) -> Result<(Ballot, Option<(Ballot, Proposal)>), Answer> {
        match self.record(key) {
            Err(Unreadable) => Err(refused(RefuseReason::Abstaining)),
            Ok(Some(record)) => match record.into_owned() {
                DurableKey::Stored { chosen, .. } => Err(Answer::Stored { chosen }),
                DurableKey::Open { promised, accepted } => Ok((promised, accepted)),
            },
            Ok(None) => match self.no_room(env, fast) {
                Some(refusal) => Err(refusal),
                None => Ok((self.floor.clone(), None)),
            },
        }
    }

    /// What this node holds for `key`, as a read's question asks it.
    pub fn query(&self, key: &Key) -> QueryState {
        match self.record(key).as_ref().map(|r| r.as_deref()) {
            Err(Unreadable) => QueryState::Refused(RefuseReason::Abstaining),
            Ok(Some(DurableKey::Stored { chosen, .. })) => QueryState::Stored(chosen.clone()),
            Ok(Some(DurableKey::Open {
                accepted: Some((b, a)),
                ..
            })) => QueryState::Accepted(b.clone(), a.clone()),
            Ok(Some(DurableKey::Open { accepted: None, .. }) | None) => QueryState::Nothing,
        }
    }

    /// Stores the decision of `key`: a lazy write (core/PROTOCOL.md, "Lazy writes"); the
    /// record's promise and accepted value go with it (rule "Forgetting").
    pub fn store(&mut self, env: &mut Env, key: &Key, chosen: &Proposal) -> Learned {
        // An unreadable record is written again: the decision repairs it.
        let unreadable = match self.record(key) {
            Ok(Some(record)) => {
                if let DurableKey::Stored { chosen: known, .. } = record.as_ref() {
                    let learned = if known == chosen {
                        Learned::Known
                    } else {
                        Learned::Conflict(known.clone())
                    };
                    drop(record);
                    // Its decision can be read: a mark set while it could not is moot.
                    self.damaged.remove(key);
                    return learned;
                }
                false
            }
            Ok(None) => false,
            Err(Unreadable) => true,
        };
        self.seq += 1;
        let state = DurableKey::Stored {
            chosen: chosen.clone(),
            seq: self.seq,
        };
        if self.damaged.remove(key) || unreadable {
            self.repaired += 1;
        }
        env.timers.cancel(&Timer::Lease(key.clone()));
        self.unindex(key);
        self.index(key, &state);
        self.keys.insert(key.clone(), state.clone());
        self.undurable
            .push_back((env.out.pending_write(), self.seq, key.clone()));
        env.out.persist_lazy(WriteOp::PutKey {
            key: key.clone(),
            state,
        });
        Learned::New
    }

    /// Merges a record copied from a member while joining: a decision is stored; otherwise
    /// the highest promise and the accepted value with the highest ballot are kept, as if this
    /// node had seen what the member saw. Returns a conflicting decision, if any.
    pub fn merge_copy(
        &mut self,
        env: &mut Env,
        key: &Key,
        copied: &DurableKey,
    ) -> Option<Proposal> {
        match copied {
            DurableKey::Stored { chosen, .. } => match self.store(env, key, chosen) {
                Learned::Conflict(known) => Some(known),
                Learned::New | Learned::Known => None,
            },
            DurableKey::Open { promised, accepted } => {
                let (mine_p, mine_a) = match self.record(key).as_ref().map(|r| r.as_deref()) {
                    Ok(Some(DurableKey::Stored { .. })) => return None,
                    Ok(Some(DurableKey::Open { promised, accepted })) => {
                        (promised.clone(), accepted.clone())
                    }
                    Ok(None) => (Ballot::FAST, None),
                    // Its own record cannot be read: it may be a decision, which an open
                    // record must never replace. The node abstains for the key, as for a
                    // record damaged at a restart, until a decision of it can be read (the
                    // mark lifts by itself if the read only failed for a while, see `record`)
                    // or it learns the decision.
                    Err(Unreadable) => {
                        self.damaged.insert(key.clone());
                        return None;
                    }
                };
                let accepted = match (mine_a, accepted) {
                    (Some(m), Some(c)) => Some(if c.0 > m.0 { c.clone() } else { m }),
                    (m, c) => m.or_else(|| c.clone()),
                };
                let promised = mine_p
                    .max(promised.clone())
                    .max(accepted.as_ref().map_or(Ballot::FAST, |(b, _)| b.clone()));
                let state = DurableKey::Open { promised, accepted };
                if self.keys.get(key) != Some(&state) {
                    self.put(env, key, state, false);
                }
                None
            }
        }
    }

    /// Raises the ballot floor to at least `floor` (a member's, copied while joining).
    pub fn raise_floor(&mut self, env: &mut Env, floor: &Ballot) {
        if *floor > self.floor {
            self.floor = floor.clone();
            env.out.persist(WriteOp::BallotFloor(floor.clone()));
        }
    }

    // ---------------------------------------------------------------- bounds

    /// Whether a key with no record here may get one: past `open_keys_max` open records the
    /// promise-only ones are folded into the floor first (rule "Forgetting"); if accepted
    /// values alone fill the room, the fast round (`fast`) is refused. A classic ballot always
    /// gets its record: it is how undecided keys get decided (and records freed), and the
    /// proposers that run them are bounded (`proposals_max`, `recoveries_max` per node); were
    /// it refused, keys accepted elsewhere could fill every node and none would ever decide.
    fn no_room(&mut self, env: &mut Env, fast: bool) -> Option<Answer> {
        let max = env.config.open_keys_max;
        if self.accepted_open.len() + self.promised_only.len() < max {
            return None;
        }
        self.fold_promises(env);
        (fast && self.accepted_open.len() >= max).then(|| refused(RefuseReason::Overloaded))
    }

    /// Folds every promise-only record into the floor: the floor rises to the highest of them
    /// and every Prepare or Accept below it is refused on a key with no record, so no promise
    /// is broken. Refusing more is safe; forgetting a promise is not.
    fn fold_promises(&mut self, env: &mut Env) {
        let folded = std::mem::take(&mut self.promised_only);
        let mut floor = self.floor.clone();
        for key in &folded {
            let Some(DurableKey::Open {
                promised,
                accepted: None,
            }) = self.keys.remove(key)
            else {
                panic!("{key:?} was indexed as a promise only");
            };
            floor = floor.max(promised);
            env.out.persist(WriteOp::RemoveKey { key: key.clone() });
        }
        self.raise_floor(env, &floor);
    }

    // ---------------------------------------------------------------- records

    fn put(&mut self, env: &mut Env, key: &Key, state: DurableKey, lazy: bool) {
        assert!(!state.is_stored(), "decisions are stored with `store`");
        if let Ok(Some(record)) = self.record(key) {
            assert!(!record.is_stored(), "overwriting the decision of {key:?}");
        }
        self.unindex(key);
        self.index(key, &state);
        self.keys.insert(key.clone(), state.clone());
        let op = WriteOp::PutKey {
            key: key.clone(),
            state,
        };
        if lazy {
            env.out.persist_lazy(op);
        } else {
            env.out.persist(op);
        }
    }

    fn index(&mut self, key: &Key, state: &DurableKey) {
        match state {
            DurableKey::Stored { seq, .. } => {
                self.seq = self.seq.max(*seq);
                let earlier = self.by_seq.insert(*seq, key.clone());
                assert!(earlier.is_none(), "decision number {seq} used twice");
            }
            DurableKey::Open {
                accepted: Some(_), ..
            } => {
                self.accepted_open.insert(key.clone());
            }
            DurableKey::Open { accepted: None, .. } => {
                self.promised_only.insert(key.clone());
            }
        }
    }

    fn unindex(&mut self, key: &Key) {
        match self.keys.get(key) {
            Some(DurableKey::Stored { seq, .. }) => {
                self.by_seq.remove(seq);
            }
            Some(DurableKey::Open { .. }) => {
                self.accepted_open.remove(key);
                self.promised_only.remove(key);
            }
            None => {}
        }
    }
}

/// The value accepted here for `key` is recovered by this node if it is still undecided a
/// lease from now (plus a jitter of up to half a lease, so that the holders of one key do not
/// all recover it at once).
fn renew_lease(env: &mut Env, key: &Key) {
    let lease = env.config.lease;
    let at = env.now + lease + env.jitter(lease / 2);
    env.timers.set(Timer::Lease(key.clone()), at);
}

fn refused(reason: RefuseReason) -> Answer {
    Answer::Refused { reason }
}

/// `folded`: the key has no record here, `promised` is the ballot floor.
fn nack(promised: Ballot, accepted: Option<&(Ballot, Proposal)>, folded: bool) -> Answer {
    Answer::Nack {
        promised,
        holder: accepted.map(|(_, a)| a.p.clone()),
        folded,
    }
}
