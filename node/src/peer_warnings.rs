//! Warnings a peer can cause with every frame it sends (a frame that does not decode, input the
//! core rejects) are logged once per peer and kind of problem per [`PEER_WARNING_INTERVAL`],
//! with how many were left out since the last one. A peer of another wire version (during an
//! upgrade) or one that lies would otherwise write a log line per frame, thousands a second,
//! until the disk is full. The metrics count every one of them.

use std::collections::HashMap;
use std::time::Duration;

use replicator_core::NodeId;
use tokio::time::Instant;

/// At most one warning per peer and kind of problem this often.
pub const PEER_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Peers and kinds remembered at once: past this, the table starts over (a flood of distinct
/// ids logs one line each, as it would have without the table, and memory stays bounded).
const REMEMBERED_MAX: usize = 4096;

#[derive(Default)]
pub struct PeerWarnings {
    /// When each peer's warning of each kind was last logged, and how many were left out since.
    last: HashMap<(NodeId, &'static str), (Instant, u64)>,
}

impl PeerWarnings {
    /// Whether to log the warning of `kind` about `peer` now: `Some(left_out)`, the number of
    /// its kind left out since the last one logged, or `None` to leave this one out.
    pub fn admit(&mut self, peer: &NodeId, kind: &'static str, now: Instant) -> Option<u64> {
        let key = (peer.clone(), kind);
        if self.last.len() >= REMEMBERED_MAX && !self.last.contains_key(&key) {
            self.last.clear();
        }
        match self.last.get_mut(&key) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < PEER_WARNING_INTERVAL => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_peer_and_kind_per_interval_then_the_count_left_out() {
        let mut w = PeerWarnings::default();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        let t0 = Instant::now();
        assert_eq!(w.admit(&a, "undecodable_frame", t0), Some(0));
        for i in 1..=999 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(w.admit(&a, "undecodable_frame", at), None);
        }
        // Another kind, another peer: each has its own first warning.
        assert_eq!(w.admit(&a, "page_out_of_order", t0), Some(0));
        assert_eq!(w.admit(&b, "undecodable_frame", t0), Some(0));
        let later = t0 + PEER_WARNING_INTERVAL;
        assert_eq!(w.admit(&a, "undecodable_frame", later), Some(999));
        assert_eq!(w.admit(&a, "undecodable_frame", later), None);
        assert_eq!(
            w.admit(&a, "undecodable_frame", later + PEER_WARNING_INTERVAL),
            Some(1)
        );
    }

    #[test]
    fn the_table_stays_bounded_whatever_the_number_of_peers() {
        let mut w = PeerWarnings::default();
        let t0 = Instant::now();
        for i in 0..3 * REMEMBERED_MAX {
            let peer = NodeId::from(format!("p{i}").as_str());
            assert_eq!(w.admit(&peer, "undecodable_frame", t0), Some(0));
            assert!(w.last.len() <= REMEMBERED_MAX);
        }
    }
}
