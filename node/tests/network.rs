//! End-to-end tests: real `replicator` processes, real libp2p on 127.0.0.1.
//!
//! One network of 3 clusters x 3 nodes is shared by the scenarios that need one (starting it
//! is the slow part); they run in sequence in `three_clusters_scenarios`, one named step
//! function each.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_clusters_scenarios() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_three_clusters(tmp.path());
    a_put_is_read_in_another_cluster(&nodes);
    a_create_moves_the_cost_counters(&nodes);
    unknown_key_is_404_and_a_conflict_409(&nodes);
    the_cli_exit_codes(&nodes);
    concurrent_puts_from_two_clusters_one_wins(&nodes);
    malformed_requests_get_a_clear_4xx(&nodes);
    a_retry_with_the_same_request_id_gets_the_first_outcome(&nodes);
    the_load_generator_reports(&nodes);
    a_late_joiner_copies_the_existing_keys(&mut nodes, tmp.path());
    a_kill_during_writes_loses_nothing_acknowledged(&mut nodes);
    a_killed_coordinators_writes_resolve_one_way(&mut nodes);
    an_operator_makes_a_node_leave(&mut nodes);
    an_operator_removes_a_dead_node(&mut nodes);
    no_node_logged_an_error(tmp.path());
}

/// A PUT at a node of one cluster is read at a node of another.
fn a_put_is_read_in_another_cluster(nodes: &[NodeProc]) {
    let r = put(&nodes[1], "alpha", "one");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&nodes[8], "alpha");
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
}

/// The cost counters of a create move: its coordinator fsynced (its accept a barrier write,
/// the Stored record lazy, folded into a later commit or synced after a short delay) and
/// exchanged frames with its peers.
fn a_create_moves_the_cost_counters(nodes: &[NodeProc]) {
    wait_until(
        Duration::from_secs(10),
        "fsyncs, lazy writes and frames counted",
        || {
            let text = http("GET", &nodes[1].http, "/metrics", b"", &[]).text();
            let fsyncs = metric_sum(&text, "replicator_storage_fsyncs_total");
            let lazy = metric_sum(&text, "replicator_storage_writes_total{urgency=\"lazy\"}");
            let per_commit = metric_sum(&text, "replicator_storage_commit_writes_count");
            let sent = metric_sum(&text, "replicator_peer_frames_sent_total{");
            let received = metric_sum(&text, "replicator_peer_bytes_received_total{");
            fsyncs > 0 && lazy > 0 && per_commit == fsyncs && sent > 0 && received > 0
        },
    );
}

/// Unknown key 404, conflict 409 with the stored value.
fn unknown_key_is_404_and_a_conflict_409(nodes: &[NodeProc]) {
    let r = get(&nodes[4], "no-such-key");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "unknown_key");
    let r = put(&nodes[4], "alpha", "two");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "exists");
    assert_eq!(r.json()["value"], "one");
}

/// The CLI client and its exit codes.
fn the_cli_exit_codes(nodes: &[NodeProc]) {
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--node", &nodes[2].http])
            .output()
            .unwrap()
    };
    assert_eq!(cli(&["put", "cli-key", "cli-value"]).status.code(), Some(0));
    let out = cli(&["get", "cli-key"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"cli-value");
    assert_eq!(cli(&["put", "cli-key", "other"]).status.code(), Some(3));
    assert_eq!(cli(&["get", "cli-missing"]).status.code(), Some(4));
    assert_eq!(cli(&["status"]).status.code(), Some(0));
    assert_eq!(cli(&["put"]).status.code(), Some(2));
}

/// Two concurrent PUTs of one key from two clusters: exactly one 201, and the other
/// learns Exists (a Busy client retries, as the API advises).
fn concurrent_puts_from_two_clusters_one_wins(nodes: &[NodeProc]) {
    for k in 0..3 {
        let key = format!("race-{k}");
        let (a, b) = (&nodes[0], &nodes[3]);
        let outcomes = std::thread::scope(|s| {
            let ha = s.spawn(|| put_retrying_busy(a, &key, "from-c1"));
            let hb = s.spawn(|| put_retrying_busy(b, &key, "from-c2"));
            [ha.join().unwrap(), hb.join().unwrap()]
        });
        let created: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 201).collect();
        assert_eq!(created.len(), 1, "{key}: {outcomes:?}");
        let other = outcomes.iter().find(|(s, _)| *s != 201).unwrap();
        assert_eq!(other.0, 409, "{key}: {outcomes:?}");
        assert_eq!(other.1, "exists", "{key}: {outcomes:?}");
        let winner = if outcomes[0].0 == 201 {
            "from-c1"
        } else {
            "from-c2"
        };
        for n in [&nodes[2], &nodes[5], &nodes[8]] {
            let r = get(n, &key);
            assert_eq!((r.status, r.text().as_str()), (200, winner));
        }
    }
}

/// Malformed requests get a clear 4xx and the node keeps serving.
fn malformed_requests_get_a_clear_4xx(nodes: &[NodeProc]) {
    let n = &nodes[7];
    let big = vec![b'x'; 100 * 1024];
    let r = http("PUT", &n.http, "/store/big", &big, &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["message"].is_string());
    let long_key = "k".repeat(600);
    let r = put(n, &long_key, "v");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid");
    let r = http("DELETE", &n.http, "/store/alpha", b"", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
    let r = http("GET", &n.http, "/nope", b"", &[]);
    assert_eq!(r.status, 404);
    let r = raw(&n.http, b"THIS IS NOT HTTP\r\n\r\n");
    assert!(r.status == 400 || r.status == 0, "garbage got {}", r.status);
    let r = http("GET", &n.http, "/store/alpha?verify=maybe", b"", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid");
    let r = http("PUT", &n.http, "/store/", b"v", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = put(n, "%FF%FE", "v");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = get(n, "alpha");
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
}

/// At-most-once: a retry with the same request id returns the first outcome.
fn a_retry_with_the_same_request_id_gets_the_first_outcome(nodes: &[NodeProc]) {
    let h = [("X-Request-Id", "req-1")];
    let r = http("PUT", &nodes[6].http, "/store/once", b"v1", &h);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = http("PUT", &nodes[6].http, "/store/once", b"v1", &h);
    assert_eq!(
        r.status, 201,
        "the retry is answered from the first attempt"
    );
}

/// The load generator runs and reports.
fn the_load_generator_reports(nodes: &[NodeProc]) {
    let out = Command::new(BIN)
        .args(["bench", "--node", &nodes[0].http, "--node", &nodes[4].http])
        .args([
            "--count",
            "20",
            "--concurrency",
            "4",
            "--conflict-share",
            "0.5",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("20 requests") && report.contains("p99"),
        "{report}"
    );
}

/// A tenth node joining late copies the existing keys and serves them.
/// It is given a bootstrap peer that does not answer, and a live one with --peer.
fn a_late_joiner_copies_the_existing_keys(nodes: &mut Vec<NodeProc>, dir: &Path) {
    let dead = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", free_port(), nodes[1].peer);
    let late = start_node_with(
        "c2",
        &dir.join("n9"),
        Some(&dead),
        &["--peer", &nodes[0].p2p],
    )
    .wait();
    nodes.push(late);
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&all, 10, Duration::from_secs(60));
    let r = get(&nodes[9], "alpha");
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
    let r = get(&nodes[9], "cli-key");
    assert_eq!((r.status, r.text().as_str()), (200, "cli-value"));
}

/// A kill -9 of a node during writes costs nothing: every write is answered 201 (a majority
/// of its cluster is enough); after a restart with its data dir nothing acknowledged is lost,
/// every node agrees on every key, and nothing accepted stays undecided.
fn a_kill_during_writes_loses_nothing_acknowledged(nodes: &mut [NodeProc]) {
    let victim = 5;
    let stop = Arc::new(AtomicBool::new(false));
    let results = std::thread::scope(|s| {
        let writers: Vec<_> = [1usize, 7]
            .into_iter()
            .map(|w| {
                let base = nodes[w].http.clone();
                let stop = stop.clone();
                s.spawn(move || {
                    let mut done = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) && i < 200 {
                        let key = format!("crash-{w}-{i}");
                        let value = format!("v-{w}-{i}");
                        let r = http(
                            "PUT",
                            &base,
                            &format!("/store/{key}"),
                            value.as_bytes(),
                            &[],
                        );
                        done.push((key, value, r.status, r.json()["error"].clone()));
                        i += 1;
                    }
                    done
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        nodes[victim].child.kill().unwrap();
        nodes[victim].child.wait().unwrap();
        // The dead node is reported down in /peers, and stays a member.
        wait_until(Duration::from_secs(15), "the victim reported down", || {
            let peers = http("GET", &nodes[0].http, "/peers", b"", &[]).json();
            peers["peers"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["peer"] == nodes[victim].peer.as_str() && p["up"] == false)
            })
        });
        assert_eq!(health(&nodes[0])["members"], 10);
        // Longer than --put-timeout-ms: a write waiting for the dead node would be answered
        // 503 by now.
        std::thread::sleep(Duration::from_secs(5));
        let restarted = start_node(
            &nodes[victim].cluster,
            &nodes[victim].dir,
            Some(&nodes[0].p2p),
        )
        .wait();
        let old_peer = nodes[victim].peer.clone();
        assert_eq!(restarted.peer, old_peer, "the identity survives a restart");
        nodes[victim] = restarted;
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (key, _, status, error) in &results {
        *by_status.entry(*status).or_default() += 1;
        assert_eq!(*status, 201, "{key}: unexpected {status} {error}");
    }
    eprintln!("writes around the crash: {by_status:?}");
    assert!(
        by_status.get(&201).copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&all, 10, Duration::from_secs(60));
    wait_settled(nodes);
    check_agreement(&nodes[0], &results);
    // The restarted node serves what was acknowledged while it was down, too.
    let acked = results.iter().rfind(|r| r.2 == 201).unwrap();
    let r = get(&nodes[victim], &acked.0);
    assert_eq!((r.status, r.text()), (200, acked.1.clone()));
}

/// A kill -9 of a coordinator during its writes: what it acknowledged survives, and what
/// was in flight is resolved one way everywhere.
fn a_killed_coordinators_writes_resolve_one_way(nodes: &mut [NodeProc]) {
    let coord = 2;
    let base = nodes[coord].http.clone();
    let writer = std::thread::spawn(move || {
        let mut done = Vec::new();
        for i in 0..500 {
            let key = format!("coord-{i}");
            let value = format!("c-{i}");
            let r = http(
                "PUT",
                &base,
                &format!("/store/{key}"),
                value.as_bytes(),
                &[],
            );
            let error = r.json()["error"].clone();
            done.push((key, value, r.status, error));
            if r.status == 0 {
                break; // the node is gone
            }
        }
        done
    });
    std::thread::sleep(Duration::from_millis(1500));
    nodes[coord].child.kill().unwrap();
    nodes[coord].child.wait().unwrap();
    let written = writer.join().unwrap();
    assert!(written.iter().any(|w| w.2 == 201), "{written:?}");
    let restarted = start_node(
        &nodes[coord].cluster,
        &nodes[coord].dir,
        Some(&nodes[0].p2p),
    )
    .wait();
    nodes[coord] = restarted;
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&all, 10, Duration::from_secs(60));
    wait_settled(nodes);
    check_agreement(&nodes[0], &written);
}

/// An operator makes a node leave (`replicator leave`): naming another node does nothing;
/// named right, the node exits 0, every member drops it, writes go on, and its data dir
/// never starts a node again (exit 78, saying so).
fn an_operator_makes_a_node_leave(nodes: &mut Vec<NodeProc>) {
    let mut leaver = nodes.pop().unwrap();
    let cli = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let wrong = cli(&["leave", &nodes[0].peer, "--node", &leaver.http]);
    assert_eq!(wrong.status.code(), Some(3), "{wrong:?}");
    assert!(leaver.child.try_wait().unwrap().is_none(), "it left anyway");

    let out = cli(&["leave", &leaver.peer, "--node", &leaver.http]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{out:?}\nlog:\n{}",
        tail(&leaver.log)
    );
    let code = wait_exit(&mut leaver, Duration::from_secs(20));
    assert_eq!(code, Some(0), "log:\n{}", tail(&leaver.log));
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&all, 9, Duration::from_secs(30));
    let r = put(&nodes[3], "after-leave", "ok");
    assert_eq!(r.status, 201, "{}", r.text());

    let dir = leaver.dir.to_str().unwrap();
    let (code, stderr, _) = run_to_exit(
        &[
            "run",
            "--cid",
            &leaver.cluster,
            "--data-dir",
            dir,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("this node left the network"), "{stderr}");
}

/// An operator removes a dead node: it is dropped on every member (through the one node
/// asked), and writes coordinated in the other clusters go on without it.
fn an_operator_removes_a_dead_node(nodes: &mut Vec<NodeProc>) {
    let mut dead = nodes.remove(8);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    // Its cluster's other members must confirm its members first: 503 unconfirmed until
    // they answer, then 200.
    wait_until(Duration::from_secs(30), "the removal confirmed", || {
        let r = http(
            "DELETE",
            &nodes[0].http,
            &format!("/peers/{}", dead.peer),
            b"",
            &[],
        );
        assert!(
            r.status == 200 || (r.status == 503 && r.json()["error"] == "unconfirmed"),
            "{}",
            r.text()
        );
        r.status == 200
    });
    wait_until(
        Duration::from_secs(30),
        "the removed node gone everywhere",
        || nodes.iter().all(|n| health(n)["members"] == 8),
    );
    let again = Command::new(BIN)
        .args(["remove", &dead.peer, "--node", &nodes[4].http])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(4),
        "not a member any more: {again:?}"
    );
    // Writes go on at once: a removal waits for nothing.
    let r = put(&nodes[0], "after-removal", "ok");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&nodes[7], "after-removal");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}

/// Waits until no node holds an accepted value it has not seen decided (the recovery of keys
/// whose decision a crash interrupted is done).
fn wait_settled(nodes: &[NodeProc]) {
    wait_until(
        Duration::from_secs(60),
        "every accepted value decided",
        || nodes.iter().all(|n| health(n)["accepted_undecided"] == 0),
    );
}

/// No node logged an error (a protocol violation is logged as one).
fn no_node_logged_an_error(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
            assert!(
                errors.is_empty(),
                "{}:\n{}",
                path.display(),
                errors.join("\n")
            );
            let warns = log.lines().filter(|l| l.contains(" WARN ")).count();
            eprintln!("{}: {warns} warnings", path.display());
        }
    }
}

/// The sum of every sample in a Prometheus text whose name (with labels) starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every node answers a verify read of every key, they agree, and every acknowledged write is
/// stored with its value everywhere.
fn check_agreement(node: &NodeProc, writes: &[(String, String, u16, serde_json::Value)]) {
    for (key, value, status, _) in writes {
        // A verify read waits a bounded time for every node; on a loaded machine one may be
        // late, so ask again until all ten answered.
        let mut verify = serde_json::Value::Null;
        wait_until(Duration::from_secs(30), "a complete verify read", || {
            verify = http(
                "GET",
                &node.http,
                &format!("/store/{key}?verify=true"),
                b"",
                &[],
            )
            .json();
            verify["answers"].as_array().is_some_and(|a| a.len() == 10)
        });
        assert_eq!(verify["agree"], true, "{key}: {verify}");
        let answers = verify["answers"].as_array().unwrap();
        if *status == 201 {
            for a in answers {
                assert_eq!(a["state"], "stored", "{key} acknowledged, lost: {verify}");
                assert_eq!(a["value"], value.as_str(), "{key}: {verify}");
            }
        }
    }
}

/// PUTs, retrying while the answer is Busy; returns the final status and error.
fn put_retrying_busy(node: &NodeProc, key: &str, value: &str) -> (u16, String) {
    for _ in 0..20 {
        let r = put(node, key, value);
        let error = r.json()["error"].as_str().unwrap_or("").to_string();
        if !(r.status == 409 && error == "busy") {
            return (r.status, error);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (409, "busy".into())
}

/// A bootstrap address that does not answer: the node exits non-zero with a clear error
/// within a few seconds.
#[test]
fn unreachable_bootstrap_exits_nonzero() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let peer = transport_libp2p::libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "--cid", "c1", "--http", "127.0.0.1:0"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args([
            "--bootstrap",
            &format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
        ])
        .args(["--bootstrap-timeout-ms", "2000"])
        .arg("--data-dir")
        .arg(tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node did not exit");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("error: cannot join the network") && stderr.contains("bootstrap"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("replicator.redb").exists(),
        "no database is created"
    );
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
