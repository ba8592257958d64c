//! Membership as protocol state (core/PROTOCOL.md, "Membership", "Views", "Joining",
//! "Leaving safely", "Operator removal"): what grows it and what may not, the digest every
//! request carries and how views converge when it differs, leaving with every decision handed
//! over, and the rules for removing a node.

mod harness;

use std::time::Duration;

use harness::*;
use replicator_core::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn remove(h: &mut Harness, at: &str, node: &str, force: bool) -> CallId {
    let call = CallId(9_000 + h.replies.len() as u64 + h.sent.len() as u64);
    h.input(
        &n(at),
        Input::Client {
            call,
            cmd: Command::RemoveNode {
                node: n(node),
                force,
            },
        },
    );
    call
}

fn remove_reply(h: &Harness, call: CallId) -> Option<RemoveOutcome> {
    match h.reply(call) {
        Some(Reply::Remove(r)) => Some(r.clone()),
        None => None,
        other => panic!("not a remove reply: {other:?}"),
    }
}

fn discovered(cluster: &str, node: &str) -> Input {
    Input::NodeDiscovered {
        cluster: ClusterId::from(cluster),
        node: n(node),
        network: net(),
    }
}

fn rejections_at(h: &Harness, at: &str) -> Vec<(NodeId, PeerFault)> {
    h.notes
        .iter()
        .filter_map(|(id, note)| match note {
            Note::PeerInputRejected { from, reason } if *id == n(at) => {
                Some((from.clone(), reason.clone()))
            }
            _ => None,
        })
        .collect()
}

fn members_of(h: &Harness, at: &str) -> Vec<String> {
    h.node(at)
        .membership()
        .nodes()
        .map(|x| x.to_string())
        .collect()
}

fn drain(node: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

// ==================================================================== growing

/// A discovered node is part of the digest every request carries: it is written (a barrier
/// write) before anything that depends on the grown membership leaves, and a restart resumes
/// with it.
#[test]
fn a_discovery_is_durable_before_anything_that_depends_on_it_leaves() {
    let disk = Recovered::founder(net())
        .with_members(["a1", "a2", "a3"].map(|x| (ClusterId::from("a"), n(x))));
    let mut node = Node::new(
        config(),
        n("a1"),
        "a".into(),
        disk.clone(),
        Box::new(DiskImage::new((disk.clone()).clone())),
        Time::ZERO,
        1,
    )
    .unwrap();
    let before = node.membership().digest();
    node.handle(Time::ZERO, discovered("a", "a4"));
    let out = drain(&mut node);
    assert!(
        matches!(&out[..], [Output::Persist { ops, urgency: Urgency::Barrier, .. }]
            if *ops == vec![WriteOp::AddMember { cluster: "a".into(), node: n("a4") }]),
        "{out:?}"
    );
    let grown = node.membership().digest();
    assert_ne!(grown, before);
    // A read's question in the grown membership is answered only once it is durable.
    let query = Message::Request(Request::Query {
        key: k("k"),
        tag: 1,
        digest: grown,
    });
    node.handle(
        Time::ZERO,
        Input::Message {
            from: n("a2"),
            msg: query,
        },
    );
    assert!(drain(&mut node).is_empty());
    node.handle(Time::ZERO, Input::Persisted { upto: WriteId(1) });
    let out = drain(&mut node);
    assert!(
        matches!(
            &out[..],
            [Output::Send {
                msg: Message::Response(Response::Query {
                    state: QueryState::Nothing,
                    ..
                }),
                ..
            }]
        ),
        "{out:?}"
    );
    // Rediscovering it writes nothing.
    node.handle(Time::ZERO, discovered("a", "a4"));
    assert!(drain(&mut node).is_empty());
    let mut after = disk;
    after.apply(&WriteOp::AddMember {
        cluster: "a".into(),
        node: n("a4"),
    });
    let restarted = Node::new(
        config(),
        n("a1"),
        "a".into(),
        after.clone(),
        Box::new(DiskImage::new(after)),
        Time::ZERO,
        2,
    )
    .unwrap();
    assert_eq!(restarted.membership().digest(), grown);
}

/// A node of another network is never added, and the driver is told; its messages are those
/// of a stranger.
#[test]
fn a_node_of_another_network_is_never_added_and_it_is_said() {
    let mut h = Harness::new(1, 3);
    let before = h.node("a1").membership().digest();
    h.input(
        &n("a1"),
        Input::NodeDiscovered {
            cluster: ClusterId::from("a"),
            node: n("x1"),
            network: NetworkId::from("another"),
        },
    );
    assert_eq!(h.node("a1").membership().digest(), before);
    assert!(!h.slots[&n("a1")].disk.lock().members.contains_key(&n("x1")));
    assert!(h.notes.iter().any(|(id, note)| *id == n("a1")
        && *note
            == Note::ForeignNetwork {
                node: n("x1"),
                network: NetworkId::from("another"),
                ours: net(),
            }));
    let msg = Message::Request(Request::Prepare {
        key: k("k"),
        ballot: Ballot::classic(1, n("x1")),
        digest: before,
    });
    h.inject("x1", "a1", msg);
    assert_eq!(h.node("a1").key_state(&k("k")), Ok(None));
    assert_eq!(
        rejections_at(&h, "a1"),
        vec![(n("x1"), PeerFault::RequestFromNonMember)]
    );
}

/// A member belongs to one cluster for good, a departed node never comes back under its old
/// identity, and the membership stays within the configured limits: a discovery that breaks
/// one of these rules changes nothing and names the rule.
#[test]
fn discoveries_that_break_a_membership_rule_are_rejected_and_change_nothing() {
    let mut h = Harness::with_config(
        2,
        3,
        Config {
            clusters_max: 2,
            cluster_nodes_max: 4,
            ..config()
        },
    );
    h.input(&n("a1"), discovered("a", "a4"));
    h.input(
        &n("a1"),
        Input::NodeRemoved {
            node: n("a4"),
            goodbye: true,
        },
    );
    let members = members_of(&h, "a1");
    let disk = h.slots[&n("a1")].disk.lock().clone();
    h.input(&n("a1"), discovered("b", "a2"));
    h.input(&n("a1"), discovered("a", "a4"));
    h.input(&n("a1"), discovered("c", "c1"));
    h.input(&n("a1"), discovered("a", "a5"));
    h.input(&n("a1"), discovered("a", "a6"));
    assert_eq!(
        rejections_at(&h, "a1"),
        vec![
            (
                n("a2"),
                PeerFault::MemberOfAnotherCluster {
                    node: n("a2"),
                    known: "a".into(),
                    claimed: "b".into(),
                }
            ),
            (n("a4"), PeerFault::DepartedNodeReturned),
            (n("c1"), PeerFault::MembershipWouldExceedLimits),
            (n("a6"), PeerFault::MembershipWouldExceedLimits),
        ]
    );
    // a5 was fine (the fourth node of a); nothing else got in.
    let mut expected = members;
    expected.push("a5".into());
    expected.sort_by_key(|x| n(x));
    assert_eq!(members_of(&h, "a1"), expected);
    let mut disk_after = disk;
    disk_after.apply(&WriteOp::AddMember {
        cluster: "a".into(),
        node: n("a5"),
    });
    assert_eq!(*h.slots[&n("a1")].disk.lock(), disk_after);
}

// ==================================================================== the digest and views

/// Every ballot request carries its membership's digest: a node whose membership differs
/// refuses it (MembershipChanged) and sends its view; views merge (they only grow, departures
/// included), and the next ballot goes through in the converged membership.
#[test]
fn a_request_of_another_membership_is_refused_and_views_converge() {
    let mut h = Harness::new(1, 3);
    // Only a1 discovered a4, which never comes up.
    h.input(&n("a1"), discovered("a", "a4"));
    assert_ne!(
        h.node("a1").membership().digest(),
        h.node("a2").membership().digest()
    );
    let call = h.put("a1", "k", "v");
    h.run_for(ms(3000));
    assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    let refused = h.count_sent(|_, to, m| {
        *to == n("a1")
            && matches!(
                m,
                Message::Response(Response::Ballot {
                    answer: Answer::Refused {
                        reason: RefuseReason::MembershipChanged
                    },
                    ..
                })
            )
    });
    assert!(refused > 0, "the first requests were refused");
    assert!(h.count_sent(|_, _, m| matches!(m, Message::View { .. })) > 0);
    let digest = h.node("a1").membership().digest();
    for id in ["a2", "a3"] {
        assert_eq!(h.node(id).membership().digest(), digest, "{id}");
        assert!(
            h.slots[&n(id)].disk.lock().members.contains_key(&n("a4")),
            "{id}"
        );
    }
    assert!(h.stored_everywhere("k", "v"));
}

/// A removal one member missed (its message was lost) still reaches it: its digest differs,
/// the next request it refuses exchanges views, and the view carries the departure.
#[test]
fn a_missed_removal_converges_through_views() {
    let mut h = Harness::new(1, 4);
    let call = remove(&mut h, "a1", "a4", true);
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    h.drop_where(|m| m.to == n("a2"));
    h.deliver_all();
    assert!(h.node("a2").membership().contains(&n("a4")));
    let put = h.put("a1", "k", "v");
    h.run_for(ms(3000));
    assert_eq!(put_reply(&h, put), Some(PutOutcome::Stored));
    assert!(!h.node("a2").membership().contains(&n("a4")));
    assert!(h.slots[&n("a2")].disk.lock().departed.contains(&n("a4")));
    assert_eq!(
        h.node("a2").membership().digest(),
        h.node("a1").membership().digest()
    );
    for id in ["a1", "a2", "a3"] {
        assert_eq!(h.stored_at(id, "k").map(|c| c.value), Some(v("v")), "{id}");
    }
}

// ==================================================================== joining

/// A joiner copies from a majority of its cluster's other members before it takes part:
/// until then it refuses ballots and reads (NotReady) and its own clients are told Joining.
#[test]
fn a_joiner_takes_no_part_until_its_copy_is_done() {
    let mut h = Harness::new(1, 3);
    let c = h.put("a1", "before", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    // The join is discovered, but a4's copy requests are lost for now.
    h.join("a", "a4");
    h.drop_where(|m| m.from == n("a4"));
    assert!(!h.node("a4").is_ready());
    let put = h.put("a4", "k", "v");
    assert_eq!(
        put_reply(&h, put),
        Some(PutOutcome::NotReady(NotReady::Joining))
    );
    let get = h.get("a4", "before");
    assert_eq!(
        get_reply(&h, get),
        Some(GetOutcome::NotReady(NotReady::Joining))
    );
    let digest = h.node("a4").membership().digest();
    h.inject(
        "a1",
        "a4",
        Message::Request(Request::Prepare {
            key: k("k"),
            ballot: Ballot::classic(1, n("a1")),
            digest,
        }),
    );
    assert_eq!(h.node("a4").key_state(&k("k")), Ok(None));
    assert!(h.net.iter().any(|m| m.from == n("a4")
        && matches!(
            &m.msg,
            Message::Response(Response::Ballot {
                answer: Answer::Refused {
                    reason: RefuseReason::NotReady
                },
                ..
            })
        )));
    h.run_for(ms(3000));
    assert!(h.node("a4").is_ready());
    assert!(h.slots[&n("a4")].disk.lock().ready);
    assert_eq!(h.stored_at("a4", "before").map(|c| c.value), Some(v("v")));
    let put = h.put("a4", "k", "w");
    h.run_for(ms(1000));
    assert_eq!(put_reply(&h, put), Some(PutOutcome::Stored));
}

// ==================================================================== leaving

fn left_complete(h: &Harness, id: &str) -> bool {
    h.notes
        .iter()
        .any(|(x, note)| *x == n(id) && *note == Note::LeaveComplete)
}

/// A leaving node completes only once every other member of its cluster answered that it
/// pulled the leaver's decisions (LeaveCheck, catch-up, LeaveClear): a member that cannot
/// reach it holds the goodbye back, and at the goodbye every member holds every decision the
/// leaver knew, so its absence takes nothing from any majority.
#[test]
fn a_leaver_completes_only_once_its_cluster_holds_its_decisions() {
    let mut h = Harness::new(1, 4);
    let c = h.put("a1", "k", "v");
    // Every Decide is lost: only a1 stores k (the others accepted it at ballot 0).
    h.deliver_all_dropping(is_decide);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    assert_eq!(h.stored_count("k"), 1);
    h.input(&n("a1"), Input::Leave);
    // a4 cannot reach a1 for a while: a1 may not go.
    let cut = |m: &InFlight| m.from == n("a4") && m.to == n("a1");
    h.run_for_dropping(ms(2000), cut);
    assert!(!left_complete(&h, "a1"));
    // Healed: a4 asks again once its lost request is `sync_timeout` old, pulls, and clears.
    h.run_for(h.config.sync_timeout + ms(500));
    assert!(left_complete(&h, "a1"));
    assert_eq!(h.stored_count("k"), 4);
    h.remove("a1", true);
    // The rest go on without it: reads and writes.
    let g = h.get("a2", "k");
    let p = h.put("a3", "k2", "w");
    h.run_for(ms(1000));
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Value(v("v"))));
    assert_eq!(put_reply(&h, p), Some(PutOutcome::Stored));
}

/// A leaving node first decides every value it accepted and nobody decided (its coordinator
/// died), taking part in its own ballots only; then it hands over.
#[test]
fn a_leaver_decides_what_it_accepted_before_it_completes() {
    let mut h = Harness::new(1, 3);
    let c = h.put("a3", "k", "v");
    // Every Accept arrives; a3 hears nothing back and dies.
    h.deliver_all_dropping(|m| m.to == n("a3") && m.from != n("a3"));
    h.crash("a3");
    assert_eq!(put_reply(&h, c), None);
    assert!(h.accepted_at("a1", "k").is_some());
    h.input(&n("a1"), Input::Leave);
    let refused = h.put("a1", "other", "x");
    assert_eq!(
        put_reply(&h, refused),
        Some(PutOutcome::NotReady(NotReady::Leaving))
    );
    h.restart("a3");
    h.run_for(ms(3000));
    assert!(left_complete(&h, "a1"));
    for id in ["a1", "a2", "a3"] {
        assert_eq!(h.stored_at(id, "k").map(|c| c.value), Some(v("v")), "{id}");
    }
    assert_eq!(h.node("a1").key_state(&k("other")), Ok(None));
}

// ==================================================================== operator removal

/// Only a cluster with an odd number of members may lose one that cannot hand over what it
/// holds (quorum::may_lose_one): unforced, a removal in an even cluster is refused, and
/// nothing is removed anywhere.
#[test]
fn an_unforced_removal_in_an_even_cluster_is_refused_and_removes_nothing() {
    let mut h = Harness::new(1, 4);
    h.crash("a4");
    let call = remove(&mut h, "a1", "a4", false);
    h.run_for(ms(3000));
    assert_eq!(
        remove_reply(&h, call),
        Some(RemoveOutcome::EvenCluster { members: 4 })
    );
    assert_eq!(
        h.count_sent(|_, _, m| matches!(m, Message::RemoveCheck { .. })),
        0
    );
    for id in ["a1", "a2", "a3"] {
        assert!(h.node(id).membership().contains(&n("a4")), "{id}");
        assert!(h.slots[&n(id)].disk.lock().departed.is_empty(), "{id}");
    }
}

/// Unforced, only a dead node is removed: one that answers the check is alive.
#[test]
fn an_unforced_removal_of_a_live_node_is_refused() {
    let mut h = Harness::new(1, 3);
    let call = remove(&mut h, "a1", "a3", false);
    h.run_for(ms(3000));
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Alive));
    for id in ["a1", "a2", "a3"] {
        assert_eq!(h.node(id).membership().len(), 3, "{id}");
        assert!(!h.node(id).is_removed());
    }
}

/// Unforced, a dead node of an odd cluster is removed once every other member of its
/// cluster answered with the same members; then everywhere, durably.
#[test]
fn an_unforced_removal_needs_every_other_member_to_agree_on_the_cluster() {
    let mut h = Harness::new(2, 3);
    h.crash("a3");
    let call = remove(&mut h, "b1", "a3", false);
    h.deliver_all();
    assert_eq!(remove_reply(&h, call), None, "it waits for a3's silence");
    h.run_for(ms(3000));
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    for id in ["a1", "a2", "b1", "b2", "b3"] {
        assert!(!h.node(id).membership().contains(&n("a3")), "{id}");
        assert!(
            h.slots[&n(id)].disk.lock().departed.contains(&n("a3")),
            "{id}"
        );
    }
}

#[test]
fn an_unforced_removal_without_every_members_agreement_removes_nothing() {
    // a2 is silent: not confirmed.
    let mut h = Harness::new(1, 5);
    h.crash("a5");
    let call = remove(&mut h, "a1", "a5", false);
    h.run_for_dropping(ms(3000), |m| m.from == n("a2"));
    assert_eq!(
        remove_reply(&h, call),
        Some(RemoveOutcome::Unconfirmed {
            silent: vec![n("a2")],
            disagree: vec![],
        })
    );
    assert!(h.node("a1").membership().contains(&n("a5")));
    // a2 knows another member of the cluster (a6, discovered there only): its list differs.
    let mut h = Harness::new(1, 3);
    h.crash("a3");
    h.input(&n("a2"), discovered("a", "a6"));
    let call = remove(&mut h, "a1", "a3", false);
    h.run_for(ms(3000));
    assert_eq!(
        remove_reply(&h, call),
        Some(RemoveOutcome::Unconfirmed {
            silent: vec![],
            disagree: vec![n("a2")],
        })
    );
    assert!(h.node("a1").membership().contains(&n("a3")));
}

/// One removal is checked at a time; a node that is not a member (or the node itself) is
/// unknown; a joiner, whose view may lack members, refuses to check one.
#[test]
fn removal_requests_that_cannot_be_checked_are_refused() {
    let mut h = Harness::new(1, 5);
    h.crash("a5");
    h.crash("a4");
    let first = remove(&mut h, "a1", "a5", false);
    let second = remove(&mut h, "a1", "a4", false);
    assert_eq!(remove_reply(&h, second), Some(RemoveOutcome::InProgress));
    let stranger = remove(&mut h, "a1", "x9", false);
    assert_eq!(remove_reply(&h, stranger), Some(RemoveOutcome::Unknown));
    let itself = remove(&mut h, "a1", "a1", true);
    assert_eq!(remove_reply(&h, itself), Some(RemoveOutcome::Unknown));
    h.run_for(ms(3000));
    // a4 is silent too: a5's removal is not confirmed.
    assert_eq!(
        remove_reply(&h, first),
        Some(RemoveOutcome::Unconfirmed {
            silent: vec![n("a4")],
            disagree: vec![],
        })
    );
    let mut h = Harness::new(1, 3);
    h.crash("a3");
    h.join("a", "a4");
    assert!(!h.node("a4").is_ready());
    let call = remove(&mut h, "a4", "a3", false);
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::NotReady));
    assert!(h.node("a4").membership().contains(&n("a3")));
}

/// Forced, a removal skips every check (even cluster, live node): the node is removed
/// everywhere, it is told, and from then on it serves nothing, across restarts too.
#[test]
fn a_forced_removal_removes_even_a_live_node_which_then_serves_nothing() {
    let mut h = Harness::new(1, 4);
    let c = h.put("a4", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    let call = remove(&mut h, "a1", "a4", true);
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    h.deliver_all();
    assert!(h.node("a4").is_removed());
    assert!(
        h.notes
            .iter()
            .any(|(id, note)| *id == n("a4") && *note == Note::SelfRemoved { by: n("a1") })
    );
    for id in ["a1", "a2", "a3"] {
        assert!(!h.node(id).membership().contains(&n("a4")), "{id}");
    }
    let g = h.get("a4", "k");
    assert_eq!(
        get_reply(&h, g),
        Some(GetOutcome::NotReady(NotReady::Removed))
    );
    let p = h.put("a4", "k2", "v");
    assert_eq!(
        put_reply(&h, p),
        Some(PutOutcome::NotReady(NotReady::Removed))
    );
    // It promises nothing either: a Prepare of its old membership is refused (Departed).
    let digest = h.node("a4").membership().digest();
    h.inject(
        "a2",
        "a4",
        Message::Request(Request::Prepare {
            key: k("z"),
            ballot: Ballot::classic(1, n("a2")),
            digest,
        }),
    );
    assert_eq!(h.node("a4").key_state(&k("z")), Ok(None));
    assert!(h.net.iter().any(|m| m.from == n("a4")
        && matches!(
            &m.msg,
            Message::Response(Response::Ballot {
                answer: Answer::Refused {
                    reason: RefuseReason::Departed
                },
                ..
            })
        )));
    h.net.clear();
    h.crash("a4");
    h.restart("a4");
    assert!(h.node("a4").is_removed());
    // The three left go on.
    let p = h.put("a2", "k3", "w");
    h.run_for(ms(1000));
    assert_eq!(put_reply(&h, p), Some(PutOutcome::Stored));
}

/// A removed node that was down when it was removed learns it from the first member it
/// talks to.
#[test]
fn a_removed_node_that_was_down_is_told_when_it_comes_back() {
    let mut h = Harness::new(1, 3);
    h.crash("a3");
    let call = remove(&mut h, "a1", "a3", false);
    h.run_for(ms(3000));
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    h.restart("a3");
    assert!(!h.node("a3").is_removed());
    let g = h.get("a3", "k");
    h.run_for(ms(2000));
    assert!(h.node("a3").is_removed());
    assert!(h.slots[&n("a3")].disk.lock().departed.contains(&n("a3")));
    assert_ne!(get_reply(&h, g), Some(GetOutcome::Unknown));
}
