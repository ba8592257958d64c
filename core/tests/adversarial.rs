//! Peers that lie (core/PROTOCOL.md, "Bounds"): malformed ballots, oversized or disordered
//! pages, answers from strangers or from another membership, decisions that contradict one
//! this node holds. Each is refused with the `PeerFault` documented for it, or ignored, or
//! (for a second decision) reported as a violation, and in every case changes nothing: no
//! write, no message, no state. And arbitrary messages never make a node panic.

mod strategies;

use proptest::prelude::*;
use replicator_core::*;

// ==================================================================== one node, by hand

fn member(name: &str) -> (ClusterId, NodeId) {
    (ClusterId::from(&name[..1]), NodeId::from(name))
}

fn pid(coordinator: &str, counter: u64) -> ProposalId {
    ProposalId {
        coordinator: coordinator.into(),
        counter,
    }
}

fn proposal(coordinator: &str, counter: u64, value: &str) -> Proposal {
    Proposal {
        p: pid(coordinator, counter),
        request: None,
        value: value.into(),
    }
}

fn classic(round: u64, node: &str) -> Ballot {
    Ballot::classic(round, node.into())
}

/// Small limits, so that every bound is within reach of a short message.
fn config() -> Config {
    Config {
        key_bytes_max: 8,
        value_bytes_max: 16,
        request_id_bytes_max: 8,
        clusters_max: 3,
        cluster_nodes_max: 4,
        sync_page_keys: 2,
        ..Config::default()
    }
}

/// Node c1 of clusters c (c1, c2, c3) and d (d1, d2), holding a decision ("s") and an
/// accepted value nobody decided yet ("o").
fn node() -> Node {
    let mut disk = Recovered::founder("net".into())
        .with_members(["c1", "c2", "c3", "d1", "d2"].into_iter().map(member));
    disk.keys.insert(
        "s".into(),
        DurableKey::Stored {
            chosen: proposal("c2", 1, "v"),
            seq: 1,
        },
    );
    disk.keys.insert(
        "o".into(),
        DurableKey::Open {
            promised: classic(2, "c3"),
            accepted: Some((classic(2, "c3"), proposal("c3", 4, "w"))),
        },
    );
    Node::new(
        config(),
        "c1".into(),
        "c".into(),
        disk.clone(),
        Box::new(DiskImage::new(disk)),
        Time::ZERO,
        1,
    )
    .unwrap()
}

/// A joiner j1 of cluster c, copying from c2 (asked at start).
fn joiner() -> Node {
    let disk = Recovered::joiner("net".into())
        .with_members(["c1", "c2", "c3", "d1", "d2"].into_iter().map(member));
    let mut n = Node::new(
        config(),
        "j1".into(),
        "c".into(),
        disk.clone(),
        Box::new(DiskImage::new(disk)),
        Time::ZERO,
        1,
    )
    .unwrap();
    n.handle(Time::ZERO, Input::Timeout);
    let out = drain(&mut n);
    assert!(
        matches!(
            &out[..],
            [Output::Send {
                to,
                msg: Message::SyncRequest { after: None, .. },
            }] if *to == NodeId::from("c2")
        ),
        "{out:?}"
    );
    n
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

/// Everything observable about a node's state: its records, counters, timers, membership.
fn snapshot(n: &Node) -> String {
    let keys: Vec<_> = n.records_in_memory().collect();
    let suspects: Vec<_> = n.suspects().collect();
    format!(
        "keys {keys:?}\nstats {:?}\nmembers {:?}\nready {} removed {} leaving {}\nnext {:?}\nsuspects {suspects:?}",
        n.stats(),
        n.membership(),
        n.is_ready(),
        n.is_removed(),
        n.is_leaving(),
        n.poll_timeout(),
    )
}

fn deliver(n: &mut Node, sender: &str, msg: Message) -> Vec<Output> {
    n.handle(
        Time::from_millis(1),
        Input::Message {
            from: sender.into(),
            msg,
        },
    );
    drain(n)
}

/// Delivers `msg` from `sender`: the node must emit exactly the note that rejects it for
/// `reason`, and nothing about it may change.
fn assert_rejected(n: &mut Node, sender: &str, msg: Message, reason: PeerFault) {
    let before = snapshot(n);
    let out = deliver(n, sender, msg.clone());
    let expected = Note::PeerInputRejected {
        from: sender.into(),
        reason,
    };
    assert!(
        matches!(&out[..], [Output::Note(note)] if *note == expected),
        "{msg:?}\n  gave {out:?}\n  expected {expected:?}"
    );
    assert_eq!(snapshot(n), before, "{msg:?} changed the node");
}

/// Delivers `msg` from `sender`: the node must emit nothing at all and change nothing.
fn assert_ignored(n: &mut Node, sender: &str, msg: Message) {
    let before = snapshot(n);
    let out = deliver(n, sender, msg.clone());
    assert!(out.is_empty(), "{msg:?} gave {out:?}");
    assert_eq!(snapshot(n), before, "{msg:?} changed the node");
}

/// The digest of `node()`'s membership: what an honest member's requests carry.
fn members_digest() -> Digest {
    Membership::from_pairs(["c1", "c2", "c3", "d1", "d2"].into_iter().map(member)).digest()
}

fn prepare(key: &str, ballot: Ballot) -> Message {
    Message::Request(Request::Prepare {
        key: key.into(),
        ballot,
        digest: members_digest(),
    })
}

fn accept(key: &str, ballot: Ballot, proposal: Proposal) -> Message {
    Message::Request(Request::Accept {
        key: key.into(),
        ballot,
        proposal,
        digest: members_digest(),
    })
}

fn ballot_answer(node: &str, key: &str, ballot: Ballot, answer: Answer) -> Message {
    Message::Response(Response::Ballot {
        key: key.into(),
        ballot,
        proposal: None,
        node: node.into(),
        digest: members_digest(),
        answer,
    })
}

fn malformed(ballot: Ballot) -> PeerFault {
    PeerFault::MalformedBallot { ballot }
}

// ==================================================================== malformed ballots

/// A ballot's round and node go together (round 0, the shared fast round, has no node; any
/// other round has one), and no round is beyond `ROUND_MAX` (adding to it must never
/// overflow): anything else is refused wherever a ballot appears.
#[test]
fn malformed_ballots_are_refused_wherever_they_appear() {
    let mut n = node();
    let too_high = classic(ROUND_MAX + 1, "c2");
    let fast_with_node = Ballot {
        round: 0,
        node: Some("c2".into()),
    };
    let classic_without_node = Ballot {
        round: 3,
        node: None,
    };
    let p = proposal("c2", 9, "x");
    for bad in [
        too_high.clone(),
        classic(u64::MAX, "c2"),
        fast_with_node.clone(),
        classic_without_node.clone(),
    ] {
        let cases = vec![
            prepare("o", bad.clone()),
            accept("o", bad.clone(), p.clone()),
            ballot_answer("c2", "o", bad.clone(), Answer::Accepted),
            ballot_answer(
                "c2",
                "o",
                classic(1, "c1"),
                Answer::Nack {
                    promised: bad.clone(),
                    holder: None,
                    folded: false,
                },
            ),
            ballot_answer(
                "c2",
                "o",
                classic(1, "c1"),
                Answer::Promise {
                    accepted: Some((bad.clone(), p.clone())),
                },
            ),
            Message::Response(Response::Query {
                key: "o".into(),
                tag: 0,
                node: "c2".into(),
                state: QueryState::Accepted(bad.clone(), p.clone()),
            }),
            Message::Relay {
                cluster: "c".into(),
                targets: vec!["c2".into()],
                request: match accept("o", bad.clone(), p.clone()) {
                    Message::Request(r) => r,
                    _ => unreachable!(),
                },
            },
            Message::SyncPage {
                after: None,
                entries: vec![],
                floor: bad.clone(),
                seq: 0,
                done: true,
            },
            Message::SyncPage {
                after: None,
                entries: vec![(
                    "o".into(),
                    DurableKey::Open {
                        promised: bad.clone(),
                        accepted: None,
                    },
                )],
                floor: Ballot::FAST,
                seq: 0,
                done: true,
            },
        ];
        for msg in cases {
            assert_rejected(&mut n, "c2", msg, malformed(bad.clone()));
        }
    }
    // ROUND_MAX itself is a ballot a node could have used: promised, not refused.
    let out = deliver(&mut n, "c2", prepare("o", classic(ROUND_MAX, "c2")));
    assert!(matches!(out[..], [Output::Persist { .. }]), "{out:?}");
}

/// Prepare is phase 1 of a classic ballot: a Prepare of the fast round, which nobody runs a
/// phase 1 for, is malformed even though the ballot itself is well formed.
#[test]
fn a_prepare_of_the_fast_round_is_refused() {
    let mut n = node();
    assert_rejected(
        &mut n,
        "c2",
        prepare("o", Ballot::FAST),
        malformed(Ballot::FAST),
    );
}

// ==================================================================== sizes and shapes

#[test]
fn keys_values_and_request_ids_over_the_limits_are_refused() {
    let mut n = node();
    let long_key = "k".repeat(9);
    let invalid = PeerFault::Invalid;
    assert_rejected(
        &mut n,
        "c2",
        prepare("", classic(1, "c2")),
        invalid(Invalid::EmptyKey),
    );
    assert_rejected(
        &mut n,
        "c2",
        prepare(&long_key, classic(1, "c2")),
        invalid(Invalid::KeyTooLong { bytes: 9, max: 8 }),
    );
    let big = proposal("c2", 1, &"v".repeat(17));
    assert_rejected(
        &mut n,
        "c2",
        accept("k", Ballot::FAST, big.clone()),
        invalid(Invalid::ValueTooLong { bytes: 17, max: 16 }),
    );
    assert_rejected(
        &mut n,
        "c2",
        Message::Request(Request::Decide {
            key: "k".into(),
            chosen: big,
        }),
        invalid(Invalid::ValueTooLong { bytes: 17, max: 16 }),
    );
    for (id, bytes) in [("", 0), ("r".repeat(9).as_str(), 9)] {
        let with_id = Proposal {
            request: Some(RequestId::from(id)),
            ..proposal("c2", 1, "v")
        };
        assert_rejected(
            &mut n,
            "c2",
            Message::Request(Request::Decide {
                key: "k".into(),
                chosen: with_id,
            }),
            invalid(Invalid::RequestIdTooLong { bytes, max: 8 }),
        );
    }
    assert_rejected(
        &mut n,
        "c2",
        Message::Response(Response::Read {
            key: "s".into(),
            tag: 1,
            node: "c2".into(),
            state: ReadState::Stored(Value::from("x".repeat(17).as_str())),
        }),
        invalid(Invalid::ValueTooLong { bytes: 17, max: 16 }),
    );
    let digest = n.membership().digest();
    assert_rejected(
        &mut n,
        "c2",
        Message::SyncRequest {
            after: Some(long_key.as_str().into()),
            digest,
        },
        invalid(Invalid::KeyTooLong { bytes: 9, max: 8 }),
    );
    // Pages are checked record by record, before any of them is used.
    let record = DurableKey::Stored {
        chosen: proposal("c2", 1, "v"),
        seq: 1,
    };
    assert_rejected(
        &mut n,
        "c2",
        Message::SyncPage {
            after: None,
            entries: vec![("a".into(), record.clone()), ("".into(), record)],
            floor: Ballot::FAST,
            seq: 1,
            done: true,
        },
        invalid(Invalid::EmptyKey),
    );
    assert_rejected(
        &mut n,
        "c2",
        Message::CatchUpPage {
            entries: vec![
                ("a".into(), proposal("c2", 1, "v")),
                ("b".into(), proposal("c2", 2, &"v".repeat(17))),
            ],
            last: 2,
            latest: 2,
        },
        invalid(Invalid::ValueTooLong { bytes: 17, max: 16 }),
    );
}

/// Every list a peer sends is bounded by the configuration: a longer one is refused whole.
#[test]
fn lists_longer_than_the_configured_bounds_are_refused() {
    let mut n = node();
    let nodes = |count: usize| -> Vec<NodeId> {
        (0..count).map(|i| NodeId::from(format!("c{i}"))).collect()
    };
    let request = Request::Read {
        key: "s".into(),
        tag: 1,
    };
    assert_rejected(
        &mut n,
        "d1",
        Message::Relay {
            cluster: "c".into(),
            targets: nodes(5),
            request,
        },
        PeerFault::RelayTooManyTargets { targets: 5, max: 4 },
    );
    let read = |i: usize| Response::Read {
        key: "s".into(),
        tag: 1,
        node: format!("d{i}").into(),
        state: ReadState::Free,
    };
    assert_rejected(
        &mut n,
        "d1",
        Message::RelayReply {
            cluster: "d".into(),
            responses: (0..5).map(read).collect(),
        },
        PeerFault::RelayReplyTooManyResponses { responses: 5 },
    );
    let record = DurableKey::Stored {
        chosen: proposal("c2", 1, "v"),
        seq: 1,
    };
    assert_rejected(
        &mut n,
        "c2",
        Message::SyncPage {
            after: None,
            entries: ["a", "b", "c"]
                .map(|k| (Key::from(k), record.clone()))
                .to_vec(),
            floor: Ballot::FAST,
            seq: 1,
            done: true,
        },
        PeerFault::SyncPageTooLong { keys: 3 },
    );
    assert_rejected(
        &mut n,
        "c2",
        Message::CatchUpPage {
            entries: ["a", "b", "c"]
                .map(|k| (Key::from(k), proposal("c2", 1, "v")))
                .to_vec(),
            last: 3,
            latest: 3,
        },
        PeerFault::CatchUpPageTooLong { keys: 3 },
    );
    assert_rejected(
        &mut n,
        "c2",
        Message::RemoveCheckReply {
            node: "d2".into(),
            cluster: nodes(5),
        },
        PeerFault::RemoveCheckReplyTooLong { nodes: 5 },
    );
    // At most clusters_max * cluster_nodes_max departed nodes are ever listed.
    let members = (**n.membership()).clone();
    assert_rejected(
        &mut n,
        "c2",
        Message::View {
            members,
            departed: nodes(13),
        },
        PeerFault::ViewTooManyDeparted { departed: 13 },
    );
    let crowded = Membership::from_pairs((0..5).map(|i| member(&format!("e{i}"))));
    assert_rejected(
        &mut n,
        "c2",
        Message::View {
            members: crowded,
            departed: vec![],
        },
        PeerFault::MembershipOverLimits,
    );
}

// ==================================================================== pages

/// A catch-up page says how far it goes (`last`) and how far the member got (`latest`): a
/// page that goes past its own member's newest decision is refused whole.
#[test]
fn a_catch_up_page_out_of_order_is_refused() {
    let mut n = node();
    assert_rejected(
        &mut n,
        "c2",
        Message::CatchUpPage {
            entries: vec![("k".into(), proposal("c2", 1, "v"))],
            last: 5,
            latest: 4,
        },
        PeerFault::CatchUpPageOutOfOrder,
    );
    assert_eq!(n.key_state(&"k".into()), Ok(None));
}

/// A page nobody asked for is not trusted as news: it changes nothing, whoever sends it.
#[test]
fn a_catch_up_page_nobody_asked_for_is_ignored() {
    let mut n = node();
    assert_ignored(
        &mut n,
        "c2",
        Message::CatchUpPage {
            entries: vec![("k".into(), proposal("c2", 1, "v"))],
            last: 1,
            latest: 1,
        },
    );
}

/// A joiner merges a page only if its keys come after every key copied from that member so
/// far, in order: a page out of order is refused before anything of it is merged.
#[test]
fn a_sync_page_out_of_key_order_is_refused_before_any_of_it_is_merged() {
    let mut n = joiner();
    let record = |value: &str| DurableKey::Stored {
        chosen: proposal("c3", 1, value),
        seq: 1,
    };
    // "k1" goes after "k3" in key order (hash, then text: see exact_outputs.rs).
    let (first, second) = (Key::from("k3"), Key::from("k1"));
    assert!(first < second);
    assert_rejected(
        &mut n,
        "c2",
        Message::SyncPage {
            after: None,
            entries: vec![(second.clone(), record("a")), (first.clone(), record("b"))],
            floor: Ballot::FAST,
            seq: 1,
            done: false,
        },
        PeerFault::SyncPageOutOfOrder,
    );
    // In order, it is merged; a later page must go on after its last key.
    deliver(
        &mut n,
        "c2",
        Message::SyncPage {
            after: None,
            entries: vec![(first.clone(), record("b")), (second.clone(), record("a"))],
            floor: Ballot::FAST,
            seq: 1,
            done: false,
        },
    );
    assert!(matches!(n.key_state(&second), Ok(Some(_))));
    assert_rejected(
        &mut n,
        "c2",
        Message::SyncPage {
            after: Some(second.clone()),
            entries: vec![(first, record("b"))],
            floor: Ballot::FAST,
            seq: 1,
            done: true,
        },
        PeerFault::SyncPageOutOfOrder,
    );
}

/// A page that answers an earlier request than the one outstanding (its `after` says which):
/// a duplicate, or the late answer to a request asked again after a timeout. It is ignored,
/// not blamed on the member: only a page that answers the current request and goes back in
/// key order is a peer fault.
#[test]
fn a_late_or_duplicated_sync_page_is_ignored_not_blamed() {
    let mut n = joiner();
    let record = |value: &str| DurableKey::Stored {
        chosen: proposal("c3", 1, value),
        seq: 1,
    };
    let (first, second) = (Key::from("k3"), Key::from("k1"));
    let page = Message::SyncPage {
        after: None,
        entries: vec![(first.clone(), record("b")), (second.clone(), record("a"))],
        floor: Ballot::FAST,
        seq: 1,
        done: false,
    };
    let out = deliver(&mut n, "c2", page.clone());
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Send { msg: Message::SyncRequest { after: Some(a), .. }, .. } if *a == second
        )),
        "the next page is asked for: {out:?}"
    );
    assert_ignored(&mut n, "c2", page);
}

/// Pages from a member the joiner is not copying from, or to a node that is not joining,
/// are ignored: only the member asked is heard.
#[test]
fn sync_pages_nobody_asked_for_are_ignored() {
    let page = Message::SyncPage {
        after: None,
        entries: vec![(
            "k".into(),
            DurableKey::Stored {
                chosen: proposal("c3", 1, "x"),
                seq: 1,
            },
        )],
        floor: classic(7, "c3"),
        seq: 1,
        done: true,
    };
    let mut j = joiner();
    assert_ignored(&mut j, "c3", page.clone());
    let mut n = node();
    assert_ignored(&mut n, "c2", page);
}

// ==================================================================== strangers

/// Only members take part: a request or a relay from a node outside the membership is
/// refused, and an answer naming a stranger counts for nothing.
#[test]
fn requests_and_relays_from_non_members_are_refused() {
    let mut n = node();
    let d = members_digest();
    assert_eq!(d, n.membership().digest());
    assert_rejected(
        &mut n,
        "x9",
        prepare("o", classic(9, "x9")),
        PeerFault::RequestFromNonMember,
    );
    assert_rejected(
        &mut n,
        "x9",
        accept("k", Ballot::FAST, proposal("x9", 1, "v")),
        PeerFault::RequestFromNonMember,
    );
    assert_rejected(
        &mut n,
        "x9",
        Message::Request(Request::Decide {
            key: "k".into(),
            chosen: proposal("x9", 1, "v"),
        }),
        PeerFault::RequestFromNonMember,
    );
    assert_rejected(
        &mut n,
        "x9",
        Message::Request(Request::Query {
            key: "k".into(),
            tag: 1,
            digest: d,
        }),
        PeerFault::RequestFromNonMember,
    );
    assert_rejected(
        &mut n,
        "x9",
        Message::Relay {
            cluster: "c".into(),
            targets: vec!["c2".into()],
            request: Request::Read {
                key: "s".into(),
                tag: 1,
            },
        },
        PeerFault::RelayFromNonMember,
    );
    // A member asking this node to relay for cluster d: a representative relays only in its
    // own cluster.
    assert_rejected(
        &mut n,
        "d1",
        Message::Relay {
            cluster: "d".into(),
            targets: vec!["d2".into()],
            request: Request::Read {
                key: "s".into(),
                tag: 1,
            },
        },
        PeerFault::RelayForAnotherCluster {
            cluster: "d".into(),
            at: "c1".into(),
            ours: "c".into(),
        },
    );
    // Membership messages from strangers are not heard at all.
    for msg in [
        Message::Removed { node: "c2".into() },
        Message::Removed { node: "c1".into() },
        Message::View {
            members: Membership::from_pairs([member("c1"), member("x9")]),
            departed: vec!["c2".into()],
        },
        Message::LeaveCheck { seq: 0 },
        Message::LeaveClear { seq: u64::MAX },
        Message::RemoveCheck { node: "c2".into() },
    ] {
        assert_ignored(&mut n, "x9", msg);
    }
}

/// Answers to a ballot this node is not running, or to a read it is not waiting for, and
/// answers that name a node other than their sender, change nothing.
#[test]
fn unsolicited_and_misattributed_answers_are_ignored() {
    let mut n = node();
    assert_ignored(
        &mut n,
        "c2",
        ballot_answer("c2", "k", classic(1, "c1"), Answer::Accepted),
    );
    assert_ignored(
        &mut n,
        "c2",
        ballot_answer(
            "c2",
            "k",
            classic(1, "c1"),
            Answer::Promise { accepted: None },
        ),
    );
    assert_ignored(
        &mut n,
        "c2",
        Message::Response(Response::Query {
            key: "k".into(),
            tag: 0,
            node: "c2".into(),
            state: QueryState::Nothing,
        }),
    );
    assert_ignored(
        &mut n,
        "c2",
        Message::Response(Response::Read {
            key: "k".into(),
            tag: 0,
            node: "c2".into(),
            state: ReadState::Free,
        }),
    );
    // A read is waiting: c2 answers in c3's name. Not counted (c3 did not say so).
    n.handle(
        Time::from_millis(1),
        Input::Client {
            call: CallId(1),
            cmd: Command::Get { key: "k".into() },
        },
    );
    drain(&mut n);
    assert_ignored(
        &mut n,
        "c2",
        Message::Response(Response::Query {
            key: "k".into(),
            tag: 0,
            node: "c3".into(),
            state: QueryState::Nothing,
        }),
    );
    assert_eq!(n.stats().reads_waiting, 1);
    assert_ignored(&mut n, "c2", Message::LeaveClear { seq: 9 });
    assert_ignored(
        &mut n,
        "c2",
        Message::RemoveCheckReply {
            node: "d2".into(),
            cluster: vec![],
        },
    );
}

/// A read's question is matched to its answers by tag, and tags count from 0 again after a
/// restart: an answer about another key (one that outlived a restart in the network, or a
/// lie) can carry the tag of a read waiting now. It says nothing about this read's key: it
/// is neither a value for it nor a vote for "unknown".
#[test]
fn a_query_answer_about_another_key_does_not_answer_a_read() {
    let mut n = node();
    n.handle(
        Time::from_millis(1),
        Input::Client {
            call: CallId(1),
            cmd: Command::Get { key: "k".into() },
        },
    );
    drain(&mut n);
    let about_j = |state| {
        Message::Response(Response::Query {
            key: "j".into(),
            tag: 0,
            node: "c2".into(),
            state,
        })
    };
    // With c1's own "nothing", c2's would make a majority of c: "unknown" for k.
    assert_ignored(&mut n, "c2", about_j(QueryState::Nothing));
    assert_ignored(
        &mut n,
        "c2",
        about_j(QueryState::Stored(proposal("c2", 3, "x"))),
    );
    assert_eq!(n.key_state(&"k".into()), Ok(None));
    assert_eq!(n.stats().reads_waiting, 1);
    // The answer about k itself still counts.
    let out = deliver(
        &mut n,
        "c2",
        Message::Response(Response::Query {
            key: "k".into(),
            tag: 0,
            node: "c2".into(),
            state: QueryState::Nothing,
        }),
    );
    assert!(
        matches!(
            &out[..],
            [Output::Reply {
                call: CallId(1),
                reply: Reply::Get(GetOutcome::Unknown)
            }]
        ),
        "{out:?}"
    );
}

// ==================================================================== lies about decisions

/// A decision contradicting the one held here is never stored: it is reported as a
/// violation (two values chosen for one key), and nothing changes.
#[test]
fn a_second_decision_for_a_stored_key_is_a_violation_and_changes_nothing() {
    let mut n = node();
    let before = snapshot(&n);
    let told = proposal("c3", 7, "other");
    let out = deliver(
        &mut n,
        "c3",
        Message::Request(Request::Decide {
            key: "s".into(),
            chosen: told.clone(),
        }),
    );
    let expected = Note::Violation {
        reason: Violation::TwoDecisions {
            key: "s".into(),
            stored: pid("c2", 1),
            told: pid("c3", 7),
            from: "c3".into(),
            at: "c1".into(),
        },
    };
    assert!(
        matches!(&out[..], [Output::Note(note)] if *note == expected),
        "{out:?}"
    );
    assert_eq!(snapshot(&n), before);
    // The same value again is no news: silence.
    assert_ignored(
        &mut n,
        "c3",
        Message::Request(Request::Decide {
            key: "s".into(),
            chosen: proposal("c2", 1, "v"),
        }),
    );
}

/// A catch-up page (asked for) carrying a decision that contradicts one held here: the
/// violation is reported and the key keeps its decision (the page's other decisions, and how
/// far the pull got, are kept: they are not in question).
#[test]
fn a_pulled_decision_contradicting_one_held_is_a_violation_and_is_not_stored() {
    let mut n = node();
    let due = n.poll_timeout().expect("a catch-up at start");
    n.handle(due, Input::Timeout);
    drain(&mut n);
    let page = Message::CatchUpPage {
        entries: vec![
            ("s".into(), proposal("c3", 7, "other")),
            ("k".into(), proposal("c3", 8, "new")),
        ],
        last: 2,
        latest: 2,
    };
    let out = deliver(&mut n, "c2", page);
    let expected = Note::Violation {
        reason: Violation::TwoDecisions {
            key: "s".into(),
            stored: pid("c2", 1),
            told: pid("c3", 7),
            from: "c2".into(),
            at: "c1".into(),
        },
    };
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Note(note) if *note == expected)),
        "{out:?}"
    );
    assert_eq!(
        n.key_state(&"s".into())
            .ok()
            .flatten()
            .and_then(|s| s.stored().cloned()),
        Some(proposal("c2", 1, "v"))
    );
    assert_eq!(
        n.key_state(&"k".into())
            .ok()
            .flatten()
            .and_then(|s| s.stored().cloned()),
        Some(proposal("c3", 8, "new").clone())
    );
}

/// A Stored answer naming another value for a key decided here (a late or lying answer to a
/// ballot long over) changes nothing: no proposer waits for it, and it is not a decision.
#[test]
fn a_stored_answer_contradicting_a_decision_held_here_is_ignored() {
    let mut n = node();
    assert_ignored(
        &mut n,
        "c3",
        ballot_answer(
            "c3",
            "s",
            classic(1, "c1"),
            Answer::Stored {
                chosen: proposal("c3", 7, "other"),
            },
        ),
    );
    assert_eq!(
        n.key_state(&"s".into())
            .ok()
            .flatten()
            .and_then(|s| s.stored().cloned()),
        Some(proposal("c2", 1, "v"))
    );
}

/// A joiner copying a decision that contradicts one it holds already (copied from another
/// member) keeps its own and reports the violation.
#[test]
fn a_copied_decision_contradicting_one_held_is_a_violation_and_is_not_stored() {
    let mut n = joiner();
    let held = proposal("c3", 1, "v");
    let stored = |chosen: Proposal| DurableKey::Stored { chosen, seq: 1 };
    let page = |entries: Vec<(Key, DurableKey)>, done| Message::SyncPage {
        after: None,
        entries,
        floor: Ballot::FAST,
        seq: 1,
        done,
    };
    deliver(
        &mut n,
        "c2",
        page(vec![("k".into(), stored(held.clone()))], true),
    );
    // c2's copy is complete; j1 asks a second member.
    n.handle(Time::from_millis(2), Input::Timeout);
    let next = drain(&mut n)
        .into_iter()
        .find_map(|o| match o {
            Output::Send {
                to,
                msg: Message::SyncRequest { after: None, .. },
            } => Some(to),
            _ => None,
        })
        .expect("a second member is asked");
    let told = proposal("c2", 9, "other");
    let out = deliver(
        &mut n,
        next.as_str(),
        page(vec![("k".into(), stored(told.clone()))], false),
    );
    let expected = Note::Violation {
        reason: Violation::TwoDecisions {
            key: "k".into(),
            stored: held.p.clone(),
            told: told.p,
            from: next.clone(),
            at: "j1".into(),
        },
    };
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Note(note) if *note == expected)),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Persist { .. })),
        "{out:?}"
    );
    assert_eq!(
        n.key_state(&"k".into())
            .ok()
            .flatten()
            .and_then(|s| s.stored().cloned()),
        Some(held.clone())
    );
}

// ==================================================================== answers that must not count

/// Node c1 runs the fast round of `k`, its own Accept durable and counted: it waits for
/// c2, c3, d1 and d2.
fn running_fast_round() -> (Node, ProposalId) {
    let mut n = node();
    let t = Time::from_millis(1);
    n.handle(
        t,
        Input::Client {
            call: CallId(1),
            cmd: Command::Put {
                key: "k".into(),
                value: "v".into(),
                request: None,
            },
        },
    );
    for write in 1..=2 {
        drain(&mut n);
        n.handle(
            t,
            Input::Persisted {
                upto: WriteId(write),
            },
        );
    }
    let out = drain(&mut n);
    assert!(out.is_empty(), "{out:?}");
    (n, pid("c1", 0))
}

/// `node`'s Accepted of `p` at ballot 0 for `k`, given in the membership of `digest`.
fn accepted_by(node: &str, p: &ProposalId, digest: Digest) -> Message {
    Message::Response(Response::Ballot {
        key: "k".into(),
        ballot: Ballot::FAST,
        proposal: Some(p.clone()),
        node: node.into(),
        digest,
        answer: Answer::Accepted,
    })
}

fn decided(out: &[Output]) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Note(Note::Decided { .. })))
}

/// The fast round needs every participant: an Accepted from a node outside the ballot's
/// participants (a stranger, whether it sends it itself or a member relays it) counts for
/// nothing.
#[test]
fn accepted_answers_from_non_participants_do_not_count() {
    let (mut n, p) = running_fast_round();
    let d = members_digest();
    assert_eq!(d, n.membership().digest());
    for node in ["c2", "c3", "d1"] {
        assert!(!decided(&deliver(&mut n, node, accepted_by(node, &p, d))));
    }
    // A stranger answers for itself, then a member relays a stranger's answer.
    assert_ignored(&mut n, "x9", accepted_by("x9", &p, d));
    let relayed = Message::RelayReply {
        cluster: "d".into(),
        responses: vec![match accepted_by("x8", &p, d) {
            Message::Response(r) => r,
            _ => unreachable!(),
        }],
    };
    let out = deliver(&mut n, "d1", relayed);
    assert!(!decided(&out), "{out:?}");
    assert_eq!(n.stats().puts_in_flight, 1);
    // d2, a participant, answers: everyone accepted.
    assert!(decided(&deliver(&mut n, "d2", accepted_by("d2", &p, d))));
}

/// An acceptor answers in the membership it is in, and accepts only a request of its own
/// membership: an Accepted or a Promise given in another membership (by its digest) is not a
/// vote in this ballot's, whose quorums are counted in this one.
#[test]
fn answers_given_in_another_membership_do_not_count() {
    let (mut n, p) = running_fast_round();
    let d = members_digest();
    assert_eq!(d, n.membership().digest());
    let other = Digest(d.0 ^ 1);
    for node in ["c2", "c3", "d1"] {
        deliver(&mut n, node, accepted_by(node, &p, d));
    }
    let out = deliver(&mut n, "d2", accepted_by("d2", &p, other));
    assert!(
        !decided(&out),
        "an answer in another membership decided: {out:?}"
    );
    assert!(decided(&deliver(&mut n, "d2", accepted_by("d2", &p, d))));
}

// ==================================================================== arbitrary messages

/// Gives every request and answer in `msg` the digest `d` (so that generated requests get
/// past the membership check and reach the acceptor, the proposer and the reader).
fn with_digest(msg: Message, d: Digest) -> Message {
    fn request(r: Request, d: Digest) -> Request {
        match r {
            Request::Prepare { key, ballot, .. } => Request::Prepare {
                key,
                ballot,
                digest: d,
            },
            Request::Accept {
                key,
                ballot,
                proposal,
                ..
            } => Request::Accept {
                key,
                ballot,
                proposal,
                digest: d,
            },
            Request::Query { key, tag, .. } => Request::Query {
                key,
                tag,
                digest: d,
            },
            other => other,
        }
    }
    fn response(r: Response, d: Digest) -> Response {
        match r {
            Response::Ballot {
                key,
                ballot,
                proposal,
                node,
                answer,
                ..
            } => Response::Ballot {
                key,
                ballot,
                proposal,
                node,
                digest: d,
                answer,
            },
            other => other,
        }
    }
    match msg {
        Message::Request(r) => Message::Request(request(r, d)),
        Message::Response(r) => Message::Response(response(r, d)),
        Message::Relay {
            cluster,
            targets,
            request: r,
        } => Message::Relay {
            cluster,
            targets,
            request: request(r, d),
        },
        Message::RelayReply { cluster, responses } => Message::RelayReply {
            cluster,
            responses: responses.into_iter().map(|r| response(r, d)).collect(),
        },
        other => other,
    }
}

/// A node with something of everything going on: a decision, an undecided accepted value, a
/// fast round waiting for answers, and a read waiting for its cluster.
fn busy_node() -> Node {
    let (mut n, _) = running_fast_round();
    n.handle(
        Time::from_millis(1),
        Input::Client {
            call: CallId(2),
            cmd: Command::Get { key: "o".into() },
        },
    );
    drain(&mut n);
    n
}

/// Whether a rejected input left traces: anything but the rejection itself (and the notice a
/// departed sender gets whatever it sends).
fn traces_of_rejected(out: &[Output], sender: &NodeId) -> Vec<String> {
    out.iter()
        .filter(|o| match o {
            Output::Note(Note::PeerInputRejected { .. }) => false,
            Output::Send {
                to,
                msg: Message::Removed { node },
            } => !(to == sender && node == sender),
            _ => true,
        })
        .map(|o| format!("{o:?}"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever members and strangers send, in whatever order, a node never panics; and an
    /// input it rejects as a peer fault changes nothing at all. (A view is exempt from the
    /// second half: it is merged node by node, and a bad node in it is rejected alone.)
    #[test]
    fn arbitrary_messages_never_panic_and_rejected_ones_change_nothing(
        joining in any::<bool>(),
        inputs in proptest::collection::vec(
            (
                proptest::sample::select(&["c2", "c3", "d1", "d2", "x9"][..]),
                strategies::arb_message(),
                any::<bool>(),
            ),
            1..12,
        ),
    ) {
        let mut n = if joining { joiner() } else { busy_node() };
        let d = n.membership().digest();
        for (i, (sender, msg, right_digest)) in inputs.into_iter().enumerate() {
            let msg = if right_digest { with_digest(msg, d) } else { msg };
            let is_view = matches!(msg, Message::View { .. });
            let before = snapshot(&n);
            n.handle(
                Time::from_millis(1 + i as u64),
                Input::Message { from: sender.into(), msg: msg.clone() },
            );
            let out = drain(&mut n);
            let rejected = out
                .iter()
                .any(|o| matches!(o, Output::Note(Note::PeerInputRejected { .. })));
            if rejected && !is_view {
                let traces = traces_of_rejected(&out, &sender.into());
                prop_assert!(traces.is_empty(), "{:?} rejected but left {:?}", msg, traces);
                prop_assert_eq!(snapshot(&n), before, "{:?}", msg);
            }
            // Keep the node's writes flowing, as a driver would.
            if let Some(upto) = out.iter().rev().find_map(|o| match o {
                Output::Persist { write, .. } => Some(*write),
                _ => None,
            }) {
                n.handle(Time::from_millis(1 + i as u64), Input::Persisted { upto });
                drain(&mut n);
            }
        }
    }
}
