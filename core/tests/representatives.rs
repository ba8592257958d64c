//! Representatives that fail (core/PROTOCOL.md, "Reaching the participants"): a silent one is
//! gone around and suspected, so that the decision reaches its cluster another way.

mod harness;

use std::time::Duration;

use harness::*;
use replicator_core::{Config, Message, PutOutcome, Reply};

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// The node a1's first request for a key went through to reach cluster b.
fn representative_of_b(h: &Harness) -> String {
    h.net
        .iter()
        .find_map(|m| match &m.msg {
            Message::Relay { cluster, .. } if cluster.as_str() == "b" && m.from == n("a1") => {
                Some(m.to.to_string())
            }
            _ => None,
        })
        .expect("a1 reached cluster b through a representative")
}

/// a1's representative in cluster b dies as the PUT starts. The PUT is still stored (b's two
/// other nodes are a majority), and they learn the decision from a1's Decide at once, not
/// from a catch-up or a lease much later: the Decide goes through another representative,
/// because the silent one was suspected when it was gone around.
#[test]
fn a_decision_reaches_a_cluster_whose_representative_died() {
    let config = Config {
        // Only the Decide can tell b2 and b3 within this test's time.
        catch_up_interval: Duration::from_secs(60),
        lease: Duration::from_secs(60),
        ..config()
    };
    let mut h = Harness::with_config(2, 3, config);
    let call = h.put("a1", "k", "v");
    let rep = representative_of_b(&h);
    h.crash(&rep);
    let mut waited = Duration::ZERO;
    while h.reply(call).is_none() {
        assert!(waited < ms(3_000), "the PUT was not answered");
        h.run_for(ms(5));
        waited += ms(5);
    }
    assert_eq!(h.reply(call), Some(&Reply::Put(PutOutcome::Stored)));
    // A few round trips after the answer: every live node of b stores the key.
    h.run_for(ms(50));
    for node in ["b1", "b2", "b3"].into_iter().filter(|b| *b != rep) {
        assert_eq!(
            h.stored_at(node, "k").map(|c| c.value),
            Some(v("v")),
            "{node} did not learn the decision (a1's representative {rep} died)"
        );
    }
}

/// Within a `REPRESENTATIVE_TURN`, a proposer reaches a cluster through one representative
/// for every key (core/PROTOCOL.md, "Reaching the participants", Choice): what one driver
/// turn sends to that cluster leaves as one frame and fans out as one frame per member.
/// Chosen by key, a1's sixteen keys went through all three of b's nodes.
#[test]
fn a_proposer_reaches_a_cluster_through_one_representative_whatever_the_key() {
    let mut h = Harness::new(2, 3);
    let calls: Vec<_> = (0..16)
        .map(|i| h.put("a1", &format!("key-{i}"), "v"))
        .collect();
    h.run_for(ms(1_000));
    for call in calls {
        assert_eq!(put_reply(&h, call), Some(PutOutcome::Stored));
    }
    let representatives: std::collections::BTreeSet<String> = h
        .sent
        .iter()
        .filter(|(from, _, msg)| *from == n("a1") && matches!(msg, Message::Relay { .. }))
        .map(|(_, to, _)| to.to_string())
        .collect();
    assert_eq!(representatives.len(), 1, "{representatives:?}");
}
