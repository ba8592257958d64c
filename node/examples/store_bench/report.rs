//! The benchmark's output: a line per run as it ends, then a Markdown table of the medians per
//! store (for two rounds, the mean of the two).

use crate::run::RunResult;
use crate::stores::Kind;

pub fn print_run(round: usize, r: &RunResult) {
    println!(
        "round {round} {}: load {:.1} s ({:.0} keys/s), disk {:.1} -> {:.1} MiB (settled in {:.1} s{}), \
         reopen {:.3} s, cold p50/p99/p999 {:.3}/{:.3}/{:.3} ms, warm {:.3}/{:.3}/{:.3} ms, \
         misses p50/p99 {:.3}/{:.3} ms, appends {:.0} keys/s, RSS after reads {:.1} MiB (HWM {:.1}){}",
        r.store,
        r.load_s,
        r.load_keys_per_s,
        r.disk_after_load.files_mib,
        r.disk_after_settle.files_mib,
        r.settle_s,
        if r.settled {
            ""
        } else {
            ", NOT idle at the bound"
        },
        r.reopen_s,
        r.cold.p50_ms,
        r.cold.p99_ms,
        r.cold.p999_ms,
        r.warm.p50_ms,
        r.warm.p99_ms,
        r.warm.p999_ms,
        r.misses.p50_ms,
        r.misses.p99_ms,
        r.append_keys_per_s,
        r.memory_after_warm.rss_mib,
        r.memory_after_warm.hwm_mib,
        match &r.cache_drop_error {
            Some(e) => format!(" (cold reads NOT cold: {e})"),
            None => String::new(),
        }
    );
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

type Figure = fn(&RunResult) -> f64;

/// A row of the table: its label, the figures it shows (joined by " / ") and their decimals.
const ROWS: &[(&str, &[Figure], usize)] = &[
    ("load: seconds", &[|r| r.load_s], 1),
    ("load: keys/s", &[|r| r.load_keys_per_s], 0),
    ("disk MiB after load", &[|r| r.disk_after_load.files_mib], 1),
    ("settle: seconds until idle", &[|r| r.settle_s], 1),
    (
        "disk MiB settled (files / allocated)",
        &[
            |r| r.disk_after_settle.files_mib,
            |r| r.disk_after_settle.allocated_mib,
        ],
        1,
    ),
    ("reopen: seconds", &[|r| r.reopen_s], 3),
    (
        "cold reads p50 / p99 / p999 ms",
        &[|r| r.cold.p50_ms, |r| r.cold.p99_ms, |r| r.cold.p999_ms],
        3,
    ),
    (
        "warm reads p50 / p99 / p999 ms",
        &[|r| r.warm.p50_ms, |r| r.warm.p99_ms, |r| r.warm.p999_ms],
        3,
    ),
    (
        "misses p50 / p99 ms",
        &[|r| r.misses.p50_ms, |r| r.misses.p99_ms],
        3,
    ),
    ("appends: keys/s", &[|r| r.append_keys_per_s], 0),
    (
        "disk MiB after appends",
        &[|r| r.disk_after_appends.files_mib],
        1,
    ),
    (
        "RSS / HWM MiB after load",
        &[
            |r| r.memory_after_load.rss_mib,
            |r| r.memory_after_load.hwm_mib,
        ],
        1,
    ),
    (
        "RSS / HWM MiB after reopen",
        &[
            |r| r.memory_after_reopen.rss_mib,
            |r| r.memory_after_reopen.hwm_mib,
        ],
        1,
    ),
    (
        "RSS / HWM MiB after cold reads",
        &[
            |r| r.memory_after_cold.rss_mib,
            |r| r.memory_after_cold.hwm_mib,
        ],
        1,
    ),
    (
        "RSS / HWM MiB after warm reads",
        &[
            |r| r.memory_after_warm.rss_mib,
            |r| r.memory_after_warm.hwm_mib,
        ],
        1,
    ),
    (
        "RSS / HWM MiB after misses",
        &[
            |r| r.memory_after_misses.rss_mib,
            |r| r.memory_after_misses.hwm_mib,
        ],
        1,
    ),
    (
        "RSS / HWM MiB after appends",
        &[
            |r| r.memory_after_appends.rss_mib,
            |r| r.memory_after_appends.hwm_mib,
        ],
        1,
    ),
];

pub fn print_medians(args: &str, stores: &[Kind], results: &[RunResult]) {
    let runs = |kind: Kind| -> Vec<&RunResult> {
        results.iter().filter(|r| r.store == kind.name()).collect()
    };
    println!();
    println!("medians of {args}:");
    println!();
    let names: Vec<String> = stores
        .iter()
        .map(|k| format!("{} ({} runs)", k.name(), runs(*k).len()))
        .collect();
    println!("| figure | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(stores.len()));
    for (label, figures, decimals) in ROWS {
        let cells: Vec<String> = stores
            .iter()
            .map(|&kind| {
                figures
                    .iter()
                    .map(|f| {
                        let value = median(runs(kind).into_iter().map(f).collect());
                        format!("{value:.decimals$}")
                    })
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    let unsettled = results.iter().filter(|r| !r.settled).count();
    if unsettled > 0 {
        println!(
            "\n{unsettled} run(s) were still compacting at --settle-secs: sizes may shrink later"
        );
    }
    let warm_caches = results
        .iter()
        .filter(|r| r.cache_drop_error.is_some())
        .count();
    if warm_caches > 0 {
        println!(
            "\n{warm_caches} run(s) could not drop the OS page cache: their cold reads are not cold"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
