//! Identifiers and values that every part of the protocol speaks in.
//!
//! All of them are newtypes (never aliases) so that a key can't be passed where a node id is
//! expected. The string-like ones share their buffer (`Arc`), because the same id or value is
//! copied into many messages and timers.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// FNV-1a (64-bit) of `bytes`: the one hash of the core that must be the same on every
/// platform and in every process (unlike `std`'s randomly keyed hasher). It orders the id
/// types (the precomputed prefix of their ordering, so that most comparisons are one integer
/// compare rather than a `memcmp`), fingerprints request values and digests memberships. It is
/// the one FNV-1a of the workspace: the simulator and the trace digests hash with it too.
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV1A_OFFSET, bytes)
}

/// The FNV-1a hash `h` continued over `bytes`: `fnv1a(a ++ b) == fnv1a_extend(fnv1a(a), b)`.
pub const fn fnv1a_extend(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// The FNV-1a hash of nothing.
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

macro_rules! shared_str_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Ordered by (FNV-1a hash of the text, text): an arbitrary but total order that is the
        /// same on every node. (De)serialized as the plain string.
        #[derive(Clone)]
        pub struct $name {
            hash: u64,
            text: Arc<str>,
        }

        impl $name {
            pub fn new(s: impl AsRef<str>) -> Self {
                Self::from_arc(Arc::from(s.as_ref()))
            }
            fn from_arc(text: Arc<str>) -> Self {
                Self {
                    hash: fnv1a(text.as_bytes()),
                    text,
                }
            }
            pub fn as_str(&self) -> &str {
                &self.text
            }
        }
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.hash == other.hash
                    && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
            }
        }
        impl Eq for $name {}
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.hash.cmp(&other.hash).then_with(|| {
                    if Arc::ptr_eq(&self.text, &other.text) {
                        std::cmp::Ordering::Equal
                    } else {
                        self.text.cmp(&other.text)
                    }
                })
            }
        }
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                // Equal ids have equal texts, hence equal `hash`: consistent with `Eq`.
                state.write_u64(self.hash);
            }
        }
        impl $name {
            fn serialize_text<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.text.serialize(serializer)
            }
            fn deserialize_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // A plain string, as `Arc<str>` reads it, but copied once (straight from a
                // borrowed input when the format allows) instead of through a `String`.
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        Ok($name::new(s))
                    }
                    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<$name, E> {
                        Ok($name::from(s))
                    }
                    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<$name, E> {
                        match std::str::from_utf8(b) {
                            Ok(s) => Ok($name::new(s)),
                            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(b), &self)),
                        }
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", &self.text)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::from_arc(Arc::from(s))
            }
        }
    };
}

/// The plain-string serde of an id type (what disks and everything but frames see).
macro_rules! text_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.serialize_text(serializer)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Self::deserialize_text(deserializer)
            }
        }
    };
}

shared_str_id!(
    /// A node's identity: in the real network, the text form of its libp2p `PeerId`.
    NodeId
);
shared_str_id!(
    /// The cluster a node belongs to (`--cid`).
    ClusterId
);
shared_str_id!(
    /// The identity of a network: drawn by its founder, adopted by every node that joins it,
    /// persisted by each. Nodes of two networks never become members of each other.
    NetworkId
);
shared_str_id!(
    /// A key: non-empty UTF-8, at most `Config::key_bytes_max` bytes.
    Key
);
shared_str_id!(
    /// A client's request id: retries that carry the same id are answered at most once.
    RequestId
);

text_serde!(ClusterId);
text_serde!(NetworkId);
text_serde!(Key);
text_serde!(RequestId);

// A node id is the one id repeated across a frame's messages (senders, targets, coordinators),
// so inside a frame it is an index into the frame's table of node ids; everywhere else (disk,
// reports) the plain string.
impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match crate::wire::node_ids::index_while_encoding(self) {
            Some(index) => serializer.serialize_u32(index),
            None => self.serialize_text(serializer),
        }
    }
}
impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !crate::wire::node_ids::decoding() {
            return Self::deserialize_text(deserializer);
        }
        let index = u32::deserialize(deserializer)?;
        crate::wire::node_ids::lookup(index).map_err(serde::de::Error::custom)
    }
}

/// A value: opaque bytes, at most `Config::value_bytes_max` long.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(Arc<[u8]>);

impl Value {
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        Self(Arc::from(bytes.as_ref()))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.len() <= 64 => write!(f, "{s:?}"),
            _ => write!(f, "<{} bytes>", self.0.len()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self(Arc::from(v))
    }
}

/// A proposal: its coordinator and a counter that never repeats on that coordinator, even
/// across restarts (the counter's ceiling is made durable before any id under it is used).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub coordinator: NodeId,
    pub counter: u64,
}

impl fmt::Debug for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.coordinator, self.counter)
    }
}
impl fmt::Display for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A Paxos ballot of one key: its round, then the node that runs it. Round 0 is the fast
/// round, which every coordinator shares (`node` is `None` there); a round of 1 or more belongs
/// to one node (`Some`). Ordered by round, then node, so that two nodes never run the same
/// ballot and every node orders ballots the same way.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    pub node: Option<NodeId>,
}

impl Ballot {
    /// The fast round, ballot 0.
    pub const FAST: Ballot = Ballot {
        round: 0,
        node: None,
    };

    /// Ballot `round` (at least 1) of `node`.
    pub fn classic(round: u64, node: NodeId) -> Ballot {
        assert!(round > 0, "round 0 is the fast round");
        Ballot {
            round,
            node: Some(node),
        }
    }

    pub fn is_fast(&self) -> bool {
        self.round == 0
    }

    /// Whether the ballot is well formed: round 0 has no node, any other round has one.
    pub fn is_well_formed(&self) -> bool {
        (self.round == 0) == self.node.is_none()
    }
}

impl Default for Ballot {
    fn default() -> Ballot {
        Ballot::FAST
    }
}

impl fmt::Debug for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            None => write!(f, "b{}", self.round),
            Some(n) => write!(f, "b{}.{n}", self.round),
        }
    }
}
impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a ballot proposes for a key: a client's value, with the proposal that first carried
/// it and the client's request id, if it gave one. Whoever learns that a proposal was chosen
/// tells its client Stored by comparing proposal or request ids, never bytes: two clients may
/// propose the same bytes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    pub p: ProposalId,
    pub request: Option<RequestId>,
    pub value: Value,
}

impl Proposal {
    /// Whether this proposal is the one a client's PUT ran (`p`), or carries the same request
    /// id (a retry of it at another node).
    pub fn answers(&self, p: &ProposalId, request: Option<&RequestId>) -> bool {
        self.p == *p || (request.is_some() && self.request.as_ref() == request)
    }
}

/// Names one client call so that its reply can be matched; chosen by the driver, echoed back.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct CallId(pub u64);

/// Names one durable write the core asked for; writes complete in the order they were issued.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct WriteId(pub u64);

/// A point in time, in microseconds since an origin the driver chooses (the real node: its
/// start; the simulator: zero). The core only compares and adds times; it never reads a clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);
    pub const MAX: Time = Time(u64::MAX);

    pub fn from_micros(micros: u64) -> Self {
        Time(micros)
    }
    pub fn from_millis(ms: u64) -> Self {
        Time(ms.saturating_mul(1000))
    }
    pub fn as_micros(self) -> u64 {
        self.0
    }
    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
