//! Where the members were last heard: `<data-dir>/peers.addrs`, one multiaddr per line, each
//! ending with `/p2p/<peer id>`. A node restarted without `--bootstrap` dials them itself
//! (`NetConfig::redial`): without them it could only wait for its members to reach it, and a
//! member that removed it never would (a removed node restarted that way never learned it).
//!
//! Only a hint: a missing, unreadable or damaged file costs a restarted node nothing but the
//! redial (it then waits for its peers, as before). It is rewritten whole (a temporary file,
//! then a rename) when a member is discovered, and bounded: at most [`PEERS_MAX`] peers of at
//! most [`ADDRS_PER_PEER_MAX`] addresses, lines of at most [`LINE_BYTES_MAX`] bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::warn;
use transport_libp2p::libp2p::multiaddr::Protocol;
use transport_libp2p::libp2p::{Multiaddr, PeerId};

const FILE: &str = "peers.addrs";
/// At most this many peers are remembered (the transport's own bound on members is lower).
pub const PEERS_MAX: usize = 4096;
pub const ADDRS_PER_PEER_MAX: usize = 4;
pub const LINE_BYTES_MAX: usize = 512;

pub struct AddressBook {
    path: PathBuf,
    peers: BTreeMap<PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    /// The book of `data_dir` as it was last written (empty if there is none or it cannot be
    /// read; lines that do not parse are skipped).
    pub fn load(data_dir: &Path) -> AddressBook {
        let path = data_dir.join(FILE);
        let mut book = AddressBook {
            path,
            peers: BTreeMap::new(),
        };
        let text = match std::fs::read_to_string(&book.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return book,
            Err(e) => {
                warn!(file = %book.path.display(), error = %e, "cannot read the known peer addresses: not redialing them");
                return book;
            }
        };
        let mut skipped = 0usize;
        for line in text.lines() {
            match parse_line(line) {
                Some((peer, addr)) => book.add(peer, addr),
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            warn!(file = %book.path.display(), lines = skipped, "known peer addresses that do not parse: skipped");
        }
        book
    }

    /// Every address, each with its `/p2p/<peer id>`.
    pub fn addresses(&self) -> Vec<Multiaddr> {
        self.peers
            .iter()
            .flat_map(|(peer, addrs)| {
                addrs
                    .iter()
                    .map(move |a| a.clone().with(Protocol::P2p(*peer)))
            })
            .collect()
    }

    /// `peer` listens on `addrs` (as the transport reported them, without `/p2p`): remembered,
    /// and the file rewritten if that changed anything.
    pub fn record(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let mut fresh: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| a.to_string().len() < LINE_BYTES_MAX - 64)
            .take(ADDRS_PER_PEER_MAX)
            .cloned()
            .collect();
        fresh.dedup();
        if fresh.is_empty() || self.peers.get(&peer) == Some(&fresh) {
            return;
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= PEERS_MAX {
            return;
        }
        self.peers.insert(peer, fresh);
        if let Err(e) = self.write() {
            warn!(file = %self.path.display(), error = %e, "cannot write the known peer addresses");
        }
    }

    fn add(&mut self, peer: PeerId, addr: Multiaddr) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= PEERS_MAX {
            return;
        }
        let addrs = self.peers.entry(peer).or_default();
        if addrs.len() < ADDRS_PER_PEER_MAX && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let mut text = String::new();
        for addr in self.addresses() {
            text.push_str(&addr.to_string());
            text.push('\n');
        }
        let tmp = self.path.with_extension("addrs.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// A line: a multiaddr ending with `/p2p/<peer id>`, split into the peer and the rest.
fn parse_line(line: &str) -> Option<(PeerId, Multiaddr)> {
    if line.len() > LINE_BYTES_MAX {
        return None;
    }
    let mut addr: Multiaddr = line.trim().parse().ok()?;
    match addr.pop()? {
        Protocol::P2p(peer) if !addr.is_empty() => Some((peer, addr)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        transport_libp2p::libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn what_is_recorded_is_loaded_again_and_damage_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AddressBook::load(dir.path()).addresses().is_empty());
        let (a, b) = (peer(), peer());
        let addr: Multiaddr = "/ip4/10.0.0.5/tcp/4001".parse().unwrap();
        let mut book = AddressBook::load(dir.path());
        book.record(a, std::slice::from_ref(&addr));
        book.record(b, &["/ip4/10.0.0.6/tcp/4001".parse().unwrap()]);
        let loaded = AddressBook::load(dir.path()).addresses();
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains(&addr.clone().with(Protocol::P2p(a))));

        // A damaged line (and one without a peer id, and an overlong one) is skipped; the
        // others still count.
        let path = dir.path().join(FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not a multiaddr\n/ip4/10.0.0.7/tcp/1\n");
        text.push_str(&"x".repeat(LINE_BYTES_MAX + 1));
        std::fs::write(&path, text).unwrap();
        assert_eq!(AddressBook::load(dir.path()).addresses().len(), 2);
    }
}
