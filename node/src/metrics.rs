//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: no registry crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use replicator_core::PeerFaultKind;
use serde::{Deserialize, Serialize};

use crate::status::Status;

/// Upper bounds of the PUT latency histogram, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The PUT outcomes, as labels.
pub const PUT_OUTCOMES: [&str; 10] = [
    "stored",
    "exists",
    "busy",
    "unavailable",
    "invalid",
    "overloaded",
    "not_ready",
    "storage_unavailable",
    "removed",
    "error",
];
pub const GET_OUTCOMES: [&str; 9] = [
    "value",
    "unknown",
    "unavailable",
    "invalid",
    "overloaded",
    "not_ready",
    "storage_unavailable",
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
    /// Values this node's ballots chose, in the fast round and in a classic ballot.
    pub decided_fast: AtomicU64,
    pub decided_classic: AtomicU64,
    pub frames_rejected: AtomicU64,
    /// Warnings about peers' frames not logged (one per peer and kind per interval is).
    pub peer_warnings_left_out: AtomicU64,
    /// Protocol messages sent and received; a frame carries one or more of them.
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    /// Peer input the core dropped, by [`PeerFaultKind::index`].
    pub peer_faults: [AtomicU64; PeerFaultKind::ALL.len()],
    pub frames_send_failed: AtomicU64,
    pub violations: AtomicU64,
    /// Peers of another network that announced themselves (each counted once).
    pub foreign_network_peers: AtomicU64,
    /// HTTP connections closed at once because --http-connections-max were open.
    pub http_connections_refused: AtomicU64,
    /// Peer frames dropped while storage writes were stalled.
    pub frames_dropped_stalled: AtomicU64,
    /// What the node found damaged on its disk (when it started, and when it read a decision),
    /// and what it repaired since.
    pub damage: Arc<DamageCounters>,

    // ---- Disk and transport cost per create (issue 11): a block of its own. ----
    /// The storage loop's group commits.
    pub disk: Arc<CommitCounters>,
    /// Frames and bytes per peer, read from the transport when /metrics is rendered (unset
    /// under madsim, which has no libp2p transport).
    pub peer_traffic: OnceLock<PeerTrafficSource>,
}

/// Damage found on this node's disk at start, and the repairs from its cluster since: a node
/// never re-copies what it lost silently.
#[derive(Debug, Default)]
pub struct DamageCounters {
    key_records: AtomicU64,
    request_records: AtomicU64,
    log_tail_bytes: AtomicU64,
    keys_repaired: AtomicU64,
    decision_reads_failed: AtomicU64,
}

impl DamageCounters {
    /// What the storage found damaged when it loaded: records of keys and of requests that
    /// failed their checksum, bytes of a torn last log record.
    pub fn found(&self, key_records: usize, request_records: usize, log_tail_bytes: u64) {
        let add = |c: &AtomicU64, n: u64| c.fetch_add(n, Ordering::Relaxed);
        add(&self.key_records, key_records as u64);
        add(&self.request_records, request_records as u64);
        add(&self.log_tail_bytes, log_tail_bytes);
    }

    /// A decided key's record failed its checksum when the node read it.
    pub fn found_by_read(&self) {
        self.key_records.fetch_add(1, Ordering::Relaxed);
    }

    /// A read of a decision failed (an I/O error, or the database being reopened).
    pub fn read_failed(&self) {
        self.decision_reads_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Damaged keys whose decisions the node learned from its cluster.
    pub fn repaired(&self, keys: usize) {
        self.keys_repaired.fetch_add(keys as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn render_for_test(&self, s: &mut String) {
        self.render(s)
    }

    fn render(&self, s: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, v) in [
            (
                "replicator_damaged_records_found_total{table=\"keys\"}",
                get(&self.key_records),
            ),
            (
                "replicator_damaged_records_found_total{table=\"requests\"}",
                get(&self.request_records),
            ),
            (
                "replicator_log_tail_dropped_bytes_total",
                get(&self.log_tail_bytes),
            ),
            (
                "replicator_damaged_keys_repaired_total",
                get(&self.keys_repaired),
            ),
            (
                "replicator_decision_reads_failed_total",
                get(&self.decision_reads_failed),
            ),
        ] {
            let _ = writeln!(s, "{name} {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Disk and transport cost per create (issue 11). Kept apart from the counters above.

/// Reads the transport's per-peer frame counters.
pub type PeerTrafficSource = Box<dyn Fn() -> Vec<PeerTraffic> + Send + Sync>;

/// One peer's frame counters, since the transport started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub peer: String,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Flushed writes to the peer's stream; each carries every frame queued when it began.
    pub writes: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
}

/// Upper bounds of the histogram of `Persist` outputs (the core's writes) per group commit.
const COMMIT_SIZE_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024];

/// One durable group commit, as the storage loop counts it.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupCommit {
    /// The core's writes (`Persist` outputs) in it, and of those the lazy ones.
    pub writes: u64,
    pub lazy_writes: u64,
    /// Their write ops.
    pub ops: u64,
}

/// What the storage loop committed: each commit is one fsync.
#[derive(Default)]
pub struct CommitCounters {
    /// Group commits made durable (one fsync each).
    pub commits: AtomicU64,
    /// The core's writes (`Persist` outputs) in them, and of those the lazy ones.
    pub writes: AtomicU64,
    pub lazy_writes: AtomicU64,
    /// The write ops in them.
    pub ops: AtomicU64,
    /// Time spent applying and committing, fsync included.
    pub commit_us: AtomicU64,
    size_buckets: [AtomicU64; COMMIT_SIZE_BUCKETS.len()],
}

impl CommitCounters {
    /// Counts one durable group commit, which took `took`.
    pub fn committed(&self, group: GroupCommit, took: Duration) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        let writes = group.writes;
        add(&self.commits, 1);
        add(&self.writes, writes);
        add(&self.lazy_writes, group.lazy_writes);
        add(&self.ops, group.ops);
        add(&self.commit_us, took.as_micros() as u64);
        for (i, b) in COMMIT_SIZE_BUCKETS.iter().enumerate() {
            if writes <= *b {
                add(&self.size_buckets[i], 1);
            }
        }
    }

    fn render(&self, s: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let commits = get(&self.commits);
        let _ = writeln!(
            s,
            "# HELP replicator_storage_fsyncs_total Durable group commits of the storage (one fsync each).\n# TYPE replicator_storage_fsyncs_total counter\nreplicator_storage_fsyncs_total {commits}"
        );
        let _ = writeln!(
            s,
            "# HELP replicator_storage_writes_total Writes of the core committed, by urgency (lazy: nothing waited for it).\n# TYPE replicator_storage_writes_total counter\nreplicator_storage_writes_total{{urgency=\"barrier\"}} {}\nreplicator_storage_writes_total{{urgency=\"lazy\"}} {}",
            get(&self.writes) - get(&self.lazy_writes),
            get(&self.lazy_writes)
        );
        let _ = writeln!(
            s,
            "# HELP replicator_storage_ops_total Write ops committed.\n# TYPE replicator_storage_ops_total counter\nreplicator_storage_ops_total {}",
            get(&self.ops)
        );
        let _ = writeln!(
            s,
            "# HELP replicator_storage_commit_seconds_total Time spent in group commits, fsync included.\n# TYPE replicator_storage_commit_seconds_total counter\nreplicator_storage_commit_seconds_total {}",
            get(&self.commit_us) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "# HELP replicator_storage_commit_writes Writes of the core per group commit.\n# TYPE replicator_storage_commit_writes histogram"
        );
        for (i, b) in COMMIT_SIZE_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "replicator_storage_commit_writes_bucket{{le=\"{b}\"}} {}",
                get(&self.size_buckets[i])
            );
        }
        let _ = writeln!(
            s,
            "replicator_storage_commit_writes_bucket{{le=\"+Inf\"}} {commits}\nreplicator_storage_commit_writes_sum {}\nreplicator_storage_commit_writes_count {commits}",
            get(&self.writes)
        );
    }
}

/// One per-peer metric family: its name, its help text, and the counter it shows.
type PeerFamily = (&'static str, &'static str, fn(&PeerTraffic) -> u64);

/// Renders the per-peer frame counters.
fn render_peer_traffic(peers: &[PeerTraffic], s: &mut String) {
    let families: [PeerFamily; 5] = [
        (
            "replicator_peer_frames_sent_total",
            "Frames written to a peer.",
            |p| p.frames_sent,
        ),
        (
            "replicator_peer_writes_total",
            "Flushed writes to a peer's stream, each with every frame queued when it began.",
            |p| p.writes,
        ),
        (
            "replicator_peer_bytes_sent_total",
            "Bytes of the frames written to a peer, with length prefixes.",
            |p| p.bytes_sent,
        ),
        (
            "replicator_peer_frames_received_total",
            "Frames read from a peer.",
            |p| p.frames_received,
        ),
        (
            "replicator_peer_bytes_received_total",
            "Bytes of the frames read from a peer.",
            |p| p.bytes_received,
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for p in peers {
            let _ = writeln!(s, "{name}{{peer=\"{}\"}} {}", p.peer, value(p));
        }
    }
}

/// The answer counters and the PUT latency histogram at one moment: what a node tells its peers
/// for the dashboard's network rates (each node counts the requests it answered, so the sum
/// over the nodes counts every request once).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// PUT answers by outcome ([`PUT_OUTCOMES`]).
    pub puts: BTreeMap<String, u64>,
    /// GET answers by outcome ([`GET_OUTCOMES`]).
    pub gets: BTreeMap<String, u64>,
    /// PUTs answered within each bound of [`LATENCY_BUCKETS_S`] (cumulative, as Prometheus).
    pub put_latency_buckets: Vec<u64>,
    /// Every PUT answered (the +Inf bucket).
    pub put_latency_count: u64,
}

impl Metrics {
    /// The answer counters now.
    pub fn counters(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let by_outcome = |names: &[&str], values: &[AtomicU64]| {
            names
                .iter()
                .zip(values)
                .map(|(n, v)| (n.to_string(), get(v)))
                .collect()
        };
        Counters {
            puts: by_outcome(&PUT_OUTCOMES, &self.puts),
            gets: by_outcome(&GET_OUTCOMES, &self.gets),
            put_latency_buckets: self.put_latency_buckets.iter().map(get).collect(),
            put_latency_count: get(&self.put_latency_count),
        }
    }

    pub fn inc(&self, c: &AtomicU64) {
        self.add(c, 1);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
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
        let _ = writeln!(
            s,
            "# HELP replicator_peer_faults_total Peer input the core dropped, by kind.\n# TYPE replicator_peer_faults_total counter"
        );
        for kind in PeerFaultKind::ALL {
            let _ = writeln!(
                s,
                "replicator_peer_faults_total{{kind=\"{kind}\"}} {}",
                get(&self.peer_faults[kind.index()])
            );
        }
        let counters = [
            (
                "replicator_decided_total{round=\"fast\"}",
                get(&self.decided_fast),
            ),
            (
                "replicator_decided_total{round=\"classic\"}",
                get(&self.decided_classic),
            ),
            (
                "replicator_frames_rejected_total",
                get(&self.frames_rejected),
            ),
            (
                "replicator_peer_warnings_left_out_total",
                get(&self.peer_warnings_left_out),
            ),
            ("replicator_messages_sent_total", get(&self.messages_sent)),
            (
                "replicator_messages_received_total",
                get(&self.messages_received),
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
        self.damage.render(&mut s);
        self.disk.render(&mut s);
        if let Some(source) = self.peer_traffic.get() {
            render_peer_traffic(&source(), &mut s);
        }
        if let Some(st) = status {
            let up = st.peers.iter().filter(|p| p.up).count();
            let gauges = [
                ("replicator_ready", u64::from(st.ready)),
                ("replicator_removed", u64::from(st.removed)),
                ("replicator_keys_stored", st.stats.keys_stored),
                (
                    "replicator_accepted_undecided",
                    st.stats.accepted_undecided as u64,
                ),
                ("replicator_promises_only", st.stats.promises_only as u64),
                ("replicator_damaged_keys", st.stats.damaged_keys as u64),
                ("replicator_puts_in_flight", st.stats.puts_in_flight as u64),
                ("replicator_proposers", st.stats.proposers as u64),
                ("replicator_catch_up_behind", st.stats.behind),
                ("replicator_suspected_peers", st.stats.suspects as u64),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commits_and_peer_traffic_are_rendered() {
        let m = Metrics::default();
        // Two writes (one lazy) of two ops each, then one barrier write of two ops.
        let group = |writes, lazy_writes| GroupCommit {
            writes,
            lazy_writes,
            ops: 2 * writes,
        };
        m.disk.committed(group(2, 1), Duration::from_millis(2));
        m.disk.committed(group(1, 0), Duration::from_millis(1));
        let _ = m.peer_traffic.set(Box::new(|| {
            vec![PeerTraffic {
                peer: "12D3Koo".into(),
                frames_sent: 7,
                bytes_sent: 700,
                writes: 3,
                frames_received: 5,
                bytes_received: 500,
            }]
        }));
        let text = m.render(None);
        for line in [
            "replicator_storage_fsyncs_total 2",
            "replicator_storage_writes_total{urgency=\"barrier\"} 2",
            "replicator_storage_writes_total{urgency=\"lazy\"} 1",
            "replicator_storage_ops_total 6",
            "replicator_storage_commit_writes_bucket{le=\"1\"} 1",
            "replicator_storage_commit_writes_bucket{le=\"2\"} 2",
            "replicator_storage_commit_writes_sum 3",
            "replicator_storage_commit_writes_count 2",
            "replicator_storage_commit_seconds_total 0.003",
            "replicator_peer_frames_sent_total{peer=\"12D3Koo\"} 7",
            "replicator_peer_writes_total{peer=\"12D3Koo\"} 3",
            "replicator_peer_bytes_sent_total{peer=\"12D3Koo\"} 700",
            "replicator_peer_frames_received_total{peer=\"12D3Koo\"} 5",
            "replicator_peer_bytes_received_total{peer=\"12D3Koo\"} 500",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
