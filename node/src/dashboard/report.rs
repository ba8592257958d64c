//! What a node tells the other members about itself for their dashboards, once a second: its
//! state, its counts and its answer counters. Not part of the core protocol: the frames travel
//! on the same transport, but their first byte ([`REPORT_TAG`]) is no wire version of the
//! core, and the node takes them out before the driver sees a frame. A node only ever shows
//! numbers a member reported about itself, with their age; never a guess.
//!
//! Frame: `REPORT_TAG REPORT_VERSION json`, at most [`REPORT_BYTES_MAX`] bytes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::{Counters, LATENCY_BUCKETS_S};

/// The first byte of a report frame.
pub const REPORT_TAG: u8 = 0xD5;
// A core frame starts with its wire version: a report must never be mistaken for one.
const _: () = assert!(REPORT_TAG != replicator_core::wire::WIRE_VERSION);
const REPORT_VERSION: u8 = 1;
/// The largest report frame read; larger ones are dropped unread.
pub const REPORT_BYTES_MAX: usize = 16 * 1024;
/// How often a node sends its report to every member it reaches.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest HTTP address and reason accepted in a report, in bytes.
const TEXT_BYTES_MAX: usize = 256;
/// The most reasons and outcome counters accepted in a report.
const ENTRIES_MAX: usize = 32;

/// A node's account of itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Milliseconds since the node started: rates are computed on the sender's own clock.
    pub uptime_ms: u64,
    /// The URL of its HTTP API (and dashboard), as it serves it.
    pub http: Option<String>,
    pub ready: bool,
    pub leaving: bool,
    pub removed: bool,
    /// Why a write sent to it cannot be decided now, as it sees it (as its `/health`).
    pub not_writable: Vec<String>,
    pub keys_stored: u64,
    pub accepted_undecided: u64,
    pub puts_in_flight: u64,
    pub proposers: u64,
    /// Decisions of its cluster it has not pulled yet, at most (catch-up).
    pub behind: u64,
    pub damaged_keys: u64,
    pub counters: Counters,
}

/// Why a report frame was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("not a report frame")]
    NotReport,
    #[error("report frame of {0} bytes exceeds {REPORT_BYTES_MAX}")]
    TooLarge(usize),
    #[error("unsupported report version {0}")]
    Version(u8),
    #[error("malformed report: {0}")]
    Malformed(String),
}

/// Whether a frame from a peer is a report (and not for the core).
pub fn is_report(frame: &[u8]) -> bool {
    frame.first() == Some(&REPORT_TAG)
}

pub fn encode(report: &NodeReport) -> Vec<u8> {
    let mut frame = vec![REPORT_TAG, REPORT_VERSION];
    serde_json::to_writer(&mut frame, report).expect("a report always serializes");
    frame
}

pub fn decode(frame: &[u8]) -> Result<NodeReport, ReportError> {
    if frame.len() > REPORT_BYTES_MAX {
        return Err(ReportError::TooLarge(frame.len()));
    }
    let [tag, version, json @ ..] = frame else {
        return Err(ReportError::NotReport);
    };
    if *tag != REPORT_TAG {
        return Err(ReportError::NotReport);
    }
    if *version != REPORT_VERSION {
        return Err(ReportError::Version(*version));
    }
    let report: NodeReport =
        serde_json::from_slice(json).map_err(|e| ReportError::Malformed(e.to_string()))?;
    check_bounds(&report)?;
    Ok(report)
}

fn check_bounds(r: &NodeReport) -> Result<(), ReportError> {
    let malformed = |what: &str| Err(ReportError::Malformed(what.to_string()));
    if r.http.as_ref().is_some_and(|h| h.len() > TEXT_BYTES_MAX) {
        return malformed("http address too long");
    }
    if r.not_writable.len() > ENTRIES_MAX || r.not_writable.iter().any(|w| w.len() > TEXT_BYTES_MAX)
    {
        return malformed("too many or too long reasons");
    }
    let c = &r.counters;
    if c.puts.len() > ENTRIES_MAX || c.gets.len() > ENTRIES_MAX {
        return malformed("too many outcome counters");
    }
    if !c.put_latency_buckets.is_empty() && c.put_latency_buckets.len() != LATENCY_BUCKETS_S.len() {
        return malformed("latency buckets differ from this node's");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> NodeReport {
        let mut r = NodeReport {
            uptime_ms: 1234,
            http: Some("http://127.0.0.1:8080".into()),
            ready: true,
            keys_stored: 7,
            behind: 2,
            not_writable: vec!["no_majority".into()],
            ..NodeReport::default()
        };
        r.counters.puts.insert("stored".into(), 5);
        r.counters.put_latency_buckets = vec![1; LATENCY_BUCKETS_S.len()];
        r
    }

    #[test]
    fn a_report_round_trips_and_is_told_apart_from_core_frames() {
        let frame = encode(&report());
        assert!(is_report(&frame));
        assert_eq!(decode(&frame), Ok(report()));
        let core = [replicator_core::wire::WIRE_VERSION, 0, 0];
        assert!(!is_report(&core));
        assert_eq!(decode(&core), Err(ReportError::NotReport));
    }

    #[test]
    fn bad_report_frames_are_refused_without_panic() {
        assert_eq!(decode(&[]), Err(ReportError::NotReport));
        assert_eq!(decode(&[REPORT_TAG]), Err(ReportError::NotReport));
        assert_eq!(
            decode(&[REPORT_TAG, 9, b'{', b'}']),
            Err(ReportError::Version(9))
        );
        let mut big = vec![REPORT_TAG, REPORT_VERSION];
        big.resize(REPORT_BYTES_MAX + 1, b' ');
        assert_eq!(
            decode(&big),
            Err(ReportError::TooLarge(REPORT_BYTES_MAX + 1))
        );
        assert!(matches!(
            decode(&[REPORT_TAG, REPORT_VERSION, b'[']),
            Err(ReportError::Malformed(_))
        ));
        let mut r = report();
        r.http = Some("x".repeat(TEXT_BYTES_MAX + 1));
        assert!(matches!(
            decode(&encode(&r)),
            Err(ReportError::Malformed(_))
        ));
        let mut r = report();
        r.counters.put_latency_buckets = vec![1, 2];
        assert!(matches!(
            decode(&encode(&r)),
            Err(ReportError::Malformed(_))
        ));
    }
}
