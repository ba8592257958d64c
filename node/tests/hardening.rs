//! Issue 9, probed as an adversarial operator would, with real processes on 127.0.0.1: only
//! members get in, the API token guards what it should, slow and idle clients never hold the
//! API, /health is honest, the database is bound to its identity, corruption is repaired and
//! never served, a full disk is a degraded mode. Every wait is bounded; every child is killed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn start(cluster: &str, dir: &Path, bootstrap: Option<&str>, extra: &[&str]) -> NodeProc {
    start_node_with(cluster, dir, bootstrap, extra).wait()
}

fn keygen(path: &Path) {
    let (code, err, _) = run_to_exit(&["keygen", path.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(0), "keygen: {err}");
}

fn log_of(node: &NodeProc) -> String {
    std::fs::read_to_string(&node.log).unwrap_or_default()
}

/// A node without the network key cannot connect to, join or read from a network that has
/// one; one with another key neither; one with the key joins. `keygen` never overwrites.
#[test]
fn strangers_without_the_network_key_never_get_in() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("network.key");
    keygen(&key);
    let (code, err, _) = run_to_exit(&["keygen", key.to_str().unwrap()], Duration::from_secs(10));
    assert_ne!(code, Some(0), "keygen overwrote a key: {err}");
    let other_key = tmp.path().join("other.key");
    keygen(&other_key);
    let key_flag = format!("--network-key={}", key.display());
    let solo = ["--cluster-size-min", "1"];

    let a = start(
        "c0",
        &tmp.path().join("a"),
        None,
        &[&key_flag, solo[0], solo[1]],
    );
    assert_eq!(health(&a)["network_open"], false);
    let boot = a.p2p.clone();
    assert_eq!(put(&a, "secret", "s3cr3t").status, 201);

    for (name, extra) in [
        ("no-key", vec![]),
        (
            "other-key",
            vec![format!("--network-key={}", other_key.display())],
        ),
    ] {
        let dir = tmp.path().join(name);
        let mut args = vec![
            "run".to_string(),
            "--cid".into(),
            "evil".into(),
            "--bootstrap".into(),
            boot.clone(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--bootstrap-timeout-ms".into(),
            "3000".into(),
            "--data-dir".into(),
            dir.to_str().unwrap().into(),
        ];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err, took) = run_to_exit(&args, Duration::from_secs(20));
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains("cannot join the network"), "{name}: {err}");
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
        assert!(
            !dir.join("replicator.redb").exists(),
            "{name} created a database"
        );
    }
    let peers = http("GET", &a.http, "/peers", b"", &[]).json();
    assert_eq!(
        peers["peers"],
        serde_json::json!([]),
        "no stranger is a member"
    );

    let b = start(
        "c0",
        &tmp.path().join("b"),
        Some(&boot),
        &[&key_flag, solo[0], solo[1]],
    );
    wait_until(Duration::from_secs(20), "b joined and copied", || {
        get(&b, "secret").text() == "s3cr3t"
    });

    // A node without a key says loudly that its network is open.
    let open = start("c0", &tmp.path().join("open"), None, &solo);
    assert_eq!(health(&open)["network_open"], true);
    assert!(log_of(&open).contains("NETWORK OPEN"), "{}", log_of(&open));
}

/// With --api-token-file, DELETE /peers always needs the token, PUT with --api-token-writes:
/// 401 without it, 403 with a wrong one, as JSON; reads and /health stay open. The CLI sends
/// the token of --token-file.
#[test]
fn api_token_guards_operator_calls_and_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("api.token");
    std::fs::write(&token, "t0ps3cret-token\n").unwrap();
    let token_flag = format!("--api-token-file={}", token.display());
    let a = start(
        "c0",
        &tmp.path().join("a"),
        None,
        &[&token_flag, "--api-token-writes", "--cluster-size-min", "1"],
    );
    let good = [("Authorization", "Bearer t0ps3cret-token")];
    let bad = [("Authorization", "Bearer nope")];

    let r = http("DELETE", &a.http, "/peers/12D3KooWxyz?force=true", b"", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "unauthorized");
    let r = http(
        "DELETE",
        &a.http,
        "/peers/12D3KooWxyz?force=true",
        b"",
        &bad,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "forbidden");
    let r = http("DELETE", &a.http, "/peers/12D3KooWxyz", b"", &good);
    assert_eq!(r.status, 404, "{}", r.text());

    let r = http("PUT", &a.http, "/store/k", b"v", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = http("PUT", &a.http, "/store/k", b"v", &bad);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http("PUT", &a.http, "/store/k", b"v", &good);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get(&a, "k").text(), "v", "reads need no token here");
    assert_eq!(health(&a)["api_open"], false);

    let node = a.http.as_str();
    let (code, err, _) = run_to_exit(
        &["remove", "12D3KooWxyz", "--node", node],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let t = token.to_str().unwrap();
    let (code, err, _) = run_to_exit(
        &["remove", "12D3KooWxyz", "--node", node, "--token-file", t],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(4), "not a member: {err}");
    let (code, err, _) = run_to_exit(
        &["put", "k2", "v2", "--node", node, "--token-file", t],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{err}");
}

/// 300 idle sockets, a half-sent head and a body sent at 1 byte/s: a normal GET is still
/// answered at once; the slow ones are closed after their timeouts (the body with 408).
#[test]
fn slow_and_idle_clients_never_hold_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(
        "c0",
        &tmp.path().join("a"),
        None,
        &[
            "--cluster-size-min",
            "1",
            "--http-header-timeout-ms",
            "1500",
            "--http-body-timeout-ms",
            "1500",
            "--http-idle-timeout-ms",
            "3000",
            "--http-connections-max",
            "200",
        ],
    );
    let addr = a.http.trim_start_matches("http://").to_string();
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let mut slow_head = TcpStream::connect(&addr).unwrap();
    slow_head
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut slow_body = TcpStream::connect(&addr).unwrap();
    slow_body
        .write_all(b"PUT /store/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let body_writer = {
        let mut s = slow_body.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..10 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let started = Instant::now();
    let r = http("GET", &a.http, "/health", b"", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    // The 1 byte/s body: 408 after the body timeout, connection closed.
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow_body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    body_writer.join().unwrap();

    // The half-sent head: closed after the header timeout.
    slow_head
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let t = Instant::now();
    assert!(matches!(slow_head.read(&mut buf), Ok(0) | Err(_)));
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());

    // Every idle socket is closed after the idle timeout (or was evicted to make room).
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in idle.iter_mut() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "an idle socket is still open"
        );
    }
    assert!(Instant::now() < deadline, "idle sockets held too long");
    let r = http("GET", &a.http, "/health", b"", &[]);
    assert_eq!(r.status, 200);
}

/// One member of three down costs nothing: /health names it, stays ok and writable, and
/// `replicator status` exits 0 with a warning. Two down: no majority, not writable, `status`
/// exits 5; reads of stored keys stay served.
#[test]
fn health_names_silent_members_and_status_exits_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start("c0", &tmp.path().join("a"), None, &[]);
    let mut b = start("c0", &tmp.path().join("b"), Some(&a.p2p), &[]);
    let mut c = start("c0", &tmp.path().join("c"), Some(&a.p2p), &[]);
    wait_converged(&[&a, &b, &c], 3, Duration::from_secs(30));
    let (code, err, _) = run_to_exit(&["status", "--node", &a.http], Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");

    // One silent member of three: a majority remains, writes still commit.
    let silent_c = c.peer.clone();
    kill9(&mut c);
    wait_until(Duration::from_secs(15), "a reports c silent", || {
        health(&a)["silent_nodes"] == serde_json::json!([silent_c])
    });
    let h = health(&a);
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["writable"], true, "{h}");
    assert_eq!(put(&a, "one-down", "v").status, 201);
    let (code, err, _) = run_to_exit(&["status", "--node", &a.http], Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 member(s) are silent"), "{err}");

    // Two of three: no majority of the cluster, a write cannot commit now.
    let silent_b = b.peer.clone();
    kill9(&mut b);
    wait_until(Duration::from_secs(15), "a reports b and c silent", || {
        let h = health(&a);
        h["writable"] == false
            && h["silent_nodes"].as_array().map_or(0, Vec::len) == 2
            && h["not_writable"] == serde_json::json!(["no_majority"])
    });
    let h = health(&a);
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["clusters_without_majority"], serde_json::json!(["c0"]));
    assert!(
        h["silent_nodes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(silent_b))
    );
    assert_eq!(h["ready"], true, "reads are still served");
    assert_eq!(
        get(&a, "one-down").text(),
        "v",
        "a stored value is still served"
    );
    let (code, err, _) = run_to_exit(&["status", "--node", &a.http], Duration::from_secs(20));
    assert_eq!(code, Some(5), "{err}");
}

/// The database records its node's peer id: a missing, empty, damaged or foreign
/// identity.key is refused with a clear message (exit 65 but for the foreign one), so is a
/// database whose first byte was flipped (65), and the right identity starts. The banner's next-node hint takes
/// a free HTTP port.
#[test]
fn identity_is_bound_to_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let other = tmp.path().join("other");
    let (a_peer, other_peer) = {
        let a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
        let o = start("c0", &other, None, &[]);
        assert_eq!(put(&a, "k", "v").status, 201);
        (a.peer.clone(), o.peer.clone())
    };
    let id = dir.join("identity.key");
    let saved = std::fs::read(&id).unwrap();
    let run = |d: &PathBuf| start_to_exit(d);

    // A data dir unusable as it is exits 65 (a damaged or missing file), naming the file, in
    // one readable sentence.
    std::fs::remove_file(&id).unwrap();
    let (code, err, _) = run(&dir);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("identity.key is missing"), "{err}");
    assert!(!error_line(&err).contains("  "), "runs of spaces: {err}");
    assert!(!id.exists(), "no new identity was made");

    std::fs::write(&id, b"").unwrap();
    let (code, err, _) = run(&dir);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("identity.key is empty"), "{err}");
    assert!(!err.contains("feature"), "{err}");

    std::fs::write(&id, b"not a key").unwrap();
    let (code, err, _) = run(&dir);
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains("identity.key is not a libp2p ed25519 keypair"),
        "{err}"
    );

    // Another node's identity: an operator's mix-up, not damage (exit 1).
    std::fs::copy(other.join("identity.key"), &id).unwrap();
    let (code, err, _) = run(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("belongs to peer {a_peer}")) && err.contains(&other_peer),
        "{err}"
    );
    assert!(!error_line(&err).contains("  "), "runs of spaces: {err}");

    // The database's first byte flipped: exit 65, naming the file.
    std::fs::write(&id, &saved).unwrap();
    let db = dir.join("replicator.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&db, &bytes).unwrap();
    let (code, err, _) = run(&dir);
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains(db.to_str().unwrap()) && err.contains("damaged"),
        "{err}"
    );
    bytes[0] ^= 0xff;
    std::fs::write(&db, &bytes).unwrap();

    std::fs::write(&id, &saved).unwrap();
    let a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
    assert_eq!(a.peer, a_peer);
    assert_eq!(get(&a, "k").text(), "v");
}

/// A database that lost its newest checkpoint, while its write-ahead log was emptied after
/// it, has lost acknowledged writes (and maybe promises): an older copy of the file put back,
/// or redb falling back to its previous commit. The node refuses it (exit 65, naming it)
/// instead of starting on it and copying silently from its peers. A damaged newest commit
/// slot is refused too (redb commits in two phases here, so it does not fall back).
#[test]
fn a_database_behind_its_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let db = dir.join("replicator.redb");
    let run_stop_with_keys = |keys: std::ops::Range<u32>| {
        let mut a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
        for i in keys {
            assert_eq!(put(&a, &format!("k{i}"), "v").status, 201);
        }
        // A stop checkpoints: the database takes the log's writes and the log is emptied.
        signal(&a, "-TERM");
        wait_exit(&mut a, Duration::from_secs(15));
    };
    let restart = || start_to_exit(&dir);
    run_stop_with_keys(0..5);
    let older = std::fs::read(&db).unwrap();
    run_stop_with_keys(5..10);
    let newest = std::fs::read(&db).unwrap();

    std::fs::write(&db, &older).unwrap();
    let (code, err, _) = restart();
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains(db.to_str().unwrap()) && err.contains("older than its write-ahead log"),
        "{err}"
    );

    // redb's header: 9 bytes of magic, then the "god byte", whose lowest bit names the newest
    // of the two 128-byte commit slots that follow the first 64 bytes. A byte of the slot
    // flipped: its checksum fails.
    let mut damaged = newest.clone();
    const GOD_BYTE: usize = 9;
    let slot = 64 + 128 * usize::from(damaged[GOD_BYTE] & 1);
    damaged[slot + 72] ^= 0x01;
    std::fs::write(&db, &damaged).unwrap();
    let (code, err, _) = restart();
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains(db.to_str().unwrap()) && err.contains("damaged"),
        "{err}"
    );

    std::fs::write(&db, &newest).unwrap();
    let a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
    assert_eq!(get(&a, "k0").text(), "v");
    assert_eq!(get(&a, "k9").text(), "v");
}

/// Starts a node of cluster c0 on `dir` that is expected to refuse it: its exit code, its
/// stderr and how long it ran (bounded: 20 s).
fn start_to_exit(dir: &Path) -> (Option<i32>, String, Duration) {
    run_to_exit(
        &[
            "run",
            "--cid",
            "c0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    )
}

/// Flips `bit` of every copy of `needle` in the file.
fn flip_all(path: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        let at = i + at;
        bytes[at + needle.len() / 2] ^= 0x04;
        n += 1;
        i = at + needle.len();
    }
    std::fs::write(path, bytes).unwrap();
    n
}

/// A node stopped, a bit flipped in a value of its database, restarted: it never serves the
/// damaged value, copies the key again from a member and serves it right. 64 bytes flipped in
/// the middle of the file: no panic (a clear error and exit 65, or a repaired node).
#[test]
fn corrupt_database_is_repaired_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start("c0", &tmp.path().join("a"), None, &[]);
    let b = start("c0", &tmp.path().join("b"), Some(&a.p2p), &[]);
    // Stopped with SIGTERM below: its database is closed properly, and it stays a member.
    let mut c = start("c0", &tmp.path().join("c"), Some(&a.p2p), &[]);
    wait_converged(&[&a, &b, &c], 3, Duration::from_secs(30));
    let value = |i: usize| format!("value-with-a-unique-marker-{i:04}-end");
    for i in 0..20 {
        assert_eq!(put(&a, &format!("key{i}"), &value(i)).status, 201);
    }
    wait_until(Duration::from_secs(10), "c holds every key", || {
        (0..20).all(|i| get(&c, &format!("key{i}")).text() == value(i))
    });

    let stop = |c: &mut NodeProc| {
        signal(c, "-TERM");
        wait_exit(c, Duration::from_secs(15));
    };
    stop(&mut c);
    let db = tmp.path().join("c").join("replicator.redb");
    assert!(
        flip_all(&db, value(7).as_bytes()) >= 1,
        "the value is in the file"
    );

    let c2 = start("c0", &tmp.path().join("c"), Some(&a.p2p), &[]);
    let bad = {
        let mut v = value(7).into_bytes();
        let mid = v.len() / 2;
        v[mid] ^= 0x04;
        v
    };
    wait_until(Duration::from_secs(30), "c serves key7 again", || {
        let r = get(&c2, "key7");
        assert_ne!(r.body, bad, "the damaged value was served");
        assert!(
            r.status == 200 || r.status == 503,
            "{} {}",
            r.status,
            r.text()
        );
        r.status == 200
    });
    assert_eq!(get(&c2, "key7").text(), value(7));
    // A decided key is not read at a restart: the damage is found when the GET reads it.
    assert!(
        log_of(&c2).contains("a decided key's record failed its checksum"),
        "{}",
        log_of(&c2)
    );
    // Not a silent re-copy: what was damaged and what was repaired are logged and counted.
    assert!(
        log_of(&c2).contains("damaged keys repaired"),
        "{}",
        log_of(&c2)
    );
    let metrics = http("GET", &c2.http, "/metrics", b"", &[]).text();
    for line in [
        "replicator_damaged_records_found_total{table=\"keys\"} 1",
        "replicator_damaged_keys_repaired_total 1",
        "replicator_damaged_keys 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    let mut c2 = c2;
    stop(&mut c2);

    // 64 bytes flipped in the middle of the file.
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&db, bytes).unwrap();
    let mut starting = start_node_with("c0", &tmp.path().join("c"), Some(&a.p2p), &[]);
    // It either refuses to start (exit 65, clearly) or starts and serves only right values.
    let t = Instant::now();
    loop {
        if let Some(code) = starting_exit(&mut starting) {
            assert_eq!(
                code,
                Some(65),
                "{}",
                common::tail(&tmp.path().join("c.log"))
            );
            let log = std::fs::read_to_string(tmp.path().join("c.log")).unwrap();
            assert!(log.contains("is corrupt"), "{log}");
            return;
        }
        if t.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c3 = starting.wait();
    wait_until(Duration::from_secs(30), "c serves every key right", || {
        (0..20).all(|i| {
            let r = get(&c3, &format!("key{i}"));
            assert!(
                r.status == 503 || (r.status == 200 && r.text() == value(i)),
                "key{i}: {} {}",
                r.status,
                r.text()
            );
            r.status == 200
        })
    });
}

/// A node killed with writes only in its write-ahead log: a tail cut short (as a crash
/// mid-append leaves it) is dropped and every earlier write served; a flipped byte in an early
/// record, with good records after it, is refused clearly (exit 65), never half-loaded.
#[test]
fn write_ahead_log_torn_tail_is_dropped_and_damage_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
    for i in 0..20 {
        assert_eq!(put(&a, &format!("key{i}"), &format!("v{i}")).status, 201);
    }
    // Let the last lazy write reach the log, then die without a checkpoint.
    std::thread::sleep(Duration::from_millis(100));
    kill9(&mut a);
    let wal = dir.join("replicator.wal");
    let logged = std::fs::read(&wal).unwrap();
    assert!(
        logged.len() > 1000,
        "the writes are in the log ({} bytes)",
        logged.len()
    );

    // A torn tail: the last 3 bytes of the last record never reached the disk (the zeros
    // after the records are the file's extension, written ahead of them).
    let records_end = logged.iter().rposition(|b| *b != 0).unwrap() + 1;
    std::fs::write(&wal, &logged[..records_end - 3]).unwrap();
    let mut a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
    for i in 0..19 {
        assert_eq!(
            get(&a, &format!("key{i}")).text(),
            format!("v{i}"),
            "key{i}"
        );
    }
    assert!(
        log_of(&a).contains("ends in an incomplete or damaged record: dropped"),
        "{}",
        log_of(&a)
    );
    let metrics = http("GET", &a.http, "/metrics", b"", &[]).text();
    assert!(
        metrics.lines().any(|l| l
            .strip_prefix("replicator_log_tail_dropped_bytes_total ")
            .is_some_and(|n| n.parse::<u64>().unwrap() > 0)),
        "the dropped tail is counted:\n{metrics}"
    );
    // Starting applied the log to the database and emptied it; these go to the log again.
    for i in 20..40 {
        assert_eq!(put(&a, &format!("key{i}"), &format!("v{i}")).status, 201);
    }
    std::thread::sleep(Duration::from_millis(100));
    kill9(&mut a);

    // Damage inside the first record, good records after it (the first 24 bytes are the
    // log's header: the checkpoint its records follow, and where they start).
    let logged = std::fs::read(&wal).unwrap();
    assert!(logged.len() > 1000, "the log holds the later writes");
    assert_eq!(&logged[..4], b"RPLS", "the log starts with its header");
    assert_eq!(
        u64::from_le_bytes(logged[12..20].try_into().unwrap()),
        24,
        "its records start right after it"
    );
    let refused_with = |at: usize| {
        let mut damaged = logged.clone();
        damaged[at] ^= 0x10;
        std::fs::write(&wal, &damaged).unwrap();
        let mut starting = start_node_with("c0", &dir, None, &["--cluster-size-min", "1"]);
        let t = Instant::now();
        let code = loop {
            if let Some(code) = starting_exit(&mut starting) {
                break code;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "a node with a damaged log started"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = common::tail(&dir.with_extension("log"));
        assert_eq!(code, Some(65), "{log}");
        assert!(log.contains(wal.to_str().unwrap()), "{log}");
        log
    };
    let log = refused_with(24 + 9);
    assert!(log.contains("write-ahead log is damaged"), "{log}");
    let log = refused_with(6);
    assert!(log.contains("header"), "{log}");
}

/// Where the records of the write-ahead log at `wal` start, from its header (0 if it has
/// none readable yet).
fn log_records_start(wal: &Path) -> u64 {
    let bytes = std::fs::read(wal).unwrap_or_default();
    if bytes.len() < 20 || &bytes[..4] != b"RPLS" {
        return 0;
    }
    u64::from_le_bytes(bytes[12..20].try_into().unwrap())
}

/// Past 1 MiB of log a checkpoint runs on a thread beside the group commits, and when it is
/// done the log's header moves past what the database took. A node killed with -9 while
/// writes go on and checkpoints run restarts with every write it acknowledged.
#[test]
fn a_kill_while_checkpoints_run_beside_the_appends_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
    let wal = dir.join("replicator.wal");
    let value = "v".repeat(2000);
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    let http_addr = a.http.clone();
    std::thread::scope(|writers| {
        for w in 0..4 {
            let (acknowledged, value, http_addr) = (&acknowledged, &value, &http_addr);
            writers.spawn(move || {
                for i in 0.. {
                    let key = format!("w{w}-{i}");
                    let r = http(
                        "PUT",
                        http_addr,
                        &format!("/store/{key}"),
                        value.as_bytes(),
                        &[],
                    );
                    if r.status != 201 || Instant::now() > deadline {
                        break;
                    }
                    acknowledged.lock().unwrap().push(key);
                }
            });
        }
        // Two checkpoints beside the appends done, then a kill while the writes go on.
        let mut moves = 0;
        let mut last = 0;
        while moves < 2 {
            assert!(
                Instant::now() < deadline,
                "no checkpoint moved the log's header"
            );
            let start = log_records_start(&wal);
            if start > 24 && start != last {
                moves += 1;
                last = start;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(150));
        kill9(&mut a);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() > 500, "{} writes", acknowledged.len());
    let a = start("c0", &dir, None, &["--cluster-size-min", "1"]);
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| get(&a, k).text() != value)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        lost.first()
    );
}

/// The `error: ...` line a node that refuses to start prints last.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

fn unsafe_sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Whether a node being started already exited (and its code).
fn starting_exit(starting: &mut Starting) -> Option<Option<i32>> {
    starting.try_exit()
}

/// The data dir on a small tmpfs that is filled up: the node stays up, refuses writes at once,
/// serves what it holds, says so in /health, and resumes by itself once space is back; the
/// write that was stuck then commits.
#[test]
fn disk_full_is_a_degraded_mode_not_an_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let a = start("c0", &mnt.join("a"), None, &["--cluster-size-min", "1"]);
    assert_eq!(put(&a, "before", "still-here").status, 201);
    // Fill the disk.
    let filler = mnt.join("filler");
    fill(&filler);
    // Writes fail now: the first one waits (its outcome is unknown), the next are refused at
    // once, and the node stays up.
    let big = "x".repeat(60 * 1024);
    let mut stuck = None;
    for i in 0..40 {
        let r = put(&a, &format!("full{i}"), &big);
        match r.status {
            201 => continue,
            503 => {
                stuck = Some(i);
                break;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    let stuck = stuck.expect("the disk filled up");
    wait_until(
        Duration::from_secs(15),
        "health reports the storage",
        || {
            let h = health(&a);
            h["writable"] == false
                && h["not_writable"] == serde_json::json!(["storage_unavailable"])
        },
    );
    let t = Instant::now();
    let r = put(&a, "refused", "v");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "storage_unavailable");
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once");
    assert_eq!(get(&a, "before").text(), "still-here", "reads keep working");
    assert!(a.child.id() > 0);

    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(15), "the node resumes", || {
        health(&a)["writable"] == true
    });
    let r = get(&a, &format!("full{stuck}"));
    assert_eq!(
        r.status, 200,
        "the stuck write committed once space was back"
    );
    assert_eq!(put(&a, "after", "v").status, 201);

    // Killed and restarted on a disk that is still full: it starts, serves what it holds,
    // refuses writes, and resumes once space is back.
    fill(&filler);
    let mut a = a;
    kill9(&mut a);
    let dir = mnt.join("a");
    let mut starting = start_node_with("c0", &dir, None, &["--cluster-size-min", "1"]);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            starting.try_exit(),
            None,
            "the node exited on a full disk; log:\n{}",
            common::tail(&dir.with_extension("log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&filler).unwrap();
    let a = starting.wait();
    assert_eq!(get(&a, "before").text(), "still-here");
    wait_until(Duration::from_secs(15), "the node is writable", || {
        health(&a)["writable"] == true
    });
    assert_eq!(put(&a, "after-restart", "v").status, 201);
}

fn fill(filler: &Path) {
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// X-Request-Id as documented (1 to 128 visible ASCII characters), and the banner's hint for
/// the next node takes a free HTTP port.
#[test]
fn request_ids_and_hints_match_the_docs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(
        "c0",
        &tmp.path().join("a"),
        None,
        &["--cluster-size-min", "1"],
    );
    let put_with = |key: &str, id: &str| {
        http(
            "PUT",
            &a.http,
            &format!("/store/{key}"),
            b"v",
            &[("X-Request-Id", id)],
        )
    };
    assert_eq!(put_with("k1", "a b c").status, 400);
    assert_eq!(put_with("k2", "").status, 400);
    assert_eq!(put_with("k3", &"r".repeat(129)).status, 400);
    assert_eq!(put_with("k4", &"r".repeat(128)).status, 201);
    assert_eq!(put_with("k5", "ok-id_1").status, 201);
}

/// With 1,024 open files (soft and hard), 1,100 idle sockets do not stop the API: beyond
/// --http-connections-max (512) a new connection replaces the one idle the longest.
#[test]
fn an_idle_flood_beyond_the_open_files_limit_does_not_stop_the_api() {
    raise_own_open_files_limit(4096);
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node_wrapped(
        &["prlimit", "--nofile=1024:1024"],
        "c0",
        &tmp.path().join("a"),
        None,
        &["--cluster-size-min", "1"],
    )
    .wait();
    let addr = a.http.trim_start_matches("http://").to_string();
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() > 1024, "the flood connected ({})", idle.len());
    let started = Instant::now();
    let r = http("GET", &a.http, "/health", b"", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(put(&a, "k", "v").status, 201);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    drop(idle);
}

/// The node's default libp2p listen address is loopback; the banner's next-node hint takes a
/// free HTTP port (not this one plus one); the demo's hints name the node they mean.
#[test]
fn defaults_and_hints_do_not_expose_or_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--cid", "c0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("a"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let banner = read_lines_until(child.stdout.take().unwrap(), "--data-dir");
    let _ = child.kill();
    let _ = child.wait();
    let listens: Vec<&str> = banner
        .iter()
        .filter_map(|l| l.strip_prefix("listening on: "))
        .collect();
    assert!(!listens.is_empty(), "{banner:?}");
    assert!(
        listens.iter().all(|a| a.starts_with("/ip4/127.0.0.1/")),
        "{banner:?}"
    );
    let hint = banner
        .iter()
        .find(|l| l.contains("replicator run"))
        .unwrap();
    assert!(hint.contains("--http 127.0.0.1:0 "), "{hint}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _leftovers = KillLeftoversUnder(tmp.path().join("demo"));
    let (mut demo, summary) = start_demo(&tmp.path().join("demo"), port, 1);
    unsafe_sigterm(demo.id());
    let t = Instant::now();
    while demo.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = demo.kill();
    let _ = demo.wait();
    let node = format!("--node http://127.0.0.1:{port}");
    let cli: Vec<&String> = summary
        .iter()
        .filter(|l| l.contains("replicator put") || l.contains("replicator bench"))
        .collect();
    assert!(!cli.is_empty(), "{summary:?}");
    assert!(cli.iter().all(|l| l.contains(&node)), "{cli:?}");
    assert!(tmp.path().join("demo/network.key").exists());
}

fn raise_own_open_files_limit(want: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < want {
            l.rlim_cur = want.min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// What schemathesis found, as plain requests: every answer below is a status that
/// /openapi.json documents for that operation, with a JSON error body that has the fields its
/// Error schema requires (the full fuzzing runs in node/scripts/api_fuzz.sh).
#[test]
fn answers_to_odd_requests_are_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("api.token");
    std::fs::write(&token, "tok\n").unwrap();
    let a = start(
        "c0",
        &tmp.path().join("a"),
        None,
        &[
            "--cluster-size-min",
            "1",
            &format!("--api-token-file={}", token.display()),
        ],
    );
    let doc = http("GET", &a.http, "/openapi.json", b"", &[]).json();
    let auth = [("Authorization", "Bearer tok")];
    /// method, operation, path, headers, expected status
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/store/{key}",
            "/store/k?verify=null&verify=null",
            vec![],
            400,
        ),
        (
            "DELETE",
            "/peers/{peer}",
            "/peers/p?force=null&force=null",
            auth.to_vec(),
            400,
        ),
        (
            "DELETE",
            "/peers/{peer}",
            "/peers/nobody",
            auth.to_vec(),
            404,
        ),
        ("DELETE", "/peers/{peer}", "/peers/nobody", vec![], 401),
        (
            "DELETE",
            "/peers/{peer}",
            "/peers/nobody",
            vec![("Authorization", "Bearer x")],
            403,
        ),
        (
            "PUT",
            "/store/{key}",
            "/store/k",
            vec![("X-Request-Id", "")],
            400,
        ),
    ];
    for (method, op, path, headers, status) in cases {
        let r = http(method, &a.http, path, b"", &headers);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let documented = &doc["paths"][op][method.to_lowercase()]["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {op} does not document {status}"
        );
        let body = r.json();
        let errors = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
            .as_array()
            .unwrap();
        assert!(
            body["message"].is_string() && errors.contains(&body["error"]),
            "{method} {path}: {body}"
        );
    }
}
