//! The clusters and their nodes as one node knows them, and the digest that proposals carry.
//!
//! Safety needs every two proposals for one key to share a participant. Growing a membership
//! keeps that true, shrinking it on suspicion does not, so a `Membership` only shrinks when a
//! node says goodbye or an operator removes it (see core/PROTOCOL.md, Membership). A proposal keeps
//! the `Arc<Membership>` it started with, whatever the node learns later.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{ClusterId, FNV1A_OFFSET, NodeId, fnv1a_extend};

/// A digest of the sorted (cluster, node) pairs: equal on two nodes exactly when (barring a
/// 64-bit collision) their memberships are equal. FNV-1a, so it is the same on every platform
/// and in every process, unlike `std`'s randomly keyed hasher.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Digest(pub u64);

#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(from = "MembershipWire")]
pub struct Membership {
    clusters: BTreeMap<ClusterId, Vec<NodeId>>,
    cluster_of: BTreeMap<NodeId, ClusterId>,
    digest: Digest,
}

/// What goes on the wire and on disk: the pairs only; the index and digest are derived.
#[derive(Deserialize)]
struct MembershipWire(Vec<(ClusterId, Vec<NodeId>)>);

/// Encoded as [`MembershipWire`] is (a newtype is transparent, so: the sequence of (cluster,
/// nodes) pairs), straight from the map: serde's `into` would clone the whole membership for
/// every reservation written to disk.
impl Serialize for Membership {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct("MembershipWire", &Pairs(&self.clusters))
    }
}

struct Pairs<'a>(&'a BTreeMap<ClusterId, Vec<NodeId>>);

impl Serialize for Pairs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl From<MembershipWire> for Membership {
    fn from(w: MembershipWire) -> Self {
        Membership::from_pairs(
            w.0.into_iter()
                .flat_map(|(c, nodes)| nodes.into_iter().map(move |n| (c.clone(), n))),
        )
    }
}

impl Default for Membership {
    fn default() -> Self {
        Self::from_pairs(std::iter::empty())
    }
}

impl Membership {
    /// Builds a membership; a node listed twice keeps its last cluster.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (ClusterId, NodeId)>) -> Self {
        let mut cluster_of = BTreeMap::new();
        for (c, n) in pairs {
            cluster_of.insert(n, c);
        }
        let mut sets: BTreeMap<ClusterId, BTreeSet<NodeId>> = BTreeMap::new();
        for (n, c) in &cluster_of {
            sets.entry(c.clone()).or_default().insert(n.clone());
        }
        let clusters: BTreeMap<ClusterId, Vec<NodeId>> = sets
            .into_iter()
            .map(|(c, s)| (c, s.into_iter().collect()))
            .collect();
        let digest = digest_of(&clusters);
        Membership {
            clusters,
            cluster_of,
            digest,
        }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn len(&self) -> usize {
        self.cluster_of.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cluster_of.is_empty()
    }
    pub fn contains(&self, node: &NodeId) -> bool {
        self.cluster_of.contains_key(node)
    }
    pub fn cluster_of(&self, node: &NodeId) -> Option<&ClusterId> {
        self.cluster_of.get(node)
    }
    /// The nodes of `cluster`, sorted; empty if the cluster is unknown.
    pub fn nodes_of(&self, cluster: &ClusterId) -> &[NodeId] {
        self.clusters.get(cluster).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Every cluster with its sorted nodes, in cluster order.
    pub fn clusters(&self) -> impl Iterator<Item = (&ClusterId, &[NodeId])> {
        self.clusters.iter().map(|(c, n)| (c, n.as_slice()))
    }
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
    /// Every node, sorted by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.cluster_of.keys()
    }

    pub fn with_node(&self, cluster: ClusterId, node: NodeId) -> Membership {
        Membership::from_pairs(self.pairs().chain(std::iter::once((cluster, node))))
    }
    pub fn without_node(&self, node: &NodeId) -> Membership {
        Membership::from_pairs(self.pairs().filter(|(_, n)| n != node))
    }

    fn pairs(&self) -> impl Iterator<Item = (ClusterId, NodeId)> + '_ {
        self.cluster_of.iter().map(|(n, c)| (c.clone(), n.clone()))
    }
}

fn digest_of(clusters: &BTreeMap<ClusterId, Vec<NodeId>>) -> Digest {
    let mut h = FNV1A_OFFSET;
    let mut eat = |bytes: &[u8]| {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        h = fnv1a_extend(h, &(bytes.len() as u64).to_le_bytes());
        h = fnv1a_extend(h, bytes);
    };
    for (c, nodes) in clusters {
        for n in nodes {
            eat(c.as_str().as_bytes());
            eat(n.as_str().as_bytes());
        }
    }
    Digest(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> Membership {
        Membership::from_pairs(
            pairs
                .iter()
                .map(|(c, n)| (ClusterId::from(*c), NodeId::from(*n))),
        )
    }

    /// Reservations on disk hold their participants: the encoding must stay the pairs list
    /// it always was, and round-trip.
    #[test]
    fn encodes_as_the_pairs_list_and_round_trips() {
        let members = m(&[("x", "1"), ("y", "3"), ("x", "2")]);
        // What the derived `into = "MembershipWire"` encoded: the map's pairs, in its order.
        let pairs: Vec<(ClusterId, Vec<NodeId>)> = members
            .clusters
            .iter()
            .map(|(c, n)| (c.clone(), n.clone()))
            .collect();
        assert_eq!(pairs.len(), 2);
        let bytes = crate::wire::encode_record(&members).unwrap();
        assert_eq!(bytes, crate::wire::encode_record(&pairs).unwrap());
        let back: Membership = crate::wire::decode_record(&bytes).unwrap();
        assert_eq!(back, members);
        assert_eq!(back.digest(), members.digest());
    }

    #[test]
    fn digest_ignores_order_and_sees_every_pair() {
        let a = m(&[("x", "1"), ("x", "2"), ("y", "3")]);
        let b = m(&[("y", "3"), ("x", "2"), ("x", "1")]);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), m(&[("x", "1"), ("x", "2")]).digest());
        assert_ne!(
            a.digest(),
            m(&[("x", "1"), ("y", "2"), ("y", "3")]).digest()
        );
        assert_ne!(m(&[("ab", "c")]).digest(), m(&[("a", "bc")]).digest());
    }

    #[test]
    fn the_digest_is_stable_across_versions() {
        // Digests travel in every Prepare, Accept and Query: a change here splits a network of
        // mixed versions.
        assert_eq!(m(&[]).digest(), Digest(FNV1A_OFFSET));
        assert_eq!(
            m(&[("x", "1"), ("y", "2")]).digest(),
            Digest(0xf7fc_b903_e671_c13d)
        );
    }

    #[test]
    fn grows_and_shrinks_explicitly() {
        let a = m(&[("x", "1"), ("x", "2")]);
        let b = a.with_node("y".into(), "3".into());
        assert_eq!(b.len(), 3);
        assert_eq!(b.cluster_of(&"3".into()), Some(&ClusterId::from("y")));
        assert_eq!(b.without_node(&"3".into()), a);
    }
}
