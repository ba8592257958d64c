//! The membership protocol's messages and their versioned binary encoding.
//!
//! Layout (all integers big-endian):
//! ```text
//! message  = version:u8 (=1) kind:u8 body
//! kind 1   = Hello:   cluster addrs members:u16 member*
//! kind 2   = Goodbye: (empty)
//! kind 3   = Ack:     (empty)
//! member   = peer:(len:u8 bytes) cluster addrs
//! cluster  = len:u16 utf8
//! addrs    = count:u8 (len:u16 multiaddr-bytes)*
//! ```
//! Every count and length is checked against its bound before anything is allocated; trailing
//! bytes are an error. Decoding never panics.

use libp2p::{Multiaddr, PeerId};

use crate::{CLUSTER_ID_BYTES_MAX, MEMBER_ADDRS_MAX, MEMBERS_MAX, MULTIADDR_BYTES_MAX};

const VERSION: u8 = 1;
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
            Control::decode(&[2, KIND_ACK]),
            Err(DecodeError::Version(2))
        );
        assert_eq!(Control::decode(&[VERSION, 99]), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn bounds_are_checked_before_allocating() {
        // Hello with an empty cluster, no addrs, and 65535 members announced.
        let bytes = [VERSION, KIND_HELLO, 0, 0, 0, 0xff, 0xff];
        assert!(matches!(
            Control::decode(&bytes),
            Err(DecodeError::Bound {
                what: "members",
                ..
            })
        ));
        let bytes = [VERSION, KIND_HELLO, 0xff, 0xff];
        assert!(matches!(
            Control::decode(&bytes),
            Err(DecodeError::Bound { .. })
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
