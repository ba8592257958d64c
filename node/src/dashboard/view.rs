//! The body of `GET /dashboard` (its schema is `Dashboard` in openapi.json).

use std::collections::BTreeMap;

use replicator_core::{ClusterId, NodeId};
use serde_json::{Value as Json, json};

use super::report::{NodeReport, REPORT_INTERVAL};
use super::{Dashboard, REPORT_FRESH};
use crate::metrics::Metrics;
use crate::status::Status;
use crate::writability;

/// What the page needs to know about the API token: whether to ask for it, and whether the one
/// it sent is right.
#[derive(Clone, Copy, Debug)]
pub struct AuthView {
    pub token_configured: bool,
    pub writes_need_token: bool,
    pub reads_need_token: bool,
    /// The request carried the right token.
    pub token_accepted: bool,
}

pub fn dashboard_json(
    d: &Dashboard,
    s: &Status,
    metrics: &Metrics,
    auth: AuthView,
    network_open: bool,
    since_unix_ms: Option<u64>,
    unix_ms: u64,
) -> Json {
    let reach = writability::reach(s);
    // Every member, and every peer the transport knows that the membership has not (yet).
    let mut clusters: BTreeMap<ClusterId, Vec<NodeId>> = s
        .membership
        .clusters()
        .map(|(c, nodes)| (c.clone(), nodes.to_vec()))
        .collect();
    for p in &s.peers {
        let node = NodeId::new(&p.peer);
        let cluster = ClusterId::new(&p.cluster);
        let nodes = clusters.entry(cluster).or_default();
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    clusters.entry(s.cluster.clone()).or_default();
    if let Some(own) = clusters.get_mut(&s.cluster)
        && !own.contains(&s.id)
    {
        own.push(s.id.clone());
    }
    let own_report = d.own_report(s, metrics);
    // By name (a ClusterId's own order is not its name's).
    let mut clusters: Vec<(ClusterId, Vec<NodeId>)> = clusters.into_iter().collect();
    clusters.sort_by_key(|(c, _)| c.to_string());
    let clusters: Vec<Json> = clusters
        .into_iter()
        .map(|(cluster, mut nodes)| {
            nodes.sort();
            let r = reach.iter().find(|r| r.cluster == cluster);
            let not_writable = writability::cluster_not_writable(s, &reach, &cluster);
            json!({
                "cluster": cluster.to_string(),
                "members": r.map_or(0, |r| r.members),
                "reachable": r.map_or(0, |r| r.reachable),
                "majority": r.map_or(0, |r| r.majority),
                "writable": not_writable.is_empty(),
                "not_writable": not_writable,
                "nodes": nodes
                    .iter()
                    .map(|n| node_json(d, s, &own_report, &cluster, n))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let not_writable = writability::not_writable(s, &reach);
    json!({
        "node": s.id.to_string(),
        "cluster": s.cluster.to_string(),
        "network": s.network.to_string(),
        "network_open": network_open,
        "unix_ms": unix_ms,
        "api": {
            "token_configured": auth.token_configured,
            "writes_need_token": auth.writes_need_token,
            "reads_need_token": auth.reads_need_token,
            "token_accepted": auth.token_accepted,
        },
        "writable": not_writable.is_empty(),
        "not_writable": not_writable,
        "report_interval_ms": REPORT_INTERVAL.as_millis() as u64,
        "report_fresh_ms": REPORT_FRESH.as_millis() as u64,
        "clusters": clusters,
        "history": {
            "interval_ms": 1000,
            "samples": d.samples_since(since_unix_ms),
        },
    })
}

/// One member: its state as this node knows it, and its numbers as it reported them.
fn node_json(
    d: &Dashboard,
    s: &Status,
    own_report: &NodeReport,
    cluster: &ClusterId,
    node: &NodeId,
) -> Json {
    let is_self = *node == s.id;
    let peer = s.peers.iter().find(|p| p.peer == node.as_str());
    let suspected = s.suspects.contains(node);
    let (report, age_ms) = if is_self {
        (Some(own_report.clone()), Some(0))
    } else {
        match d.report_of(node.as_str()) {
            Some((r, age)) => (Some(r), Some(age.as_millis() as u64)),
            None => (None, None),
        }
    };
    let fresh = age_ms.is_some_and(|a| a <= REPORT_FRESH.as_millis() as u64);
    let up = if is_self {
        Some(true)
    } else {
        peer.map(|p| p.up)
    };
    let state = match up {
        Some(false) => "down",
        None => "unknown",
        Some(true) => match report.as_ref().filter(|_| fresh) {
            Some(r) if r.removed => "removed",
            Some(r) if r.leaving => "leaving",
            Some(r) if !r.ready => "joining",
            _ if suspected => "suspected",
            _ => "up",
        },
    };
    let member = s.membership.cluster_of(node) == Some(cluster);
    json!({
        "node": node.to_string(),
        "self": is_self,
        "member": member,
        "state": state,
        "transport_up": up,
        "suspected": suspected,
        "http": if is_self { own_report.http.clone() } else { report.as_ref().and_then(|r| r.http.clone()) },
        "p2p_addrs": d.addrs_of(node.as_str(), is_self),
        "report": report.map(|r| json!({
            "source": if is_self { "self" } else { "peer" },
            "age_ms": age_ms,
            "fresh": fresh,
            "ready": r.ready,
            "leaving": r.leaving,
            "removed": r.removed,
            "writable": r.not_writable.is_empty(),
            "not_writable": r.not_writable,
            "keys_stored": r.keys_stored,
            "accepted_undecided": r.accepted_undecided,
            "puts_in_flight": r.puts_in_flight,
            "proposers": r.proposers,
            "behind": r.behind,
            "damaged_keys": r.damaged_keys,
        })),
    })
}
