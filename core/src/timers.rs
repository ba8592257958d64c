//! The timer table: every deadline the node waits for, keyed by what it is for.
//!
//! At most one deadline per [`Timer`]; setting it again moves it. The next deadline is the
//! smallest one (`BTreeSet` order), so `poll_timeout` is O(log n) and the order in which due
//! timers fire is total and deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Ballot, CallId, ClusterId, Key, ProposalId, Time};

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Timer {
    /// A ballot's phase of a key waits for its quorum (or, in the fast round, for the rest).
    Phase(Key),
    /// A proposer of a key waits before its next ballot.
    Retry(Key),
    /// The wait for a representative of a cluster, for a ballot of a key.
    Representative(Key, ClusterId),
    /// An accepted value of a key not decided yet: time to recover it.
    Lease(Key),
    /// A representative's wait for its own cluster.
    Relay(RelayKey),
    /// A read that saw an accepted value: time to recover the key.
    ReadWait(CallId),
    /// A read: time to give up.
    ReadDeadline(CallId),
    Verify(u64),
    /// A PUT that is still undecided: time to answer Unavailable (or Busy).
    PutDeadline(u64),
    /// The join-time copy: ask (again, or another member).
    Sync,
    /// Pull the decisions of this node's cluster.
    CatchUp,
    /// Leaving: ask the members that are not clear yet again.
    LeaveCheck,
    /// An operator's removal: the members that did not answer are silent.
    RemoveCheck,
}

/// What a representative's fan-out is about.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum RelayKey {
    /// Answers to an Accept of a proposal, at a ballot.
    Ballot(Key, Ballot, ProposalId),
    Read(u64),
}

#[derive(Default, Debug)]
pub(crate) struct Timers {
    by_time: BTreeSet<(Time, Timer)>,
    at: BTreeMap<Timer, Time>,
}

impl Timers {
    pub fn set(&mut self, timer: Timer, when: Time) {
        if let Some(old) = self.at.insert(timer.clone(), when) {
            let moved = self.by_time.remove(&(old, timer.clone()));
            assert!(moved, "timer {timer:?} was set without its deadline");
        }
        self.by_time.insert((when, timer));
        assert_eq!(self.by_time.len(), self.at.len(), "one deadline per timer");
    }

    pub fn cancel(&mut self, timer: &Timer) {
        if let Some(old) = self.at.remove(timer) {
            let removed = self.by_time.remove(&(old, timer.clone()));
            assert!(removed, "timer {timer:?} was set without its deadline");
        }
    }

    /// When `timer` is due, if it is set.
    pub fn get(&self, timer: &Timer) -> Option<Time> {
        self.at.get(timer).copied()
    }

    pub fn next(&self) -> Option<Time> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns the earliest timer due at `now`.
    pub fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let (when, _) = self.by_time.first()?;
        if *when > now {
            return None;
        }
        let (_, timer) = self.by_time.pop_first()?;
        self.at.remove(&timer);
        Some(timer)
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_time_order_and_moves_on_reset() {
        let mut t = Timers::default();
        t.set(Timer::Sync, Time::from_millis(5));
        t.set(Timer::Verify(1), Time::from_millis(3));
        t.set(Timer::Sync, Time::from_millis(2));
        assert_eq!(t.len(), 2);
        assert_eq!(t.next(), Some(Time::from_millis(2)));
        assert_eq!(t.pop_due(Time::from_millis(1)), None);
        assert_eq!(t.pop_due(Time::from_millis(10)), Some(Timer::Sync));
        t.cancel(&Timer::Verify(1));
        assert_eq!(t.pop_due(Time::from_millis(10)), None);
        assert_eq!(t.next(), None);
    }
}
