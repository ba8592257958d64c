//! One store through every phase, in this process: load, settle, cold and warm reads, misses,
//! appends. What each phase found is in [`RunResult`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use crate::measure::{DiskUse, Latency, Memory, drop_os_page_cache};
use crate::records::{distinct_sample, record, record_is_intact};
use crate::stores::{Kind, Store, open};

/// What one run measures on.
#[derive(Clone, Debug)]
pub struct Setup {
    pub kind: Kind,
    /// The store's directory (removed at the end of the run).
    pub dir: PathBuf,
    pub keys: u64,
    pub value_bytes: usize,
    pub batch: usize,
    pub reads: usize,
    pub appends: u64,
    pub cache_bytes: usize,
    pub settle_bound: Duration,
    pub seed: u64,
    /// Drop the OS page cache before the cold reads (needs root; off in the tests).
    pub drop_cache: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct RunResult {
    pub store: String,
    pub load_s: f64,
    pub load_keys_per_s: f64,
    pub memory_after_load: Memory,
    pub disk_after_load: DiskUse,
    pub settle_s: f64,
    pub settled: bool,
    pub disk_after_settle: DiskUse,
    /// Why the cold reads may not have been cold (the page cache could not be dropped).
    pub cache_drop_error: Option<String>,
    pub reopen_s: f64,
    pub memory_after_reopen: Memory,
    pub cold: Latency,
    pub memory_after_cold: Memory,
    pub warm: Latency,
    pub memory_after_warm: Memory,
    pub misses: Latency,
    pub memory_after_misses: Memory,
    pub append_s: f64,
    pub append_keys_per_s: f64,
    pub memory_after_appends: Memory,
    pub disk_after_appends: DiskUse,
}

pub fn run(setup: &Setup) -> Result<RunResult> {
    let result = run_phases(setup);
    let removed = std::fs::remove_dir_all(&setup.dir);
    let result = result?;
    removed?;
    Ok(result)
}

fn run_phases(setup: &Setup) -> Result<RunResult> {
    let mut out = RunResult {
        store: setup.kind.name().to_string(),
        ..RunResult::default()
    };
    let progress = |what: &str| eprintln!("  [{}] {what}", setup.kind.name());

    // 1. Load, then 2. what it occupies, before and after its background work.
    {
        let store = open(setup.kind, &setup.dir, setup.cache_bytes)?;
        progress(&format!("loading {} keys", setup.keys));
        out.load_s = write_keys(store.as_ref(), 0..setup.keys, setup)?.as_secs_f64();
        out.load_keys_per_s = setup.keys as f64 / out.load_s;
        out.memory_after_load = Memory::now()?;
        out.disk_after_load = DiskUse::of(&setup.dir)?;
        progress("settling");
        let settled = store.settle(setup.settle_bound)?;
        out.settle_s = settled.seconds;
        out.settled = settled.idle;
        out.disk_after_settle = DiskUse::of(&setup.dir)?;
    }

    // 3. Cold reads: closed, OS page cache dropped, reopened; then the same keys warm.
    if setup.drop_cache
        && let Err(e) = drop_os_page_cache()
    {
        progress(&format!("cold reads are NOT cold: {e:#}"));
        out.cache_drop_error = Some(format!("{e:#}"));
    }
    let opened = Instant::now();
    let store = open(setup.kind, &setup.dir, setup.cache_bytes)?;
    out.reopen_s = opened.elapsed().as_secs_f64();
    out.memory_after_reopen = Memory::now()?;
    let present = distinct_sample(setup.seed, setup.reads, setup.keys);
    progress(&format!("{} cold reads", present.len()));
    out.cold = read_keys(store.as_ref(), &present, setup, true)?;
    out.memory_after_cold = Memory::now()?;
    out.warm = read_keys(store.as_ref(), &present, setup, true)?;
    out.memory_after_warm = Memory::now()?;

    // 4. Misses: keys never written (numbers past the loaded and the appended ones).
    let first_absent = setup.keys + setup.appends;
    let absent: Vec<u64> = distinct_sample(setup.seed ^ 1, setup.reads, setup.keys)
        .into_iter()
        .map(|n| first_absent + n)
        .collect();
    progress(&format!("{} misses", absent.len()));
    out.misses = read_keys(store.as_ref(), &absent, setup, false)?;
    out.memory_after_misses = Memory::now()?;

    // 5. Appends of new keys to the loaded store.
    progress(&format!("appending {} keys", setup.appends));
    let appended = setup.keys..setup.keys + setup.appends;
    out.append_s = write_keys(store.as_ref(), appended, setup)?.as_secs_f64();
    out.append_keys_per_s = setup.appends as f64 / out.append_s;
    out.memory_after_appends = Memory::now()?;
    drop(store);
    out.disk_after_appends = DiskUse::of(&setup.dir)?;
    Ok(out)
}

/// Writes keys `numbers` in durable batches of `setup.batch`; the time the store took (making
/// the records is not counted).
fn write_keys(store: &dyn Store, numbers: std::ops::Range<u64>, setup: &Setup) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    let mut batch = Vec::with_capacity(setup.batch);
    let mut next = numbers.start;
    while next < numbers.end {
        let end = numbers.end.min(next + setup.batch as u64);
        batch.clear();
        batch.extend((next..end).map(|i| record(i, setup.value_bytes)));
        let started = Instant::now();
        store.write_batch(&batch)?;
        spent += started.elapsed();
        next = end;
    }
    Ok(spent)
}

/// Reads keys `numbers` one at a time, checking each is there (and intact) or absent as
/// `present` says.
fn read_keys(store: &dyn Store, numbers: &[u64], setup: &Setup, present: bool) -> Result<Latency> {
    let mut samples = Vec::with_capacity(numbers.len());
    let mut damaged = 0usize;
    let mut wrong = 0usize;
    for &n in numbers {
        // Made as the node makes it for every read (`order_key`), so it is timed.
        let started = Instant::now();
        let key = crate::records::order_key(&crate::records::key_text(n));
        let found = store.get(&key, &mut |sealed| {
            if !record_is_intact(&key, sealed) {
                damaged += 1;
            }
        })?;
        samples.push(started.elapsed());
        if found != present {
            wrong += 1;
        }
    }
    let expected = if present { "found" } else { "absent" };
    ensure!(
        wrong == 0 && damaged == 0,
        "{}: {wrong} of {} keys were not {expected}, {damaged} failed their checksum",
        setup.kind.name(),
        numbers.len()
    );
    Ok(Latency::of(&mut samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(kind: Kind, dir: &std::path::Path) -> Setup {
        Setup {
            kind,
            dir: dir.join(kind.name()),
            keys: 3_000,
            value_bytes: 100,
            batch: 1_000,
            reads: 500,
            appends: 1_500,
            cache_bytes: 1 << 20,
            settle_bound: Duration::from_secs(30),
            seed: 7,
            drop_cache: false,
        }
    }

    /// Every phase runs on both stores: the reads find every loaded key intact and none of the
    /// absent ones (a read that did not would fail the run), and the store is removed after.
    #[test]
    fn both_stores_run_every_phase() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [Kind::Redb, Kind::Fjall] {
            let setup = tiny(kind, dir.path());
            let result = run(&setup).unwrap();
            assert!(result.load_keys_per_s > 0.0 && result.append_keys_per_s > 0.0);
            assert!(result.disk_after_load.files_mib > 0.0);
            assert!(result.cold.p50_ms > 0.0 && result.misses.p50_ms > 0.0);
            assert!(result.memory_after_appends.rss_mib > 0.0);
            assert!(
                !setup.dir.exists(),
                "{} was not removed",
                setup.dir.display()
            );
        }
    }

    /// A read phase fails when a key is not where the phase expects it.
    #[test]
    fn a_missing_key_fails_the_reads() {
        let dir = tempfile::tempdir().unwrap();
        let setup = tiny(Kind::Redb, dir.path());
        let store = open(setup.kind, &setup.dir, setup.cache_bytes).unwrap();
        write_keys(store.as_ref(), 0..10, &setup).unwrap();
        assert!(read_keys(store.as_ref(), &[3, 9], &setup, true).is_ok());
        assert!(read_keys(store.as_ref(), &[3, 10], &setup, true).is_err());
        assert!(read_keys(store.as_ref(), &[10, 11], &setup, false).is_ok());
        assert!(read_keys(store.as_ref(), &[9], &setup, false).is_err());
    }
}
