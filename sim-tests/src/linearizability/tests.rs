//! The checker on hand-made histories: good ones, bad ones (each with the ops and reason it
//! must report), how it shows values and times, and large histories.

use super::report::{show_time, show_value};
use super::*;

mod cross_check;

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
