//! wan-proxy: the delaying TCP proxy of the WAN benchmark (`node/scripts/wan_bench.py`), one
//! per network namespace, and the echo server its probe measures round trips against.
//!
//! The kernel of the benchmark machine has no netem, so delays are made in user space. In
//! each namespace an iptables `nat OUTPUT` rule redirects every TCP connection to another
//! namespace's address to 127.0.0.1:15001; this proxy reads the original destination
//! (SO_ORIGINAL_DST), connects there from a socket carrying SO_MARK 0x2d7 (which the rule
//! skips), and forwards every chunk in both directions after that direction's one-way delay:
//! a chunk read at t leaves at t + delay, in order. The delays come from a JSON file, read
//! again on SIGHUP (see `delays.rs`).
//!
//! ```text
//! wan-proxy CONFIG OWN_IP     # prints "ready proxy_port P mark M echo_port E" once it
//!                             # listens; SIGHUP reads CONFIG again; SIGTERM stops it
//! ```

mod delays;
mod relay;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use delays::Delays;

const ECHO_PORT: u16 = 7007;

fn load(path: &str) -> Result<Delays, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    Delays::parse(&text).map_err(|e| format!("{path}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (path, own_ip) = match args.as_slice() {
        [_, path, ip] => match ip.parse::<Ipv4Addr>() {
            Ok(ip) => (path.clone(), ip),
            Err(_) => {
                eprintln!("wan-proxy: {ip:?} is not an IPv4 address");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: wan-proxy CONFIG OWN_IP");
            return ExitCode::from(2);
        }
    };
    let delays = match load(&path) {
        Ok(d) => Arc::new(RwLock::new(d)),
        Err(e) => {
            eprintln!("wan-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(serve(path, own_ip, delays)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wan-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: String, own_ip: Ipv4Addr, delays: relay::Shared) -> std::io::Result<()> {
    let proxy = TcpListener::bind(("127.0.0.1", relay::PROXY_PORT)).await?;
    let echo = TcpListener::bind((own_ip, ECHO_PORT)).await?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    // What the benchmark needs to redirect to us and to probe us, in one line.
    println!(
        "ready proxy_port {} mark {} echo_port {ECHO_PORT}",
        relay::PROXY_PORT,
        relay::MARK
    );
    loop {
        tokio::select! {
            accepted = proxy.accept() => {
                let (stream, _) = accepted?;
                let delays = delays.clone();
                tokio::spawn(async move {
                    let _ = relay::relay(stream, delays).await;
                });
            }
            _ = hangup.recv() => match load(&path) {
                Ok(d) => *delays.write().expect("delays lock") = d,
                Err(e) => eprintln!("wan-proxy: kept the old delays: {e}"),
            },
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}
