//! Frames per second and CPU time for many small frames between two nodes on loopback.
//!
//! ```text
//! cargo run --release -p transport-libp2p --example throughput -- [frames] [frame_bytes]
//! # alone in a network namespace, so that the TCP segment counts are this run's only:
//! unshare -n sh -c 'ip link set lo up && target/release/examples/throughput 1000000 64'
//! ```
//!
//! Two nodes run in this process on a 2-thread tokio runtime (like the node binary on a
//! 2-core machine). The sender sends `frames` frames of `frame_bytes` bytes to the receiver
//! the way the node does (node/src/net.rs: `Client::send` from the driver's task, in turns of
//! 100 frames); the receiver counts them. Then 2000 sequential round trips (a frame there, a
//! frame back) measure latency, and 2000 turns of 5 frames and an answer show how frames
//! that are not flooded share writes. CPU time is the process's user + system time from
//! /proc/self/stat, so it covers both nodes.

use std::time::{Duration, Instant};

use transport_libp2p::libp2p::identity::Keypair;
use transport_libp2p::{NetConfig, NetError, NetEvent, start};

const RTT_ROUNDS: usize = 2_000;
/// Frames the sender queues before it lets the other tasks run, like one driver turn.
const FRAMES_PER_TURN: usize = 100;
/// The last phase: turns of a few frames, each answered.
const TURNS: usize = 2_000;
const FRAMES_PER_SMALL_TURN: usize = 5;

fn main() {
    let mut args = std::env::args().skip(1);
    let frames: usize = args.next().map_or(100_000, |a| a.parse().expect("frames"));
    let frame_bytes: usize = args.next().map_or(64, |a| a.parse().expect("frame_bytes"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(frames, frame_bytes));
}

/// TCP segments sent in this network namespace so far (`OutSegs` of /proc/net/snmp). Run the
/// benchmark alone in a namespace (`unshare -n`) for it to count only this process's.
fn tcp_segments_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    // Clock ticks are 100 Hz on Linux for /proc.
    Duration::from_millis((utime + stime) * 10)
}

async fn run(frames: usize, frame_bytes: usize) {
    let mut cfg = NetConfig::new(Keypair::generate_ed25519(), "bench");
    cfg.network = Some("bench".into());
    cfg.protocol_id = "bench".into();
    let (receiver, mut receiver_events, receiver_loop) = start(cfg).await.expect("receiver");
    tokio::spawn(receiver_loop.run());
    let mut cfg = NetConfig::new(Keypair::generate_ed25519(), "bench");
    cfg.bootstrap = Some(receiver.listen_addrs().await[0].clone());
    cfg.protocol_id = "bench".into();
    let (sender, mut sender_events, sender_loop) = start(cfg).await.expect("sender");
    tokio::spawn(sender_loop.run());
    let to = receiver.local_peer_id();
    let back_to = sender.local_peer_id();

    // Warm up: the connection exists (start waited for the Hello); one frame each way.
    sender.send(to, vec![0; frame_bytes]).expect("warm up");
    wait_message(&mut receiver_events).await;

    // Throughput: the node's way of sending (net.rs): queue and go on. When the peer's queue
    // is full (the node would drop the frame), the benchmark waits a little and queues the
    // frame again, so that every frame is counted.
    let segments0 = tcp_segments_sent();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let sending = {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut full = 0u64;
            for i in 0..frames {
                let mut frame = vec![0; frame_bytes];
                frame[..8.min(frame_bytes)]
                    .copy_from_slice(&(i as u64).to_be_bytes()[..8.min(frame_bytes)]);
                loop {
                    match sender.send(to, frame.clone()) {
                        Ok(()) => break,
                        Err(NetError::QueueFull { .. }) => {
                            full += 1;
                            tokio::time::sleep(Duration::from_micros(100)).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                if i % FRAMES_PER_TURN == FRAMES_PER_TURN - 1 {
                    tokio::task::yield_now().await;
                }
            }
            full
        })
    };
    let mut received = 0;
    while received < frames {
        wait_message(&mut receiver_events).await;
        received += 1;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let segments = tcp_segments_sent() - segments0;
    let full = sending.await.expect("sender task");
    let stats = sender.stats();
    println!(
        "throughput: {frames} frames of {frame_bytes} B in {:.3} s: {:.0} frames/s; CPU {:.2} s ({:.1} us/frame, both nodes)",
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / frames as f64,
    );
    println!(
        "  {segments} TCP segments sent ({:.3} per frame, both directions)",
        segments as f64 / frames as f64
    );
    println!(
        "  {} writes ({:.1} frames per write), {} streams opened; queue full {full} times",
        stats.total.writes,
        stats.total.frames_sent as f64 / stats.total.writes.max(1) as f64,
        stats.total.streams_opened,
    );

    // Latency: sequential round trips.
    let segments0 = tcp_segments_sent();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for _ in 0..RTT_ROUNDS {
        sender.send(to, vec![1; frame_bytes]).expect("there");
        wait_message(&mut receiver_events).await;
        receiver.send(back_to, vec![2; frame_bytes]).expect("back");
        wait_message(&mut sender_events).await;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let segments = tcp_segments_sent() - segments0;
    println!(
        "round trips: {RTT_ROUNDS} in {:.3} s: {:.0} us each; CPU {:.1} us per round trip",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / RTT_ROUNDS as f64,
        cpu.as_secs_f64() * 1e6 / RTT_ROUNDS as f64,
    );
    println!(
        "  {segments} TCP segments sent ({:.1} per round trip of 2 frames)",
        segments as f64 / RTT_ROUNDS as f64
    );

    // Turns: like a driver turn that sends a few messages to a peer, then waits for the
    // answers. How many frames share a write when nothing floods?
    let writes0 = sender.stats().total.writes;
    let segments0 = tcp_segments_sent();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for _ in 0..TURNS {
        for _ in 0..FRAMES_PER_SMALL_TURN {
            sender.send(to, vec![3; frame_bytes]).expect("turn");
        }
        for _ in 0..FRAMES_PER_SMALL_TURN {
            wait_message(&mut receiver_events).await;
        }
        receiver
            .send(back_to, vec![4; frame_bytes])
            .expect("answer");
        wait_message(&mut sender_events).await;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let segments = tcp_segments_sent() - segments0;
    let writes = sender.stats().total.writes - writes0;
    println!(
        "turns: {TURNS} turns of {FRAMES_PER_SMALL_TURN} frames and an answer in {:.3} s: {:.0} us each; CPU {:.1} us per turn",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / TURNS as f64,
        cpu.as_secs_f64() * 1e6 / TURNS as f64,
    );
    println!(
        "  {:.2} writes per turn of {FRAMES_PER_SMALL_TURN} frames; {:.1} TCP segments per turn",
        writes as f64 / TURNS as f64,
        segments as f64 / TURNS as f64
    );
    sender.shutdown().await;
    receiver.shutdown().await;
}

async fn wait_message(events: &mut tokio::sync::mpsc::Receiver<NetEvent>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(NetEvent::Message { .. })) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no frame for 30 s"),
        }
    }
}
