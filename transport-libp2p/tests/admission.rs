//! Admission at the transport: the network key, the allow-list and the bound on pending
//! handshakes per IP, on 127.0.0.1 with ephemeral ports. Every wait is bounded.

use std::time::{Duration, Instant};

use transport_libp2p::libp2p::Multiaddr;
use transport_libp2p::libp2p::identity::Keypair;
use transport_libp2p::{NetConfig, NetError, generate_network_key, parse_network_key, start};

fn config(cluster: &str, bootstrap: Option<Multiaddr>, test: &str) -> NetConfig {
    let mut cfg = NetConfig::new(Keypair::generate_ed25519(), cluster);
    cfg.network = bootstrap.is_none().then(|| format!("net-{test}"));
    cfg.bootstrap = bootstrap;
    cfg.protocol_id = format!("test-{test}");
    cfg.bootstrap_timeout = Duration::from_secs(3);
    cfg
}

fn key(byte: u8) -> transport_libp2p::libp2p::pnet::PreSharedKey {
    parse_network_key(&generate_network_key([byte; 32])).expect("a generated key parses")
}

/// Starts a founder; returns its address (with `/p2p`) and the task that runs it.
async fn start_founder(cfg: NetConfig) -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let peer = cfg.keypair.public().to_peer_id();
    let (client, mut events, event_loop) = start(cfg).await.expect("founder starts");
    let run = tokio::spawn(event_loop.run());
    let addr = client.listen_addrs().await[0]
        .clone()
        .with(transport_libp2p::libp2p::multiaddr::Protocol::P2p(peer));
    let task = tokio::spawn(async move {
        while events.recv().await.is_some() {}
        drop(client);
        let _ = run.await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_key_keeps_out_peers_without_it() {
    let mut cfg = config("c", None, "psk");
    cfg.psk = Some(key(7));
    let (addr, task) = start_founder(cfg).await;

    // Without a key, and with another key: no connection completes.
    for psk in [None, Some(key(8))] {
        let mut joiner = config("c", Some(addr.clone()), "psk");
        joiner.psk = psk;
        match start(joiner).await {
            Err(NetError::BootstrapUnreachable { .. }) => {}
            Err(e) => panic!("expected BootstrapUnreachable, got {e}"),
            Ok(_) => panic!("a peer without the network key connected"),
        }
    }
    // With the key: it joins.
    let mut joiner = config("c", Some(addr.clone()), "psk");
    joiner.psk = Some(key(7));
    let (client, _events, event_loop) = start(joiner).await.expect("a peer with the key joins");
    assert_eq!(client.network(), "net-psk");
    drop(event_loop);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_keeps_out_other_peers() {
    let allowed = Keypair::generate_ed25519();
    let mut cfg = config("c", None, "allow");
    cfg.allow_peers = Some(vec![allowed.public().to_peer_id()]);
    let (addr, task) = start_founder(cfg).await;

    let stranger = config("c", Some(addr.clone()), "allow");
    assert!(matches!(
        start(stranger).await,
        Err(NetError::BootstrapUnreachable { .. })
    ));
    let mut friend = config("c", Some(addr), "allow");
    friend.keypair = allowed;
    start(friend).await.expect("an allowed peer joins");
    task.abort();
}

/// 64 half-open TCP connections from 127.0.0.2 (they never send a handshake byte) do not lock
/// a peer on 127.0.0.1 out: at most 8 of them are pending at a time, the others are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flood_from_one_address_does_not_lock_peers_out() {
    let (addr, task) = start_founder(config("c", None, "flood")).await;
    let port = addr
        .iter()
        .find_map(|p| match p {
            transport_libp2p::libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a tcp address");
    let mut flood = Vec::new();
    for _ in 0..160 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(1),
            socket.connect(format!("127.0.0.1:{port}").parse().unwrap()),
        )
        .await
        {
            flood.push(s);
        }
    }
    assert!(flood.len() > 128, "the flood connected ({})", flood.len());
    let started = Instant::now();
    let joiner = config("c", Some(addr), "flood");
    start(joiner).await.expect("a peer joins despite the flood");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "joined in {:?}",
        started.elapsed()
    );
    drop(flood);
    task.abort();
}
