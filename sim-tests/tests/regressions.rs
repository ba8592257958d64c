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
