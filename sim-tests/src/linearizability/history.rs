//! The model: one client call of the history ([`Op`]), what it asked and what it was answered
//! ([`PutResult`], [`GetResult`]), and its interval in simulated time.

/// Simulated time in microseconds.
pub type Time = u64;

/// What a PUT was answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PutResult {
    /// The PUT wrote its value: it found the key empty.
    Stored,
    /// The key already held `value` (possibly written by an earlier attempt of the same client).
    Exists { value: Vec<u8> },
    /// Definite: a concurrent proposal held the key, this one had no effect.
    Busy,
    /// Any other definite no-effect answer: invalid, overloaded, not ready, ...
    NoEffect,
    /// Indeterminate: may take effect at any time after invocation, or never.
    Unavailable,
    /// Never answered: same as [`PutResult::Unavailable`].
    Pending,
}

/// What a GET was answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GetResult {
    /// The key held this value.
    Value(Vec<u8>),
    /// The key held nothing ("unknown key").
    Unknown,
    /// No information (timed out, unreachable, never answered): ignored by the checker.
    Unavailable,
}

/// The operation and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Put { value: Vec<u8>, result: PutResult },
    Get { result: GetResult },
}

/// One client call of the history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub client: u64,
    pub key: String,
    /// When the client sent the call.
    pub invoked: Time,
    /// When the client got its answer; `None` if it never did.
    pub returned: Option<Time>,
    pub kind: OpKind,
}

impl Op {
    /// A PUT of `value` to `key`.
    pub fn put(
        client: u64,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        invoked: Time,
        returned: Option<Time>,
        result: PutResult,
    ) -> Op {
        Op {
            client,
            key: key.into(),
            invoked,
            returned,
            kind: OpKind::Put {
                value: value.into(),
                result,
            },
        }
    }

    /// A GET of `key`.
    pub fn get(
        client: u64,
        key: impl Into<String>,
        invoked: Time,
        returned: Option<Time>,
        result: GetResult,
    ) -> Op {
        Op {
            client,
            key: key.into(),
            invoked,
            returned,
            kind: OpKind::Get { result },
        }
    }

    /// End of the op's interval: `returned`, or +infinity if it never returned.
    pub(super) fn end(&self) -> Time {
        self.returned.unwrap_or(Time::MAX)
    }
}
