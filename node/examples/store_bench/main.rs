//! redb against fjall for the node's access pattern (issue 19): N keys loaded in durable batches
//! of 4,000 records, point reads of cold keys, misses, appends.
//!
//!     cargo run --release -p replicator-node --example store_bench -- [--keys 1000000]
//!         [--value-bytes 1024] [--reads 20000] [--appends 100000] [--batch 4000]
//!         [--cache-mb 64] [--rounds 2] [--stores redb,fjall] [--settle-secs 300]
//!         [--seed 19] [--dir DIR] [--json FILE]
//!
//! Each run is a child process (this program again, with `--child`), so that its memory figures
//! are its store's alone; the stores take turns (redb, fjall, redb, fjall for two rounds) so that
//! a change in the machine's load does not fall on one side. Every store lives in one temp dir
//! (under `--dir`, default the system's), removed after its run and at the end. Cold reads need
//! root: the OS page cache is dropped before them (a run says so when it could not).
//!
//! Per run: 1. load N keys (the node's order keys: FNV-1a of `key-<i>`, then the text; records
//! of value + 90 bytes with a checksum, pseudo-random bytes) in batches, each one durable write
//! (redb: a write transaction, fjall: a write batch with its journal `fdatasync`ed); 2. the
//! bytes on disk after the load, and after the store finished its background work (fjall's
//! flushes and compactions; at most `--settle-secs`); 3. closed, page cache dropped, reopened:
//! R distinct random loaded keys read one at a time (cold), then the same again (warm); 4. R
//! keys never written (misses: the node reads one for every fresh create); 5. `--appends` new
//! keys in the same batches; 6. VmRSS and VmHWM after each phase.

mod measure;
mod records;
mod report;
mod run;
mod stores;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use run::{RunResult, Setup};
use stores::Kind;

/// What the child prints before its result, so that nothing else on its stdout is mistaken for
/// one.
const RESULT_PREFIX: &str = "store-bench-result ";

struct Args {
    keys: u64,
    value_bytes: usize,
    reads: usize,
    appends: u64,
    batch: usize,
    cache_mb: usize,
    rounds: usize,
    stores: Vec<Kind>,
    settle_secs: u64,
    seed: u64,
    dir: Option<PathBuf>,
    json: Option<PathBuf>,
    /// Set in a child: run this store in `store_dir` and print the result.
    child: Option<(Kind, PathBuf)>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut out = Args {
        keys: 1_000_000,
        value_bytes: 1024,
        reads: 20_000,
        appends: 100_000,
        batch: 4_000,
        cache_mb: 64,
        rounds: 2,
        stores: vec![Kind::Redb, Kind::Fjall],
        settle_secs: 300,
        seed: 19,
        dir: None,
        json: None,
        child: None,
    };
    let mut child_kind = None;
    let mut store_dir = None;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{}", usage()))?;
        let number = || -> Result<u64> {
            value
                .replace(['_', ','], "")
                .parse()
                .with_context(|| format!("{flag} {value:?}: not a whole number"))
        };
        match flag.as_str() {
            "--keys" => out.keys = number()?,
            "--value-bytes" => out.value_bytes = number()? as usize,
            "--reads" => out.reads = number()? as usize,
            "--appends" => out.appends = number()?,
            "--batch" => out.batch = number()? as usize,
            "--cache-mb" => out.cache_mb = number()? as usize,
            "--rounds" => out.rounds = number()? as usize,
            "--settle-secs" => out.settle_secs = number()?,
            "--seed" => out.seed = number()?,
            "--stores" => {
                out.stores = value.split(',').map(Kind::parse).collect::<Result<_>>()?;
            }
            "--dir" => out.dir = Some(PathBuf::from(value)),
            "--json" => out.json = Some(PathBuf::from(value)),
            "--child" => child_kind = Some(Kind::parse(&value)?),
            "--store-dir" => store_dir = Some(PathBuf::from(value)),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    ensure!(
        out.keys >= 1 && out.reads >= 1 && out.batch >= 1 && out.rounds >= 1,
        "--keys, --reads, --batch and --rounds must be at least 1"
    );
    ensure!(
        (16..=65_536).contains(&out.value_bytes),
        "--value-bytes must be within 16..65536"
    );
    ensure!(
        (1..=65_536).contains(&out.cache_mb),
        "--cache-mb must be within 1..65536"
    );
    ensure!(!out.stores.is_empty(), "--stores names no store");
    out.child = match (child_kind, store_dir) {
        (Some(kind), Some(dir)) => Some((kind, dir)),
        (None, None) => None,
        _ => bail!("--child and --store-dir go together"),
    };
    Ok(out)
}

fn usage() -> &'static str {
    "usage: store_bench [--keys N] [--value-bytes V] [--reads R] [--appends A] [--batch B] \
     [--cache-mb MiB] [--rounds K] [--stores redb,fjall] [--settle-secs S] [--seed S] [--dir DIR] \
     [--json FILE]"
}

fn setup(args: &Args, kind: Kind, dir: PathBuf) -> Setup {
    Setup {
        kind,
        dir,
        keys: args.keys,
        value_bytes: args.value_bytes,
        batch: args.batch,
        reads: args.reads,
        appends: args.appends,
        cache_bytes: args.cache_mb << 20,
        settle_bound: Duration::from_secs(args.settle_secs),
        seed: args.seed,
        drop_cache: true,
    }
}

fn main() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    if let Some((kind, dir)) = &args.child {
        let result = run::run(&setup(&args, *kind, dir.clone()))?;
        println!("{RESULT_PREFIX}{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("store-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot make a temp dir in {}", parent.display()))?;
    let record_bytes = args.value_bytes + records::RECORD_OVERHEAD_BYTES + 20;
    eprintln!(
        "store_bench: {} keys of {} bytes ({:.0} MiB of records), batches of {}, {} reads, \
         {} appends, cache {} MiB, {} round(s) of {:?}, stores in {} (one at a time)",
        args.keys,
        args.value_bytes,
        (args.keys * record_bytes as u64) as f64 / f64::from(1 << 20),
        args.batch,
        args.reads,
        args.appends,
        args.cache_mb,
        args.rounds,
        args.stores.iter().map(|k| k.name()).collect::<Vec<_>>(),
        temp.path().display()
    );
    let mut results: Vec<RunResult> = Vec::new();
    for round in 1..=args.rounds {
        for &kind in &args.stores {
            eprintln!("round {round}: {}", kind.name());
            let dir = temp.path().join(format!("{}-{round}", kind.name()));
            let result = run_child(&args, kind, &dir)?;
            report::print_run(round, &result);
            results.push(result);
        }
    }
    report::print_medians(&args_line(&args), &args.stores, &results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// One run in a child process; its progress goes to our stderr, its result comes back on its
/// stdout.
fn run_child(args: &Args, kind: Kind, dir: &std::path::Path) -> Result<RunResult> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["--child", kind.name(), "--store-dir"])
        .arg(dir)
        .args(["--keys", &args.keys.to_string()])
        .args(["--value-bytes", &args.value_bytes.to_string()])
        .args(["--reads", &args.reads.to_string()])
        .args(["--appends", &args.appends.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--cache-mb", &args.cache_mb.to_string()])
        .args(["--settle-secs", &args.settle_secs.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().context("cannot start a child run")?;
    let stdout = child.stdout.take().context("the child has no stdout")?;
    let mut result = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix(RESULT_PREFIX) {
            Some(json) => result = Some(serde_json::from_str::<RunResult>(json)?),
            None => println!("{line}"),
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "the {} run failed: {status}", kind.name());
    result.with_context(|| format!("the {} run printed no result", kind.name()))
}

/// The arguments that shape the numbers, for the report's heading.
fn args_line(args: &Args) -> String {
    format!(
        "--keys {} --value-bytes {} --reads {} --appends {} --batch {} --cache-mb {} --rounds {}",
        args.keys,
        args.value_bytes,
        args.reads,
        args.appends,
        args.batch,
        args.cache_mb,
        args.rounds
    )
}
