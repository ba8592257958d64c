//! `replicator demo`: a local network of real nodes (child processes of this binary, real
//! libp2p on 127.0.0.1), until Ctrl-C; then every node stops (a stop, not a leave: each
//! stays a member in its data dir).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{DemoArgs, init_logging};

/// How long a node may take to print its addresses after it starts.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes get to stop before they are killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One running node.
pub struct DemoNode {
    pub cluster: String,
    pub peer: String,
    pub http: String,
    pub p2p: String,
    pub child: Child,
}

pub async fn main(args: DemoArgs) -> ExitCode {
    init_logging(&args.log);
    let base = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("replicator-demo-{}", std::process::id())),
    };
    let mut nodes = Vec::new();
    let started = start_all(&args, &base, &mut nodes).await;
    let code = match started {
        Ok(()) => {
            print_summary(&nodes, &base);
            crate::run::shutdown_signal().await;
            eprintln!("\nstopping every node (they stay members of the network)...");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    stop_all(&mut nodes).await;
    code
}

async fn start_all(args: &DemoArgs, base: &Path, nodes: &mut Vec<DemoNode>) -> Result<()> {
    std::fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let key = network_key(base)?;
    let token = api_token(base)?;
    let mut bootstrap: Option<String> = None;
    let mut i = 0;
    for c in 0..args.clusters {
        for _ in 0..args.nodes_per_cluster {
            let cluster = format!("cluster-{}", c + 1);
            let port = args
                .http_port
                .checked_add(i as u16)
                .ok_or_else(|| anyhow!("port overflow"))?;
            let dir = base.join(format!("node-{}", i + 1));
            let mut extra = vec![
                format!("--network-key={}", key.display()),
                format!("--api-token-file={}", token.display()),
            ];
            extra.extend(args.node_args.iter().cloned());
            extra.push(format!("--log-level={}", args.log.log_level));
            let node = spawn_node(
                &exe,
                &cluster,
                &format!("127.0.0.1:{port}"),
                bootstrap.as_deref(),
                &dir,
                &extra,
            )
            .await?;
            if bootstrap.is_none() {
                bootstrap = Some(node.p2p.clone());
            }
            nodes.push(node);
            i += 1;
        }
    }
    Ok(())
}

/// The demo network's key: `<data-dir>/network.key`, made on the first start.
fn network_key(base: &Path) -> Result<PathBuf> {
    let path = base.join("network.key");
    if !path.exists() {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| anyhow!("the OS gave no randomness: {e}"))?;
        let key = transport_libp2p::generate_network_key(random);
        crate::run::write_new_secret(&path, key.as_bytes())?;
    }
    Ok(path)
}

/// The demo nodes' API token: `<data-dir>/api.token` (operator calls need it).
fn api_token(base: &Path) -> Result<PathBuf> {
    let path = base.join("api.token");
    if !path.exists() {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| anyhow!("the OS gave no randomness: {e}"))?;
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        crate::run::write_new_secret(&path, format!("{token}\n").as_bytes())?;
    }
    Ok(path)
}

/// Starts `replicator run` as a child, with its log in `<dir>.log`, and waits for its banner.
pub async fn spawn_node(
    exe: &Path,
    cluster: &str,
    http: &str,
    bootstrap: Option<&str>,
    dir: &Path,
    extra: &[String],
) -> Result<DemoNode> {
    let log_path: PathBuf = dir.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .args([
            "--cid",
            cluster,
            "--http",
            http,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    stop_with_the_demo(&mut cmd);
    let mut child = cmd.spawn().context("cannot start a node")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, mut rx) = mpsc::channel::<String>(64);
    // Keep draining the node's stdout so that it never blocks on a full pipe.
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.try_send(line);
        }
    });
    let (mut peer, mut p2p, mut http_url) = (None, None, None);
    let deadline = tokio::time::Instant::now() + NODE_START_TIMEOUT;
    while http_url.is_none() {
        let line = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "node {} did not start in time (log: {})",
                    dir.display(),
                    log_path.display()
                )
            })?
            .ok_or_else(|| {
                anyhow!(
                    "node {} exited at start; see its log {}",
                    dir.display(),
                    log_path.display()
                )
            })?;
        if let Some(p) = line.strip_prefix("peer id: ") {
            peer = Some(p.to_string());
        } else if let Some(a) = line.strip_prefix("listening on: ") {
            p2p.get_or_insert_with(|| a.to_string());
        } else if let Some(h) = line.strip_prefix("HTTP listening on ") {
            http_url = Some(h.to_string());
        }
    }
    Ok(DemoNode {
        cluster: cluster.to_string(),
        peer: peer.ok_or_else(|| anyhow!("no peer id printed"))?,
        p2p: p2p.ok_or_else(|| anyhow!("no listen address printed"))?,
        http: http_url.expect("loop ends with it"),
        child,
    })
}

fn print_summary(nodes: &[DemoNode], base: &Path) {
    // First, so that it is the line people see: every node serves the dashboard.
    println!(
        "dashboard: {}/  (every node serves one at /; to write from it, give it the API token in {}/api.token)",
        nodes[0].http,
        base.display()
    );
    println!();
    println!(
        "replicator demo: {} nodes running (data and logs in {})",
        nodes.len(),
        base.display()
    );
    println!();
    for (i, n) in nodes.iter().enumerate() {
        println!(
            "  node {:<2} {:<10} {:<24} {}",
            i + 1,
            n.cluster,
            n.http,
            n.peer
        );
    }
    let first = &nodes[0].http;
    let other = &nodes[nodes.len() - 1].http;
    println!();
    println!("try:");
    println!("  curl -i -X PUT --data-binary 'hello' {first}/store/greeting");
    println!("  curl -i {other}/store/greeting");
    println!("  curl -i -X PUT --data-binary 'again' {other}/store/greeting     # 409: exists");
    println!("  curl -s '{other}/store/greeting?verify=true'");
    println!(
        "  curl -s {first}/peers ; curl -s {first}/clusters ; curl -s {first}/health ; curl -s {first}/metrics"
    );
    println!(
        "  replicator put color blue --node {first} ; replicator get color --node {other} ; replicator status --node {first}"
    );
    println!("  replicator bench --node {first} --node {other} --concurrency 16 --duration 10");
    println!();
    println!(
        "network key: {0}/network.key (only nodes with it can connect); API token: {0}/api.token",
        base.display()
    );
    println!(
        "  (operator calls need it: replicator remove PEER --node {first} --token-file {}/api.token)",
        base.display()
    );
    println!();
    println!("Ctrl-C stops every node.");
}

/// Stops every node (SIGTERM), waits, kills the stragglers.
pub async fn stop_all(nodes: &mut [DemoNode]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            terminate(pid);
        }
    }
    let deadline = tokio::time::Instant::now() + NODE_STOP_TIMEOUT;
    for n in nodes.iter_mut() {
        if tokio::time::timeout_at(deadline, n.child.wait())
            .await
            .is_err()
        {
            let _ = n.child.kill().await;
        }
    }
}

/// A node gets SIGTERM when the demo is gone, however it went: `kill_on_drop` and
/// [`stop_all`] do not run when the demo is SIGKILLed, and its nodes went on running, with
/// their data dir possibly deleted under them (seen after a test killed a demo that had not
/// stopped in time). SIGTERM, not SIGKILL: each node still stops as a member.
///
/// The kernel sends the signal when the thread that forked the child ends, not the process:
/// the demo forks from the thread that runs `block_on` (the main thread) or from a runtime
/// worker, both of which live as long as the demo.
fn stop_with_the_demo(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl and getppid, and errors made from an errno
        // (no allocation).
        let demo = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The demo may have died before the prctl: then nothing would ever come.
                if libc::getppid() != demo {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Sends SIGTERM: the node answers what it is serving, closes its database and exits 0; it
/// stays a member.
pub fn terminate(pid: u32) {
    #[cfg(unix)]
    // SAFETY: kill(2) with a pid of our own child and a valid signal has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = pid;
}
