//! `replicator run`: one node. Identity and data in `--data-dir`, libp2p for the network,
//! the driver for the protocol, axum for the API; Ctrl-C / SIGTERM leave gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use replicator_core::{ClusterId, Config, NetworkId, NodeId, Recovered};
use tracing::{error, info, warn};
use transport_libp2p::libp2p::identity::Keypair;
use transport_libp2p::libp2p::{Multiaddr, PeerId};
use transport_libp2p::{Client, NetConfig, NetError};

use crate::address_book::AddressBook;
use crate::dashboard::Dashboard;
use crate::driver::{Driver, Handle, Parts};
use crate::metrics::Metrics;
use crate::net::{Libp2pTransport, NetEvents, spawn_status_exchange};
use crate::storage::{Storage, StorageError, db_path};
use crate::{RunArgs, http, init_logging, serve};

const IDENTITY_FILE: &str = "identity.key";

/// `replicator run` exits with this when its database cannot be used (corrupt): the machine
/// must come back as a new node.
pub const EXIT_DATABASE_UNUSABLE: u8 = 65;
/// `replicator run` exits with this when its data dir belongs to a node that left the network
/// (`replicator leave`): it never starts as a member again (EX_CONFIG).
pub const EXIT_LEFT: u8 = 78;

pub async fn main(args: RunArgs) -> ExitCode {
    init_logging(&args.log);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "the node stops");
            eprintln!("error: {e:#}");
            let unusable = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<StorageError>(),
                    Some(StorageError::Unusable(_))
                )
            });
            if unusable {
                ExitCode::from(EXIT_DATABASE_UNUSABLE)
            } else if e.chain().any(|c| c.is::<Left>()) {
                ExitCode::from(EXIT_LEFT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The node's life: read the flags, start the network, open the database, run the driver
/// and the HTTP API until the driver stops or a signal asks the node to leave.
async fn run(args: RunArgs) -> Result<()> {
    let data_dir = data_dir(&args)?;
    let has_database = db_path(&data_dir).exists();
    let keypair = load_or_create_identity(&data_dir, has_database)?;
    let peer_id = keypair.public().to_peer_id();
    let (bootstraps, listen) = addresses(&args)?;

    let admission = Admission::from_args(&args)?;
    if let Some(limit) = serve::raise_open_files_limit() {
        info!(
            open_files_max = limit,
            http_connections_max = args.http_limits.http_connections_max,
            "open-files limit"
        );
    }
    let auth = api_auth(&args)?;
    let cache_bytes = args.cache_mb.max(1).saturating_mul(1 << 20);
    let config = core_config(&args)?;

    // A node with a database belongs to the network it recorded, whatever the flags say: it
    // never founds another one, and it joins only a bootstrap peer of that network. Only an
    // empty data dir without --bootstrap founds a network.
    let existing = if has_database {
        let storage = Storage::open_with_cache(&data_dir, None, cache_bytes)?;
        storage.bind_identity(&peer_id.to_string())?;
        if let Some(when) = storage.left()? {
            return Err(Left { when, data_dir }.into());
        }
        let network = storage.network()?;
        Some((storage, network))
    } else {
        None
    };
    let role = match (&existing, bootstraps.is_empty()) {
        (Some(_), _) => Role::Restart,
        (None, true) => Role::Founder,
        (None, false) => Role::Joiner,
    };
    let network = match (&existing, role) {
        (Some((_, network)), _) => Some(network.to_string()),
        (None, Role::Founder) => Some(draw_network_id()?),
        (None, _) => None,
    };
    info!(
        role = role.name(),
        network = network.as_deref().unwrap_or("(adopted from the bootstrap peer)"),
        data_dir = %data_dir.display(),
        "starting"
    );

    // The network before a new database: a node that cannot join must not create one that
    // would make it a member of nothing (or of the wrong network) on its next start.
    // A node with a database redials the members it recorded: restarted without
    // --bootstrap, it reaches them itself (and learns if one of them removed it).
    let book = AddressBook::load(&data_dir);
    let redial = if existing.is_some() {
        book.addresses()
    } else {
        Vec::new()
    };
    let (client, net_events, event_loop) = start_network(
        &args,
        &admission,
        keypair,
        listen,
        &bootstraps,
        &redial,
        network,
    )
    .await?;
    let event_loop = tokio::spawn(event_loop.run());
    let listen_addrs = client.listen_addrs().await;
    let network = NetworkId::from(client.network());

    let opened = open_storage(existing, role, &network, &data_dir, &peer_id, cache_bytes);
    let (storage, loaded) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            client.shutdown().await;
            return Err(e);
        }
    };
    info!(
        role = role.name(),
        network = %network,
        members = loaded.recovered.members.len() + 1,
        removed = loaded.recovered.departed.contains(&NodeId::new(peer_id.to_string())),
        data_dir = %data_dir.display(),
        "storage opened"
    );

    let metrics = Arc::new(Metrics::default());
    let traffic_client = client.clone();
    let _ = metrics.peer_traffic.set(Box::new(move || {
        traffic_client
            .stats()
            .peers
            .iter()
            .map(|p| crate::metrics::PeerTraffic {
                peer: p.peer.to_string(),
                frames_sent: p.counts.frames_sent,
                bytes_sent: p.counts.bytes_sent,
                writes: p.counts.writes,
                frames_received: p.counts.frames_received,
                bytes_received: p.counts.bytes_received,
            })
            .collect()
    }));
    let value_bytes_max = config.value_bytes_max;
    let dashboard = Arc::new(Dashboard::default());
    let (driver, handle) = Driver::new(Parts {
        config,
        id: NodeId::new(peer_id.to_string()),
        cluster: ClusterId::new(&args.cid),
        loaded,
        storage,
        transport: Libp2pTransport::new(client.clone(), metrics.clone()),
        events: NetEvents::new(net_events, book, dashboard.clone()),
        metrics: metrics.clone(),
    })?;
    let span = tracing::info_span!("node", peer = %peer_id, cluster = %args.cid);
    let mut driver_task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));

    let (leave_asks, mut leave_asked) = tokio::sync::mpsc::channel::<http::LeaveAsk>(4);
    let api = http::Api {
        driver: handle.clone(),
        metrics: metrics.clone(),
        value_bytes_max,
        network_open: admission.psk.is_none(),
        auth: Arc::new(auth),
        leave: leave_asks,
        dashboard: dashboard.clone(),
    };
    let (http_addr, stop_http, server) = start_http(&args, api).await?;
    dashboard.set_http(format!("http://{http_addr}"));
    dashboard.set_own_addrs(listen_addrs.iter().map(|a| a.to_string()).collect());
    spawn_status_exchange(client.clone(), handle.clone(), dashboard, metrics);

    print_banner(
        &args,
        &peer_id,
        &network,
        &listen_addrs,
        http_addr,
        &data_dir,
    );
    info!(peer = %peer_id, cluster = %args.cid, network = %network, http = %http_addr, "node started");

    let ending = tokio::select! {
        r = &mut driver_task => Ending::Driver(r),
        () = shutdown_signal() => Ending::Stop,
        Some(ask) = leave_asked.recv() => Ending::Leave(ask),
    };
    let http = HttpServer {
        stop: stop_http,
        server,
    };
    let result = match ending {
        Ending::Driver(Ok(Ok(()))) => Err(anyhow!("the driver stopped")),
        Ending::Driver(Ok(Err(e))) => Err(e),
        Ending::Driver(Err(e)) => Err(anyhow!("the driver panicked: {e}")),
        Ending::Stop => {
            http.drain().await;
            stop_driver(&handle, driver_task).await;
            Ok(())
        }
        Ending::Leave(ask) => {
            let left = leave_the_network(&args, &handle, &client, driver_task, &data_dir).await;
            let answer = match &left {
                Ok(()) => http::LeaveAnswer::Left,
                Err(e) => http::LeaveAnswer::Incomplete(format!("{e:#}")),
            };
            let _ = ask.send(answer);
            http.drain().await;
            left
        }
    };
    // Every path but a completed leave (which said goodbye) stops without telling anyone:
    // the others see this node down, and it stays a member.
    client.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), event_loop).await;
    result
}

/// Why `run` stops.
enum Ending {
    /// The driver returned (storage failed, or it panicked).
    Driver(std::result::Result<Result<()>, tokio::task::JoinError>),
    /// SIGTERM or Ctrl-C: stop, and stay a member.
    Stop,
    /// An operator asked this node to leave the network (`POST /leave`).
    Leave(http::LeaveAsk),
}

/// The HTTP API being served.
struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Accepts no more connections and waits (at most `STOP_GRACE`) until every request being
    /// served is answered: a PUT in flight ends Stored, Exists or Unavailable, not cut off.
    async fn drain(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(STOP_GRACE, self.server).await.is_err() {
            warn!(grace = ?STOP_GRACE, "requests still unanswered after the grace: stopping anyway");
        }
    }
}

/// How long a stopping node waits for the requests it is serving, and then for its database
/// to close.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Stops the driver: it commits what is queued and closes the database.
async fn stop_driver(handle: &Handle, driver_task: tokio::task::JoinHandle<Result<()>>) {
    handle.stop().await;
    match tokio::time::timeout(STOP_GRACE, driver_task).await {
        Ok(Ok(Ok(()))) => info!("stopped: the database is closed; this node stays a member"),
        Ok(Ok(Err(e))) => warn!(error = %format!("{e:#}"), "the driver failed while stopping"),
        Ok(Err(e)) => warn!(error = %e, "the driver panicked while stopping"),
        Err(_) => warn!("the driver did not stop in time"),
    }
}

/// `replicator run` on a data dir whose node left the network.
#[derive(Debug)]
pub struct Left {
    when: String,
    data_dir: PathBuf,
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this node left the network (replicator leave, {}): the data dir {} is no \
             longer a member's. To bring this machine back, start it as a new node: move the \
             data dir away (or use an empty one) and give --bootstrap the address of a member",
            self.when,
            self.data_dir.display()
        )
    }
}

impl std::error::Error for Left {}

/// The data dir of the flags (created if missing), or a temporary one.
fn data_dir(args: &RunArgs) -> Result<PathBuf> {
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
    Ok(data_dir)
}

/// The bootstrap peers (--bootstrap and --peer) and the listen addresses of the flags.
fn addresses(args: &RunArgs) -> Result<(Vec<Multiaddr>, Vec<Multiaddr>)> {
    let bootstraps = args
        .bootstrap
        .iter()
        .chain(args.peers.iter())
        .map(|a| {
            a.parse()
                .with_context(|| format!("--bootstrap/--peer {a:?} is not a multiaddr"))
        })
        .collect::<Result<Vec<Multiaddr>>>()?;
    let listen = args
        .listen
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("--listen {a:?} is not a multiaddr"))
        })
        .collect::<Result<Vec<Multiaddr>>>()?;
    Ok((bootstraps, listen))
}

/// The core's config: its defaults, with the flags that override them.
fn core_config(args: &RunArgs) -> Result<Config> {
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
    Ok(config)
}

/// The database, checked against the network the transport runs, and what it recovers. A
/// new one (a founder or a joiner) records the network id before anything else: a joiner,
/// the adopted one, before it copies anything.
fn open_storage(
    existing: Option<(Storage, NetworkId)>,
    role: Role,
    network: &NetworkId,
    data_dir: &Path,
    peer_id: &PeerId,
    cache_bytes: usize,
) -> Result<(Storage, crate::storage::Loaded)> {
    let mut storage = match existing {
        Some((storage, recorded)) => {
            if recorded != *network {
                anyhow::bail!(
                    "the transport runs network {network}, the database records {recorded}"
                );
            }
            storage
        }
        None => {
            let fresh = match role {
                Role::Founder => Recovered::founder(network.clone()),
                _ => Recovered::joiner(network.clone()),
            };
            Storage::open_with_cache(data_dir, Some(&fresh), cache_bytes)?
        }
    };
    storage.bind_identity(&peer_id.to_string())?;
    let loaded = storage.load()?;
    Ok((storage, loaded))
}

/// Binds the HTTP API's listener and serves it until the returned sender fires (or is
/// dropped).
async fn start_http(
    args: &RunArgs,
    api: http::Api,
) -> Result<(
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let listener = tokio::net::TcpListener::bind(&args.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http))?;
    let http_addr = listener.local_addr()?;
    let metrics = api.metrics.clone();
    let body_bytes_max = api.value_bytes_max + http::BODY_SLACK_BYTES;
    let app = http::router(api);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = serve::Limits {
        header: Duration::from_millis(args.http_limits.http_header_timeout_ms),
        body: Duration::from_millis(args.http_limits.http_body_timeout_ms),
        idle: Duration::from_millis(args.http_limits.http_idle_timeout_ms),
        connections_max: args.http_limits.http_connections_max.max(1),
        body_bytes_max,
    };
    let server = tokio::spawn(serve::serve(listener, app, limits, metrics, http_stopped));
    Ok((http_addr, stop_http, server))
}

/// An operator asked this node to leave: decide what it accepted and let its cluster pull
/// its decisions, record on its disk that it left, then say goodbye. If the leave does not
/// complete in time, it stops without goodbye and stays a member (an error).
async fn leave_the_network(
    args: &RunArgs,
    handle: &Handle,
    client: &Client,
    driver_task: tokio::task::JoinHandle<Result<()>>,
    data_dir: &Path,
) -> Result<()> {
    info!("an operator asked this node to leave the network");
    let within = Duration::from_millis(args.leave_timeout_ms);
    let complete = handle.leave(within).await;
    // The driver stops either way; its database must be closed before it is opened here.
    match tokio::time::timeout(STOP_GRACE, driver_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the driver failed while leaving")),
        Ok(Err(e)) => anyhow::bail!("the driver panicked while leaving: {e}"),
        Err(_) => anyhow::bail!("the driver did not stop in time while leaving"),
    }
    if !complete {
        // Saying goodbye before its cluster holds every decision it took part in could leave
        // a chosen value with too few holders.
        anyhow::bail!(
            "the leave did not complete within {within:?} (--leave-timeout-ms): stopped \
             WITHOUT goodbye; this node stays a member. Restart it with its data dir, and \
             ask again once its cluster is reachable"
        );
    }
    // Recorded before the goodbye: a node that said goodbye must never start as a member.
    let when = httpdate::fmt_http_date(std::time::SystemTime::now());
    Storage::open(data_dir, None)
        .and_then(|s| s.mark_left(&when))
        .context(
            "cannot record the leave on this node's disk: no goodbye said, it stays a member",
        )?;
    client.goodbye().await;
    info!("left the network: goodbye said; this data dir can no longer start a node");
    Ok(())
}

/// How this node starts, from its data dir and flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// An empty data dir, no --bootstrap: draws a network id.
    Founder,
    /// An empty data dir, --bootstrap: adopts the bootstrap peer's network id.
    Joiner,
    /// A database: its recorded network id, its recorded membership.
    Restart,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Founder => "founder",
            Role::Joiner => "joiner",
            Role::Restart => "restart",
        }
    }
}

/// A new network's id: 32 lowercase hex digits from the OS's randomness.
fn draw_network_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow!("the OS gave no randomness for a network id: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts the transport in the network `network` (`None`: a joiner that adopts its bootstrap
/// peer's), trying the bootstrap peers in order.
async fn start_network(
    args: &RunArgs,
    admission: &Admission,
    keypair: Keypair,
    listen: Vec<Multiaddr>,
    bootstraps: &[Multiaddr],
    redial: &[Multiaddr],
    network: Option<String>,
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
    let mut last_error = None;
    for bootstrap in candidates {
        let mut cfg = NetConfig::new(keypair.clone(), args.cid.clone());
        cfg.listen = listen.clone();
        cfg.bootstrap = bootstrap.clone();
        cfg.redial = redial.to_vec();
        cfg.network = network.clone();
        cfg.protocol_id = args.protocol_id.clone();
        cfg.rendezvous = args.rendezvous.clone();
        cfg.frame_max_bytes = replicator_core::wire::FRAME_BYTES_MAX;
        cfg.bootstrap_timeout = Duration::from_millis(args.bootstrap_timeout_ms);
        cfg.down_after = Duration::from_millis(args.down_after_ms);
        cfg.psk = admission.psk;
        cfg.allow_peers = admission.allow_peers.clone();
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

/// Who may connect: the network key and the allow-list, from the flags.
struct Admission {
    psk: Option<transport_libp2p::libp2p::pnet::PreSharedKey>,
    allow_peers: Option<Vec<PeerId>>,
}

impl Admission {
    fn from_args(args: &RunArgs) -> Result<Admission> {
        let psk = match &args.network_key {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the network key {}", path.display()))?;
                let psk = transport_libp2p::parse_network_key(&text)
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                info!(fingerprint = %psk.fingerprint(), "network key loaded: only nodes with this key can connect");
                Some(psk)
            }
            None => {
                warn!(
                    "NETWORK OPEN: no --network-key, so anyone who can reach this node's libp2p address can join the network, copy every key and vote; make one with `replicator keygen FILE` and give it to every node"
                );
                None
            }
        };
        let allow_peers = if args.allow_peers.is_empty() {
            None
        } else {
            let peers = args
                .allow_peers
                .iter()
                .map(|p| {
                    p.parse::<PeerId>()
                        .with_context(|| format!("--allow-peer {p:?} is not a peer id"))
                })
                .collect::<Result<Vec<_>>>()?;
            info!(
                peers = peers.len(),
                "only the peers of --allow-peer may connect"
            );
            Some(peers)
        };
        Ok(Admission { psk, allow_peers })
    }
}

/// The HTTP API's token and what it protects, from the flags.
fn api_auth(args: &RunArgs) -> Result<http::Auth> {
    let Some(path) = &args.api_token_file else {
        warn!(
            "HTTP API OPEN: no --api-token-file, so anyone who reaches the HTTP address can write, read and remove members"
        );
        return Ok(http::Auth::default());
    };
    let token = read_token(path)?;
    info!(
        writes = args.api_token_writes,
        reads = args.api_token_reads,
        "API token loaded: membership changes need it"
    );
    Ok(http::Auth {
        token: Some(token),
        writes: args.api_token_writes,
        reads: args.api_token_reads,
    })
}

/// A token file's first line, trimmed; it must not be empty.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API token {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "the API token file {} must hold the token on its first line (visible ASCII, no spaces)",
            path.display()
        );
    }
    Ok(token)
}

/// `replicator keygen [FILE]`: a new network key, to a new file (mode 0600) or stdout.
pub fn keygen(args: crate::KeygenArgs) -> ExitCode {
    let mut random = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut random) {
        eprintln!("error: the OS gave no randomness: {e}");
        return ExitCode::FAILURE;
    }
    let key = transport_libp2p::generate_network_key(random);
    let Some(path) = args.file else {
        print!("{key}");
        return ExitCode::SUCCESS;
    };
    match write_new_secret(&path, key.as_bytes()) {
        Ok(()) => {
            eprintln!(
                "wrote a network key to {}; give this file to every node with --network-key",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a secret to a file that must not exist yet, readable by its owner only.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn load_or_create_identity(data_dir: &Path, has_database: bool) -> Result<Keypair> {
    let path: PathBuf = data_dir.join(IDENTITY_FILE);
    // A damaged or missing identity makes the data dir unusable as it is (exit 65).
    let unusable = |what: String| anyhow::Error::new(StorageError::Unusable(what));
    if path.exists() {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.is_empty() {
            return Err(unusable(format!(
                "{} is empty: it should hold this node's private key (protobuf-encoded ed25519). \
                 Restore it from a backup; without it this data dir cannot be used",
                path.display()
            )));
        }
        return Keypair::from_protobuf_encoding(&bytes).map_err(|_| {
            unusable(format!(
                "{} is not a libp2p ed25519 keypair ({} bytes, not a protobuf-encoded private \
                 key): restore it from a backup; without it this data dir cannot be used",
                path.display(),
                bytes.len()
            ))
        });
    }
    if has_database {
        return Err(unusable(format!(
            "{} is missing, but the data dir holds a database: the database belongs to the \
             identity that file held, and a new identity on top of it would be another node \
             claiming its promises. Restore identity.key, or move the data dir away and start \
             this machine as a new node (with --bootstrap of a member)",
            path.display()
        )));
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
    network: &NetworkId,
    addrs: &[Multiaddr],
    http: std::net::SocketAddr,
    data_dir: &Path,
) {
    println!("peer id: {peer}");
    println!("network: {network}");
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
        println!("start the next node with:");
        println!("  {}", next_node_command(args, a, http, data_dir));
    }
}

/// The command that starts another node like this one, joining through `bootstrap`: where it
/// listens (this node's listen address on another port), the network key and the API token.
fn next_node_command(
    args: &RunArgs,
    bootstrap: &Multiaddr,
    http: std::net::SocketAddr,
    data_dir: &Path,
) -> String {
    use transport_libp2p::libp2p::multiaddr::Protocol;
    // Port 0: the next node takes a free port (and prints it). Suggesting this node's port
    // plus one would collide with whatever listens there (e.g. the demo's next node).
    let next_http = std::net::SocketAddr::new(http.ip(), 0);
    let mut command = format!(
        "replicator run --cid {} --bootstrap {bootstrap} --http {next_http} --data-dir {}-next",
        args.cid,
        data_dir.display()
    );
    if let Some(listen) = args
        .listen
        .first()
        .and_then(|l| l.parse::<Multiaddr>().ok())
    {
        let any_port: Multiaddr = listen
            .iter()
            .map(|p| match p {
                Protocol::Tcp(_) => Protocol::Tcp(0),
                other => other,
            })
            .collect();
        command.push_str(&format!(" --listen {any_port}"));
    }
    if let Some(k) = &args.network_key {
        command.push_str(&format!(" --network-key {}", k.display()));
    }
    if let Some(t) = &args.api_token_file {
        command.push_str(&format!(" --api-token-file {}", t.display()));
        if args.api_token_writes {
            command.push_str(" --api-token-writes");
        }
        if args.api_token_reads {
            command.push_str(" --api-token-reads");
        }
    }
    command
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn the_next_node_command_carries_listen_key_and_token() {
        let flags = Flags::parse_from([
            "replicator",
            "--cid",
            "eu",
            "--listen",
            "/ip4/10.0.0.5/tcp/4001",
            "--network-key",
            "/etc/r/network.key",
            "--api-token-file",
            "/etc/r/api.token",
            "--api-token-writes",
        ]);
        let bootstrap: Multiaddr = "/ip4/10.0.0.5/tcp/4001".parse().unwrap();
        let http = "0.0.0.0:8080".parse().unwrap();
        let command = next_node_command(&flags.run, &bootstrap, http, Path::new("/var/r"));
        assert_eq!(
            command,
            "replicator run --cid eu --bootstrap /ip4/10.0.0.5/tcp/4001 --http 0.0.0.0:0 \
             --data-dir /var/r-next --listen /ip4/10.0.0.5/tcp/0 --network-key /etc/r/network.key \
             --api-token-file /etc/r/api.token --api-token-writes"
        );
    }
}
