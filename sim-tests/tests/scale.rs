//! A small run at full scale: 50 clusters of 5 nodes (250 participants per proposal). The
//! large measurement is `cargo run --release -p sim-tests --bin sim -- scale`.

use sim_tests::{Shape, check_seed};

#[test]
fn fifty_clusters_of_five() {
    let shape = Shape {
        clusters: Some(50),
        nodes: Some(5),
        clients: Some(20),
        ops_per_client: Some(3),
        faults: Some(Vec::new()),
        joins: Some(0),
        leaves: Some(0),
        ..Shape::default()
    };
    match check_seed(1, &shape) {
        Ok(stats) => assert!(
            stats.outcomes.get("put stored").copied().unwrap_or(0) > 0,
            "{stats:?}"
        ),
        Err(report) => panic!("{report}"),
    }
}
