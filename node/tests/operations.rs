//! Routine operations with real processes, as an operator does them: a node of a 3-node
//! cluster (network key and API token on) stopped with SIGTERM, what systemd, Kubernetes and
//! `docker stop` send, then started again with the same command.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A SIGTERM stops a node; it does not leave. It exits 0, its peers still count it as a
/// member (and write without it: 2 of 3 is a majority), and the same start command brings it
/// back: within 15 s every node reports 3 members and a PUT at every node answers 201.
#[test]
fn a_sigterm_is_a_stop_not_a_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = secrets(tmp.path());
    let extra: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let a = start_node_with("c0", &tmp.path().join("a"), None, &extra).wait();
    let start = |name: &str| start_node_with("c0", &tmp.path().join(name), Some(&a.p2p), &extra);
    let b = start("b").wait();
    let mut c = start("c").wait();
    wait_converged(&[&a, &b, &c], 3, Duration::from_secs(60));
    assert_eq!(put(&a, "before", "1").status, 201);
    // Leaving is an operator's act: it needs the token, and names the node it asks.
    let leave = |peer: &str, headers: &[(&str, &str)]| {
        http(
            "POST",
            &c.http,
            &format!("/leave?peer={peer}"),
            b"",
            headers,
        )
    };
    assert_eq!(leave(&c.peer, &[]).status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let r = leave(&a.peer, &[("Authorization", &bearer)]);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (409, "not_this_node".into())
    );
    assert!(c.child.try_wait().unwrap().is_none(), "it left anyway");

    signal(&c, "-TERM");
    let code = wait_exit(&mut c, Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", tail(&c.log));
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(!log.contains("goodbye said"), "a stop said goodbye:\n{log}");

    // Down, not gone: still a member at a and b (give a goodbye, were there one, time to land).
    std::thread::sleep(Duration::from_secs(2));
    for n in [&a, &b] {
        assert_eq!(health(n)["members"], 3, "{}", health(n));
    }
    let r = put(&a, "while-c-is-stopped", "1");
    assert_eq!(r.status, 201, "{}", r.text());

    // The same command again.
    let restarted = Instant::now();
    let c = start("c").wait();
    let nodes = [&a, &b, &c];
    wait_until(
        Duration::from_secs(15).saturating_sub(restarted.elapsed()),
        "3 members everywhere and a PUT at every node answered 201",
        || {
            let members = nodes.iter().all(|n| health(n)["members"] == 3);
            members
                && nodes.iter().enumerate().all(|(i, n)| {
                    let key = format!("after-restart-{i}-{}", restarted.elapsed().as_millis());
                    put(n, &key, "1").status == 201
                })
        },
    );
    eprintln!("back in {:?}", restarted.elapsed());
    // And it caught up with the write it missed.
    wait_until(Duration::from_secs(15), "c serves what it missed", || {
        get(&c, "while-c-is-stopped").text() == "1"
    });
}

const TOKEN: &str = "a-token-only-the-operators-hold";

/// A network key and an API token, as the README's commands make them: the flags that give
/// them to a node.
fn secrets(dir: &Path) -> Vec<String> {
    let key = dir.join("network.key");
    let out = Command::new(BIN).arg("keygen").arg(&key).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = dir.join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    vec![
        "--network-key".into(),
        key.to_str().unwrap().into(),
        "--api-token-file".into(),
        token.to_str().unwrap().into(),
    ]
}

/// A node removed while it was dead learns it at its first contact with a member, also when
/// it is restarted without --bootstrap (from the members it recorded): within 10 s it
/// answers 410 `removed`, and says so in /health.
#[test]
fn a_removed_node_restarted_without_bootstrap_learns_it() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = secrets(tmp.path());
    let extra: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let a = start_node_with("c0", &tmp.path().join("a"), None, &extra).wait();
    let start = |name: &str, bootstrap: Option<&str>| {
        start_node_with("c0", &tmp.path().join(name), bootstrap, &extra)
    };
    let b = start("b", Some(&a.p2p)).wait();
    let mut c = start("c", Some(&a.p2p)).wait();
    wait_converged(&[&a, &b, &c], 3, Duration::from_secs(60));
    assert_eq!(put(&a, "before", "1").status, 201);
    wait_until(Duration::from_secs(10), "c stores the key", || {
        get(&c, "before").status == 200
    });

    kill9(&mut c);
    let bearer = format!("Bearer {TOKEN}");
    wait_until(
        Duration::from_secs(30),
        "the removal of c confirmed",
        || {
            let path = format!("/peers/{}", c.peer);
            let r = http("DELETE", &a.http, &path, b"", &[("Authorization", &bearer)]);
            assert!(
                r.status == 200 || (r.status == 503 && r.json()["error"] == "unconfirmed"),
                "{}",
                r.text()
            );
            r.status == 200
        },
    );

    let restarted = Instant::now();
    let c = start("c", None).wait();
    wait_until(
        Duration::from_secs(10).saturating_sub(restarted.elapsed()),
        "the restarted node answers 410 removed",
        || {
            let r = get(&c, "before");
            r.status == 410 && r.json()["error"] == "removed" && health(&c)["removed"] == true
        },
    );
    eprintln!("410 after {:?}", restarted.elapsed());
}

/// A demo killed with SIGKILL (a test's or an operator's last resort, an OOM kill) cannot stop
/// its nodes itself; they stop by themselves (SIGTERM from the kernel when their parent is
/// gone), within seconds, instead of running on without anyone to stop them.
#[test]
fn a_killed_demos_nodes_stop_by_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let _leftovers = KillLeftoversUnder(data.clone());
    let port = free_port_run(1);
    let (mut demo, _) = start_demo(&data, port, 1);
    let node = format!("127.0.0.1:{port}");
    assert_eq!(http("GET", &node, "/health", b"", &[]).status, 200);
    // The node's data dir is on its command line only (the demo's names the parent).
    let node_dir = data.join("node-1");
    assert_eq!(processes_mentioning(&node_dir).len(), 1, "the node runs");

    demo.kill().unwrap();
    demo.wait().unwrap();
    wait_until(Duration::from_secs(20), "the node gone", || {
        processes_mentioning(&node_dir).is_empty()
    });
    assert!(
        std::net::TcpStream::connect(&node).is_err(),
        "nothing answers on the node's port"
    );
}

/// The demo's Ctrl-C stops its nodes; it does not dissolve the network. Started again on the
/// same data dir, the same three members come back (no one left), the key written before is
/// still there, and every node takes writes.
#[test]
fn the_demos_ctrl_c_stops_nodes_that_come_back_as_members() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let _leftovers = KillLeftoversUnder(data.clone());
    let port = free_port_run(3);
    let nodes: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", port + i)).collect();
    let demo = || {
        let (child, summary) = start_demo(&data, port, 3);
        let peers: Vec<String> = summary
            .iter()
            .filter(|l| l.trim_start().starts_with("node "))
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect();
        (child, peers)
    };
    // Ctrl-C: SIGINT to the demo, which stops its nodes and exits 0.
    let ctrl_c = |mut child: std::process::Child| {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().unwrap()
    };
    let members_everywhere = |peers: &[String]| {
        nodes.iter().all(|n| {
            let clusters = http("GET", n, "/clusters", b"", &[]);
            clusters.status == 200 && {
                let listed = clusters.json()["clusters"]["cluster-1"].clone();
                let mut listed: Vec<String> = listed
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                listed.sort();
                let mut want = peers.to_vec();
                want.sort();
                listed == want
            }
        })
    };

    let (first, peers) = demo();
    assert_eq!(peers.len(), 3, "three nodes in the summary: {peers:?}");
    wait_until(Duration::from_secs(30), "three members everywhere", || {
        members_everywhere(&peers)
    });
    wait_until(Duration::from_secs(15), "a first write", || {
        http("PUT", &nodes[0], "/store/before", b"1", &[]).status == 201
    });
    assert!(ctrl_c(first).success(), "the demo exits 0 on Ctrl-C");

    let (second, peers_again) = demo();
    assert_eq!(peers_again, peers, "the same nodes come back");
    wait_until(
        Duration::from_secs(15),
        "the same three members everywhere",
        || members_everywhere(&peers),
    );
    for (i, n) in nodes.iter().enumerate() {
        wait_until(Duration::from_secs(15), "a write at every node", || {
            http("PUT", n, &format!("/store/after{i}"), b"2", &[]).status == 201
        });
        assert_eq!(http("GET", n, "/store/before", b"", &[]).text(), "1");
    }
    assert!(ctrl_c(second).success());
}

/// Before an upgrade an operator must know whether the new release talks to the running one:
/// `replicator --version` names the wire version (nodes of different ones drop each other's
/// frames) and the database format (an older data dir is upgraded in place).
#[test]
fn the_version_names_the_wire_version_and_the_database_format() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "replicator {} (wire version {}, database format {})",
        env!("CARGO_PKG_VERSION"),
        replicator_core::wire::WIRE_VERSION,
        replicator_node::storage::FORMAT_VERSION
    );
    assert_eq!(line.trim(), want);
}
