//! Membership as protocol state (core/PROTOCOL.md, "Membership", "Durable membership", "The
//! network identity", "Views"): discovery (own network only), goodbyes and removals as they
//! land here, and the views members exchange so that a missed goodbye or removal still
//! converges. Removal checks and leaving have their own files.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::api::Note;
use crate::faults::PeerFault;
use crate::membership::Membership;
use crate::storage::WriteOp;
use crate::types::{ClusterId, NetworkId, NodeId};
use crate::wire::Message;

use super::Node;

/// The membership as this node knows it: the members, which grow on discovery and shrink
/// only on a goodbye or a removal, and the departed nodes, which only grow. A node that
/// departed is never a member again (it must come back with a new identity). This node stays
/// in its own membership even once removed: it then serves nothing.
pub(crate) struct Members {
    me: NodeId,
    current: Arc<Membership>,
    departed: BTreeSet<NodeId>,
}

impl Members {
    /// The membership of a node (re)started with these members and departed nodes recorded.
    pub fn new(
        me: NodeId,
        cluster: ClusterId,
        recorded: impl IntoIterator<Item = (ClusterId, NodeId)>,
        departed: BTreeSet<NodeId>,
    ) -> Members {
        let current = Arc::new(Membership::from_pairs(recorded).with_node(cluster, me.clone()));
        Members {
            me,
            current,
            departed,
        }
    }

    /// The current membership, as proposals keep it.
    pub fn current(&self) -> &Arc<Membership> {
        &self.current
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.current.contains(node)
    }

    pub fn departed(&self) -> &BTreeSet<NodeId> {
        &self.departed
    }

    pub fn has_departed(&self, node: &NodeId) -> bool {
        self.departed.contains(node)
    }

    /// Whether an operator removed this node.
    pub fn this_node_removed(&self) -> bool {
        self.departed.contains(&self.me)
    }

    /// Adds `node` of `cluster`: `Ok(true)` if it is new, `Ok(false)` if there is nothing to
    /// add (it is this node, or known already), `Err` naming the rule the claim breaks.
    pub fn add(
        &mut self,
        cluster: ClusterId,
        node: NodeId,
        clusters_max: usize,
        cluster_nodes_max: usize,
    ) -> Result<bool, PeerFault> {
        if node == self.me {
            return Ok(false);
        }
        match self.current.cluster_of(&node) {
            Some(c) if *c == cluster => return Ok(false),
            Some(c) => {
                return Err(PeerFault::MemberOfAnotherCluster {
                    node,
                    known: c.clone(),
                    claimed: cluster,
                });
            }
            None => {}
        }
        if self.departed.contains(&node) {
            return Err(PeerFault::DepartedNodeReturned);
        }
        let grown = self.current.with_node(cluster.clone(), node.clone());
        if grown.cluster_count() > clusters_max
            || grown.nodes_of(&cluster).len() > cluster_nodes_max
        {
            return Err(PeerFault::MembershipWouldExceedLimits);
        }
        self.current = Arc::new(grown);
        assert!(self.current.contains(&node) && !self.departed.contains(&node));
        Ok(true)
    }

    /// `node` left (its goodbye, or a removal). False if that was known already, or if it is
    /// this node (see `remove_this_node`).
    pub fn depart(&mut self, node: &NodeId) -> bool {
        if *node == self.me || self.departed.contains(node) {
            return false;
        }
        self.current = Arc::new(self.current.without_node(node));
        self.departed.insert(node.clone());
        assert!(!self.current.contains(node));
        true
    }

    /// An operator removed this node. False if that was known already.
    pub fn remove_this_node(&mut self) -> bool {
        self.departed.insert(self.me.clone())
    }
}

impl Node {
    // ---------------------------------------------------------------- growing

    /// Discovery found a node: only one of this node's own network is added.
    pub(super) fn on_discovered(&mut self, cluster: ClusterId, node: NodeId, network: NetworkId) {
        if network != self.network {
            let ours = self.network.clone();
            return self.env.out.note(Note::ForeignNetwork {
                node,
                network,
                ours,
            });
        }
        self.add_member(cluster, node);
    }

    /// Adds a member of this node's network (discovered, or named in a member's view) and
    /// records it durably: everything that depends on the grown membership (a proposal carrying
    /// its digest, a grant matching it) leaves only after the write, behind the barrier.
    fn add_member(&mut self, cluster: ClusterId, node: NodeId) {
        let (clusters_max, nodes_max) = (
            self.env.config.clusters_max,
            self.env.config.cluster_nodes_max,
        );
        match self
            .members
            .add(cluster.clone(), node.clone(), clusters_max, nodes_max)
        {
            Ok(true) => self.env.out.persist(WriteOp::AddMember { cluster, node }),
            Ok(false) => {}
            Err(reason) => self
                .env
                .out
                .note(Note::PeerInputRejected { from: node, reason }),
        }
    }

    // ---------------------------------------------------------------- shrinking

    /// `node` left the membership: its goodbye, or an operator's removal here or at another
    /// member. Nothing more is needed: quorums are counted in each request's membership, and
    /// every request carries its digest, so a node still counting `node` is refused until its
    /// view converges (core/PROTOCOL.md, "Membership").
    pub(super) fn on_removed(&mut self, node: NodeId, _goodbye: bool) {
        if !self.members.depart(&node) {
            return;
        }
        self.env.out.persist(WriteOp::Departed(node.clone()));
        self.view_sent.remove(&node);
        self.env.out.note(Note::NodeRemoved { node: node.clone() });
    }

    /// A member voted `Denied(Departed)`: an operator removed it. It says the truth (it
    /// believes so only once a member that recorded the removal told it): take the removal here
    /// too. Otherwise, when the remover's messages were lost and the remover left, the removed
    /// node refuses every proposal forever and nobody else learns why (found by sim seed 357,
    /// `--joins 2 --leaves 1`).
    pub(super) fn on_departed_vote(&mut self, node: &NodeId) {
        if *node != self.env.id && self.members.contains(node) {
            self.on_removed(node.clone(), false);
        }
    }

    /// A member says an operator removed `node` (maybe this node itself).
    pub(super) fn on_removed_message(&mut self, from: NodeId, node: NodeId) {
        if !self.members.contains(&from) || from == self.env.id {
            return;
        }
        if node == self.env.id {
            self.on_self_removed(from);
        } else {
            self.on_removed(node, false);
        }
    }

    /// A member told this node that an operator removed it. From now on it serves nothing
    /// (it no longer hears decisions, and no member answers its questions), and it never
    /// rejoins under this identity.
    fn on_self_removed(&mut self, by: NodeId) {
        if !self.members.remove_this_node() {
            return;
        }
        self.env.out.persist(WriteOp::Departed(self.env.id.clone()));
        self.reader.removed(&mut self.env);
        self.env.out.note(Note::SelfRemoved { by });
    }

    /// A message came from a node that left or was removed: tell it, so that a removed node
    /// that was partitioned or down when it was removed stops serving.
    pub(super) fn tell_departed_sender(&mut self, from: &NodeId) {
        if *from != self.env.id
            && self.members.has_departed(from)
            && !self.members.this_node_removed()
        {
            self.env
                .out
                .send(from.clone(), Message::Removed { node: from.clone() });
        }
    }

    // ---------------------------------------------------------------- views

    /// Sends this node's view to `to`, at most once per `backoff_min` per peer.
    pub(super) fn send_view(&mut self, to: &NodeId) {
        if *to == self.env.id || self.members.this_node_removed() {
            return;
        }
        if let Some(at) = self.view_sent.get(to)
            && self.env.now.since(*at) < self.env.config.backoff_min
        {
            return;
        }
        if !self.members.contains(to) {
            return;
        }
        self.view_sent.insert(to.clone(), self.env.now);
        let departed = self
            .members
            .departed()
            .iter()
            .take(self.departed_listed_max())
            .cloned()
            .collect();
        let members = (**self.members.current()).clone();
        self.env
            .out
            .send(to.clone(), Message::View { members, departed });
    }

    /// Departed nodes listed in a view, at most.
    pub(super) fn departed_listed_max(&self) -> usize {
        self.env
            .config
            .clusters_max
            .saturating_mul(self.env.config.cluster_nodes_max)
    }

    /// Merges a member's view: its departures and its members (both only ever grow), then
    /// answers with this node's own view if the sender lacks part of it.
    pub(super) fn on_view(&mut self, from: NodeId, members: Membership, departed: Vec<NodeId>) {
        if !self.members.contains(&from) || self.members.this_node_removed() {
            return;
        }
        for node in &departed {
            if *node == self.env.id {
                return self.on_self_removed(from);
            }
            self.on_removed(node.clone(), false);
        }
        for (cluster, nodes) in members.clusters() {
            for node in nodes {
                if !self.members.has_departed(node) {
                    self.add_member(cluster.clone(), node.clone());
                }
            }
        }
        let theirs: BTreeSet<&NodeId> = departed.iter().collect();
        let they_lack = self.members.departed().iter().any(|d| !theirs.contains(d))
            || self.members.current().nodes().any(|n| !members.contains(n));
        if they_lack {
            self.send_view(&from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Members {
        let recorded = [("a", "a2"), ("b", "b1")].map(|(c, n)| (ClusterId::from(c), n.into()));
        Members::new("a1".into(), "a".into(), recorded, BTreeSet::new())
    }

    #[test]
    fn grows_only_with_consistent_new_nodes() {
        let mut m = members();
        assert_eq!(m.current().len(), 3);
        assert_eq!(m.add("b".into(), "b2".into(), 8, 8), Ok(true));
        assert_eq!(m.add("b".into(), "b2".into(), 8, 8), Ok(false));
        assert_eq!(m.add("a".into(), "a1".into(), 8, 8), Ok(false));
        assert!(
            m.add("c".into(), "b2".into(), 8, 8).is_err(),
            "another cluster"
        );
        assert!(
            m.add("c".into(), "c1".into(), 2, 8).is_err(),
            "too many clusters"
        );
        assert!(
            m.add("b".into(), "b3".into(), 8, 2).is_err(),
            "too many nodes"
        );
        assert_eq!(m.current().len(), 4);
    }

    #[test]
    fn a_departed_node_is_never_a_member_again() {
        let mut m = members();
        let digest = m.current().digest();
        assert!(m.depart(&"b1".into()));
        assert!(!m.depart(&"b1".into()));
        assert!(!m.contains(&"b1".into()));
        assert!(m.has_departed(&"b1".into()));
        assert_ne!(m.current().digest(), digest);
        assert!(m.add("b".into(), "b1".into(), 8, 8).is_err());
    }

    #[test]
    fn this_node_is_removed_but_stays_in_its_own_membership() {
        let mut m = members();
        assert!(!m.depart(&"a1".into()));
        assert!(!m.this_node_removed());
        assert!(m.remove_this_node());
        assert!(!m.remove_this_node());
        assert!(m.this_node_removed());
        assert!(m.contains(&"a1".into()));
    }
}
