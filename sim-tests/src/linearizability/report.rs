//! What a failure says: the [`Violation`] of a key, with the ops involved, their times and
//! answers, and values shown for people.

use std::fmt;

use super::history::{GetResult, Op, OpKind, PutResult, Time};

/// Formats a value for people: a quoted string if it is printable UTF-8, else hex; long values
/// are shortened.
pub(super) fn show_value(v: &[u8]) -> String {
    const MAX: usize = 40;
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(char::is_control) => {
            let n = s.chars().count();
            if n > MAX {
                let head: String = s.chars().take(MAX).collect();
                format!("{head:?}... ({} bytes)", v.len())
            } else {
                format!("{s:?}")
            }
        }
        _ => {
            let hex: String = v.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
            if v.len() > MAX {
                format!("0x{hex}... ({} bytes)", v.len())
            } else {
                format!("0x{hex}")
            }
        }
    }
}

pub(super) fn show_time(t: Option<Time>) -> String {
    match t {
        Some(t) => format!("{t}us"),
        None => "never".to_string(),
    }
}

impl fmt::Display for PutResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutResult::Stored => f.write_str("Stored"),
            PutResult::Exists { value } => write!(f, "Exists({})", show_value(value)),
            PutResult::Busy => f.write_str("Busy"),
            PutResult::NoEffect => f.write_str("NoEffect"),
            PutResult::Unavailable => f.write_str("Unavailable"),
            PutResult::Pending => f.write_str("Pending (no answer)"),
        }
    }
}

impl fmt::Display for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetResult::Value(v) => write!(f, "Value({})", show_value(v)),
            GetResult::Unknown => f.write_str("Unknown"),
            GetResult::Unavailable => f.write_str("Unavailable"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.kind {
            OpKind::Put { value, result } => {
                write!(f, "PUT {:?} = {} -> {result}", self.key, show_value(value))?
            }
            OpKind::Get { result } => write!(f, "GET {:?} -> {result}", self.key)?,
        }
        write!(
            f,
            ", invoked {}, returned {}",
            show_time(Some(self.invoked)),
            show_time(self.returned)
        )
    }
}

/// A key whose history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// What is wrong, with the times that make it wrong.
    pub reason: String,
    /// Indices (into the checked history) of the ops involved.
    pub ops: Vec<usize>,
    /// One line per entry of `ops`: the op with its times and answer.
    pub details: Vec<String>,
}

impl Violation {
    pub(super) fn new(history: &[Op], key: &str, reason: String, ops: Vec<usize>) -> Violation {
        let details = ops
            .iter()
            .map(|&i| format!("op #{i}: {}", history[i]))
            .collect();
        Violation {
            key: key.to_string(),
            reason,
            ops,
            details,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history of key {:?} is not linearizable: {}",
            self.key, self.reason
        )?;
        for line in &self.details {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}
