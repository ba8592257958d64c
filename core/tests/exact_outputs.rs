//! Exact-output tests: one node, one input, the precise list of outputs it must produce.

use replicator_core::*;

fn founded() -> Recovered {
    Recovered::founder("net".into())
        .with_members(["n1", "n2", "n3"].map(|n| (ClusterId::from("c"), NodeId::from(n))))
}

fn node() -> Node {
    Node::new(
        Config::default(),
        "n1".into(),
        "c".into(),
        founded(),
        Time::ZERO,
        1,
    )
    .unwrap()
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn p(counter: u64) -> ProposalId {
    ProposalId {
        coordinator: "n2".into(),
        counter,
    }
}

fn reserve(n: &mut Node, p: ProposalId, key: &str) {
    let digest = n.membership().digest();
    let msg = Message::Request(Request::Reserve {
        p,
        key: key.into(),
        value: "v".into(),
        digest,
    });
    n.handle(
        Time::ZERO,
        Input::Message {
            from: "n2".into(),
            msg,
        },
    );
}

fn vote_of(out: &Output) -> Option<(&NodeId, &Vote)> {
    match out {
        Output::Send {
            to,
            msg: Message::Response(Response::Vote { vote, .. }),
        } => Some((to, vote)),
        _ => None,
    }
}

#[test]
fn grant_is_persisted_before_the_vote_leaves() {
    let mut n = node();
    reserve(&mut n, p(1), "k");
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
    let Output::Persist { write, ops } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(*write, WriteId(1));
    assert!(
        matches!(
            &ops[..],
            [WriteOp::PutKey {
                state: DurableKey::Reserved { .. },
                ..
            }]
        ),
        "{ops:?}"
    );
    n.handle(Time::ZERO, Input::Persisted { upto: WriteId(1) });
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        vote_of(&out[0]),
        Some((&NodeId::from("n2"), &Vote::Granted))
    );
}

#[test]
fn reserve_of_a_reserved_key_is_denied_busy_and_the_refusal_is_durable_first() {
    let mut n = node();
    reserve(&mut n, p(1), "k");
    drain(&mut n);
    n.handle(Time::ZERO, Input::Persisted { upto: WriteId(1) });
    drain(&mut n);
    reserve(&mut n, p(2), "k");
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
    let Output::Persist { ops, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        ops,
        &vec![WriteOp::PutRefusal {
            p: p(2),
            why: RefusalWhy::Denied(DenyReason::Busy)
        }]
    );
    n.handle(Time::ZERO, Input::Persisted { upto: WriteId(2) });
    let out = drain(&mut n);
    assert_eq!(
        vote_of(&out[0]),
        Some((
            &NodeId::from("n2"),
            &Vote::Denied {
                reason: DenyReason::Busy,
                stored: None
            }
        ))
    );
}

#[test]
fn abort_drops_the_reservation_and_fences_a_late_reserve() {
    let mut n = node();
    reserve(&mut n, p(1), "k");
    drain(&mut n);
    let msg = Message::Request(Request::Abort {
        p: p(1),
        key: "k".into(),
    });
    n.handle(
        Time::ZERO,
        Input::Message {
            from: "n2".into(),
            msg,
        },
    );
    let out = drain(&mut n);
    let Output::Persist { ops, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        ops,
        &vec![
            WriteOp::RemoveKey { key: "k".into() },
            WriteOp::PutRefusal {
                p: p(1),
                why: RefusalWhy::Aborted
            }
        ]
    );
    // The same Reserve, duplicated in the network, lands again: refused, not granted.
    reserve(&mut n, p(1), "k");
    n.handle(Time::ZERO, Input::Persisted { upto: WriteId(2) });
    let out = drain(&mut n);
    let votes: Vec<_> = out.iter().filter_map(vote_of).collect();
    assert_eq!(
        votes.last().map(|(_, v)| (*v).clone()),
        Some(Vote::Denied {
            reason: DenyReason::Aborted,
            stored: None
        })
    );
    assert_eq!(n.key_state(&"k".into()), None);
}

#[test]
fn status_of_an_unknown_proposal_fences_it_durably() {
    let mut n = node();
    let msg = Message::Request(Request::Status {
        p: p(5),
        key: "k".into(),
    });
    n.handle(
        Time::ZERO,
        Input::Message {
            from: "n3".into(),
            msg,
        },
    );
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
    let Output::Persist { ops, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        ops,
        &vec![WriteOp::PutRefusal {
            p: p(5),
            why: RefusalWhy::Fenced
        }]
    );
    n.handle(Time::ZERO, Input::Persisted { upto: WriteId(1) });
    let out = drain(&mut n);
    assert_eq!(
        vote_of(&out[0]),
        Some((
            &NodeId::from("n3"),
            &Vote::Denied {
                reason: DenyReason::Fenced,
                stored: None
            }
        ))
    );
    // Once fenced, a Reserve of it is never granted.
    reserve(&mut n, p(5), "k");
    assert!(
        drain(&mut n)
            .iter()
            .all(|o| !matches!(o, Output::Persist { .. }))
    );
    assert_eq!(n.key_state(&"k".into()), None);
}

#[test]
fn commit_without_a_reservation_is_a_violation_and_changes_nothing() {
    let mut n = node();
    let msg = Message::Request(Request::Commit {
        p: p(1),
        key: "k".into(),
    });
    n.handle(
        Time::ZERO,
        Input::Message {
            from: "n2".into(),
            msg,
        },
    );
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        matches!(&out[0], Output::Note(Note::Violation { .. })),
        "{out:?}"
    );
    assert_eq!(n.key_state(&"k".into()), None);
}

#[test]
fn proposal_counters_never_repeat_across_restarts() {
    let mut disk = founded();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..3 {
        let mut this_run = std::collections::BTreeSet::new();
        let mut n = Node::new(
            Config::default(),
            "n1".into(),
            "c".into(),
            disk.clone(),
            Time::ZERO,
            round,
        )
        .unwrap();
        for i in 0..3 {
            let cmd = Command::Put {
                key: format!("k{round}-{i}").into(),
                value: "v".into(),
                request: None,
            };
            n.handle(
                Time::ZERO,
                Input::Client {
                    call: CallId(i),
                    cmd,
                },
            );
            for out in drain(&mut n) {
                if let Output::Persist { ops, .. } = &out {
                    disk.apply_all(ops);
                }
                if let Output::Send {
                    msg: Message::Request(Request::Reserve { p, .. }),
                    ..
                } = out
                {
                    this_run.insert(p);
                }
            }
            n.handle(
                Time::ZERO,
                Input::Persisted {
                    upto: WriteId(i + 1),
                },
            );
            for out in drain(&mut n) {
                if let Output::Send {
                    msg: Message::Request(Request::Reserve { p, .. }),
                    ..
                } = out
                {
                    this_run.insert(p);
                }
            }
        }
        // Crash: only what was persisted survives; no id of this run was used before.
        for p in this_run {
            assert!(
                seen.insert(p.clone()),
                "proposal id {p} used again after a restart"
            );
        }
    }
    assert_eq!(seen.len(), 9);
}
