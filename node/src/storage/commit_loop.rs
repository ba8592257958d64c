//! The group-commit loop: an OS thread in a real node, a task under madsim; gathers queued
//! writes into groups, commits them, retries on a full disk, and reports what is durable.

use super::*;

/// How often a write that failed for want of space (or another I/O error) is retried.
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The most `Persist` outputs folded into one transaction (bounds one group commit).
pub(super) const GROUP_PERSISTS_MAX: usize = 4096;

/// How long a lazy write waits for a barrier write to share its commit before it is committed
/// on its own. Bounds what a crash can lose of the lazy writes (they are safe to lose, but a
/// restart then learns those decisions again) and how long a held answer that needs them
/// waits if the core did not ask for a sync.
pub const LAZY_SYNC_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

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

/// One `Persist` output, queued for the storage thread.
pub struct PersistJob {
    pub write: WriteId,
    pub ops: Vec<WriteOp>,
    pub urgency: Urgency,
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

/// Where a database lives, to open it again after a failed write, with the reads of
/// decisions that go to whichever copy is open.
#[derive(Clone)]
pub(super) struct Location {
    pub(super) path: PathBuf,
    pub(super) disk: Option<SimDisk>,
    pub(super) cache_bytes: usize,
    pub(super) reads: Arc<super::reads::ReadSide>,
}

impl Location {
    pub(super) fn new(path: PathBuf, disk: Option<SimDisk>, cache_bytes: usize) -> Location {
        Location {
            reads: Arc::new(super::reads::ReadSide::new(path.clone(), disk.clone())),
            path,
            disk,
            cache_bytes,
        }
    }

    pub(super) fn reopen(&self) -> Result<Storage> {
        match &self.disk {
            None => Storage::reopen_file(self),
            Some(disk) => Storage::reopen_sim(self, disk),
        }
    }
}

impl Storage {
    /// Starts the group commit loop: on its own OS thread, or under madsim as a task of the
    /// current node (a kill of the node stops it wherever it is, like a crash).
    pub fn start(self, counters: Arc<CommitCounters>) -> Result<StorageHandle> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
        #[cfg(not(madsim))]
        let worker = {
            // Not the disk's error: the node cannot run without its storage thread.
            let cannot_start = |e: std::io::Error| {
                StorageError::Fatal(format!("cannot start the storage thread: {e}"))
            };
            // The thread's own runtime only waits: for the queue (with a lazy write's
            // deadline) and between retries. Nothing else runs on it.
            let waiter = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(cannot_start)?;
            let thread = std::thread::Builder::new()
                .name("storage".into())
                .spawn(move || waiter.block_on(self.commit_loop(queue, durable_tx, counters)))
                .map_err(cannot_start)?;
            StorageWorker::Thread(thread)
        };
        #[cfg(madsim)]
        let worker =
            StorageWorker::Task(tokio::spawn(self.commit_loop(queue, durable_tx, counters)));
        Ok(StorageHandle {
            jobs,
            durable,
            worker,
        })
    }

    /// The group-commit loop, until `jobs` closes: one group at a time, retried every
    /// [`RETRY_INTERVAL`] while the disk refuses it, reported durable once committed (on a
    /// simulated disk, once its simulated fsync has completed; meanwhile the next group queues
    /// up).
    pub(super) async fn commit_loop(
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
            counters.committed(group_commit(&batch), started.elapsed());
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

    pub(super) fn location(&self) -> Location {
        Location {
            path: self.path.clone(),
            disk: self.disk.clone(),
            cache_bytes: self.cache_bytes,
            reads: self.reads.clone(),
        }
    }
}

/// Gathers the next group to commit into `batch` (empty on entry): at least one job, and every
/// job queued behind it, until one of them is a barrier write, the group is full, the first
/// lazy job has waited [`LAZY_SYNC_AFTER`], or the queue closed. `false` once the queue closed
/// with nothing left to commit.
pub(super) async fn next_group(
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
pub(super) fn group_ready(batch: &[PersistJob]) -> bool {
    batch.len() >= GROUP_PERSISTS_MAX || batch.iter().any(|j| j.urgency == Urgency::Barrier)
}

/// Adds every job already queued to `batch`, up to the group limit.
pub(super) fn take_queued(
    jobs: &mut mpsc::UnboundedReceiver<PersistJob>,
    batch: &mut Vec<PersistJob>,
) {
    while batch.len() < GROUP_PERSISTS_MAX {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// One attempt to commit `batch` in one transaction, on the database opened again if the last
/// attempt failed (redb refuses every write after an I/O error until it is reopened).
pub(super) fn commit_once(
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
        // Reopened at the next attempt: every handle on it goes (its file lock).
        location.reads.detach();
        *storage = None;
    }
    result
}

/// A commit failed: `Err` if the database is corrupt or the write can never succeed (the node
/// stops); otherwise the failure can pass (no space, I/O), so the group is retried after
/// [`RETRY_INTERVAL`], and the driver is told writes are stalled.
pub(super) fn failed(
    e: StorageError,
    stalled: &mut bool,
    durable: &watch::Sender<Durable>,
) -> std::result::Result<(), String> {
    if !e.is_transient() {
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
pub(super) fn committed_group(
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
pub(super) fn close(storage: Option<Storage>, location: &Location) {
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

/// What a group commit of `batch` counts in the metrics.
pub(super) fn group_commit(batch: &[PersistJob]) -> crate::metrics::GroupCommit {
    crate::metrics::GroupCommit {
        writes: batch.len() as u64,
        lazy_writes: batch.iter().filter(|j| j.urgency == Urgency::Lazy).count() as u64,
        ops: batch.iter().map(|j| j.ops.len() as u64).sum(),
    }
}
