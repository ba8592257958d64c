//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: no registry crate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::driver::Status;

/// Upper bounds of the PUT latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The PUT outcomes, as labels.
pub const PUT_OUTCOMES: [&str; 9] = [
    "stored",
    "exists",
    "busy",
    "unavailable",
    "invalid",
    "overloaded",
    "not_ready",
    "removed",
    "error",
];
pub const GET_OUTCOMES: [&str; 8] = [
    "value",
    "unknown",
    "unavailable",
    "invalid",
    "overloaded",
    "not_ready",
    "removed",
    "error",
];

#[derive(Default)]
pub struct Metrics {
    pub puts: [AtomicU64; PUT_OUTCOMES.len()],
    pub gets: [AtomicU64; GET_OUTCOMES.len()],
    put_latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    put_latency_count: AtomicU64,
    put_latency_sum_us: AtomicU64,
    pub decided_committed: AtomicU64,
    pub decided_aborted: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub frames_send_failed: AtomicU64,
    pub violations: AtomicU64,
    /// Peers of another network that announced themselves (each counted once).
    pub foreign_network_peers: AtomicU64,
    /// HTTP connections closed at once because --http-connections-max were open.
    pub http_connections_refused: AtomicU64,
    /// Peer frames dropped while storage writes were stalled.
    pub frames_dropped_stalled: AtomicU64,
}

impl Metrics {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn put_done(&self, outcome: &str, took: Duration) {
        if let Some(i) = PUT_OUTCOMES.iter().position(|o| *o == outcome) {
            self.inc(&self.puts[i]);
        }
        let s = took.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *b {
                self.inc(&self.put_latency_buckets[i]);
            }
        }
        self.inc(&self.put_latency_count);
        self.put_latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn get_done(&self, outcome: &str) {
        if let Some(i) = GET_OUTCOMES.iter().position(|o| *o == outcome) {
            self.inc(&self.gets[i]);
        }
    }

    pub fn render(&self, status: Option<&Status>) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP replicator_puts_total Client PUTs answered, by outcome.\n# TYPE replicator_puts_total counter"
        );
        for (i, o) in PUT_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                s,
                "replicator_puts_total{{outcome=\"{o}\"}} {}",
                get(&self.puts[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP replicator_gets_total Client GETs answered, by outcome.\n# TYPE replicator_gets_total counter"
        );
        for (i, o) in GET_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                s,
                "replicator_gets_total{{outcome=\"{o}\"}} {}",
                get(&self.gets[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP replicator_put_latency_seconds Latency of client PUTs at this node.\n# TYPE replicator_put_latency_seconds histogram"
        );
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                s,
                "replicator_put_latency_seconds_bucket{{le=\"{b}\"}} {}",
                get(&self.put_latency_buckets[i])
            );
        }
        let count = get(&self.put_latency_count);
        let _ = writeln!(
            s,
            "replicator_put_latency_seconds_bucket{{le=\"+Inf\"}} {count}\nreplicator_put_latency_seconds_sum {}\nreplicator_put_latency_seconds_count {count}",
            get(&self.put_latency_sum_us) as f64 / 1e6
        );
        let counters = [
            (
                "replicator_proposals_decided_total{outcome=\"committed\"}",
                get(&self.decided_committed),
            ),
            (
                "replicator_proposals_decided_total{outcome=\"aborted\"}",
                get(&self.decided_aborted),
            ),
            (
                "replicator_frames_rejected_total",
                get(&self.frames_rejected),
            ),
            (
                "replicator_frames_send_failed_total",
                get(&self.frames_send_failed),
            ),
            ("replicator_violations_total", get(&self.violations)),
            (
                "replicator_foreign_network_peers_total",
                get(&self.foreign_network_peers),
            ),
            (
                "replicator_http_connections_refused_total",
                get(&self.http_connections_refused),
            ),
            (
                "replicator_frames_dropped_storage_stalled_total",
                get(&self.frames_dropped_stalled),
            ),
        ];
        for (name, v) in counters {
            let _ = writeln!(s, "{name} {v}");
        }
        if let Some(st) = status {
            let up = st.peers.iter().filter(|p| p.up).count();
            let gauges = [
                ("replicator_ready", u64::from(st.ready)),
                ("replicator_removed", u64::from(st.removed)),
                ("replicator_keys_stored", st.stats.keys_stored as u64),
                (
                    "replicator_reservations_open",
                    st.stats.reservations_open as u64,
                ),
                ("replicator_refusals", st.stats.refusals as u64),
                (
                    "replicator_proposals_in_flight",
                    st.stats.proposals_in_flight as u64,
                ),
                ("replicator_resolutions", st.stats.resolutions as u64),
                ("replicator_reads_waiting", st.stats.reads_waiting as u64),
                ("replicator_held_messages", st.stats.held_messages as u64),
                ("replicator_members", st.membership.len() as u64),
                ("replicator_peers{state=\"up\"}", up as u64),
                (
                    "replicator_peers{state=\"down\"}",
                    (st.peers.len() - up) as u64,
                ),
            ];
            for (name, v) in gauges {
                let _ = writeln!(s, "{name} {v}");
            }
        }
        s
    }
}
