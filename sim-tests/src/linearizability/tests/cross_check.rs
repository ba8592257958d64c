//! The checker against a brute-force search (Wing & Gong) over random and plausible
//! histories, and the counterexamples that search found against broken variants of it.

use proptest::prelude::*;

use super::*;

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
