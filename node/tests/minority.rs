//! A minority of every cluster down costs nothing (issue 17), with real `replicator`
//! processes on 127.0.0.1: one node of every cluster killed -9 for 20 s, or SIGSTOPped for
//! 20 s, while clients write, read and ask for unknown keys at the other nodes. Every PUT is
//! answered 201 or 409 exists, every GET of a stored key 200, every unknown key 404; nothing
//! acknowledged is lost; the killed nodes restart with their data dir and catch up with what
//! they missed without being asked for it.
//!
//! Latency is printed (before and during the fault), not asserted: these machines are shared.
//! The numbers for the README come from `node/scripts/minority_bench.py` on a release build.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// One node of every cluster (c1: n2, c2: n5, c3: n8).
const VICTIMS: [usize; 3] = [2, 5, 8];
/// The nodes the clients talk to: the other six.
const SERVING: [usize; 6] = [0, 1, 3, 4, 6, 7];
const FAULT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Before,
    During,
    After,
}

/// One client operation and what it was told.
struct Op {
    phase: Phase,
    kind: &'static str,
    key: String,
    value: String,
    status: u16,
    error: String,
    took: Duration,
}

/// Clients at every serving node, until `stop`: fresh keys (201), a key raced by every client
/// (one 201, the rest 409 exists), reads of keys this client stored (200), unknown keys (404).
fn client(base: &str, at: usize, phase: &std::sync::Mutex<Phase>, stop: &AtomicBool) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut stored: Vec<(String, String)> = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 100_000 {
        let now = *phase.lock().unwrap();
        let (kind, key, value) = match i % 4 {
            0 | 1 => ("put", format!("k-{at}-{i}"), format!("v-{at}-{i}")),
            2 if i % 8 == 2 => ("put", format!("race-{}", i / 8), format!("from-{at}")),
            2 => ("unknown", format!("never-{at}-{i}"), String::new()),
            _ => match stored.get(i as usize % stored.len().max(1)) {
                Some((k, v)) => ("get", k.clone(), v.clone()),
                None => ("unknown", format!("never-{at}-{i}"), String::new()),
            },
        };
        let started = Instant::now();
        let r = match kind {
            "put" => http("PUT", base, &format!("/store/{key}"), value.as_bytes(), &[]),
            _ => http("GET", base, &format!("/store/{key}"), b"", &[]),
        };
        let took = started.elapsed();
        let error = if r.status >= 400 {
            r.json()["error"].as_str().unwrap_or("").to_string()
        } else {
            String::new()
        };
        if kind == "put" && r.status == 201 && key.starts_with("k-") {
            stored.push((key.clone(), value.clone()));
        }
        if kind == "get" && r.status == 200 {
            assert_eq!(r.text(), value, "{key} read back another value");
        }
        ops.push(Op {
            phase: now,
            kind,
            key,
            value,
            status: r.status,
            error,
            took,
        });
        i += 1;
    }
    ops
}

/// Runs a client at every serving node for 5 s before the fault, during it (`start` begins
/// it, `end` ends it after [`FAULT`]) and 5 s after it; returns every operation.
fn under_fault(
    nodes: &mut [NodeProc],
    start: impl FnOnce(&mut [NodeProc]),
    end: impl FnOnce(&mut [NodeProc]),
) -> Vec<Op> {
    let phase = std::sync::Mutex::new(Phase::Before);
    let stop = AtomicBool::new(false);
    let bases: Vec<(usize, String)> = SERVING
        .iter()
        .map(|&i| (i, nodes[i].http.clone()))
        .collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = bases
            .iter()
            .map(|(at, base)| {
                let (phase, stop) = (&phase, &stop);
                s.spawn(move || client(base, *at, phase, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(5));
        start(nodes);
        *phase.lock().unwrap() = Phase::During;
        std::thread::sleep(FAULT);
        *phase.lock().unwrap() = Phase::After;
        end(nodes);
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

/// Every answer is one a minority fault allows: PUT 201 or 409 exists, GET 200, unknown 404.
/// Prints the counts and the latency of PUTs per phase.
fn check_answers(ops: &[Op], what: &str) {
    let mut counts: BTreeMap<(Phase, &str, u16, &str), usize> = BTreeMap::new();
    for op in ops {
        *counts
            .entry((op.phase, op.kind, op.status, op.error.as_str()))
            .or_default() += 1;
    }
    eprintln!("{what}: answers by phase, kind, status: {counts:?}");
    for phase in [Phase::Before, Phase::During, Phase::After] {
        let mut puts: Vec<Duration> = ops
            .iter()
            .filter(|o| o.phase == phase && o.kind == "put")
            .map(|o| o.took)
            .collect();
        puts.sort();
        let at = |q: f64| puts.get(((puts.len() as f64 * q) as usize).min(puts.len().max(1) - 1));
        eprintln!(
            "{what}: {phase:?}: {} PUTs, p50 {:?}, p99 {:?}",
            puts.len(),
            at(0.5),
            at(0.99)
        );
    }
    for op in ops {
        let allowed = match op.kind {
            "put" => op.status == 201 || (op.status == 409 && op.error == "exists"),
            "get" => op.status == 200,
            _ => op.status == 404 && op.error == "unknown_key",
        };
        assert!(
            allowed,
            "{what}: {:?} {} {} answered {} {}",
            op.phase, op.kind, op.key, op.status, op.error
        );
    }
    assert!(
        ops.iter()
            .any(|o| o.phase == Phase::During && o.kind == "put" && o.status == 201),
        "{what}: no write during the fault"
    );
}

/// Every node, the restarted ones included, catches up with every acknowledged write without
/// being asked for it (`behind` falls to 0 and nothing stays undecided), then serves each one.
fn check_caught_up(nodes: &[NodeProc], ops: &[Op]) {
    wait_until(Duration::from_secs(60), "every node caught up", || {
        nodes.iter().all(|n| {
            let h = health(n);
            h["behind"] == 0 && h["accepted_undecided"] == 0
        })
    });
    let acknowledged: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == "put" && o.status == 201)
        .collect();
    let stored_keys = |n: &NodeProc| health(n)["keys_stored"].as_u64().unwrap_or(0);
    for &v in &VICTIMS {
        assert!(
            stored_keys(&nodes[v]) >= acknowledged.len() as u64,
            "{} holds {} keys, {} were acknowledged",
            nodes[v].peer,
            stored_keys(&nodes[v]),
            acknowledged.len()
        );
        // Read locally: a stored key is answered from the node's own records.
        for op in acknowledged.iter().step_by(7) {
            let r = get(&nodes[v], &op.key);
            assert_eq!((r.status, r.text()), (200, op.value.clone()), "{}", op.key);
        }
    }
    // Every acknowledged write is stored with its value on all nine nodes.
    for op in acknowledged.iter().step_by(5) {
        let mut verify = serde_json::Value::Null;
        wait_until(Duration::from_secs(30), "a complete verify read", || {
            verify = http(
                "GET",
                &nodes[0].http,
                &format!("/store/{}?verify=true", op.key),
                b"",
                &[],
            )
            .json();
            verify["answers"].as_array().is_some_and(|a| a.len() == 9)
        });
        assert_eq!(verify["agree"], true, "{}: {verify}", op.key);
        for a in verify["answers"].as_array().unwrap() {
            assert_eq!(a["state"], "stored", "{} lost: {verify}", op.key);
        }
    }
}

/// kill -9 of one node of every cluster for 20 s, then a restart with its data dir.
#[test]
fn one_node_of_every_cluster_killed_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_three_clusters(tmp.path());
    let ops = under_fault(
        &mut nodes,
        |nodes| {
            for v in VICTIMS {
                kill9(&mut nodes[v]);
            }
        },
        |nodes| {
            let starting: Vec<Starting> = VICTIMS
                .iter()
                .map(|&v| restart(&nodes[v], Some(&nodes[0].p2p)))
                .collect();
            for (&v, s) in VICTIMS.iter().zip(starting) {
                nodes[v] = s.wait();
            }
        },
    );
    check_answers(&ops, "kill -9");
    check_caught_up(&nodes, &ops);
}

/// SIGSTOP of one node of every cluster for 20 s (its sockets stay open, it answers
/// nothing), then SIGCONT.
#[test]
fn one_node_of_every_cluster_paused_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_three_clusters(tmp.path());
    let ops = under_fault(
        &mut nodes,
        |nodes| {
            for v in VICTIMS {
                signal(&nodes[v], "-STOP");
            }
        },
        |nodes| {
            for v in VICTIMS {
                signal(&nodes[v], "-CONT");
            }
        },
    );
    check_answers(&ops, "SIGSTOP");
    check_caught_up(&nodes, &ops);
}
