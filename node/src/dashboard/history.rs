//! The network's rates over the last minutes, for the dashboard's charts: one sample a second,
//! each the sum over the nodes whose counters this node knows fresh (its own, and the reports
//! of the members it reaches). A sample says how many nodes it counts: a node whose counters
//! are not known is left out, never estimated.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::metrics::{Counters, LATENCY_BUCKETS_S};

/// Samples kept: five minutes at one a second.
pub const SAMPLES_MAX: usize = 300;

/// One node's answers per second over an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub puts: BTreeMap<String, f64>,
    pub gets: BTreeMap<String, f64>,
    /// PUTs answered in the interval within each latency bound (cumulative) and in all.
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
}

impl Rates {
    /// The rates between two readings of one node's counters `secs` apart; `None` when they
    /// cannot be compared (a counter went back: the node restarted).
    pub fn between(before: &Counters, after: &Counters, secs: f64) -> Option<Rates> {
        if secs <= 0.0 {
            return None;
        }
        let per_s = |b: &BTreeMap<String, u64>, a: &BTreeMap<String, u64>| {
            a.iter()
                .map(|(k, v)| {
                    let d = v.checked_sub(b.get(k).copied().unwrap_or(0))?;
                    Some((k.clone(), d as f64 / secs))
                })
                .collect::<Option<BTreeMap<_, _>>>()
        };
        let buckets = if before.put_latency_buckets.len() == after.put_latency_buckets.len() {
            after
                .put_latency_buckets
                .iter()
                .zip(&before.put_latency_buckets)
                .map(|(a, b)| a.checked_sub(*b))
                .collect::<Option<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Some(Rates {
            puts: per_s(&before.puts, &after.puts)?,
            gets: per_s(&before.gets, &after.gets)?,
            latency_buckets: buckets,
            latency_count: after
                .put_latency_count
                .checked_sub(before.put_latency_count)?,
        })
    }

    /// Adds another node's rates.
    pub fn add(&mut self, other: &Rates) {
        for (k, v) in &other.puts {
            *self.puts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.gets {
            *self.gets.entry(k.clone()).or_default() += v;
        }
        if other.latency_buckets.len() == LATENCY_BUCKETS_S.len() {
            self.latency_buckets.resize(LATENCY_BUCKETS_S.len(), 0);
            for (s, o) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
                *s += o;
            }
            self.latency_count += other.latency_count;
        }
    }
}

/// PUT latency percentiles over a sample's interval, in milliseconds: each is the upper bound
/// of the histogram bucket it falls in (a latency above the last bound is given as that bound).
/// `None`: no PUT was answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

fn percentile(buckets: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 || buckets.len() != LATENCY_BUCKETS_S.len() {
        return None;
    }
    let rank = (q * count as f64).ceil().max(1.0) as u64;
    let i = buckets
        .iter()
        .position(|c| *c >= rank)
        .unwrap_or(LATENCY_BUCKETS_S.len() - 1);
    Some(LATENCY_BUCKETS_S[i] * 1000.0)
}

/// The network's rates over one second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub unix_ms: u64,
    /// Nodes whose rates are in this sample, of the members.
    pub nodes_counted: usize,
    pub nodes_total: usize,
    /// PUTs answered `stored` (new keys) per second.
    pub creates_per_s: f64,
    pub puts_per_s: f64,
    pub reads_per_s: f64,
    /// Answers per second by outcome (the labels of /metrics).
    pub puts: BTreeMap<String, f64>,
    pub gets: BTreeMap<String, f64>,
    pub put_latency_ms: Percentiles,
}

impl Sample {
    pub fn new(unix_ms: u64, nodes_counted: usize, nodes_total: usize, r: &Rates) -> Sample {
        Sample {
            unix_ms,
            nodes_counted,
            nodes_total,
            creates_per_s: r.puts.get("stored").copied().unwrap_or(0.0),
            puts_per_s: r.puts.values().sum(),
            reads_per_s: r.gets.values().sum(),
            puts: r.puts.clone(),
            gets: r.gets.clone(),
            put_latency_ms: Percentiles {
                p50: percentile(&r.latency_buckets, r.latency_count, 0.5),
                p90: percentile(&r.latency_buckets, r.latency_count, 0.9),
                p99: percentile(&r.latency_buckets, r.latency_count, 0.99),
            },
        }
    }
}

/// The last [`SAMPLES_MAX`] samples, oldest first.
#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The samples taken after `since_unix_ms` (all without it).
    pub fn since(&self, since_unix_ms: Option<u64>) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| since_unix_ms.is_none_or(|t| s.unix_ms > t))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(stored: u64, value: u64, latency: &[u64]) -> Counters {
        let mut c = Counters::default();
        c.puts.insert("stored".into(), stored);
        c.puts.insert("exists".into(), 1);
        c.gets.insert("value".into(), value);
        c.put_latency_buckets = latency.to_vec();
        c.put_latency_count = stored + 1;
        c
    }

    #[test]
    fn rates_are_deltas_per_second_and_a_restart_gives_none() {
        let n = LATENCY_BUCKETS_S.len();
        let before = counters(10, 4, &vec![0; n]);
        // 20 more PUTs: 10 within 1 ms, 18 within 2.5 ms, all 20 within 10 ms.
        let mut latency = vec![20; n];
        latency[0] = 10;
        latency[1] = 18;
        latency[2] = 19;
        let after = counters(30, 8, &latency);
        let r = Rates::between(&before, &after, 2.0).unwrap();
        assert_eq!(r.puts["stored"], 10.0);
        assert_eq!(r.puts["exists"], 0.0);
        assert_eq!(r.gets["value"], 2.0);
        let s = Sample::new(1, 1, 3, &r);
        assert_eq!(
            (s.creates_per_s, s.puts_per_s, s.reads_per_s),
            (10.0, 10.0, 2.0)
        );
        assert_eq!(s.put_latency_ms.p50, Some(1.0));
        assert_eq!(s.put_latency_ms.p90, Some(2.5));
        assert_eq!(s.put_latency_ms.p99, Some(10.0));
        assert_eq!(
            Rates::between(&after, &before, 1.0),
            None,
            "counters went back"
        );
        assert_eq!(Rates::between(&before, &after, 0.0), None);
    }

    #[test]
    fn rates_add_up_and_no_put_means_no_percentile() {
        let n = LATENCY_BUCKETS_S.len();
        let a = Rates::between(
            &counters(0, 0, &vec![0; n]),
            &counters(5, 1, &vec![6; n]),
            1.0,
        )
        .unwrap();
        let mut sum = Rates::default();
        sum.add(&a);
        sum.add(&a);
        assert_eq!(sum.puts["stored"], 10.0);
        assert_eq!(sum.latency_count, 10);
        let idle = Sample::new(1, 0, 0, &Rates::default());
        assert_eq!(idle.put_latency_ms, Percentiles::default());
        let mut h = History::default();
        for t in 0..(SAMPLES_MAX as u64 + 5) {
            h.push(Sample::new(t, 0, 0, &Rates::default()));
        }
        assert_eq!(h.since(None).len(), SAMPLES_MAX);
        assert_eq!(h.since(Some(SAMPLES_MAX as u64 + 2)).len(), 2);
    }
}
