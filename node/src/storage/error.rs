//! Why a storage operation failed, by what the node can do about it: wait and retry, refuse to
//! start on what the data dir holds, or stop.

use std::fmt::Display;

use crate::wal::LogError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The disk refused a read or a write (no space, a quota, an I/O error, the database still
    /// held by a process that is stopping): it may pass. The group commit retries it.
    #[error("{0}")]
    Transient(String),
    /// What the data dir holds cannot be used as it is: a damaged file, a format this
    /// replicator cannot take over, a log that does not follow its database, a missing or
    /// damaged identity. The node must not start on it (exit 65); the message names the file
    /// and says what to do.
    #[error("{0}")]
    Unusable(String),
    /// Anything else: an operator's mistake the message explains (a newer format, a database
    /// that was never initialised), or a bug. The node stops.
    #[error("{0}")]
    Fatal(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Whether the operation may succeed later (see [`StorageError::Transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient(_))
    }

    /// The same error, its message prefixed with `what` (the file, the step).
    pub fn context(self, what: impl Display) -> StorageError {
        match self {
            StorageError::Transient(m) => StorageError::Transient(format!("{what}: {m}")),
            StorageError::Unusable(m) => StorageError::Unusable(format!("{what}: {m}")),
            StorageError::Fatal(m) => StorageError::Fatal(format!("{what}: {m}")),
        }
    }
}

/// redb's storage errors: the disk's (transient), the file's (unusable), the rest (fatal).
impl From<redb::StorageError> for StorageError {
    fn from(e: redb::StorageError) -> StorageError {
        use redb::StorageError as S;
        match e {
            S::Io(_) | S::PreviousIo | S::DatabaseClosed => StorageError::Transient(e.to_string()),
            S::Corrupted(_) => StorageError::Unusable(e.to_string()),
            _ => StorageError::Fatal(e.to_string()),
        }
    }
}

/// Opening: redb refuses a file for what it holds (not a redb file, corrupt beyond its own
/// repair, a format it cannot read: unusable) or for the disk (transient).
impl From<redb::DatabaseError> for StorageError {
    fn from(e: redb::DatabaseError) -> StorageError {
        use redb::DatabaseError as D;
        match e {
            D::UpgradeRequired(_) => StorageError::Unusable(e.to_string()),
            D::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                StorageError::Unusable(io.to_string())
            }
            D::Storage(s) => s.into(),
            D::RepairAborted | D::DatabaseAlreadyOpen => StorageError::Transient(e.to_string()),
            _ => StorageError::Fatal(e.to_string()),
        }
    }
}

impl From<redb::TransactionError> for StorageError {
    fn from(e: redb::TransactionError) -> StorageError {
        match e {
            redb::TransactionError::Storage(s) => s.into(),
            _ => StorageError::Fatal(e.to_string()),
        }
    }
}

impl From<redb::TableError> for StorageError {
    fn from(e: redb::TableError) -> StorageError {
        match e {
            redb::TableError::Storage(s) => s.into(),
            _ => StorageError::Fatal(e.to_string()),
        }
    }
}

impl From<redb::CommitError> for StorageError {
    fn from(e: redb::CommitError) -> StorageError {
        match e {
            redb::CommitError::Storage(s) => s.into(),
            _ => StorageError::Fatal(e.to_string()),
        }
    }
}

/// A file the storage opens or writes itself (the log): the disk's error.
impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> StorageError {
        StorageError::Transient(e.to_string())
    }
}

/// The write-ahead log: the disk's errors pass; a damaged log (records, header) cannot be
/// used, since acknowledged writes are in it; a write that cannot be encoded is a bug.
impl From<LogError> for StorageError {
    fn from(e: LogError) -> StorageError {
        match e {
            LogError::Io(_) => StorageError::Transient(e.to_string()),
            LogError::Damaged { .. } | LogError::Undecodable { .. } | LogError::DamagedHeader => {
                StorageError::Unusable(e.to_string())
            }
            LogError::Encode(_) => StorageError::Fatal(e.to_string()),
        }
    }
}

/// A record that cannot be encoded: a bug.
impl From<replicator_core::wire::WireError> for StorageError {
    fn from(e: replicator_core::wire::WireError) -> StorageError {
        StorageError::Fatal(format!("a record cannot be encoded: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_passes_the_file_does_not() {
        let io = || std::io::Error::other("no space left on device");
        assert!(StorageError::from(redb::StorageError::Io(io())).is_transient());
        assert!(StorageError::from(LogError::Io(io())).is_transient());
        assert!(matches!(
            StorageError::from(redb::StorageError::Corrupted("x".into())),
            StorageError::Unusable(_)
        ));
        assert!(matches!(
            StorageError::from(LogError::DamagedHeader),
            StorageError::Unusable(_)
        ));
        assert!(matches!(
            StorageError::from(redb::DatabaseError::Storage(redb::StorageError::Io(
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a redb file")
            ))),
            StorageError::Unusable(_)
        ));
        let e = StorageError::Transient("full".into()).context("the database /d");
        assert_eq!(e.to_string(), "the database /d: full");
        assert!(e.is_transient(), "context keeps the kind");
    }
}
