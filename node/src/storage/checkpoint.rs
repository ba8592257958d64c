//! Group commits into the write-ahead log, and checkpoints that move the logged writes into the
//! database in one transaction: beside the appends while the log file is short, in line (and
//! emptying the file) once it is long, when the node starts and when it stops.

use super::apply::{apply_ops_to, superseded_dropped};
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
}
