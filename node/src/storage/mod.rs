//! Durable state: a redb database with a write-ahead log in front of it (`wal.rs`). The core's
//! [`WriteOp`]s are applied in order; a group of `Persist` outputs is durable once its records
//! are appended to the log and the log is fsynced; the database takes the logged writes in bulk
//! at a checkpoint: one transaction once the log holds [`CHECKPOINT_LOG_BYTES`], on a thread of
//! its own while group commits go on (then the log's header moves past what it took), and in
//! line when the node starts, at a clean stop and once the log's file is long (then the log is
//! emptied). See `checkpoint.rs`.
//!
//! Why redb: a single-file, pure-Rust, copy-on-write B-tree with real ACID transactions, a
//! commit that fsyncs before it returns, and page checksums. Why the log in front: a redb
//! commit writes every page it copied plus its allocator state (about 33 KB per commit here,
//! whatever the commit holds) and cost about 180 µs of CPU; one per group commit made the
//! storage threads half of a loaded 3x3 network's CPU. Appending a group's records (a few
//! hundred bytes per write) costs one `pwrite` and one `fdatasync`; a checkpoint applies
//! thousands of writes in one redb transaction. Measured side by side with etcd (README):
//! 3x3 at 64 clients 2,150 -> 2,700 creates/s, CPU per create 0.88 -> 0.64 ms.
//!
//! The storage runs on its own OS thread (redb is blocking): it drains every queued `Persist`,
//! logs them in order, syncs once, and reports the highest `WriteId` through a `watch`
//! channel. A group is committed as soon as it holds a barrier write
//! ([`Urgency::Barrier`]: something waits for it). Lazy writes (the `Stored` record after a
//! commit: nothing waits for it) wait up to [`LAZY_SYNC_AFTER`] for a barrier write to ride
//! along with, so under load a create costs one fsync per node on its critical path and the
//! decisions fold into the accepts of later creates. Durability stays a prefix: a group is every
//! job queued before it, in order, and the log is read back only up to its first incomplete or
//! damaged record.
//!
//! Reading back: [`Storage::load`] reads the database and applies the log's writes that it
//! does not hold yet on top, by the core's own rules (`Recovered::apply`). Replaying writes the
//! database already holds (a crash between a checkpoint's commit and the log's truncation)
//! changes nothing: every op sets a value or keeps a maximum.
//!
//! A commit that fails for want of space or on another I/O error is not fatal: the batch stays
//! queued, nothing of it counts as durable (so the core releases nothing that depends on it), the
//! thread reports [`Durable::Stalled`] and retries every [`RETRY_INTERVAL`] on a reopened
//! database and log until it commits (the retry writes its records over the failed append's).
//! A node started on a full disk keeps the log's writes in the log until a checkpoint can run.
//! Only corruption (or a bug) is fatal: [`Durable::Failed`].
//!
//! Every record of `keys` and `requests`, and the ballot floor, carries a CRC-32 of its key and
//! its bytes. [`Storage::load`] checks each: a key whose record is damaged is left out of what
//! the core recovers and named in [`Recovered::damaged`]: the node abstains for it (no promise,
//! no accept, no answer to a read's question) until it learns its decision, and the majorities
//! of its cluster carry on without it (see [`Loaded::damaged_keys`]). A damaged ballot floor
//! cannot be recovered from anyone (it stands for this node's own promises): the database is
//! refused, and so is a log with a damaged record followed by good ones (see `wal.rs`). redb
//! panics on some corrupt files; opening and loading are wrapped so that this is an error, not a
//! crash.
//!
//! Under `--cfg madsim` there are no OS threads: the same group commit runs as a task of the
//! simulated node, over a [`SimDisk`], and reports a commit only after the simulated fsync
//! delay, so a kill before that loses the commit (see `simdisk.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use replicator_core::wire::{decode_record, encode_record};
use replicator_core::{
    ClusterId, DurableKey, NetworkId, NodeId, Recovered, Urgency, WriteId, WriteOp,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::crc::crc32;
use crate::metrics::CommitCounters;
use crate::simdisk::SimDisk;
use crate::wal::{Log, LogError};

mod apply;
mod checkpoint;
mod commit_loop;
mod error;
mod load;
mod meta;
mod open;
mod panics;
mod reads;
#[cfg(test)]
mod reads_tests;
mod schema;
#[cfg(test)]
mod tests;
mod upgrade;

pub use commit_loop::{
    Durable, LAZY_SYNC_AFTER, PersistJob, RETRY_INTERVAL, StorageHandle, StorageWorker,
};
pub use error::StorageError;
pub use load::Loaded;
pub use reads::DecisionReader;
pub use schema::{FORMAT_VERSION, db_path};

use error::Result;
use panics::*;
use schema::*;

/// redb's page cache when `--cache-mb` is not given: what a node keeps of its database in
/// memory (the decided keys it reads most), whatever the number of keys it stores.
pub const DEFAULT_CACHE_MB: usize = 64;

pub struct Storage {
    /// Shared with [`ReadSide`](reads::ReadSide), which the driver's reads of decisions go
    /// through; let go of there before a reopen (redb allows one open per file).
    db: Arc<Database>,
    path: PathBuf,
    /// redb's page cache, in bytes.
    cache_bytes: usize,
    /// The driver's reads of decisions: the database and the decisions logged but not
    /// checkpointed yet.
    reads: Arc<reads::ReadSide>,
    /// The simulated disk under `db`, if it is one: a commit is durable only once its fsync
    /// completes there.
    disk: Option<SimDisk>,
    /// Where a group commit makes its writes durable (see `wal.rs`).
    log: Log,
    /// The writes in `log` that `db` does not hold yet, in order.
    unapplied: Vec<WriteOp>,
    /// Bytes of an incomplete record at the end of the log when it was opened.
    torn_at_open: u64,
    /// The checkpoint the log's records follow (`None`: a log without a header, new or written
    /// before headers existed, follows checkpoint 0); the next checkpoint is one more.
    log_generation: Option<u64>,
    /// The checkpoint running beside the appends, if one is.
    checkpointing: Option<checkpoint::Checkpointing>,
}
