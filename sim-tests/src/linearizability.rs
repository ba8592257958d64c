//! Linearizability checker for a client history against one write-once register per key
//! (PROTOCOL.md, "Invariants the simulator checks", item 4).
//!
//! The checker is independent of the core crate: the simulator translates its client calls into
//! [`Op`]s and calls [`check`] (first violation) or [`check_all`] (one violation per bad key).
//!
//! # Model
//! Every key is checked on its own, against this sequential specification:
//! - the register starts empty;
//! - `PUT(v)` on an empty register makes it hold `v` and answers [`PutResult::Stored`];
//! - `PUT(v)` on a register holding `w` changes nothing and answers `Exists { value: w }`;
//! - `GET` answers [`GetResult::Unknown`] while empty and `Value(w)` once it holds `w`.
//!
//! An op takes effect at a single point within `[invoked, returned]` (`returned == None` means
//! it never returned: the interval is open to +infinity). Ops whose endpoints are equal may be
//! ordered either way. Answers that carry no information about the register are not
//! constrained: `Busy` and `NoEffect` PUTs had no effect, a GET answering `Unavailable` told the
//! client nothing. `Unavailable` and `Pending` PUTs are indeterminate: each may take effect at
//! any one point at or after its invocation (even after the client got its answer, since the
//! proposal may still commit later), or never.
//!
//! # Algorithm
//! A write-once register changes state exactly once, if at all, so a history is linearizable
//! iff some *winning write* `W` and a point `t_W` exist such that:
//! - `W` is the PUT that answered `Stored` (two `Stored` answers are a violation), or, if none
//!   did, an indeterminate PUT of the value that the ops were told about;
//! - every op that saw the register full (`GET Value`, `PUT Exists`) was told `W`'s value and can
//!   be placed at or after `t_W`: `t_W <= returned`;
//! - every op that saw it empty (`GET Unknown`) can be placed at or before `t_W`:
//!   `invoked <= t_W`;
//! - `t_W` lies in `W`'s own interval (`[invoked, returned]`, or `[invoked, +inf)` when `W` is
//!   indeterminate).
//!
//! Readers do not constrain each other except through `t_W`, so the conditions reduce to
//! `max(W.invoked, max invoked of empty-seers) <= min(W's end, min returned of value-seers)`.
//! Among indeterminate candidates the one invoked first is always the best choice. The check is
//! a linear pass per key (plus a hash map to group keys), so 100k-op histories take
//! milliseconds.

use std::collections::HashMap;
use std::fmt;

/// Simulated time in microseconds.
pub type Time = u64;

/// What a PUT was answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PutResult {
    /// The PUT wrote its value: it found the key empty.
    Stored,
    /// The key already held `value` (possibly written by an earlier attempt of the same client).
    Exists { value: Vec<u8> },
    /// Definite: a concurrent proposal held the key, this one had no effect.
    Busy,
    /// Any other definite no-effect answer: invalid, overloaded, not ready, ...
    NoEffect,
    /// Indeterminate: may take effect at any time after invocation, or never.
    Unavailable,
    /// Never answered: same as [`PutResult::Unavailable`].
    Pending,
}

/// What a GET was answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GetResult {
    /// The key held this value.
    Value(Vec<u8>),
    /// The key held nothing ("unknown key").
    Unknown,
    /// No information (timed out, unreachable, never answered): ignored by the checker.
    Unavailable,
}

/// The operation and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Put { value: Vec<u8>, result: PutResult },
    Get { result: GetResult },
}

/// One client call of the history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub client: u64,
    pub key: String,
    /// When the client sent the call.
    pub invoked: Time,
    /// When the client got its answer; `None` if it never did.
    pub returned: Option<Time>,
    pub kind: OpKind,
}

impl Op {
    /// A PUT of `value` to `key`.
    pub fn put(
        client: u64,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        invoked: Time,
        returned: Option<Time>,
        result: PutResult,
    ) -> Op {
        Op {
            client,
            key: key.into(),
            invoked,
            returned,
            kind: OpKind::Put {
                value: value.into(),
                result,
            },
        }
    }

    /// A GET of `key`.
    pub fn get(
        client: u64,
        key: impl Into<String>,
        invoked: Time,
        returned: Option<Time>,
        result: GetResult,
    ) -> Op {
        Op {
            client,
            key: key.into(),
            invoked,
            returned,
            kind: OpKind::Get { result },
        }
    }

    /// End of the op's interval: `returned`, or +infinity if it never returned.
    fn end(&self) -> Time {
        self.returned.unwrap_or(Time::MAX)
    }
}

/// Formats a value for people: a quoted string if it is printable UTF-8, else hex; long values
/// are shortened.
fn show_value(v: &[u8]) -> String {
    const MAX: usize = 40;
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(char::is_control) => {
            let n = s.chars().count();
            if n > MAX {
                let head: String = s.chars().take(MAX).collect();
                format!("{head:?}... ({} bytes)", v.len())
            } else {
                format!("{s:?}")
            }
        }
        _ => {
            let hex: String = v.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
            if v.len() > MAX {
                format!("0x{hex}... ({} bytes)", v.len())
            } else {
                format!("0x{hex}")
            }
        }
    }
}

fn show_time(t: Option<Time>) -> String {
    match t {
        Some(t) => format!("{t}us"),
        None => "never".to_string(),
    }
}

impl fmt::Display for PutResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutResult::Stored => f.write_str("Stored"),
            PutResult::Exists { value } => write!(f, "Exists({})", show_value(value)),
            PutResult::Busy => f.write_str("Busy"),
            PutResult::NoEffect => f.write_str("NoEffect"),
            PutResult::Unavailable => f.write_str("Unavailable"),
            PutResult::Pending => f.write_str("Pending (no answer)"),
        }
    }
}

impl fmt::Display for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetResult::Value(v) => write!(f, "Value({})", show_value(v)),
            GetResult::Unknown => f.write_str("Unknown"),
            GetResult::Unavailable => f.write_str("Unavailable"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.kind {
            OpKind::Put { value, result } => {
                write!(f, "PUT {:?} = {} -> {result}", self.key, show_value(value))?
            }
            OpKind::Get { result } => write!(f, "GET {:?} -> {result}", self.key)?,
        }
        write!(
            f,
            ", invoked {}, returned {}",
            show_time(Some(self.invoked)),
            show_time(self.returned)
        )
    }
}

/// A key whose history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// What is wrong, with the times that make it wrong.
    pub reason: String,
    /// Indices (into the checked history) of the ops involved.
    pub ops: Vec<usize>,
    /// One line per entry of `ops`: the op with its times and answer.
    pub details: Vec<String>,
}

impl Violation {
    fn new(history: &[Op], key: &str, reason: String, ops: Vec<usize>) -> Violation {
        let details = ops
            .iter()
            .map(|&i| format!("op #{i}: {}", history[i]))
            .collect();
        Violation {
            key: key.to_string(),
            reason,
            ops,
            details,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history of key {:?} is not linearizable: {}",
            self.key, self.reason
        )?;
        for line in &self.details {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// Checks every key of `history` independently; returns the first violation found (keys are
/// visited in the order of their first op in `history`).
pub fn check(history: &[Op]) -> Result<(), Violation> {
    for (key, idx) in group_by_key(history) {
        check_key(history, key, &idx)?;
    }
    Ok(())
}

/// Like [`check`], but returns one violation for every key whose history is not linearizable.
pub fn check_all(history: &[Op]) -> Vec<Violation> {
    group_by_key(history)
        .into_iter()
        .filter_map(|(key, idx)| check_key(history, key, &idx).err())
        .collect()
}

/// Op indices per key, keys in order of first appearance.
fn group_by_key(history: &[Op]) -> Vec<(&str, Vec<usize>)> {
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, op) in history.iter().enumerate() {
        let g = *slot.entry(op.key.as_str()).or_insert_with(|| {
            groups.push((op.key.as_str(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// The value an op was told the register holds, if it was told it holds one.
fn observed(op: &Op) -> Option<&[u8]> {
    match &op.kind {
        OpKind::Put {
            result: PutResult::Exists { value },
            ..
        } => Some(value),
        OpKind::Get {
            result: GetResult::Value(value),
        } => Some(value),
        _ => None,
    }
}

fn put_value(op: &Op) -> &[u8] {
    match &op.kind {
        OpKind::Put { value, .. } => value,
        OpKind::Get { .. } => unreachable!("not a PUT"),
    }
}

/// Checks the ops `idx` of `history`, which all concern `key`: they are well formed, at most
/// one PUT answered Stored, every observation agrees on one value some PUT proposed, and the
/// write of that value has a point in time that every op can be ordered around.
fn check_key(history: &[Op], key: &str, idx: &[usize]) -> Result<(), Violation> {
    check_register(history, idx)
        .map_err(|Broken { reason, ops }| Violation::new(history, key, reason, ops))
}

/// A rule the history of one key breaks: why, and the ops (indices into the history) that
/// show it.
struct Broken {
    reason: String,
    ops: Vec<usize>,
}

fn broken(reason: String, ops: Vec<usize>) -> Broken {
    Broken { reason, ops }
}

/// The steps of [`check_key`], in order; each may find the history broken.
fn check_register(history: &[Op], idx: &[usize]) -> Result<(), Broken> {
    well_formed(history, idx)?;
    let puts = Puts::of(history, idx)?;
    let seen = Observations::of(history, idx, &puts)?;
    match winning_put(&puts, &seen)? {
        Some(winner) => winner_has_a_point(history, &puts, &seen, winner),
        None => Ok(()), // nobody saw a value and nothing was Stored
    }
}

/// No op returned before it was invoked.
fn well_formed(history: &[Op], idx: &[usize]) -> Result<(), Broken> {
    for &i in idx {
        let op = &history[i];
        if let Some(r) = op.returned
            && r < op.invoked
        {
            return Err(broken(
                format!(
                    "malformed op: returned at {r}us before it was invoked at {}us",
                    op.invoked
                ),
                vec![i],
            ));
        }
    }
    Ok(())
}

/// Pass 1, the PUTs: at most one may have answered Stored.
struct Puts<'h> {
    /// The PUT that answered Stored, if one did.
    stored: Option<usize>,
    /// The first PUT proposing each value.
    proposer: HashMap<&'h [u8], usize>,
    /// The earliest-invoked PUT of each value whose effect is unknown (Unavailable, pending).
    earliest_indeterminate: HashMap<&'h [u8], usize>,
}

impl<'h> Puts<'h> {
    fn of(history: &'h [Op], idx: &[usize]) -> Result<Puts<'h>, Broken> {
        let mut puts = Puts {
            stored: None,
            proposer: HashMap::new(),
            earliest_indeterminate: HashMap::new(),
        };
        for &i in idx {
            let OpKind::Put { value, result } = &history[i].kind else {
                continue;
            };
            puts.proposer.entry(value.as_slice()).or_insert(i);
            match result {
                PutResult::Stored => {
                    if let Some(s) = puts.stored {
                        return Err(broken(
                            format!(
                                "two PUTs answered Stored (values {} and {}): a write-once \
                                 register can be written only once",
                                show_value(put_value(&history[s])),
                                show_value(value)
                            ),
                            vec![s, i],
                        ));
                    }
                    puts.stored = Some(i);
                }
                PutResult::Unavailable | PutResult::Pending => {
                    let e = puts
                        .earliest_indeterminate
                        .entry(value.as_slice())
                        .or_insert(i);
                    if history[i].invoked < history[*e].invoked {
                        *e = i;
                    }
                }
                PutResult::Exists { .. } | PutResult::Busy | PutResult::NoEffect => {}
            }
        }
        Ok(puts)
    }
}

/// Pass 2, the observations: every value seen must have been proposed (validity), and all
/// must agree with each other and with the Stored PUT, if any (there is one winner).
struct Observations<'h> {
    /// The first op that saw a value, and the value.
    first_seen: Option<(usize, &'h [u8])>,
    /// The op that saw the value and returned first.
    earliest_return_seen: Option<usize>,
    /// The GET answered Unknown that was invoked last.
    latest_invoked_empty: Option<usize>,
}

impl<'h> Observations<'h> {
    fn of(history: &'h [Op], idx: &[usize], puts: &Puts<'h>) -> Result<Observations<'h>, Broken> {
        let mut seen = Observations {
            first_seen: None,
            earliest_return_seen: None,
            latest_invoked_empty: None,
        };
        for &i in idx {
            let op = &history[i];
            if let OpKind::Get {
                result: GetResult::Unknown,
            } = op.kind
            {
                if seen
                    .latest_invoked_empty
                    .is_none_or(|e| op.invoked > history[e].invoked)
                {
                    seen.latest_invoked_empty = Some(i);
                }
                continue;
            }
            let Some(value) = observed(op) else {
                continue;
            };
            if !puts.proposer.contains_key(value) {
                return Err(broken(
                    format!(
                        "observed value {} that no PUT of this key proposed (validity)",
                        show_value(value)
                    ),
                    vec![i],
                ));
            }
            match (puts.stored, seen.first_seen) {
                (Some(s), _) if put_value(&history[s]) != value => {
                    return Err(broken(
                        format!(
                            "observed value {} but the PUT that answered Stored wrote {}",
                            show_value(value),
                            show_value(put_value(&history[s]))
                        ),
                        vec![s, i],
                    ));
                }
                (None, Some((f, first))) if first != value => {
                    return Err(broken(
                        format!(
                            "two ops observed different values, {} and {}: the register can \
                             only ever hold one",
                            show_value(first),
                            show_value(value)
                        ),
                        vec![f, i],
                    ));
                }
                _ => {}
            }
            seen.first_seen.get_or_insert((i, value));
            if seen
                .earliest_return_seen
                .is_none_or(|e| op.end() < history[e].end())
            {
                seen.earliest_return_seen = Some(i);
            }
        }
        Ok(seen)
    }
}

/// The PUT whose value the register holds: the Stored one, else the earliest indeterminate
/// PUT of the value seen. `None` if nothing was stored and nothing seen.
fn winning_put(puts: &Puts<'_>, seen: &Observations<'_>) -> Result<Option<usize>, Broken> {
    match (puts.stored, seen.first_seen) {
        (Some(s), _) => Ok(Some(s)),
        (None, Some((o, value))) => match puts.earliest_indeterminate.get(value) {
            Some(&w) => Ok(Some(w)),
            None => Err(broken(
                format!(
                    "observed value {} but no PUT could have written it: none answered \
                     Stored and every PUT proposing it got a definite answer without \
                     effect (Busy, Exists or another no-effect answer)",
                    show_value(value)
                ),
                vec![o, puts.proposer[value]],
            )),
        },
        (None, None) => Ok(None),
    }
}

/// The point of the winning write: max(W.invoked, empty-seers' invoked) <= min(W's end,
/// value-seers' returned). W.invoked <= W's end holds by well-formedness; check the rest.
fn winner_has_a_point(
    history: &[Op],
    puts: &Puts<'_>,
    seen: &Observations<'_>,
    winner: usize,
) -> Result<(), Broken> {
    let w = &history[winner];
    let w_end = if puts.stored.is_some() {
        w.end()
    } else {
        Time::MAX
    };
    if let Some(e) = seen.latest_invoked_empty
        && history[e].invoked > w_end
    {
        return Err(broken(
            format!(
                "a GET invoked at {}us answered Unknown, but a PUT had already answered Stored \
                 at {}us",
                history[e].invoked, w_end
            ),
            vec![winner, e],
        ));
    }
    let Some(v) = seen.earliest_return_seen else {
        return Ok(());
    };
    let v_op = &history[v];
    let v_end = v_op.end();
    let value = show_value(observed(v_op).expect("an observer"));
    if let Some(e) = seen.latest_invoked_empty
        && history[e].invoked > v_end
    {
        return Err(broken(
            format!(
                "an op observed value {value} and returned at {v_end}us, but a later GET \
                 invoked at {}us answered Unknown",
                history[e].invoked
            ),
            vec![v, e],
        ));
    }
    if w.invoked > v_end {
        let reason = if puts.stored.is_some() {
            format!(
                "an op observed value {value} and returned at {v_end}us, before the PUT that \
                 wrote it (answered Stored) was invoked at {}us",
                w.invoked
            )
        } else {
            format!(
                "an op observed value {value} and returned at {v_end}us, before any PUT that \
                 could have written it was invoked (the earliest, at {}us)",
                w.invoked
            )
        };
        return Err(broken(reason, vec![v, winner]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: &str = "k";

    fn stored(c: u64, v: &str, inv: Time, ret: Time) -> Op {
        Op::put(c, K, v, inv, Some(ret), PutResult::Stored)
    }
    fn exists(c: u64, v: &str, seen: &str, inv: Time, ret: Time) -> Op {
        let value = seen.as_bytes().to_vec();
        Op::put(c, K, v, inv, Some(ret), PutResult::Exists { value })
    }
    fn busy(c: u64, v: &str, inv: Time, ret: Time) -> Op {
        Op::put(c, K, v, inv, Some(ret), PutResult::Busy)
    }
    fn unavailable(c: u64, v: &str, inv: Time, ret: Time) -> Op {
        Op::put(c, K, v, inv, Some(ret), PutResult::Unavailable)
    }
    fn pending(c: u64, v: &str, inv: Time) -> Op {
        Op::put(c, K, v, inv, None, PutResult::Pending)
    }
    fn read(c: u64, v: &str, inv: Time, ret: Time) -> Op {
        let value = GetResult::Value(v.as_bytes().to_vec());
        Op::get(c, K, inv, Some(ret), value)
    }
    fn unknown(c: u64, inv: Time, ret: Time) -> Op {
        Op::get(c, K, inv, Some(ret), GetResult::Unknown)
    }

    #[track_caller]
    fn ok(h: &[Op]) {
        if let Err(v) = check(h) {
            panic!("expected linearizable, got: {v}");
        }
    }

    #[track_caller]
    fn bad(h: &[Op], ops: &[usize], reason_has: &str) -> Violation {
        let v = check(h).expect_err("expected a violation");
        assert_eq!(v.ops, ops, "wrong ops in: {v}");
        assert!(v.reason.contains(reason_has), "unexpected reason in: {v}");
        v
    }

    // ---- Good histories ----

    #[test]
    fn empty_and_read_only_histories_are_fine() {
        ok(&[]);
        ok(&[unknown(1, 0, 5), unknown(2, 3, 9), unknown(1, 10, 10)]);
        ok(&[Op::get(1, K, 0, None, GetResult::Unavailable)]);
    }

    #[test]
    fn concurrent_writes_one_wins() {
        ok(&[
            unknown(9, 0, 1),
            stored(1, "a", 0, 10),
            exists(2, "b", "a", 2, 8), // told Exists before the winner got its answer
            exists(3, "c", "a", 1, 12),
            unknown(8, 5, 9), // concurrent with the winner, may precede it
            read(7, "a", 6, 7),
            read(9, "a", 11, 12),
        ]);
    }

    #[test]
    fn unavailable_write_that_appears_later() {
        ok(&[
            unavailable(1, "a", 0, 5),
            unknown(2, 6, 7), // the proposal had not committed yet
            read(2, "a", 20, 21),
            exists(3, "b", "a", 30, 31),
            unknown(4, 15, 25), // concurrent with the first read of a
        ]);
        ok(&[pending(1, "a", 0), unknown(2, 6, 7), read(2, "a", 20, 21)]);
    }

    #[test]
    fn indeterminate_writes_that_never_land() {
        ok(&[
            unavailable(1, "a", 0, 5),
            pending(2, "b", 1),
            stored(3, "c", 2, 4),
            read(4, "c", 6, 7),
            exists(1, "a", "c", 8, 9),
        ]);
    }

    #[test]
    fn busy_and_no_effect_retries() {
        ok(&[
            busy(1, "a", 0, 5),
            stored(2, "b", 1, 4),
            exists(1, "a", "b", 6, 8),
        ]);
        ok(&[
            busy(1, "a", 0, 2),
            Op::put(1, K, "a", 3, Some(4), PutResult::NoEffect),
            unknown(2, 4, 5),
            stored(1, "a", 6, 8),
            read(2, "a", 9, 9),
        ]);
    }

    #[test]
    fn retry_sees_its_own_earlier_attempt() {
        ok(&[unavailable(1, "a", 0, 5), exists(1, "a", "a", 6, 9)]);
    }

    #[test]
    fn equal_times_may_be_ordered_either_way() {
        // Unknown invoked exactly when Stored returned.
        ok(&[stored(1, "a", 0, 10), unknown(2, 10, 12)]);
        // Value returned exactly when Stored was invoked.
        ok(&[read(2, "a", 3, 5), stored(1, "a", 5, 10)]);
        // Value returned exactly when an Unknown was invoked.
        ok(&[read(2, "a", 3, 5), unknown(3, 5, 6), stored(1, "a", 0, 10)]);
        // Everything at one instant.
        ok(&[unknown(3, 5, 5), stored(1, "a", 5, 5), read(2, "a", 5, 5)]);
    }

    #[test]
    fn keys_are_independent() {
        let h = [
            Op::put(1, "x", "a", 0, Some(5), PutResult::Stored),
            Op::put(2, "y", "b", 0, Some(5), PutResult::Stored),
            Op::get(3, "x", 6, Some(7), GetResult::Value(b"a".to_vec())),
            Op::get(3, "y", 6, Some(7), GetResult::Value(b"b".to_vec())),
            Op::get(3, "z", 6, Some(7), GetResult::Unknown),
        ];
        ok(&h);
        assert!(check_all(&h).is_empty());
    }

    // ---- Bad histories ----

    #[test]
    fn two_stored_answers() {
        bad(
            &[stored(1, "a", 0, 5), stored(2, "b", 1, 6)],
            &[0, 1],
            "two PUTs answered Stored",
        );
        // Even with the same value.
        bad(
            &[
                stored(1, "a", 0, 5),
                read(3, "a", 5, 6),
                stored(2, "a", 7, 8),
            ],
            &[0, 2],
            "two PUTs answered Stored",
        );
    }

    #[test]
    fn value_then_later_unknown() {
        bad(
            &[
                unavailable(1, "a", 0, 10),
                read(2, "a", 1, 5),
                unknown(3, 6, 7),
            ],
            &[1, 2],
            "later GET invoked at 6us answered Unknown",
        );
        bad(
            &[stored(1, "a", 0, 100), read(2, "a", 1, 5), unknown(3, 6, 7)],
            &[1, 2],
            "later GET",
        );
    }

    #[test]
    fn unknown_after_stored_returned() {
        bad(
            &[stored(1, "a", 0, 5), unknown(2, 6, 7)],
            &[0, 1],
            "a PUT had already answered Stored at 5us",
        );
    }

    #[test]
    fn exists_with_another_value_than_stored() {
        bad(
            &[
                stored(1, "a", 0, 5),
                unavailable(2, "b", 0, 5),
                exists(3, "c", "b", 6, 7),
            ],
            &[0, 2],
            "the PUT that answered Stored wrote \"a\"",
        );
    }

    #[test]
    fn two_different_values_observed() {
        bad(
            &[
                unavailable(1, "a", 0, 5),
                unavailable(2, "b", 0, 5),
                read(3, "a", 6, 7),
                read(3, "b", 8, 9),
            ],
            &[2, 3],
            "two ops observed different values",
        );
    }

    #[test]
    fn value_nobody_wrote() {
        bad(
            &[stored(1, "a", 0, 5), read(2, "z", 6, 7)],
            &[1],
            "no PUT of this key proposed",
        );
        // Written to another key only.
        bad(
            &[
                Op::put(1, "other", "z", 0, Some(1), PutResult::Stored),
                read(2, "z", 6, 7),
            ],
            &[1],
            "validity",
        );
    }

    #[test]
    fn exists_with_no_possible_winner() {
        // The only PUT of "a" is the one told Exists("a").
        bad(
            &[exists(1, "a", "a", 0, 5)],
            &[0, 0],
            "no PUT could have written it",
        );
        // The only PUT of "a" was Busy.
        bad(
            &[busy(1, "a", 0, 5), exists(2, "b", "a", 1, 6)],
            &[1, 0],
            "no PUT could have written it",
        );
    }

    #[test]
    fn value_seen_before_its_write_was_invoked() {
        bad(
            &[read(2, "a", 0, 2), unavailable(1, "a", 5, 9)],
            &[0, 1],
            "before any PUT that could have written it was invoked",
        );
        bad(
            &[exists(2, "b", "a", 0, 2), stored(1, "a", 3, 9)],
            &[0, 1],
            "before the PUT that wrote it",
        );
    }

    #[test]
    fn malformed_op() {
        bad(&[read(1, "a", 5, 2)], &[0], "malformed");
    }

    #[test]
    fn check_all_reports_each_bad_key_and_display_shows_times() {
        let h = [
            Op::put(1, "x", "a", 0, Some(5), PutResult::Stored),
            Op::put(2, "y", "b", 0, Some(5), PutResult::Stored),
            Op::get(3, "x", 6, Some(7), GetResult::Unknown),
            Op::put(4, "y", "c", 1, Some(6), PutResult::Stored),
            Op::get(3, "z", 6, Some(7), GetResult::Unknown),
        ];
        let all = check_all(&h);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].key.as_str(), all[1].key.as_str()), ("x", "y"));
        assert_eq!(check(&h).unwrap_err(), all[0]);
        let text = all[0].to_string();
        assert!(text.contains("\"x\""), "{text}");
        assert!(
            text.contains("op #0: client 1 PUT \"x\" = \"a\" -> Stored, invoked 0us, returned 5us"),
            "{text}"
        );
        assert!(
            text.contains("op #2: client 3 GET \"x\" -> Unknown, invoked 6us, returned 7us"),
            "{text}"
        );
    }

    #[test]
    fn shows_binary_and_long_values() {
        assert_eq!(show_value(&[0, 255]), "0x00ff");
        assert!(show_value(&[b'x'; 100]).ends_with("... (100 bytes)"));
        assert_eq!(show_time(None), "never");
    }

    #[test]
    fn large_histories_are_fast() {
        // 100k ops on one key, then 100k ops over 1000 keys.
        let mut one = vec![stored(0, "v", 0, 10)];
        for i in 1..100_000u64 {
            let t = i * 3;
            one.push(match i % 4 {
                0 => read(i, "v", t, t + 20),
                1 => exists(i, "w", "v", t, t + 20),
                2 => busy(i, "w", t, t + 1),
                _ => unavailable(i, "x", t, t + 50),
            });
        }
        one.insert(1, unknown(1, 1, 2));
        let start = std::time::Instant::now();
        ok(&one);
        let mut many = Vec::new();
        for i in 0..100_000u64 {
            let key = format!("k{}", i % 1000);
            let t = i;
            many.push(if i < 1000 {
                Op::put(i, key, "v", t, Some(t + 5), PutResult::Stored)
            } else {
                Op::get(i, key, t, Some(t + 5), GetResult::Value(b"v".to_vec()))
            });
        }
        assert!(check(&many).is_ok());
        // Break the last key's history at the very end.
        many.push(Op::get(
            0,
            "k999",
            200_000,
            Some(200_001),
            GetResult::Unknown,
        ));
        assert_eq!(check(&many).unwrap_err().key, "k999");
        let took = start.elapsed();
        assert!(took.as_secs() < 10, "took {took:?}");
    }

    // ---- Cross-check against a brute-force search ----

    /// What an op of the brute-force search requires of the register when it takes effect.
    #[derive(Clone, Debug)]
    enum Step {
        /// Must find it empty; fills it.
        Write(Vec<u8>),
        /// Must find it holding this value (`None`: empty); changes nothing.
        Expect(Option<Vec<u8>>),
        /// Indeterminate PUT: fills it if empty; may also never take effect.
        Maybe(Vec<u8>),
    }

    struct BruteOp {
        invoked: Time,
        /// +infinity for ops that never returned and for indeterminate PUTs.
        end: Time,
        step: Step,
    }

    /// Wing & Gong: try every order of the ops compatible with real time (`a` must precede `b`
    /// iff `a` returned strictly before `b` was invoked), dropping indeterminate PUTs at will,
    /// and accept if one order satisfies the sequential specification. Definite no-effect PUTs
    /// and GETs answering Unavailable are consistent with any state and are left out.
    fn brute_force(history: &[Op]) -> bool {
        let mut ops = Vec::new();
        for op in history {
            let end = op.end();
            let (step, end) = match &op.kind {
                OpKind::Put { value, result } => match result {
                    PutResult::Stored => (Step::Write(value.clone()), end),
                    PutResult::Exists { value } => (Step::Expect(Some(value.clone())), end),
                    PutResult::Busy | PutResult::NoEffect => continue,
                    PutResult::Unavailable | PutResult::Pending => {
                        (Step::Maybe(value.clone()), Time::MAX)
                    }
                },
                OpKind::Get { result } => match result {
                    GetResult::Value(v) => (Step::Expect(Some(v.clone())), end),
                    GetResult::Unknown => (Step::Expect(None), end),
                    GetResult::Unavailable => continue,
                },
            };
            ops.push(BruteOp {
                invoked: op.invoked,
                end,
                step,
            });
        }
        assert!(ops.len() < 32);
        search(&ops, 0, &None)
    }

    fn search(ops: &[BruteOp], done: u32, state: &Option<Vec<u8>>) -> bool {
        let required_left = ops
            .iter()
            .enumerate()
            .any(|(i, op)| done & (1 << i) == 0 && !matches!(op.step, Step::Maybe(_)));
        if !required_left {
            return true; // the remaining indeterminate PUTs never take effect
        }
        for (c, op) in ops.iter().enumerate() {
            if done & (1 << c) != 0 {
                continue;
            }
            // An op still to place that returned before `op` was invoked must come first.
            let blocked = ops
                .iter()
                .enumerate()
                .any(|(d, other)| d != c && done & (1 << d) == 0 && other.end < op.invoked);
            if blocked {
                continue;
            }
            let next = match (&op.step, state) {
                (Step::Write(v), None) | (Step::Maybe(v), None) => Some(Some(v.clone())),
                (Step::Write(_), Some(_)) => None,
                (Step::Maybe(_), Some(_)) => Some(state.clone()),
                (Step::Expect(want), _) => (want == state).then(|| state.clone()),
            };
            if let Some(next) = next
                && search(ops, done | (1 << c), &next)
            {
                return true;
            }
        }
        false
    }

    fn value(i: u8) -> Vec<u8> {
        vec![b'a' + i]
    }

    /// A random PUT or GET answer. Observed values include 'd', which no PUT proposes.
    fn arb_kind() -> impl Strategy<Value = OpKind> {
        let put_result = prop_oneof![
            3 => Just(PutResult::Stored),
            3 => (0u8..4).prop_map(|v| PutResult::Exists { value: value(v) }),
            1 => Just(PutResult::Busy),
            1 => Just(PutResult::NoEffect),
            2 => Just(PutResult::Unavailable),
            1 => Just(PutResult::Pending),
        ];
        let get_result = prop_oneof![
            3 => (0u8..4).prop_map(|v| GetResult::Value(value(v))),
            3 => Just(GetResult::Unknown),
            1 => Just(GetResult::Unavailable),
        ];
        prop_oneof![
            (0u8..3, put_result).prop_map(|(v, result)| OpKind::Put {
                value: value(v),
                result
            }),
            get_result.prop_map(|result| OpKind::Get { result }),
        ]
    }

    fn make_op(client: u64, invoked: Time, dur: Time, never: bool, kind: OpKind) -> Op {
        let pending = matches!(
            kind,
            OpKind::Put {
                result: PutResult::Pending,
                ..
            }
        );
        let returned = (!pending && !never).then_some(invoked + dur);
        Op {
            client,
            key: K.to_string(),
            invoked,
            returned,
            kind,
        }
    }

    /// Fully random histories: mostly not linearizable.
    fn arb_random_history() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            (0u64..10, 0u64..6, prop::bool::weighted(0.05), arb_kind()),
            0..=6,
        )
        .prop_map(|ops| {
            ops.into_iter()
                .enumerate()
                .map(|(c, (inv, dur, never, kind))| make_op(c as u64, inv, dur, never, kind))
                .collect()
        })
    }

    /// Histories produced by executing the ops at chosen points against a real register
    /// (linearizable by construction), then, half of the time, one op's answer replaced by a
    /// random one.
    fn arb_plausible_history() -> impl Strategy<Value = Vec<Op>> {
        let plan = (
            0u64..10,
            0u64..6,
            0u64..6,
            0u64..8,
            any::<bool>(),
            0u8..3,
            0u8..8,
        );
        (
            prop::collection::vec(plan, 1..=6),
            prop::option::weighted(0.5, (any::<prop::sample::Index>(), arb_kind())),
        )
            .prop_map(|(plans, mutation)| {
                // Effect points: (time, op) for every op that takes effect.
                let mut effects = Vec::new();
                for (i, &(inv, dur, at, late, is_put, _, mode)) in plans.iter().enumerate() {
                    let point = inv + at.min(dur);
                    match (is_put, mode) {
                        (true, 4 | 5) => effects.push((point + late, i)), // lands, maybe late
                        (true, 6 | 7) => {}                               // never lands
                        _ => effects.push((point, i)),
                    }
                }
                effects.sort();
                let mut register: Option<Vec<u8>> = None;
                let mut answers: Vec<Option<OpKind>> = vec![None; plans.len()];
                for (_, i) in effects {
                    let (_, _, _, _, is_put, v, _) = plans[i];
                    answers[i] = Some(if is_put {
                        let result = match &register {
                            None => {
                                register = Some(value(v));
                                PutResult::Stored
                            }
                            Some(w) => PutResult::Exists { value: w.clone() },
                        };
                        OpKind::Put {
                            value: value(v),
                            result,
                        }
                    } else {
                        let result = match &register {
                            None => GetResult::Unknown,
                            Some(w) => GetResult::Value(w.clone()),
                        };
                        OpKind::Get { result }
                    });
                }
                let mut ops: Vec<Op> = plans
                    .iter()
                    .enumerate()
                    .map(|(i, &(inv, dur, _, _, is_put, v, mode))| {
                        let kind = match (is_put, mode) {
                            (true, 4 | 6) => OpKind::Put {
                                value: value(v),
                                result: PutResult::Unavailable,
                            },
                            (true, 5) => OpKind::Put {
                                value: value(v),
                                result: PutResult::Pending,
                            },
                            (true, 7) => OpKind::Put {
                                value: value(v),
                                result: PutResult::Busy,
                            },
                            (false, 7) => OpKind::Get {
                                result: GetResult::Unavailable,
                            },
                            _ => answers[i].clone().expect("took effect"),
                        };
                        make_op(i as u64, inv, dur, false, kind)
                    })
                    .collect();
                if let Some((at, kind)) = mutation {
                    let i = at.index(ops.len());
                    let (client, invoked) = (ops[i].client, ops[i].invoked);
                    // A Pending op given an answer gets a bounded interval.
                    let dur = ops[i].returned.map_or(3, |r| r - invoked);
                    ops[i] = make_op(client, invoked, dur, false, kind);
                }
                ops
            })
    }

    fn arb_history() -> impl Strategy<Value = Vec<Op>> {
        prop_oneof![arb_random_history(), arb_plausible_history()]
    }

    fn render(h: &[Op]) -> String {
        h.iter()
            .enumerate()
            .map(|(i, op)| format!("\n  op #{i}: {op}"))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        #[test]
        fn fast_checker_agrees_with_brute_force(h in arb_history()) {
            let fast = check(&h);
            let slow = brute_force(&h);
            prop_assert_eq!(
                fast.is_ok(),
                slow,
                "fast: {:?}, brute force: {}, history:{}",
                fast.err().map(|v| v.to_string()),
                slow,
                render(&h)
            );
        }
    }

    /// Minimal counterexamples the property test found against deliberately broken variants of
    /// the checker (tie handling, choice of the candidate winner, missing constraints), kept so
    /// that they are checked on every run whatever proptest draws.
    #[test]
    fn counterexamples_from_broken_variants() {
        let cases: [(Vec<Op>, bool); 7] = [
            (vec![unknown(0, 1, 1), stored(1, "a", 0, 1)], true),
            (
                vec![
                    unavailable(0, "b", 5, 5),
                    read(1, "b", 2, 3),
                    unavailable(2, "b", 0, 0),
                ],
                true,
            ),
            (
                vec![
                    unknown(0, 6, 6),
                    read(1, "c", 0, 0),
                    unavailable(2, "c", 0, 0),
                ],
                false,
            ),
            (
                vec![
                    unknown(0, 2, 2),
                    unavailable(1, "b", 1, 1),
                    unknown(2, 0, 0),
                    read(3, "b", 1, 2),
                ],
                true,
            ),
            (
                vec![unavailable(0, "a", 7, 7), exists(1, "a", "a", 0, 0)],
                false,
            ),
            (vec![read(0, "b", 7, 8), busy(1, "b", 0, 0)], false),
            (
                vec![stored(0, "a", 7, 7), read(1, "a", 3, 7), read(2, "a", 0, 0)],
                false,
            ),
        ];
        for (h, linearizable) in cases {
            assert_eq!(brute_force(&h), linearizable, "{}", render(&h));
            assert_eq!(check(&h).is_ok(), linearizable, "{}", render(&h));
        }
    }

    /// The generator must exercise both outcomes, or the cross-check proves little.
    #[test]
    fn generator_yields_both_outcomes() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = arb_history();
        let n = 4000;
        let accepted = (0..n)
            .filter(|_| brute_force(&strategy.new_tree(&mut runner).unwrap().current()))
            .count();
        assert!(
            n / 4 < accepted && accepted < n * 3 / 4,
            "{accepted} of {n} histories are linearizable"
        );
    }
}
