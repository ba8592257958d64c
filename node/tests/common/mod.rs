//! Helpers for tests that start real `replicator` processes on 127.0.0.1.
//! Every wait is bounded; every child is killed when its handle drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_replicator");

/// Flags that make failures show up fast in tests.
pub const FAST_FLAGS: &[&str] = &[
    "--down-after-ms",
    "1500",
    "--put-timeout-ms",
    "5000",
    "--bootstrap-timeout-ms",
    "4000",
    "--leave-timeout-ms",
    "3000",
    "--log-level",
    "info,libp2p=warn,transport_libp2p=info",
];

pub struct NodeProc {
    pub child: Child,
    pub cluster: String,
    pub peer: String,
    pub p2p: String,
    pub http: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node being started: its banner is read by [`Starting::wait`].
pub struct Starting {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    cluster: String,
    dir: PathBuf,
    log: PathBuf,
}

pub fn start_node(cluster: &str, dir: &Path, bootstrap: Option<&str>) -> Starting {
    start_node_with(cluster, dir, bootstrap, &[])
}

pub fn start_node_with(
    cluster: &str,
    dir: &Path,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> Starting {
    start_node_wrapped(&[], cluster, dir, bootstrap, extra)
}

/// Like [`start_node_with`], run through `wrapper` (e.g. `["prlimit", "--nofile=1024"]`).
pub fn start_node_wrapped(
    wrapper: &[&str],
    cluster: &str,
    dir: &Path,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> Starting {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.with_extension("log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("run")
        .args(["--cid", cluster])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(FAST_FLAGS)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.spawn().expect("the replicator binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Keep draining so that the node never blocks on a full pipe.
                continue;
            }
        }
    });
    Starting {
        child: Some(child),
        lines,
        cluster: cluster.to_string(),
        dir: dir.to_path_buf(),
        log,
    }
}

impl Starting {
    pub fn wait(mut self) -> NodeProc {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut peer, mut p2p, mut http) = (None, None, None);
        while http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(p) = line.strip_prefix("peer id: ") {
                        peer = Some(p.to_string());
                    } else if let Some(a) = line.strip_prefix("listening on: ") {
                        p2p.get_or_insert_with(|| a.to_string());
                    } else if let Some(h) = line.strip_prefix("HTTP listening on ") {
                        http = Some(h.to_string());
                    }
                }
                Err(_) => {
                    let _ = self.child.as_mut().unwrap().kill();
                    panic!(
                        "node {} did not start; log:\n{}",
                        self.dir.display(),
                        tail(&self.log)
                    );
                }
            }
        }
        NodeProc {
            child: self.child.take().unwrap(),
            cluster: self.cluster.clone(),
            peer: peer.unwrap(),
            p2p: p2p.unwrap(),
            http: http.unwrap(),
            dir: self.dir.clone(),
            log: self.log.clone(),
        }
    }
}

impl Starting {
    /// `Some(code)` if the node already exited (it failed to start).
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.code())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub struct Resp {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`). Status 0: no answer.
pub fn raw(base: &str, request: &[u8]) -> Resp {
    let addr = base.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Resp {
            status: 0,
            head: String::new(),
            body: Vec::new(),
        };
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp {
            status: 0,
            head: String::new(),
            body: buf,
        };
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

pub fn http(method: &str, base: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(base, &bytes)
}

pub fn put(node: &NodeProc, key: &str, value: &str) -> Resp {
    http(
        "PUT",
        &node.http,
        &format!("/store/{key}"),
        value.as_bytes(),
        &[],
    )
}

pub fn get(node: &NodeProc, key: &str) -> Resp {
    http("GET", &node.http, &format!("/store/{key}"), b"", &[])
}

pub fn health(node: &NodeProc) -> serde_json::Value {
    http("GET", &node.http, "/health", b"", &[]).json()
}

/// Polls `f` every 200 ms until it is true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every node is ready, writable and sees `members` members.
pub fn wait_converged(nodes: &[&NodeProc], members: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let healths: Vec<serde_json::Value> = nodes.iter().map(|n| health(n)).collect();
        if healths
            .iter()
            .all(|h| h["writable"] == true && h["members"] == members)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {members} writable members everywhere: {}",
            healths
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `sig` (e.g. `-TERM`, `-STOP`) to the node's process.
pub fn signal(node: &NodeProc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", node.peer);
}

/// Waits (at most `timeout`) until the node's process exits; its exit code.
pub fn wait_exit(node: &mut NodeProc, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            return s.code();
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit within {timeout:?}; log:\n{}",
            node.peer,
            tail(&node.log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kill -9: the node stops at once, without goodbye (it stays a member everywhere).
pub fn kill9(node: &mut NodeProc) {
    let _ = node.child.kill();
    let _ = node.child.wait();
}

/// Starts `node` again with its cluster and data dir.
pub fn restart(node: &NodeProc, bootstrap: Option<&str>) -> Starting {
    start_node(&node.cluster, &node.dir, bootstrap)
}

/// Runs `replicator` with `args` until it exits (killed after `timeout`); returns its exit
/// code, stderr and how long it ran.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the replicator binary starts");
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "replicator {args:?} did not exit within {timeout:?}; stderr:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    (status.code(), reader.join().unwrap(), took)
}

/// Starts one network of 3 clusters x 3 nodes under `dir` (node `i` in cluster `c{i / 3 + 1}`,
/// all started together) and waits until every node knows every other and is writable.
pub fn start_three_clusters(dir: &Path) -> Vec<NodeProc> {
    let boot = start_node("c1", &dir.join("n0"), None).wait();
    let starting: Vec<Starting> = (1..9)
        .map(|i| {
            start_node(
                &format!("c{}", i / 3 + 1),
                &dir.join(format!("n{i}")),
                Some(&boot.p2p),
            )
        })
        .collect();
    let mut nodes = vec![boot];
    nodes.extend(starting.into_iter().map(Starting::wait));
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&all, 9, Duration::from_secs(60));
    nodes
}

/// Reads `stdout` line by line until one contains `until` (bounded: 60 s).
pub fn read_lines_until(stdout: std::process::ChildStdout, until: &str) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let done = line.contains(until);
        lines.push(line);
        if done {
            return lines;
        }
    }
    panic!("no line with {until:?}: {lines:?}");
}

/// A port such that `port .. port + count` are all free on 127.0.0.1 now, below the kernel's
/// ephemeral range (32768 and up), where an outgoing connection could take one of them before
/// a node binds it (the demo's nodes listen on consecutive ports).
pub fn free_port_run(count: u16) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ u64::from(std::process::id());
    for attempt in 0..500u64 {
        let base =
            20_000 + ((seed.wrapping_mul(6364136223846793005) ^ (attempt * 7919)) % 12_000) as u16;
        let bound: Vec<_> = (base..base + count)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if bound.len() == usize::from(count) {
            return base;
        }
    }
    panic!("no run of {count} free ports below 32768");
}

/// Whatever still runs with `dir` on its command line when this drops is SIGKILLed: a test
/// that starts a demo (whose nodes are grandchildren, out of the test's reach) leaves nothing
/// running, even when it fails half way or the demo's own cleanup regresses.
pub struct KillLeftoversUnder(pub PathBuf);

impl Drop for KillLeftoversUnder {
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.0) {
            // SAFETY: kill(2) with a pid read from /proc and a valid signal.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The pids of the processes (other than this one) whose command line mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<libc::pid_t> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid as u32 != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Starts `replicator demo` with one cluster of `nodes` nodes, HTTP from `port` on, its data
/// in `data`, and waits for its summary: the demo and the summary's lines.
pub fn start_demo(data: &Path, port: u16, nodes: u16) -> (Child, Vec<String>) {
    let mut demo = Command::new(BIN)
        .args([
            "demo",
            "--clusters",
            "1",
            "--nodes-per-cluster",
            &nodes.to_string(),
        ])
        .args(["--http-port", &port.to_string(), "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let summary = read_lines_until(demo.stdout.take().unwrap(), "Ctrl-C stops");
    (demo, summary)
}
