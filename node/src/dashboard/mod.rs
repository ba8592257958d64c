//! The live dashboard every node serves at `/`: a page (HTML, CSS and JS compiled in, nothing
//! fetched from elsewhere) that polls `GET /dashboard`, the network as this node sees it.
//!
//! What this node knows of the others: the membership and whom the transport reports down
//! (the driver's [`Status`]), the addresses they were discovered at, and the [`report`]s they
//! send about themselves once a second. Numbers of another node come only from its own report,
//! shown with their age; without one they are unknown.

pub mod history;
pub mod report;
mod view;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{Counters, Metrics};
use crate::status::Status;
use history::{History, Rates, Sample};
use report::NodeReport;

pub use view::{AuthView, dashboard_json};

pub const INDEX_HTML: &str = include_str!("index.html");
pub const SCRIPT_JS: &str = include_str!("dashboard.js");
pub const STYLE_CSS: &str = include_str!("dashboard.css");

/// A report older than this is stale: its numbers are shown with their age, and it no longer
/// counts in the network's rates.
pub const REPORT_FRESH: Duration = Duration::from_secs(3);
/// Peers whose reports and addresses are kept (the transport keeps fewer members).
const PEERS_MAX: usize = 4096;

/// A member's last two reports.
struct Received {
    latest: NodeReport,
    at: Instant,
    previous: Option<NodeReport>,
}

/// What the dashboard remembers between requests.
pub struct Dashboard {
    started: Instant,
    /// This node's HTTP URL, once it listens.
    http: OnceLock<String>,
    /// The addresses this node listens on.
    own_addrs: OnceLock<Vec<String>>,
    reports: Mutex<HashMap<String, Received>>,
    /// The addresses each member was discovered at.
    addrs: Mutex<HashMap<String, Vec<String>>>,
    history: Mutex<History>,
    /// This node's counters at the last sample.
    own_previous: Mutex<Option<(Instant, Counters)>>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            started: Instant::now(),
            http: OnceLock::new(),
            own_addrs: OnceLock::new(),
            reports: Mutex::default(),
            addrs: Mutex::default(),
            history: Mutex::default(),
            own_previous: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dashboard {
    pub fn set_http(&self, url: String) {
        let _ = self.http.set(url);
    }

    pub fn set_own_addrs(&self, addrs: Vec<String>) {
        let _ = self.own_addrs.set(addrs);
    }

    /// Keeps a member's report (a peer beyond [`PEERS_MAX`] new ones is not kept).
    pub fn record_report(&self, peer: &str, report: NodeReport) {
        let mut reports = lock(&self.reports);
        let now = Instant::now();
        if let Some(r) = reports.get_mut(peer) {
            let previous = std::mem::replace(&mut r.latest, report);
            r.previous = Some(previous);
            r.at = now;
        } else if reports.len() < PEERS_MAX {
            reports.insert(
                peer.to_string(),
                Received {
                    latest: report,
                    at: now,
                    previous: None,
                },
            );
        }
    }

    /// Keeps the addresses a member was discovered at.
    pub fn record_addrs(&self, peer: &str, addrs: Vec<String>) {
        let mut all = lock(&self.addrs);
        if all.len() < PEERS_MAX || all.contains_key(peer) {
            all.insert(peer.to_string(), addrs);
        }
    }

    /// This node's report about itself.
    pub fn own_report(&self, s: &Status, metrics: &Metrics) -> NodeReport {
        let reach = crate::writability::reach(s);
        NodeReport {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            http: self.http.get().cloned(),
            ready: s.ready && !s.removed,
            leaving: s.leaving,
            removed: s.removed,
            not_writable: crate::writability::not_writable(s, &reach)
                .into_iter()
                .map(String::from)
                .collect(),
            keys_stored: s.stats.keys_stored,
            accepted_undecided: s.stats.accepted_undecided as u64,
            puts_in_flight: s.stats.puts_in_flight as u64,
            proposers: s.stats.proposers as u64,
            behind: s.stats.behind,
            damaged_keys: s.stats.damaged_keys as u64,
            counters: metrics.counters(),
        }
    }

    /// Takes one sample of the network's rates (call it every second), and forgets the reports
    /// of nodes that are no longer members.
    pub fn sample(&self, s: &Status, metrics: &Metrics, unix_ms: u64) {
        let now = Instant::now();
        let mut total = Rates::default();
        let mut counted = 0;
        let counters = metrics.counters();
        {
            let mut own = lock(&self.own_previous);
            if let Some((at, before)) = own.as_ref() {
                let secs = now.duration_since(*at).as_secs_f64();
                if let Some(r) = Rates::between(before, &counters, secs) {
                    total.add(&r);
                    counted += 1;
                }
            }
            *own = Some((now, counters));
        }
        {
            let mut reports = lock(&self.reports);
            reports.retain(|peer, _| s.peers.iter().any(|p| p.peer == *peer));
            for r in reports.values() {
                if now.duration_since(r.at) > REPORT_FRESH {
                    continue;
                }
                let Some(previous) = &r.previous else {
                    continue;
                };
                let secs = r.latest.uptime_ms.saturating_sub(previous.uptime_ms) as f64 / 1000.0;
                if let Some(rates) = Rates::between(&previous.counters, &r.latest.counters, secs) {
                    total.add(&rates);
                    counted += 1;
                }
            }
        }
        lock(&self.addrs).retain(|peer, _| s.peers.iter().any(|p| p.peer == *peer));
        let members = s.membership.len().max(1);
        lock(&self.history).push(Sample::new(unix_ms, counted, members, &total));
    }

    /// A member's latest report and its age, if it sent one.
    pub fn report_of(&self, peer: &str) -> Option<(NodeReport, Duration)> {
        lock(&self.reports)
            .get(peer)
            .map(|r| (r.latest.clone(), r.at.elapsed()))
    }

    fn addrs_of(&self, peer: &str, is_self: bool) -> Vec<String> {
        if is_self {
            return self.own_addrs.get().cloned().unwrap_or_default();
        }
        lock(&self.addrs).get(peer).cloned().unwrap_or_default()
    }

    fn samples_since(&self, since_unix_ms: Option<u64>) -> Vec<Sample> {
        lock(&self.history).since(since_unix_ms)
    }
}
