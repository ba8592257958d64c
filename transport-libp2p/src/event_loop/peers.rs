//! The peer table: members, candidates (learned, not yet Helloed), and the peers remembered so
//! that they are not brought back (departed) or not dialed again (foreign). Every map here is
//! bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;
use tracing::debug;

use crate::control::GossipMember;
use crate::{MEMBER_ADDRS_MAX, MEMBERS_MAX, Member};

/// Peers learned from the DHT or gossip but not yet Helloed.
const CANDIDATES_MAX: usize = MEMBERS_MAX;
/// Peers that said goodbye or were forgotten, remembered so that gossip and stale DHT records
/// do not bring them back (oldest forgotten first).
const DEPARTED_MAX: usize = MEMBERS_MAX;
/// Peers that Helloed with another network id, remembered so that they are reported once and
/// not dialed again when the DHT names them (oldest forgotten first).
const FOREIGN_MAX: usize = MEMBERS_MAX;
/// Redial backoff for members without a connection.
pub(super) const REDIAL_BACKOFF_MIN: Duration = Duration::from_millis(250);
const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Dial backoff for candidates that do not answer.
const CANDIDATE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const CANDIDATE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the event loop knows about a member.
#[derive(Debug)]
pub(super) struct MemberState {
    pub(super) cluster: String,
    /// The network id of its last Hello: the node's, unless the member later Helloed with
    /// another one (then it is down, not contacted and not redialed).
    pub(super) network: String,
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) up: bool,
    last_contact: Instant,
    redial_at: Instant,
    redial_backoff: Duration,
}

/// A peer learned from the DHT or from gossip, not yet Helloed.
#[derive(Debug)]
struct Candidate {
    addrs: Vec<Multiaddr>,
    dial_at: Instant,
    backoff: Duration,
}

/// A set of peers that forgets its oldest entry beyond `max`.
struct RecentPeers {
    set: HashSet<PeerId>,
    /// The same peers as `set`, oldest first.
    order: VecDeque<PeerId>,
    max: usize,
}

impl RecentPeers {
    fn new(max: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn contains(&self, peer: &PeerId) -> bool {
        self.set.contains(peer)
    }

    /// Remembers `peer`; false if it already was.
    fn insert(&mut self, peer: PeerId) -> bool {
        if !self.set.insert(peer) {
            return false;
        }
        self.order.push_back(peer);
        if self.order.len() > self.max
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }

    fn remove(&mut self, peer: &PeerId) {
        if self.set.remove(peer) {
            self.order.retain(|p| p != peer);
        }
    }
}

/// What a Hello of this node's network did to the table.
pub(super) enum Admission {
    /// The peer already was a member; its record is updated.
    Known,
    /// The peer is a new member.
    New(Member),
    /// The peer is new but the table holds [`MEMBERS_MAX`] members already.
    Full,
}

/// What the members' liveness check found due.
#[derive(Default)]
pub(super) struct MembersDue {
    /// Silent for `down_after`: now reported down.
    pub(super) went_down: Vec<PeerId>,
    /// Not connected: dial them at these addresses.
    pub(super) to_dial: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Connected but down: their connections are not worth keeping.
    pub(super) stale: Vec<PeerId>,
}

/// What the candidates' check found due.
#[derive(Default)]
pub(super) struct CandidatesDue {
    pub(super) to_dial: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Connected without a Hello answer: Hello them again.
    pub(super) to_hello: Vec<PeerId>,
}

pub(super) struct Peers {
    /// Bounded by [`MEMBERS_MAX`].
    pub(super) members: HashMap<PeerId, MemberState>,
    /// Bounded by [`CANDIDATES_MAX`].
    candidates: HashMap<PeerId, Candidate>,
    departed: RecentPeers,
    foreign: RecentPeers,
    /// Whether each connected peer's connection is over loopback (then its loopback addresses
    /// are usable). One entry per connected peer.
    connected_over_loopback: HashMap<PeerId, bool>,
}

impl Peers {
    pub(super) fn new() -> Self {
        Self {
            members: HashMap::new(),
            candidates: HashMap::new(),
            departed: RecentPeers::new(DEPARTED_MAX),
            foreign: RecentPeers::new(FOREIGN_MAX),
            connected_over_loopback: HashMap::new(),
        }
    }

    // ---- getters ------------------------------------------------------------------------

    pub(super) fn is_departed(&self, peer: &PeerId) -> bool {
        self.departed.contains(peer)
    }

    pub(super) fn is_foreign(&self, peer: &PeerId) -> bool {
        self.foreign.contains(peer)
    }

    pub(super) fn over_loopback(&self, peer: &PeerId) -> bool {
        self.connected_over_loopback
            .get(peer)
            .copied()
            .unwrap_or(false)
    }

    /// Every member, for [`crate::Client::members`], ordered by peer id.
    pub(super) fn member_list(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .members
            .iter()
            .map(|(peer, m)| Member {
                peer: *peer,
                cluster: m.cluster.clone(),
                network: m.network.clone(),
                addrs: m.addrs.clone(),
                up: m.up,
            })
            .collect();
        members.sort_by_key(|m| m.peer);
        members
    }

    /// The members of `network`, as a Hello gossips them.
    pub(super) fn gossip(&self, network: &str) -> Vec<GossipMember> {
        self.members
            .iter()
            .filter(|(_, m)| m.network == network)
            .map(|(peer, m)| GossipMember {
                peer: *peer,
                cluster: m.cluster.clone(),
                addrs: m.addrs.clone(),
            })
            .collect()
    }

    /// The members of `network` and their addresses, to say goodbye to.
    pub(super) fn member_addrs(&self, network: &str) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.members
            .iter()
            .filter(|(_, m)| m.network == network)
            .map(|(peer, m)| (*peer, m.addrs.clone()))
            .collect()
    }

    // ---- mutators -----------------------------------------------------------------------

    pub(super) fn connected(&mut self, peer: PeerId, loopback: bool) {
        *self.connected_over_loopback.entry(peer).or_insert(loopback) |= loopback;
    }

    /// The last connection to `peer` closed: redial it soon if it is a member.
    pub(super) fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        self.connected_over_loopback.remove(peer);
        if let Some(member) = self.members.get_mut(peer) {
            member.redial_at = now + REDIAL_BACKOFF_MIN;
        }
    }

    /// A successful exchange with `peer`, a member of `network`; true if it was down.
    pub(super) fn contact(&mut self, peer: &PeerId, network: &str, now: Instant) -> bool {
        let Some(member) = self.members.get_mut(peer) else {
            return false;
        };
        if member.network != network {
            return false;
        }
        member.last_contact = now;
        member.redial_backoff = REDIAL_BACKOFF_MIN;
        !std::mem::replace(&mut member.up, true)
    }

    /// A peer named by the DHT or by a member's gossip, to be dialed and Helloed (unless it is
    /// known already, or remembered as departed or foreign).
    pub(super) fn learn_candidate(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        if self.members.contains_key(&peer)
            || self.departed.contains(&peer)
            || self.foreign.contains(&peer)
        {
            return;
        }
        if let Some(candidate) = self.candidates.get_mut(&peer) {
            let mut learned = false;
            for addr in addrs {
                if candidate.addrs.len() < MEMBER_ADDRS_MAX && !candidate.addrs.contains(&addr) {
                    candidate.addrs.push(addr);
                    learned = true;
                }
            }
            if learned {
                candidate.dial_at = now;
            }
            return;
        }
        if self.candidates.len() >= CANDIDATES_MAX {
            debug!(%peer, "too many candidates; ignored");
            return;
        }
        debug!(%peer, "candidate member");
        self.candidates.insert(
            peer,
            Candidate {
                addrs,
                dial_at: now,
                backoff: CANDIDATE_BACKOFF_MIN,
            },
        );
    }

    pub(super) fn forget_candidate(&mut self, peer: &PeerId) {
        self.candidates.remove(peer);
    }

    pub(super) fn forget_candidates(&mut self) {
        self.candidates.clear();
    }

    /// Makes `peer` a member (or updates its record) after a Hello of this node's network.
    pub(super) fn admit(
        &mut self,
        peer: PeerId,
        cluster: String,
        network: String,
        addrs: Vec<Multiaddr>,
        now: Instant,
    ) -> Admission {
        if let Some(member) = self.members.get_mut(&peer) {
            if member.network != network {
                tracing::info!(%peer, %network, "member is back in this node's network");
                member.network = network;
            }
            if member.cluster != cluster {
                tracing::warn!(%peer, old = %member.cluster, new = %cluster, "member changed its cluster id");
                member.cluster = cluster;
            }
            if !addrs.is_empty() {
                member.addrs = addrs;
            }
            return Admission::Known;
        }
        if self.members.len() >= MEMBERS_MAX {
            return Admission::Full;
        }
        let member = Member {
            peer,
            cluster: cluster.clone(),
            network: network.clone(),
            addrs: addrs.clone(),
            up: true,
        };
        self.members.insert(
            peer,
            MemberState {
                cluster,
                network,
                addrs,
                up: true,
                last_contact: now,
                redial_at: now,
                redial_backoff: REDIAL_BACKOFF_MIN,
            },
        );
        Admission::New(member)
    }

    /// Removes `peer` for good (it left or the operator forgot it) and remembers it, so that
    /// gossip does not bring it back; true if it was a member.
    pub(super) fn forget(&mut self, peer: PeerId) -> bool {
        let was_member = self.members.remove(&peer).is_some();
        self.candidates.remove(&peer);
        self.departed.insert(peer);
        was_member
    }

    /// The peer's own new Hello brings a departed peer back.
    pub(super) fn forget_departed(&mut self, peer: &PeerId) {
        self.departed.remove(peer);
    }

    /// Remembers a peer of another network; false if it already was.
    pub(super) fn remember_foreign(&mut self, peer: PeerId) -> bool {
        self.foreign.insert(peer)
    }

    /// Reports silent members of `network` down and picks the members to redial or whose
    /// connection to drop, each on its own backoff. Members of another network are left
    /// alone: down, and not redialed.
    pub(super) fn members_due(
        &mut self,
        now: Instant,
        network: &str,
        down_after: Duration,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> MembersDue {
        let mut due = MembersDue::default();
        for (peer, member) in &mut self.members {
            if member.network != network {
                continue;
            }
            if member.up && now.duration_since(member.last_contact) >= down_after {
                member.up = false;
                due.went_down.push(*peer);
            }
            if now >= member.redial_at {
                if !is_connected(peer) {
                    due.to_dial.push((*peer, member.addrs.clone()));
                } else if !member.up {
                    due.stale.push(*peer);
                } else {
                    continue;
                }
                member.redial_at = now + member.redial_backoff;
                member.redial_backoff = (member.redial_backoff * 2).min(REDIAL_BACKOFF_MAX);
            }
        }
        due
    }

    /// Picks the candidates to dial, or to Hello again if connected without a Hello answer,
    /// each on its own backoff.
    pub(super) fn candidates_due(
        &mut self,
        now: Instant,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> CandidatesDue {
        let mut due = CandidatesDue::default();
        for (peer, candidate) in &mut self.candidates {
            if now < candidate.dial_at {
                continue;
            }
            candidate.dial_at = now + candidate.backoff;
            candidate.backoff = (candidate.backoff * 2).min(CANDIDATE_BACKOFF_MAX);
            if is_connected(peer) {
                due.to_hello.push(*peer);
            } else {
                due.to_dial.push((*peer, candidate.addrs.clone()));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn recent_peers_forget_the_oldest_beyond_their_bound() {
        let mut recent = RecentPeers::new(2);
        let (a, b, c) = (peer(), peer(), peer());
        assert!(recent.insert(a));
        assert!(!recent.insert(a), "already remembered");
        assert!(recent.insert(b));
        assert!(recent.insert(c));
        assert!(!recent.contains(&a), "the oldest is forgotten");
        assert!(recent.contains(&b) && recent.contains(&c));
        recent.remove(&b);
        assert!(!recent.contains(&b));
        assert_eq!(recent.order, VecDeque::from([c]));
    }

    #[test]
    fn a_member_goes_down_when_silent_and_up_on_contact() {
        let mut peers = Peers::new();
        let member = peer();
        let start = Instant::now();
        let admitted = peers.admit(member, "c".into(), "n".into(), Vec::new(), start);
        assert!(matches!(admitted, Admission::New(_)));
        let down_after = Duration::from_secs(1);
        let due = peers.members_due(start + down_after, "n", down_after, |_| true);
        assert_eq!(due.went_down, vec![member]);
        assert_eq!(due.stale, vec![member], "connected but down");
        assert!(peers.contact(&member, "n", start + down_after), "back up");
        assert!(
            !peers.contact(&member, "n", start + down_after),
            "already up"
        );
        assert!(!peers.contact(&member, "other", start + down_after));
    }
}
