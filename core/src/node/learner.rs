//! The learner's catch-up (core/PROTOCOL.md, "Decide and catch-up"): every node numbers the
//! decisions it learns, and pulls those of the other members of its cluster, from where it
//! left off, every `catch_up_interval` (and at once after a restart): a node that was down,
//! cut off or slow learns every decision it missed from its own cluster without waiting for a
//! read. A Decide that was lost costs nothing more than a catch-up.
//!
//! Every value chosen was accepted by a majority of every cluster, so each cluster holds it:
//! if none of its nodes heard the decision, the holders recover it after their lease
//! (`proposer.rs`), and then the rest pull it from them.

use std::collections::BTreeMap;

use crate::storage::WriteOp;
use crate::timers::Timer;
use crate::types::{Key, NodeId, Proposal, Time};
use crate::wire::Message;

use super::Env;
use super::acceptor::Acceptor;

#[derive(Default)]
pub(crate) struct Learner {
    peers: BTreeMap<NodeId, Source>,
}

#[derive(Default, Clone, Copy)]
struct Source {
    /// Every decision the peer numbered up to this was pulled.
    caught_up: u64,
    /// The peer's newest decision, as its last page said.
    latest: u64,
    /// When the last request left (one at a time per peer).
    asked_at: Option<Time>,
}

impl Learner {
    pub fn new(caught_up: BTreeMap<NodeId, u64>) -> Learner {
        Learner {
            peers: caught_up
                .into_iter()
                .map(|(n, seq)| {
                    let source = Source {
                        caught_up: seq,
                        latest: seq,
                        asked_at: None,
                    };
                    (n, source)
                })
                .collect(),
        }
    }

    /// The last of `peer`'s decisions pulled from it.
    pub fn caught_up(&self, peer: &NodeId) -> u64 {
        self.peers.get(peer).map_or(0, |s| s.caught_up)
    }

    /// How many decisions some member of this cluster had that this node has not pulled yet,
    /// at most, as their last pages said.
    pub fn behind(&self) -> u64 {
        self.peers
            .values()
            .map(|s| s.latest.saturating_sub(s.caught_up))
            .max()
            .unwrap_or(0)
    }

    /// Time to pull: ask each of `others` (the other members of this node's cluster) for the
    /// decisions after the last one pulled, unless a request to it is still young.
    pub fn on_timer(&mut self, env: &mut Env, others: &[NodeId]) {
        for peer in others {
            self.ask(env, peer, false);
        }
        self.peers.retain(|n, _| others.contains(n));
        let next = env.config.catch_up_interval;
        let jitter = env.jitter(next / 4);
        env.timers.set(Timer::CatchUp, env.now + next + jitter);
    }

    /// Asks `peer` for its decisions after the last one pulled (`now`: even if a request is
    /// pending).
    pub fn ask(&mut self, env: &mut Env, peer: &NodeId, now: bool) {
        if *peer == env.id {
            return;
        }
        let source = self.peers.entry(peer.clone()).or_default();
        let young = source
            .asked_at
            .is_some_and(|at| env.now.since(at) < env.config.sync_timeout);
        if young && !now {
            return;
        }
        source.asked_at = Some(env.now);
        env.out.send(
            peer.clone(),
            Message::CatchUp {
                after: source.caught_up,
            },
        );
    }

    /// A member of this cluster asks for the decisions after `after`: one page.
    pub fn serve(&self, env: &mut Env, acceptor: &Acceptor, from: NodeId, after: u64) {
        let page =
            acceptor.decisions_after(after, env.config.sync_page_keys, env.config.sync_page_bytes);
        // The store cannot be read now: no answer, as if the question was lost (the member
        // asks again on its catch-up timer).
        let Ok((entries, last)) = page else { return };
        let latest = acceptor.seq();
        // After every write, lazy ones included: a decision's number is on this node's disk
        // before anyone relies on it (a restart never numbers another decision with it).
        env.out.send_after_all(
            from,
            Message::CatchUpPage {
                entries,
                last,
                latest,
            },
        );
    }

    /// A page of `from`'s decisions arrived: returns them for the node to store, after
    /// recording how far it got (a lazy write: pulling again is harmless) and asking for the
    /// next page if there is one. `None`: the page is not one this node asked for.
    pub fn on_page(
        &mut self,
        env: &mut Env,
        from: &NodeId,
        entries: Vec<(Key, Proposal)>,
        last: u64,
        latest: u64,
    ) -> Option<Vec<(Key, Proposal)>> {
        let source = self.peers.get_mut(from)?;
        source.asked_at = None;
        if last < source.caught_up || latest < last {
            // An old page (a duplicate, or one overtaken): nothing new in it.
            return None;
        }
        source.latest = source.latest.max(latest);
        if last > source.caught_up {
            source.caught_up = last;
            env.out.persist_lazy(WriteOp::CaughtUp {
                peer: from.clone(),
                seq: last,
            });
        }
        if last < latest {
            self.ask(env, from, true);
        }
        Some(entries)
    }

    /// After a join-time copy from `peer`, whose decisions up to `seq` it held: pull from there.
    pub fn copied_from(&mut self, env: &mut Env, peer: &NodeId, seq: u64) {
        let source = self.peers.entry(peer.clone()).or_default();
        if seq > source.caught_up {
            source.caught_up = seq;
            source.latest = source.latest.max(seq);
            env.out.persist_lazy(WriteOp::CaughtUp {
                peer: peer.clone(),
                seq,
            });
        }
    }
}
