//! What the benchmark reads off the process and the machine: latency percentiles, memory, the
//! bytes a store occupies, and the OS page cache dropped before cold reads.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Latencies of one read phase, in milliseconds (nearest rank).
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rank = |p: f64| {
            let at = (p * samples.len() as f64).ceil() as usize;
            ms(samples[at.clamp(1, samples.len()) - 1])
        };
        let total: Duration = samples.iter().sum();
        Latency {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            p999_ms: rank(0.999),
            mean_ms: ms(total) / samples.len() as f64,
        }
    }
}

/// This process's resident memory now and at its peak, in MiB (/proc/self/status).
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct Memory {
    pub rss_mib: f64,
    pub hwm_mib: f64,
}

impl Memory {
    pub fn now() -> Result<Memory> {
        let status = std::fs::read_to_string("/proc/self/status")
            .context("cannot read /proc/self/status (this benchmark needs Linux)")?;
        let field = |name: &str| -> Result<f64> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .with_context(|| format!("no {name} in /proc/self/status"))?;
            let kib: f64 = line
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("unreadable {name} in /proc/self/status: {line:?}"))?;
            Ok(kib / 1024.0)
        };
        Ok(Memory {
            rss_mib: field("VmRSS:")?,
            hwm_mib: field("VmHWM:")?,
        })
    }
}

/// The bytes of every file under `dir`: their lengths (as `ls` and the capacity bench count
/// them) and the blocks the file system gave them (as `du` counts them), in MiB.
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct DiskUse {
    pub files_mib: f64,
    pub allocated_mib: f64,
}

impl DiskUse {
    pub fn of(dir: &Path) -> Result<DiskUse> {
        use std::os::unix::fs::MetadataExt;
        let mut length = 0u64;
        let mut blocks = 0u64;
        let mut pending = vec![dir.to_path_buf()];
        while let Some(at) = pending.pop() {
            for entry in
                std::fs::read_dir(&at).with_context(|| format!("cannot list {}", at.display()))?
            {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    pending.push(entry.path());
                } else {
                    length += meta.len();
                    blocks += meta.blocks();
                }
            }
        }
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Ok(DiskUse {
            files_mib: mib(length),
            allocated_mib: mib(blocks * 512),
        })
    }
}

/// Writes dirty pages out and drops the OS page cache, so that the next reads go to the disk.
/// Needs root; the error says why it could not.
pub fn drop_os_page_cache() -> Result<()> {
    let synced = std::process::Command::new("sync")
        .status()
        .context("cannot run `sync`")?;
    anyhow::ensure!(synced.success(), "`sync` failed: {synced}");
    std::fs::write("/proc/sys/vm/drop_caches", "1\n")
        .context("cannot write /proc/sys/vm/drop_caches (run as root for cold reads)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50_ms, l.p99_ms, l.p999_ms), (500.0, 990.0, 999.0));
        assert_eq!(l.mean_ms, 500.5);
    }
}
