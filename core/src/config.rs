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
    /// Reads waiting on a reserved key; more are answered Overloaded.
    pub reads_waiting_max: usize,
    /// Verify reads in flight.
    pub verifies_max: usize,
    /// Fan-outs this node runs as a representative at once; more are dropped (the origin
    /// fails over to another representative).
    pub relays_max: usize,
    /// Open reservations this node holds; more Reserves are refused (Overloaded).
    pub reservations_max: usize,
    /// Resolutions (vote collections) running at once, beyond the ones that client calls need.
    pub resolutions_max: usize,
    /// Refusals kept one by one; beyond this they are folded into per-coordinator watermarks.
    pub refusals_max: usize,
    /// Request ids remembered for at-most-once retries (oldest forgotten first).
    pub requests_max: usize,
    /// How long a request id is remembered.
    pub request_ttl: Duration,
    /// Clusters in a membership, and nodes per cluster: bounds every list a peer can send.
    pub clusters_max: usize,
    pub cluster_nodes_max: usize,
    /// A node accepts writes only while its own cluster has at least this many members.
    pub cluster_size_min: usize,

    /// The coordinator waits this long for votes before it runs Resolve.
    pub vote_timeout: Duration,
    /// The coordinator waits this long for a representative's answer before it fails over to
    /// the next node of that cluster.
    pub representative_timeout: Duration,
    /// A representative waits this long for its cluster before it answers with what it has.
    pub relay_timeout: Duration,
    /// A reservation not committed or aborted within its lease is resolved by its holder.
    pub lease: Duration,
    /// Resolve retries with exponential backoff between these bounds, plus jitter.
    pub resolve_backoff_min: Duration,
    pub resolve_backoff_max: Duration,
    /// A PUT that met a concurrent proposal retries this many times with a fresh proposal
    /// before it answers Busy, after a jittered backoff between these bounds.
    pub busy_retries_max: u32,
    pub busy_backoff_min: Duration,
    pub busy_backoff_max: Duration,
    /// A PUT still undecided after this long is answered Unavailable (it may still commit).
    pub put_timeout: Duration,
    /// A read of a reserved key waits this long for the outcome before it runs Resolve...
    pub read_wait: Duration,
    /// ...and answers Unavailable if the outcome is still unknown after this long.
    pub read_timeout: Duration,
    pub verify_timeout: Duration,
    /// A joining node waits this long for a page of the copy before it asks another peer.
    pub sync_timeout: Duration,
    /// A page of the join-time copy holds at most this many keys and about this many bytes.
    pub sync_page_keys: usize,
    pub sync_page_bytes: usize,
    /// A node answers "unknown key" only while a member confirmed, within this long, that it
    /// still counts it as a member (a removed node would otherwise miss every later commit
    /// and serve stale reads). A node whose membership shrank (or that restarts with departed
    /// nodes on record) grants nothing for twice this long, so that the removed node's lease
    /// has run out before anything commits without it. Clocks may drift by far less than 2x.
    pub read_lease: Duration,
    /// Proposal counters are made durable this many at a time.
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
            reads_waiting_max: 4096,
            verifies_max: 256,
            relays_max: 8192,
            reservations_max: 65_536,
            resolutions_max: 8192,
            refusals_max: 100_000,
            requests_max: 100_000,
            request_ttl: Duration::from_secs(3600),
            clusters_max: 256,
            cluster_nodes_max: 64,
            cluster_size_min: 3,
            vote_timeout: Duration::from_millis(1500),
            representative_timeout: Duration::from_millis(700),
            relay_timeout: Duration::from_millis(500),
            lease: Duration::from_secs(3),
            resolve_backoff_min: Duration::from_millis(100),
            resolve_backoff_max: Duration::from_secs(2),
            busy_retries_max: 4,
            busy_backoff_min: Duration::from_millis(10),
            busy_backoff_max: Duration::from_millis(200),
            put_timeout: Duration::from_secs(5),
            read_wait: Duration::from_millis(300),
            read_timeout: Duration::from_secs(3),
            verify_timeout: Duration::from_secs(2),
            sync_timeout: Duration::from_secs(2),
            sync_page_keys: 1024,
            sync_page_bytes: 1024 * 1024,
            read_lease: Duration::from_secs(2),
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
            ("reservations_max", self.reservations_max),
            ("resolutions_max", self.resolutions_max),
            ("refusals_max", self.refusals_max),
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
        if self.resolve_backoff_min > self.resolve_backoff_max
            || self.busy_backoff_min > self.busy_backoff_max
        {
            return Err(ConfigError::Inconsistent(
                "a backoff minimum exceeds its maximum",
            ));
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
