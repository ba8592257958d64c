//! The two stores compared, each set up as the node would use it: one durable write per batch
//! of records, point reads one at a time, a 64 MiB cache (`--cache-mb`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redb::ReadableDatabase;

/// The node's table of records (`storage::schema::RECORDS`).
const RECORDS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Redb,
    Fjall,
}

impl Kind {
    pub fn parse(name: &str) -> Result<Kind> {
        match name {
            "redb" => Ok(Kind::Redb),
            "fjall" => Ok(Kind::Fjall),
            other => anyhow::bail!("unknown store {other:?}: redb or fjall"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
        }
    }
}

/// What a store did while it was left alone to finish its background work.
pub struct Settled {
    /// Until the store was idle (or the bound ran out).
    pub seconds: f64,
    /// False if it was still busy when the bound ran out.
    pub idle: bool,
}

pub trait Store {
    /// Writes `records` in one durable write: when it returns, they survive a power loss.
    fn write_batch(&self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()>;

    /// Reads the record at `key` and hands its bytes to `visit`; false if there is none.
    fn get(&self, key: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<bool>;

    /// Waits (at most `bound`) until the store's background work after writes is done.
    fn settle(&self, bound: Duration) -> Result<Settled>;
}

/// Opens (or creates) the store of kind `kind` in the directory `dir`.
pub fn open(kind: Kind, dir: &Path, cache_bytes: usize) -> Result<Box<dyn Store>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(match kind {
        Kind::Redb => Box::new(Redb::open(dir, cache_bytes)?),
        Kind::Fjall => Box::new(Fjall::open(dir, cache_bytes)?),
    })
}

/// redb as the node opens it (`storage::open::open_database`): `set_cache_size`, every commit
/// durable (redb's default `Durability::Immediate`: fsync before `commit` returns).
struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path, cache_bytes: usize) -> Result<Redb> {
        let mut builder = redb::Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = builder.create(dir.join("replicator.redb"))?;
        Ok(Redb { db })
    }
}

impl Store for Redb {
    fn write_batch(&self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            for (key, value) in records {
                table.insert(key.as_slice(), value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// As the node's read of a decision (`storage::reads`): a read transaction per key.
    fn get(&self, key: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        Ok(match table.get(key)? {
            Some(value) => {
                visit(value.value());
                true
            }
            None => false,
        })
    }

    /// redb does its work in the commit: nothing is left to wait for.
    fn settle(&self, _bound: Duration) -> Result<Settled> {
        Ok(Settled {
            seconds: 0.0,
            idle: true,
        })
    }
}

/// fjall with its defaults but for the block cache: one database (its journal) and one
/// keyspace for the records. Each batch is one `WriteBatch` whose journal write is synced with
/// `fdatasync` before `commit` returns, as redb syncs its file (`sync_data`).
struct Fjall {
    db: fjall::Database,
    records: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path, cache_bytes: usize) -> Result<Fjall> {
        let db = fjall::Database::builder(dir)
            .cache_size(cache_bytes as u64)
            .open()?;
        let records = db.keyspace("records", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, records })
    }
}

/// How often `settle` looks whether fjall's flushes and compactions are done, and how long they
/// must stay done: a flush that just ended may start a compaction a moment later.
const SETTLE_POLL: Duration = Duration::from_millis(100);
const SETTLE_QUIET: Duration = Duration::from_secs(3);

impl Store for Fjall {
    fn write_batch(&self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for (key, value) in records {
            batch.insert(&self.records, key.as_slice(), value.as_slice());
        }
        batch.commit()?;
        Ok(())
    }

    fn get(&self, key: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<bool> {
        Ok(match self.records.get(key)? {
            Some(value) => {
                visit(&value);
                true
            }
            None => false,
        })
    }

    fn settle(&self, bound: Duration) -> Result<Settled> {
        let start = Instant::now();
        let mut quiet_since = None;
        while start.elapsed() < bound {
            let busy = self.db.outstanding_flushes() > 0
                || self.db.active_compactions() > 0
                || self.records.sealed_memtable_count() > 0;
            if busy {
                quiet_since = None;
            } else {
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                if quiet.elapsed() >= SETTLE_QUIET {
                    return Ok(Settled {
                        seconds: quiet.duration_since(start).as_secs_f64(),
                        idle: true,
                    });
                }
            }
            std::thread::sleep(SETTLE_POLL);
        }
        Ok(Settled {
            seconds: start.elapsed().as_secs_f64(),
            idle: false,
        })
    }
}
