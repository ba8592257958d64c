//! A client's operations: what each one asked, its attempts (a PUT retried with its request
//! id) and its last answer, its name in the stats, and its form for the linearizability checker.

use replicator_core::{GetOutcome, Key, PutOutcome, Reply, RequestId, Time, Value};
use transport_sim::NodeIx;

use crate::linearizability::{GetResult, Op, PutResult};

#[derive(Clone, Debug)]
pub(super) enum OpKind {
    Put {
        value: Value,
        request: Option<RequestId>,
    },
    Get,
    /// A verify read: asks every node; not part of the linearizable history, but every value
    /// it reports must be the key's committed one.
    Verify,
}

/// One logical client operation (all attempts of a PUT retried with its request id).
#[derive(Clone, Debug)]
pub struct ClientOp {
    pub client: usize,
    pub key: Key,
    pub(super) kind: OpKind,
    pub node: NodeIx,
    pub invoked: Time,
    pub returned: Option<Time>,
    pub attempts: u32,
    /// When the last attempt was sent.
    pub last_invoked: Time,
    /// An earlier attempt ended without a definite answer (lost or Unavailable).
    pub earlier_indeterminate: bool,
    /// The node may have forgotten the request id by the last attempt (small request
    /// tables), so the last answer may be about fresh proposals only.
    pub may_forget: bool,
    /// The last answer (`None`: lost or never answered).
    pub reply: Option<Reply>,
    /// The incarnation of the node when the last attempt was sent.
    pub incarnation: u64,
    /// The last attempt was a retry that the node answers from its request record with no
    /// outcome in it (after a restart, or an earlier Unavailable): the request-id recovery path.
    pub recovering: bool,
}

impl ClientOp {
    pub(super) fn outcome_name(&self) -> &'static str {
        match (&self.kind, &self.reply) {
            (OpKind::Put { .. }, None) => "put lost",
            (OpKind::Get, None) => "get lost",
            (OpKind::Verify, None) => "verify lost",
            (_, Some(Reply::Put(o))) => match o {
                PutOutcome::Stored => "put stored",
                PutOutcome::Exists { .. } => "put exists",
                PutOutcome::Busy => "put busy",
                PutOutcome::Unavailable(_) => "put unavailable",
                PutOutcome::Invalid(_) => "put invalid",
                PutOutcome::Overloaded => "put overloaded",
                PutOutcome::NotReady(_) => "put not ready",
            },
            (_, Some(Reply::Get(o))) => match o {
                GetOutcome::Value(_) => "get value",
                GetOutcome::Unknown => "get unknown",
                GetOutcome::Unavailable(_) => "get unavailable",
                GetOutcome::Invalid(_) => "get invalid",
                GetOutcome::Overloaded => "get overloaded",
                GetOutcome::NotReady(_) => "get not ready",
            },
            // Verify reports, and any answer kind added later.
            (_, Some(other)) => match other {
                Reply::Verify(_) => "verify",
                _ => "other answer",
            },
        }
    }

    pub(super) fn value(&self) -> Option<&Value> {
        match &self.kind {
            OpKind::Put { value, .. } => Some(value),
            OpKind::Get | OpKind::Verify => None,
        }
    }

    /// Whether the last answer speaks only for the last attempt's proposals: the node may
    /// have forgotten the request id, so an earlier indeterminate attempt may still commit.
    fn forgotten(&self) -> bool {
        self.may_forget && self.earlier_indeterminate
    }

    /// The proposals the last answer speaks for were started at or after this.
    pub(super) fn since(&self) -> Time {
        if self.forgotten() {
            self.last_invoked
        } else {
            self.invoked
        }
    }

    /// The op in the checker's terms.
    pub(super) fn to_history(&self) -> Op {
        let key = self.key.as_str().to_string();
        let invoked = self.invoked.as_micros();
        let returned = self.returned.map(Time::as_micros);
        match &self.kind {
            OpKind::Put { value, .. } => {
                let result = match &self.reply {
                    None => PutResult::Unavailable,
                    Some(Reply::Put(o)) => match o {
                        PutOutcome::Stored => PutResult::Stored,
                        // Its own earlier attempt won (a retry with the request id after the
                        // record expired): the op took effect within its interval.
                        PutOutcome::Exists { value: w } if w == value => PutResult::Stored,
                        PutOutcome::Exists { value: w } => PutResult::Exists {
                            value: w.as_bytes().to_vec(),
                        },
                        // The forgotten earlier attempt may still take effect.
                        _ if self.forgotten() => PutResult::Unavailable,
                        PutOutcome::Busy => PutResult::Busy,
                        PutOutcome::Unavailable(_) => PutResult::Unavailable,
                        PutOutcome::Invalid(_)
                        | PutOutcome::Overloaded
                        | PutOutcome::NotReady(_) => PutResult::NoEffect,
                    },
                    Some(_) => PutResult::Unavailable,
                };
                let returned = if self.reply.is_none() { None } else { returned };
                Op::put(
                    self.client as u64,
                    key,
                    value.as_bytes().to_vec(),
                    invoked,
                    returned,
                    result,
                )
            }
            OpKind::Get | OpKind::Verify => {
                let result = match &self.reply {
                    Some(Reply::Get(GetOutcome::Value(v))) => {
                        GetResult::Value(v.as_bytes().to_vec())
                    }
                    Some(Reply::Get(GetOutcome::Unknown)) => GetResult::Unknown,
                    _ => GetResult::Unavailable,
                };
                Op::get(self.client as u64, key, invoked, returned, result)
            }
        }
    }
}
