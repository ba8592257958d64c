//! `replicator bench`: concurrent PUTs against one or more nodes; ops/s, latency percentiles
//! and counts by outcome, with a live progress line on stderr.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hyper::Method;
use tokio::sync::Mutex;

use crate::client::{HttpClient, store_url};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A node's HTTP address; give several to spread the load (round robin per worker).
    #[arg(long = "node", default_value = crate::DEFAULT_NODE_URL)]
    pub nodes: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Run for this many seconds (default 10, unless --count is given).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Stop after this many requests.
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// The share of PUTs (0..1) that go to a small set of contested keys, so that writers from
    /// several nodes meet (Busy/Exists) instead of each writing a fresh key.
    #[arg(long, default_value_t = 0.0)]
    pub conflict_share: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// The nodes' API token, for nodes started with --api-token-writes.
    #[arg(long, env = "REPLICATOR_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Results {
    latencies_us: Vec<u64>,
    outcomes: BTreeMap<String, u64>,
}

pub async fn main(args: BenchArgs) -> ExitCode {
    if args.concurrency == 0 || !(0.0..=1.0).contains(&args.conflict_share) {
        eprintln!("error: --concurrency must be at least 1 and --conflict-share within 0..1");
        return ExitCode::from(2);
    }
    let duration = match (args.count, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(Duration::from_secs(d.unwrap_or(10))),
    };
    // One client (one connection pool) per worker, each with the token if there is one.
    let node_arg = crate::NodeArg {
        node: String::new(),
        token_file: args.token_file.clone(),
    };
    if let Err(e) = HttpClient::for_node(&node_arg) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let run = u64::from_le_bytes(seed) % 1_000_000_000;
    let value = vec![b'x'; args.value_bytes];
    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Results::default()));
    let contested = (args.concurrency as u64).max(4);
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let node = args.nodes[w % args.nodes.len()].clone();
        let (issued, done, results, value, client) = (
            issued.clone(),
            done.clone(),
            results.clone(),
            value.clone(),
            HttpClient::for_node(&node_arg).expect("checked above"),
        );
        let count = args.count;
        let share = args.conflict_share;
        workers.push(tokio::spawn(async move {
            let mut rng =
                (u64::from_le_bytes(seed) ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
            loop {
                if let Some(d) = duration
                    && started.elapsed() >= d
                {
                    break;
                }
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = count
                    && i >= c
                {
                    break;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = if (rng % 10_000) as f64 / 10_000.0 < share {
                    // Contested keys are shared by all workers, a few fresh ones per second.
                    let epoch = started.elapsed().as_secs();
                    format!("bench-{run}-hot-{epoch}-{}", (rng >> 20) % contested)
                } else {
                    format!("bench-{run}-{w}-{i}")
                };
                let t = Instant::now();
                let outcome = match client
                    .request(Method::PUT, &store_url(&node, &key), value.clone(), None)
                    .await
                {
                    Ok(r) => match r.status.as_u16() {
                        201 => "stored".to_string(),
                        _ => r
                            .json()
                            .get("error")
                            .and_then(|e| e.as_str())
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("http_{}", r.status.as_u16())),
                    },
                    Err(_) => "connection_error".to_string(),
                };
                let us = t.elapsed().as_micros() as u64;
                if outcome == "connection_error" {
                    // A node that is down: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut r = results.lock().await;
                r.latencies_us.push(us);
                *r.outcomes.entry(outcome).or_default() += 1;
                drop(r);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done.load(Ordering::Relaxed);
                eprint!(
                    "\r{:>6.1}s  {d} requests  {} ops/s      ",
                    started.elapsed().as_secs_f64(),
                    d - last
                );
                last = d;
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    progress.abort();
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    let mut r = results.lock().await;
    r.latencies_us.sort_unstable();
    let n = r.latencies_us.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        r.latencies_us[i] as f64 / 1000.0
    };
    println!(
        "{n} requests in {elapsed:.2}s: {:.1} ops/s (concurrency {}, nodes {})",
        n as f64 / elapsed.max(1e-9),
        args.concurrency,
        args.nodes.len()
    );
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    for (o, c) in &r.outcomes {
        println!("  {o:<18} {c}");
    }
    let errors: u64 = r
        .outcomes
        .iter()
        .filter(|(o, _)| o.as_str() == "connection_error")
        .map(|(_, c)| *c)
        .sum();
    if n > 0 && errors == n as u64 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
