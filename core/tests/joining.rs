//! Joining (core/PROTOCOL.md, "Joining"): how many members a joiner copies from, and nodes
//! that join together.

mod harness;

use std::time::Duration;

use harness::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// Runs the harness in small steps until `id` is ready (at most `limit`), so that what it
/// holds is checked at the moment it starts to vote, before catch-up fills anything in.
fn run_until_ready(h: &mut Harness, id: &str, limit: Duration) {
    let mut waited = Duration::ZERO;
    while !h.node(id).is_ready() {
        assert!(waited < limit, "{id} not ready after {limit:?}");
        h.run_for(ms(5));
        waited += ms(5);
    }
}

/// A value accepted by a2 and a3 only (a1 never saw it, a2 then died): two nodes join `a`
/// together. Each must copy a majority of the members that are not joining (a1, a2, a3: two
/// of them, a2 silent), so each holds the accepted value the moment it is ready. Copying
/// fewer (the `JoinerCopiesOneMember` bug) lets a joiner start from a1's records alone, and
/// a quorum of new members could then choose another value.
#[test]
fn joiners_copy_a_majority_of_the_members_that_are_not_joining() {
    let mut h = Harness::new(1, 3);
    let _open = h.put("a2", "open", "w");
    // a1 hears nothing of it, and a2 hears no answer (so nothing is decided).
    h.deliver_all_dropping(|m| m.to == n("a1") || (m.to == n("a2") && m.from != n("a2")));
    h.crash("a2");
    assert!(h.accepted_at("a3", "open").is_some());
    assert!(h.accepted_at("a1", "open").is_none());
    h.join("a", "a4");
    h.join("a", "a5");
    // While a3's pages are lost, a joiner has only a1 to copy from: not enough.
    h.run_for_dropping(ms(3_000), |m| {
        m.from == n("a3") && matches!(m.msg, replicator_core::Message::SyncPage { .. })
    });
    for joiner in ["a4", "a5"] {
        assert!(
            !h.node(joiner).is_ready(),
            "{joiner} started voting with a1's records alone"
        );
    }
    for joiner in ["a4", "a5"] {
        run_until_ready(&mut h, joiner, ms(10_000));
        assert_eq!(
            h.accepted_at(joiner, "open").map(|(_, p)| p.value),
            Some(v("w")),
            "{joiner} started voting without a3's accepted value"
        );
    }
}

/// Nodes started together never wait for each other: two joining an existing cluster, and
/// three forming a new cluster (none of them ready, so they copy from another cluster). Each
/// answers the others `NotReady`, which leaves it out of their count.
#[test]
fn nodes_that_join_together_all_become_ready() {
    let mut h = Harness::new(1, 3);
    let call = h.put("a1", "k", "v1");
    h.deliver_all();
    assert!(put_reply(&h, call).is_some());
    for (cluster, id) in [
        ("a", "a4"),
        ("a", "a5"),
        ("b", "b1"),
        ("b", "b2"),
        ("b", "b3"),
    ] {
        h.join(cluster, id);
    }
    h.run_for(ms(5_000));
    for id in ["a4", "a5", "b1", "b2", "b3"] {
        assert!(h.node(id).is_ready(), "{id} is still joining");
        assert_eq!(
            h.stored_at(id, "k").map(|c| c.value),
            Some(v("v1")),
            "{id} copied the decided key"
        );
    }
    // And the grown network decides with all of them.
    let call = h.put("b2", "after", "v2");
    h.run_for(ms(1_000));
    assert!(put_reply(&h, call).is_some_and(|o| o == replicator_core::PutOutcome::Stored));
}

/// A node that was removed may have voted before: it answers a copy request `NotMember`, not
/// `NotReady`, so no joiner leaves it out of its count as if it held nothing.
#[test]
fn a_removed_node_is_not_counted_as_joining() {
    let mut h = Harness::new(1, 3);
    h.join("a", "a4");
    run_until_ready(&mut h, "a4", ms(5_000));
    // a3 hears it was removed (a forced removal asked at a1), then a joiner asks it.
    let call = replicator_core::CallId(9_999);
    let cmd = replicator_core::Command::RemoveNode {
        node: n("a3"),
        force: true,
    };
    h.input(&n("a1"), replicator_core::Input::Client { call, cmd });
    h.deliver_all();
    assert!(h.reply(call).is_some());
    assert!(h.node("a3").is_removed());
    h.inject(
        "a4",
        "a3",
        replicator_core::Message::SyncRequest {
            after: None,
            digest: h.node("a4").membership().digest(),
        },
    );
    let answers: Vec<_> = h
        .net
        .iter()
        .filter(|m| m.from == n("a3") && m.to == n("a4"))
        .map(|m| format!("{:?}", m.msg))
        .collect();
    assert!(
        answers.iter().all(|a| a.contains("NotMember")) && !answers.is_empty(),
        "{answers:?}"
    );
}

/// A joiner that discovered only another cluster (its own cluster's members are behind a
/// partition) must not think itself alone in its cluster: the other cluster's members refuse
/// its copy requests while their views differ and send their views, so it learns its own
/// cluster's members and copies from them. Sim seed 9203489: such a joiner copied from the
/// other cluster, became ready as its cluster's only member and, a quorum of itself,
/// accepted a value that then overrode one chosen by the rest of its cluster.
#[test]
fn a_joiner_that_sees_only_another_cluster_learns_its_own_before_it_votes() {
    let mut h = Harness::new(2, 3);
    let call = h.put("b1", "k", "v1");
    h.deliver_all();
    assert!(put_reply(&h, call).is_some());
    // b4 joins b, but only a's members and b4 discover each other.
    h.join_discovering("b", "b4", |node| node.as_str().starts_with('a'));
    h.run_for(ms(5_000));
    let mut known: Vec<String> = h
        .node("b4")
        .membership()
        .nodes_of(&"b".into())
        .iter()
        .map(|node| node.as_str().to_string())
        .collect();
    known.sort();
    assert_eq!(
        known,
        ["b1", "b2", "b3", "b4"],
        "a's views name b's members"
    );
    assert!(
        !h.node("b4").is_ready(),
        "b4 became ready with copies from another cluster while its own has members"
    );
    // Once its own cluster counts it, it copies from it and votes.
    for member in ["b1", "b2", "b3"] {
        h.discover(member, "b", "b4");
    }
    run_until_ready(&mut h, "b4", ms(10_000));
    assert_eq!(h.stored_at("b4", "k").map(|c| c.value), Some(v("v1")));
    let call = h.put("b4", "after", "v2");
    h.run_for(ms(1_000));
    assert!(put_reply(&h, call).is_some_and(|o| o == replicator_core::PutOutcome::Stored));
}
