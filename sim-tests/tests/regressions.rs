//! Seeds that once found a bug in the core. Each must keep passing. The first few found bugs
//! of the protocol before quorums (reservations, watermarks); they stay as seeds with a
//! history of joins and leaves under faults.

use replicator_core::InjectedBug;
use sim_tests::{Shape, bug_shape_targeted, check_seed};
use transport_sim::FaultKind;

fn must_pass(seed: u64, shape: Shape) {
    if let Err(report) = check_seed(seed, &shape) {
        panic!("{report}");
    }
}

/// A joining node copied a reservation of a proposal it had denied (NotReady) while the
/// refusal sat in a watermark rather than the refusal table; its Resolve then counted its own
/// vote as Granted and committed a proposal the coordinator had aborted.
#[test]
fn joiner_copies_reservation_refused_under_watermark() {
    must_pass(
        1079,
        Shape {
            leaves: Some(1),
            ..Shape::default()
        },
    );
}

/// A joining node skipped copying a reservation it had no vote on because a watermark (an
/// over-approximation of its refusals) covered it; the proposal committed and the node never
/// learned the key.
#[test]
fn joiner_adopts_reservation_it_has_no_vote_on() {
    must_pass(3186, Shape::default());
}

/// A representative joined by many resolvers of one proposal appended every round's answers,
/// until its reply had more responses than receivers accept, so nobody learned the votes.
#[test]
fn relay_reply_keeps_one_response_per_node() {
    must_pass(2191, Shape::default());
}

/// Not a core bug: the world did not tell a node that joined after a goodbye who had left, so
/// it waited forever for the departed node's vote on a reservation it copied.
#[test]
fn joiner_learns_earlier_goodbyes() {
    must_pass(352_934_371, Shape::default());
}

/// A joining node saw a copied reservation aborted, folded that refusal into a watermark
/// (tiny refusal table), then copied the same reservation again on a later sync: it held
/// Reserved(P) after processing Abort(P). Joining nodes now fold refusals only once ready.
/// Found by the CI range of commit ef3d38d.
#[test]
fn joiner_never_readopts_a_reservation_it_saw_aborted() {
    must_pass(242718901, Shape::default());
}

/// The shape that hunts `bug`, run with the correct core.
fn hunting(bug: InjectedBug) -> Shape {
    Shape {
        bug: None,
        ..bug_shape_targeted(bug)
    }
}

/// With `ForgetMembershipOnRestart`, clusters restarted while cut off from the rest (the
/// restart-split fault) each founded a network of their own and stored different values for
/// `burst63` (a split brain). The correct core restarts with its recorded membership: the
/// restarted side cannot commit without the other.
#[test]
fn clusters_restarted_apart_keep_their_membership() {
    must_pass(2, hunting(InjectedBug::ForgetMembershipOnRestart));
}

/// With `ForgetMembershipOnRestart`, the same with `hot0` stored twice.
#[test]
fn restarted_cluster_does_not_found_a_network() {
    must_pass(4, hunting(InjectedBug::ForgetMembershipOnRestart));
}

/// A node was removed by an operator while its network was down; back on the network it
/// still counted itself a member. Before quorums it answered "unknown" from its own state for
/// a key committed since (the bug `UnknownFromLocalState` brings back); now a read asks a
/// majority of its cluster, and they tell it it was removed.
#[test]
fn removed_node_does_not_serve_stale_reads() {
    must_pass(25, hunting(InjectedBug::UnknownFromLocalState));
    must_pass(153, hunting(InjectedBug::UnknownFromLocalState));
}

/// A core bug found once the world stopped telling nodes about removals: n00.1 removed n00.3
/// while it was itself cut off, so its `Removed` messages were lost; it was leaving (refusing
/// every Reserve with Leaving, so no view exchange spread the removal) and then left. n00.3
/// heard of its removal and refused every proposal with `Departed`; nobody else ever learned,
/// so no write could succeed again. A `Denied(Departed)` vote now counts as the voter's removal.
#[test]
fn a_removed_node_that_says_so_is_taken_at_its_word() {
    must_pass(
        357,
        Shape {
            joins: Some(2),
            leaves: Some(1),
            ..Shape::default()
        },
    );
}

/// A core bug: n00.2 was leaving and down when n00.0 was removed, so it never heard of it; a
/// leaving node refused every Reserve with Leaving before comparing views, so no view exchange
/// told it either, and it waited forever for the removed node's clearance, refusing every write
/// meanwhile. A Reserve whose view differs now starts a view exchange whatever the answer.
#[test]
fn a_leaving_node_learns_a_removal_it_missed() {
    must_pass(
        9,
        Shape {
            joins: Some(1),
            leaves: Some(1),
            faults: Some(vec![
                FaultKind::Remove,
                FaultKind::Crash,
                FaultKind::Pause,
                FaultKind::IsolateNode,
            ]),
            ..Shape::default()
        },
    );
}

/// The `Stored` record of a commit is a lazy write (core/PROTOCOL.md, "Lazy writes"): crashes
/// that lose unsynced writes must really undo decisions into accepted values, and every check must
/// still pass (agreement, one outcome per proposal, linearizability of what clients were told,
/// liveness after healing). Fails if the disk model stops losing lazy writes or the protocol
/// stops recovering from it.
#[test]
fn crashes_that_undo_lazy_commits_change_no_outcome() {
    let shape = Shape {
        faults: Some(vec![FaultKind::Crash, FaultKind::RestartCluster]),
        lose_unsynced: Some(true),
        ..Shape::default()
    };
    let mut commits_lost = 0;
    for seed in 0..40 {
        match check_seed(seed, &shape) {
            Ok(stats) => commits_lost += stats.world.commits_lost,
            Err(report) => panic!("{report}"),
        }
    }
    assert!(
        commits_lost > 0,
        "no crash lost a lazy commit in 40 seeds: the case is not exercised"
    );
}

/// A core bug: a joiner that had not heard of a leaving node yet answered its leave check
/// "clear" (as a member of another cluster would), so the leaver went while the joiner's
/// cluster lacked one of its decisions. A node now answers a leave check only from a member.
#[test]
fn a_joiner_never_clears_a_leaver_it_does_not_know() {
    let shape = |clusters| Shape {
        clusters: Some(clusters),
        nodes: Some(3),
        joins: Some(4),
        faults: Some(vec![
            FaultKind::Crash,
            FaultKind::IsolateNode,
            FaultKind::Pause,
        ]),
        ..Shape::default()
    };
    must_pass(1, shape(2));
    must_pass(284, shape(1));
}

/// A coordinator removed by an operator while its PUT was running answered the client's retry
/// (same request id) NotReady(Removed), "no effect", although the value had been chosen: a
/// removed node cannot learn outcomes, so a PUT with a request id gets Unavailable there.
#[test]
fn a_removed_node_never_says_no_effect_for_a_request_id() {
    must_pass(323_757_209, Shape::default());
}
