//! Group commits into the write-ahead log, and checkpoints that move the logged writes into the
//! database in one transaction: beside the appends while the log file is short, in line (and
//! emptying the file) once it is long, when the node starts and when it stops.

use super::*;
use crate::wal::LOG_FILE_BYTES_MAX;

/// Once the log holds this many bytes, the next group commit starts a checkpoint: the database
/// takes every logged write in one transaction. Bounds the writes held in memory until then,
/// and the replay after a crash.
#[cfg(not(madsim))]
pub(super) const CHECKPOINT_LOG_BYTES: u64 = 1024 * 1024;
/// Under simulation, small enough that simulated nodes checkpoint (beside the appends, and in
/// line once the file is long) many times within a run.
#[cfg(madsim)]
pub(super) const CHECKPOINT_LOG_BYTES: u64 = 16 * 1024;

/// A checkpoint running beside the appends: the database takes the writes logged before
/// `covers_to` (a redb transaction of thousands of writes takes tens of milliseconds, which
/// used to stall every group commit behind it), while the log goes on taking new ones.
pub(super) struct Checkpointing {
    /// The checkpoint's number (the database records it in the same transaction).
    number: u64,
    /// Where the records it takes end in the log.
    covers_to: u64,
    run: Run,
}

/// What a checkpoint's transaction gives back: the writes it took (put back in front of the
/// ones logged since if it failed) and whether it committed.
type Applied = (Vec<WriteOp>, Result<()>);

/// The transaction itself: on an OS thread of its own in a real node; under madsim (no OS
/// threads) run when it starts, and seen as done only after a simulated while, so that group
/// commits land in the log between its commit and the header's advance, as they do for real.
#[cfg(not(madsim))]
struct Run(Option<std::thread::JoinHandle<Applied>>);
#[cfg(madsim)]
struct Run {
    applied: Option<Applied>,
    done_at: tokio::time::Instant,
}

impl Checkpointing {
    /// Starts the transaction of every write logged so far. A thread that cannot be started
    /// is an error (the caller's group commit fails and the storage reopens, as after any
    /// failed write), and then the writes stay where they were.
    fn start(storage: &mut Storage) -> Result<Checkpointing> {
        let number = storage.log_generation.unwrap_or(0) + 1;
        let covers_to = storage.log.end();
        let db = storage.db.clone();
        let path = storage.path.clone();
        let apply = move |ops: Vec<WriteOp>| {
            let result = without_panics(&path, || {
                apply_ops_to(&db, superseded_dropped(&ops), Some(number))
            });
            (ops, result)
        };
        #[cfg(not(madsim))]
        let run = {
            // The writes go to the thread once it runs: a failed start takes none of them.
            let (give, take) = std::sync::mpsc::sync_channel::<Vec<WriteOp>>(1);
            let thread = std::thread::Builder::new()
                .name("checkpoint".into())
                .spawn(move || match take.recv() {
                    Ok(ops) => apply(ops),
                    Err(_) => (
                        Vec::new(),
                        Err(StorageError::Fatal(
                            "no writes reached the checkpoint's thread".into(),
                        )),
                    ),
                })
                .map_err(|e| StorageError::from(e).context("cannot start a checkpoint's thread"))?;
            if let Err(unsent) = give.send(std::mem::take(&mut storage.unapplied)) {
                storage.unapplied = unsent.0;
                return Err(StorageError::Fatal(
                    "a checkpoint's thread ended before it took its writes".into(),
                ));
            }
            Run(Some(thread))
        };
        #[cfg(madsim)]
        let run = Run {
            applied: Some(apply(std::mem::take(&mut storage.unapplied))),
            done_at: tokio::time::Instant::now()
                + storage
                    .disk
                    .as_ref()
                    .map_or(std::time::Duration::ZERO, |d| d.fsync_delay() * 4),
        };
        Ok(Checkpointing {
            number,
            covers_to,
            run,
        })
    }

    fn is_done(&self) -> bool {
        #[cfg(not(madsim))]
        return self.run.0.as_ref().is_none_or(|t| t.is_finished());
        #[cfg(madsim)]
        return tokio::time::Instant::now() >= self.run.done_at;
    }

    /// Waits for the transaction (if it is still running) and takes what it gives back.
    pub(super) fn join(mut self) -> Applied {
        #[cfg(not(madsim))]
        let applied = self.run.0.take().map(|t| {
            t.join().unwrap_or_else(|_| {
                (
                    Vec::new(),
                    Err(StorageError::Fatal("the checkpoint thread panicked".into())),
                )
            })
        });
        #[cfg(madsim)]
        let applied = self.run.applied.take();
        applied.expect("a checkpoint is joined once")
    }
}

/// A dropped storage (the node stops, or reopens its database after a failed write) lets go
/// of the database only once its checkpoint's transaction is over: redb opens a file once.
#[cfg(not(madsim))]
impl Drop for Run {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl Storage {
    /// Makes a group of writes durable: appended to the log and synced. First the checkpoint
    /// beside the appends is finished if it is done, or one is started if the log is full (in
    /// line, emptying the file, if the file is long). On an error nothing of the group counts
    /// as written.
    pub fn commit_group(&mut self, jobs: &[PersistJob]) -> Result<()> {
        self.finish_checkpoint(false)?;
        if self.checkpointing.is_none() && self.log.len() >= CHECKPOINT_LOG_BYTES {
            if self.log.end() >= LOG_FILE_BYTES_MAX {
                self.checkpoint()?;
            } else {
                self.checkpointing = Some(Checkpointing::start(self)?);
            }
        }
        self.log.append(jobs.iter().map(|j| j.ops.as_slice()))?;
        // Before the group is reported durable: the core may read these decisions from then.
        self.reads.logged(jobs);
        self.unapplied
            .extend(jobs.iter().flat_map(|j| j.ops.iter().cloned()));
        Ok(())
    }

    /// Finishes the checkpoint running beside the appends, if there is one and it is done
    /// (`wait`: once it is). Committed, the log's header moves past the records it took
    /// (durably: the next checkpoint's number must not get ahead of the log by two) and the
    /// reads stop looking for them in the log. Failed, nothing of it counts: its writes go back
    /// in front of the ones logged since, and the error is the caller's.
    pub(super) fn finish_checkpoint(&mut self, wait: bool) -> Result<()> {
        if !self
            .checkpointing
            .as_ref()
            .is_some_and(|c| wait || c.is_done())
        {
            return Ok(());
        }
        let checkpointing = self.checkpointing.take().expect("checked above");
        let (number, covers_to) = (checkpointing.number, checkpointing.covers_to);
        let (mut taken, result) = checkpointing.join();
        if let Err(e) = result {
            taken.append(&mut self.unapplied);
            self.unapplied = taken;
            return Err(e);
        }
        // The database holds them now (reads look in the log's decisions first, then here).
        self.reads.checkpointed(&self.unapplied);
        self.log.advance(number, covers_to)?;
        self.log_generation = Some(number);
        debug!(
            checkpoint = number,
            records_from = covers_to,
            "checkpoint taken beside the appends: the log's records start after it"
        );
        Ok(())
    }

    /// The database takes every logged write in one durable transaction (after the checkpoint
    /// beside the appends, if one runs); then the log is emptied. A crash in between replays
    /// writes the database already holds, which changes nothing: every write op sets a value
    /// (or keeps a maximum), so applying a sequence again in order ends in the same state.
    ///
    /// The transaction also records the checkpoint's number, and the emptied log names it in
    /// its header: a database that later lost this transaction is refused when it is opened
    /// ([`check_log_follows_database`]). A checkpoint whose log could not be emptied is taken
    /// again under the same number, so the database is never more than one ahead of the log.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.finish_checkpoint(true)?;
        let number = self.log_generation.unwrap_or(0) + 1;
        self.apply_ops(superseded_dropped(&self.unapplied), Some(number))?;
        self.reads.checkpointed(&[]);
        self.log.clear(number)?;
        self.log_generation = Some(number);
        self.unapplied.clear();
        debug!(
            checkpoint = number,
            "checkpoint taken in line: the log is empty"
        );
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
    pub(super) fn apply_ops<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a WriteOp>,
        checkpoint: Option<u64>,
    ) -> Result<()> {
        apply_ops_to(&self.db, ops, checkpoint)
    }
}

/// Applies `ops` to `db` in one durable transaction, which records checkpoint number
/// `checkpoint` if it is one.
fn apply_ops_to<'a>(
    db: &Database,
    ops: impl IntoIterator<Item = &'a WriteOp>,
    checkpoint: Option<u64>,
) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut records = txn.open_table(RECORDS)?;
        let mut open_records = txn.open_table(OPEN_RECORDS)?;
        let mut decision_order = txn.open_table(DECISION_ORDER)?;
        let mut requests = txn.open_table(REQUESTS)?;
        let mut departed = txn.open_table(DEPARTED)?;
        let mut members = txn.open_table(MEMBERS)?;
        let mut caught_up = txn.open_table(CAUGHT_UP)?;
        let mut meta = txn.open_table(META)?;
        let mut meta_records = txn.open_table(META_RECORDS)?;
        let mut last_decision = 0;
        if let Some(number) = checkpoint {
            meta.insert(META_CHECKPOINTS, number)?;
        }
        for op in ops {
            match op {
                WriteOp::PutKey { key, state } => {
                    let text = key.as_str().as_bytes();
                    let at = order_key(key.as_str());
                    let at = at.as_slice();
                    records.insert(at, seal(text, &encode_record(state)?).as_slice())?;
                    match state {
                        DurableKey::Stored { seq, .. } => {
                            open_records.remove(at)?;
                            decision_order.insert(*seq, at)?;
                            last_decision = last_decision.max(*seq);
                        }
                        DurableKey::Open { .. } => {
                            open_records.insert(at, ())?;
                        }
                    }
                }
                WriteOp::RemoveKey { key } => {
                    let at = order_key(key.as_str());
                    records.remove(at.as_slice())?;
                    open_records.remove(at.as_slice())?;
                }
                WriteOp::BallotFloor(floor) => {
                    let k = META_FLOOR.as_bytes();
                    let old = meta_records
                        .get(META_FLOOR)?
                        .and_then(|v| open_record(k, v.value()).map(<[u8]>::to_vec))
                        .and_then(|b| decode_record::<replicator_core::Ballot>(&b).ok());
                    if old.is_none_or(|old| *floor > old) {
                        meta_records
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
        if last_decision > 0 {
            keep_max(&mut meta, META_LAST_DECISION, last_decision)?;
        }
    }
    // Durability::Immediate is redb's default: commit returns after fsync.
    txn.commit()?;
    Ok(())
}

/// `ops` without the writes a later one in `ops` overwrites: of the writes to one key or one
/// request record, only the last matters (each sets or removes its row, and the tables are
/// independent). Under load most keys are written twice between checkpoints (accepted, then
/// stored): the first write is skipped. Every other op is kept, in order (membership writes
/// depend on each other's order; the others keep a maximum).
pub(super) fn superseded_dropped(ops: &[WriteOp]) -> Vec<&WriteOp> {
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

/// Raises a counter in the meta table to `value`, never lowering it (ceilings only grow, so a
/// replayed log applies to the same end state).
pub(super) fn keep_max(meta: &mut redb::Table<&str, u64>, name: &str, value: u64) -> Result<()> {
    let old = meta.get(name)?.map(|v| v.value()).unwrap_or(0);
    meta.insert(name, old.max(value))?;
    Ok(())
}
