//! # transport-sim
//!
//! A seeded, single-threaded, discrete-event world that drives many [`replicator_core::Node`]s
//! directly through their sans-io API: a virtual clock, a network with per-link latency, loss,
//! duplication, reordering, clogged links and partitions, a simulated disk per node, crashes,
//! restarts (of one node, of a whole cluster or of several clusters during a partition), pauses,
//! operator removals and nodes that join mid-run. No async, no threads, no wall clock: one seed
//! replays a run exactly.
//!
//! The world is as strict as the real node: a node boots from its own disk image only (keys,
//! ballot floor, membership, network id); discovery and goodbyes
//! travel over the simulated network. Discovery works like the real transport's Hello: a
//! request and its answer, each a message on the link, and a node learns a peer
//! ([`Input::NodeDiscovered`], with the peer's own network id) from the first Hello it hears
//! from it first-hand. Hello rounds run while some node lacks a peer it could reach; a
//! partitioned node does not learn of peers it cannot reach. A goodbye reaches only the nodes
//! the leaving node can reach when it says it (the core's view exchange heals the others).
//!
//! The world executes the outputs of the nodes (sends, writes, replies) and reports what
//! happened as [`Obs`]ervations, which the checkers of `sim-tests` drain after every
//! [`World::step`]. Every message goes through [`replicator_core::wire::encode`] and is decoded at
//! delivery, so the codec is exercised on every hop.
//!
//! It also checks two rules of the protocol that only the world can see: a node's Promise or
//! Accepted answer leaves it only once the state it reports reached its disk, and a node
//! answers a leaving node "clear" only for decisions its disk holds ([`Obs::Undurable`]). The disk loses, in a crash with `lose_unsynced`, any suffix of the
//! writes not yet synced, lazy writes included: durability is always a prefix.
//!
//! Events are ordered by `(time, seq)`, where `seq` is the order in which they were scheduled, so
//! ties break the same way in every run. Everything random comes from one seeded generator,
//! split per purpose (network, faults, disk, node seeds) so that, e.g., a change in the number of
//! messages does not shift the fault schedule.
//!
//! ## Where each part lives
//!
//! | file (in `src/`) | what it does |
//! |---|---|
//! | `spec.rs` | what a world is made of ([`WorldSpec`]: network, disk, faults, trace) |
//! | `obs.rs` | what it reports ([`Obs`], [`WorldStats`]) |
//! | `ids.rs` | fast id-keyed maps for lookups ([`IdMap`], [`IdSet`]) |
//! | `world.rs` | the [`World`]: nodes, clock, queue, driver commands, stepping, a node's inputs and outputs |
//! | `world/events.rs` | the queue's events and their order |
//! | `world/lifecycle.rs` | boot, join, crash, restart, leave, an operator's removal |
//! | `world/network.rs` | sending, latency, loss, duplication, reordering, partitions, clogs, delivery, the durable-vote rule |
//! | `world/disk.rs` | writes completing in order after their fsync |
//! | `world/discovery.rs` | Hello rounds and goodbyes |
//! | `world/nemesis.rs` | the fault primitives and the random fault schedule |
//! | `world/minority.rs` | a minority of every cluster down, paused, cut off or slow, for the whole run or coming and going |
//! | `world/tracer.rs` | the trace: lines, their hash, their structured records |
//! | `trace_event.rs` | the structured trace records ([`TraceEvent`]): messages, faults, client calls |

mod ids;
mod obs;
mod spec;
mod trace_event;
mod world;

pub use ids::{IdHasher, IdMap, IdSet};
pub use obs::{Obs, WorldStats};
pub use spec::{
    DiskSpec, FaultKind, FaultSpec, Micros, MinorityKind, MinoritySpec, NetSpec, NodeIx, TraceMode,
    WorldSpec,
};
pub use trace_event::{MessageAbout, TraceEvent, TraceWhat, WorldChange};
pub use world::World;
