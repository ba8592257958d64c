//! Adversarial scenarios: each test is named after the fault it injects and asserts what
//! core/PROTOCOL.md requires. Tests marked `#[ignore = "BUG: ..."]` expose a bug of the core; they
//! are kept (ignored) so the suite stays green until it is fixed.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::*;
use replicator_core::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn left_complete(h: &Harness, id: &str) -> bool {
    h.notes
        .iter()
        .any(|(who, note)| *who == n(id) && matches!(note, Note::LeaveComplete))
}

fn is_reserve(m: &InFlight) -> bool {
    is_request(&m.msg, |r| matches!(r, Request::Reserve { .. }))
}

/// Takes every vote addressed to `to` out of the network.
fn take_votes_to(h: &mut Harness, to: &str) -> Vec<(ProposalId, NodeId, Vote)> {
    let mut out = Vec::new();
    let mut rest = std::collections::VecDeque::new();
    for m in h.net.drain(..) {
        match (&m.msg, m.to == n(to)) {
            (Message::Response(Response::Vote { p, node, vote, .. }), true) => {
                out.push((p.clone(), node.clone(), vote.clone()));
            }
            _ => rest.push_back(m),
        }
    }
    h.net = rest;
    out
}

fn pid(coordinator: &str, counter: u64) -> ProposalId {
    ProposalId {
        coordinator: n(coordinator),
        counter,
    }
}

fn reserve_msg(h: &Harness, at: &str, p: &ProposalId, key: &str, value: &str) -> Message {
    Message::Request(Request::Reserve {
        p: p.clone(),
        key: k(key),
        value: v(value),
        digest: h.node(at).membership().digest(),
    })
}

/// Agreement and "one outcome per proposal" over everything the harness saw.
fn assert_agreement(h: &Harness, keys: &[&str]) {
    for key in keys {
        let mut stored: BTreeMap<ProposalId, Value> = BTreeMap::new();
        for s in h.states(key).values().flatten() {
            if let DurableKey::Stored { p, value } = s {
                stored.insert(p.clone(), value.clone());
            }
        }
        for slot in h.slots.values() {
            for (kk, s) in &slot.disk.keys {
                if kk == &k(key)
                    && let DurableKey::Stored { p, value } = s
                {
                    stored.insert(p.clone(), value.clone());
                }
            }
        }
        assert!(
            stored.len() <= 1,
            "key {key}: two proposals stored: {stored:?}"
        );
    }
    let mut outcome: BTreeMap<ProposalId, bool> = BTreeMap::new();
    for (id, note) in &h.notes {
        if let Note::Decided { p, committed, .. } = note
            && let Some(prev) = outcome.insert(p.clone(), *committed)
        {
            assert_eq!(
                prev,
                *committed,
                "{p} decided both ways (last at {id}): {:?}",
                h.decisions(p)
            );
        }
    }
    // A proposal stored anywhere was never decided aborted anywhere.
    for slot in h.slots.values() {
        for s in slot.disk.keys.values() {
            if let DurableKey::Stored { p, .. } = s {
                assert_ne!(
                    outcome.get(p),
                    Some(&false),
                    "{p} stored but decided aborted"
                );
            }
        }
    }
    assert!(h.violations().is_empty(), "{:?}", h.violations());
}

// ==================================================================== graceful leave

/// The leaving node's confirmation round hears a `Granted` from a peer that had not yet
/// received the Commit; that stale vote must not keep the leave from ever completing.
#[test]
// Regression: BUG found in review at 4868043/b3a1a85 (a Granted vote heard after a leaving node's decision is kept and never re-asked, so LeaveComplete never comes); fixed in 881cd99.
fn leave_with_peer_missing_commit_hears_stale_granted_and_still_completes() {
    let mut h = Harness::new(2, 3);
    let call = h.put("a1", "k", "v");
    // The commit reaches neither b2 (which then leaves) nor b3.
    h.deliver_all_dropping(|m| is_commit(m) && (m.to == n("b2") || m.to == n("b3")));
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    for id in ["b2", "b3"] {
        assert!(matches!(
            h.node(id).key_state(&k("k")),
            Some(DurableKey::Reserved { .. })
        ));
    }
    h.input(&n("b2"), Input::Leave);
    h.run_for(Duration::from_secs(5));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert!(
        left_complete(&h, "b2"),
        "b2 never completed its leave: {:?}",
        h.node("b2").stats()
    );
    assert_agreement(&h, &["k"]);
}

/// The leaving node has more open reservations than it may resolve at once; one of them is
/// then decided by a Commit that arrives while no resolution of it runs here. The leave must
/// still complete once nothing is open.
#[test]
// Regression: BUG found in review at 4868043/b3a1a85 (a reservation decided by an incoming Commit while its resolve was postponed (no room) never triggers LeaveComplete); fixed in 881cd99.
fn leave_with_more_reservations_than_resolution_slots_still_completes() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            resolutions_max: 1,
            ..config()
        },
    );
    let c1 = h.put("a1", "k1", "v");
    h.deliver_all_dropping(|m| is_commit(m) && m.to == n("b2"));
    let c2 = h.put("a1", "k2", "v");
    let held = h.run_for_holding(ms(1), |m| is_commit(m) && m.to == n("b2"));
    assert_eq!(put_reply(&h, c1), Some(PutOutcome::Stored));
    assert_eq!(put_reply(&h, c2), Some(PutOutcome::Stored));
    assert_eq!(h.node("b2").stats().reservations_open, 2);
    h.input(&n("b2"), Input::Leave);
    // k1's resolution runs (and finishes); k2's waits for room.
    h.run_for(ms(100));
    assert!(h.node("b2").stats().reservations_open <= 1);
    // Now the Commit of k2 arrives.
    for m in held {
        h.deliver(m);
    }
    h.deliver_all();
    assert_eq!(h.node("b2").stats().reservations_open, 0);
    h.run_for(Duration::from_secs(3));
    assert!(h.stored_everywhere("k1", "v") && h.stored_everywhere("k2", "v"));
    assert!(
        left_complete(&h, "b2"),
        "b2 never completed its leave: {:?}",
        h.node("b2").stats()
    );
}

/// Leave with every peer up and the commit lost only to the leaver: the plain case.
#[test]
fn leave_with_only_the_leaver_missing_commit_completes() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v");
    h.deliver_all_dropping(|m| is_commit(m) && m.to == n("c3"));
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    h.input(&n("c3"), Input::Leave);
    h.run_for(Duration::from_secs(3));
    assert!(left_complete(&h, "c3"));
    h.remove("c3", true);
    // After the goodbye, writes succeed with the smaller membership.
    let c = h.put("b1", "k2", "w");
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("k2", "w"));
    assert!(h.stored_everywhere("k", "v"));
    assert_agreement(&h, &["k", "k2"]);
}

/// A node that stores a commit nobody else (but the now-dead coordinator) has learned says
/// goodbye; afterwards Resolve counts it as Fenced and aborts a proposal that was committed
/// and acknowledged Stored to its client.
#[test]
// Regression: BUG found in review at 4868043/b3a1a85 (a leaving node that stores P leaves while P is still open elsewhere; Resolve then counts it Fenced and aborts a committed P); fixed in 881cd99.
fn leaver_that_alone_stored_a_commit_says_goodbye_while_coordinator_is_down() {
    let mut h = Harness::new(2, 3);
    let call = h.put("a1", "k", "v");
    // Every Commit sent over the network is lost; a1 stored its own.
    h.deliver_all_dropping(is_commit);
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    let p = h.proposal_at("a1", "k").expect("a1 holds p");
    // One Commit made it to b2 after all.
    h.inject(
        "a1",
        "b2",
        Message::Request(Request::Commit {
            p: p.clone(),
            key: k("k"),
        }),
    );
    assert!(h.node("b2").key_state(&k("k")).unwrap().is_stored());
    // The coordinator dies; b2 leaves gracefully (it holds no reservation) and says goodbye.
    h.crash("a1");
    h.input(&n("b2"), Input::Leave);
    h.run_for(ms(500));
    let b2_left = left_complete(&h, "b2");
    if b2_left {
        h.remove("b2", true);
    }
    h.run_for(Duration::from_secs(3));
    // The client was told Stored: p must never be aborted, and no read may miss the value.
    let aborted: Vec<_> = h.decisions(&p).into_iter().filter(|(_, c)| !c).collect();
    assert!(
        aborted.is_empty(),
        "committed {p} was aborted by {aborted:?} (b2 left: {b2_left}); states {:?}",
        h.states("k")
    );
    let g = h.get("a2", "k");
    h.run_for(ms(200));
    assert_ne!(get_reply(&h, g), Some(GetOutcome::Unknown));
    h.restart("a1");
    h.run_for(Duration::from_secs(3));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_agreement(&h, &["k"]);
}

/// The same hole without any crash: the coordinator decides, its Commits are lost, and it
/// leaves gracefully at once (its own copy is Stored, so it holds no reservation). After its
/// goodbye every resolver counts it Fenced and aborts the proposal its client was told Stored.
#[test]
// Regression: BUG found in review at 4868043/b3a1a85 (a coordinator whose Commits were lost leaves at once (it holds no reservation); resolvers then abort its committed proposal); fixed in 881cd99.
fn coordinator_leaves_right_after_commit_with_its_commits_lost() {
    let mut h = Harness::new(2, 3);
    let call = h.put("a1", "k", "v");
    h.deliver_all_dropping(is_commit);
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    let p = h.proposal_at("a1", "k").unwrap();
    h.input(&n("a1"), Input::Leave);
    h.run_for(ms(300));
    if left_complete(&h, "a1") {
        h.remove("a1", true);
    }
    h.run_for(Duration::from_secs(3));
    let aborted: Vec<_> = h.decisions(&p).into_iter().filter(|(_, c)| !c).collect();
    assert!(
        aborted.is_empty(),
        "committed {p} aborted by {aborted:?}; states {:?}",
        h.states("k")
    );
    let g = h.get("b3", "k");
    h.run_for(ms(200));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
}

/// A leaving node stops granting: a PUT that needs its vote is refused and has no effect,
/// and the leave still completes.
#[test]
fn reserve_reaching_a_leaving_node_is_refused_and_leave_completes() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            busy_retries_max: 0,
            ..config()
        },
    );
    h.input(&n("b3"), Input::Leave);
    h.run_for(ms(500));
    assert!(left_complete(&h, "b3"));
    let c = h.put("a1", "k", "v");
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Busy));
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    assert!(h.states("k").values().all(Option::is_none));
    let write = h.put("b3", "k2", "x");
    assert_eq!(
        put_reply(&h, write),
        Some(PutOutcome::NotReady(NotReady::Leaving))
    );
}

// ==================================================================== membership

/// An operator removes a node that never answered, while a proposal waits on it: the
/// proposal aborts (the removed node counts as fenced); nothing is granted while the removal
/// settles (the removed node's read lease may still run), and the PUT, refused only by the
/// settling, keeps trying (no Busy retry spent) and stores the value under the new membership.
#[test]
fn node_removed_while_proposal_waits_on_it_aborts_then_retry_stores_once_settled() {
    let mut h = Harness::new(2, 3);
    h.crash("b3");
    let c = h.put("a1", "k", "v");
    h.run_for(ms(100));
    assert_eq!(put_reply(&h, c), None);
    let p1 = h
        .proposal_at("a1", "k")
        .expect("a1 granted its own proposal");
    h.remove("b3", false);
    let settle = h.config.read_lease * 2;
    h.run_for(settle - ms(100));
    assert_eq!(
        put_reply(&h, c),
        None,
        "still trying while the removal settles"
    );
    assert!(h.states("k").values().all(Option::is_none));
    h.run_for(ms(800));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert!(h.decisions(&p1).iter().all(|(_, c)| !c));
    assert_eq!(h.reservations_left(), 0);
    assert_agreement(&h, &["k"]);
}

/// An operator removes a dead node through a member that holds no reservation naming it (a
/// node that joined after the proposal and copied its committed value), while every other
/// live member still holds a reservation of a committed proposal that the dead node granted.
/// core/PROTOCOL.md: the tool refuses while any reservation names that node unless forced.
/// Once, the check looked only at the entry node and the resolvers then counted the dead node
/// Fenced and aborted a proposal whose client was told Stored; the removal now asks every
/// member (`RemoveCheck`), so the committed proposal is never aborted and the key stays
/// readable.
#[test]
fn operator_removal_through_a_node_without_reservations_never_aborts_a_committed_proposal() {
    let mut h = Harness::new(2, 3);
    let call = h.put("a1", "k", "v");
    h.deliver_all_dropping(is_commit);
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    let p = h.proposal_at("a1", "k").unwrap();
    h.inject(
        "a1",
        "b3",
        Message::Request(Request::Commit {
            p: p.clone(),
            key: k("k"),
        }),
    );
    // a4 joins and copies from a1, which stores the value.
    h.join("a", "a4");
    h.run_for(ms(100));
    assert!(h.node("a4").is_ready());
    assert!(h.node("a4").key_state(&k("k")).unwrap().is_stored());
    // The two nodes that store p die; the operator removes b3 through a4.
    h.crash("a1");
    h.crash("b3");
    let remove = CallId(777_000);
    h.input(
        &n("a4"),
        Input::Client {
            call: remove,
            cmd: Command::RemoveNode {
                node: n("b3"),
                force: false,
            },
        },
    );
    let answer = h.reply(remove).cloned();
    h.run_for(Duration::from_secs(3));
    let aborted: Vec<_> = h.decisions(&p).into_iter().filter(|(_, c)| !c).collect();
    assert!(
        aborted.is_empty(),
        "removal answered {answer:?}; committed {p} aborted by {aborted:?}; states {:?}",
        h.states("k")
    );
    let g = h.get("a2", "k");
    h.run_for(ms(200));
    assert_ne!(get_reply(&h, g), Some(GetOutcome::Unknown));
}

/// A node that learned of a removal later than the others keeps refusing (digest) until it
/// hears of it; nothing is stored meanwhile, and afterwards writes succeed.
#[test]
fn removal_heard_late_by_one_node_pauses_writes_safely() {
    let mut h = Harness::new(2, 3);
    h.crash("b3");
    // Everyone but a2 hears that b3 was removed.
    h.slots.remove(&n("b3"));
    for id in ["a1", "a3", "b1", "b2"] {
        h.input(
            &n(id),
            Input::NodeRemoved {
                node: n("b3"),
                goodbye: false,
            },
        );
    }
    let c = h.put("a1", "k", "v");
    h.run_for(Duration::from_secs(1));
    // Refused by a2's digest on every attempt (a refusal that ends by itself: the PUT keeps
    // trying until its deadline), and nothing is stored meanwhile.
    assert!(matches!(put_reply(&h, c), None | Some(PutOutcome::Busy)));
    assert!(h.states("k").values().all(Option::is_none));
    h.input(
        &n("a2"),
        Input::NodeRemoved {
            node: n("b3"),
            goodbye: false,
        },
    );
    // a2 now settles too, which ends about when the first PUT's deadline does: it stores if
    // an attempt fits in before, else answers Busy (every attempt was refused). A fresh PUT
    // after that stores.
    h.run_for(h.config.read_lease * 2 + ms(200));
    let first = put_reply(&h, c);
    match first {
        Some(PutOutcome::Stored) => assert!(h.stored_everywhere("k", "v")),
        Some(PutOutcome::Busy) => assert!(h.states("k").values().all(Option::is_none)),
        other => panic!("{other:?}"),
    }
    let c = h.put("a1", "k2", "v");
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("k2", "v"));
    assert_agreement(&h, &["k", "k2"]);
}

// ==================================================================== join-time copy

/// A node joins while a committed proposal's Commit is still missing everywhere but at its
/// (crashed) coordinator: it copies the reservation, waits for it to be decided, and then
/// serves the committed value.
#[test]
fn joiner_copies_reservation_of_committed_proposal_while_coordinator_is_down() {
    let mut h = Harness::new(2, 3);
    let c = h.put("a1", "k", "v");
    h.deliver_all_dropping(is_commit);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    h.crash("a1");
    h.join("b", "b4");
    let early = h.get("b4", "k");
    assert_eq!(
        get_reply(&h, early),
        Some(GetOutcome::NotReady(NotReady::Joining))
    );
    h.run_for(Duration::from_secs(3));
    // a1 is down: the copied reservation cannot be decided, so b4 must not be ready yet.
    assert!(!h.node("b4").is_ready());
    h.restart("a1");
    h.run_for(Duration::from_secs(5));
    assert!(h.node("b4").is_ready());
    let g = h.get("b4", "k");
    h.run_for(ms(100));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_eq!(h.reservations_left(), 0);
    assert_agreement(&h, &["k"]);
}

/// A proposal granted under the old membership commits while a node joins; its commit
/// messages are held until the joiner's copy is done, then delivered (and duplicated).
#[test]
fn joiner_copy_races_commit_of_old_membership_proposal() {
    let mut h = Harness::new(2, 3);
    let c = h.put("a1", "k", "v");
    let mut held = h.run_for_holding(ms(10), is_commit);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    h.join("b", "b4");
    // b4's first source (a1) never answers it, so it copies from another node that still
    // holds the reservation.
    held.extend(h.run_for_holding(ms(2500), |m| {
        is_commit(m) || (m.from == n("b4") && m.to == n("a1"))
    }));
    h.run_for(Duration::from_secs(3));
    assert!(h.node("b4").is_ready());
    for m in held {
        let copy = InFlight {
            from: m.from.clone(),
            to: m.to.clone(),
            msg: m.msg.clone(),
        };
        h.deliver(m);
        h.deliver(copy);
    }
    h.run_for(Duration::from_secs(1));
    let g = h.get("b4", "k");
    h.run_for(ms(100));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_agreement(&h, &["k"]);
}

/// While a node joins, a coordinator that has not discovered it yet proposes with the old
/// digest: nodes that did discover it refuse, so nothing commits that the joiner could miss.
/// Their views reach the coordinator, which learns of the joiner and includes it from then on
/// (here the joiner never answers, so nothing commits at all).
#[test]
fn proposal_with_pre_join_digest_is_refused_and_joiner_never_misses_a_commit() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            busy_retries_max: 1,
            ..config()
        },
    );
    // Everyone but a1 discovers b4.
    for id in ["a2", "a3", "b1", "b2", "b3"] {
        h.input(
            &n(id),
            Input::NodeDiscovered {
                cluster: ClusterId::from("b"),
                node: n("b4"),
                network: net(),
            },
        );
    }
    let c = h.put("a1", "k", "v");
    h.run_for(Duration::from_secs(3));
    assert!(
        matches!(
            put_reply(&h, c),
            Some(PutOutcome::Busy | PutOutcome::Unavailable(_))
        ),
        "{:?}",
        h.reply(c)
    );
    assert!(
        h.states("k")
            .values()
            .all(|s| !matches!(s, Some(DurableKey::Stored { .. })))
    );
    assert!(h.node("a1").membership().contains(&n("b4")));
    assert_agreement(&h, &["k"]);
}

/// A joiner refuses a proposal while it copies (NotReady), and that refusal is folded into a
/// watermark (tiny refusal table). It then copies the same proposal's reservation from a
/// peer. It must not take the reservation: holding it would make it answer Granted to a
/// proposal it denied. (Found by the random soak below at seed 1038 / tight limits; fixed
/// in b3a1a85 while this review ran.)
#[test]
fn joiner_does_not_copy_a_reservation_it_refused_through_a_watermark() {
    let mut h = Harness::with_config(
        1,
        3,
        Config {
            refusals_max: 4,
            busy_retries_max: 0,
            ..config()
        },
    );
    h.join("a", "a4");
    let c = h.put("a1", "k", "v");
    // a2 and a3 grant; a4 refuses (NotReady); the Aborts are lost, so a2 and a3 keep the
    // reservation, and they cannot resolve it (nothing they send arrives).
    let cut = |m: &InFlight| {
        let abort = is_request(&m.msg, |r| matches!(r, Request::Abort { .. }));
        let from_peer = (m.from == n("a2") || m.from == n("a3"))
            && !matches!(
                m.msg,
                Message::SyncPage { .. } | Message::SyncRefused { .. }
            );
        // a4's SyncRequests to a1 are lost, so it copies from a2.
        let sync_to_a1 = m.to == n("a1") && matches!(m.msg, Message::SyncRequest { .. });
        // Nor can a4 resolve anything (a1 would tell it the proposal was aborted).
        let a4_status =
            m.from == n("a4") && is_request(&m.msg, |r| matches!(r, Request::Status { .. }));
        abort || from_peer || sync_to_a1 || a4_status
    };
    h.deliver_all_dropping(cut);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Busy));
    let p = pid("a1", 0);
    assert!(matches!(
        h.node("a2").key_state(&k("k")),
        Some(DurableKey::Reserved { p: q, .. }) if *q == p
    ));
    assert!(h.node("a4").refuses(&p, &k("k")));
    // a4 sees more of a1's proposals aborted: its refusals fold into a watermark over p.
    for i in 100..110 {
        h.inject(
            "a1",
            "a4",
            Message::Request(Request::Abort {
                p: pid("a1", i),
                key: k(&format!("x{i}")),
            }),
        );
    }
    // A joining node keeps its refusals one by one (it folds none until it is ready), so the
    // copy can tell a refused proposal from one a watermark would merely cover.
    assert!(h.node("a4").stats().refusals > 4);
    assert!(h.node("a4").refuses(&p, &k("k")));
    // a4 copies from a2, which still holds p's reservation.
    h.run_for_dropping(Duration::from_secs(3), cut);
    assert!(
        !matches!(h.node("a4").key_state(&k("k")), Some(DurableKey::Reserved { p: q, .. }) if *q == p),
        "a4 copied the reservation of {p}, which it refused"
    );
    assert!(h.node("a4").refuses(&p, &k("k")));
    h.inject(
        "a2",
        "a4",
        Message::Request(Request::Status {
            p: p.clone(),
            key: k("k"),
        }),
    );
    let votes = take_votes_to(&mut h, "a2");
    assert!(
        votes
            .iter()
            .all(|(_, _, v)| matches!(v, Vote::Denied { .. })),
        "{votes:?}"
    );
    // Heal: everything settles, nothing stored.
    h.run_for(Duration::from_secs(5));
    assert!(h.node("a4").is_ready());
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    assert!(h.states("k").values().all(Option::is_none));
    assert_agreement(&h, &["k"]);
}

/// The converse of the test above: refusals of *newer* proposals of the same coordinator,
/// which a joiner refused while copying, once folded into a watermark also covered an *older*
/// proposal that it was never a participant of and that committed (joiners now fold nothing
/// until they are ready). The copy must still take
/// that reservation (and resolve it); skipping it leaves the joiner without a committed key
/// forever, and a read there answers Unknown after the PUT was told Stored.
#[test]
// Regression: BUG introduced by b3a1a85 and found in review (on_sync_page skips a copied reservation under a watermark even when the joiner is not a participant of it; a committed key is never copied); fixed in ad1d97d.
fn joiner_copies_committed_reservation_of_old_proposal_under_its_watermark() {
    let mut h = Harness::with_config(
        1,
        3,
        Config {
            refusals_max: 4,
            ..config()
        },
    );
    let c = h.put("a1", "k", "v");
    // The Commits are held: a2 and a3 keep the reservation of a1#0 for now.
    let held = h.run_for_holding(ms(1), is_commit);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    let p = pid("a1", 0);
    h.join("a", "a4");
    // a4 refuses newer proposals of a1 while it is not ready; they fold into a watermark.
    for i in 10..20 {
        let m = reserve_msg(&h, "a4", &pid("a1", i), &format!("x{i}"), "y");
        h.inject("a1", "a4", m);
    }
    h.net.clear();
    // A joining node folds no refusals until it is ready, so no watermark hides a1#0.
    assert!(
        !h.node("a4").refuses(&p, &k("k")),
        "a joining node must not fold refusals over a1#0"
    );
    // a4 copies from a2 (its requests to a1 are lost), which still holds a1#0's reservation
    // (nobody's Status gets through, so nobody resolves anything meanwhile).
    let cut = |m: &InFlight| {
        is_commit(m)
            || is_request(&m.msg, |r| matches!(r, Request::Status { .. }))
            || (m.to == n("a1") && matches!(m.msg, Message::SyncRequest { .. }))
    };
    let held2 = h.run_for_holding(Duration::from_secs(3), cut);
    let g = h.get("a4", "k");
    assert_ne!(
        get_reply(&h, g),
        Some(GetOutcome::Unknown),
        "a read at the joiner missed a value its PUT was told Stored"
    );
    // Heal: everything flows again.
    for m in held.into_iter().chain(held2) {
        h.deliver(m);
    }
    h.run_for(Duration::from_secs(5));
    assert!(h.node("a4").is_ready());
    let g = h.get("a4", "k");
    h.run_for(ms(200));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
}

// ==================================================================== resolve vs. late Reserve

/// The Reserve to cluster b is delayed past the coordinator's vote timeout: Resolve fences
/// the proposal at b first, so the late Reserve is refused everywhere and nothing is left.
#[test]
fn reserve_delayed_past_resolve_is_refused_by_the_fence() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            busy_retries_max: 0,
            ..config()
        },
    );
    let c = h.put("a1", "k", "v");
    let to_b_reserve = |m: &InFlight| is_reserve(m) && m.to.as_str().starts_with('b');
    let held = h.run_for_holding(Duration::from_secs(1), to_b_reserve);
    assert!(!held.is_empty());
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Busy));
    let p = pid("a1", 0);
    for m in held {
        h.deliver(m);
    }
    h.run_for(Duration::from_secs(1));
    for (id, s) in h.states("k") {
        assert!(s.is_none(), "{id} holds {s:?}");
    }
    for id in ["b1", "b2", "b3"] {
        assert!(h.node(id).refuses(&p, &k("k")), "{id} must refuse {p}");
    }
    assert!(h.decisions(&p).iter().all(|(_, c)| !c));
    assert_eq!(h.reservations_left(), 0);
    assert_agreement(&h, &["k"]);
}

/// Abort overtakes Reserve (reordering): the node records the refusal, and the Reserve that
/// lands afterwards is denied, never granted.
#[test]
fn abort_overtaking_its_reserve_fences_the_late_reserve() {
    let mut h = Harness::new(1, 3);
    let p = pid("a2", 7);
    h.inject(
        "a2",
        "a1",
        Message::Request(Request::Abort {
            p: p.clone(),
            key: k("k"),
        }),
    );
    let m = reserve_msg(&h, "a1", &p, "k", "v");
    h.inject("a2", "a1", m);
    let votes = take_votes_to(&mut h, "a2");
    assert!(
        matches!(votes.as_slice(), [(_, _, Vote::Denied { .. })]),
        "{votes:?}"
    );
    assert!(h.node("a1").key_state(&k("k")).is_none());
    // Still refused after a restart.
    h.crash("a1");
    h.restart("a1");
    let m = reserve_msg(&h, "a1", &p, "k", "v");
    h.inject("a2", "a1", m);
    let votes = take_votes_to(&mut h, "a2");
    assert!(
        matches!(votes.as_slice(), [(_, _, Vote::Denied { .. })]),
        "{votes:?}"
    );
}

// ==================================================================== watermarks

/// With room for only 4 refusals, dozens of refusals are folded into watermarks; every
/// refused proposal is still refused (Reserve and Status, also after a restart), and a
/// reservation granted below the watermark is still honoured.
#[test]
fn folded_refusals_still_refuse_every_refused_proposal() {
    let mut h = Harness::with_config(
        1,
        3,
        Config {
            refusals_max: 4,
            ..config()
        },
    );
    // a1 grants a2#5 on "held" first.
    let held = pid("a2", 5);
    let m = reserve_msg(&h, "a1", &held, "held", "x");
    h.inject("a2", "a1", m);
    let votes = take_votes_to(&mut h, "a2");
    assert!(matches!(votes.as_slice(), [(_, _, Vote::Granted)]));
    // Then sees many proposals of a2 and a3 aborted, around it.
    for i in (0..40).filter(|i| *i != 5) {
        for c in ["a2", "a3"] {
            h.inject(
                c,
                "a1",
                Message::Request(Request::Abort {
                    p: pid(c, i),
                    key: k(&format!("k{i}")),
                }),
            );
        }
    }
    assert!(
        h.node("a1").stats().refusals <= 4,
        "{:?}",
        h.node("a1").stats()
    );
    for round in 0..2 {
        for i in (0..40).filter(|i| *i != 5) {
            for c in ["a2", "a3"] {
                let p = pid(c, i);
                let key = format!("k{i}");
                let m = reserve_msg(&h, "a1", &p, &key, "late");
                h.inject(c, "a1", m);
                h.inject(
                    c,
                    "a1",
                    Message::Request(Request::Status {
                        p: p.clone(),
                        key: k(&key),
                    }),
                );
                let votes = take_votes_to(&mut h, c);
                assert_eq!(votes.len(), 2, "round {round} {p}: {votes:?}");
                for (_, _, vote) in votes {
                    assert!(
                        matches!(vote, Vote::Denied { .. }),
                        "round {round}: {p} not refused: {vote:?}"
                    );
                }
                assert!(h.node("a1").key_state(&k(&key)).is_none());
            }
        }
        // The reservation granted before the fold is still honoured.
        h.inject(
            "a2",
            "a1",
            Message::Request(Request::Status {
                p: held.clone(),
                key: k("held"),
            }),
        );
        let votes = take_votes_to(&mut h, "a2");
        assert!(
            matches!(votes.as_slice(), [(_, _, Vote::Granted)]),
            "round {round}: {votes:?}"
        );
        h.crash("a1");
        h.restart("a1");
        h.net.clear();
    }
    h.inject(
        "a2",
        "a1",
        Message::Request(Request::Commit {
            p: held.clone(),
            key: k("held"),
        }),
    );
    assert!(h.node("a1").key_state(&k("held")).unwrap().is_stored());
    assert!(h.violations().is_empty(), "{:?}", h.violations());
}

/// Busy contention with a tiny refusal table: proposals keep getting refused and folded
/// while real PUTs run; the outcome is still safe and one PUT wins.
#[test]
fn contention_with_tiny_refusal_table_stays_safe() {
    for seed in 0..10u64 {
        let mut h = Harness::with_config(
            2,
            3,
            Config {
                refusals_max: 4,
                ..config()
            },
        );
        let a = h.put("a1", "k", "from-a");
        let b = h.put("b1", "k", "from-b");
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..20_000 {
            if h.net.is_empty() {
                h.run_for(ms(5));
                if h.net.is_empty() && h.reply(a).is_some() && h.reply(b).is_some() {
                    break;
                }
                continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % h.net.len();
            let m = h.net.remove(i).unwrap();
            h.deliver(m);
        }
        h.run_for(Duration::from_secs(5));
        let outcomes = [put_reply(&h, a), put_reply(&h, b)];
        let stored = outcomes
            .iter()
            .filter(|o| **o == Some(PutOutcome::Stored))
            .count();
        assert!(stored <= 1, "seed {seed}: {outcomes:?}");
        assert_eq!(h.reservations_left(), 0, "seed {seed}");
        assert_agreement(&h, &["k"]);
    }
}

// ==================================================================== durability

/// A node's disk is slow: it grants in memory but crashes before the grant is durable. The
/// vote was never sent, the proposal cannot commit on that grant, and the retry stores.
#[test]
fn crash_before_grant_is_durable_loses_the_grant_but_no_vote_escaped() {
    let mut h = Harness::new(2, 3);
    h.lazy_disk.insert(n("b2"));
    let c = h.put("a1", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), None);
    assert!(matches!(
        h.node("b2").key_state(&k("k")),
        Some(DurableKey::Reserved { .. })
    ));
    let b2_votes = h.count_sent(|f, _, m| {
        *f == n("b2")
            && matches!(
                m,
                Message::Response(Response::Vote { .. }) | Message::RelayReply { .. }
            )
    });
    assert_eq!(b2_votes, 0, "b2 voted before its grant was durable");
    h.crash("b2");
    h.lazy_disk.remove(&n("b2"));
    assert!(h.slots[&n("b2")].disk.keys.is_empty());
    h.restart("b2");
    h.run_for(Duration::from_secs(2));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert!(h.decisions(&pid("a1", 0)).iter().all(|(_, c)| !c));
    assert_agreement(&h, &["k"]);
}

/// The coordinator's disk is slow: it answers Stored, then crashes before its own commit is
/// durable. After the restart it still serves the value (it resolves its reservation).
#[test]
fn coordinator_crash_before_its_commit_is_durable_still_reads_the_value() {
    let mut h = Harness::new(2, 3);
    h.lazy_disk.insert(n("a1"));
    let c = h.put("a1", "k", "v");
    for _ in 0..100 {
        h.deliver_all_dropping(is_commit);
        if put_reply(&h, c).is_some() {
            break;
        }
        h.flush_disk("a1");
    }
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert!(h.node("a1").key_state(&k("k")).unwrap().is_stored());
    h.crash("a1");
    h.lazy_disk.clear();
    assert!(matches!(
        h.slots[&n("a1")].disk.keys.get(&k("k")),
        Some(DurableKey::Reserved { .. })
    ));
    h.restart("a1");
    let g = h.get("a1", "k");
    let g2 = h.get("b3", "k");
    h.run_for(Duration::from_secs(1));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
    assert_eq!(get_reply(&h, g2), Some(GetOutcome::Value(v("v"))));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_agreement(&h, &["k"]);
}

/// A node fences a proposal on Status with a slow disk and crashes before the fence is
/// durable: its Fenced answer never left, so nobody aborted on it.
#[test]
fn crash_before_fence_is_durable_sends_no_fenced_answer() {
    let mut h = Harness::new(1, 3);
    h.lazy_disk.insert(n("a3"));
    let p = pid("a2", 3);
    h.inject(
        "a2",
        "a3",
        Message::Request(Request::Status {
            p: p.clone(),
            key: k("k"),
        }),
    );
    assert!(take_votes_to(&mut h, "a2").is_empty());
    h.crash("a3");
    h.lazy_disk.clear();
    h.restart("a3");
    assert!(!h.node("a3").refuses(&p, &k("k")));
    // Granting it now is allowed: no Fenced answer ever escaped.
    let m = reserve_msg(&h, "a3", &p, "k", "v");
    h.inject("a2", "a3", m);
    let votes = take_votes_to(&mut h, "a2");
    assert!(matches!(votes.as_slice(), [(_, _, Vote::Granted)]));
}

// ==================================================================== request ids

/// The coordinator crashes while a request waits out its Busy backoff. A retry with the same
/// id after the restart gets a definite answer and proposes nothing new; a fresh request
/// stores once the key is free.
#[test]
fn coordinator_crash_during_busy_backoff_then_retry_same_id_is_definite() {
    let mut h = Harness::new(2, 3);
    // a2 holds a reservation of a proposal whose coordinator (b1) never heard of it.
    let q = pid("b1", 500);
    let m = reserve_msg(&h, "a2", &q, "k", "x");
    h.inject("b1", "a2", m);
    h.net.clear();
    let c = h.put_with("a1", "k", "v", Some("r1"));
    h.deliver_all();
    assert_eq!(put_reply(&h, c), None, "waiting in its Busy backoff");
    h.crash("a1");
    h.restart("a1");
    let retry = h.put_with("a1", "k", "v", Some("r1"));
    h.deliver_all();
    let first = put_reply(&h, retry);
    assert!(
        matches!(first, Some(PutOutcome::Busy)),
        "retry after restart: {first:?}"
    );
    // a2's lease runs out; b1 never granted q, so q aborts and the key frees up.
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    let again = h.put_with("a1", "k", "v", Some("r1"));
    h.deliver_all();
    assert_eq!(put_reply(&h, again), first, "same id, same outcome");
    assert!(h.states("k").values().all(Option::is_none));
    let fresh = h.put_with("a1", "k", "v", Some("r2"));
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, fresh), Some(PutOutcome::Stored));
    assert_agreement(&h, &["k"]);
}

/// The PUT's deadline passes while it waits out a Busy backoff: its last proposal was
/// aborted and nothing is in flight, so the answer is definite (Busy). Unavailable would
/// claim that some participants did not answer (it names none) and that it may still commit.
#[test]
// Regression: BUG found in review at 4868043/b3a1a85 (put deadline during a Busy backoff answers Unavailable naming nobody, though every attempt was aborted); fixed in 881cd99.
fn put_deadline_during_busy_backoff_is_not_unavailable() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            busy_retries_max: 50,
            busy_backoff_min: ms(100),
            busy_backoff_max: ms(200),
            put_timeout: ms(300),
            ..config()
        },
    );
    let q = pid("b1", 500);
    let m = reserve_msg(&h, "a2", &q, "k", "x");
    h.inject("b1", "a2", m);
    h.net.clear();
    let c = h.put("a1", "k", "v");
    h.run_for(ms(400));
    let outcome = put_reply(&h, c);
    // Every attempt was aborted (a2 held q) and none is running.
    assert!(h.node("a1").key_state(&k("k")).is_none());
    assert!(
        !matches!(outcome, Some(PutOutcome::Unavailable(_))),
        "{outcome:?}"
    );
    assert_eq!(outcome, Some(PutOutcome::Busy));
}

/// Every vote of cluster b is lost, so the PUT answers Unavailable; the coordinator then
/// crashes. A retry with the same id after the restart resolves the proposal (everyone did
/// grant it) and answers Stored.
#[test]
fn unavailable_then_coordinator_restart_then_retry_same_id_commits() {
    let mut h = Harness::new(2, 3);
    let c = h.put_with("a1", "k", "v", Some("r"));
    // Nothing from cluster b reaches cluster a: the a nodes never learn b's grants (b's
    // own resolvers may decide, but their Commits are lost too).
    h.run_for_dropping(Duration::from_secs(3), |m| {
        m.to.as_str().starts_with('a') && m.from.as_str().starts_with('b')
    });
    assert!(
        matches!(put_reply(&h, c), Some(PutOutcome::Unavailable(_))),
        "{:?}",
        put_reply(&h, c)
    );
    assert!(h.decisions(&pid("a1", 0)).iter().all(|(_, c)| *c));
    h.crash("a1");
    h.restart("a1");
    let retry = h.put_with("a1", "k", "v", Some("r"));
    h.run_for(Duration::from_secs(2));
    assert_eq!(put_reply(&h, retry), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    let again = h.put_with("a1", "k", "v", Some("r"));
    assert_eq!(put_reply(&h, again), Some(PutOutcome::Stored));
    assert_agreement(&h, &["k"]);
}

/// Two calls with the same request id arrive while the first is still running: both get
/// the one outcome, and only one proposal runs.
#[test]
fn concurrent_duplicate_request_ids_share_one_proposal() {
    let mut h = Harness::new(2, 3);
    let c1 = h.put_with("a1", "k", "v", Some("r"));
    let c2 = h.put_with("a1", "k", "v", Some("r"));
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, c1), Some(PutOutcome::Stored));
    assert_eq!(put_reply(&h, c2), Some(PutOutcome::Stored));
    let reserves = h.count_sent(|f, _, m| {
        *f == n("a1") && is_request(m, |r| matches!(r, Request::Reserve { .. }))
    });
    assert_eq!(
        reserves, 3,
        "one proposal: 2 own-cluster peers + 1 representative"
    );
}

// ==================================================================== reads

/// The Commit is lost everywhere but at the coordinator, which then crashes: reads at the
/// other nodes must not answer Unknown (they wait, then say Unavailable), and once the
/// coordinator is back they answer the value.
#[test]
fn reads_after_stored_with_commits_lost_and_coordinator_down_never_say_unknown() {
    let mut h = Harness::new(2, 3);
    let c = h.put("a1", "k", "v");
    h.deliver_all_dropping(is_commit);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    h.crash("a1");
    let gets: Vec<CallId> = ["a2", "a3", "b1", "b2", "b3"]
        .iter()
        .map(|id| h.get(id, "k"))
        .collect();
    h.run_for(Duration::from_secs(3));
    for g in &gets {
        let r = get_reply(&h, *g);
        assert!(
            matches!(r, Some(GetOutcome::Unavailable(_))),
            "read answered {r:?}"
        );
    }
    h.restart("a1");
    h.run_for(Duration::from_secs(3));
    let gets: Vec<CallId> = ["a2", "a3", "b1", "b2", "b3"]
        .iter()
        .map(|id| h.get(id, "k"))
        .collect();
    h.run_for(ms(500));
    for g in gets {
        assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
    }
    assert_agreement(&h, &["k"]);
}

/// A read at a node that granted forces a Resolve while the Reserve to one node is still in
/// flight: the resolve fences it, the proposal aborts, and the read answers Unknown - which
/// is right, because the PUT is then told Busy (or retries), never Stored for that proposal.
#[test]
fn read_forcing_resolve_before_last_reserve_lands_aborts_consistently() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            busy_retries_max: 0,
            ..config()
        },
    );
    let c = h.put("a1", "k", "v");
    // Hold every Reserve to b3 (directly or fanned out).
    let held = h.run_for_holding(ms(5), |m| is_reserve(m) && m.to == n("b3"));
    assert!(!held.is_empty());
    let g = h.get("a2", "k");
    let held2 = h.run_for_holding(Duration::from_secs(1), |m| is_reserve(m) && m.to == n("b3"));
    for m in held.into_iter().chain(held2) {
        h.deliver(m);
    }
    h.run_for(Duration::from_secs(1));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Unknown));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Busy));
    assert!(h.states("k").values().all(Option::is_none));
    assert_agreement(&h, &["k"]);
}

// ==================================================================== representatives

/// The first representative of cluster b is cut off from the coordinator (its replies are
/// lost) but keeps working; the coordinator fails over, and the stale duplicates that reach
/// b from both representatives change nothing.
#[test]
fn representative_replies_lost_failover_and_duplicates_are_harmless() {
    let mut h = Harness::new(3, 3);
    let c = h.put("a1", "k", "v");
    let rep = h
        .net
        .iter()
        .find(|m| matches!(&m.msg, Message::Relay { .. }) && m.to.as_str().starts_with('b'))
        .map(|m| m.to.clone())
        .unwrap();
    let rep2 = rep.clone();
    let held = h.run_for_holding(Duration::from_secs(1), move |m| {
        m.from == rep2 && m.to == n("a1")
    });
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    for m in held {
        h.deliver(m);
    }
    h.run_for(Duration::from_secs(1));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_eq!(h.reservations_left(), 0);
    assert_agreement(&h, &["k"]);
}

// ==================================================================== random faults

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Random delivery order, drops, duplicates, crashes and restarts (with slow disks), with
/// contended PUTs (with and without request ids) and reads at random nodes; then the faults
/// stop. Checks agreement, one outcome per proposal, no violation, honest answers, reads
/// that never go back to Unknown, and liveness after healing.
fn random_faults(seed: u64, clusters: usize, lazy: bool) {
    random_faults_with(seed, clusters, lazy, &[]);
}

/// `joins`: (step, cluster, node) of fresh nodes that join during the run.
fn random_faults_with(seed: u64, clusters: usize, lazy: bool, joins: &[(usize, &str, &str)]) {
    random_faults_config(seed, clusters, lazy, joins, config());
}

/// Tight limits everywhere: refusals folded into watermarks all the time, few resolutions,
/// relays, waiting reads and remembered request ids.
fn tight_config() -> Config {
    Config {
        refusals_max: 4,
        resolutions_max: 2,
        relays_max: 3,
        reads_waiting_max: 2,
        requests_max: 2,
        counter_block: 3,
        ..config()
    }
}

fn random_faults_config(
    seed: u64,
    clusters: usize,
    lazy: bool,
    joins: &[(usize, &str, &str)],
    config: Config,
) {
    random_faults_full(seed, clusters, lazy, joins, &[], config);
}

/// `leaves`: (step, node) of nodes told to leave gracefully; each says goodbye (and is
/// removed everywhere) once it notes LeaveComplete. A restart forgets the leave, so the
/// driver asks again.
fn random_faults_full(
    seed: u64,
    clusters: usize,
    lazy: bool,
    joins: &[(usize, &str, &str)],
    leaves: &[(usize, &str)],
    config: Config,
) {
    let mut h = Harness::with_config(clusters, 3, config);
    let mut leaving: Vec<String> = Vec::new();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut ids: Vec<String> = h.ids().iter().map(|i| i.to_string()).collect();
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"];
    let mut puts: Vec<(CallId, &str, String)> = Vec::new();
    // Reads with the step they were asked at.
    let mut gets: Vec<(CallId, &str, usize)> = Vec::new();
    // The step at whose end a value was first known committed for a key (a Stored or a read
    // of it). A read asked at a later step must not answer Unknown.
    let mut known: BTreeMap<&str, (usize, Value)> = BTreeMap::new();
    let mut down: Option<String> = None;
    let mut trace: Vec<String> = Vec::new();
    for step in 0..1500 {
        for (at, cluster, id) in joins {
            if *at == step {
                h.join(cluster, id);
                ids.push(id.to_string());
            }
        }
        for (at, id) in leaves {
            if *at == step {
                if down.as_deref() == Some(*id) {
                    down = None;
                    h.lazy_disk.remove(&n(id));
                    h.restart(id);
                }
                trace.push(format!("{step} {:?} LEAVE {id}", h.now));
                h.input(&n(id), Input::Leave);
                leaving.push(id.to_string());
            }
        }
        let r = rng.below(100);
        // Keys are taken in turn, a few at a time, so that there is always contention.
        let window = (step / 150) % (keys.len() - 1);
        if r < 8 {
            let at = ids[rng.below(ids.len())].clone();
            let key = keys[window + rng.below(2)];
            let value = format!("{at}-{step}");
            let req = if rng.chance(50) {
                Some(format!("req-{}", rng.below(4)))
            } else {
                None
            };
            let c = h.put_with(&at, key, &value, req.as_deref());
            trace.push(format!(
                "{step} {:?} PUT {at} {key}={value} {req:?} -> {c:?}",
                h.now
            ));
            puts.push((c, key, value));
        } else if r < 14 {
            let at = ids[rng.below(ids.len())].clone();
            let key = keys[window + rng.below(2)];
            let c = h.get(&at, key);
            gets.push((c, key, step));
        } else if r < 16 {
            if let Some(d) = down.take() {
                h.lazy_disk.remove(&n(&d));
                trace.push(format!("{step} {:?} RESTART {d}", h.now));
                h.restart(&d);
                if leaving.contains(&d) {
                    h.input(&n(&d), Input::Leave);
                }
            } else {
                let d = ids[rng.below(ids.len())].clone();
                trace.push(format!(
                    "{step} {:?} CRASH {d} pending {:?}",
                    h.now,
                    h.pending_writes.get(&n(&d))
                ));
                if lazy && rng.chance(50) {
                    // Crash with writes not yet durable.
                    h.crash(&d);
                } else {
                    h.flush_disk(&d);
                    h.crash(&d);
                }
                down = Some(d);
            }
        } else if r < 20 {
            if lazy {
                let d = ids[rng.below(ids.len())].clone();
                if rng.chance(50) {
                    h.lazy_disk.insert(n(&d));
                } else {
                    h.lazy_disk.remove(&n(&d));
                    h.flush_disk(&d);
                }
            }
        } else if r < 30 {
            h.run_for(ms(rng.below(60) as u64 + 1));
        } else if !h.net.is_empty() {
            let i = rng.below(h.net.len());
            let m = h.net.remove(i).unwrap();
            let fate = rng.below(100);
            if fate < 5 {
                trace.push(format!(
                    "{step} {:?} DROP {} -> {}: {:?}",
                    h.now, m.from, m.to, m.msg
                ));
            } else if fate < 10 {
                trace.push(format!(
                    "{step} {:?} DUP {} -> {}: {:?}",
                    h.now, m.from, m.to, m.msg
                ));
                let copy = InFlight {
                    from: m.from.clone(),
                    to: m.to.clone(),
                    msg: m.msg.clone(),
                };
                h.net.push_back(copy);
                h.deliver(m);
            } else {
                trace.push(format!(
                    "{step} {:?} {} -> {}: {:?}",
                    h.now, m.from, m.to, m.msg
                ));
                h.deliver(m);
            }
        }
        // A node that completed its leave says goodbye.
        for id in leaving.clone() {
            let up = h.slots.get(&n(&id)).is_some_and(|s| s.node.is_some());
            if up
                && left_complete(&h, &id)
                && h.pending_writes.get(&n(&id)).is_none_or(Vec::is_empty)
            {
                trace.push(format!("{step} {:?} GOODBYE {id}", h.now));
                h.remove(&id, true);
                ids.retain(|x| *x != id);
                leaving.retain(|x| *x != id);
            }
        }
        // Flush slow disks now and then, so that lazy nodes make progress.
        if lazy && rng.chance(30) {
            let d = ids[rng.below(ids.len())].clone();
            h.flush_disk(&d);
        }
        // Observe answers as they come.
        for (c, key, value) in &puts {
            if put_reply(&h, *c) == Some(PutOutcome::Stored) {
                known.entry(key).or_insert((step, v(value)));
            }
        }
        for (c, key, asked) in &gets {
            match get_reply(&h, *c) {
                Some(GetOutcome::Value(x)) => {
                    known.entry(key).or_insert((step, x.clone()));
                }
                Some(GetOutcome::Unknown) => {
                    if let Some((t, x)) = known.get(key) {
                        assert!(
                            *t >= *asked,
                            "seed {seed}: read of {key} asked at step {asked} answered Unknown after {x:?} was known at step {t}"
                        );
                    }
                }
                _ => {}
            }
        }
        if !h.violations().is_empty() {
            if let Ok(pat) = std::env::var("ADV_TRACE") {
                for line in trace
                    .iter()
                    .filter(|l| pat.split(',').any(|p| l.contains(p)))
                {
                    eprintln!("{line}");
                }
                for (id, note) in &h.notes {
                    let line = format!("{id}: {note:?}");
                    if pat.split(',').any(|p| line.contains(p)) {
                        eprintln!("NOTE {line}");
                    }
                }
            }
            panic!("seed {seed} step {step}: {:?}", h.violations());
        }
    }
    if let Ok(pat) = std::env::var("ADV_DUMP") {
        for line in trace
            .iter()
            .filter(|l| pat.split(',').any(|p| l.contains(p)))
        {
            eprintln!("{line}");
        }
        for (id, note) in &h.notes {
            let line = format!("{id}: {note:?}");
            if pat.split(',').any(|p| line.contains(p)) {
                eprintln!("NOTE {line}");
            }
        }
    }
    // Heal: everyone up, fast disks, no more faults.
    h.lazy_disk.clear();
    for id in &ids {
        h.flush_disk(id);
    }
    if let Some(d) = down.take() {
        h.restart(&d);
        if leaving.contains(&d) {
            h.input(&n(&d), Input::Leave);
        }
    }
    h.run_for(Duration::from_secs(20));
    for id in leaving.clone() {
        assert!(
            left_complete(&h, &id),
            "seed {seed}: {id} never completed its leave: {:?}",
            h.node(&id).stats()
        );
        h.remove(&id, true);
        ids.retain(|x| *x != id);
    }
    h.run_for(Duration::from_secs(5));
    assert_eq!(
        h.reservations_left(),
        0,
        "seed {seed}: reservations left after healing: {:?}",
        keys.iter().map(|k| h.states(k)).collect::<Vec<_>>()
    );
    assert_agreement(&h, &keys);
    for id in &ids {
        assert!(
            h.node(id).is_ready(),
            "seed {seed}: {id} never became ready"
        );
    }
    for key in keys {
        let states = h.states(key);
        let stored: Vec<_> = states.values().flatten().collect();
        assert!(
            stored.is_empty() || stored.len() == states.len(),
            "seed {seed}: {key} stored at some nodes only: {states:?}"
        );
        if let Some((_, x)) = known.get(key) {
            assert!(
                stored
                    .iter()
                    .all(|s| matches!(s, DurableKey::Stored { value, .. } if value == x)),
                "seed {seed}: {key} known as {x:?} but {states:?}"
            );
        }
    }
    for (c, key, value) in &puts {
        match put_reply(&h, *c) {
            Some(PutOutcome::Stored) => assert!(
                h.stored_everywhere(key, value),
                "seed {seed}: {key}={value} told Stored: {:?}",
                h.states(key)
            ),
            Some(PutOutcome::Exists { value: x }) => {
                let stored = h
                    .states(key)
                    .values()
                    .flatten()
                    .any(|s| matches!(s, DurableKey::Stored { value, .. } if *value == x));
                assert!(
                    stored,
                    "seed {seed}: Exists({x:?}) for {key} but {:?}",
                    h.states(key)
                );
            }
            _ => {}
        }
    }
    let fresh = h.put(&ids[0], "fresh", "x");
    h.run_for(Duration::from_secs(2));
    assert_eq!(
        put_reply(&h, fresh),
        Some(PutOutcome::Stored),
        "seed {seed}"
    );
    let stored = puts
        .iter()
        .filter(|(c, _, _)| put_reply(&h, *c) == Some(PutOutcome::Stored))
        .count();
    if std::env::var_os("ADV_STATS").is_some() {
        eprintln!(
            "seed {seed}: {} puts, {stored} stored, {} gets, {} notes",
            puts.len(),
            gets.len(),
            h.notes.len()
        );
    }
}

#[test]
fn random_delivery_drops_duplicates_and_crashes_two_clusters() {
    for seed in 0..30 {
        random_faults(seed, 2, false);
    }
}

#[test]
fn random_delivery_drops_duplicates_and_crashes_three_clusters() {
    for seed in 100..115 {
        random_faults(seed, 3, false);
    }
}

/// A long soak over many seeds: `ADV_SEEDS=2000 cargo test -- --ignored soak`.
#[test]
#[ignore = "soak: slow; run by hand"]
fn soak_random_faults_many_seeds() {
    let seeds: u64 = std::env::var("ADV_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let from: u64 = std::env::var("ADV_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for seed in from..from + seeds {
        match seed % 4 {
            0 => random_faults(seed, 2, false),
            1 => random_faults(seed, 3, true),
            2 => random_faults_with(seed, 2, true, &[(200, "b", "b4"), (700, "c", "c1")]),
            _ => random_faults_with(seed, 3, false, &[(400, "a", "a4")]),
        }
        random_faults_config(
            seed,
            2,
            seed.is_multiple_of(2),
            &[(500, "b", "b4")],
            tight_config(),
        );
        if std::env::var_os("ADV_SOAK_LEAVES").is_some() {
            let leaver = ["a2", "b1", "b3"][(seed % 3) as usize];
            random_faults_full(
                seed,
                2,
                seed.is_multiple_of(2),
                &[(100, "b", "b4"), (150, "a", "a4")],
                &[(400 + (seed as usize % 7) * 50, leaver)],
                config(),
            );
        }
    }
}

#[test]
fn random_faults_with_tight_limits_and_folded_refusals() {
    for seed in 400..420 {
        random_faults_config(
            seed,
            2,
            seed.is_multiple_of(2),
            &[(500, "b", "b4")],
            tight_config(),
        );
    }
}

#[test]
// Regression: failed at 4868043/b3a1a85 (stale Granted in confirm rounds stalls the leave); passes since 881cd99.
fn random_faults_while_a_node_leaves_gracefully() {
    for seed in 500..540 {
        let leaver = ["a2", "b1", "b3"][(seed % 3) as usize];
        random_faults_full(
            seed,
            2,
            seed.is_multiple_of(2),
            &[(100, "b", "b4"), (150, "a", "a4")],
            &[(400 + (seed as usize % 7) * 50, leaver)],
            config(),
        );
    }
}

#[test]
fn random_faults_while_nodes_join_and_copy() {
    for seed in 300..330 {
        random_faults_with(
            seed,
            2,
            seed.is_multiple_of(2),
            &[(300, "b", "b4"), (900, "a", "a4")],
        );
    }
}

#[test]
fn random_faults_with_slow_disks_and_crashes_losing_unflushed_writes() {
    for seed in 200..230 {
        random_faults(seed, 2, true);
    }
}

#[test]
#[ignore = "debug"]
fn debug_one_seed() {
    let seed: u64 = std::env::var("ADV_SEED").unwrap().parse().unwrap();
    let mode: u64 = std::env::var("ADV_MODE").unwrap().parse().unwrap();
    match mode {
        0 => random_faults(seed, 2, false),
        1 => random_faults(seed, 3, true),
        2 => random_faults_with(seed, 2, true, &[(200, "b", "b4"), (700, "c", "c1")]),
        3 => random_faults_with(seed, 3, false, &[(400, "a", "a4")]),
        _ => random_faults_config(
            seed,
            2,
            seed.is_multiple_of(2),
            &[(500, "b", "b4")],
            tight_config(),
        ),
    }
}

/// Right after an operator removal every member refuses grants for `2 x read_lease`
/// (`Denied(Settling)`), and right after a discovery the views differ (`MembershipChanged`):
/// refusals that end by themselves. A PUT meeting only those keeps trying until its deadline
/// instead of spending its Busy retries on them and answering Busy although no write competed.
#[test]
fn refusals_that_end_by_themselves_spend_no_busy_retry() {
    let mut h = Harness::new(2, 4);
    h.remove("b4", false);
    let c = h.put("a1", "k", "v");
    h.run_for(ms(1900));
    assert_eq!(
        put_reply(&h, c),
        Some(PutOutcome::Stored),
        "{:?}",
        h.states("k")
    );
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_agreement(&h, &["k"]);
}
