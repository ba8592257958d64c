//! Scripted scenarios on the in-memory harness: each is named after what it does to the
//! protocol, and asserts what must hold.

mod harness;

use std::time::Duration;

use harness::*;
use replicator_core::*;

/// A recovered state where `key` is stored by a proposal of `coordinator`.
fn stored_by(coordinator: &str, key: &str, value: &str) -> WriteOp {
    WriteOp::PutKey {
        key: k(key),
        state: DurableKey::Stored {
            p: ProposalId {
                coordinator: n(coordinator),
                counter: 999,
            },
            value: v(value),
        },
    }
}

#[test]
fn all_grant_stores_everywhere_after_one_reserve_round() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v1");
    h.deliver_all();
    // No timer had to fire: the client learned Stored from the first round of votes.
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("k", "v1"), "{:?}", h.states("k"));
    assert_eq!(
        h.count_sent(|_, _, m| is_request(m, |r| matches!(r, Request::Status { .. }))),
        0
    );
    // Own cluster directly (2 peers), one representative for each of the 2 other clusters.
    let reserves_from_a1 = h.count_sent(|f, _, m| {
        *f == n("a1") && is_request(m, |r| matches!(r, Request::Reserve { .. }))
    });
    assert_eq!(reserves_from_a1, 4);
    assert_eq!(h.reservations_left(), 0);
    assert!(h.violations().is_empty());
}

#[test]
fn remote_node_storing_the_key_gives_exists_and_cleans_up() {
    let mut h = Harness::new(3, 3);
    // c2 already stores the key (committed by an earlier proposal whose commit reached it).
    h.crash("c2");
    h.slots
        .get_mut(&n("c2"))
        .unwrap()
        .disk
        .apply(&stored_by("b1", "k", "old"));
    h.restart("c2");
    let call = h.put("a1", "k", "new");
    let mut reserves = Vec::new();
    for _ in 0..100_000 {
        let Some(m) = h.net.pop_front() else { break };
        if is_request(&m.msg, |r| matches!(r, Request::Reserve { .. })) {
            reserves.push(InFlight {
                from: m.from.clone(),
                to: m.to.clone(),
                msg: m.msg.clone(),
            });
        }
        h.deliver(m);
    }
    assert_eq!(
        put_reply(&h, call),
        Some(PutOutcome::Exists { value: v("old") })
    );
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    // A late (duplicated) Reserve of the aborted proposal is refused, never granted.
    for m in reserves {
        h.deliver(m);
    }
    h.deliver_all();
    assert_eq!(h.reservations_left(), 0);
    let granted_late = h
        .notes
        .iter()
        .any(|(_, note)| matches!(note, Note::Committed { .. }));
    assert!(!granted_late);
    for (id, s) in h.states("k") {
        assert!(
            s.is_none() || id == n("c2"),
            "{id} holds {s:?} after an aborted proposal"
        );
    }
}

#[test]
fn reservation_of_a_concurrent_proposal_gives_busy_and_cleans_up() {
    let mut h = Harness::with_config(
        3,
        3,
        Config {
            busy_retries_max: 0,
            ..config()
        },
    );
    let first = h.put("a1", "k", "first");
    // Deliver only what reaches cluster b, so b's nodes hold first's reservation.
    for _ in 0..1000 {
        if !h.deliver_one(|m| m.to.as_str().starts_with('b')) {
            break;
        }
    }
    let held: Vec<_> = h.net.drain(..).collect();
    let second = h.put("c1", "k", "second");
    h.deliver_all();
    assert_eq!(put_reply(&h, second), Some(PutOutcome::Busy));
    // The second proposal left no reservation behind anywhere.
    for (id, s) in h.states("k") {
        if let Some(DurableKey::Reserved { p, .. }) = s {
            assert_eq!(
                p.coordinator,
                n("a1"),
                "{id} still holds a reservation of the aborted proposal"
            );
        }
    }
    // The first one completes once its messages flow again (its c-cluster votes may be
    // Busy too: then it aborts; either way nothing is left reserved).
    h.net.extend(held);
    h.run_for(Duration::from_secs(3));
    assert!(put_reply(&h, first).is_some());
    assert_eq!(h.reservations_left(), 0);
    assert!(h.violations().is_empty());
}

#[test]
fn concurrent_proposals_from_two_clusters_never_both_store() {
    for seed in 0..40u64 {
        let mut h = Harness::new(3, 3);
        let a = h.put("a1", "k", "from-a");
        let b = h.put("b1", "k", "from-b");
        // Interleave deliveries pseudo-randomly.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..100_000 {
            if h.net.is_empty() {
                h.run_for(Duration::from_millis(5));
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
        assert!(stored <= 1, "seed {seed}: two Stored: {outcomes:?}");
        // With retries, one of them wins and the other learns Exists (or both stay Busy).
        for o in &outcomes {
            assert!(
                matches!(
                    o,
                    Some(PutOutcome::Stored | PutOutcome::Exists { .. } | PutOutcome::Busy)
                ),
                "seed {seed}: {o:?}"
            );
        }
        if stored == 1 {
            let winner = if outcomes[0] == Some(PutOutcome::Stored) {
                "from-a"
            } else {
                "from-b"
            };
            assert!(
                h.stored_everywhere("k", winner),
                "seed {seed}: {:?}",
                h.states("k")
            );
        }
        assert_eq!(h.reservations_left(), 0, "seed {seed}");
        assert!(
            h.violations().is_empty(),
            "seed {seed}: {:?}",
            h.violations()
        );
    }
}

#[test]
fn get_unknown_then_value_from_another_cluster() {
    let mut h = Harness::new(3, 3);
    let g = h.get("b2", "nothing");
    // The first "unknown" waits for a member to confirm b2 is still a member (read lease).
    assert_eq!(get_reply(&h, g), None);
    h.deliver_all();
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Unknown));
    let p = h.put("a1", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, p), Some(PutOutcome::Stored));
    let g = h.get("c3", "k");
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
}

#[test]
fn coordinator_crash_after_all_grants_commits_everywhere_by_lease_resolve() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v");
    // Every Commit is lost, and the coordinator crashes right after it decided.
    h.deliver_all_dropping(is_commit);
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    h.crash("a1");
    // Leases run out; the participants resolve. a1 is down, so nobody can decide yet: nothing
    // must be aborted meanwhile.
    h.run_for(Duration::from_secs(2));
    let aborted = h.notes.iter().any(|(_, n)| {
        matches!(
            n,
            Note::Decided {
                committed: false,
                ..
            }
        )
    });
    assert!(!aborted);
    // Once a1 is back (its grant is durable), Resolve commits everywhere.
    h.restart("a1");
    h.run_for(Duration::from_secs(3));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_eq!(h.reservations_left(), 0);
    assert!(h.violations().is_empty(), "{:?}", h.violations());
}

#[test]
fn coordinator_crash_before_all_grants_aborts_everywhere() {
    let mut h = Harness::new(3, 3);
    let _call = h.put("a1", "k", "v");
    // Only the coordinator's own cluster hears of the proposal before the coordinator dies;
    // the representatives of b and c never get the Relay.
    h.deliver_all_dropping(|m| m.to.as_str().starts_with('b') || m.to.as_str().starts_with('c'));
    h.crash("a1");
    h.run_for(Duration::from_secs(2));
    // a2 and a3 resolved: b and c fenced the proposal, so it aborted.
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    assert!(h.notes.iter().any(|(_, n)| matches!(
        n,
        Note::Decided {
            committed: false,
            ..
        }
    )));
    h.restart("a1");
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    assert!(h.states("k").values().all(Option::is_none));
    assert!(h.violations().is_empty());
}

#[test]
fn representative_dying_mid_fan_out_fails_over_to_another_node() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v");
    // Find the representative chosen for cluster b and let it receive the Relay and fan out,
    // then crash it before it can answer; it restarts (its grant is durable) soon after.
    let rep = h
        .net
        .iter()
        .find(|m| matches!(&m.msg, Message::Relay { .. }) && m.to.as_str().starts_with('b'))
        .map(|m| m.to.clone())
        .expect("a relay to cluster b");
    assert!(h.deliver_one(|m| m.to == rep));
    h.crash(rep.as_str());
    h.deliver_all();
    assert_eq!(
        put_reply(&h, call),
        None,
        "nothing decided without b's votes"
    );
    // The representative timeout fires: the coordinator asks another node of b.
    h.run_for(Duration::from_millis(200));
    let b_relays: std::collections::BTreeSet<NodeId> = h
        .sent
        .iter()
        .filter(|(f, t, m)| {
            *f == n("a1") && t.as_str().starts_with('b') && matches!(m, Message::Relay { .. })
        })
        .map(|(_, t, _)| t.clone())
        .collect();
    assert!(
        b_relays.len() >= 2,
        "the coordinator went through another node of b: {b_relays:?}"
    );
    // The other nodes of b granted through the new representative; the dead one's grant is
    // durable, so once it is back the proposal commits.
    h.restart(rep.as_str());
    h.run_for(Duration::from_secs(2));
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    h.run_for(Duration::from_secs(2));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
}

#[test]
fn read_of_reserved_key_during_commit_never_answers_unknown() {
    let mut h = Harness::new(3, 3);
    let call = h.put("a1", "k", "v");
    // Commits to cluster c are held back.
    let to_c_commit = |m: &InFlight| is_commit(m) && (m.to.as_str().starts_with('c'));
    let mut held = Vec::new();
    for _ in 0..100_000 {
        let Some(m) = h.net.pop_front() else { break };
        if to_c_commit(&m) {
            held.push(m);
        } else {
            h.deliver(m);
        }
    }
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    let at_b = h.get("b2", "k");
    assert_eq!(get_reply(&h, at_b), Some(GetOutcome::Value(v("v"))));
    // c1 still holds the reservation: it must wait, never say unknown.
    assert!(matches!(
        h.node("c1").key_state(&k("k")),
        Some(DurableKey::Reserved { .. })
    ));
    let at_c = h.get("c1", "k");
    assert_eq!(get_reply(&h, at_c), None);
    // Even if the Commit never comes, the read resolves and answers the value.
    h.run_for(Duration::from_millis(500));
    assert_eq!(get_reply(&h, at_c), Some(GetOutcome::Value(v("v"))));
    drop(held);
}

#[test]
fn restart_with_open_reservation_resolves_it() {
    let mut h = Harness::new(2, 3);
    let call = h.put("a1", "k", "v");
    // b3 grants, then crashes before the commit reaches it.
    h.deliver_all_dropping(|m| is_commit(m) && m.to == n("b3"));
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    h.crash("b3");
    assert!(matches!(
        h.slots[&n("b3")].disk.keys.get(&k("k")),
        Some(DurableKey::Reserved { .. })
    ));
    h.restart("b3");
    h.run_for(Duration::from_millis(500));
    assert!(h.stored_everywhere("k", "v"), "{:?}", h.states("k"));
    assert_eq!(h.reservations_left(), 0);
}

#[test]
fn duplicated_and_reordered_messages_change_nothing() {
    let mut plain = Harness::new(3, 3);
    let c1 = plain.put("a1", "k", "v");
    plain.deliver_all();
    let mut noisy = Harness::new(3, 3);
    let c2 = noisy.put("a1", "k", "v");
    for _ in 0..100_000 {
        if noisy.net.is_empty() {
            break;
        }
        // Newest first (reordered), and every message twice (duplicated).
        let m = noisy.net.pop_back().unwrap();
        let copy = InFlight {
            from: m.from.clone(),
            to: m.to.clone(),
            msg: m.msg.clone(),
        };
        noisy.deliver(m);
        noisy.deliver(copy);
    }
    noisy.run_for(Duration::from_secs(2));
    plain.run_for(Duration::from_secs(2));
    assert_eq!(put_reply(&plain, c1), Some(PutOutcome::Stored));
    assert_eq!(put_reply(&noisy, c2), Some(PutOutcome::Stored));
    assert_eq!(plain.states("k"), noisy.states("k"));
    assert!(noisy.violations().is_empty(), "{:?}", noisy.violations());
}

#[test]
fn retry_with_same_request_id_returns_first_outcome() {
    let mut h = Harness::new(2, 3);
    let first = h.put_with("a1", "k", "v", Some("req-1"));
    h.deliver_all();
    assert_eq!(put_reply(&h, first), Some(PutOutcome::Stored));
    let retry = h.put_with("a1", "k", "v", Some("req-1"));
    h.deliver_all();
    assert_eq!(
        put_reply(&h, retry),
        Some(PutOutcome::Stored),
        "not Exists: the same request"
    );
    // Even after a restart of the coordinator.
    h.crash("a1");
    h.restart("a1");
    let again = h.put_with("a1", "k", "v", Some("req-1"));
    h.deliver_all();
    assert_eq!(put_reply(&h, again), Some(PutOutcome::Stored));
    // Reusing the id for another value is refused.
    let reused = h.put_with("a1", "k", "other", Some("req-1"));
    assert_eq!(
        put_reply(&h, reused),
        Some(PutOutcome::Invalid(Invalid::RequestIdReused))
    );
    // A different request for the same key learns Exists.
    let other = h.put_with("a1", "k", "v2", Some("req-2"));
    h.deliver_all();
    assert_eq!(
        put_reply(&h, other),
        Some(PutOutcome::Exists { value: v("v") })
    );
}

#[test]
fn unavailable_then_retry_with_same_id_resolves() {
    let mut h = Harness::new(2, 3);
    h.crash("b1");
    let call = h.put_with("a1", "k", "v", Some("r"));
    h.run_for(Duration::from_secs(3));
    match put_reply(&h, call) {
        Some(PutOutcome::Unavailable(s)) => assert_eq!(s.nodes, vec![n("b1")]),
        other => panic!("expected Unavailable naming b1, got {other:?}"),
    }
    h.restart("b1");
    h.run_for(Duration::from_secs(3));
    let retry = h.put_with("a1", "k", "v", Some("r"));
    h.run_for(Duration::from_secs(1));
    let outcome = put_reply(&h, retry);
    // b1 never granted (it was down), so the proposal was fenced and aborted: Busy, no effect.
    assert_eq!(outcome, Some(PutOutcome::Busy));
    assert_eq!(h.reservations_left(), 0);
    assert!(h.states("k").values().all(Option::is_none));
}

#[test]
fn bad_client_input_is_invalid_and_changes_nothing() {
    let mut h = Harness::new(1, 3);
    let empty = h.put("a1", "", "v");
    assert_eq!(
        put_reply(&h, empty),
        Some(PutOutcome::Invalid(Invalid::EmptyKey))
    );
    let long_key = "x".repeat(h.config.key_bytes_max + 1);
    let c = h.put("a1", &long_key, "v");
    assert!(matches!(
        put_reply(&h, c),
        Some(PutOutcome::Invalid(Invalid::KeyTooLong { .. }))
    ));
    let big = "y".repeat(h.config.value_bytes_max + 1);
    let c = h.put("a1", "k", &big);
    assert!(matches!(
        put_reply(&h, c),
        Some(PutOutcome::Invalid(Invalid::ValueTooLong { .. }))
    ));
    let g = h.get("a1", "");
    assert_eq!(
        get_reply(&h, g),
        Some(GetOutcome::Invalid(Invalid::EmptyKey))
    );
    assert!(h.net.is_empty());
    assert!(h.slots[&n("a1")].disk == founded_disk(&h));
}

#[test]
fn bad_peer_input_is_rejected_and_changes_nothing() {
    let mut h = Harness::new(1, 3);
    let huge = Value::new(vec![0u8; h.config.value_bytes_max + 1]);
    let p = ProposalId {
        coordinator: n("a2"),
        counter: 1,
    };
    let digest = h.node("a1").membership().digest();
    let msg = Message::Request(Request::Reserve {
        p: p.clone(),
        key: k("k"),
        value: huge,
        digest,
    });
    h.input(&n("a1"), Input::Message { from: n("a2"), msg });
    let msg = Message::Request(Request::Reserve {
        p: p.clone(),
        key: k(""),
        value: v("x"),
        digest,
    });
    h.input(&n("a1"), Input::Message { from: n("a2"), msg });
    // A stranger may not reserve anything.
    let msg = Message::Request(Request::Reserve {
        p,
        key: k("k"),
        value: v("x"),
        digest,
    });
    h.input(
        &n("a1"),
        Input::Message {
            from: n("mallory"),
            msg,
        },
    );
    let rejected = h
        .notes
        .iter()
        .filter(|(_, n)| matches!(n, Note::PeerInputRejected { .. }))
        .count();
    assert_eq!(rejected, 3);
    assert!(h.net.is_empty());
    assert_eq!(h.slots[&n("a1")].disk, founded_disk(&h));
}

#[test]
fn garbage_bytes_on_the_wire_are_an_error_not_a_panic() {
    assert_eq!(wire::decode(&[]), Err(wire::WireError::Empty));
    assert!(matches!(
        wire::decode(&[9, 1, 2]),
        Err(wire::WireError::Version(9))
    ));
    assert!(wire::decode(&[wire::WIRE_VERSION, 0xff, 0xff, 0xff]).is_err());
    // A length prefix that claims far more than the frame holds must not allocate it.
    let mut claim = vec![wire::WIRE_VERSION, 5];
    claim.extend([0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(wire::decode(&claim).is_err());
    let ok = wire::encode(&Message::SyncRequest {
        after: Some(k("a")),
    });
    assert_eq!(
        wire::decode(&ok),
        Ok(Message::SyncRequest {
            after: Some(k("a"))
        })
    );
    // A byte after a message starts another one, which is cut short here.
    let mut trailing = ok.clone();
    trailing.push(0);
    assert!(matches!(
        wire::decode(&trailing),
        Err(wire::WireError::Malformed(_))
    ));
}

#[test]
fn joining_node_copies_keys_before_serving_reads() {
    let mut h = Harness::new(2, 3);
    for i in 0..5 {
        let c = h.put("a1", &format!("k{i}"), "v");
        h.deliver_all();
        assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    }
    // b4 joins: everyone discovers it, it starts from an empty disk.
    let all: Vec<(ClusterId, NodeId)> = h
        .slots
        .iter()
        .map(|(id, s)| (s.cluster.clone(), id.clone()))
        .collect();
    for (id, _) in all
        .iter()
        .map(|(c, id)| (id.clone(), c.clone()))
        .collect::<Vec<_>>()
    {
        h.input(
            &id,
            Input::NodeDiscovered {
                cluster: ClusterId::from("b"),
                node: n("b4"),
                network: net(),
            },
        );
    }
    let node = Node::new(
        h.config.clone(),
        n("b4"),
        ClusterId::from("b"),
        Recovered::joiner(net()),
        h.now,
        99,
    )
    .unwrap();
    h.slots.insert(
        n("b4"),
        Slot {
            cluster: ClusterId::from("b"),
            node: Some(node),
            disk: Recovered::joiner(net()),
        },
    );
    // And it discovers them.
    for (cluster, node) in all {
        h.input(
            &n("b4"),
            Input::NodeDiscovered {
                cluster,
                node,
                network: net(),
            },
        );
    }
    let early = h.get("b4", "k1");
    assert_eq!(
        get_reply(&h, early),
        Some(GetOutcome::NotReady(NotReady::Joining))
    );
    h.run_for(Duration::from_millis(100));
    assert!(h.node("b4").is_ready());
    let late = h.get("b4", "k3");
    assert_eq!(get_reply(&h, late), Some(GetOutcome::Value(v("v"))));
    // And the grown network accepts writes that include it.
    let c = h.put("b4", "fresh", "x");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert!(h.stored_everywhere("fresh", "x"));
}

#[test]
fn graceful_leave_resolves_reservations_first() {
    let mut h = Harness::new(2, 3);
    let _call = h.put("a1", "k", "v");
    // b2 granted but the commit to it is lost; then it leaves.
    h.deliver_all_dropping(|m| is_commit(m) && m.to == n("b2"));
    assert!(matches!(
        h.node("b2").key_state(&k("k")),
        Some(DurableKey::Reserved { .. })
    ));
    h.input(&n("b2"), Input::Leave);
    h.run_for(Duration::from_secs(1));
    assert!(
        h.notes
            .iter()
            .any(|(id, note)| *id == n("b2") && matches!(note, Note::LeaveComplete))
    );
    assert!(h.stored_everywhere("k", "v"));
}

#[test]
fn verify_read_reports_agreement_across_clusters() {
    let mut h = Harness::new(3, 3);
    let c = h.put("a1", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    let call = CallIdGen::verify(&mut h, "b2", "k");
    h.deliver_all();
    let Some(Reply::Verify(report)) = h.reply(call).cloned() else {
        panic!("{:?}", h.reply(call))
    };
    assert!(report.agree, "{report:?}");
    assert_eq!(report.answers.len(), 9);
    assert!(report.silent.nodes.is_empty());
    // A node that is down is reported silent, and the others still agree.
    h.crash("c3");
    let call = CallIdGen::verify(&mut h, "a2", "k");
    h.run_for(Duration::from_secs(3));
    let Some(Reply::Verify(report)) = h.reply(call).cloned() else {
        panic!()
    };
    assert_eq!(report.silent.nodes, vec![n("c3")]);
    assert!(report.agree);
}

#[test]
fn views_converge_after_a_missed_goodbye_and_the_retry_stores() {
    let mut h = Harness::new(2, 4);
    // a4 says goodbye, but only b1 hears it (the others were cut off at that moment).
    h.slots.remove(&n("a4"));
    h.input(
        &n("b1"),
        Input::NodeRemoved {
            node: n("a4"),
            goodbye: true,
        },
    );
    assert_ne!(
        h.node("b1").membership().digest(),
        h.node("a1").membership().digest()
    );
    // a1 proposes with a4 still in its view: b1 refuses (membership changed) and sends its
    // view; a1 learns the departure, then tells the others whose refusals follow. Those
    // refusals end by themselves, so the PUT keeps trying; a departure learned from a view
    // might be a removal, so grants wait until it settled (2 x read_lease), which here ends
    // about when the PUT's deadline does.
    let c = h.put("a1", "k", "v");
    let settled_at = h.now + h.config.read_lease * 2;
    h.run_for(h.config.read_lease * 2 - Duration::from_millis(100));
    assert_eq!(put_reply(&h, c), None, "still trying");
    assert!(
        h.states("k").values().all(Option::is_none),
        "nothing granted while settling"
    );
    h.run_for(Duration::from_secs(2));
    match put_reply(&h, c) {
        Some(PutOutcome::Stored) => assert!(h.stored_everywhere("k", "v")),
        Some(PutOutcome::Busy) => assert!(h.states("k").values().all(Option::is_none)),
        other => panic!("{other:?}"),
    }
    assert!(h.now > settled_at);
    let digest = h.node("b1").membership().digest();
    for id in ["a1", "a2", "a3", "b2", "b3", "b4"] {
        assert_eq!(h.node(id).membership().digest(), digest, "{id}");
        assert!(!h.node(id).membership().contains(&n("a4")));
    }
    let c = h.put("a1", "k2", "v");
    h.run_for(Duration::from_secs(1));
    assert_eq!(
        put_reply(&h, c),
        Some(PutOutcome::Stored),
        "{:?}",
        h.reply(c)
    );
    assert!(h.stored_everywhere("k2", "v"));
}

#[test]
fn a_missed_discovery_spreads_through_views() {
    let mut h = Harness::new(1, 3);
    h.join("a", "a4");
    h.run_for(Duration::from_millis(200));
    assert!(h.node("a4").is_ready());
    // A fifth node is discovered by a4 only (it reached nobody else yet).
    h.input(
        &n("a4"),
        Input::NodeDiscovered {
            cluster: ClusterId::from("a"),
            node: n("a5"),
            network: net(),
        },
    );
    let c = h.put("a1", "k", "v");
    h.run_for(Duration::from_millis(500));
    // a4 refused and sent its view: every member now counts a5, and writes wait for it.
    assert!(!matches!(put_reply(&h, c), Some(PutOutcome::Stored)));
    for id in ["a1", "a2", "a3"] {
        assert!(h.node(id).membership().contains(&n("a5")), "{id}");
    }
    // The recorded membership survives a restart.
    h.crash("a2");
    h.restart("a2");
    assert!(h.node("a2").membership().contains(&n("a5")));
    assert_eq!(h.node("a2").membership().len(), 5);
}

struct CallIdGen;
impl CallIdGen {
    fn verify(h: &mut Harness, at: &str, key: &str) -> CallId {
        let call = CallId(1_000_000 + h.replies.len() as u64 + h.sent.len() as u64);
        h.input(
            &n(at),
            Input::Client {
                call,
                cmd: Command::Verify { key: k(key) },
            },
        );
        call
    }
}

#[test]
fn operator_removal_refuses_while_reservations_name_the_node_unless_forced() {
    let mut h = Harness::new(2, 4);
    // b4 dies; a write that needs it stays open: a1..b2 hold reservations naming b4.
    h.crash("b4");
    let w = h.put("a1", "k", "v");
    h.run_for(Duration::from_secs(3));
    assert!(matches!(put_reply(&h, w), Some(PutOutcome::Unavailable(_))));
    assert!(h.node("a2").stats().reservations_open > 0);
    let call = CallId(77);
    let remove = |force| Input::Client {
        call,
        cmd: Command::RemoveNode {
            node: n("b4"),
            force,
        },
    };
    h.input(&n("a2"), remove(false));
    assert!(
        matches!(h.reply(call), Some(Reply::Remove(RemoveOutcome::Refused { open })) if !open.is_empty()),
        "{:?}",
        h.reply(call)
    );
    assert!(h.node("a2").membership().contains(&n("b4")));
    // Forced: removed here and, through a2, everywhere; the open write then aborts (b4 counts
    // as fenced) and the network accepts writes again without b4.
    h.input(&n("a2"), remove(true));
    assert_eq!(h.reply(call), Some(&Reply::Remove(RemoveOutcome::Removed)));
    h.run_for(Duration::from_secs(2));
    for id in ["a1", "a2", "a3", "a4", "b1", "b2", "b3"] {
        assert!(
            !h.node(id).membership().contains(&n("b4")),
            "{id} still counts b4"
        );
    }
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    let c = h.put("b1", "k2", "x");
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
}
