//! The dashboard's JSON (`GET /dashboard`) and page (`/`) with real `replicator` processes on
//! 127.0.0.1: every member grouped by cluster with its own numbers (from its reports), the
//! network's rates, a killed node turning down, writability per cluster, and the API token.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const TOKEN: &str = "a-token-for-the-dashboard";

fn dashboard(node: &NodeProc) -> Value {
    let r = http("GET", &node.http, "/dashboard", b"", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The node entry of `peer` in a dashboard view.
fn entry<'a>(view: &'a Value, peer: &str) -> &'a Value {
    view["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["nodes"].as_array().unwrap())
        .find(|n| n["node"] == peer)
        .unwrap_or_else(|| panic!("{peer} missing in {view}"))
}

fn cluster<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == name)
        .unwrap_or_else(|| panic!("cluster {name} missing in {view}"))
}

/// Two clusters of three. The dashboard of one node lists all six, grouped by cluster, each
/// with the numbers it reported itself; the rates count the network's creates and reads; a
/// node killed -9 turns down within seconds (its numbers are then old, never refreshed), and
/// a cluster that lost its majority is not writable, nor is any other (writes need every
/// cluster's majority).
#[test]
fn the_dashboard_shows_every_member_its_numbers_and_a_killed_one_down() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = start_node("c1", &tmp.path().join("n0"), None).wait();
    let starting: Vec<Starting> = (1..6)
        .map(|i| {
            start_node(
                &format!("c{}", i / 3 + 1),
                &tmp.path().join(format!("n{i}")),
                Some(&boot.p2p),
            )
        })
        .collect();
    let mut nodes = vec![boot];
    nodes.extend(starting.into_iter().map(Starting::wait));
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&all, 6, Duration::from_secs(60));
    let viewer = &nodes[0];

    // Shape: two clusters of three, this node marked, every node's own report with its HTTP
    // address, fresh. (A report sent just before its node was ready says "joining": wait for
    // the next one.)
    wait_until(
        Duration::from_secs(15),
        "a fresh report of a ready node from every member",
        || {
            let v = dashboard(viewer);
            nodes.iter().all(|n| {
                let e = entry(&v, &n.peer);
                e["report"]["fresh"] == true && e["state"] == "up"
            })
        },
    );
    let v = dashboard(viewer);
    assert_eq!(v["node"], viewer.peer.as_str());
    assert_eq!(v["cluster"], "c1");
    assert_eq!(v["writable"], true);
    assert_eq!(v["api"]["token_configured"], false);
    assert_eq!(v["clusters"].as_array().unwrap().len(), 2, "{v}");
    for n in &nodes {
        let c = cluster(&v, &n.cluster);
        assert_eq!(c["writable"], true, "{c}");
        assert_eq!(
            (c["members"].as_u64(), c["majority"].as_u64()),
            (Some(3), Some(2))
        );
        assert!(
            c["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["node"] == n.peer.as_str()),
            "{} not in cluster {}: {c}",
            n.peer,
            n.cluster
        );
        let e = entry(&v, &n.peer);
        assert_eq!(e["state"], "up", "{e}");
        assert_eq!(e["self"], n.peer == viewer.peer);
        assert_eq!(e["http"], n.http.as_str(), "{e}");
        assert_eq!(
            e["report"]["source"],
            if n.peer == viewer.peer {
                "self"
            } else {
                "peer"
            }
        );
        assert_eq!(e["report"]["ready"], true);
    }

    // Another node's numbers are its own: a key created at n3 shows in n3's keys_stored as n0
    // sees it, and the network's rates count the create and the read (each answered by one
    // node: counted once).
    assert_eq!(put(&nodes[3], "seen-from-afar", "v").status, 201);
    assert_eq!(get(&nodes[4], "seen-from-afar").status, 200);
    wait_until(
        Duration::from_secs(15),
        "n3's keys_stored and the network's create and read rates at n0",
        || {
            let v = dashboard(viewer);
            let samples = v["history"]["samples"].as_array().unwrap().clone();
            let stored = entry(&v, &nodes[3].peer)["report"]["keys_stored"].as_u64();
            stored >= Some(1)
                && samples
                    .iter()
                    .any(|s| s["creates_per_s"].as_f64() > Some(0.0))
                && samples
                    .iter()
                    .any(|s| s["reads_per_s"].as_f64() > Some(0.0))
                && samples
                    .iter()
                    .any(|s| s["put_latency_ms"]["p50"].is_number())
                && samples.last().unwrap()["nodes_counted"] == 6
        },
    );
    // `since` returns only newer samples.
    let last = dashboard(viewer)["history"]["samples"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["unix_ms"]
        .as_u64()
        .unwrap();
    let newer = http(
        "GET",
        &viewer.http,
        &format!("/dashboard?since={last}"),
        b"",
        &[],
    )
    .json();
    assert!(
        newer["history"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["unix_ms"].as_u64() > Some(last)),
        "{newer}"
    );
    assert_eq!(
        http("GET", &viewer.http, "/dashboard?since=soon", b"", &[]).status,
        400
    );

    // One node of c2 killed: down within a few seconds (--down-after-ms 1500), its report
    // no longer fresh; a minority down costs nothing.
    let killed = nodes[4].peer.clone();
    kill9(&mut nodes[4]);
    wait_until(Duration::from_secs(10), "the killed node down", || {
        entry(&dashboard(&nodes[0]), &killed)["state"] == "down"
    });
    wait_until(Duration::from_secs(10), "its report stale", || {
        entry(&dashboard(&nodes[0]), &killed)["report"]["fresh"] == false
    });
    let v = dashboard(&nodes[0]);
    assert_eq!(entry(&v, &killed)["transport_up"], false);
    assert_eq!(cluster(&v, "c2")["writable"], true, "{v}");
    assert_eq!(cluster(&v, "c2")["reachable"], 2);

    // The second of c2: c2 has no majority, and no write can be decided anywhere.
    let killed2 = nodes[5].peer.clone();
    kill9(&mut nodes[5]);
    wait_until(Duration::from_secs(10), "c2 without majority", || {
        let v = dashboard(&nodes[0]);
        entry(&v, &killed2)["state"] == "down" && cluster(&v, "c2")["writable"] == false
    });
    let v = dashboard(&nodes[0]);
    assert_eq!(
        cluster(&v, "c2")["not_writable"],
        serde_json::json!(["no_majority"])
    );
    assert_eq!(
        cluster(&v, "c1")["not_writable"],
        serde_json::json!(["other_cluster_without_majority"])
    );
    assert_eq!(v["writable"], false);
    assert_eq!(v["not_writable"], serde_json::json!(["no_majority"]));
    // The same rule as /health.
    assert_eq!(health(&nodes[0])["not_writable"], v["not_writable"]);
}

/// The page is public like /health (it holds no data) and loads only its own files; the JSON
/// is a read: open unless reads need the token. It tells the page whether the token it sent
/// is right, so that write controls show only with it.
#[test]
fn the_page_is_public_and_the_json_follows_the_read_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let token = token.to_str().unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let solo = |name: &str, reads: bool| {
        let mut extra = vec!["--cluster-size-min", "1", "--api-token-file", token];
        if reads {
            extra.push("--api-token-reads");
        }
        start_node_with("solo", &tmp.path().join(name), None, &extra).wait()
    };
    let open_reads = solo("a", false);
    let closed_reads = solo("b", true);
    page_is_served(&open_reads);
    page_is_served(&closed_reads);

    let v = dashboard(&open_reads);
    assert_eq!(v["api"]["token_configured"], true);
    assert_eq!(v["api"]["reads_need_token"], false);
    assert_eq!(v["api"]["token_accepted"], false);
    let with = |node: &NodeProc, auth: &str| {
        http(
            "GET",
            &node.http,
            "/dashboard",
            b"",
            &[("Authorization", auth)],
        )
    };
    assert_eq!(
        with(&open_reads, &bearer).json()["api"]["token_accepted"],
        true
    );
    assert_eq!(
        with(&open_reads, "Bearer wrong").json()["api"]["token_accepted"],
        false
    );

    assert_eq!(
        http("GET", &closed_reads.http, "/dashboard", b"", &[]).status,
        401
    );
    assert_eq!(with(&closed_reads, "Bearer wrong").status, 403);
    let r = with(&closed_reads, &bearer);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["api"]["reads_need_token"], true);
    assert_eq!(r.json()["api"]["token_accepted"], true);
    let me = entry(&r.json(), &closed_reads.peer).clone();
    assert_eq!(
        (me["self"].as_bool(), me["state"].as_str()),
        (Some(true), Some("up"))
    );
}

/// `/`, its script and its style: served without a token, with a policy that lets the page
/// load nothing from elsewhere.
fn page_is_served(node: &NodeProc) {
    for (path, kind, marker) in [
        ("/", "text/html", "/dashboard.js"),
        ("/dashboard.js", "text/javascript", "/dashboard"),
        ("/dashboard.css", "text/css", ".cluster"),
    ] {
        let r = http("GET", &node.http, path, b"", &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let head = r.head.to_ascii_lowercase();
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{path}: {head}"
        );
        assert!(r.text().contains(marker), "{path}");
        for outside in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(!r.text().contains(outside), "{path} loads {outside}...");
        }
    }
}
