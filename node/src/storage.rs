//! Durable state: a redb database with a write-ahead log in front of it (`wal.rs`). The core's
//! [`WriteOp`]s are applied in order; a group of `Persist` outputs is durable once its records
//! are appended to the log and the log is fsynced; the database takes the logged writes in bulk
//! at a checkpoint (one transaction once the log holds [`CHECKPOINT_LOG_BYTES`], at a clean
//! stop, and when the node starts), then the log is emptied.
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

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use replicator_core::wire::{decode_record, encode_record};
use replicator_core::{ClusterId, NetworkId, NodeId, Recovered, Urgency, WriteId, WriteOp};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::crc::crc32;
use crate::metrics::CommitCounters;
use crate::simdisk::SimDisk;
use crate::wal::{Log, LogError};

const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
/// For each member of this node's cluster: the last of its decisions pulled from it.
const CAUGHT_UP: TableDefinition<&str, u64> = TableDefinition::new("caught_up");
/// Settings that are records: the ballot floor.
const META_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_records");
const DEPARTED: TableDefinition<&[u8], ()> = TableDefinition::new("departed");
/// Every other member this node recorded: node id -> cluster id.
const MEMBERS: TableDefinition<&str, &str> = TableDefinition::new("members");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Text settings: the network id.
const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");

const META_COUNTER_CEILING: &str = "counter_ceiling";
const META_ROUND_CEILING: &str = "round_ceiling";
const META_FLOOR: &str = "ballot_floor";
const META_READY: &str = "ready";
const META_FORMAT: &str = "format";
const META_NETWORK: &str = "network";
/// The peer id of the node this database belongs to.
const META_PEER: &str = "peer";
/// When this node left the network (`replicator leave`): it never starts again.
const META_LEFT: &str = "left";
/// How many checkpoints the database took; the log's header names the one its records follow
/// (see [`check_log_follows_database`]).
const META_CHECKPOINTS: &str = "checkpoints";
/// 2: the membership and the network id are durable (tables `members`, `meta_text`).
/// 3: records of `keys`, `refusals` and `requests` carry a checksum (a format 2 database is
/// upgraded in place when it is opened).
/// 4: recent writes may be in the write-ahead log next to the database (`wal.rs`); a
/// replicator that reads format 3 would ignore them, so it must refuse the database.
/// 5: the quorum protocol: a key's record is a promise and an accepted value, or its decision;
/// refusals and watermarks are gone; a ballot floor, a round ceiling and catch-up positions are
/// new. Earlier formats hold the unanimous protocol's grants, which no rule here reads.
const FORMAT_VERSION: u64 = 5;
/// How often a write that failed for want of space (or another I/O error) is retried.
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The most `Persist` outputs folded into one transaction (bounds one group commit).
const GROUP_PERSISTS_MAX: usize = 4096;

/// How long a lazy write waits for a barrier write to share its commit before it is committed
/// on its own. Bounds what a crash can lose of the lazy writes (they are safe to lose, but a
/// restart then learns those decisions again) and how long a held answer that needs them
/// waits if the core did not ask for a sync.
pub const LAZY_SYNC_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// The database file inside `--data-dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("replicator.redb")
}

/// The write-ahead log next to the database at `db`.
fn log_path(db: &Path) -> PathBuf {
    db.with_extension("wal")
}

/// Once the log holds this many bytes, the next group commit first checkpoints: the database
/// takes every logged write in one transaction and the log is emptied. Bounds the log, the
/// writes held in memory until then, and the replay after a crash.
const CHECKPOINT_LOG_BYTES: u64 = 1024 * 1024;

/// What the storage thread reports to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Every write up to and including this one is durable.
    Upto(WriteId),
    /// Writes after the last `Upto` failed and are being retried (disk full, I/O error):
    /// nothing after it is durable yet. The next `Upto` means they succeeded.
    Stalled(String),
    /// The database is corrupt (or a bug): nothing after it will be made durable.
    Failed(String),
}

/// The database cannot be used (corrupt or from another node): the node must not start.
#[derive(Debug)]
pub struct Unusable(pub String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

/// What [`Storage::load`] found.
pub struct Loaded {
    pub recovered: Recovered,
    /// Keys whose record failed its checksum: the node abstains for them (they are in
    /// [`Recovered::damaged`]) until it learns their decisions.
    pub damaged_keys: Vec<String>,
    /// Request records that failed their checksum (dropped: a retry with that id runs anew).
    pub damaged_requests: usize,
    /// Bytes of an incomplete or damaged record at the end of the write-ahead log, dropped.
    pub torn_log_bytes: u64,
}

/// One `Persist` output, queued for the storage thread.
pub struct PersistJob {
    pub write: WriteId,
    pub ops: Vec<WriteOp>,
    pub urgency: Urgency,
}

pub struct Storage {
    db: Database,
    path: PathBuf,
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
}

/// The storage's side of the driver: where `Persist` outputs go, and what is durable.
pub struct StorageHandle {
    /// Unbounded on purpose: the core's outputs must never be dropped or block the loop, and
    /// what it asks to persist is bounded by its own limits (proposals, open keys, relays).
    pub jobs: mpsc::UnboundedSender<PersistJob>,
    pub durable: watch::Receiver<Durable>,
    pub worker: StorageWorker,
}

/// The group commit loop: an OS thread in a real node, a task of the node under madsim.
pub enum StorageWorker {
    #[cfg(not(madsim))]
    Thread(std::thread::JoinHandle<()>),
    #[cfg(madsim)]
    Task(tokio::task::JoinHandle<()>),
}

impl StorageWorker {
    /// Waits until the loop has committed what was queued and closed the database (close the
    /// job queue first).
    pub async fn join(self) {
        match self {
            #[cfg(not(madsim))]
            StorageWorker::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            #[cfg(madsim)]
            StorageWorker::Task(t) => {
                let _ = t.await;
            }
        }
    }
}

/// Where a database lives, to open it again after a failed write.
#[derive(Clone)]
struct Location {
    path: PathBuf,
    disk: Option<SimDisk>,
}

impl Location {
    fn reopen(&self) -> Result<Storage> {
        match &self.disk {
            None => Storage::reopen(&self.path),
            Some(disk) => Storage::reopen_sim(disk),
        }
    }
}

impl Storage {
    /// Opens (or creates) the database. `fresh` is the state of a node that never ran with
    /// this data dir (a founder's or a joiner's, with the network id): it is written at once,
    /// so that a founder that restarts is still ready and a joiner that restarts still knows
    /// the network it joined. `None`: the database must already hold a node's state.
    pub fn open(data_dir: &Path, fresh: Option<&Recovered>) -> Result<Storage> {
        let path = db_path(data_dir);
        without_panics(&path, || Storage::open_inner(&path, fresh))
    }

    fn open_inner(path: &Path, fresh: Option<&Recovered>) -> Result<Storage> {
        let storage = Storage::reopen(path)?;
        Storage::init(storage, fresh)
    }

    /// Opens (or creates) the database on a simulated disk, as [`Storage::open`] does on a
    /// file. Its commits are durable only once [`Storage::start`]'s loop completes their fsync.
    pub fn open_sim(disk: &SimDisk, fresh: Option<&Recovered>) -> Result<Storage> {
        let path = PathBuf::from(SIM_PATH);
        let storage = without_panics(&path, || {
            let storage = Storage::reopen_sim(disk)?;
            Storage::init(storage, fresh)
        })?;
        // Setting a database up is part of starting the node: it is durable before the node
        // runs (as `open` on a real disk returns after its fsync).
        disk.complete_sync();
        Ok(storage)
    }

    fn reopen_sim(disk: &SimDisk) -> Result<Storage> {
        let path = PathBuf::from(SIM_PATH);
        let db = open_database(&path, Some(disk))?;
        Storage::with_log(db, path, Some(disk.clone()), Box::new(disk.log_backend()))
    }

    /// The database with its write-ahead log, read back: what the log holds beyond the
    /// database is kept to apply at the next checkpoint (`open` applies it at once).
    fn with_log(
        db: Database,
        path: PathBuf,
        disk: Option<SimDisk>,
        log_file: Box<dyn redb::StorageBackend>,
    ) -> Result<Storage> {
        let opened = Log::open(log_file).map_err(|e| match e {
            LogError::Io(e) => anyhow::Error::new(e).context(format!(
                "cannot read the write-ahead log {}",
                log_path(&path).display()
            )),
            damage => Unusable(format!(
                "{}: {damage}; this node cannot tell what it promised. Move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one",
                log_path(&path).display()
            ))
            .into(),
        })?;
        // Reported by `init` when the node starts; a reopen after a failed append finds that
        // append's remains here every time, which says nothing new.
        debug!(
            bytes = opened.torn_bytes,
            "the write-ahead log ends in an incomplete record: dropped"
        );
        Ok(Storage {
            db,
            path,
            disk,
            log: opened.log,
            unapplied: opened.ops,
            torn_at_open: opened.torn_bytes,
            log_generation: opened.generation,
        })
    }

    fn init(storage: Storage, fresh: Option<&Recovered>) -> Result<Storage> {
        let path = storage.path.clone();
        let txn = storage.db.begin_write()?;
        let format = {
            let meta = txn.open_table(META)?;
            meta.get(META_FORMAT)?.map(|v| v.value())
        };
        match (format, fresh) {
            (None, Some(fresh)) => {
                let mut meta = txn.open_table(META)?;
                meta.insert(META_FORMAT, FORMAT_VERSION)?;
                txn.open_table(META_TEXT)?
                    .insert(META_NETWORK, fresh.network.as_str())?;
            }
            (None, None) => anyhow::bail!(
                "the database {} was never initialised (remove it to start afresh)",
                path.display()
            ),
            (Some(FORMAT_VERSION), _) => {}
            (Some(v), _) if v < FORMAT_VERSION => {
                return Err(Unusable(format!(
                    "the database {} has format {v}, written by a replicator that decided keys \
                     with every node's grant; this one decides with quorums (format \
                     {FORMAT_VERSION}) and cannot take over the promises that data holds. Move the \
                     data dir away and start this machine as a new node (with --bootstrap of a \
                     member)",
                    path.display()
                ))
                .into());
            }
            (Some(v), _) => anyhow::bail!(
                "the database {} has format {v}, newer than the format {FORMAT_VERSION} this \
                 node reads: run a newer replicator",
                path.display()
            ),
        }
        let checkpoints = txn
            .open_table(META)?
            .get(META_CHECKPOINTS)?
            .map_or(0, |v| v.value());
        check_log_follows_database(checkpoints, storage.log_generation, &path)?;
        {
            txn.open_table(KEYS)?;
            txn.open_table(REQUESTS)?;
            txn.open_table(CAUGHT_UP)?;
            txn.open_table(META_RECORDS)?;
            txn.open_table(DEPARTED)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(META_TEXT)?;
        }
        txn.commit()?;
        if format.is_none() && !storage.unapplied.is_empty() {
            anyhow::bail!(
                "{} holds writes but the database {} was never initialised: the log belongs to a database that is gone; move the data dir away",
                log_path(&path).display(),
                path.display()
            );
        }
        let mut storage = storage;
        if storage.torn_at_open > 0 {
            warn!(
                bytes = storage.torn_at_open,
                "the write-ahead log ends in an incomplete or damaged record: dropped. Cut short by a crash, it was never reported durable; damaged on disk after it was, what it held is learned again from this node's cluster (catch-up)"
            );
        }
        if !storage.unapplied.is_empty() {
            info!(
                writes = storage.unapplied.len(),
                "applying the write-ahead log to the database"
            );
            // On a full disk this waits for a later checkpoint: `load` reads the log's writes
            // on top of the database meanwhile, and the node starts (and refuses writes).
            if let Err(e) = storage.checkpoint() {
                if !is_transient(&e) {
                    return Err(e);
                }
                warn!(error = %format!("{e:#}"), "cannot apply the write-ahead log to the database yet: kept in the log");
                storage = storage.with_database_reopened()?;
            }
        }
        if let (None, Some(fresh)) = (format, fresh) {
            // Everything else the fresh state holds (its members, ready, ...), in the order
            // the core would write it: departures first, so that a member that also departed
            // stays gone.
            storage.apply(&[PersistJob {
                write: WriteId(0),
                ops: fresh_ops(fresh),
                urgency: Urgency::Barrier,
            }])?;
        }
        Ok(storage)
    }

    /// The same storage on the database opened anew: redb refuses everything after an I/O
    /// error until it is (the log and the writes it holds stay as they are).
    fn with_database_reopened(self) -> Result<Storage> {
        let Storage {
            db,
            path,
            disk,
            log,
            unapplied,
            torn_at_open,
            log_generation,
        } = self;
        drop(db); // its file lock first
        Ok(Storage {
            db: open_database(&path, disk.as_ref())?,
            path,
            disk,
            log,
            unapplied,
            torn_at_open,
            log_generation,
        })
    }

    /// Opens the database and its log (again after a failed write: redb refuses every write
    /// after an I/O error until it is reopened).
    fn reopen(path: &Path) -> Result<Storage> {
        without_panics(path, || {
            let db = open_database(path, None)?;
            let log = log_path(path);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&log)
                .with_context(|| format!("cannot open the write-ahead log {}", log.display()))?;
            let file = redb::backends::FileBackend::new(file)
                .with_context(|| format!("cannot lock the write-ahead log {}", log.display()))?;
            Storage::with_log(db, path.to_path_buf(), None, Box::new(file))
        })
    }

    /// The network id recorded in the database (read before the network starts: a node with
    /// data only ever talks to its own network).
    pub fn network(&self) -> Result<NetworkId> {
        let txn = self.db.begin_read()?;
        let text = txn.open_table(META_TEXT)?;
        let network = text
            .get(META_NETWORK)?
            .map(|v| v.value().to_string())
            .context("the database records no network id")?;
        Ok(NetworkId::from(network))
    }

    /// Records that this node left the network (its goodbye follows): it never starts from
    /// this database again.
    pub fn mark_left(&self, when: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META_TEXT)?.insert(META_LEFT, when)?;
        txn.commit()?;
        Ok(())
    }

    /// When this node left the network, if it did.
    pub fn left(&self) -> Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let text = txn.open_table(META_TEXT)?;
        Ok(text.get(META_LEFT)?.map(|v| v.value().to_string()))
    }

    /// Binds the database to the node's identity: records `peer` on the first start, and
    /// refuses another one later (a node's keys, promises and membership are its own; another
    /// identity on top of them would be a second node claiming the first one's promises).
    pub fn bind_identity(&self, peer: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        let recorded = {
            let text = txn.open_table(META_TEXT)?;
            text.get(META_PEER)?.map(|v| v.value().to_string())
        };
        match recorded {
            Some(r) if r == peer => Ok(()),
            Some(r) => anyhow::bail!(
                "the database belongs to peer {r}, but identity.key is peer {peer}: a database is \
                 never used under another identity. Put that node's identity.key back, or move \
                 the data dir away and start this machine as a new node (with --bootstrap of a \
                 member)"
            ),
            None => {
                txn.open_table(META_TEXT)?.insert(META_PEER, peer)?;
                txn.commit()?;
                Ok(())
            }
        }
    }

    /// The durable state, as the core wants it after a restart, every record checked. A key
    /// whose record is damaged is left out, and named in [`Recovered::damaged`]: this node
    /// abstains for it (no promise, no accept, no answer to a read's question) until it learns
    /// its decision; the majorities of its cluster carry on without it.
    pub fn load(&mut self) -> Result<Loaded> {
        let loaded = without_panics(&self.path, || self.load_checked())?;
        if !loaded.damaged_keys.is_empty() {
            error!(
                keys = loaded.damaged_keys.len(),
                first = %loaded.damaged_keys[0],
                "records in the database failed their checksum: this node abstains for those keys (no promise, no accept, no answer to a read) until it learns their decisions from its cluster"
            );
        }
        if loaded.damaged_requests > 0 {
            warn!(
                requests = loaded.damaged_requests,
                "request records failed their checksum: dropped (a retry with such an X-Request-Id runs anew)"
            );
        }
        Ok(loaded)
    }

    fn load_checked(&self) -> Result<Loaded> {
        let network = self.network()?;
        let txn = self.db.begin_read()?;
        let mut rec = Recovered::joiner(network);
        let mut damaged_keys = Vec::new();
        let mut damaged_requests = 0;
        for entry in txn.open_table(KEYS)?.iter()? {
            let (k, v) = entry?;
            let state =
                open_record(k.value(), v.value()).and_then(|bytes| decode_record(bytes).ok());
            match (std::str::from_utf8(k.value()), state) {
                (Ok(key), Some(state)) => {
                    rec.keys.insert(key.into(), state);
                }
                (Ok(key), None) => {
                    rec.damaged.insert(key.into());
                    damaged_keys.push(key.to_string());
                }
                (Err(_), _) => damaged_keys.push(String::from_utf8_lossy(k.value()).into_owned()),
            }
        }
        for entry in txn.open_table(REQUESTS)?.iter()? {
            let (k, v) = entry?;
            let record =
                open_record(k.value(), v.value()).and_then(|bytes| decode_record(bytes).ok());
            match (std::str::from_utf8(k.value()), record) {
                (Ok(id), Some(record)) => {
                    rec.requests.insert(id.into(), record);
                }
                _ => damaged_requests += 1,
            }
        }
        for entry in txn.open_table(DEPARTED)?.iter()? {
            let (k, _) = entry?;
            let node = std::str::from_utf8(k.value()).context("a node id is not UTF-8")?;
            rec.departed.insert(NodeId::new(node));
        }
        for entry in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = entry?;
            rec.members
                .insert(NodeId::new(k.value()), ClusterId::new(v.value()));
        }
        for entry in txn.open_table(CAUGHT_UP)?.iter()? {
            let (k, v) = entry?;
            rec.caught_up.insert(NodeId::new(k.value()), v.value());
        }
        let meta = txn.open_table(META)?;
        let number = |name| -> Result<u64> { Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0)) };
        rec.counter_ceiling = number(META_COUNTER_CEILING)?;
        rec.round_ceiling = number(META_ROUND_CEILING)?;
        rec.ready = number(META_READY)? == 1;
        if let Some(floor) = txn.open_table(META_RECORDS)?.get(META_FLOOR)? {
            let key = META_FLOOR.as_bytes();
            let floor = open_record(key, floor.value()).and_then(|b| decode_record(b).ok());
            rec.floor = floor.ok_or_else(|| {
                Unusable(format!(
                    "the database {} is corrupt: the ballot floor (the promises this node folded together) failed its checksum, and no other node can tell it; this node must not promise again. Move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one",
                    self.path.display()
                ))
            })?;
        }
        // Writes in the log that the database does not hold yet (a checkpoint that could not
        // run): the same ops, applied by the core's own rules, on top.
        rec.apply_all(&self.unapplied);
        Ok(Loaded {
            recovered: rec,
            damaged_keys,
            damaged_requests,
            torn_log_bytes: self.torn_at_open,
        })
    }

    /// Makes a group of writes durable: appended to the log and synced, after a checkpoint if
    /// the log is full. On an error nothing of the group counts as written.
    pub fn commit_group(&mut self, jobs: &[PersistJob]) -> Result<()> {
        if self.log.len() >= CHECKPOINT_LOG_BYTES {
            self.checkpoint()?;
        }
        self.log.append(jobs.iter().map(|j| j.ops.as_slice()))?;
        self.unapplied
            .extend(jobs.iter().flat_map(|j| j.ops.iter().cloned()));
        Ok(())
    }

    /// The database takes every logged write in one durable transaction; then the log is
    /// emptied. A crash in between replays writes the database already holds, which changes
    /// nothing: every write op sets a value (or keeps a maximum), so applying a sequence again
    /// in order ends in the same state.
    ///
    /// The transaction also records the checkpoint's number, and the emptied log names it in
    /// its header: a database that later lost this transaction is refused when it is opened
    /// ([`check_log_follows_database`]). A checkpoint whose log could not be emptied is taken
    /// again under the same number, so the database is never more than one ahead of the log.
    pub fn checkpoint(&mut self) -> Result<()> {
        let number = self.log_generation.unwrap_or(0) + 1;
        self.apply_ops(superseded_dropped(&self.unapplied), Some(number))?;
        self.log.clear(number)?;
        self.log_generation = Some(number);
        self.unapplied.clear();
        Ok(())
    }

    /// Applies a group of writes straight to the database, in one durable transaction (for
    /// setting a database up; a running node's writes go through [`Storage::commit_group`]).
    pub fn apply(&self, jobs: &[PersistJob]) -> Result<()> {
        let ops: Vec<&WriteOp> = jobs.iter().flat_map(|j| &j.ops).collect();
        self.apply_ops(ops, None)
    }

    /// Applies `ops` in one durable transaction, which records checkpoint number `checkpoint`
    /// if it is one.
    fn apply_ops<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a WriteOp>,
        checkpoint: Option<u64>,
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut keys = txn.open_table(KEYS)?;
            let mut requests = txn.open_table(REQUESTS)?;
            let mut departed = txn.open_table(DEPARTED)?;
            let mut members = txn.open_table(MEMBERS)?;
            let mut caught_up = txn.open_table(CAUGHT_UP)?;
            let mut meta = txn.open_table(META)?;
            let mut records = txn.open_table(META_RECORDS)?;
            if let Some(number) = checkpoint {
                meta.insert(META_CHECKPOINTS, number)?;
            }
            for op in ops {
                match op {
                    WriteOp::PutKey { key, state } => {
                        let k = key.as_str().as_bytes();
                        keys.insert(k, seal(k, &encode_record(state)?).as_slice())?;
                    }
                    WriteOp::RemoveKey { key } => {
                        keys.remove(key.as_str().as_bytes())?;
                    }
                    WriteOp::BallotFloor(floor) => {
                        let k = META_FLOOR.as_bytes();
                        let old = records
                            .get(META_FLOOR)?
                            .and_then(|v| open_record(k, v.value()).map(<[u8]>::to_vec))
                            .and_then(|b| decode_record::<replicator_core::Ballot>(&b).ok());
                        if old.is_none_or(|old| *floor > old) {
                            records
                                .insert(META_FLOOR, seal(k, &encode_record(floor)?).as_slice())?;
                        }
                    }
                    WriteOp::CounterCeiling(c) => keep_max(&mut meta, META_COUNTER_CEILING, *c)?,
                    WriteOp::RoundCeiling(c) => keep_max(&mut meta, META_ROUND_CEILING, *c)?,
                    WriteOp::CaughtUp { peer, seq } => {
                        let old = caught_up
                            .get(peer.as_str())?
                            .map(|v| v.value())
                            .unwrap_or(0);
                        caught_up.insert(peer.as_str(), old.max(*seq))?;
                    }
                    WriteOp::PutRequest { id, record } => {
                        let k = id.as_str().as_bytes();
                        requests.insert(k, seal(k, &encode_record(record)?).as_slice())?;
                    }
                    WriteOp::RemoveRequest { id } => {
                        requests.remove(id.as_str().as_bytes())?;
                    }
                    WriteOp::Ready(r) => {
                        meta.insert(META_READY, u64::from(*r))?;
                    }
                    WriteOp::AddMember { cluster, node } => {
                        // As `Recovered::apply`: a departed node is never a member again.
                        if departed.get(node.as_str().as_bytes())?.is_none() {
                            members.insert(node.as_str(), cluster.as_str())?;
                        }
                    }
                    WriteOp::Departed(n) => {
                        departed.insert(n.as_str().as_bytes(), ())?;
                        members.remove(n.as_str())?;
                        caught_up.remove(n.as_str())?;
                    }
                }
            }
        }
        // Durability::Immediate is redb's default: commit returns after fsync.
        txn.commit()?;
        Ok(())
    }

    /// Starts the group commit loop: on its own OS thread, or under madsim as a task of the
    /// current node (a kill of the node stops it wherever it is, like a crash).
    pub fn start(self, counters: Arc<CommitCounters>) -> Result<StorageHandle> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
        #[cfg(not(madsim))]
        let worker = StorageWorker::Thread(
            std::thread::Builder::new()
                .name("storage".into())
                .spawn(move || self.run(queue, durable_tx, &counters))?,
        );
        #[cfg(madsim)]
        let worker = StorageWorker::Task(tokio::spawn(self.run_task(queue, durable_tx, counters)));
        Ok(StorageHandle {
            jobs,
            durable,
            worker,
        })
    }

    /// Runs the group-commit loop on the current (dedicated) thread until `jobs` closes.
    #[cfg(not(madsim))]
    pub fn run(
        self,
        mut jobs: mpsc::UnboundedReceiver<PersistJob>,
        durable: watch::Sender<Durable>,
        counters: &CommitCounters,
    ) {
        let location = self.location();
        let mut storage = Some(self);
        let mut batch: Vec<PersistJob> = Vec::new();
        // Only to wait for the queue with a deadline (a lazy write's); nothing else runs on it.
        let waiter = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = durable.send(Durable::Failed(format!("storage thread timer: {e}")));
                return;
            }
        };
        while waiter.block_on(next_group(&mut jobs, &mut batch)) {
            let started = std::time::Instant::now();
            let mut stalled = false;
            let committed = loop {
                match commit_once(&mut storage, &location, &batch) {
                    Ok(()) => break Ok(()),
                    Err(e) => {
                        if let Err(fatal) = failed(e, &mut stalled, &durable) {
                            break Err(fatal);
                        }
                    }
                }
                std::thread::sleep(RETRY_INTERVAL);
            };
            let Some(upto) = committed_group(committed, stalled, &batch, started, &durable) else {
                return;
            };
            counters.committed(&batch, started.elapsed());
            if let Some(disk) = &location.disk {
                disk.complete_sync();
            }
            batch.clear();
            if durable.send(Durable::Upto(upto)).is_err() {
                break;
            }
        }
        close(storage, &location);
    }

    /// The same loop as [`Storage::run`], as a task: a group is reported durable only after
    /// its simulated fsync has completed; meanwhile the next group queues up.
    pub async fn run_task(
        self,
        mut jobs: mpsc::UnboundedReceiver<PersistJob>,
        durable: watch::Sender<Durable>,
        counters: Arc<CommitCounters>,
    ) {
        let location = self.location();
        let mut storage = Some(self);
        let mut batch: Vec<PersistJob> = Vec::new();
        while next_group(&mut jobs, &mut batch).await {
            let started = std::time::Instant::now();
            let mut stalled = false;
            let committed = loop {
                match commit_once(&mut storage, &location, &batch) {
                    Ok(()) => break Ok(()),
                    Err(e) => {
                        if let Err(fatal) = failed(e, &mut stalled, &durable) {
                            break Err(fatal);
                        }
                    }
                }
                tokio::time::sleep(RETRY_INTERVAL).await;
            };
            let Some(upto) = committed_group(committed, stalled, &batch, started, &durable) else {
                return;
            };
            counters.committed(&batch, started.elapsed());
            if let Some(disk) = &location.disk {
                tokio::time::sleep(disk.fsync_delay()).await;
                disk.complete_sync();
            }
            batch.clear();
            if durable.send(Durable::Upto(upto)).is_err() {
                break;
            }
        }
        close(storage, &location);
    }

    fn location(&self) -> Location {
        Location {
            path: self.path.clone(),
            disk: self.disk.clone(),
        }
    }
}

/// `ops` without the writes a later one in `ops` overwrites: of the writes to one key or one
/// request record, only the last matters (each sets or removes its row, and the tables are
/// independent). Under load most keys are written twice between checkpoints (accepted, then
/// stored): the first write is skipped. Every other op is kept, in order (membership writes
/// depend on each other's order; the others keep a maximum).
fn superseded_dropped(ops: &[WriteOp]) -> Vec<&WriteOp> {
    use std::collections::HashSet;
    let mut keys = HashSet::new();
    let mut requests = HashSet::new();
    let mut kept: Vec<&WriteOp> = ops
        .iter()
        .rev()
        .filter(|op| match op {
            WriteOp::PutKey { key, .. } | WriteOp::RemoveKey { key } => keys.insert(key),
            WriteOp::PutRequest { id, .. } | WriteOp::RemoveRequest { id } => requests.insert(id),
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

/// Whether the database and its write-ahead log belong together: the database took
/// `checkpoints` checkpoints, and the log's records follow checkpoint `log` (see `wal.rs`).
///
/// The database may be one ahead: a crash between a checkpoint's commit and the emptying of the
/// log leaves records the database already holds, and replaying them changes nothing. Behind
/// the log, the database lost a checkpoint it had committed: redb, finding its newest commit
/// damaged, falls back to the one before without an error, or the file was restored from an
/// older copy. The writes of that checkpoint are gone from this node (the log no longer holds
/// them), and so may be promises it made: nothing on this disk can tell what it promised, and
/// a silent re-copy from the peers would hide it. More than one ahead, the log is not the one
/// the database was written with (deleted, or restored from an older copy), and acknowledged
/// writes may be missing. A log without a header (new, or written before headers existed)
/// follows checkpoint 0, so it goes with a database that took none yet or just its first.
fn check_log_follows_database(checkpoints: u64, log: Option<u64>, db: &Path) -> Result<()> {
    let follows = log.unwrap_or(0);
    let advice = "this node cannot tell what it promised. Move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one";
    if checkpoints < follows {
        return Err(Unusable(format!(
            "the database {} is damaged or older than its write-ahead log: it holds {checkpoints} checkpoints but the log follows checkpoint {follows} (a damaged newest commit that redb rolled back, or a file restored from a copy); {advice}",
            db.display()
        ))
        .into());
    }
    if checkpoints > follows + 1 {
        let log_file = log_path(db);
        let found = match log {
            Some(n) => format!("follows checkpoint {n}"),
            None => "has no header".to_string(),
        };
        return Err(Unusable(format!(
            "the write-ahead log {} does not belong to the database {}: the database took {checkpoints} checkpoints but the log {found} (deleted, or restored from a copy); acknowledged writes may be missing, {advice}",
            log_file.display(),
            db.display()
        ))
        .into());
    }
    Ok(())
}

/// Opens (or creates) the redb database at `path`, or on `disk` if it is a simulated one.
fn open_database(path: &Path, disk: Option<&SimDisk>) -> Result<Database> {
    match disk {
        None => Database::create(path).map_err(|e| {
            if is_damage(&e) {
                Unusable(format!(
                    "the database {} is damaged (redb: {e}); move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one",
                    path.display()
                ))
                .into()
            } else {
                anyhow::Error::new(e).context(format!("cannot open the database {}", path.display()))
            }
        }),
        Some(disk) => Database::builder()
            .create_with_backend(disk.backend())
            .context("cannot open the database on the simulated disk"),
    }
}

/// Whether redb refused the file for what it holds (not a redb file, corrupt beyond its own
/// repair, a format it cannot read) rather than for the disk (permissions, I/O errors).
fn is_damage(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::UpgradeRequired(_) => true,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            io.kind() == std::io::ErrorKind::InvalidData
        }
        _ => false,
    }
}

/// The path reported for a database on a simulated disk.
const SIM_PATH: &str = "<simulated disk>";

/// Gathers the next group to commit into `batch` (empty on entry): at least one job, and every
/// job queued behind it, until one of them is a barrier write, the group is full, the first
/// lazy job has waited [`LAZY_SYNC_AFTER`], or the queue closed. `false` once the queue closed
/// with nothing left to commit.
async fn next_group(
    jobs: &mut mpsc::UnboundedReceiver<PersistJob>,
    batch: &mut Vec<PersistJob>,
) -> bool {
    debug_assert!(batch.is_empty());
    let Some(first) = jobs.recv().await else {
        return false;
    };
    // Simulated time under madsim, which has no `timeout_at`.
    let first_queued = tokio::time::Instant::now();
    batch.push(first);
    take_queued(jobs, batch);
    while !group_ready(batch) {
        let wait = LAZY_SYNC_AFTER.saturating_sub(first_queued.elapsed());
        match tokio::time::timeout(wait, jobs.recv()).await {
            Ok(Some(job)) => {
                batch.push(job);
                take_queued(jobs, batch);
            }
            // Closed (commit what is left before closing) or waited long enough.
            Ok(None) | Err(_) => break,
        }
    }
    true
}

/// Whether a group must be committed now: it holds a barrier write, or it is full.
fn group_ready(batch: &[PersistJob]) -> bool {
    batch.len() >= GROUP_PERSISTS_MAX || batch.iter().any(|j| j.urgency == Urgency::Barrier)
}

/// Adds every job already queued to `batch`, up to the group limit.
fn take_queued(jobs: &mut mpsc::UnboundedReceiver<PersistJob>, batch: &mut Vec<PersistJob>) {
    while batch.len() < GROUP_PERSISTS_MAX {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// One attempt to commit `batch` in one transaction, on the database opened again if the last
/// attempt failed (redb refuses every write after an I/O error until it is reopened).
fn commit_once(
    storage: &mut Option<Storage>,
    location: &Location,
    batch: &[PersistJob],
) -> Result<()> {
    let path = &location.path;
    let result = match storage.as_mut() {
        Some(s) => without_panics(path, || s.commit_group(batch)),
        None => location.reopen().and_then(|mut s| {
            let r = without_panics(path, || s.commit_group(batch));
            *storage = Some(s);
            r
        }),
    };
    if result.is_err() {
        *storage = None;
    }
    result
}

/// A commit failed: `Err` if the database is corrupt or the write can never succeed (the node
/// stops); otherwise the failure can pass (no space, I/O), so the group is retried after
/// [`RETRY_INTERVAL`], and the driver is told writes are stalled.
fn failed(
    e: anyhow::Error,
    stalled: &mut bool,
    durable: &watch::Sender<Durable>,
) -> std::result::Result<(), String> {
    if !is_transient(&e) {
        return Err(format!("{e:#}"));
    }
    if !*stalled {
        *stalled = true;
        error!(
            error = %format!("{e:#}"),
            "storage write failed (disk full?): nothing of it is applied; writes are refused and the write is retried every {RETRY_INTERVAL:?} until it succeeds"
        );
        let _ = durable.send(Durable::Stalled(format!("{e:#}")));
    }
    Ok(())
}

/// After the commit loop of one group: its highest write, or `None` after reporting that the
/// storage is unusable (the loop stops: nothing later may be made durable).
fn committed_group(
    committed: std::result::Result<(), String>,
    stalled: bool,
    batch: &[PersistJob],
    started: std::time::Instant,
    durable: &watch::Sender<Durable>,
) -> Option<WriteId> {
    if let Err(e) = committed {
        error!(error = %e, "storage is unusable: the node stops");
        let _ = durable.send(Durable::Failed(e));
        return None;
    }
    if stalled {
        info!("storage writes succeed again: the node resumes");
    }
    let upto = batch
        .last()
        .map(|j| j.write)
        .expect("the batch is not empty");
    debug!(
        persists = batch.len(),
        upto = upto.0,
        commit_us = started.elapsed().as_micros() as u64,
        "group commit"
    );
    Some(upto)
}

/// Closes the database; on a simulated disk, what closing wrote is durable too.
fn close(storage: Option<Storage>, location: &Location) {
    // A clean stop leaves an empty log behind (a failure here costs only a replay on start).
    if let Some(mut s) = storage {
        if let Err(e) = without_panics(&location.path, || s.checkpoint()) {
            warn!(error = %format!("{e:#}"), "checkpoint at stop failed: the next start replays the log");
        }
        drop(s);
    }
    if let Some(disk) = &location.disk {
        disk.complete_sync();
    }
    info!("storage stops");
}

/// Whether a failed write may succeed later: an I/O error (no space, quota, a disk that
/// hiccupped), as opposed to corruption or a bug.
fn is_transient(e: &anyhow::Error) -> bool {
    use redb::StorageError as S;
    let storage = e.chain().find_map(|c| {
        if let Some(s) = c.downcast_ref::<S>() {
            return Some(matches!(s, S::Io(_) | S::PreviousIo | S::DatabaseClosed));
        }
        if let Some(redb::CommitError::Storage(s)) = c.downcast_ref::<redb::CommitError>() {
            return Some(matches!(s, S::Io(_) | S::PreviousIo | S::DatabaseClosed));
        }
        if let Some(redb::TransactionError::Storage(s)) = c.downcast_ref::<redb::TransactionError>()
        {
            return Some(matches!(s, S::Io(_) | S::PreviousIo | S::DatabaseClosed));
        }
        if let Some(redb::TableError::Storage(s)) = c.downcast_ref::<redb::TableError>() {
            return Some(matches!(s, S::Io(_) | S::PreviousIo | S::DatabaseClosed));
        }
        if let Some(d) = c.downcast_ref::<redb::DatabaseError>() {
            return Some(match d {
                redb::DatabaseError::Storage(s) => {
                    matches!(s, S::Io(_) | S::PreviousIo | S::DatabaseClosed)
                }
                redb::DatabaseError::RepairAborted | redb::DatabaseError::DatabaseAlreadyOpen => {
                    true
                }
                _ => false,
            });
        }
        c.downcast_ref::<std::io::Error>().map(|_| true)
    });
    storage.unwrap_or(false)
}

/// Runs a redb operation, turning a panic (redb panics on some corrupt files) into an
/// [`Unusable`] error.
fn without_panics<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_panics_hook();
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(Unusable(format!(
                "the database {} is corrupt (redb: {what}); move the data dir away and start this machine as a new node (with --bootstrap of a member)",
                path.display()
            ))
            .into())
        }
    }
}

thread_local! {
    /// Set while redb runs inside [`without_panics`]: its panics are caught and reported as
    /// an error, so the default hook's message and backtrace would only alarm.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent on threads inside [`without_panics`] and
/// reports every other panic as before.
fn quiet_panics_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}

/// A record as stored: a CRC-32 of `key` and `bytes` (4 bytes, little endian), then `bytes`.
fn seal(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&checksum(key, bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a sealed record, if its checksum matches.
fn open_record<'a>(key: &[u8], sealed: &'a [u8]) -> Option<&'a [u8]> {
    let (sum, bytes) = sealed.split_first_chunk::<4>()?;
    (u32::from_le_bytes(*sum) == checksum(key, bytes)).then_some(bytes)
}

/// CRC-32 of the key's length, the key and the bytes.
fn checksum(key: &[u8], bytes: &[u8]) -> u32 {
    crc32(&[&(key.len() as u32).to_le_bytes(), key, bytes])
}

/// The writes that record `fresh` (a state that was never on this disk), its network aside.
fn fresh_ops(fresh: &Recovered) -> Vec<WriteOp> {
    let mut ops: Vec<WriteOp> = Vec::new();
    ops.extend(fresh.departed.iter().cloned().map(WriteOp::Departed));
    ops.extend(
        fresh
            .members
            .iter()
            .map(|(node, cluster)| WriteOp::AddMember {
                cluster: cluster.clone(),
                node: node.clone(),
            }),
    );
    ops.extend(fresh.keys.iter().map(|(key, state)| WriteOp::PutKey {
        key: key.clone(),
        state: state.clone(),
    }));
    ops.extend(
        fresh
            .requests
            .iter()
            .map(|(id, record)| WriteOp::PutRequest {
                id: id.clone(),
                record: record.clone(),
            }),
    );
    ops.extend(fresh.caught_up.iter().map(|(peer, seq)| WriteOp::CaughtUp {
        peer: peer.clone(),
        seq: *seq,
    }));
    ops.push(WriteOp::BallotFloor(fresh.floor.clone()));
    ops.push(WriteOp::CounterCeiling(fresh.counter_ceiling));
    ops.push(WriteOp::RoundCeiling(fresh.round_ceiling));
    ops.push(WriteOp::Ready(fresh.ready));
    ops
}

/// Raises a counter in the meta table to `value`, never lowering it (ceilings only grow, so a
/// replayed log applies to the same end state).
fn keep_max(meta: &mut redb::Table<&str, u64>, name: &str, value: u64) -> Result<()> {
    let old = meta.get(name)?.map(|v| v.value()).unwrap_or(0);
    meta.insert(name, old.max(value))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::{
        Ballot, DurableKey, Key, Proposal, ProposalId, RequestId, RequestOutcome, RequestRecord,
        Value,
    };

    fn net() -> NetworkId {
        NetworkId::new("0123456789abcdef0123456789abcdef")
    }

    fn proposal(counter: u64) -> Proposal {
        Proposal {
            p: ProposalId {
                coordinator: NodeId::new("n1"),
                counter,
            },
            request: None,
            value: Value::from("v"),
        }
    }

    fn ballot(round: u64, node: &str) -> Ballot {
        Ballot {
            round,
            node: Some(NodeId::new(node)),
        }
    }

    fn request(seq: u64, outcome: Option<RequestOutcome>) -> WriteOp {
        WriteOp::PutRequest {
            id: RequestId::new(format!("r{seq}")),
            record: RequestRecord {
                seq,
                key: Key::new("k"),
                value_fingerprint: 42,
                proposal: proposal(seq).p,
                outcome,
            },
        }
    }

    fn member(cluster: &str, node: &str) -> WriteOp {
        WriteOp::AddMember {
            cluster: ClusterId::new(cluster),
            node: NodeId::new(node),
        }
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
        let ops = vec![
            WriteOp::PutKey {
                key: Key::new("k"),
                state: DurableKey::Stored {
                    chosen: proposal(7),
                    seq: 1,
                },
            },
            WriteOp::PutKey {
                key: Key::new("open"),
                state: DurableKey::Open {
                    promised: ballot(5, "n3"),
                    accepted: Some((ballot(4, "n2"), proposal(8))),
                },
            },
            WriteOp::BallotFloor(ballot(2, "n2")),
            WriteOp::BallotFloor(ballot(1, "n4")),
            WriteOp::RoundCeiling(4096),
            WriteOp::CaughtUp {
                peer: NodeId::new("n2"),
                seq: 5,
            },
            WriteOp::CaughtUp {
                peer: NodeId::new("n2"),
                seq: 3,
            },
            request(1, Some(RequestOutcome::Stored)),
            WriteOp::CounterCeiling(2048),
            member("c1", "n2"),
            member("c2", "n3"),
            member("c2", "n4"),
            WriteOp::Departed(NodeId::new("n3")),
        ];
        let mut expected = Recovered::founder(net());
        expected.apply_all(&ops);
        s.apply(&[PersistJob {
            write: WriteId(1),
            ops,
            urgency: Urgency::Barrier,
        }])
        .unwrap();
        drop(s);
        let mut s = Storage::open(dir.path(), None).unwrap();
        let loaded = s.load().unwrap().recovered;
        assert_eq!(loaded, expected);
        assert_eq!(loaded.network, net());
        assert!(loaded.ready);
        let mut members: Vec<&str> = loaded.members.keys().map(|n| n.as_str()).collect();
        members.sort();
        assert_eq!(members, ["n2", "n4"], "a departed member is gone");
        assert!(loaded.departed.contains(&NodeId::new("n3")));
        assert_eq!(loaded.floor, ballot(2, "n2"), "the floor only rises");
        assert_eq!(
            loaded.caught_up[&NodeId::new("n2")],
            5,
            "catch-up only advances"
        );
    }

    fn stored(key: &str, counter: u64) -> WriteOp {
        WriteOp::PutKey {
            key: Key::new(key),
            state: DurableKey::Stored {
                chosen: proposal(counter),
                seq: counter,
            },
        }
    }

    fn job(write: u64, ops: Vec<WriteOp>) -> PersistJob {
        PersistJob {
            write: WriteId(write),
            ops,
            urgency: Urgency::Barrier,
        }
    }

    fn sim_disk() -> SimDisk {
        SimDisk::new(std::time::Duration::ZERO..std::time::Duration::ZERO)
    }

    fn keys_after_restart(disk: &SimDisk) -> Vec<String> {
        let mut s = Storage::open_sim(disk, None).unwrap();
        let mut keys: Vec<String> = s
            .load()
            .unwrap()
            .recovered
            .keys
            .keys()
            .map(|k| k.as_str().to_string())
            .collect();
        keys.sort();
        keys
    }

    /// A group is durable once its log append is synced, before the database holds it: a
    /// crash then keeps it (the log is replayed on open), and a crash before the sync loses
    /// it whole.
    #[test]
    fn a_logged_group_survives_a_crash_and_an_unsynced_one_is_lost() {
        let disk = sim_disk();
        let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
        s.commit_group(&[job(1, vec![stored("a", 1)]), job(2, vec![stored("b", 2)])])
            .unwrap();
        disk.complete_sync();
        s.commit_group(&[job(3, vec![stored("c", 3)])]).unwrap();
        disk.crash();
        drop(s);
        assert_eq!(keys_after_restart(&disk), ["a", "b"]);
        // The replay was applied and the log emptied durably: a second crash changes nothing.
        disk.crash();
        assert_eq!(keys_after_restart(&disk), ["a", "b"]);
    }

    /// Past `CHECKPOINT_LOG_BYTES` the database takes the logged writes and the log empties;
    /// a crash between the two (database durable, log not yet emptied) replays writes the
    /// database holds already, to the same state.
    #[test]
    fn checkpoints_bound_the_log_and_a_replay_after_one_changes_nothing() {
        let disk = sim_disk();
        let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
        let mut write = 0;
        let mut expected = Vec::new();
        while s.log.len() < CHECKPOINT_LOG_BYTES {
            write += 1;
            let key = format!("k{write:05}");
            let filler = WriteOp::CaughtUp {
                peer: NodeId::new("n".repeat(400)),
                seq: write,
            };
            s.commit_group(&[job(write, vec![stored(&key, write), filler])])
                .unwrap();
            disk.complete_sync();
            expected.push(key);
        }
        write += 1;
        s.commit_group(&[job(write, vec![stored("last", write)])])
            .unwrap();
        disk.complete_sync();
        assert!(
            s.log.len() < 1024,
            "the log was emptied before the last append"
        );
        expected.push("last".into());
        expected.sort();
        drop(s);
        assert_eq!(keys_after_restart(&disk), expected);

        // The database holds "x"; the log still holds it too (as if a crash came between the
        // checkpoint's commit and the log's truncation).
        let mut s = Storage::open_sim(&disk, None).unwrap();
        s.commit_group(&[job(
            1,
            vec![
                stored("x", 1),
                WriteOp::RemoveKey {
                    key: Key::new("last"),
                },
            ],
        )])
        .unwrap();
        // The checkpoint's transaction, without the emptying of the log.
        let number = s.log_generation.unwrap_or(0) + 1;
        s.apply_ops(&s.unapplied, Some(number)).unwrap();
        disk.complete_sync();
        disk.crash();
        drop(s);
        expected.retain(|k| k != "last");
        expected.push("x".into());
        expected.sort();
        assert_eq!(keys_after_restart(&disk), expected);
    }

    fn file_bytes(file: &crate::simdisk::SimBackend) -> Vec<u8> {
        use redb::StorageBackend;
        let mut bytes = vec![0u8; file.len().unwrap() as usize];
        file.read(0, &mut bytes).unwrap();
        bytes
    }

    fn put_file_bytes(file: &crate::simdisk::SimBackend, bytes: &[u8]) {
        use redb::StorageBackend;
        file.set_len(0).unwrap();
        file.write(0, bytes).unwrap();
    }

    /// A database, and the same one after two checkpoints (keys "a", then "b"), with its
    /// image from after the first.
    fn two_checkpoints() -> (SimDisk, Vec<u8>) {
        let disk = sim_disk();
        let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
        s.commit_group(&[job(1, vec![stored("a", 1)])]).unwrap();
        s.checkpoint().unwrap();
        disk.complete_sync();
        let after_first = file_bytes(&disk.backend());
        s.commit_group(&[job(2, vec![stored("b", 2)])]).unwrap();
        s.checkpoint().unwrap();
        disk.complete_sync();
        drop(s);
        assert_eq!(keys_after_restart(&disk), ["a", "b"]);
        (disk, after_first)
    }

    fn refusal(disk: &SimDisk) -> String {
        match Storage::open_sim(disk, None) {
            Ok(_) => panic!("the storage opened"),
            Err(e) => {
                assert!(e.chain().any(|c| c.is::<Unusable>()), "not Unusable: {e:#}");
                format!("{e:#}")
            }
        }
    }

    /// What redb's repair does with a damaged newest commit (it falls back to the previous
    /// one, silently), or an operator restoring an old copy: the database lost a checkpoint
    /// that the log was emptied after. The node must not start on it.
    #[test]
    fn a_database_that_lost_its_last_checkpoint_is_refused() {
        let (disk, after_first) = two_checkpoints();
        put_file_bytes(&disk.backend(), &after_first);
        let why = refusal(&disk);
        assert!(why.contains("older than its write-ahead log"), "{why}");
        assert!(why.contains(SIM_PATH), "the database is named: {why}");
    }

    /// A log deleted (or replaced) after checkpoints: acknowledged writes may be gone.
    #[test]
    fn a_log_that_does_not_follow_the_database_is_refused() {
        let (disk, _) = two_checkpoints();
        put_file_bytes(&disk.log_backend(), &[]);
        let why = refusal(&disk);
        assert!(why.contains("does not belong to the database"), "{why}");
    }

    /// The rule itself, case by case: equal, or the database one ahead (a crash between a
    /// checkpoint's commit and the log's emptying), is the only good pairing.
    #[test]
    fn the_database_follows_the_log_or_is_one_ahead() {
        let db = Path::new("/d/replicator.redb");
        for (checkpoints, log, good) in [
            (0, None, true),
            (1, None, true),
            (2, None, false),
            (3, Some(3), true),
            (4, Some(3), true),
            (5, Some(3), false),
            (2, Some(3), false),
            (0, Some(1), false),
        ] {
            assert_eq!(
                check_log_follows_database(checkpoints, log, db).is_ok(),
                good,
                "database {checkpoints} checkpoints, log {log:?}"
            );
        }
    }

    /// A checkpoint that could not empty the log is taken again under the same number: the
    /// database never gets two ahead of its log, however often that happens.
    #[test]
    fn a_checkpoint_whose_log_was_not_emptied_keeps_its_number() {
        let disk = sim_disk();
        let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
        for write in 1..=3 {
            s.commit_group(&[job(write, vec![stored(&format!("k{write}"), write)])])
                .unwrap();
            // The checkpoint's transaction, without the emptying of the log.
            let number = s.log_generation.unwrap_or(0) + 1;
            s.apply_ops(&s.unapplied, Some(number)).unwrap();
        }
        disk.complete_sync();
        drop(s);
        assert_eq!(keys_after_restart(&disk), ["k1", "k2", "k3"]);
    }

    /// A checkpoint that skips overwritten writes ends in the state that applying every write
    /// in order reaches (compared through what the core recovers from each).
    #[test]
    fn a_checkpoint_without_overwritten_writes_reaches_the_same_state() {
        let open = |key: &str, c: u64| WriteOp::PutKey {
            key: Key::new(key),
            state: DurableKey::Open {
                promised: ballot(c, "n2"),
                accepted: Some((ballot(c, "n2"), proposal(c))),
            },
        };
        let ops = vec![
            open("a", 1),
            stored("a", 1),
            open("b", 2),
            WriteOp::RemoveKey { key: Key::new("b") },
            request(2, None),
            open("c", 3),
            WriteOp::RemoveKey { key: Key::new("c") },
            stored("c", 4),
            request(5, None),
            WriteOp::RemoveRequest {
                id: RequestId::new("r5"),
            },
            member("c1", "n7"),
            WriteOp::Departed(NodeId::new("n7")),
            member("c1", "n7"),
            WriteOp::CaughtUp {
                peer: NodeId::new("n2"),
                seq: 9,
            },
            WriteOp::CaughtUp {
                peer: NodeId::new("n2"),
                seq: 4,
            },
            open("d", 6),
        ];
        let kept = superseded_dropped(&ops);
        assert_eq!(kept.len(), ops.len() - 5, "{kept:?}");
        let load = |apply: &dyn Fn(&Storage)| {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
            apply(&s);
            drop(s);
            let mut s = Storage::open(dir.path(), None).unwrap();
            s.load().unwrap().recovered
        };
        let all = load(&|s| s.apply_ops(&ops, None).unwrap());
        let collapsed = load(&|s| s.apply_ops(superseded_dropped(&ops), None).unwrap());
        assert_eq!(collapsed, all);
        let mut expected = Recovered::founder(net());
        expected.apply_all(&ops);
        assert_eq!(all, expected);
    }

    /// A failing disk refuses the append; nothing of the group counts, and the same group
    /// commits once the disk works again (on the database opened anew).
    #[test]
    fn a_failed_append_commits_nothing_until_retried() {
        let disk = sim_disk();
        let storage = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
        let location = storage.location();
        let mut storage = Some(storage);
        let batch = [job(1, vec![stored("a", 1)])];
        disk.set_failing(true);
        assert!(commit_once(&mut storage, &location, &batch).is_err());
        assert!(storage.is_none(), "dropped, to reopen");
        disk.set_failing(false);
        commit_once(&mut storage, &location, &batch).unwrap();
        disk.complete_sync();
        disk.crash();
        drop(storage);
        assert_eq!(keys_after_restart(&disk), ["a"]);
    }

    /// The membership only changes through its writes: a departed node is never added again,
    /// a departure drops a member, and a removal of this node itself is on record.
    #[test]
    fn membership_and_departures_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
        let batches = [
            vec![member("eu", "a"), member("eu", "b"), member("us", "c")],
            vec![WriteOp::Departed(NodeId::new("b")), member("eu", "b")],
            vec![member("us", "d"), WriteOp::Departed(NodeId::new("me"))],
        ];
        let mut expected = Recovered::joiner(net());
        for (w, ops) in batches.into_iter().enumerate() {
            expected.apply_all(&ops);
            s.apply(&[PersistJob {
                write: WriteId(w as u64 + 1),
                ops,
                urgency: Urgency::Barrier,
            }])
            .unwrap();
        }
        drop(s);
        let loaded = Storage::open(dir.path(), None)
            .unwrap()
            .load()
            .unwrap()
            .recovered;
        assert_eq!(loaded, expected);
        let mut members: Vec<(&str, &str)> = loaded
            .members
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_str()))
            .collect();
        members.sort();
        assert_eq!(members, [("a", "eu"), ("c", "us"), ("d", "us")]);
        assert!(loaded.departed.contains(&NodeId::new("me")));
        assert!(!loaded.ready);
    }

    /// `open` with a fresh state records all of it at once (a founder that knows members, a
    /// joiner's network id), and a second `open` never overwrites what is there.
    #[test]
    fn fresh_state_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Recovered::founder(net()).with_members([
            (ClusterId::new("eu"), NodeId::new("a")),
            (ClusterId::new("us"), NodeId::new("b")),
        ]);
        let mut s = Storage::open(dir.path(), Some(&fresh)).unwrap();
        assert_eq!(s.network().unwrap(), net());
        assert_eq!(s.load().unwrap().recovered, fresh);
        drop(s);
        let other = Recovered::joiner(NetworkId::new("another"));
        let mut s = Storage::open(dir.path(), Some(&other)).unwrap();
        assert_eq!(
            s.load().unwrap().recovered,
            fresh,
            "an existing database is kept"
        );
    }

    #[test]
    fn old_or_uninitialised_databases_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A database of format 1: no members, no network id.
            let db = Database::create(db_path(dir.path())).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_FORMAT, 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let e = format!("{:#}", Storage::open(dir.path(), None).err().unwrap());
        assert!(
            e.contains("format 1") && e.contains("quorums") && e.contains("new node"),
            "{e}"
        );
        let e = Storage::open(dir.path(), Some(&Recovered::joiner(net())))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("format 1"), "{e:#}");

        let dir = tempfile::tempdir().unwrap();
        drop(Database::create(db_path(dir.path())).unwrap());
        let e = format!("{:#}", Storage::open(dir.path(), None).err().unwrap());
        assert!(e.contains("never initialised"), "{e}");
    }

    #[test]
    fn lazy_writes_ride_with_the_next_barrier_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
        let job = |w: u64, urgency| PersistJob {
            write: WriteId(w),
            ops: vec![WriteOp::CounterCeiling(w * 10)],
            urgency,
        };
        tx.send(job(1, Urgency::Lazy)).unwrap();
        tx.send(job(2, Urgency::Lazy)).unwrap();
        tx.send(job(3, Urgency::Barrier)).unwrap();
        drop(tx);
        let counters = CommitCounters::default();
        s.run(rx, durable_tx, &counters);
        assert_eq!(*durable.borrow(), Durable::Upto(WriteId(3)));
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get(&counters.commits), 1, "one fsync for the three writes");
        assert_eq!(get(&counters.lazy_writes), 2);
    }

    #[test]
    fn a_lazy_write_alone_is_synced_after_a_short_delay() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
        let counters = Arc::new(CommitCounters::default());
        let worker = {
            let counters = counters.clone();
            std::thread::spawn(move || s.run(rx, durable_tx, &counters))
        };
        let sent = std::time::Instant::now();
        tx.send(PersistJob {
            write: WriteId(1),
            ops: vec![WriteOp::CounterCeiling(10)],
            urgency: Urgency::Lazy,
        })
        .unwrap();
        // The queue stays open: only the delay can commit it.
        while *durable.borrow() != Durable::Upto(WriteId(1)) {
            assert!(
                sent.elapsed() < std::time::Duration::from_secs(10),
                "never synced"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(sent.elapsed() >= LAZY_SYNC_AFTER, "synced before its delay");
        drop(tx);
        worker.join().unwrap();
        let commits = counters.commits.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(commits, 1);
    }

    #[test]
    fn group_commit_reports_the_highest_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
        for w in 1..=50u64 {
            tx.send(PersistJob {
                write: WriteId(w),
                ops: vec![WriteOp::CounterCeiling(w * 10)],
                urgency: Urgency::Barrier,
            })
            .unwrap();
        }
        drop(tx);
        s.run(rx, durable_tx, &CommitCounters::default());
        assert_eq!(*durable.borrow(), Durable::Upto(WriteId(50)));
        let rec = Storage::open(dir.path(), None)
            .unwrap()
            .load()
            .unwrap()
            .recovered;
        assert_eq!(rec.counter_ceiling, 500);
        assert!(
            !rec.ready,
            "a joiner stays not ready until its copy is done"
        );
    }
}
