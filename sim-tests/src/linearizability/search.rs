//! The check: the history grouped by key, then per key a linear pass over its PUTs (at most
//! one Stored) and one over its observations (one value, proposed by some PUT), the winning
//! write, and whether that write has a point in time every op can be ordered around.

use std::collections::HashMap;

use super::history::{GetResult, Op, OpKind, PutResult, Time};
use super::report::{Violation, show_value};

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
