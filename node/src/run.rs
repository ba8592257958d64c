//! `replicator run`: one node. Identity and data in `--data-dir`, libp2p for the network,
//! the driver for the protocol, axum for the API; Ctrl-C / SIGTERM leave gracefully.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use replicator_core::{ClusterId, Config, NodeId, Recovered};
use tracing::{error, info, warn};
use transport_libp2p::libp2p::identity::Keypair;
use transport_libp2p::libp2p::{Multiaddr, PeerId};
use transport_libp2p::{NetConfig, NetError};

use crate::driver::{Driver, Parts};
use crate::metrics::Metrics;
use crate::net::{Libp2pTransport, pump_events};
use crate::storage::{Storage, db_path};
use crate::{RunArgs, http, init_logging};

const IDENTITY_FILE: &str = "identity.key";

pub async fn main(args: RunArgs) -> ExitCode {
    init_logging(&args.log);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "the node stops");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            let d = std::env::temp_dir().join(format!("replicator-{}", std::process::id()));
            warn!(data_dir = %d.display(), "no --data-dir: using a temporary one");
            d
        }
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let fresh = !db_path(&data_dir).exists();
    let keypair = load_or_create_identity(&data_dir)?;
    let peer_id = keypair.public().to_peer_id();

    let mut bootstraps: Vec<Multiaddr> = Vec::new();
    for a in args.bootstrap.iter().chain(args.peers.iter()) {
        bootstraps.push(
            a.parse()
                .with_context(|| format!("--bootstrap/--peer {a:?} is not a multiaddr"))?,
        );
    }
    let listen = args
        .listen
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("--listen {a:?} is not a multiaddr"))
        })
        .collect::<Result<Vec<Multiaddr>>>()?;

    let mut config = Config {
        cluster_size_min: args.cluster_size_min,
        ..Config::default()
    };
    if let Some(ms) = args.put_timeout_ms {
        config.put_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.lease_ms {
        config.lease = Duration::from_millis(ms);
    }
    config.validate().map_err(|e| anyhow!("{e}"))?;

    // The network first: a node that cannot reach its bootstrap peer must not create a
    // database that would make it a founder on its next start.
    let (client, net_events, event_loop) =
        start_network(&args, keypair, listen, &bootstraps).await?;
    let event_loop = tokio::spawn(event_loop.run());
    let listen_addrs = client.listen_addrs().await;

    let founder = bootstraps.is_empty();
    let initial = if founder {
        Recovered::founder()
    } else {
        Recovered::joiner()
    };
    let storage = Storage::open(&data_dir, fresh.then_some(&initial))?;
    let recovered = storage.load()?;
    info!(
        fresh,
        role = if !fresh {
            "restart"
        } else if founder {
            "founder"
        } else {
            "joiner"
        },
        data_dir = %data_dir.display(),
        "storage opened"
    );

    let metrics = Arc::new(Metrics::default());
    let value_bytes_max = config.value_bytes_max;
    let (driver, handle) = Driver::new(Parts {
        config,
        id: NodeId::new(peer_id.to_string()),
        cluster: ClusterId::new(&args.cid),
        recovered,
        storage,
        transport: Libp2pTransport::new(client.clone(), metrics.clone()),
        events: pump_events(net_events),
        metrics: metrics.clone(),
    })?;
    let span = tracing::info_span!("node", peer = %peer_id, cluster = %args.cid);
    let mut driver_task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));

    let listener = tokio::net::TcpListener::bind(&args.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http))?;
    let http_addr = listener.local_addr()?;
    let app = http::router(http::Api {
        driver: handle.clone(),
        metrics,
        value_bytes_max,
    });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });

    print_banner(&args, &peer_id, &listen_addrs, http_addr, &data_dir);
    info!(peer = %peer_id, cluster = %args.cid, http = %http_addr, "node started");

    let outcome = tokio::select! {
        r = &mut driver_task => Some(r),
        () = shutdown_signal() => None,
    };
    let result = match outcome {
        Some(Ok(Ok(()))) => Err(anyhow!("the driver stopped")),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow!("the driver panicked: {e}")),
        None => {
            info!("shutting down: leaving the network");
            let within = Duration::from_millis(args.leave_timeout_ms);
            if handle.leave(within).await {
                client.goodbye().await;
                info!("goodbye said");
            } else {
                // Saying goodbye with a grant still open could let a resolver count this node
                // as fenced and abort a committed proposal. Stop without goodbye instead: the
                // others see this node down, and it stays a member until it comes back.
                warn!(
                    "leave did not complete in time: stopping WITHOUT goodbye (this node stays a member; restart it with its data dir to resolve what it holds)"
                );
                client.shutdown().await;
            }
            Ok(())
        }
    };
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if result.is_err() {
        client.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), event_loop).await;
    result
}

async fn start_network(
    args: &RunArgs,
    keypair: Keypair,
    listen: Vec<Multiaddr>,
    bootstraps: &[Multiaddr],
) -> Result<(
    transport_libp2p::Client,
    tokio::sync::mpsc::Receiver<transport_libp2p::NetEvent>,
    transport_libp2p::EventLoop,
)> {
    let candidates: Vec<Option<Multiaddr>> = if bootstraps.is_empty() {
        vec![None]
    } else {
        bootstraps.iter().cloned().map(Some).collect()
    };
    // wired to the database's network id by the membership change
    let founder_network = if bootstraps.is_empty() {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow!("the OS gave no randomness for a network id: {e}"))?;
        Some(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    } else {
        None
    };
    let mut last_error = None;
    for bootstrap in candidates {
        let mut cfg = NetConfig::new(keypair.clone(), args.cid.clone());
        cfg.listen = listen.clone();
        cfg.bootstrap = bootstrap.clone();
        cfg.network = founder_network.clone();
        cfg.protocol_id = args.protocol_id.clone();
        cfg.rendezvous = args.rendezvous.clone();
        cfg.frame_max_bytes = replicator_core::wire::FRAME_BYTES_MAX;
        cfg.bootstrap_timeout = Duration::from_millis(args.bootstrap_timeout_ms);
        cfg.down_after = Duration::from_millis(args.down_after_ms);
        if let Some(b) = &bootstrap {
            info!(bootstrap = %b, "connecting to the bootstrap peer");
        }
        match transport_libp2p::start(cfg).await {
            Ok(parts) => return Ok(parts),
            Err(e @ NetError::BootstrapUnreachable { .. }) => {
                warn!(error = %e, "bootstrap peer unreachable");
                last_error = Some(e);
            }
            // The bootstrap peer answered, and it is of another deployment: another peer of
            // the list would not be better (it is the configuration that is wrong), so stop.
            Err(NetError::ProtocolMismatch { addr, ours, theirs }) => {
                let theirs = if theirs.is_empty() {
                    "announces no replicator protocol".to_owned()
                } else if theirs.contains('/') {
                    format!("announces protocol version {theirs:?}")
                } else {
                    format!("uses --protocolid {theirs:?}")
                };
                return Err(anyhow!(
                    "cannot join the network through {addr}: this node uses --protocolid {ours:?}, the bootstrap peer {theirs}; start this node with the bootstrap peer's --protocolid, or give a bootstrap peer of this deployment"
                ));
            }
            Err(NetError::ForeignNetwork { addr, ours, theirs }) => {
                return Err(anyhow!(
                    "cannot join the network through {addr}: this node belongs to network {ours:?}, the bootstrap peer to network {theirs:?}; a node never joins another network (give a bootstrap peer of network {ours:?}, or start with an empty data dir to join network {theirs:?})"
                ));
            }
            Err(e) => return Err(anyhow!(e).context("cannot start the network")),
        }
    }
    let e = last_error.expect("at least one bootstrap was tried");
    Err(anyhow!(e).context("cannot join the network: no bootstrap peer answered"))
}

fn load_or_create_identity(data_dir: &Path) -> Result<Keypair> {
    let path: PathBuf = data_dir.join(IDENTITY_FILE);
    if path.exists() {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p keypair", path.display()));
    }
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .context("cannot encode the keypair")?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(keypair)
}

fn print_banner(
    args: &RunArgs,
    peer: &PeerId,
    addrs: &[Multiaddr],
    http: std::net::SocketAddr,
    data_dir: &Path,
) {
    println!("peer id: {peer}");
    println!("cluster: {}", args.cid);
    for a in addrs {
        println!("listening on: {a}");
    }
    println!("HTTP listening on http://{http}");
    let connect = addrs
        .iter()
        .find(|a| !a.to_string().starts_with("/ip4/127."))
        .or(addrs.first());
    if let Some(a) = connect {
        let next_http = std::net::SocketAddr::new(http.ip(), http.port().wrapping_add(1));
        let next_dir = format!("{}-next", data_dir.display());
        println!("start the next node with:");
        println!(
            "  replicator run --cid {} --bootstrap {a} --http {next_http} --data-dir {next_dir}",
            args.cid
        );
    }
}

pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
