//! A node as the representative of its own cluster (core/PROTOCOL.md, "Terms": representative):
//! it sends a remote proposer's request to the listed nodes of its cluster (itself included)
//! and forwards each node's own answer, never answering for one. Answers leave in batches: at
//! once when one refuses or knows the decision, when a majority of the cluster accepted or
//! promised (what phase 2 needs), and after that one by one as they come (what the fast round
//! needs, which waits for everyone), until every target answered or `relay_timeout` passes.

use std::collections::BTreeSet;

use crate::api::Note;
use crate::faults::PeerFault;
use crate::quorum::majority;
use crate::timers::{RelayKey, Timer};
use crate::types::{ClusterId, NodeId};
use crate::wire::{Answer, Message, Request, Response};

use super::Env;

/// The bit that marks a tag as a relayed read's.
pub(crate) const RELAYED_TAG: u64 = 1 << 63;

#[derive(Default)]
pub(crate) struct Relays {
    relays: std::collections::BTreeMap<RelayKey, Relay>,
    next_tag: u64,
}

struct Relay {
    origins: BTreeSet<NodeId>,
    waiting: BTreeSet<NodeId>,
    /// Answers gathered and not forwarded yet.
    pending: Vec<Response>,
    /// Nodes whose answer was gathered (one answer per node counts).
    answered: BTreeSet<NodeId>,
    positive: usize,
    /// Whether a batch left already: from then on every answer is forwarded as it comes.
    flowing: bool,
    /// How many members this cluster has (a majority of them is what phase 2 needs).
    cluster_size: usize,
    /// For a verify read: the origin's tag, to put back on the answers.
    origin_tag: Option<u64>,
}

impl Relays {
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether this node relays for `key`: answers to it are gathered here.
    pub fn relays(&self, key: &RelayKey) -> bool {
        self.relays.contains_key(key)
    }

    /// Acts as the representative of this cluster (`cluster_nodes`: its members here) for
    /// `request` from `origin`. The caller checked that `origin` is a member.
    pub fn on_relay(
        &mut self,
        env: &mut Env,
        origin: NodeId,
        cluster: ClusterId,
        cluster_nodes: &[NodeId],
        targets: Vec<NodeId>,
        request: Request,
    ) {
        if cluster != env.cluster {
            let reason = PeerFault::RelayForAnotherCluster {
                cluster,
                at: env.id.clone(),
                ours: env.cluster.clone(),
            };
            return env.out.note(Note::PeerInputRejected {
                from: origin,
                reason,
            });
        }
        let targets: Vec<NodeId> = targets
            .into_iter()
            .filter(|n| cluster_nodes.contains(n))
            .collect();
        let (key, fanned, origin_tag) = match &request {
            Request::Decide { .. } | Request::Prepare { .. } | Request::Query { .. } => {
                // Nothing to gather (a Decide), or asked only inside the asker's own cluster.
                if matches!(request, Request::Decide { .. }) {
                    for n in targets {
                        env.out.send(n, Message::Request(request.clone()));
                    }
                }
                return;
            }
            Request::Accept {
                key,
                ballot,
                proposal,
                ..
            } => (
                RelayKey::Ballot(key.clone(), ballot.clone(), proposal.p.clone()),
                request.clone(),
                None,
            ),
            Request::Read { key, tag } => {
                // Tags of relayed reads have the top bit set: the node's own verify reads
                // count from 0, and answers find their way by tag.
                let local = RELAYED_TAG | self.next_tag;
                self.next_tag += 1;
                (
                    RelayKey::Read(local),
                    Request::Read {
                        key: key.clone(),
                        tag: local,
                    },
                    Some(*tag),
                )
            }
        };
        if !self.relays.contains_key(&key) {
            if self.relays.len() >= env.config.relays_max {
                return;
            }
            self.relays.insert(
                key.clone(),
                Relay {
                    origins: BTreeSet::new(),
                    waiting: BTreeSet::new(),
                    pending: Vec::new(),
                    answered: BTreeSet::new(),
                    positive: 0,
                    flowing: false,
                    cluster_size: cluster_nodes.len(),
                    origin_tag,
                },
            );
        }
        let relay = self.relays.get_mut(&key).expect("inserted above");
        relay.origins.insert(origin);
        let fresh: Vec<NodeId> = targets
            .into_iter()
            .filter(|n| !relay.answered.contains(n))
            .collect();
        relay.waiting.extend(fresh.iter().cloned());
        env.timers
            .set(Timer::Relay(key), env.now + env.config.relay_timeout);
        for n in fresh {
            env.out.send(n, Message::Request(fanned.clone()));
        }
    }

    /// One node of this cluster answered a relayed request.
    pub fn collect(&mut self, env: &mut Env, key: &RelayKey, resp: Response) {
        let Some(relay) = self.relays.get_mut(key) else {
            return;
        };
        let node = match &resp {
            Response::Ballot { node, .. }
            | Response::Query { node, .. }
            | Response::Read { node, .. } => node.clone(),
        };
        if !relay.waiting.remove(&node) || !relay.answered.insert(node) {
            return;
        }
        let (resp, decisive) = match (resp, relay.origin_tag) {
            (
                Response::Read {
                    key, node, state, ..
                },
                Some(tag),
            ) => (
                Response::Read {
                    key,
                    tag,
                    node,
                    state,
                },
                false,
            ),
            (resp @ Response::Ballot { .. }, _) => {
                let Response::Ballot { answer, .. } = &resp else {
                    unreachable!()
                };
                let positive = matches!(answer, Answer::Accepted | Answer::Promise { .. });
                if positive {
                    relay.positive += 1;
                }
                let decisive =
                    !positive || relay.positive >= majority(relay.cluster_size) || relay.flowing;
                (resp, decisive)
            }
            (resp, _) => (resp, false),
        };
        relay.pending.push(resp);
        if relay.waiting.is_empty() {
            return self.close(env, key);
        }
        if decisive {
            self.forward(env, key);
        }
    }

    /// The relay's time is up: forward what it has and close it.
    pub fn on_timeout(&mut self, env: &mut Env, key: &RelayKey) {
        self.close(env, key);
    }

    fn close(&mut self, env: &mut Env, key: &RelayKey) {
        self.forward(env, key);
        env.timers.cancel(&Timer::Relay(key.clone()));
        self.relays.remove(key);
    }

    /// Sends the gathered answers to every origin.
    fn forward(&mut self, env: &mut Env, key: &RelayKey) {
        let Some(relay) = self.relays.get_mut(key) else {
            return;
        };
        if relay.pending.is_empty() {
            return;
        }
        relay.flowing = true;
        let responses = std::mem::take(&mut relay.pending);
        for origin in &relay.origins {
            env.out.send(
                origin.clone(),
                Message::RelayReply {
                    cluster: env.cluster.clone(),
                    responses: responses.clone(),
                },
            );
        }
    }
}
