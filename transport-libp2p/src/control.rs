//! The membership protocol's messages and their versioned binary encoding.
//!
//! Layout (all integers big-endian):
//! ```text
//! message  = version:u8 (=2) kind:u8 body
//! kind 1   = Hello:   network cluster addrs members:u16 member*
//! kind 2   = Goodbye: (empty)
//! kind 3   = Ack:     (empty)
//! member   = peer:(len:u8 bytes) cluster addrs
//! network  = len:u8 ascii   (0 to 64 letters, digits, '-', '_'; empty: not known yet)
//! cluster  = len:u16 utf8
//! addrs    = count:u8 (len:u16 multiaddr-bytes)*
//! ```
//! Version 2 added the network id to the Hello; a version 1 message (a node from before
//! network ids) is refused as an unsupported version. Gossiped members carry no network id:
//! they are in the sender's network, and only Hellos of this node's network are read for them.
//!
//! Every count and length is checked against its bound before anything is allocated; trailing
//! bytes are an error. Decoding never panics.

use libp2p::{Multiaddr, PeerId};

use crate::{
    CLUSTER_ID_BYTES_MAX, MEMBER_ADDRS_MAX, MEMBERS_MAX, MULTIADDR_BYTES_MAX, NETWORK_ID_BYTES_MAX,
};

const VERSION: u8 = 2;
const KIND_HELLO: u8 = 1;
const KIND_GOODBYE: u8 = 2;
const KIND_ACK: u8 = 3;
/// Encoded peer ids are 38 bytes for ed25519 keys; allow other key types up to this.
const PEER_ID_BYTES_MAX: usize = 64;

/// One member as gossiped in a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GossipMember {
    pub(crate) peer: PeerId,
    pub(crate) cluster: String,
    pub(crate) addrs: Vec<Multiaddr>,
}

/// What a node says about itself (the sender's peer id is the connection's authenticated one)
/// and the members it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The sender's network id; empty while a joiner has not learned it yet.
    pub(crate) network: String,
    pub(crate) cluster: String,
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) members: Vec<GossipMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Sent as a request when a connection comes up; answered with the receiver's Hello.
    Hello(Hello),
    /// The sender leaves the membership; answered with `Ack`.
    Goodbye,
    Ack,
}

/// Why a control message from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("message truncated")]
    Truncated,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("{what}: {len} exceeds the bound {max}")]
    Bound {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("cluster id is not UTF-8")]
    ClusterUtf8,
    #[error("network id has a byte other than an ASCII letter, digit, '-' or '_'")]
    NetworkId,
    #[error("invalid peer id")]
    PeerId,
    #[error("invalid multiaddr")]
    Multiaddr,
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

impl Control {
    /// Encodes the message. Fields beyond their bounds are truncated (members, addresses) or,
    /// for a too-long cluster id or multiaddr, the entry is skipped: the caller keeps its own
    /// state within the bounds, so this only guards against a bug turning into a message every
    /// peer refuses.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Control::Hello(hello) => {
                out.push(KIND_HELLO);
                put_network(&mut out, &hello.network);
                put_cluster(&mut out, &hello.cluster);
                put_addrs(&mut out, &hello.addrs);
                let members: Vec<&GossipMember> = hello
                    .members
                    .iter()
                    .filter(|m| {
                        m.cluster.len() <= CLUSTER_ID_BYTES_MAX
                            && m.peer.to_bytes().len() <= PEER_ID_BYTES_MAX
                    })
                    .take(MEMBERS_MAX)
                    .collect();
                let count = u16::try_from(members.len()).expect("MEMBERS_MAX fits in u16");
                out.extend_from_slice(&count.to_be_bytes());
                for member in members {
                    let peer = member.peer.to_bytes();
                    out.push(u8::try_from(peer.len()).expect("checked by the filter"));
                    out.extend_from_slice(&peer);
                    put_cluster(&mut out, &member.cluster);
                    put_addrs(&mut out, &member.addrs);
                }
            }
            Control::Goodbye => out.push(KIND_GOODBYE),
            Control::Ack => out.push(KIND_ACK),
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Control, DecodeError> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let message = match reader.u8()? {
            KIND_HELLO => {
                let network = reader.network()?;
                let cluster = reader.cluster()?;
                let addrs = reader.addrs()?;
                let count = usize::from(reader.u16()?);
                bound("members", count, MEMBERS_MAX)?;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    let peer_len = usize::from(reader.u8()?);
                    bound("peer id bytes", peer_len, PEER_ID_BYTES_MAX)?;
                    let peer = PeerId::from_bytes(reader.take(peer_len)?)
                        .map_err(|_| DecodeError::PeerId)?;
                    let cluster = reader.cluster()?;
                    let addrs = reader.addrs()?;
                    members.push(GossipMember {
                        peer,
                        cluster,
                        addrs,
                    });
                }
                Control::Hello(Hello {
                    network,
                    cluster,
                    addrs,
                    members,
                })
            }
            KIND_GOODBYE => Control::Goodbye,
            KIND_ACK => Control::Ack,
            kind => return Err(DecodeError::Kind(kind)),
        };
        if !reader.bytes.is_empty() {
            return Err(DecodeError::Trailing(reader.bytes.len()));
        }
        Ok(message)
    }
}

/// Whether `id` is a valid network id (empty excluded: that means "not known").
pub(crate) fn valid_network_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= NETWORK_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn put_network(out: &mut Vec<u8>, network: &str) {
    // The configuration is validated, so this is only a guard: an invalid id is sent as "not
    // known" (the peer answers but makes nobody a member) rather than as a message every peer
    // refuses, or as a truncated id that names another network.
    debug_assert!(
        network.is_empty() || valid_network_id(network),
        "{network:?}"
    );
    let bytes = if valid_network_id(network) {
        network.as_bytes()
    } else {
        &[]
    };
    out.push(u8::try_from(bytes.len()).expect("NETWORK_ID_BYTES_MAX fits in u8"));
    out.extend_from_slice(bytes);
}

fn put_cluster(out: &mut Vec<u8>, cluster: &str) {
    // A too-long cluster id is cut at a char boundary rather than making the message invalid.
    let mut end = cluster.len().min(CLUSTER_ID_BYTES_MAX);
    while !cluster.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &cluster.as_bytes()[..end];
    let len = u16::try_from(bytes.len()).expect("CLUSTER_ID_BYTES_MAX fits in u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_addrs(out: &mut Vec<u8>, addrs: &[Multiaddr]) {
    let addrs: Vec<&Multiaddr> = addrs
        .iter()
        .filter(|a| a.as_ref().len() <= MULTIADDR_BYTES_MAX)
        .take(MEMBER_ADDRS_MAX)
        .collect();
    out.push(u8::try_from(addrs.len()).expect("MEMBER_ADDRS_MAX fits in u8"));
    for addr in addrs {
        let bytes: &[u8] = addr.as_ref();
        let len = u16::try_from(bytes.len()).expect("MULTIADDR_BYTES_MAX fits in u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    }
}

fn bound(what: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::Bound { what, len, max });
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A network id: empty (not known) or valid.
    fn network(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        bound("network id bytes", len, NETWORK_ID_BYTES_MAX)?;
        let bytes = self.take(len)?;
        let id = std::str::from_utf8(bytes).map_err(|_| DecodeError::NetworkId)?;
        if !id.is_empty() && !valid_network_id(id) {
            return Err(DecodeError::NetworkId);
        }
        Ok(id.to_owned())
    }

    fn cluster(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        bound("cluster id bytes", len, CLUSTER_ID_BYTES_MAX)?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::ClusterUtf8)
    }

    fn addrs(&mut self) -> Result<Vec<Multiaddr>, DecodeError> {
        let count = usize::from(self.u8()?);
        bound("addresses", count, MEMBER_ADDRS_MAX)?;
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(self.u16()?);
            bound("multiaddr bytes", len, MULTIADDR_BYTES_MAX)?;
            let addr = Multiaddr::try_from(self.take(len)?.to_vec())
                .map_err(|_| DecodeError::Multiaddr)?;
            addrs.push(addr);
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CONTROL_FRAME_BYTES_MAX;
    use libp2p::identity::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")
    }

    fn hello() -> Hello {
        Hello {
            network: "3f9a-net_1".into(),
            cluster: "eu-1".into(),
            addrs: vec![addr(1), addr(2)],
            members: vec![
                GossipMember {
                    peer: peer(),
                    cluster: "eu-1".into(),
                    addrs: vec![addr(3)],
                },
                GossipMember {
                    peer: peer(),
                    cluster: "us-2".into(),
                    addrs: vec![],
                },
            ],
        }
    }

    #[test]
    fn messages_round_trip() {
        for message in [Control::Hello(hello()), Control::Goodbye, Control::Ack] {
            assert_eq!(Control::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn network_ids_round_trip_and_are_validated() {
        // Empty: a joiner that has not learned it yet.
        let mut joiner = hello();
        joiner.network = String::new();
        let message = Control::Hello(joiner);
        assert_eq!(Control::decode(&message.encode()), Ok(message));
        let mut longest = hello();
        longest.network = "n".repeat(NETWORK_ID_BYTES_MAX);
        let message = Control::Hello(longest);
        assert_eq!(Control::decode(&message.encode()), Ok(message));

        // The network id comes first in a Hello: version, kind, length, bytes.
        let bytes = Control::Hello(hello()).encode();
        assert_eq!(&bytes[..3], &[VERSION, KIND_HELLO, 10]);
        assert_eq!(&bytes[3..13], b"3f9a-net_1");

        // Too long, bad bytes, not UTF-8: refused.
        let mut too_long = vec![VERSION, KIND_HELLO, 65];
        too_long.extend_from_slice(&[b'n'; 65]);
        assert!(matches!(
            Control::decode(&too_long),
            Err(DecodeError::Bound {
                what: "network id bytes",
                len: 65,
                max: NETWORK_ID_BYTES_MAX
            })
        ));
        for bad in [&b"a b"[..], b"a/b", b"\xff\xfe", b"net.1", b"\0"] {
            let mut bytes = vec![VERSION, KIND_HELLO, bad.len() as u8];
            bytes.extend_from_slice(bad);
            bytes.extend_from_slice(&[0, 1, b'c', 0, 0, 0]);
            assert_eq!(
                Control::decode(&bytes),
                Err(DecodeError::NetworkId),
                "{bad:?}"
            );
        }
        // A valid one in the same frame decodes.
        let mut bytes = vec![VERSION, KIND_HELLO, 3];
        bytes.extend_from_slice(b"a-_");
        bytes.extend_from_slice(&[0, 1, b'c', 0, 0, 0]);
        assert!(matches!(Control::decode(&bytes), Ok(Control::Hello(h)) if h.network == "a-_"));

        assert!(valid_network_id("0123abcDEF-_"));
        assert!(!valid_network_id(""));
        assert!(!valid_network_id(&"x".repeat(NETWORK_ID_BYTES_MAX + 1)));
        assert!(!valid_network_id("é"));
    }

    #[test]
    fn version_1_messages_are_refused() {
        // A Hello of a node from before network ids (no network field).
        let bytes = [1, KIND_HELLO, 0, 1, b'c', 0, 0, 0];
        assert_eq!(Control::decode(&bytes), Err(DecodeError::Version(1)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = Control::Hello(hello()).encode();
        for len in 0..bytes.len() {
            assert!(
                Control::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn trailing_bytes_version_and_kind_are_checked() {
        let mut bytes = Control::Ack.encode();
        bytes.push(0);
        assert_eq!(Control::decode(&bytes), Err(DecodeError::Trailing(1)));
        assert_eq!(
            Control::decode(&[VERSION + 1, KIND_ACK]),
            Err(DecodeError::Version(VERSION + 1))
        );
        assert_eq!(Control::decode(&[VERSION, 99]), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn bounds_are_checked_before_allocating() {
        // Hello with no network id, an empty cluster, no addrs, and 65535 members announced.
        let bytes = [VERSION, KIND_HELLO, 0, 0, 0, 0, 0xff, 0xff];
        assert!(matches!(
            Control::decode(&bytes),
            Err(DecodeError::Bound {
                what: "members",
                ..
            })
        ));
        let bytes = [VERSION, KIND_HELLO, 0, 0xff, 0xff];
        assert!(matches!(
            Control::decode(&bytes),
            Err(DecodeError::Bound {
                what: "cluster id bytes",
                ..
            })
        ));
        let bytes = [VERSION, KIND_HELLO, 0xff];
        assert!(matches!(
            Control::decode(&bytes),
            Err(DecodeError::Bound {
                what: "network id bytes",
                ..
            })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: mutate a valid message byte by byte.
        let valid = Control::Hello(hello()).encode();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let _ = Control::decode(&bytes);
        }
    }

    #[test]
    fn largest_hello_fits_the_control_frame_limit() {
        let long_addr: Multiaddr = format!("/dns4/{}/tcp/65535", "a".repeat(240))
            .parse()
            .expect("addr");
        assert!(long_addr.as_ref().len() <= MULTIADDR_BYTES_MAX);
        let member = GossipMember {
            peer: peer(),
            cluster: "c".repeat(CLUSTER_ID_BYTES_MAX),
            addrs: vec![long_addr.clone(); MEMBER_ADDRS_MAX],
        };
        let message = Control::Hello(Hello {
            network: "n".repeat(NETWORK_ID_BYTES_MAX),
            cluster: "c".repeat(CLUSTER_ID_BYTES_MAX),
            addrs: vec![long_addr; MEMBER_ADDRS_MAX],
            members: vec![member; MEMBERS_MAX + 10],
        });
        let bytes = message.encode();
        assert!(bytes.len() <= CONTROL_FRAME_BYTES_MAX, "{}", bytes.len());
        let Ok(Control::Hello(back)) = Control::decode(&bytes) else {
            panic!("decodes");
        };
        assert_eq!(back.members.len(), MEMBERS_MAX);
    }
}
