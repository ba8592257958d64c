//! What a running node knows about itself and its network, as the driver reports it to the
//! HTTP API, the dashboard and the metrics (kept apart from the driver so that those read it
//! without depending on the driver's loop).

use replicator_core::{ClusterId, Membership, NetworkId, NodeId, Stats};
use serde::Serialize;

/// A member and whether the transport reports it up (a member recorded on disk but not heard
/// from since this node started is down).
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    pub peer: String,
    pub cluster: String,
    pub up: bool,
}

/// What the driver knows, for the API.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub cluster: ClusterId,
    pub network: NetworkId,
    /// An operator removed this node: it serves nothing any more.
    pub removed: bool,
    pub ready: bool,
    pub leaving: bool,
    pub membership: Membership,
    pub peers: Vec<PeerInfo>,
    /// The peers the core suspects to be down or slow (it skips them in the fast round and as
    /// representatives).
    pub suspects: Vec<NodeId>,
    pub stats: Stats,
    pub cluster_size_min: usize,
    /// Why writes to the disk fail and are being retried (disk full), if they do.
    pub storage_stalled: Option<String>,
}
