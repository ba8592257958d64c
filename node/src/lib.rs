//! The replicator node as a library: the driver around the protocol core, the redb storage
//! with its group commit, the metrics and the HTTP API. The `replicator` binary adds libp2p,
//! the CLI, the demo and the load generator (feature `libp2p`, on by default).
//!
//! Everything here also builds under `--cfg madsim`, where tokio's time, tasks and network are
//! madsim's simulated ones: sim-tests' `node_sim` runs these very drivers over a simulated
//! network, with the storage on a [`simdisk::SimDisk`] that loses unsynced writes on a kill.

pub mod crc;
pub mod dashboard;
pub mod driver;
pub mod http;
pub mod metrics;
pub mod outgoing;
pub mod peer_warnings;
pub mod simdisk;
pub mod status;
pub mod storage;
pub mod wal;
pub mod writability;
