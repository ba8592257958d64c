//! Opening a database and its write-ahead log: setting a new one up, refusing one that cannot
//! be used (damaged, another format, a log that does not follow it), replaying the log.

use super::commit_loop::Location;
use super::*;

impl Storage {
    /// Opens (or creates) the database. `fresh` is the state of a node that never ran with
    /// this data dir (a founder's or a joiner's, with the network id): it is written at once,
    /// so that a founder that restarts is still ready and a joiner that restarts still knows
    /// the network it joined. `None`: the database must already hold a node's state. redb's
    /// page cache is [`DEFAULT_CACHE_MB`].
    pub fn open(data_dir: &Path, fresh: Option<&Recovered>) -> Result<Storage> {
        Storage::open_with_cache(data_dir, fresh, DEFAULT_CACHE_MB << 20)
    }

    /// [`Storage::open`] with a page cache of `cache_bytes` (`--cache-mb`).
    pub fn open_with_cache(
        data_dir: &Path,
        fresh: Option<&Recovered>,
        cache_bytes: usize,
    ) -> Result<Storage> {
        let location = Location::new(db_path(data_dir), None, cache_bytes);
        without_panics(&location.path, || Storage::init(location.reopen()?, fresh))
    }

    /// Opens (or creates) the database on a simulated disk, as [`Storage::open`] does on a
    /// file. Its commits are durable only once [`Storage::start`]'s loop completes their fsync.
    pub fn open_sim(disk: &SimDisk, fresh: Option<&Recovered>) -> Result<Storage> {
        let location = Location::new(
            PathBuf::from(SIM_PATH),
            Some(disk.clone()),
            DEFAULT_CACHE_MB << 20,
        );
        let storage = without_panics(&location.path, || Storage::init(location.reopen()?, fresh))?;
        // Setting a database up is part of starting the node: it is durable before the node
        // runs (as `open` on a real disk returns after its fsync).
        disk.complete_sync();
        Ok(storage)
    }

    /// The database with its write-ahead log, read back: what the log holds beyond the
    /// database is kept to apply at the next checkpoint (`open` applies it at once). Reads of
    /// decisions go to both from now on.
    pub(super) fn with_log(
        db: Database,
        location: &Location,
        log_file: Box<dyn redb::StorageBackend>,
    ) -> Result<Storage> {
        let path = location.path.clone();
        let opened = Log::open(log_file).map_err(|e| match e {
            LogError::Io(e) => StorageError::from(e).context(format!(
                "cannot read the write-ahead log {}",
                log_path(&path).display()
            )),
            damage => StorageError::Unusable(format!(
                "{}: {damage}; this node cannot tell what it promised. Move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one",
                log_path(&path).display()
            )),
        })?;
        // Reported by `init` when the node starts; a reopen after a failed append finds that
        // append's remains here every time, which says nothing new.
        debug!(
            bytes = opened.torn_bytes,
            "the write-ahead log ends in an incomplete record: dropped"
        );
        let db = Arc::new(db);
        location.reads.attach(db.clone(), &opened.ops);
        Ok(Storage {
            db,
            path,
            cache_bytes: location.cache_bytes,
            reads: location.reads.clone(),
            disk: location.disk.clone(),
            log: opened.log,
            unapplied: opened.ops,
            torn_at_open: opened.torn_bytes,
            log_generation: opened.generation,
            checkpointing: None,
        })
    }

    pub(super) fn init(storage: Storage, fresh: Option<&Recovered>) -> Result<Storage> {
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
            (None, None) => {
                return Err(StorageError::Fatal(format!(
                    "the database {} was never initialised (remove it to start afresh)",
                    path.display()
                )));
            }
            (Some(FORMAT_VERSION), _) => {}
            (Some(v), _) if (FORMAT_UPGRADABLE..FORMAT_VERSION).contains(&v) => {
                let moved = if v == 5 {
                    upgrade::from_format_5(&txn)?
                } else {
                    0
                };
                txn.open_table(META)?.insert(META_FORMAT, FORMAT_VERSION)?;
                info!(
                    records = moved,
                    "upgraded the database from format {v} to {FORMAT_VERSION} (format 6: records by the core's order of keys, the open ones listed; 7: the write-ahead log's header names where its records start)"
                );
            }
            (Some(v), _) if v < FORMAT_VERSION => {
                return Err(StorageError::Unusable(format!(
                    "the database {} has format {v}, written by a replicator that decided keys \
                     with every node's grant; this one decides with quorums (format \
                     {FORMAT_VERSION}) and cannot take over the promises that data holds. Move the \
                     data dir away and start this machine as a new node (with --bootstrap of a \
                     member)",
                    path.display()
                )));
            }
            (Some(v), _) => {
                return Err(StorageError::Fatal(format!(
                    "the database {} has format {v}, newer than the format {FORMAT_VERSION} this \
                     node reads: run a newer replicator",
                    path.display()
                )));
            }
        }
        let checkpoints = txn
            .open_table(META)?
            .get(META_CHECKPOINTS)?
            .map_or(0, |v| v.value());
        check_log_follows_database(checkpoints, storage.log_generation, &path)?;
        {
            txn.open_table(RECORDS)?;
            txn.open_table(OPEN_RECORDS)?;
            txn.open_table(DECISION_ORDER)?;
            txn.open_table(REQUESTS)?;
            txn.open_table(CAUGHT_UP)?;
            txn.open_table(META_RECORDS)?;
            txn.open_table(DEPARTED)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(META_TEXT)?;
        }
        txn.commit()?;
        if format.is_none() && !storage.unapplied.is_empty() {
            return Err(StorageError::Unusable(format!(
                "{} holds writes but the database {} was never initialised: the log belongs to a database that is gone; move the data dir away",
                log_path(&path).display(),
                path.display()
            )));
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
                if !e.is_transient() {
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
    pub(super) fn with_database_reopened(self) -> Result<Storage> {
        // Every handle on the database goes first (its file lock): the reads' one too. A read
        // that holds one for a moment makes the open fail, and the caller retries.
        self.reads.detach();
        // Only while opening: no checkpoint runs beside the appends yet.
        debug_assert!(self.checkpointing.is_none());
        let Storage {
            db,
            path,
            cache_bytes,
            reads,
            disk,
            log,
            unapplied,
            torn_at_open,
            log_generation,
            checkpointing: _,
        } = self;
        drop(db);
        let db = Arc::new(open_database(&path, disk.as_ref(), cache_bytes)?);
        reads.attach(db.clone(), &unapplied);
        Ok(Storage {
            db,
            path,
            cache_bytes,
            reads,
            disk,
            log,
            unapplied,
            torn_at_open,
            log_generation,
            checkpointing: None,
        })
    }

    /// Opens the database and its log at `location` (again after a failed write: redb refuses
    /// every write after an I/O error until it is reopened).
    pub(super) fn reopen_file(location: &Location) -> Result<Storage> {
        let path = &location.path;
        without_panics(path, || {
            let db = open_database(path, None, location.cache_bytes)?;
            let log = log_path(path);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&log)
                .map_err(|e| {
                    StorageError::from(e)
                        .context(format!("cannot open the write-ahead log {}", log.display()))
                })?;
            let file = redb::backends::FileBackend::new(file).map_err(|e| {
                StorageError::from(e)
                    .context(format!("cannot lock the write-ahead log {}", log.display()))
            })?;
            Storage::with_log(db, location, Box::new(file))
        })
    }

    /// Opens the database and its log on the simulated disk of `location`.
    pub(super) fn reopen_sim(location: &Location, disk: &SimDisk) -> Result<Storage> {
        let db = open_database(&location.path, Some(disk), location.cache_bytes)?;
        Storage::with_log(db, location, Box::new(disk.log_backend()))
    }
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
pub(super) fn check_log_follows_database(
    checkpoints: u64,
    log: Option<u64>,
    db: &Path,
) -> Result<()> {
    let follows = log.unwrap_or(0);
    let advice = "this node cannot tell what it promised. Move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one";
    if checkpoints < follows {
        return Err(StorageError::Unusable(format!(
            "the database {} is damaged or older than its write-ahead log: it holds {checkpoints} checkpoints but the log follows checkpoint {follows} (a damaged newest commit that redb rolled back, or a file restored from a copy); {advice}",
            db.display()
        )));
    }
    if checkpoints > follows + 1 {
        let log_file = log_path(db);
        let found = match log {
            Some(n) => format!("follows checkpoint {n}"),
            None => "has no header".to_string(),
        };
        return Err(StorageError::Unusable(format!(
            "the write-ahead log {} does not belong to the database {}: the database took {checkpoints} checkpoints but the log {found} (deleted, or restored from a copy); acknowledged writes may be missing, {advice}",
            log_file.display(),
            db.display()
        )));
    }
    Ok(())
}

/// Opens (or creates) the redb database at `path`, or on `disk` if it is a simulated one.
pub(super) fn open_database(
    path: &Path,
    disk: Option<&SimDisk>,
    cache_bytes: usize,
) -> Result<Database> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    match disk {
        None => builder.create(path).map_err(|e| match StorageError::from(e) {
            StorageError::Unusable(why) => StorageError::Unusable(format!(
                "the database {} is damaged (redb: {why}); move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one",
                path.display()
            )),
            other => other.context(format!("cannot open the database {}", path.display())),
        }),
        Some(disk) => builder
            .create_with_backend(disk.backend())
            .map_err(|e| {
                StorageError::from(e).context("cannot open the database on the simulated disk")
            }),
    }
}

/// The writes that record `fresh` (a state that was never on this disk), its network aside.
pub(super) fn fresh_ops(fresh: &Recovered) -> Vec<WriteOp> {
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
