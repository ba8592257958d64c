//! Durable membership, the network identity, operator removal and the read lease
//! (core/PROTOCOL.md, "Durable membership and the network identity"), plus the paths the
//! random swarm reaches rarely: multi-page join copies, a request id whose proposal lost to
//! another value, verify reports that disagree.

mod harness;

use std::time::Duration;

use harness::*;
use replicator_core::*;

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

// ==================================================================== durable membership

/// The split brain, in the core: cluster a restarts while b is down. It resumes with
/// the whole recorded membership, so its writes wait for b (Unavailable) and nothing commits.
#[test]
fn cluster_restarted_while_the_rest_is_down_resumes_its_whole_membership_and_commits_nothing() {
    let mut h = Harness::new(2, 3);
    let c = h.put("a1", "before", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    for id in ["b1", "b2", "b3", "a1", "a2", "a3"] {
        h.crash(id);
    }
    for id in ["a1", "a2", "a3"] {
        h.restart(id);
        assert_eq!(h.node(id).membership().len(), 6, "{id}");
    }
    let c = h.put("a2", "during", "x");
    h.run_for(Duration::from_secs(3));
    let Some(PutOutcome::Unavailable(silence)) = put_reply(&h, c) else {
        panic!("{:?}", h.reply(c))
    };
    assert_eq!(silence.clusters, vec![ClusterId::from("b")]);
    assert!(
        h.states("during")
            .values()
            .all(|s| !matches!(s, Some(DurableKey::Stored { .. })))
    );
    for id in ["b1", "b2", "b3"] {
        h.restart(id);
    }
    h.run_for(Duration::from_secs(3));
    assert_eq!(h.reservations_left(), 0);
}

#[test]
fn every_discovery_is_written_before_it_is_used() {
    let mut h = Harness::new(1, 3);
    h.input(
        &n("a1"),
        Input::NodeDiscovered {
            cluster: ClusterId::from("a"),
            node: n("a4"),
            network: net(),
        },
    );
    assert_eq!(
        h.slots[&n("a1")].disk.members.get(&n("a4")),
        Some(&ClusterId::from("a"))
    );
    // A departure drops it from the record.
    h.input(
        &n("a1"),
        Input::NodeRemoved {
            node: n("a4"),
            goodbye: true,
        },
    );
    assert!(!h.slots[&n("a1")].disk.members.contains_key(&n("a4")));
    assert!(h.slots[&n("a1")].disk.departed.contains(&n("a4")));
}

// ==================================================================== network identity

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
    assert!(!h.slots[&n("a1")].disk.members.contains_key(&n("x1")));
    assert!(h.notes.iter().any(|(id, note)| *id == n("a1")
        && matches!(note, Note::ForeignNetwork { node, network, ours }
            if *node == n("x1") && *network == NetworkId::from("another") && *ours == net())));
    // Its messages are those of a stranger.
    let msg = Message::Request(Request::Reserve {
        p: ProposalId {
            coordinator: n("x1"),
            counter: 1,
        },
        key: k("k"),
        value: v("v"),
        digest: before,
    });
    h.inject("x1", "a1", msg);
    assert_eq!(h.node("a1").key_state(&k("k")), None);
}

// ==================================================================== operator removal

#[test]
fn removing_a_live_node_is_refused_and_changes_nothing() {
    let mut h = Harness::new(1, 4);
    let call = remove(&mut h, "a1", "a4", false);
    h.run_for(Duration::from_secs(3));
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Alive));
    for id in ["a1", "a2", "a3", "a4"] {
        assert_eq!(h.node(id).membership().len(), 4, "{id}");
        assert!(!h.node(id).is_removed());
    }
}

#[test]
fn removing_a_dead_node_waits_for_its_silence_then_removes_it_everywhere() {
    let mut h = Harness::new(1, 4);
    h.crash("a4");
    let call = remove(&mut h, "a1", "a4", false);
    h.deliver_all();
    assert_eq!(remove_reply(&h, call), None, "it waits for a4's silence");
    h.run_for(Duration::from_secs(3));
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    for id in ["a1", "a2", "a3"] {
        assert!(!h.node(id).membership().contains(&n("a4")), "{id}");
    }
    // Writes resume once the removal settled (a4's read lease, were it alive, ran out).
    let c = h.put("a2", "k", "v");
    h.run_for(Duration::from_secs(2));
    assert!(matches!(
        put_reply(&h, c),
        Some(PutOutcome::Busy | PutOutcome::Stored)
    ));
    h.run_for(h.config.read_lease * 2);
    let c = h.put("a2", "k2", "v");
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    // The removed node comes back from its disk: the first member it talks to tells it, and
    // it serves nothing from then on, across restarts too.
    h.restart("a4");
    assert!(!h.node("a4").is_removed());
    let g = h.get("a4", "k2");
    h.run_for(Duration::from_secs(2));
    assert!(h.node("a4").is_removed(), "a4 learned it was removed");
    assert_eq!(
        get_reply(&h, g),
        Some(GetOutcome::NotReady(NotReady::Removed))
    );
    h.crash("a4");
    h.restart("a4");
    assert!(h.node("a4").is_removed());
    let c = h.put("a4", "k3", "v");
    assert_eq!(
        put_reply(&h, c),
        Some(PutOutcome::NotReady(NotReady::Removed))
    );
}

#[test]
fn a_forcibly_removed_live_node_is_told_and_stops_serving() {
    let mut h = Harness::new(1, 4);
    let call = remove(&mut h, "a1", "a4", true);
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    h.deliver_all();
    assert!(h.node("a4").is_removed());
    assert!(
        h.notes
            .iter()
            .any(|(id, note)| *id == n("a4") && matches!(note, Note::SelfRemoved { .. }))
    );
    let g = h.get("a4", "anything");
    assert_eq!(
        get_reply(&h, g),
        Some(GetOutcome::NotReady(NotReady::Removed))
    );
    // It grants nothing either: a Reserve naming the old view is refused as departed.
    let digest = h.node("a4").membership().digest();
    h.inject(
        "a1",
        "a4",
        Message::Request(Request::Reserve {
            p: ProposalId {
                coordinator: n("a1"),
                counter: 77,
            },
            key: k("z"),
            value: v("v"),
            digest,
        }),
    );
    assert_eq!(h.node("a4").key_state(&k("z")), None);
}

// ==================================================================== read lease

/// A node cut off from every member cannot tell whether it was removed: it answers no
/// "unknown key" (its lease cannot be renewed), while values it stores are still served.
#[test]
fn an_isolated_node_answers_no_unknown_key_but_still_serves_values() {
    let mut h = Harness::new(1, 3);
    let c = h.put("a1", "k", "v");
    h.deliver_all();
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    h.run_for(h.config.read_lease * 2);
    let isolated = |m: &InFlight| m.from == n("a3") || m.to == n("a3");
    let unknown = h.get("a3", "missing");
    let known = h.get("a3", "k");
    h.run_for_dropping(Duration::from_secs(2), isolated);
    assert_eq!(get_reply(&h, known), Some(GetOutcome::Value(v("v"))));
    assert!(
        matches!(get_reply(&h, unknown), Some(GetOutcome::Unavailable(_))),
        "{:?}",
        h.reply(unknown)
    );
    // Reconnected, the lease renews and the same read answers.
    let unknown = h.get("a3", "missing");
    h.run_for(Duration::from_millis(100));
    assert_eq!(get_reply(&h, unknown), Some(GetOutcome::Unknown));
}

/// The removed node is cut off from the remover only, so it is not told, and it renewed its
/// read lease through the other members just before they applied the removal. Those members
/// grant nothing until twice the lease has passed, so a key committed without it is never
/// read "unknown" there.
#[test]
fn a_removed_node_that_was_not_told_never_reads_a_later_key_as_unknown() {
    let mut h = Harness::new(1, 4);
    let cut = |m: &InFlight| {
        (m.from == n("a4") && m.to == n("a1")) || (m.from == n("a1") && m.to == n("a4"))
    };
    let call = remove(&mut h, "a1", "a4", false);
    let check_ends = h.now + h.config.verify_timeout;
    h.run_for_dropping(h.config.verify_timeout - Duration::from_millis(50), cut);
    // a4 renews its lease through a2 and a3 moments before the removal takes effect.
    let g = h.get("a4", "warm");
    h.run_for_dropping(Duration::from_millis(10), cut);
    assert_eq!(get_reply(&h, g), Some(GetOutcome::Unknown));
    h.run_for_dropping(check_ends.since(h.now) + Duration::from_millis(1), cut);
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
    assert!(!h.node("a4").is_removed());
    // A write without a4 right away, then a read at a4 that starts after it answered: the
    // write is refused while the removal settles, so "unknown" there is still true.
    let c = h.put("a1", "later", "v");
    h.run_for_dropping(Duration::from_millis(20), cut);
    let g = h.get("a4", "later");
    h.run_for_dropping(Duration::from_millis(20), cut);
    assert!(
        !(put_reply(&h, c) == Some(PutOutcome::Stored)
            && get_reply(&h, g) == Some(GetOutcome::Unknown)),
        "stale read: the key was stored, then read as unknown at the removed node"
    );
    assert_ne!(put_reply(&h, c), Some(PutOutcome::Stored));
    // Later the write goes through, and a4, having asked, knows it was removed.
    h.run_for_dropping(h.config.read_lease * 2, cut);
    let c = h.put("a1", "later", "v");
    h.run_for_dropping(Duration::from_secs(1), cut);
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    let g = h.get("a4", "later");
    h.run_for_dropping(Duration::from_secs(2), cut);
    assert_ne!(get_reply(&h, g), Some(GetOutcome::Unknown));
    assert!(h.node("a4").is_removed());
}

// ==================================================================== rare paths

#[test]
fn a_join_copies_many_pages() {
    let mut h = Harness::with_config(
        1,
        3,
        Config {
            sync_page_keys: 2,
            ..config()
        },
    );
    for i in 0..7 {
        let c = h.put("a1", &format!("k{i}"), "v");
        h.deliver_all();
        assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    }
    h.join("a", "a4");
    h.run_for(Duration::from_millis(500));
    assert!(h.node("a4").is_ready());
    for i in 0..7 {
        assert!(h.stored_everywhere(&format!("k{i}"), "v"));
    }
    let pages = h.count_sent(|_, to, m| *to == n("a4") && matches!(m, Message::SyncPage { .. }));
    assert!(pages >= 4, "{pages} pages");
}

/// The coordinator crashed with its proposal open; it restarts, its proposal is aborted, and
/// another value wins the key. The client retries with the same request id: it learns Exists
/// with the winner's value (the request id's recovery path meeting another stored value).
#[test]
fn a_retried_request_whose_proposal_lost_learns_the_winner() {
    let mut h = Harness::new(1, 3);
    let c = h.put_with("a1", "k", "mine", Some("req-1"));
    h.drop_where(|m| m.from == n("a1"));
    h.crash("a1");
    assert_eq!(put_reply(&h, c), None);
    h.restart("a1");
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.reservations_left(), 0, "{:?}", h.states("k"));
    let w = h.put("a2", "k", "theirs");
    h.run_for(Duration::from_secs(1));
    assert_eq!(put_reply(&h, w), Some(PutOutcome::Stored));
    let retry = h.put_with("a1", "k", "mine", Some("req-1"));
    h.deliver_all();
    assert_eq!(
        put_reply(&h, retry),
        Some(PutOutcome::Exists { value: v("theirs") })
    );
    assert!(h.stored_everywhere("k", "theirs"));
}

#[test]
fn a_verify_read_says_when_nodes_disagree() {
    let mut h = Harness::new(1, 3);
    // The commit to a3 is lost: a3 still holds the reservation.
    let c = h.put("a1", "k", "v");
    h.deliver_all_dropping(|m| is_commit(m) && m.to == n("a3"));
    assert_eq!(put_reply(&h, c), Some(PutOutcome::Stored));
    let call = CallId(5_000);
    h.input(
        &n("a2"),
        Input::Client {
            call,
            cmd: Command::Verify { key: k("k") },
        },
    );
    h.deliver_all();
    let Some(Reply::Verify(report)) = h.reply(call).cloned() else {
        panic!("{:?}", h.reply(call))
    };
    assert!(!report.agree, "{report:?}");
    assert!(report.silent.nodes.is_empty());
    assert!(
        report
            .answers
            .iter()
            .any(|(id, s)| *id == n("a3") && *s == ReadState::Reserved)
    );
}

/// A node still joining refuses an unforced removal: its view may lack members, and a member
/// the check misses may hold a reservation naming the removed node (sim seed 315417595: a
/// joiner that knew one member of its cluster removed a node whose grant was still open, and
/// a resolver then aborted a committed proposal). A ready member does the same removal.
#[test]
fn a_joining_node_refuses_an_unforced_removal() {
    let mut h = Harness::new(1, 4);
    h.crash("a3");
    h.join("a", "a5");
    assert!(!h.node("a5").is_ready(), "the copy has not run yet");
    let call = remove(&mut h, "a5", "a3", false);
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::NotReady));
    assert!(h.node("a5").membership().contains(&n("a3")));
    h.run_for(Duration::from_secs(2));
    assert!(h.node("a5").is_ready());
    let call = remove(&mut h, "a5", "a3", false);
    h.run_for(Duration::from_secs(2));
    assert_eq!(remove_reply(&h, call), Some(RemoveOutcome::Removed));
}
