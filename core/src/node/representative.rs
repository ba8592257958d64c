//! Representatives (core/PROTOCOL.md, "Terms": representative): how a request reaches the
//! nodes of another cluster through one of them, how the sender fails over to the next one,
//! and what a node does as the representative of its own cluster (fan out, gather, answer one
//! `RelayReply`).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::api::Note;
use crate::faults::PeerFault;
use crate::membership::Membership;
use crate::timers::{RelayKey, Timer};
use crate::types::{ClusterId, NodeId, ProposalId};
use crate::wire::{Message, Request, Response};

use super::Node;
use super::decider::Phase;

/// A fan-out this node runs as the representative of its cluster.
pub(super) struct Relay {
    origins: BTreeSet<NodeId>,
    waiting: BTreeSet<NodeId>,
    responses: Vec<Response>,
    /// For a verify read: the origin's tag, to put back on the answers.
    origin_tag: Option<u64>,
}

/// The representative of a cluster for one request: spread over the cluster's live nodes by
/// `spread` (a proposal's counter, a verify read's tag), then the `failovers`-th next one.
pub(super) fn pick_representative(
    nodes: &[NodeId],
    departed: &BTreeSet<NodeId>,
    spread: u64,
    failovers: usize,
) -> Option<NodeId> {
    let live: Vec<&NodeId> = nodes.iter().filter(|n| !departed.contains(*n)).collect();
    if live.is_empty() {
        return None;
    }
    let start = (spread as usize) % live.len();
    Some(live[(start + failovers) % live.len()].clone())
}

impl Node {
    // ---------------------------------------------------------------- sending through one

    /// Sends `request` to every participant of `p`: directly inside this node's cluster,
    /// through one representative elsewhere. `only` narrows it to nodes that lack a vote.
    pub(super) fn send_to_participants(
        &mut self,
        p: &ProposalId,
        participants: &Arc<Membership>,
        request: &Request,
        only: Option<&BTreeSet<NodeId>>,
    ) {
        let wanted = |n: &NodeId| only.is_none_or(|voted| !voted.contains(n));
        for (cluster, nodes) in participants.clusters() {
            let targets: Vec<NodeId> = nodes
                .iter()
                .filter(|n| wanted(n) && !self.members.has_departed(n))
                .cloned()
                .collect();
            if targets.is_empty() {
                continue;
            }
            if *cluster == self.cluster {
                for n in targets {
                    self.out.send(n, Message::Request(request.clone()));
                }
            } else {
                let index = self
                    .deciders
                    .get(p)
                    .and_then(|d| d.reps.get(cluster))
                    .map_or(0, |r| r.index);
                let rep = pick_representative(nodes, self.members.departed(), p.counter, index);
                let Some(rep) = rep else { continue };
                self.out.send(
                    rep,
                    Message::Relay {
                        cluster: cluster.clone(),
                        targets,
                        request: request.clone(),
                    },
                );
            }
        }
    }

    /// A representative did not answer in time: ask the next node of its cluster, for the
    /// participants there that have not voted.
    pub(super) fn on_representative_timeout(&mut self, p: ProposalId, cluster: ClusterId) {
        let Some(d) = self.deciders.get_mut(&p) else {
            return;
        };
        let Some(rep) = d.reps.get_mut(&cluster) else {
            return;
        };
        if rep.answered {
            return;
        }
        rep.index += 1;
        let nodes = d.participants.nodes_of(&cluster);
        let targets: Vec<NodeId> = nodes
            .iter()
            .filter(|n| !d.votes.contains(n) && !self.members.has_departed(n))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let request = match d.phase {
            Phase::Reserving => {
                let Some(op) = d.op.and_then(|o| self.ops.get(&o)) else {
                    return;
                };
                Request::Reserve {
                    p: p.clone(),
                    key: d.key.clone(),
                    value: op.value.clone(),
                    digest: d.participants.digest(),
                }
            }
            Phase::Resolving { .. } | Phase::Confirming { .. } => Request::Status {
                p: p.clone(),
                key: d.key.clone(),
            },
        };
        let Some(next) = pick_representative(nodes, self.members.departed(), p.counter, rep.index)
        else {
            return;
        };
        self.out.send(
            next,
            Message::Relay {
                cluster: cluster.clone(),
                targets,
                request,
            },
        );
        self.timers.set(
            Timer::Representative(p, cluster),
            self.now + self.config.representative_timeout,
        );
    }

    /// A representative's answer: the responses it gathered count as if each node had
    /// answered directly.
    pub(super) fn on_relay_reply(
        &mut self,
        from: NodeId,
        cluster: ClusterId,
        responses: Vec<Response>,
    ) {
        for resp in responses {
            if let Response::Vote { p, .. } = &resp
                && let Some(d) = self.deciders.get_mut(p)
            {
                if let Some(rep) = d.reps.get_mut(&cluster) {
                    rep.answered = true;
                }
                let p = p.clone();
                self.timers
                    .cancel(&Timer::Representative(p, cluster.clone()));
            }
            self.on_response(&from, resp);
        }
    }

    // ---------------------------------------------------------------- acting as one

    /// Acts as the representative of this cluster: sends `request` to the listed nodes of it
    /// (itself included). Commit and Abort need no answer; votes and reads are gathered into
    /// one `RelayReply` per origin.
    pub(super) fn on_relay(
        &mut self,
        origin: NodeId,
        cluster: ClusterId,
        targets: Vec<NodeId>,
        request: Request,
    ) {
        let refusal = if cluster != self.cluster {
            Some(PeerFault::RelayForAnotherCluster {
                cluster,
                at: self.id.clone(),
                ours: self.cluster.clone(),
            })
        } else if !self.members.contains(&origin) {
            Some(PeerFault::RelayFromNonMember)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.out.note(Note::PeerInputRejected {
                from: origin,
                reason,
            });
        }
        let targets: Vec<NodeId> = targets
            .into_iter()
            .filter(|n| self.members.current().cluster_of(n) == Some(&self.cluster))
            .collect();
        let (relay_key, fanned) = match &request {
            Request::Commit { .. } | Request::Abort { .. } => {
                for n in targets {
                    self.out.send(n, Message::Request(request.clone()));
                }
                return;
            }
            Request::Reserve { p, .. } | Request::Status { p, .. } => {
                (RelayKey::Votes(p.clone()), request.clone())
            }
            Request::Read { key, tag } => {
                let local = self.next_tag;
                self.next_tag += 1;
                let fanned = Request::Read {
                    key: key.clone(),
                    tag: local,
                };
                let key = RelayKey::Read(local);
                if self.relays.len() >= self.config.relays_max {
                    return;
                }
                self.relays.insert(
                    key.clone(),
                    Relay {
                        origins: BTreeSet::from([origin.clone()]),
                        waiting: BTreeSet::new(),
                        responses: Vec::new(),
                        origin_tag: Some(*tag),
                    },
                );
                (key, fanned)
            }
        };
        if !self.relays.contains_key(&relay_key) {
            if self.relays.len() >= self.config.relays_max {
                return;
            }
            self.relays.insert(
                relay_key.clone(),
                Relay {
                    origins: BTreeSet::new(),
                    waiting: BTreeSet::new(),
                    responses: Vec::new(),
                    origin_tag: None,
                },
            );
        }
        let relay = self.relays.get_mut(&relay_key).expect("inserted above");
        relay.origins.insert(origin);
        relay.waiting.extend(targets.iter().cloned());
        self.timers.set(
            Timer::Relay(relay_key),
            self.now + self.config.relay_timeout,
        );
        for n in targets {
            self.out.send(n, Message::Request(fanned.clone()));
        }
    }

    /// One node of this cluster answered a relayed request. A decisive answer (anything but a
    /// grant) or the last one awaited sends the reply at once.
    pub(super) fn relay_collect(
        &mut self,
        relay_key: &RelayKey,
        node: &NodeId,
        resp: Response,
        decisive: bool,
    ) {
        let Some(relay) = self.relays.get_mut(relay_key) else {
            return;
        };
        if !relay.waiting.remove(node) {
            return;
        }
        let resp = match (resp, relay.origin_tag) {
            (
                Response::Read {
                    key, node, state, ..
                },
                Some(tag),
            ) => Response::Read {
                key,
                tag,
                node,
                state,
            },
            (resp, _) => resp,
        };
        // One answer per node: a relay that many resolvers join is re-armed by each of them,
        // and a node answering every round must not grow the reply past its cluster's size
        // (receivers refuse replies longer than `cluster_nodes_max`; found by seed 2191).
        let slot = relay.responses.iter_mut().find(|r| match r {
            Response::Vote { node: n, .. } | Response::Read { node: n, .. } => n == node,
        });
        match slot {
            Some(slot) => *slot = resp,
            None => relay.responses.push(resp),
        }
        if decisive || relay.waiting.is_empty() {
            self.relay_flush(relay_key);
        }
    }

    /// Sends what the fan-out gathered to every origin (at `relay_timeout` at the latest).
    pub(super) fn relay_flush(&mut self, relay_key: &RelayKey) {
        self.timers.cancel(&Timer::Relay(relay_key.clone()));
        let Some(relay) = self.relays.remove(relay_key) else {
            return;
        };
        if relay.responses.is_empty() {
            return;
        }
        for origin in relay.origins {
            self.out.send(
                origin,
                Message::RelayReply {
                    cluster: self.cluster.clone(),
                    responses: relay.responses.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    #[test]
    fn representatives_spread_and_fail_over_past_departed_nodes() {
        let nodes = ids(&["b1", "b2", "b3"]);
        let none = BTreeSet::new();
        let pick = |spread, failovers, departed: &BTreeSet<NodeId>| {
            pick_representative(&nodes, departed, spread, failovers).map(|n| n.to_string())
        };
        assert_eq!(pick(0, 0, &none).as_deref(), Some("b1"));
        assert_eq!(pick(4, 0, &none).as_deref(), Some("b2"));
        assert_eq!(pick(4, 1, &none).as_deref(), Some("b3"));
        assert_eq!(pick(4, 2, &none).as_deref(), Some("b1"));
        let b2_gone = BTreeSet::from([NodeId::from("b2")]);
        assert_eq!(pick(1, 0, &b2_gone).as_deref(), Some("b3"));
        let all_gone: BTreeSet<NodeId> = nodes.iter().cloned().collect();
        assert_eq!(pick(0, 0, &all_gone), None);
    }
}
