//! Two coordinators racing on one key (core/PROTOCOL.md, "Writing a key", step 5, "Races"):
//! which of them tries again first, and how long each waits. Pure: the coordinator feeds it what
//! its aborted attempt learned.
//!
//! Without this rule both racers abort, back off at random and, when a round trip is longer
//! than the backoff, meet again on every retry: a third of the keys two clusters created at the
//! same instant ended with both clients told Busy. With it, every racer computes the same order
//! from the proposal ids a Busy denial carries: the first presses on after about half a round
//! trip (the others' aborts are on their way), the others wait a few round trips and then find
//! the key stored: one Stored, the rest Exists.

use std::time::Duration;

use crate::types::{FNV1A_OFFSET, Key, ProposalId, fnv1a_extend};

/// What an aborted attempt learned about the proposals it met on its key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Met {
    /// No answer named a competing ballot (timeouts, overload, a stale view...).
    Nobody,
    /// Every competing proposal goes after this one: try again soon.
    Ahead,
    /// Some competing proposal goes first: let it finish.
    Behind,
}

/// Whether proposal `a` goes before proposal `b` on `key`: the lower hash of the key and the
/// proposal goes first (ties, which need a hash collision, by proposal id). Every node computes
/// the same order, and which coordinator wins changes from key to key.
pub(crate) fn goes_first(key: &Key, a: &ProposalId, b: &ProposalId) -> bool {
    (rank(key, a), a) < (rank(key, b), b)
}

fn rank(key: &Key, p: &ProposalId) -> u64 {
    let h = fnv1a_extend(FNV1A_OFFSET, key.as_str().as_bytes());
    let h = fnv1a_extend(h, &[0xff]);
    let h = fnv1a_extend(h, p.coordinator.as_str().as_bytes());
    fnv1a_extend(h, &p.counter.to_le_bytes())
}

/// Where `mine` stands against the `holders` that denied it the key.
pub(crate) fn met<'a>(
    key: &Key,
    mine: &ProposalId,
    holders: impl IntoIterator<Item = &'a ProposalId>,
) -> Met {
    let mut met = Met::Nobody;
    for other in holders.into_iter().filter(|h| *h != mine) {
        if goes_first(key, other, mine) {
            return Met::Behind;
        }
        met = Met::Ahead;
    }
    met
}

/// The wait before the next attempt of a PUT whose attempt was aborted. `round_trip`: how long
/// that attempt took (the caller caps it); `backoff`: the exponential backoff of this attempt;
/// `jitter(d)`: a uniform draw in `0..=d`.
pub(crate) fn retry_delay(
    met: Met,
    round_trip: Duration,
    backoff: Duration,
    mut jitter: impl FnMut(Duration) -> Duration,
) -> Duration {
    match met {
        // Full jitter: two coordinators that met without knowing each other must not meet again.
        Met::Nobody => jitter(backoff),
        // The others learn they lost about when this node did; their aborts reach the
        // participants half a round trip later.
        Met::Ahead => round_trip / 2 + jitter(round_trip / 2),
        // The first one retries within a round trip and needs about one more to commit: come
        // back after it, to find the key stored (Exists) or free (it gave up).
        Met::Behind => round_trip * 3 + jitter(round_trip) + jitter(backoff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn p(node: &str, counter: u64) -> ProposalId {
        ProposalId {
            coordinator: NodeId::from(node),
            counter,
        }
    }

    #[test]
    fn exactly_one_of_two_goes_first_and_every_node_agrees() {
        for i in 0..200 {
            let key = Key::from(format!("k{i}").as_str());
            let (a, b) = (p("a", i), p("b", 7));
            assert_ne!(goes_first(&key, &a, &b), goes_first(&key, &b, &a));
            assert!(!goes_first(&key, &a, &a));
        }
    }

    #[test]
    fn the_winner_changes_from_key_to_key() {
        let (a, b) = (p("a", 1), p("b", 1));
        let wins = (0..200)
            .filter(|i| goes_first(&Key::from(format!("k{i}").as_str()), &a, &b))
            .count();
        assert!((60..=140).contains(&wins), "a won {wins} of 200 keys");
    }

    #[test]
    fn one_competitor_ahead_means_behind() {
        let key = Key::from("k");
        let mine = p("m", 1);
        let (first, last): (Vec<_>, Vec<_>) = (0..20)
            .map(|i| p("o", i))
            .partition(|o| goes_first(&key, o, &mine));
        assert!(!first.is_empty() && !last.is_empty());
        assert_eq!(met(&key, &mine, &last), Met::Ahead);
        assert_eq!(met(&key, &mine, &first[..1]), Met::Behind);
        let mixed = [last[0].clone(), first[0].clone()];
        assert_eq!(met(&key, &mine, &mixed), Met::Behind);
        assert_eq!(met(&key, &mine, [&mine]), Met::Nobody);
        assert_eq!(met(&key, &mine, []), Met::Nobody);
    }

    #[test]
    fn the_one_behind_waits_past_the_one_ahead() {
        let rt = Duration::from_millis(100);
        let backoff = Duration::from_millis(40);
        let (lo, hi) = (|_| Duration::ZERO, |d| d);
        assert_eq!(retry_delay(Met::Nobody, rt, backoff, hi), backoff);
        assert_eq!(retry_delay(Met::Nobody, rt, backoff, lo), Duration::ZERO);
        // The latest the first one retries is still before the earliest the other does, by
        // more than a round trip: room for it to commit.
        let ahead_latest = retry_delay(Met::Ahead, rt, backoff, hi);
        let behind_earliest = retry_delay(Met::Behind, rt, backoff, lo);
        assert_eq!(ahead_latest, rt);
        assert_eq!(behind_earliest, rt * 3);
        assert!(behind_earliest >= ahead_latest + rt * 2);
        assert!(retry_delay(Met::Ahead, rt, backoff, lo) >= rt / 2);
    }
}
