//! Reaching every participant (core/PROTOCOL.md, "Terms": representative): directly inside
//! this node's cluster, through one representative in each other cluster. The representative
//! of a cluster is chosen by the proposer (all its requests to a cluster take the same one;
//! proposers spread over the cluster's live nodes), skips departed nodes and doubted ones
//! (suspected, or not heard in time since), and is replaced by the next one after a failover.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::membership::Membership;
use crate::types::{ClusterId, NodeId, Time, fnv1a};
use crate::wire::{Message, Request};

use super::Env;
use super::health::Health;

/// What picking a representative needs to know of the peers.
pub(crate) struct Peers<'a> {
    pub departed: &'a BTreeSet<NodeId>,
    pub health: &'a Health,
}

/// The representative of a cluster for one request: counting from `spread` through the
/// cluster's nodes that did not depart, the `failovers`-th one that is not doubted (if every
/// one is: the one whose suspicion ended or ends first, then the next ones). The order is
/// the cluster's own, whatever is suspected, so a failover never comes back to a node it left.
pub(crate) fn pick_representative(
    nodes: &[NodeId],
    peers: &Peers<'_>,
    spread: u64,
    failovers: usize,
) -> Option<NodeId> {
    let live: Vec<&NodeId> = nodes
        .iter()
        .filter(|n| !peers.departed.contains(*n))
        .collect();
    if live.is_empty() {
        return None;
    }
    let start = (spread as usize) % live.len();
    let ring = (0..live.len()).map(|i| live[(start + i) % live.len()]);
    let trusted: Vec<&NodeId> = ring.filter(|n| !peers.health.doubts(n)).collect();
    if trusted.is_empty() {
        let mut by_suspicion = live;
        by_suspicion.sort_by_key(|n| peers.health.suspected_until(n));
        return Some(by_suspicion[failovers % by_suspicion.len()].clone());
    }
    Some(trusted[failovers % trusted.len()].clone())
}

/// How long a proposer keeps starting its choice of representatives at the same node.
pub(crate) const REPRESENTATIVE_TURN: Duration = Duration::from_secs(1);

/// Where the keys `proposer` (this node) starts at `now` begin their choice of
/// representatives: its own id and the current `REPRESENTATIVE_TURN`, not the key. So the
/// requests it sends to a cluster at about the same time take the same representative: what
/// one driver turn sends there leaves as one frame and fans out as one frame per member,
/// where keys spread over the cluster's nodes sent one frame to each of them and had each
/// fan out its share (a 3x3 network at 64 clients: frames per create 8.0 -> 5.0; README,
/// "Performance"). Turn by turn the choice moves on through the cluster, so every proposer
/// still measures every representative: a slow one stands out against the others in the
/// recent fast rounds (`lateness.rs`) and is suspected. Chosen by the proposer alone, a slow
/// representative was the only one a proposer ever measured, never looked late, and every
/// create through it took 3.5 round trips (`sim-tests/tests/regions.rs`).
pub(crate) fn spread_of(proposer: &NodeId, now: Time) -> u64 {
    let turn = now.as_micros() / REPRESENTATIVE_TURN.as_micros() as u64;
    fnv1a(proposer.as_str().as_bytes()).wrapping_add(turn)
}

/// Sends `request` to the nodes of `participants` that `wanted` keeps: directly in this node's
/// cluster, through one representative elsewhere (the `failovers(cluster)`-th pick). Returns
/// the clusters it went to through a representative, with the representative of each.
pub(crate) fn send_to_participants(
    env: &mut Env,
    peers: &Peers<'_>,
    participants: &Membership,
    spread: u64,
    failovers: impl Fn(&ClusterId) -> usize,
    request: &Request,
    wanted: impl Fn(&NodeId) -> bool,
) -> Vec<(ClusterId, NodeId)> {
    let mut relayed = Vec::new();
    for (cluster, nodes) in participants.clusters() {
        let targets: Vec<NodeId> = nodes
            .iter()
            .filter(|n| wanted(n) && !peers.departed.contains(*n))
            .cloned()
            .collect();
        if targets.is_empty() {
            continue;
        }
        if *cluster == env.cluster {
            for n in targets {
                env.out.send(n, Message::Request(request.clone()));
            }
            continue;
        }
        let Some(rep) = pick_representative(nodes, peers, spread, failovers(cluster)) else {
            continue;
        };
        env.out.send(
            rep.clone(),
            Message::Relay {
                cluster: cluster.clone(),
                targets,
                request: request.clone(),
            },
        );
        relayed.push((cluster.clone(), rep));
    }
    relayed
}
