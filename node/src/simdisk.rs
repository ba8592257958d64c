//! A simulated disk under the real redb: the disk model of transport-sim, for the node.
//!
//! redb reads and writes through a [`redb::StorageBackend`], and so does the storage's
//! write-ahead log. A [`SimDisk`] holds two files, the database ([`SimDisk::backend`]) and the
//! log ([`SimDisk::log_backend`]): every write lands in its file's volatile image at once
//! (reads see it), and becomes durable only when an fsync asked for on that file completes
//! ([`SimDisk::complete_sync`], which the storage's group commit calls after the simulated
//! fsync delay). [`SimDisk::crash`] drops every write that was
//! not durable, as a power cut does, and cuts off the backends of the killed process: a
//! database still held by the dead node's tasks can no longer touch the disk.
//!
//! So under madsim the node runs its real storage code (the same `open`, `apply`, `load` and
//! group commit over the same redb) and a kill loses exactly what a real crash may lose.
//! Nothing here depends on madsim; the normal build tests it against redb.

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A disk that outlives the node process using it (the simulator keeps one per node).
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Disk>>,
    /// How long an fsync takes (drawn per group commit under madsim).
    fsync: Range<Duration>,
}

/// The files of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileName {
    Database = 0,
    Log = 1,
}

#[derive(Default)]
struct Disk {
    files: [Image; 2],
    /// Bumped by every crash: backends of an older generation belong to a dead process.
    generation: u64,
    /// Every write and fsync fails (a full or failing disk); reads still work.
    failing: bool,
    /// Reads of decisions fail (a failing disk's I/O errors): the storage's reads for the core
    /// (`storage/reads.rs`) refuse while it is set.
    reads_failing: bool,
    stats: DiskStats,
}

#[derive(Default)]
struct Image {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What the running process reads: `durable` plus every pending change.
    current: Vec<u8>,
    /// Changes since the last completed fsync, in order.
    pending: Vec<Change>,
    /// `pending[..requested]` were written before the last fsync asked for on this file.
    requested: usize,
}

enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// What happened to a disk, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub fsyncs_completed: u64,
    pub crashes: u64,
    /// Writes and fsyncs refused while the disk was failing.
    pub writes_refused: u64,
    /// Writes (redb page writes and resizes) that a crash dropped because no fsync covered them.
    pub changes_lost: u64,
}

impl SimDisk {
    /// An empty disk whose fsyncs take between `fsync.start` and `fsync.end`.
    pub fn new(fsync: Range<Duration>) -> SimDisk {
        assert!(fsync.start <= fsync.end, "fsync latency range is reversed");
        SimDisk {
            inner: Arc::new(Mutex::new(Disk::default())),
            fsync,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding the lock leaves the disk as consistent as a crash would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backend for a database opened by the current process (until the next crash).
    pub fn backend(&self) -> SimBackend {
        self.file(FileName::Database)
    }

    /// A backend for the write-ahead log of that database, in a file of its own.
    pub fn log_backend(&self) -> SimBackend {
        self.file(FileName::Log)
    }

    fn file(&self, file: FileName) -> SimBackend {
        SimBackend {
            disk: self.inner.clone(),
            file,
            generation: self.lock().generation,
        }
    }

    /// How long the next fsync takes: drawn from the simulator's seeded randomness under
    /// madsim, the shortest latency otherwise.
    pub fn fsync_delay(&self) -> Duration {
        #[cfg(madsim)]
        {
            if self.fsync.start < self.fsync.end {
                use madsim::rand::Rng;
                return madsim::rand::thread_rng().gen_range(self.fsync.clone());
            }
        }
        self.fsync.start
    }

    /// The fsyncs asked for last (one per file) have completed: everything written to a file
    /// before its fsync is durable.
    pub fn complete_sync(&self) {
        let mut disk = self.lock();
        for image in &mut disk.files {
            let done: Vec<Change> = image.pending.drain(..image.requested).collect();
            for change in &done {
                change.apply(&mut image.durable);
            }
            image.requested = 0;
        }
        disk.stats.fsyncs_completed += 1;
    }

    /// Power cut: every write no completed fsync covers is lost, and the backends handed out so
    /// far stop working (the process that held them is dead).
    pub fn crash(&self) {
        let mut disk = self.lock();
        let mut lost = 0;
        for image in &mut disk.files {
            lost += image.pending.len() as u64;
            image.pending.clear();
            image.requested = 0;
            image.current = image.durable.clone();
        }
        disk.generation += 1;
        disk.stats.crashes += 1;
        disk.stats.changes_lost += lost;
    }

    /// From now on every write and fsync fails (`true`: a full or failing disk), or succeeds
    /// again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    pub fn is_failing(&self) -> bool {
        self.lock().failing
    }

    /// From now on the storage's reads of decisions fail (`true`), or work again.
    pub fn set_reads_failing(&self, failing: bool) {
        self.lock().reads_failing = failing;
    }

    pub fn reads_failing(&self) -> bool {
        self.lock().reads_failing
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Whether a write is waiting for an fsync (a crash now would lose something).
    pub fn has_unsynced(&self) -> bool {
        self.lock().files.iter().any(|f| !f.pending.is_empty())
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = self.lock();
        let db = &disk.files[FileName::Database as usize];
        let log = &disk.files[FileName::Log as usize];
        f.debug_struct("SimDisk")
            .field("durable_bytes", &db.durable.len())
            .field("current_bytes", &db.current.len())
            .field("pending", &db.pending.len())
            .field("log_durable_bytes", &log.durable.len())
            .field("log_pending", &log.pending.len())
            .field("generation", &disk.generation)
            .finish()
    }
}

impl Change {
    fn apply(&self, image: &mut Vec<u8>) {
        match self {
            Change::Write { offset, data } => {
                let start = *offset as usize;
                let end = start + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[start..end].copy_from_slice(data);
            }
            Change::SetLen(len) => image.resize(*len as usize, 0),
        }
    }
}

/// The process's view of one file of a [`SimDisk`], handed to redb (or the log).
pub struct SimBackend {
    disk: Arc<Mutex<Disk>>,
    file: FileName,
    generation: u64,
}

impl SimBackend {
    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        if disk.generation != self.generation {
            return Err(io::Error::other("the process using this disk was killed"));
        }
        Ok(disk)
    }

    /// The disk for a write or an fsync: refused while it is failing.
    fn lock_for_write(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let mut disk = self.lock()?;
        if disk.failing {
            disk.stats.writes_refused += 1;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        Ok(disk)
    }

    fn image(disk: &mut Disk, file: FileName) -> &mut Image {
        &mut disk.files[file as usize]
    }
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBackend")
            .field("file", &self.file)
            .field("generation", &self.generation)
            .finish()
    }
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        let mut disk = self.lock()?;
        Ok(Self::image(&mut disk, self.file).current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut disk = self.lock()?;
        let image = Self::image(&mut disk, self.file);
        let start = offset as usize;
        let end = start
            .checked_add(out.len())
            .filter(|end| *end <= image.current.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past the end"))?;
        out.copy_from_slice(&image.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.lock_for_write()?;
        let image = Self::image(&mut disk, self.file);
        let change = Change::SetLen(len);
        change.apply(&mut image.current);
        image.pending.push(change);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // The fsync starts here; it completes (and the writes become durable) only when the
        // storage's group commit calls `complete_sync` after the simulated latency.
        let mut disk = self.lock_for_write()?;
        let image = Self::image(&mut disk, self.file);
        image.requested = image.pending.len();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.lock_for_write()?;
        let image = Self::image(&mut disk, self.file);
        let change = Change::Write {
            offset,
            data: data.to_vec(),
        };
        change.apply(&mut image.current);
        image.pending.push(change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn put(db: &Database, k: u64, v: u64) {
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(k, v).unwrap();
        txn.commit().unwrap();
    }

    fn get(db: &Database, k: u64) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let Ok(table) = txn.open_table(T) else {
            return None;
        };
        table.get(k).unwrap().map(|v| v.value())
    }

    fn open(disk: &SimDisk) -> Database {
        Database::builder()
            .create_with_backend(disk.backend())
            .unwrap()
    }

    /// A commit whose fsync completed survives a crash; one whose fsync did not is lost, and
    /// redb opens the surviving image at the last durable commit.
    #[test]
    fn a_crash_loses_exactly_the_commits_no_completed_fsync_covers() {
        let disk = SimDisk::new(Duration::ZERO..Duration::ZERO);
        let db = open(&disk);
        put(&db, 1, 10);
        disk.complete_sync();
        put(&db, 2, 20);
        assert!(disk.has_unsynced());
        assert_eq!(get(&db, 2), Some(20), "the process reads its own writes");
        disk.crash();
        drop(db); // the dead process's database can no longer write
        let db = open(&disk);
        assert_eq!(get(&db, 1), Some(10));
        assert_eq!(get(&db, 2), None, "the unsynced commit is gone");
        put(&db, 3, 30);
        disk.complete_sync();
        drop(db);
        let db = open(&disk);
        assert_eq!((get(&db, 1), get(&db, 3)), (Some(10), Some(30)));
        let stats = disk.stats();
        assert_eq!(stats.crashes, 1);
        assert!(stats.changes_lost > 0);
    }

    /// A failing disk refuses commits and keeps what was durable; once it works again, redb
    /// (reopened, as the storage does after an I/O error) commits on top of it.
    #[test]
    fn a_failing_disk_refuses_writes_and_recovers() {
        let disk = SimDisk::new(Duration::ZERO..Duration::ZERO);
        let db = open(&disk);
        put(&db, 1, 10);
        disk.complete_sync();
        disk.set_failing(true);
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(2, 20).unwrap();
        assert!(txn.commit().is_err(), "a commit on a failing disk fails");
        drop(db);
        disk.set_failing(false);
        let db = open(&disk);
        assert_eq!((get(&db, 1), get(&db, 2)), (Some(10), None));
        put(&db, 3, 30);
        disk.complete_sync();
        disk.crash();
        drop(db);
        let db = open(&disk);
        assert_eq!((get(&db, 1), get(&db, 3)), (Some(10), Some(30)));
        assert!(disk.stats().writes_refused > 0);
    }

    /// Crashes at every point of a series of commits always leave a database redb opens, with
    /// a prefix of the commits whose fsync completed.
    #[test]
    fn every_crash_point_leaves_a_durable_prefix() {
        for crash_after in 0..6u64 {
            let disk = SimDisk::new(Duration::ZERO..Duration::ZERO);
            let db = open(&disk);
            for k in 0..6u64 {
                put(&db, k, k + 100);
                if k < crash_after {
                    disk.complete_sync();
                }
            }
            disk.crash();
            drop(db);
            let db = open(&disk);
            for k in 0..6u64 {
                let expected = (k < crash_after).then_some(k + 100);
                assert_eq!(get(&db, k), expected, "crash after {crash_after}, key {k}");
            }
        }
    }
}
