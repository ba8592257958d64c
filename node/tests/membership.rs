//! End-to-end tests of the durable membership and the network identity (issue 8), with real
//! `replicator` processes on 127.0.0.1: a cluster restarted while the others are down keeps
//! the whole recorded membership and commits nothing alone; only a dead node is removed and a
//! removed node serves nothing, across a restart too; a node never joins another network, nor
//! a peer that speaks another protocol id.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

const CONVERGE: Duration = Duration::from_secs(60);

/// `n` nodes: node `i` in cluster `c{i / per_cluster}`, all joining through node 0.
fn network(tmp: &std::path::Path, n: usize, per_cluster: usize) -> Vec<NodeProc> {
    let boot = start_node("c0", &tmp.join("n0"), None).wait();
    let starting: Vec<Starting> = (1..n)
        .map(|i| {
            start_node(
                &format!("c{}", i / per_cluster),
                &tmp.join(format!("n{i}")),
                Some(&boot.p2p),
            )
        })
        .collect();
    let mut nodes = vec![boot];
    nodes.extend(starting.into_iter().map(Starting::wait));
    nodes
}

fn refs(nodes: &[NodeProc]) -> Vec<&NodeProc> {
    nodes.iter().collect()
}

fn verify(node: &NodeProc, key: &str, answers: usize) -> Json {
    let mut report = Json::Null;
    wait_until(
        Duration::from_secs(30),
        &format!("a complete verify read of {key}"),
        || {
            report = http(
                "GET",
                &node.http,
                &format!("/store/{key}?verify=true"),
                b"",
                &[],
            )
            .json();
            report["answers"]
                .as_array()
                .is_some_and(|a| a.len() == answers)
        },
    );
    report
}

/// PUTs until the answer is 201, while it is one a healing network gives (busy, or a
/// membership that is still converging); panics on anything else or after `timeout`.
fn put_eventually(node: &NodeProc, key: &str, value: &str, timeout: Duration) {
    wait_until(timeout, &format!("PUT {key} stored"), || {
        let r = put(node, key, value);
        if r.status == 201 {
            return true;
        }
        let error = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            matches!(
                (r.status, error.as_str()),
                (409, "busy") | (503, "unavailable" | "not_ready")
            ),
            "PUT {key}: unexpected {} {}",
            r.status,
            r.text()
        );
        false
    });
}

/// The story: a 3 x 3 network; the two other clusters die (kill -9), then c0's three
/// nodes are killed and restarted alone. They resume with all nine members, so they know two
/// clusters have no majority: their writes answer 503 naming the six silent nodes and commit
/// nothing while they are alone; once the six come back, every node agrees on every key and
/// none has two values.
#[test]
fn restarted_cluster_keeps_the_whole_membership_and_commits_nothing_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = network(tmp.path(), 9, 3);
    wait_converged(&refs(&nodes), 9, CONVERGE);
    let network_id = health(&nodes[0])["network"].as_str().unwrap().to_string();
    assert_eq!(network_id.len(), 32, "{network_id}");
    assert!(
        network_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{network_id}"
    );
    for n in &nodes {
        assert_eq!(health(n)["network"], network_id.as_str(), "one network");
    }

    // Writes while everyone is up.
    let mut committed = Vec::new();
    for i in 0..6 {
        let (key, value) = (format!("before-{i}"), format!("v{i}"));
        let r = put(&nodes[(i * 4) % 9], &key, &value);
        assert_eq!(r.status, 201, "{key}: {}", r.text());
        committed.push((key, value));
    }

    // The other two clusters die, then c0 too.
    let others: Vec<(String, String)> = nodes[3..]
        .iter()
        .map(|n| (n.peer.clone(), n.cluster.clone()))
        .collect();
    for n in nodes.iter_mut() {
        kill9(n);
    }

    // c0 restarts alone: the first node without --bootstrap (a node with data never founds a
    // network; it waits to be dialed), the other two through it.
    let first = restart(&nodes[0], None).wait();
    let second = restart(&nodes[1], Some(&first.p2p));
    let third = restart(&nodes[2], Some(&first.p2p));
    nodes[0] = first;
    nodes[1] = second.wait();
    nodes[2] = third.wait();
    let c0 = &nodes[..3];
    for n in c0 {
        // Ready for reads, and honestly not writable: six members are silent (issue 9).
        wait_until(Duration::from_secs(30), "c0 ready, naming the six", || {
            let h = health(n);
            h["ready"] == true
                && h["cluster_members"] == 3
                && h["silent_nodes"].as_array().is_some_and(|s| s.len() == 6)
        });
        let h = health(n);
        assert_eq!(h["writable"], false, "{h}");
        assert_eq!(h["not_writable"], serde_json::json!(["no_majority"]), "{h}");
        assert_eq!(
            h["clusters_without_majority"],
            serde_json::json!(["c1", "c2"]),
            "{h}"
        );
        for (peer, _) in &others {
            assert!(
                h["silent_nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == peer.as_str()),
                "{peer} named silent: {h}"
            );
        }
        assert_eq!(h["members"], 9, "the recorded membership survives: {h}");
        assert_eq!(h["clusters"], 3, "{h}");
        assert_eq!(h["network"], network_id.as_str(), "{h}");
    }
    // The six are members that are down, not gone.
    let peers = http("GET", &nodes[0].http, "/peers", b"", &[]).json();
    assert_eq!(peers["network"], network_id.as_str());
    let down: BTreeSet<&str> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["up"] == false)
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    for (peer, _) in &others {
        assert!(down.contains(peer.as_str()), "{peer} down: {peers}");
    }
    let clusters = http("GET", &nodes[1].http, "/clusters", b"", &[]).json();
    assert_eq!(clusters["network"], network_id.as_str());
    assert_eq!(
        clusters["clusters"].as_object().unwrap().len(),
        3,
        "{clusters}"
    );

    // Reads of what was committed work; writes answer 503 naming the silent nodes.
    let r = get(&nodes[2], &committed[0].0);
    assert_eq!((r.status, r.text()), (200, committed[0].1.clone()));
    let partition_keys: Vec<String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let node = &nodes[w];
                let others = &others;
                s.spawn(move || {
                    let mut keys = Vec::new();
                    for i in 0..2 {
                        let key = format!("alone-{w}-{i}");
                        let r = put(node, &key, "must-not-commit");
                        assert_eq!(r.status, 503, "{key}: {}", r.text());
                        let j = r.json();
                        assert_eq!(j["error"], "unavailable", "{j}");
                        let silent: Vec<&str> = j["silent_nodes"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(|n| n.as_str())
                            .collect();
                        for (peer, _) in others {
                            assert!(silent.contains(&peer.as_str()), "{peer} named: {j}");
                        }
                        let clusters = j["silent_clusters"].to_string();
                        assert!(clusters.contains("c1") && clusters.contains("c2"), "{j}");
                        keys.push(key);
                    }
                    keys
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });

    // The six come back with their data dirs, through a c0 node.
    let starting: Vec<Starting> = (3..9)
        .map(|i| restart(&nodes[i], Some(&nodes[i % 3].p2p)))
        .collect();
    for (i, s) in (3..9).zip(starting) {
        nodes[i] = s.wait();
    }
    wait_converged(&refs(&nodes), 9, CONVERGE);
    for n in &nodes {
        assert_eq!(health(n)["network"], network_id.as_str());
    }

    // Every node agrees on every key; the committed ones hold their value everywhere (a node
    // killed after it accepted one but before the Decide reached it learns it by catch-up
    // from its cluster, soon after it is back: "undecided" until then). A write c0 accepted
    // alone was answered 503 ("may still commit"): once the others are back, the recovery of
    // its undecided keys may finish it, with that one value, everywhere alike.
    for (key, value) in &committed {
        wait_until(
            Duration::from_secs(30),
            &format!("{key} stored everywhere"),
            || verify(&nodes[4], key, 9)["agree"] == true,
        );
        let report = verify(&nodes[4], key, 9);
        assert_eq!(report["agree"], true, "{key}: {report}");
        for a in report["answers"].as_array().unwrap() {
            assert_eq!(a["state"], "stored", "{key}: {report}");
            assert_eq!(a["value"], value.as_str(), "{key}: {report}");
        }
    }
    for key in &partition_keys {
        wait_until(Duration::from_secs(30), &format!("{key} agreed"), || {
            verify(&nodes[7], key, 9)["agree"] == true
        });
        let report = verify(&nodes[7], key, 9);
        for a in report["answers"].as_array().unwrap() {
            if a["state"] == "stored" {
                assert_eq!(a["value"], "must-not-commit", "{key}: {report}");
            }
        }
    }
    for n in &nodes {
        for (key, value) in &committed {
            let r = get(n, key);
            assert_eq!((r.status, r.text()), (200, value.clone()), "{key}");
        }
        for key in &partition_keys {
            let r = get(n, key);
            assert!(
                matches!(
                    (r.status, r.text().as_str()),
                    (404, _) | (200, "must-not-commit")
                ),
                "{key} at {}: {} {}",
                n.peer,
                r.status,
                r.text()
            );
        }
    }
    // And the healed network takes writes again.
    put_eventually(&nodes[5], "after-heal", "ok", Duration::from_secs(30));
    let r = get(&nodes[0], "after-heal");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));

    // No node logged an error (a protocol violation is logged as one).
    for n in &nodes {
        let log = std::fs::read_to_string(&n.log).unwrap();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            n.log.display(),
            errors.join("\n")
        );
    }
}

/// Only a dead node is removed: a live one is refused (409 alive, `replicator remove` exits 3),
/// and so is a removal from a cluster with an even number of members (409 even_cluster) unless
/// forced. A removed node serves nothing (410 removed, /health removed), across a restart
/// too, and a dead node that was removed hears of it when it comes back.
#[test]
fn only_a_dead_node_is_removed_and_a_removed_node_serves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Five nodes of one cluster: an odd count, so one dead node may go without force.
    let mut nodes = network(tmp.path(), 5, 5);
    wait_converged(&refs(&nodes), 5, CONVERGE);
    let network_id = health(&nodes[0])["network"].as_str().unwrap().to_string();
    assert_eq!(health(&nodes[4])["network"], network_id.as_str(), "adopted");
    let r = put(&nodes[1], "before", "v");
    assert_eq!(r.status, 201, "{}", r.text());

    // Alive: refused, through the API and the CLI.
    let alive = nodes[4].peer.clone();
    let r = http(
        "DELETE",
        &nodes[0].http,
        &format!("/peers/{alive}"),
        b"",
        &[],
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "alive", "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("force"));
    let out = Command::new(BIN)
        .args(["remove", &alive, "--node", &nodes[1].http])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("alive"), "{stderr}");
    assert_eq!(health(&nodes[4])["status"], "ok");
    assert_eq!(health(&nodes[0])["members"], 5);

    // Dead, in a cluster of five: removed without force once the other members confirm.
    let mut dead = nodes.pop().unwrap();
    kill9(&mut dead);
    wait_until(Duration::from_secs(30), "the dead node removed", || {
        let out = Command::new(BIN)
            .args(["remove", &dead.peer, "--node", &nodes[0].http])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Until the members agree it is silent: unconfirmed (exit 1), never anything else.
        assert!(
            out.status.code() == Some(0) || stderr.contains("unconfirmed"),
            "{stderr}"
        );
        out.status.code() == Some(0)
    });
    wait_until(Duration::from_secs(20), "four members everywhere", || {
        nodes.iter().all(|n| health(n)["members"] == 4)
    });
    let back = restart(&dead, Some(&nodes[0].p2p)).wait();
    // It learns it at its first contact with a member: here a read of a key it does not hold
    // (answering "unknown key" needs its cluster's answers), answered 410 already.
    wait_until(
        Duration::from_secs(20),
        "the returning node hears of it",
        || {
            let r = get(&back, "never-written");
            assert!(matches!(r.status, 410 | 503), "{}", r.text());
            r.status == 410
        },
    );
    removed_answers(&back);
    drop(back);

    // Now four members, an even count: an unforced removal is refused even for a dead node.
    let mut victim = nodes.pop().unwrap();
    kill9(&mut victim);
    let out = Command::new(BIN)
        .args(["remove", &victim.peer, "--node", &nodes[1].http])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("even"), "{stderr}");
    assert!(nodes.iter().all(|n| health(n)["members"] == 4));

    // Forced: removed everywhere; the three left go on writing.
    let out = Command::new(BIN)
        .args(["remove", &victim.peer, "--force", "--node", &nodes[1].http])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    wait_until(Duration::from_secs(20), "three members everywhere", || {
        nodes.iter().all(|n| health(n)["members"] == 3)
    });
    put_eventually(&nodes[2], "after-removal", "ok", Duration::from_secs(30));
    assert_eq!(get(&nodes[0], "after-removal").status, 200);

    // A restart with its data dir: it hears it was removed and serves nothing, for good.
    let back = restart(&victim, Some(&nodes[0].p2p)).wait();
    assert_eq!(back.peer, victim.peer);
    wait_until(Duration::from_secs(20), "the removed node knows it", || {
        health(&back)["status"] == "removed"
    });
    removed_answers(&back);
    let out = Command::new(BIN)
        .args(["put", "k", "v", "--node", &back.http])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed"));
    drop(back);
    let back = restart(&victim, Some(&nodes[0].p2p)).wait();
    assert_eq!(health(&back)["status"], "removed", "from its own disk");
    removed_answers(&back);
    let log = std::fs::read_to_string(&back.log).unwrap();
    assert!(
        log.contains("an operator removed this node"),
        "{}",
        tail(&back.log)
    );
    // The members are unaffected.
    assert!(nodes.iter().all(|n| health(n)["members"] == 3));
}

/// What a removed node answers: 410 removed to everything, /health says so.
fn removed_answers(n: &NodeProc) {
    let h = health(n);
    assert_eq!(
        (&h["removed"], &h["ready"], &h["writable"]),
        (&Json::Bool(true), &Json::Bool(false), &Json::Bool(false)),
        "{h}"
    );
    for r in [
        get(n, "before"),
        get(n, "never-written"),
        put(n, "new-key", "v"),
        http("GET", &n.http, "/store/before?verify=true", b"", &[]),
    ] {
        assert_eq!(r.status, 410, "{}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "removed", "{j}");
        let message = j["message"].as_str().unwrap();
        assert!(
            message.contains("removed this node") && message.contains("data dir"),
            "{message}"
        );
    }
}

/// A node never joins another network: one that founded its own (and so has data) exits
/// non-zero when started with --bootstrap of another network's node, naming both ids. A
/// joiner whose bootstrap peer speaks another --protocolid exits quickly, saying so.
#[test]
fn a_node_never_joins_another_network_or_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node("c0", &tmp.path().join("a"), None).wait();
    let a_network = health(&a)["network"].as_str().unwrap().to_string();

    // A second network, founded independently, then stopped.
    let b_dir = tmp.path().join("b");
    let mut b = start_node("c0", &b_dir, None).wait();
    let b_network = health(&b)["network"].as_str().unwrap().to_string();
    assert_ne!(a_network, b_network, "two founders draw two ids");
    kill9(&mut b);
    let b_dir_arg = b_dir.to_str().unwrap();
    let (code, stderr, _) = run_to_exit(
        &[
            "run",
            "--cid",
            "c0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--bootstrap",
            &a.p2p,
            "--bootstrap-timeout-ms",
            "10000",
            "--data-dir",
            b_dir_arg,
        ],
        Duration::from_secs(30),
    );
    eprintln!("another network: {stderr}");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&a_network) && stderr.contains(&b_network),
        "both network ids named: {stderr}"
    );
    // The member it tried saw a node of another network: logged and counted, not a member.
    wait_until(Duration::from_secs(10), "the foreign peer counted", || {
        http("GET", &a.http, "/metrics", b"", &[])
            .text()
            .contains("replicator_foreign_network_peers_total 1")
    });
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("another network")
            && l.contains(&b_network)
            && l.contains(&a_network)),
        "{}",
        tail(&a.log)
    );
    // Its data is untouched: it still belongs to its own network.
    let b = restart(&b, None).wait();
    assert_eq!(health(&b)["network"], b_network.as_str());
    drop(b);

    // Another protocol id: refused at once, well before the bootstrap timeout.
    let j_dir = tmp.path().join("j");
    let (code, stderr, took) = run_to_exit(
        &[
            "run",
            "--cid",
            "c0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--bootstrap",
            &a.p2p,
            "--protocolid",
            "another-deployment",
            "--bootstrap-timeout-ms",
            "30000",
            "--data-dir",
            j_dir.to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    eprintln!("another protocol id, exit after {took:?}: {stderr}");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("protocol") && stderr.contains("another-deployment"),
        "{stderr}"
    );
    assert!(
        !j_dir.join("replicator.redb").exists(),
        "no database is created"
    );
    // The first network is unaffected.
    assert_eq!(health(&a)["members"], 1);
    assert_eq!(health(&a)["network"], a_network.as_str());
}
