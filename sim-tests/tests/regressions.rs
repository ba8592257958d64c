//! Seeds that once found a bug in the core. Each must keep passing.

use sim_tests::{Shape, check_seed};

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
