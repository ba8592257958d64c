//! Every limit and timer of the protocol, in one place. Units are last in names.

use std::time::Duration;

use thiserror::Error;

/// Limits and timers. `Config::default()` suits a LAN/WAN deployment; the simulator and tests
/// shrink the timers. Every queue and map in the core is bounded by one of these.
#[derive(Clone, Debug)]
pub struct Config {
    /// Longest key, in bytes of UTF-8.
    pub key_bytes_max: usize,
    /// Longest value, in bytes.
    pub value_bytes_max: usize,
    /// Longest client request id, in bytes.
    pub request_id_bytes_max: usize,
    /// Client PUTs in flight at this node (as coordinator); more are answered Overloaded.
    pub proposals_max: usize,
    /// Keys this node runs ballots for without a client waiting (recovering an accepted value
    /// nobody decided, or a read's question), at once; more wait for their next lease.
    pub recoveries_max: usize,
    /// Reads waiting for a majority's answers or a decision; more are answered Overloaded.
    pub reads_waiting_max: usize,
    /// Verify reads in flight.
    pub verifies_max: usize,
    /// Fan-outs this node runs as a representative at once; more are dropped (the origin
    /// fails over to another representative).
    pub relays_max: usize,
    /// Undecided keys this node holds a record of (a promise or an accepted value). Beyond
    /// it, records of promises only are folded into the ballot floor, and the fast round of a
    /// key it holds nothing for is refused (Overloaded) while records of accepted values alone
    /// fill it (classic ballots, bounded by their proposers, always get their record).
    pub open_keys_max: usize,
    /// Request ids remembered for at-most-once retries (oldest forgotten first).
    pub requests_max: usize,
    /// How long a request id is remembered.
    pub request_ttl: Duration,
    /// Clusters in a membership, and nodes per cluster: bounds every list a peer can send.
    pub clusters_max: usize,
    pub cluster_nodes_max: usize,
    /// A node accepts writes only while its own cluster has at least this many members.
    pub cluster_size_min: usize,

    /// How long a ballot's phase waits for its quorum before the proposer resends to the
    /// nodes that have not answered (every half of it; a classic ballot never gives up on a
    /// timeout alone, only on a higher ballot or the PUT's deadline).
    pub vote_timeout: Duration,
    /// Once a majority of every cluster accepted the fast round, the coordinator waits for the
    /// rest at least this long, or as long again as that majority took, whichever is longer;
    /// then it counts the silent ones as suspect and runs a classic ballot.
    pub fast_grace_min: Duration,
    /// A node suspected to be down or slow (it missed a fast round, or a representative did
    /// not answer) is skipped by the fast round and as a representative for this long, or
    /// until it is heard from.
    pub suspect_for: Duration,
    /// The coordinator waits this long for a representative's answer before it fails over to
    /// the next node of that cluster.
    pub representative_timeout: Duration,
    /// A representative forwards what it gathered at the latest after this long.
    pub relay_timeout: Duration,
    /// An accepted value not decided within this long is recovered by the node that holds it.
    pub lease: Duration,
    /// A proposer whose ballot failed waits between these bounds (exponential, jittered)
    /// before the next one.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A PUT undecided after this long is answered Unavailable (it may still be chosen), or
    /// Busy if no Accept carrying its value ever left.
    pub put_timeout: Duration,
    /// A read that found an accepted value but no decision waits this long for one before it
    /// recovers the key itself...
    pub read_wait: Duration,
    /// ...and answers Unavailable if it knows nothing definite after this long.
    pub read_timeout: Duration,
    pub verify_timeout: Duration,
    /// A joining node waits this long for a page of its copy before it asks another member.
    pub sync_timeout: Duration,
    /// A page of the join-time copy or of a catch-up holds at most this many keys and about
    /// this many bytes.
    pub sync_page_keys: usize,
    pub sync_page_bytes: usize,
    /// Every node pulls the decisions of the other members of its cluster this often.
    pub catch_up_interval: Duration,
    /// Proposal counters and ballot rounds are made durable this many at a time.
    pub counter_block: u64,

    /// Deliberately broken behaviour, to show that the simulator catches it. Never set in
    /// production; only compiled with the `bug-injection` feature.
    #[cfg(feature = "bug-injection")]
    pub bug: Option<crate::InjectedBug>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key_bytes_max: 512,
            value_bytes_max: 64 * 1024,
            request_id_bytes_max: 128,
            proposals_max: 4096,
            recoveries_max: 4096,
            reads_waiting_max: 4096,
            verifies_max: 256,
            relays_max: 8192,
            open_keys_max: 100_000,
            requests_max: 100_000,
            request_ttl: Duration::from_secs(3600),
            clusters_max: 256,
            cluster_nodes_max: 64,
            cluster_size_min: 3,
            vote_timeout: Duration::from_millis(1000),
            fast_grace_min: Duration::from_millis(5),
            suspect_for: Duration::from_secs(2),
            representative_timeout: Duration::from_millis(700),
            relay_timeout: Duration::from_millis(500),
            lease: Duration::from_secs(3),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            put_timeout: Duration::from_secs(5),
            read_wait: Duration::from_millis(300),
            read_timeout: Duration::from_secs(3),
            verify_timeout: Duration::from_secs(2),
            sync_timeout: Duration::from_secs(2),
            sync_page_keys: 1024,
            sync_page_bytes: 1024 * 1024,
            catch_up_interval: Duration::from_secs(1),
            counter_block: 1024,
            #[cfg(feature = "bug-injection")]
            bug: None,
        }
    }
}

/// A config that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config: {0} must be at least 1")]
    Zero(&'static str),
    #[error("config: {0}")]
    Inconsistent(&'static str),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("key_bytes_max", self.key_bytes_max),
            ("value_bytes_max", self.value_bytes_max),
            ("proposals_max", self.proposals_max),
            ("reads_waiting_max", self.reads_waiting_max),
            ("verifies_max", self.verifies_max),
            ("relays_max", self.relays_max),
            ("recoveries_max", self.recoveries_max),
            ("open_keys_max", self.open_keys_max),
            ("requests_max", self.requests_max),
            ("clusters_max", self.clusters_max),
            ("cluster_nodes_max", self.cluster_nodes_max),
            ("sync_page_keys", self.sync_page_keys),
            ("sync_page_bytes", self.sync_page_bytes),
            ("counter_block", self.counter_block as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.backoff_min > self.backoff_max {
            return Err(ConfigError::Inconsistent("backoff_min exceeds backoff_max"));
        }
        if self.relay_timeout >= self.representative_timeout {
            return Err(ConfigError::Inconsistent(
                "relay_timeout must be shorter than representative_timeout, or every slow cluster causes a failover",
            ));
        }
        if self.sync_page_bytes + self.key_bytes_max + self.value_bytes_max
            > crate::wire::FRAME_BYTES_MAX / 2
        {
            return Err(ConfigError::Inconsistent(
                "a sync page would not fit in a frame",
            ));
        }
        Ok(())
    }
}
