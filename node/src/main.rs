//! `replicator`: a node of the write-once multi-cluster key-value store, and its tools.
//!
//! Subcommands: `run` (a node), `demo` (a local network of nodes), `put` / `get` / `status`
//! (a client of a node's HTTP API), `bench` (a load generator). Exit codes of the client
//! commands: 0 ok, 1 error or unavailable, 2 usage, 3 conflict (exists or busy, or a refused
//! removal), 4 not found, 5 `status`: a write cannot commit at the node now, or it was removed.

mod address_book;
mod bench;
mod client;
mod demo;
mod net;
mod run;
mod serve;

use replicator_node::{dashboard, driver, http, metrics, storage};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The first node of `replicator demo` listens here, and the client commands ask it by default.
pub const DEFAULT_NODE_URL: &str = "http://127.0.0.1:8080";

/// `replicator --version`: the release, and what decides whether nodes of two releases work
/// together (the wire version: nodes of different ones drop each other's frames) and whether a
/// data dir can be opened (the database format: an older one is upgraded in place).
static VERSION_LINE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (wire version {}, database format {})",
        env!("CARGO_PKG_VERSION"),
        replicator_core::wire::WIRE_VERSION,
        storage::FORMAT_VERSION
    )
});

#[derive(Parser, Debug)]
#[command(
    name = "replicator",
    version = VERSION_LINE.as_str(),
    about = "A write-once key-value store replicated over several clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node. A flag given twice takes its last value.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// Start a local network (default 3 clusters x 3 nodes) and keep it running until Ctrl-C.
    Demo(DemoArgs),
    /// Store VALUE under KEY (exit 0 stored, 3 exists or busy, 1 error or unavailable).
    Put(PutArgs),
    /// Print the value stored under KEY (exit 0 found, 4 unknown key, 1 error).
    Get(GetArgs),
    /// Show a node's health, peers and clusters.
    Status(NodeArg),
    /// Remove a dead node from the membership (through --node, on every member). Refused while
    /// the node still answers (it is alive) or when its cluster has an even number of members,
    /// unless --force (exit 3 when refused; exit 1 when its cluster's members could not confirm
    /// it yet). The removed node serves nothing any more, even after a restart.
    Remove(RemoveArgs),
    /// Make the node at --node leave the network for good: it decides what it accepted, lets
    /// its cluster pull its decisions, says goodbye and exits; its data dir never starts a
    /// node again. PEER must be that node's peer id. Stopping a node (SIGTERM, Ctrl-C) is not
    /// leaving: it stays a member. Exit 0 left, 3 PEER is another node, 1 the leave did not
    /// complete (the node stopped without goodbye and stays a member) or error.
    Leave(LeaveArgs),
    /// Generate load against one or more nodes and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Write a new network key (a libp2p pre-shared key, `swarm.key` format) to FILE, or to
    /// stdout without FILE. Give the same file to every node with --network-key.
    Keygen(KeygenArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LeaveArgs {
    /// The peer id of the node at --node (what its `status` shows as `node`).
    pub peer: String,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Where to write the key (created with mode 0600; an existing file is never overwritten).
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `info,replicator=debug` (tracing EnvFilter syntax).
    #[arg(long, default_value = "info,libp2p=warn", global = true)]
    pub log_level: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// This node's cluster id.
    #[arg(long)]
    pub cid: String,
    /// A member of the network to join through (must end with /p2p/<peer id>). Without it,
    /// a node with an empty data dir founds a new network.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// More members to try, in order, if the bootstrap peer cannot be reached.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// libp2p listen address. The default is loopback only: exposing the node to other
    /// machines is an explicit decision (e.g. --listen /ip4/0.0.0.0/tcp/4001).
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    pub listen: Vec<String>,
    /// The network's pre-shared key (`replicator keygen FILE`): only nodes holding the same
    /// key complete a connection. Without it, anyone who reaches the listen address can join.
    #[arg(long, env = "REPLICATOR_NETWORK_KEY_FILE")]
    pub network_key: Option<PathBuf>,
    /// Only these peers may connect (repeatable; a peer id each). Default: any peer with the
    /// network key.
    #[arg(long = "allow-peer")]
    pub allow_peers: Vec<String>,
    /// HTTP API address (port 0: any free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// The deployment's private protocol namespace: nodes only talk to nodes with the same one.
    #[arg(long = "protocolid", default_value = "replicator")]
    pub protocol_id: String,
    /// The name under which members find each other in the DHT.
    #[arg(long, default_value = "members")]
    pub rendezvous: String,
    /// Where keys, protocol state and the node's identity live. Default: a new directory
    /// under the system's temp dir (a new identity on every start).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Memory for the database's page cache, in MiB: the decided keys a node reads most stay
    /// in memory, the rest is read from disk. A node's memory does not grow with the keys it
    /// stores; what is in flight (open keys, requests) is bounded by the protocol's limits.
    #[arg(long, default_value_t = storage::DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Give up on the bootstrap peer after this long.
    #[arg(long, default_value_t = 10_000)]
    pub bootstrap_timeout_ms: u64,
    /// A peer silent for this long is reported down (it stays a member).
    #[arg(long, default_value_t = 5_000)]
    pub down_after_ms: u64,
    /// A PUT still undecided after this long is answered 503 Unavailable.
    #[arg(long)]
    pub put_timeout_ms: Option<u64>,
    /// A key this node accepted a value for but saw undecided for this long is recovered by
    /// it (it runs a ballot to finish the decision).
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Writes need at least this many nodes in this node's cluster.
    #[arg(long, default_value_t = 3)]
    pub cluster_size_min: usize,
    /// How long a leave (`replicator leave`, POST /leave) waits for this node's values to be
    /// decided and pulled by its cluster; if that does not complete in time, the node stops
    /// without goodbye (it stays a member, reported down, until it comes back with its data
    /// dir). A stop (SIGTERM, Ctrl-C) does not leave.
    #[arg(long, default_value_t = 10_000)]
    pub leave_timeout_ms: u64,
    /// A file holding the HTTP API's bearer token (its first line). With it, membership
    /// changes (DELETE /peers/{peer}, POST /leave) always need `Authorization: Bearer <token>`; writes and
    /// reads too with --api-token-writes / --api-token-reads. Without it, anyone who reaches
    /// the HTTP address may call everything.
    #[arg(long, env = "REPLICATOR_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Writes (PUT /store/{key}) need the API token too.
    #[arg(long, requires = "api_token_file")]
    pub api_token_writes: bool,
    /// Reads (GET /store/{key}, /peers, /clusters, /metrics) need the API token too.
    /// /health and /openapi.json never do.
    #[arg(long, requires = "api_token_file")]
    pub api_token_reads: bool,
    #[command(flatten)]
    pub http_limits: HttpLimits,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Limits of the HTTP server, so that slow or idle clients cannot hold it.
#[derive(Args, Debug, Clone)]
pub struct HttpLimits {
    /// A request's head (request line and headers) must arrive within this long once its first
    /// byte did.
    #[arg(long, default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// A request's body must arrive within this long once its head did (answered 408).
    #[arg(long, default_value_t = 10_000)]
    pub http_body_timeout_ms: u64,
    /// A connection with no request in progress is closed after this long (new connections
    /// that send nothing, and idle keep-alive ones).
    #[arg(long, default_value_t = 30_000)]
    pub http_idle_timeout_ms: u64,
    /// The most HTTP connections open at once; beyond it a new one replaces the connection
    /// idle the longest, or is closed at once if all are busy (the node also raises its
    /// open-files limit to the hard limit).
    #[arg(long, default_value_t = 512)]
    pub http_connections_max: usize,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    #[arg(long, default_value_t = 3)]
    pub nodes_per_cluster: usize,
    /// The first node's HTTP port; node i listens on port + i.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Where the nodes keep their data and logs. Default: a new temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra flags passed to every node (e.g. --demo-node-arg=--log-level=debug).
    #[arg(long = "demo-node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArg {
    /// The node's HTTP address.
    #[arg(long, default_value = DEFAULT_NODE_URL)]
    pub node: String,
    /// A file holding the node's API token (see `run --api-token-file`), sent as
    /// `Authorization: Bearer`.
    #[arg(long, env = "REPLICATOR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    pub key: String,
    /// The value; `-` reads it from stdin.
    pub value: String,
    /// Retrying with the same id returns the first attempt's outcome.
    #[arg(long)]
    pub request_id: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(Args, Debug, Clone)]
pub struct RemoveArgs {
    /// The peer id of the node to remove.
    pub peer: String,
    /// Remove it even though it answers or its cluster has an even number of members (a live
    /// node stops serving once it hears of it; from an even cluster, a value a bare majority
    /// of it accepted may then be missed).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    pub key: String,
    /// Ask every node and report whether they agree.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub node: NodeArg,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_default_subcommand(std::env::args_os().collect()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run::main(*args).await,
            Cmd::Demo(args) => demo::main(args).await,
            Cmd::Put(args) => client::put(args).await,
            Cmd::Get(args) => client::get(args).await,
            Cmd::Status(args) => client::status(args).await,
            Cmd::Remove(args) => client::remove(args).await,
            Cmd::Leave(args) => client::leave(args).await,
            Cmd::Bench(args) => bench::main(args).await,
            Cmd::Keygen(args) => run::keygen(args),
        }
    })
}

/// The original interface had no subcommands (`replicator --cid C --bootstrap ...`): flags
/// without a subcommand mean `run`.
fn with_default_subcommand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_flag = first.starts_with("--");
    let is_meta = matches!(first, "--help" | "--version");
    if is_flag && !is_meta {
        args.insert(1, "run".into());
    }
    args
}

pub fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A log that cannot be written (its disk is full) must not stop the node: by default
        // tracing-subscriber reports that with eprintln!, which panics when stderr fails too.
        .log_internal_errors(false);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
