//! The real node under madsim: clusters of `replicator-node` drivers (the very `Driver`,
//! `Storage` with its group commit over redb, and HTTP router of the binary) on madsim's
//! simulated network, clock and tasks, with faults drawn per seed.
//!
//! What is simulated and how:
//! - **network**: [`SimTransport`] implements the driver's `Transport` over a madsim
//!   [`Endpoint`] per node. Discovery is realistic: every node sends a small `Hello` (cluster,
//!   node, network id) to every address of the world each [`HELLO_INTERVAL`]; a node learns of
//!   a peer only from a hello (or a frame) it received, so a partitioned or restarted node learns
//!   of nobody it cannot reach. A peer silent for [`DOWN_AFTER`] is reported down.
//! - **disk**: each node's storage is the real redb over a [`SimDisk`]; a group commit is
//!   reported durable only after a drawn fsync delay, and a kill loses every write no completed
//!   fsync covers.
//! - **faults** (drawn per seed): kill and restart from the disk, a whole cluster restarted
//!   while partitioned from the rest, partitions (a node, a cluster, a random split), one-way
//!   clogged links, paused nodes, message loss.
//! - **clients**: concurrent PUTs (fresh keys and hot keys, with and without request ids, a
//!   request-id PUT retried until definite) and GETs, half through the driver's `Handle`, half
//!   through the HTTP router (run on the node, so a kill cuts the call as it cuts a connection).
//!
//! Checks: the client history is linearizable per key (the same checker as transport-sim,
//! [`crate::linearizability`]); no driver reported a protocol violation; after healing, every
//! call is answered, a fresh PUT is stored through every cluster, every view converges and
//! nothing accepted is left undecided; at the end every node's disk (loaded by the real
//! `Storage::load` after a crash) agrees: no key with two values, every key a client was told
//! Stored is stored on every member with that value (once the network settled; before, by some
//! disk, or accepted by a majority of every cluster). With `minority_strict`, every call at a
//! node outside the minority kept down gets a definite answer meanwhile (Stored, Exists, Busy,
//! a value, unknown: 201, 409, 200, 404).
//!
//! [`Endpoint`]: madsim::net::Endpoint
//! [`SimDisk`]: replicator_node::simdisk::SimDisk
//! [`NodeSimSpec`]: crate::node_sim::NodeSimSpec
//! [`FaultKind`]: crate::node_sim::FaultKind
//! [`NodeSimStats`]: crate::node_sim::NodeSimStats
//! [`NodeSimFailure`]: crate::node_sim::NodeSimFailure
//! [`run_seed`]: crate::node_sim::run_seed
//! [`burst_delivery_ms`]: crate::node_sim::burst_delivery_ms
//!
//! ## Where each part lives
//!
//! | file (in `node_sim/`) | what it does |
//! |---|---|
//! | here | the constants every part shares (ports, intervals, timeouts, bounds) |
//! | `spec.rs` | what one seed runs ([`NodeSimSpec`], [`FaultKind`]), drawn from the seed; the driver bugs' names |
//! | `report.rs` | what a run returns ([`NodeSimStats`], [`NodeSimFailure`]), the failure report and the replay command |
//! | `run.rs` | one seed in a fresh madsim runtime ([`run_seed`]): the world built, the safety phase, healing, the end checks in order, the stats |
//! | `network.rs` | the simulated network: `SimTransport`, each node's network task (hellos, liveness, frames), [`burst_delivery_ms`] |
//! | `world.rs` | the world: machines and their disks, a node's process from its disk, kill, restart, clogs and partitions, the run's log |
//! | `faults.rs` | the fault injector of the safety phase |
//! | `clients.rs` | the clients: PUTs and GETs through the handle or the HTTP router, retries with request ids, bursts |
//! | `checks.rs` | the end checks: liveness after healing, the disks (agreement, durability), honest no-effect answers |

mod checks;
mod clients;
mod faults;
mod network;
mod report;
mod run;
mod spec;
mod world;

pub use network::burst_delivery_ms;
pub use report::{NodeSimFailure, NodeSimStats, check_seed, replay_command, report, report_with};
pub use run::run_seed;
pub use spec::{FAULT_KINDS, FaultKind, NodeSimSpec, bug_from_name, bug_name};

use std::time::Duration;

/// The API token of every node's HTTP router (writes need it).
const API_TOKEN: &str = "node-sim-token";
/// The port every node's endpoint listens on.
const PORT: u16 = 7000;
/// The endpoint tag of every packet.
const TAG: u64 = 1;
/// How often a node says hello to every address of the world.
const HELLO_INTERVAL: Duration = Duration::from_millis(300);
/// A peer silent for this long is reported down (it stays a member).
const DOWN_AFTER: Duration = Duration::from_millis(1500);
/// Transport events waiting for the driver (as the libp2p pump's queue).
const EVENTS_QUEUE_LEN: usize = 1024;
/// The most frames the network task takes from the driver's queue at once before it looks at
/// incoming packets and hellos again (the libp2p transport's per-peer send queue bound).
const SEND_BATCH_FRAMES_MAX: usize = 8192;
/// A request-id PUT is retried (with the same id) at most this often while indeterminate.
const ATTEMPTS_MAX: u32 = 4;
/// A client gives up on one call after this long (the node's own timers answer far sooner).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Liveness: how long, after healing, everything may take to settle.
const LIVENESS_WITHIN: Duration = Duration::from_secs(60);
