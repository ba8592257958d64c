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
    let Output::Persist { write, ops, .. } = &out[0] else {
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
                stored: None,
                holder: Some(p(1)),
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
            stored: None,
            holder: None,
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
                stored: None,
                holder: None,
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

// ==================================================================== one test per role
//
// Each test feeds one node inputs by hand and pins the exact outputs, rendered one line each
// (`show`), in order: what leaves, what is written, what is answered, what is noted.

fn member(name: &str) -> (ClusterId, NodeId) {
    (ClusterId::from(&name[..1]), NodeId::from(name))
}

/// Cluster "c" (c1, c2, c3) and cluster "d" (d1, d2); the node under test is c1.
fn two_clusters() -> Node {
    let disk =
        Recovered::founder("net".into()).with_members(["c1", "c2", "c3", "d1", "d2"].map(member));
    Node::new(
        Config::default(),
        "c1".into(),
        "c".into(),
        disk,
        Time::ZERO,
        1,
    )
    .unwrap()
}

fn ms(x: u64) -> Time {
    Time::from_millis(x)
}

fn show_request(r: &Request) -> String {
    match r {
        Request::Reserve { p, key, value, .. } => format!("Reserve({p} {key} {value:?})"),
        Request::Status { p, key } => format!("Status({p} {key})"),
        Request::Commit { p, key } => format!("Commit({p} {key})"),
        Request::Abort { p, key } => format!("Abort({p} {key})"),
        Request::Read { key, tag } => format!("Read({key} #{tag})"),
    }
}

fn show_response(r: &Response) -> String {
    match r {
        Response::Vote { p, node, vote, .. } => format!("Vote({p} {node} {vote:?})"),
        Response::Read { node, state, .. } => format!("Read({node} {state:?})"),
    }
}

fn show_message(m: &Message) -> String {
    match m {
        Message::Request(r) => show_request(r),
        Message::Response(r) => show_response(r),
        Message::Relay {
            cluster,
            targets,
            request,
        } => format!("Relay({cluster} {targets:?} {})", show_request(request)),
        Message::RelayReply { cluster, responses } => {
            let rs: Vec<String> = responses.iter().map(show_response).collect();
            format!("RelayReply({cluster} {rs:?})")
        }
        Message::SyncPage { entries, done } => {
            let keys: Vec<String> = entries
                .iter()
                .map(|(k, s)| format!("{k}={}", show_state(s)))
                .collect();
            format!("SyncPage({keys:?} done={done})")
        }
        other => format!("{other:?}"),
    }
}

fn show_state(s: &DurableKey) -> String {
    match s {
        DurableKey::Reserved { p, value, .. } => format!("Reserved({p} {value:?})"),
        DurableKey::Stored { p, value } => format!("Stored({p} {value:?})"),
    }
}

fn show_op(op: &WriteOp) -> String {
    match op {
        WriteOp::PutKey { key, state } => format!("PutKey({key} {})", show_state(state)),
        other => format!("{other:?}"),
    }
}

fn show(o: &Output) -> String {
    match o {
        Output::Send { to, msg } => format!("send {to} {}", show_message(msg)),
        Output::Persist {
            write,
            ops,
            urgency,
        } => {
            let ops: Vec<String> = ops.iter().map(show_op).collect();
            let lazy = match urgency {
                replicator_core::Urgency::Barrier => "",
                replicator_core::Urgency::Lazy => " (lazy)",
            };
            format!("persist #{}{lazy} {}", write.0, ops.join(", "))
        }
        Output::Reply { call, reply } => format!("reply {} {reply:?}", call.0),
        Output::Note(note) => format!("note {note:?}"),
    }
}

/// Feeds `input` at `now` and renders what comes out.
fn step(n: &mut Node, now: Time, input: Input) -> Vec<String> {
    n.handle(now, input);
    drain(n).iter().map(show).collect()
}

fn from(sender: &str, msg: Message) -> Input {
    Input::Message {
        from: sender.into(),
        msg,
    }
}

fn vote(p: &ProposalId, node: &str, vote: Vote) -> Response {
    Response::Vote {
        p: p.clone(),
        key: "k".into(),
        node: node.into(),
        vote,
    }
}

fn put(key: &str, value: &str, call: u64) -> Input {
    Input::Client {
        call: CallId(call),
        cmd: Command::Put {
            key: key.into(),
            value: value.into(),
            request: None,
        },
    }
}

fn persisted(write: u64) -> Input {
    Input::Persisted {
        upto: WriteId(write),
    }
}

const NOTHING: [&str; 0] = [];

fn c1_proposal() -> ProposalId {
    ProposalId {
        coordinator: "c1".into(),
        counter: 0,
    }
}

/// Coordinator, start of a proposal (PROTOCOL.md, "Writing a key", step 1).
#[test]
fn coordinator_writes_its_counter_then_reserves_at_home_and_through_one_representative() {
    let mut n = two_clusters();
    assert_eq!(
        step(&mut n, ms(0), put("k", "v", 1)),
        ["persist #1 CounterCeiling(1024)"]
    );
    // Nothing leaves before the counter is durable: a proposal id must never repeat.
    assert_eq!(
        step(&mut n, ms(0), persisted(1)),
        [
            r#"send d2 Relay(d [d2, d1] Reserve(c1#0 k "v"))"#,
            r#"send c2 Reserve(c1#0 k "v")"#,
            r#"send c3 Reserve(c1#0 k "v")"#,
            // Its own Reserve came back through the inbox: its grant is written...
            r#"persist #2 PutKey(k Reserved(c1#0 "v"))"#,
        ]
    );
    // ...and its own vote is counted once that is durable; nothing is decided yet.
    assert_eq!(step(&mut n, ms(0), persisted(2)), NOTHING);
    assert_eq!(
        n.poll_timeout(),
        Some(ms(700)),
        "the representative's deadline"
    );
}

/// Representative failover (PROTOCOL.md, "Terms": representative), then the decision.
#[test]
fn a_silent_representative_is_replaced_by_the_next_node_of_its_cluster() {
    let mut n = two_clusters();
    let p = c1_proposal();
    step(&mut n, ms(0), put("k", "v", 1));
    step(&mut n, ms(0), persisted(1));
    step(&mut n, ms(0), persisted(2));
    for node in ["c2", "c3"] {
        let granted = Message::Response(vote(&p, node, Vote::Granted));
        assert_eq!(step(&mut n, ms(10), from(node, granted)), NOTHING);
    }
    // d2 never answers: at representative_timeout, d1 is asked for both nodes of d.
    assert_eq!(
        step(&mut n, ms(700), Input::Timeout),
        [r#"send d1 Relay(d [d2, d1] Reserve(c1#0 k "v"))"#]
    );
    let reply = Message::RelayReply {
        cluster: "d".into(),
        responses: vec![vote(&p, "d2", Vote::Granted), vote(&p, "d1", Vote::Granted)],
    };
    assert_eq!(
        step(&mut n, ms(750), from("d1", reply)),
        [
            r#"note Decided { p: c1#0, key: k, committed: true }"#,
            r#"send d1 Relay(d [d2, d1] Commit(c1#0 k))"#,
            r#"send c2 Commit(c1#0 k)"#,
            r#"send c3 Commit(c1#0 k)"#,
            r#"reply 1 Put(Stored)"#,
            r#"note Committed { p: c1#0, key: k }"#,
            r#"persist #3 (lazy) PutKey(k Stored(c1#0 "v"))"#,
        ]
    );
}

/// A Reserve that reuses a proposal id for another key is peer input that breaks a rule.
#[test]
fn a_reserve_reusing_a_proposal_for_another_key_is_rejected_without_a_vote() {
    let mut n = node();
    reserve(&mut n, p(1), "k");
    n.handle(Time::ZERO, persisted(1));
    drain(&mut n);
    reserve(&mut n, p(1), "other");
    let out: Vec<String> = drain(&mut n).iter().map(show).collect();
    assert_eq!(
        out,
        [
            r#"note PeerInputRejected { from: n2, reason: "Reserve(n2#1) of other, which reserves k here" }"#
        ]
    );
    assert_eq!(n.key_state(&"other".into()), None);
}

fn stored(coordinator: &str, counter: u64, value: &str) -> DurableKey {
    DurableKey::Stored {
        p: ProposalId {
            coordinator: coordinator.into(),
            counter,
        },
        value: value.into(),
    }
}

/// The member's side of the join-time copy (PROTOCOL.md, "Joining"): pages in key order.
#[test]
fn a_member_serves_the_copy_in_pages_and_refuses_a_non_member() {
    let mut disk =
        Recovered::founder("net".into()).with_members(["c1", "c2", "c3", "d1", "d2"].map(member));
    for (key, value) in [("k1", "a"), ("k2", "b"), ("k3", "c")] {
        disk.keys.insert(key.into(), stored("d1", 1, value));
    }
    let config = Config {
        sync_page_keys: 2,
        ..Config::default()
    };
    let mut n = Node::new(config, "c1".into(), "c".into(), disk, Time::ZERO, 1).unwrap();
    let ask = |after: Option<&str>| Message::SyncRequest {
        after: after.map(Key::from),
    };
    assert_eq!(
        step(&mut n, ms(0), from("c2", ask(None))),
        [r#"send c2 SyncPage(["k2=Stored(d1#1 \"b\")", "k3=Stored(d1#1 \"c\")"] done=false)"#]
    );
    // Keys are in the ids' order (hash, then text), the same on every node.
    assert_eq!(
        step(&mut n, ms(0), from("c2", ask(Some("k3")))),
        [r#"send c2 SyncPage(["k1=Stored(d1#1 \"a\")"] done=true)"#]
    );
    assert_eq!(
        step(&mut n, ms(0), from("x9", ask(None))),
        ["send x9 SyncRefused { reason: NotMember }"]
    );
}

/// The joiner's side: a page is written before the next one is asked for; a refusal moves
/// on to the next member.
#[test]
fn a_joiner_writes_each_page_before_asking_for_the_next() {
    let disk =
        Recovered::joiner("net".into()).with_members(["c1", "c2", "c3", "d1", "d2"].map(member));
    let mut n = Node::new(
        Config::default(),
        "j1".into(),
        "c".into(),
        disk,
        Time::ZERO,
        1,
    )
    .unwrap();
    assert!(!n.is_ready());
    let first = step(&mut n, ms(0), Input::Timeout);
    assert_eq!(first, ["send d2 SyncRequest { after: None }"]);
    // d2 does not count j1 yet: j1 asks the next member a quarter of sync_timeout later.
    let refused = Message::SyncRefused {
        reason: replicator_core::wire::SyncRefusal::NotMember,
    };
    assert_eq!(step(&mut n, ms(1), from("d2", refused)), NOTHING);
    assert_eq!(n.poll_timeout(), Some(ms(501)));
    assert_eq!(
        step(&mut n, ms(501), Input::Timeout),
        ["send d1 SyncRequest { after: None }"]
    );
    let reserved = |counter, participants: Membership| DurableKey::Reserved {
        p: ProposalId {
            coordinator: "d1".into(),
            counter,
        },
        value: "r".into(),
        participants: std::sync::Arc::new(participants),
    };
    let before_j1 = n.membership().without_node(&"j1".into());
    let page = Message::SyncPage {
        entries: vec![
            ("k2".into(), reserved(7, before_j1)),
            ("k3".into(), stored("d1", 1, "c")),
            // Names j1 as a participant: j1 never granted it, so it is not adopted.
            ("k1".into(), reserved(8, n.membership().clone())),
        ],
        done: false,
    };
    assert_eq!(
        step(&mut n, ms(510), from("d1", page)),
        [r#"persist #1 PutKey(k2 Reserved(d1#7 "r")), PutKey(k3 Stored(d1#1 "c"))"#]
    );
    assert_eq!(
        step(&mut n, ms(510), persisted(1)),
        ["send d1 SyncRequest { after: Some(k1) }"]
    );
    assert_eq!(n.key_state(&"k1".into()), None);
    assert!(!n.is_ready());
}

/// Leaving (PROTOCOL.md, "Leaving safely"): ask every member, grant nothing, complete once
/// every member is clear.
#[test]
fn a_leaving_node_asks_every_member_grants_nothing_and_completes_once_all_are_clear() {
    let mut n = two_clusters();
    let checks = [
        "send d2 LeaveCheck",
        "send d1 LeaveCheck",
        "send c2 LeaveCheck",
        "send c3 LeaveCheck",
    ];
    assert_eq!(step(&mut n, ms(0), Input::Leave), checks);
    assert!(n.is_leaving());
    assert_eq!(
        step(&mut n, ms(1), put("k", "v", 1)),
        ["reply 1 Put(NotReady(Leaving))"]
    );
    let digest = n.membership().digest();
    let reserve = Message::Request(Request::Reserve {
        p: ProposalId {
            coordinator: "c2".into(),
            counter: 1,
        },
        key: "k".into(),
        value: "v".into(),
        digest,
    });
    assert_eq!(
        step(&mut n, ms(2), from("c2", reserve)),
        ["persist #1 PutRefusal { p: c2#1, why: Denied(Leaving) }"]
    );
    assert_eq!(
        step(&mut n, ms(2), persisted(1)),
        ["send c2 Vote(c2#1 c1 Denied { reason: Leaving, stored: None, holder: None })"]
    );
    let clear = |clear| Message::LeaveClear { clear };
    assert_eq!(step(&mut n, ms(3), from("c2", clear(true))), NOTHING);
    assert_eq!(step(&mut n, ms(3), from("d1", clear(false))), NOTHING);
    // Asked again, every resolve_backoff_max, are the members not clear yet.
    assert_eq!(
        step(&mut n, ms(2000), Input::Timeout),
        [
            "send d2 LeaveCheck",
            "send d1 LeaveCheck",
            "send c3 LeaveCheck"
        ]
    );
    for node in ["d2", "d1"] {
        assert_eq!(step(&mut n, ms(2001), from(node, clear(true))), NOTHING);
    }
    assert_eq!(
        step(&mut n, ms(2002), from("c3", clear(true))),
        ["note LeaveComplete"]
    );
    assert_eq!(step(&mut n, ms(2003), from("c3", clear(true))), NOTHING);
    assert_eq!(n.poll_timeout(), None, "no more leave checks");
}

/// Resolve (PROTOCOL.md, "Writing a key", step 6, and "Resolve(P)"): votes still missing at
/// vote_timeout make the coordinator ask Status of the silent participants only; a denial
/// aborts the proposal everywhere, and the PUT waits to retry.
#[test]
fn votes_missing_at_vote_timeout_start_a_resolve_of_the_silent_participants() {
    let mut n = two_clusters();
    let p = c1_proposal();
    step(&mut n, ms(0), put("k", "v", 1));
    step(&mut n, ms(0), persisted(1));
    step(&mut n, ms(0), persisted(2));
    let granted = Message::Response(vote(&p, "c2", Vote::Granted));
    step(&mut n, ms(10), from("c2", granted));
    let relays: Vec<String> = [700, 1400]
        .into_iter()
        .flat_map(|t| step(&mut n, ms(t), Input::Timeout))
        .collect();
    assert_eq!(
        relays,
        [
            r#"send d1 Relay(d [d2, d1] Reserve(c1#0 k "v"))"#,
            r#"send d2 Relay(d [d2, d1] Reserve(c1#0 k "v"))"#,
        ]
    );
    assert_eq!(
        step(&mut n, ms(1500), Input::Timeout),
        [
            "send d2 Relay(d [d2, d1] Status(c1#0 k))",
            "send c3 Status(c1#0 k)",
        ]
    );
    let fenced = Vote::Denied {
        reason: DenyReason::Fenced,
        stored: None,
        holder: None,
    };
    let denied = Message::Response(vote(&p, "c3", fenced));
    assert_eq!(
        step(&mut n, ms(1510), from("c3", denied)),
        [
            "note Decided { p: c1#0, key: k, committed: false }",
            "send d2 Relay(d [d2, d1] Abort(c1#0 k))",
            "send c2 Abort(c1#0 k)",
            "send c3 Abort(c1#0 k)",
            "persist #3 RemoveKey { key: k }, PutRefusal { p: c1#0, why: Aborted }",
        ]
    );
}
