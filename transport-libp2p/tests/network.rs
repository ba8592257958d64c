//! End-to-end tests of the network layer on 127.0.0.1 with ephemeral ports. Every wait is
//! bounded; every node stops when its test ends. `RUST_LOG=transport_libp2p=debug` shows the
//! nodes' logs.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use transport_libp2p::libp2p::identity::Keypair;
use transport_libp2p::libp2p::{Multiaddr, PeerId};
use transport_libp2p::{Client, NetConfig, NetError, NetEvent, start};

const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

struct TestNode {
    client: Client,
    events: mpsc::Receiver<NetEvent>,
    task: JoinHandle<()>,
}

impl TestNode {
    fn peer(&self) -> PeerId {
        self.client.local_peer_id()
    }

    async fn bootstrap_addr(&self) -> Multiaddr {
        let addrs = self.client.listen_addrs().await;
        assert!(!addrs.is_empty(), "a started node knows its listen address");
        addrs[0].clone()
    }

    /// Waits (bounded) for the first event matching `pred`, skipping the others.
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&NetEvent) -> bool) -> NetEvent {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(_)) => {}
                Ok(None) => panic!("{}: event channel closed waiting for {what}", self.peer()),
                Err(_) => panic!("{}: timed out waiting for {what}", self.peer()),
            }
        }
    }
}

impl TestNode {
    /// The next `Message` (bounded), skipping membership events.
    async fn next_message(&mut self) -> NetEvent {
        self.wait_for("Message", |e| matches!(e, NetEvent::Message { .. }))
            .await
    }
}

/// Polls `cond` every 20 ms until it holds (bounded by [`EVENT_TIMEOUT`]).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A founder (no bootstrap) of network `net-<test>`, or a joiner that learns the network id
/// from its bootstrap peer.
fn config(keypair: Keypair, cluster: &str, bootstrap: Option<Multiaddr>, test: &str) -> NetConfig {
    let mut cfg = NetConfig::new(keypair, cluster);
    cfg.network = bootstrap.is_none().then(|| format!("net-{test}"));
    cfg.bootstrap = bootstrap;
    cfg.protocol_id = format!("test-{test}");
    cfg.bootstrap_timeout = Duration::from_secs(5);
    cfg.down_after = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

async fn spawn(cfg: NetConfig) -> TestNode {
    let (client, events, event_loop) = start(cfg).await.expect("node starts");
    let task = tokio::spawn(event_loop.run());
    TestNode {
        client,
        events,
        task,
    }
}

/// Starts a bootstrap node and `clusters.len()` others joining through it; the bootstrap node
/// is in `clusters[0]`'s cluster.
async fn spawn_group(test: &str, bootstrap_cluster: &str, clusters: &[&str]) -> Vec<TestNode> {
    let first = spawn(config(
        Keypair::generate_ed25519(),
        bootstrap_cluster,
        None,
        test,
    ))
    .await;
    let bootstrap = first.bootstrap_addr().await;
    let mut nodes = vec![first];
    for cluster in clusters {
        let cfg = config(
            Keypair::generate_ed25519(),
            cluster,
            Some(bootstrap.clone()),
            test,
        );
        nodes.push(spawn(cfg).await);
    }
    nodes
}

/// Waits until every node has seen every other as `MemberDiscovered`, checking the clusters.
async fn wait_full_discovery(nodes: &mut [TestNode], clusters: &HashMap<PeerId, String>) {
    let expected = nodes.len() - 1;
    let waits = nodes.iter_mut().map(|node| async move {
        let mut seen: HashMap<PeerId, String> = HashMap::new();
        while seen.len() < expected {
            let event = node.wait_for("MemberDiscovered", |e| {
                matches!(e, NetEvent::MemberDiscovered(_))
            });
            if let NetEvent::MemberDiscovered(member) = event.await {
                assert_ne!(member.peer, node.peer(), "a node never discovers itself");
                assert!(member.up);
                assert!(!member.addrs.is_empty(), "member addresses are known");
                assert_eq!(member.network, node.client.network(), "same network");
                let previous = seen.insert(member.peer, member.cluster);
                assert!(previous.is_none(), "MemberDiscovered twice for one peer");
            }
        }
        for (peer, cluster) in &seen {
            assert_eq!(Some(cluster), clusters.get(peer), "cluster of {peer}");
        }
    });
    bounded(
        DISCOVERY_TIMEOUT,
        "full discovery",
        futures::future::join_all(waits),
    )
    .await;
}

async fn bounded<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn clusters_of(nodes: &[TestNode], names: &[&str]) -> HashMap<PeerId, String> {
    nodes
        .iter()
        .zip(names)
        .map(|(node, name)| (node.peer(), (*name).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_five_nodes_in_two_clusters_discover_each_other() {
    init_tracing();
    let names = ["alpha", "alpha", "alpha", "beta", "beta", "beta"];
    let mut nodes = spawn_group("discovery", names[0], &names[1..]).await;
    let clusters = clusters_of(&nodes, &names);
    wait_full_discovery(&mut nodes, &clusters).await;
    for node in &nodes {
        let members = node.client.members().await;
        assert_eq!(members.len(), names.len() - 1);
        for member in members {
            assert_eq!(Some(&member.cluster), clusters.get(&member.peer));
            assert!(member.up);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_arrives_with_its_sender() {
    init_tracing();
    let names = ["alpha", "beta", "beta"];
    let mut nodes = spawn_group("send", names[0], &names[1..]).await;
    let clusters = clusters_of(&nodes, &names);
    wait_full_discovery(&mut nodes, &clusters).await;
    let (a, b) = (nodes[1].peer(), nodes[2].peer());

    nodes[1]
        .client
        .send(b, b"reserve k=v".to_vec())
        .expect("frame queued");
    let event = nodes[2].next_message().await;
    assert_eq!(
        event,
        NetEvent::Message {
            from: a,
            frame: b"reserve k=v".to_vec()
        }
    );

    // An empty frame and a frame to oneself are delivered too.
    nodes[2].client.send(a, Vec::new()).expect("empty frame");
    let event = nodes[1].next_message().await;
    assert_eq!(
        event,
        NetEvent::Message {
            from: b,
            frame: Vec::new()
        }
    );
    nodes[1].client.send(a, b"self".to_vec()).expect("self");
    let event = nodes[1].next_message().await;
    assert_eq!(
        event,
        NetEvent::Message {
            from: a,
            frame: b"self".to_vec()
        }
    );

    // Frames sent from several tasks at once all arrive, each task's in its order.
    let sends = (0u32..4).map(|task| {
        let client = nodes[0].client.clone();
        tokio::spawn(async move {
            for i in 0u32..300 {
                client
                    .send(b, [task.to_be_bytes(), i.to_be_bytes()].concat())
                    .expect("queued");
                if i.is_multiple_of(50) {
                    tokio::task::yield_now().await;
                }
            }
        })
    });
    for send in sends.collect::<Vec<_>>() {
        send.await.expect("task");
    }
    let mut next = [0u32; 4];
    for _ in 0..4 * 300 {
        let NetEvent::Message { from, frame } = nodes[2].next_message().await else {
            unreachable!()
        };
        assert_eq!(from, nodes[0].peer());
        let task = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let i = u32::from_be_bytes(frame[4..].try_into().expect("4 bytes"));
        assert_eq!(i, next[task], "frames of task {task} in order");
        next[task] += 1;
    }
    assert_eq!(next, [300; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_frames_arrive_in_order_in_few_writes() {
    init_tracing();
    let test = "batch";
    const N: u64 = 10_000;
    // Room for every frame even while the stream is being opened: this test is about order
    // and batching, not bounds.
    let with_room = |mut cfg: NetConfig| {
        cfg.send_queue_frames_max = N as usize;
        cfg
    };
    let a = spawn(with_room(config(
        Keypair::generate_ed25519(),
        "alpha",
        None,
        test,
    )))
    .await;
    let bootstrap = a.bootstrap_addr().await;
    let b = spawn(with_room(config(
        Keypair::generate_ed25519(),
        "beta",
        Some(bootstrap),
        test,
    )))
    .await;
    let mut nodes = [a, b];
    let clusters = clusters_of(&nodes, &["alpha", "beta"]);
    wait_full_discovery(&mut nodes, &clusters).await;
    let [a, b] = &mut nodes;
    let started = Instant::now();
    // Both directions at once, as a node answers while it sends; in turns of 100 frames, as
    // a driver queues a turn's frames and lets the other tasks run.
    for i in 0..N {
        a.client
            .send(b.peer(), i.to_be_bytes().to_vec())
            .expect("a to b");
        b.client
            .send(a.peer(), i.to_be_bytes().to_vec())
            .expect("b to a");
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let receive = |node: &mut TestNode, from: PeerId| {
        let mut events = std::mem::replace(&mut node.events, mpsc::channel(1).1);
        async move {
            for expected in 0..N {
                let event = bounded(EVENT_TIMEOUT, "a frame", events.recv()).await;
                match event.expect("open") {
                    NetEvent::Message { from: f, frame } => {
                        assert_eq!(f, from);
                        assert_eq!(frame, expected.to_be_bytes(), "in order");
                    }
                    _ => continue,
                }
            }
            events
        }
    };
    let (a_peer, b_peer) = (a.peer(), b.peer());
    let (events_b, events_a) = tokio::join!(receive(b, a_peer), receive(a, b_peer));
    b.events = events_b;
    a.events = events_a;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    for (node, other) in [(&*a, b_peer), (&*b, a_peer)] {
        let stats = node.client.stats();
        assert_eq!(stats.total.frames_sent, N, "{stats:?}");
        assert_eq!(stats.total.bytes_sent, N * (4 + 8));
        assert_eq!(stats.total.frames_received, N);
        assert_eq!(stats.total.bytes_received, N * 8);
        assert_eq!(stats.total.frames_dropped, 0);
        assert_eq!(stats.total.frames_failed, 0);
        assert_eq!(stats.total.streams_opened, 1, "one stream per peer");
        assert_eq!(stats.frames_queued, 0);
        // Frames queued in a burst share writes.
        assert!(
            stats.total.writes * 10 <= N,
            "{} writes for {N} frames",
            stats.total.writes
        );
        let peer = stats
            .peers
            .iter()
            .find(|p| p.peer == other)
            .expect("per-peer counters");
        assert_eq!(peer.counts.frames_sent, N);
        assert_eq!(peer.counts.frames_received, N);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_and_the_peers_keep_talking() {
    init_tracing();
    let test = "oversized";
    let mut receiver_cfg = config(Keypair::generate_ed25519(), "alpha", None, test);
    receiver_cfg.frame_max_bytes = 1024;
    let receiver = spawn(receiver_cfg).await;
    let mut sender_cfg = config(
        Keypair::generate_ed25519(),
        "alpha",
        Some(receiver.bootstrap_addr().await),
        test,
    );
    sender_cfg.frame_max_bytes = 64 * 1024;
    let sender = spawn(sender_cfg).await;
    let clusters = HashMap::from([
        (receiver.peer(), "alpha".to_owned()),
        (sender.peer(), "alpha".to_owned()),
    ]);
    let mut pair = [receiver, sender];
    wait_full_discovery(&mut pair, &clusters).await;
    let [mut receiver, mut sender] = pair;

    // Above the sender's own limit: refused at once, nothing queued.
    let err = sender
        .client
        .send(receiver.peer(), vec![0; 64 * 1024 + 1])
        .expect_err("too large for the sender");
    assert_eq!(
        err,
        NetError::FrameTooLarge {
            len: 64 * 1024 + 1,
            max: 64 * 1024
        }
    );
    assert_eq!(sender.client.stats().frames_queued, 0);

    // A frame at the receiver's limit arrives; one above it makes the receiver reset the
    // stream before reading the frame.
    sender
        .client
        .send(receiver.peer(), vec![7; 1024])
        .expect("queued");
    assert_eq!(
        receiver.next_message().await,
        NetEvent::Message {
            from: sender.peer(),
            frame: vec![7; 1024]
        }
    );
    sender
        .client
        .send(receiver.peer(), vec![0; 1025])
        .expect("the sender's limit allows it");
    wait_until("the receiver refuses the stream", || {
        receiver.client.stats().total.streams_refused == 1
    })
    .await;
    // The reset reaches the sender, whose next frames go on a new stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0u8..3 {
        sender
            .client
            .send(receiver.peer(), vec![i; 1024])
            .expect("queued");
    }
    for i in 0u8..3 {
        assert_eq!(
            receiver.next_message().await,
            NetEvent::Message {
                from: sender.peer(),
                frame: vec![i; 1024]
            }
        );
    }
    let stats = sender.client.stats();
    assert_eq!(stats.total.streams_opened, 2, "{stats:?}");
    receiver
        .client
        .send(sender.peer(), b"still there".to_vec())
        .expect("reverse direction");
    sender.next_message().await;
    let members = receiver.client.members().await;
    assert!(
        members.iter().all(|m| m.up),
        "nobody went down: {members:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_drop_new_frames_and_count_them() {
    init_tracing();
    let test = "queue-full";
    // A receiver that does not read its events: its frame stream stops being read, flow
    // control stops the sender's writer, and the sender's queue fills.
    let mut receiver_cfg = config(Keypair::generate_ed25519(), "alpha", None, test);
    receiver_cfg.event_queue_len = 1;
    let mut receiver = spawn(receiver_cfg).await;
    let mut sender_cfg = config(
        Keypair::generate_ed25519(),
        "alpha",
        Some(receiver.bootstrap_addr().await),
        test,
    );
    sender_cfg.frame_max_bytes = 4096;
    sender_cfg.send_queue_frames_max = 16;
    sender_cfg.send_queue_bytes_max = 8 * 1024;
    let sender = spawn(sender_cfg).await;
    let to = receiver.peer();
    receiver
        .wait_for(
            "MemberDiscovered",
            |e| matches!(e, NetEvent::MemberDiscovered(m) if m.peer == sender.peer()),
        )
        .await;

    // 1 KiB frames: the byte bound (8 frames) binds first; then 16-byte frames: the frame
    // bound (16 frames).
    const N: u32 = 4000;
    let mut refused = 0u64;
    let mut sent = 0u32;
    let mut max_queued = (0, 0);
    for (size, count) in [(1024, N), (16, N)] {
        for _ in 0..count {
            let mut frame = vec![0; size];
            frame[..4].copy_from_slice(&sent.to_be_bytes());
            sent += 1;
            match sender.client.send(to, frame) {
                Ok(()) => {}
                Err(NetError::QueueFull { peer }) => {
                    assert_eq!(peer, to);
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
            let stats = sender.client.stats();
            max_queued.0 = max_queued.0.max(stats.frames_queued);
            max_queued.1 = max_queued.1.max(stats.bytes_queued);
            if sent.is_multiple_of(256) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let stats = sender.client.stats();
    assert!(refused > 0, "{stats:?}");
    assert_eq!(stats.total.frames_dropped, refused);
    assert!(
        max_queued.0 <= 16 && max_queued.1 <= 8 * 1024,
        "{max_queued:?}"
    );
    let peer = &stats.peers[0];
    assert_eq!(peer.peer, to);
    assert_eq!(peer.counts.frames_dropped, refused);

    // Once the receiver reads again, everything not dropped arrives, in order.
    let accepted = u64::from(2 * N) - refused;
    let mut last = None;
    for _ in 0..accepted {
        let NetEvent::Message { frame, .. } = receiver.next_message().await else {
            unreachable!()
        };
        let i = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
        assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
        last = Some(i);
    }
    let stats = sender.client.stats();
    assert_eq!(stats.total.frames_sent, accepted, "{stats:?}");
    assert_eq!(stats.total.frames_failed, 0);
    assert_eq!(stats.frames_queued, 0);
    assert_eq!(receiver.client.stats().total.frames_received, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bootstrap_fails_within_the_timeout() {
    init_tracing();
    // A port that was just bound and closed: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let absent_peer = Keypair::generate_ed25519().public().to_peer_id();
    let bootstrap: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{absent_peer}")
        .parse()
        .expect("multiaddr");
    let mut cfg = config(
        Keypair::generate_ed25519(),
        "alpha",
        Some(bootstrap.clone()),
        "unreachable",
    );
    cfg.bootstrap_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let result = bounded(Duration::from_secs(5), "start", start(cfg)).await;
    let elapsed = started.elapsed();
    let Err(err) = result else {
        panic!("start must fail without a bootstrap peer");
    };
    assert!(
        matches!(&err, NetError::BootstrapUnreachable { addr, .. } if *addr == bootstrap),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("cannot reach bootstrap peer"), "{message}");
    assert!(message.contains(&absent_peer.to_string()), "{message}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    // A bootstrap address without /p2p is the caller's mistake.
    let mut cfg = config(Keypair::generate_ed25519(), "alpha", None, "unreachable");
    cfg.bootstrap = Some(format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr"));
    assert!(matches!(
        start(cfg).await.err(),
        Some(NetError::InvalidConfig(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_is_peer_left_and_a_killed_node_is_down() {
    init_tracing();
    let test = "leave";
    let names = ["alpha", "alpha", "beta", "beta"];
    let mut nodes = spawn_group(test, names[0], &names[1..]).await;
    let clusters = clusters_of(&nodes, &names);
    wait_full_discovery(&mut nodes, &clusters).await;
    let mut killed = nodes.pop().expect("4 nodes");
    let leaving = nodes.pop().expect("3 nodes");
    let (leaving_peer, killed_peer) = (leaving.peer(), killed.peer());

    // Goodbye: the others see PeerLeft and forget the peer; nobody reports it down.
    bounded(Duration::from_secs(5), "goodbye", leaving.client.goodbye()).await;
    assert!(leaving.client.members().await.is_empty(), "loop stopped");
    assert_eq!(
        leaving.client.send(killed_peer, vec![1]),
        Err(NetError::Stopped)
    );
    for node in nodes.iter_mut().chain([&mut killed]) {
        let event = node
            .wait_for("PeerLeft", |e| {
                matches!(e, NetEvent::PeerLeft(_) | NetEvent::PeerDown(_))
            })
            .await;
        assert_eq!(event, NetEvent::PeerLeft(leaving_peer));
        let members = node.client.members().await;
        assert!(members.iter().all(|m| m.peer != leaving_peer));
    }

    // A crash: the others report it down after `down_after`, and keep it as a member.
    drop(killed);
    for node in nodes.iter_mut() {
        let event = node
            .wait_for("PeerDown", |e| matches!(e, NetEvent::PeerDown(_)))
            .await;
        assert_eq!(event, NetEvent::PeerDown(killed_peer));
        let members = node.client.members().await;
        let member = members
            .iter()
            .find(|m| m.peer == killed_peer)
            .expect("a down peer stays a member");
        assert!(!member.up);
    }

    // Frames to it are queued, then dropped when no stream can be opened (bounded), and
    // counted.
    nodes[0].client.send(killed_peer, vec![1]).expect("queued");
    wait_until("the frame to a dead peer fails", || {
        nodes[0].client.stats().total.frames_failed == 1
    })
    .await;
    assert_eq!(nodes[0].client.stats().frames_queued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_is_up_again() {
    init_tracing();
    let test = "restart";
    let keypair = Keypair::generate_ed25519();
    let mut first = spawn(config(Keypair::generate_ed25519(), "alpha", None, test)).await;
    let bootstrap = first.bootstrap_addr().await;
    let restarted_peer = keypair.public().to_peer_id();
    let node = spawn(config(
        keypair.clone(),
        "beta",
        Some(bootstrap.clone()),
        test,
    ))
    .await;
    first
        .wait_for(
            "MemberDiscovered",
            |e| matches!(e, NetEvent::MemberDiscovered(m) if m.peer == restarted_peer),
        )
        .await;
    drop(node);
    first
        .wait_for("PeerDown", |e| *e == NetEvent::PeerDown(restarted_peer))
        .await;

    // Same identity, new port: the bootstrap node learns the new address from its Hello.
    let mut node = spawn(config(keypair, "beta", Some(bootstrap), test)).await;
    let event = first
        .wait_for("PeerUp", |e| {
            matches!(e, NetEvent::PeerUp(_) | NetEvent::MemberDiscovered(_))
        })
        .await;
    assert_eq!(event, NetEvent::PeerUp(restarted_peer));
    let members = first.client.members().await;
    assert!(members.iter().any(|m| m.peer == restarted_peer && m.up));
    // The node is reachable at its new address.
    first
        .client
        .send(restarted_peer, b"welcome back".to_vec())
        .expect("queued");
    assert_eq!(
        node.next_message().await,
        NetEvent::Message {
            from: first.peer(),
            frame: b"welcome back".to_vec()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_flow_again_in_order_after_the_peer_restarts() {
    init_tracing();
    let test = "reconnect";
    let keypair = Keypair::generate_ed25519();
    let mut first = spawn(config(Keypair::generate_ed25519(), "alpha", None, test)).await;
    let bootstrap = first.bootstrap_addr().await;
    let restarted_peer = keypair.public().to_peer_id();
    let mut node = spawn(config(
        keypair.clone(),
        "beta",
        Some(bootstrap.clone()),
        test,
    ))
    .await;
    first
        .wait_for(
            "MemberDiscovered",
            |e| matches!(e, NetEvent::MemberDiscovered(m) if m.peer == restarted_peer),
        )
        .await;
    // Streams both ways are open.
    first.client.send(restarted_peer, vec![0]).expect("queued");
    node.next_message().await;
    node.client.send(first.peer(), vec![0]).expect("queued");
    first.next_message().await;

    // The peer crashes and comes back with the same identity on another port; its frames and
    // the first node's go on new streams over the new connection.
    drop(node);
    first
        .wait_for("PeerDown", |e| *e == NetEvent::PeerDown(restarted_peer))
        .await;
    let mut node = spawn(config(keypair, "beta", Some(bootstrap), test)).await;
    first
        .wait_for("PeerUp", |e| *e == NetEvent::PeerUp(restarted_peer))
        .await;
    for i in 0u32..1000 {
        first
            .client
            .send(restarted_peer, i.to_be_bytes().to_vec())
            .expect("queued");
        node.client
            .send(first.peer(), i.to_be_bytes().to_vec())
            .expect("queued");
    }
    for i in 0u32..1000 {
        for (receiver, from) in [(&mut node, first.peer()), (&mut first, restarted_peer)] {
            assert_eq!(
                receiver.next_message().await,
                NetEvent::Message {
                    from,
                    frame: i.to_be_bytes().to_vec()
                }
            );
        }
    }
    let stats = first.client.stats();
    assert_eq!(stats.total.streams_opened, 2, "{stats:?}");
    assert_eq!(stats.total.frames_failed, 0, "{stats:?}");
}

/// A peer that speaks the node's protocols with a raw codec, to send it arbitrary bytes.
mod rogue {
    use std::io;
    use std::time::Duration;

    use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
    use transport_libp2p::libp2p::request_response::{self as rr, ProtocolSupport};
    use transport_libp2p::libp2p::swarm::SwarmEvent;
    use transport_libp2p::libp2p::{
        Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux,
    };

    #[derive(Debug, Clone, Default)]
    struct RawCodec;

    impl rr::Codec for RawCodec {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;

        async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
        where
            T: AsyncRead + Unpin + Send,
        {
            let mut out = Vec::new();
            io.take(1 << 20).read_to_end(&mut out).await?;
            Ok(out)
        }

        async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
        where
            T: AsyncRead + Unpin + Send,
        {
            self.read_request(p, io).await
        }

        async fn write_request<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            bytes: Vec<u8>,
        ) -> io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            io.write_all(&bytes).await
        }

        async fn write_response<T>(
            &mut self,
            p: &StreamProtocol,
            io: &mut T,
            bytes: Vec<u8>,
        ) -> io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            self.write_request(p, io, bytes).await
        }
    }

    /// Sends `bytes` raw on `protocol` to the node at `addr`; returns the raw answer, or the
    /// failure. Also returns the rogue's peer id.
    pub async fn request(
        protocol: &str,
        node: PeerId,
        addr: Multiaddr,
        bytes: Vec<u8>,
    ) -> (PeerId, Result<Vec<u8>, String>) {
        let protocol = StreamProtocol::try_from_owned(protocol.to_owned()).expect("protocol");
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("transport")
            .with_behaviour(|_| {
                rr::Behaviour::with_codec(
                    RawCodec,
                    [(protocol, ProtocolSupport::Full)],
                    rr::Config::default().with_request_timeout(Duration::from_secs(5)),
                )
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        let rogue = *swarm.local_peer_id();
        let id = swarm
            .behaviour_mut()
            .send_request_with_addresses(&node, bytes, vec![addr]);
        let outcome = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(rr::Event::Message {
                        message:
                            rr::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(rr::Event::OutboundFailure {
                        request_id, error, ..
                    }) if request_id == id => return Err(error.to_string()),
                    _ => {}
                }
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(8), outcome)
            .await
            .unwrap_or_else(|_| Err("rogue request timed out".to_owned()));
        (rogue, result)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_is_dropped_and_the_node_keeps_working() {
    init_tracing();
    let test = "garbage";
    let mut cfg = config(Keypair::generate_ed25519(), "alpha", None, test);
    cfg.frame_max_bytes = 1024;
    let mut node = spawn(cfg).await;
    let addr = node.bootstrap_addr().await;
    let frames = format!("/replicator/test-{test}/frames/1.0.0");
    let control = format!("/replicator/test-{test}/member/1.0.0");

    // The wire format of a frame stream: the opener's version byte (1), answered with the
    // same byte; then frames, each a big-endian u32 length and the bytes.
    let mut rogue = rogue_stream::connect(addr.clone()).await;
    let (answer, end) = rogue
        .exchange(&frames, vec![1, 0, 0, 0, 2, 0xab, 0xcd], false)
        .await;
    assert_eq!((answer, end), (vec![1], rogue_stream::End::Open));
    assert_eq!(
        node.next_message().await,
        NetEvent::Message {
            from: rogue.peer,
            frame: vec![0xab, 0xcd]
        }
    );

    // An unknown version, a length of 4 GiB, a length one above the limit: the stream is
    // reset (after the version answer if the version was right), nothing is allocated for the
    // announced length, nothing is delivered.
    let refused = [
        (vec![2, 0, 0, 0, 1, 7], vec![]),
        (vec![0xff], vec![]),
        (vec![1, 0xff, 0xff, 0xff, 0xff, 1, 2, 3], vec![1]),
        (vec![1, 0, 0, 4, 1, 1, 2, 3], vec![1]),
    ];
    for (bytes, expected) in refused {
        let (answer, end) = rogue.exchange(&frames, bytes.clone(), false).await;
        assert_eq!(
            (answer, end),
            (expected, rogue_stream::End::Closed),
            "{bytes:?}"
        );
    }
    assert_eq!(node.client.stats().total.streams_refused, 4);
    // A truncated frame (or length), then the rogue closes its side: the stream just ends.
    for bytes in [vec![1, 0, 0, 0, 9, 1], vec![1, 0, 0], vec![]] {
        let (_, end) = rogue.exchange(&frames, bytes.clone(), true).await;
        assert_eq!(end, rogue_stream::End::Closed, "{bytes:?}");
    }
    assert_eq!(node.client.stats().total.streams_refused, 4);

    // Malformed control messages: refused without an answer.
    let garbage = [
        (&control, vec![0, 0, 0, 5, 1, 1, 0xff, 0xff, 0xff]),
        (&control, vec![0, 0, 0, 6, 2, 1, 0, 0xff, 0xff, 0xff]),
        (&control, vec![0, 0, 0, 3, 2, 1, 0xff]),
        (&control, vec![0, 0, 0, 8, 2, 1, 1, b'!', 0, 1, b'c', 0]),
        (&control, vec![0, 0, 0, 2, 7, 7]),
        (&control, vec![0xff, 0xff, 0xff, 0xff]),
    ];
    for (protocol, bytes) in garbage {
        let (_, answer) = rogue::request(protocol, node.peer(), addr.clone(), bytes.clone()).await;
        assert!(
            answer.as_ref().map_or(true, |a| a.is_empty()),
            "{bytes:?} got {answer:?}"
        );
    }

    // The node still works for a well-behaved peer, and made no rogue a member.
    let mut cfg = config(Keypair::generate_ed25519(), "beta", Some(addr), test);
    cfg.frame_max_bytes = 1024;
    let good = spawn(cfg).await;
    node.wait_for(
        "MemberDiscovered",
        |e| matches!(e, NetEvent::MemberDiscovered(m) if m.peer == good.peer()),
    )
    .await;
    good.client
        .send(node.peer(), b"ok".to_vec())
        .expect("queued");
    let event = node
        .wait_for("Message", |e| matches!(e, NetEvent::Message { .. }))
        .await;
    assert_eq!(
        event,
        NetEvent::Message {
            from: good.peer(),
            frame: b"ok".to_vec()
        }
    );
    let members = node.client.members().await;
    assert_eq!(members.len(), 1, "{members:?}");
}

/// A peer that opens frame streams and writes arbitrary bytes on them.
mod rogue_stream {
    use std::time::Duration;

    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use tokio::task::JoinHandle;
    use transport_libp2p::libp2p::multiaddr::Protocol;
    use transport_libp2p::libp2p::swarm::SwarmEvent;
    use transport_libp2p::libp2p::{
        Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux,
    };

    /// How a stream ended, seen from the rogue.
    #[derive(Debug, PartialEq, Eq)]
    pub enum End {
        /// Closed or reset by the node.
        Closed,
        /// Still open after a while.
        Open,
    }

    pub struct Rogue {
        pub peer: PeerId,
        node: PeerId,
        control: libp2p_stream::Control,
        task: JoinHandle<()>,
    }

    impl Drop for Rogue {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Connects to the node at `addr` (ending with `/p2p/<node>`).
    pub async fn connect(addr: Multiaddr) -> Rogue {
        let Some(Protocol::P2p(node)) = addr.iter().last() else {
            panic!("{addr} ends with /p2p");
        };
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("transport")
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        let peer = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        swarm.dial(addr).expect("dial");
        let connected = async {
            loop {
                if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), connected)
            .await
            .expect("rogue connects");
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Rogue {
            peer,
            node,
            control,
            task,
        }
    }

    impl Rogue {
        /// Opens a stream on `protocol`, writes `bytes` (then closes its side if `close`),
        /// and reads what the node writes until it closes or resets the stream (`Closed`) or
        /// a second passes (`Open`).
        pub async fn exchange(
            &mut self,
            protocol: &str,
            bytes: Vec<u8>,
            close: bool,
        ) -> (Vec<u8>, End) {
            let protocol = StreamProtocol::try_from_owned(protocol.to_owned()).expect("protocol");
            let mut stream = tokio::time::timeout(
                Duration::from_secs(5),
                self.control.open_stream(self.node, protocol),
            )
            .await
            .expect("stream opened in time")
            .expect("stream opened");
            stream.write_all(&bytes).await.expect("written");
            stream.flush().await.expect("flushed");
            if close {
                stream.close().await.expect("closed");
            }
            let mut answer = Vec::new();
            let read = async {
                let mut buf = [0u8; 64];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return End::Closed,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    }
                }
            };
            let end = tokio::time::timeout(Duration::from_secs(1), read)
                .await
                .unwrap_or(End::Open);
            (answer, end)
        }
    }
}

// ---- network ids ------------------------------------------------------------------------

/// A Hello as the wire carries it (control encoding version 2, framed with a u32 length),
/// from a sender of `network` (empty: not known) gossiping `members`.
fn raw_hello(network: &str, cluster: &str, members: &[(PeerId, Multiaddr)]) -> Vec<u8> {
    fn put_str16(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&u16::try_from(s.len()).expect("short").to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = vec![2, 1, u8::try_from(network.len()).expect("short")];
    body.extend_from_slice(network.as_bytes());
    put_str16(&mut body, cluster);
    body.push(0); // no addresses of its own
    body.extend_from_slice(&u16::try_from(members.len()).expect("few").to_be_bytes());
    for (peer, addr) in members {
        let peer = peer.to_bytes();
        body.push(u8::try_from(peer.len()).expect("short"));
        body.extend_from_slice(&peer);
        put_str16(&mut body, cluster);
        body.push(1);
        let addr = addr.to_vec();
        body.extend_from_slice(&u16::try_from(addr.len()).expect("short").to_be_bytes());
        body.extend_from_slice(&addr);
    }
    let mut framed = u32::try_from(body.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&body);
    framed
}

/// The network id carried by a raw (framed) Hello answer.
fn answered_network(answer: &[u8]) -> String {
    assert!(answer.len() > 7, "a Hello answer: {answer:?}");
    assert_eq!(&answer[4..6], &[2, 1], "version 2 Hello");
    let len = usize::from(answer[6]);
    String::from_utf8(answer[7..7 + len].to_vec()).expect("ascii")
}

impl TestNode {
    /// Fails if an event matching `pred` arrives within `within`; returns the other events.
    async fn expect_none(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&NetEvent) -> bool,
    ) -> Vec<NetEvent> {
        let deadline = Instant::now() + within;
        let mut others = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => {
                    panic!("{}: unexpected {what}: {event:?}", self.peer())
                }
                Ok(Some(event)) => others.push(event),
                Ok(None) => panic!("{}: event channel closed", self.peer()),
                Err(_) => return others,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ids_are_validated_at_start() {
    init_tracing();
    let test = "netid-config";
    let founder = |network: Option<&str>| {
        let mut cfg = config(Keypair::generate_ed25519(), "alpha", None, test);
        cfg.network = network.map(str::to_owned);
        cfg
    };
    let too_long = "n".repeat(65);
    for network in [None, Some(""), Some("a b"), Some("net.1"), Some(&*too_long)] {
        let result = start(founder(network)).await;
        assert!(
            matches!(result, Err(NetError::InvalidConfig(_))),
            "{network:?}: {:?}",
            result.err()
        );
    }
    let longest = "n".repeat(64);
    for network in ["a", "Net-1_x", &*longest] {
        let (client, _events, _event_loop) = start(founder(Some(network)))
            .await
            .expect("a valid network id");
        assert_eq!(client.network(), network);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_queue_bounds_are_validated_at_start() {
    init_tracing();
    let invalid: [fn(&mut NetConfig); 5] = [
        |c| c.send_queue_frames_max = 0,
        |c| c.send_queue_total_frames_max = c.send_queue_frames_max - 1,
        |c| c.send_queue_bytes_max = c.frame_max_bytes - 1,
        |c| c.send_queue_total_bytes_max = c.send_queue_bytes_max - 1,
        |c| c.event_queue_len = 0,
    ];
    for (i, change) in invalid.iter().enumerate() {
        let mut cfg = config(Keypair::generate_ed25519(), "alpha", None, "bounds");
        change(&mut cfg);
        let result = start(cfg).await;
        assert!(
            matches!(result, Err(NetError::InvalidConfig(_))),
            "case {i}: {:?}",
            result.err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_adopts_the_network_id_of_its_bootstrap_peer() {
    init_tracing();
    let test = "adopt";
    let mut founder = spawn(config(Keypair::generate_ed25519(), "alpha", None, test)).await;
    assert_eq!(founder.client.network(), "net-adopt");
    let bootstrap = founder.bootstrap_addr().await;
    let mut joiner = spawn(config(
        Keypair::generate_ed25519(),
        "beta",
        Some(bootstrap.clone()),
        test,
    ))
    .await;
    assert_eq!(joiner.client.network(), "net-adopt", "adopted during start");

    // Each becomes a member of the other, with the network id.
    let event = founder
        .wait_for("MemberDiscovered", |e| {
            matches!(e, NetEvent::MemberDiscovered(_))
        })
        .await;
    let NetEvent::MemberDiscovered(member) = event else {
        unreachable!()
    };
    assert_eq!(member.peer, joiner.peer());
    assert_eq!(member.network, "net-adopt");
    assert_eq!(member.cluster, "beta");
    let event = joiner
        .wait_for("MemberDiscovered", |e| {
            matches!(e, NetEvent::MemberDiscovered(_))
        })
        .await;
    assert!(
        matches!(&event, NetEvent::MemberDiscovered(m) if m.peer == founder.peer() && m.network == "net-adopt"),
        "{event:?}"
    );

    // A third node, started with the id it would have persisted, joins through the joiner.
    let mut cfg = config(
        Keypair::generate_ed25519(),
        "gamma",
        Some(joiner.bootstrap_addr().await),
        test,
    );
    cfg.network = Some(joiner.client.network());
    let third = spawn(cfg).await;
    let clusters = HashMap::from([
        (founder.peer(), "alpha".to_owned()),
        (joiner.peer(), "beta".to_owned()),
        (third.peer(), "gamma".to_owned()),
    ]);
    // Founder and joiner saw each other already; every node ends up with 2 members.
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    for node in [&founder, &joiner, &third] {
        loop {
            let members = node.client.members().await;
            if members.len() == 2 {
                for m in members {
                    assert_eq!(m.network, "net-adopt");
                    assert_eq!(Some(&m.cluster), clusters.get(&m.peer));
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} sees {members:?}",
                node.peer()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Nobody was ever reported foreign.
    for node in [&mut founder, &mut joiner] {
        node.expect_none("ForeignNetwork", Duration::from_millis(500), |e| {
            matches!(e, NetEvent::ForeignNetwork { .. })
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_of_another_network_fails_to_start() {
    init_tracing();
    let test = "foreign-join";
    let mut founder = spawn(config(Keypair::generate_ed25519(), "alpha", None, test)).await;
    let bootstrap = founder.bootstrap_addr().await;
    let keypair = Keypair::generate_ed25519();
    let stranger = keypair.public().to_peer_id();
    let mut cfg = config(keypair, "alpha", Some(bootstrap.clone()), test);
    cfg.network = Some("net-other".into());
    cfg.bootstrap_timeout = Duration::from_secs(30);
    let started = Instant::now();
    let result = bounded(Duration::from_secs(10), "start", start(cfg)).await;
    let elapsed = started.elapsed();
    let Err(err) = result else {
        panic!("start must fail against a bootstrap peer of another network");
    };
    assert_eq!(
        err,
        NetError::ForeignNetwork {
            addr: bootstrap,
            ours: "net-other".into(),
            theirs: "net-foreign-join".into(),
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("\"net-other\"") && message.contains("\"net-foreign-join\""),
        "{message}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The bootstrap side says so too, and never made the stranger a member.
    let event = founder
        .wait_for("ForeignNetwork", |e| {
            matches!(
                e,
                NetEvent::ForeignNetwork { .. } | NetEvent::MemberDiscovered(_)
            )
        })
        .await;
    assert_eq!(
        event,
        NetEvent::ForeignNetwork {
            peer: stranger,
            network: "net-other".into()
        }
    );
    assert!(founder.client.members().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_with_another_protocol_id_fails_fast() {
    init_tracing();
    let founder = spawn(config(Keypair::generate_ed25519(), "alpha", None, "proto")).await;
    let bootstrap = founder.bootstrap_addr().await;
    for network in [None, Some("net-proto".to_owned())] {
        let mut cfg = config(
            Keypair::generate_ed25519(),
            "alpha",
            Some(bootstrap.clone()),
            "proto-other",
        );
        cfg.network = network;
        cfg.bootstrap_timeout = Duration::from_secs(30);
        let started = Instant::now();
        let result = bounded(Duration::from_secs(10), "start", start(cfg)).await;
        let elapsed = started.elapsed();
        let Err(err) = result else {
            panic!("start must fail against a bootstrap peer of another protocol id");
        };
        assert_eq!(
            err,
            NetError::ProtocolMismatch {
                addr: bootstrap.clone(),
                ours: "test-proto-other".into(),
                theirs: "test-proto".into(),
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("\"test-proto-other\"") && message.contains("\"test-proto\""),
            "{message}"
        );
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
    assert!(founder.client.members().await.is_empty());

    // A peer that does not speak identify nor our protocols at all (a bare libp2p node): the
    // refused Hello says so, shortly after.
    let bare = bare::listen().await;
    let mut cfg = config(
        Keypair::generate_ed25519(),
        "alpha",
        Some(bare.addr.clone()),
        "proto",
    );
    cfg.bootstrap_timeout = Duration::from_secs(30);
    let started = Instant::now();
    let result = bounded(Duration::from_secs(10), "start", start(cfg)).await;
    let elapsed = started.elapsed();
    let err = result.err().expect("no replicator protocols there");
    assert_eq!(
        err,
        NetError::ProtocolMismatch {
            addr: bare.addr.clone(),
            ours: "test-proto".into(),
            theirs: String::new(),
        }
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    bare.task.abort();
}

/// A libp2p node with only the TCP/noise/yamux stack and no protocol at all.
mod bare {
    use futures::StreamExt;
    use tokio::task::JoinHandle;
    use transport_libp2p::libp2p::swarm::{SwarmEvent, dummy};
    use transport_libp2p::libp2p::{
        Multiaddr, SwarmBuilder, multiaddr::Protocol, noise, tcp, yamux,
    };

    pub struct Bare {
        pub addr: Multiaddr,
        pub task: JoinHandle<()>,
    }

    pub async fn listen() -> Bare {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("transport")
            .with_behaviour(|_| dummy::Behaviour)
            .expect("behaviour")
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(std::time::Duration::from_secs(30))
            })
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let peer = *swarm.local_peer_id();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with(Protocol::P2p(peer));
            }
        };
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Bare { addr, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_founded_apart_never_merge() {
    init_tracing();
    // Same protocol id and rendezvous: only the network ids tell the two apart.
    let test = "apart";
    let founder = |network: &str| {
        let mut cfg = config(Keypair::generate_ed25519(), "alpha", None, test);
        cfg.network = Some(network.to_owned());
        cfg
    };
    let a0 = spawn(founder("net-a")).await;
    let a0_addr = a0.bootstrap_addr().await;
    let a1 = spawn(config(
        Keypair::generate_ed25519(),
        "beta",
        Some(a0_addr.clone()),
        test,
    ))
    .await;
    let b0 = spawn(founder("net-b")).await;
    let b0_addr = b0.bootstrap_addr().await;
    let b1 = spawn(config(
        Keypair::generate_ed25519(),
        "beta",
        Some(b0_addr.clone()),
        test,
    ))
    .await;
    assert_eq!(a1.client.network(), "net-a");
    assert_eq!(b1.client.network(), "net-b");
    let mut net_a = [a0, a1];
    let mut net_b = [b0, b1];
    let clusters =
        |nodes: &[TestNode]| -> HashMap<PeerId, String> { clusters_of(nodes, &["alpha", "beta"]) };
    let (ca, cb) = (clusters(&net_a), clusters(&net_b));
    wait_full_discovery(&mut net_a, &ca).await;
    wait_full_discovery(&mut net_b, &cb).await;
    let [mut a0, mut a1] = net_a;
    let [mut b0, mut b1] = net_b;
    let a0_peer = a0.peer();
    let b0_peer = b0.peer();
    let control = format!("/replicator/test-{test}/member/1.0.0");
    let a0_base = {
        let mut addr = a0_addr.clone();
        addr.pop();
        addr
    };
    let gossip = [(a0_peer, a0_base)];

    // A Hello of a third network gossiping a0: answered (with net-b), the sender reported,
    // the gossip not read: b0 does not dial a0.
    let (stranger, answer) = rogue::request(
        &control,
        b0_peer,
        b0_addr.clone(),
        raw_hello("net-c", "gamma", &gossip),
    )
    .await;
    assert_eq!(answered_network(&answer.expect("answered")), "net-b");
    let event = b0
        .wait_for("ForeignNetwork", |e| {
            matches!(e, NetEvent::ForeignNetwork { .. })
        })
        .await;
    assert_eq!(
        event,
        NetEvent::ForeignNetwork {
            peer: stranger,
            network: "net-c".into()
        }
    );
    // A Hello without a network id (a joiner that has not learned it): answered, so it
    // learns net-b, but nobody becomes a member and its gossip is not read either.
    let (newcomer, answer) = rogue::request(
        &control,
        b0_peer,
        b0_addr.clone(),
        raw_hello("", "gamma", &gossip),
    )
    .await;
    assert_eq!(answered_network(&answer.expect("answered")), "net-b");
    a0.expect_none("ForeignNetwork", Duration::from_millis(1500), |e| {
        matches!(e, NetEvent::ForeignNetwork { .. })
    })
    .await;
    let members = b0.client.members().await;
    assert!(
        members
            .iter()
            .all(|m| m.peer != stranger && m.peer != newcomer),
        "{members:?}"
    );

    // A member of net-b gossips a0: b0 dials it, and the two report each other foreign
    // instead of merging.
    let (insider, answer) = rogue::request(
        &control,
        b0_peer,
        b0_addr.clone(),
        raw_hello("net-b", "gamma", &gossip),
    )
    .await;
    assert_eq!(answered_network(&answer.expect("answered")), "net-b");
    let event = b0
        .wait_for("ForeignNetwork", |e| {
            matches!(e, NetEvent::ForeignNetwork { .. })
        })
        .await;
    assert_eq!(
        event,
        NetEvent::ForeignNetwork {
            peer: a0_peer,
            network: "net-a".into()
        }
    );
    let event = a0
        .wait_for("ForeignNetwork", |e| {
            matches!(e, NetEvent::ForeignNetwork { .. })
        })
        .await;
    assert_eq!(
        event,
        NetEvent::ForeignNetwork {
            peer: b0_peer,
            network: "net-b".into()
        }
    );

    // For a while (DHT lookups run every second or so): no membership crosses the networks,
    // and nobody reports the same foreign peer twice.
    let peers_a = [a0.peer(), a1.peer()];
    let peers_b = [b0.peer(), b1.peer()];
    let watch = Duration::from_secs(4);
    let crossing = |other: [PeerId; 2]| move |e: &NetEvent| matches!(e, NetEvent::MemberDiscovered(m) if other.contains(&m.peer));
    let reported_once = |events: Vec<NetEvent>, already: &[PeerId]| {
        let mut seen: Vec<PeerId> = already.to_vec();
        for event in events {
            if let NetEvent::ForeignNetwork { peer, .. } = event {
                assert!(!seen.contains(&peer), "{peer} reported twice");
                seen.push(peer);
            }
        }
    };
    let (ea0, ea1, eb0, eb1) = tokio::join!(
        a0.expect_none("a member of net-b", watch, crossing(peers_b)),
        a1.expect_none("a member of net-b", watch, crossing(peers_b)),
        b0.expect_none("a member of net-a", watch, crossing(peers_a)),
        b1.expect_none("a member of net-a", watch, crossing(peers_a)),
    );
    reported_once(ea0, &[b0_peer]);
    reported_once(ea1, &[]);
    reported_once(eb0, &[stranger, a0_peer]);
    reported_once(eb1, &[]);
    for (node, others) in [
        (&a0, peers_b),
        (&a1, peers_b),
        (&b0, peers_a),
        (&b1, peers_a),
    ] {
        let members = node.client.members().await;
        assert!(
            members.iter().all(|m| !others.contains(&m.peer)),
            "{}: {members:?}",
            node.peer()
        );
        let own = node.client.network();
        assert!(
            members.iter().all(|m| m.network == own),
            "{}: {members:?}",
            node.peer()
        );
    }
    // The net-b insider is a member of b0 (it Helloed with net-b), with its network id.
    let members = b0.client.members().await;
    assert!(
        members
            .iter()
            .any(|m| m.peer == insider && m.network == "net-b"),
        "{members:?}"
    );
}
