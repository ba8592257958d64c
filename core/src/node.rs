//! The protocol state machine of one node: its state, grouped by the part of the protocol that
//! owns it, and the routing of every input to the role that handles it. The roles are in the
//! submodules (see the map at the top of lib.rs); each is an `impl Node` block that touches the
//! state it needs.

mod bounds;
mod contention;
mod coordinator;
mod decider;
mod lease;
mod leave;
mod ledger;
mod members;
mod outbox;
mod participant;
mod reads;
mod removal;
mod representative;
mod requests;
mod resolve;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::api::{
    Command, GetOutcome, Input, NotReady, Note, Output, PutOutcome, RemoveOutcome, Reply,
};
use crate::config::{Config, ConfigError};
use crate::membership::Membership;
use crate::storage::{DurableKey, Recovered};
use crate::timers::{RelayKey, Timer, Timers};
use crate::types::{CallId, ClusterId, Key, NetworkId, NodeId, ProposalId, Time};
use crate::wire::{Message, Response, Vote};

pub use bounds::{validate_key, validate_put};
use coordinator::{ProposalIds, PutOp};
use decider::Decider;
use ledger::Ledger;
use members::Members;
use outbox::Outbox;
use reads::{ReadWait, Verify};
use removal::PendingRemoval;
use representative::Relay;
use requests::RequestTable;
use sync::SyncState;

/// One node of the write-once replication protocol, as a pure state machine.
///
/// # Contract
/// - Feed every event with [`Node::handle`], passing the current time; times never go back
///   (an earlier `now` is treated as the latest one seen).
/// - After **every** call to `handle`, drain [`Node::poll_output`] until it returns `None`, and
///   execute each output: send messages, make writes durable (in order) and report them with
///   [`Input::Persisted`], deliver replies.
/// - Then read [`Node::poll_timeout`] and call `handle(now, Input::Timeout)` when it is due.
/// - Messages and replies are released only after every write issued before them is durable,
///   so a driver may crash the node at any point and restart it from the writes it completed
///   ([`Recovered`]) without breaking any promise the node made.
///
/// The node never reads a clock, never draws randomness of its own (the caller gives the seed
/// of its jitter), never does I/O and never iterates a map in an order that depends on a hash.
pub struct Node {
    config: Config,
    id: NodeId,
    cluster: ClusterId,
    network: NetworkId,
    rng: ChaCha8Rng,
    now: Time,
    timers: Timers,
    /// Writes, the durability barrier, everything emitted (outbox.rs).
    out: Outbox,

    /// Keys, reservations, refusals, watermarks (ledger.rs).
    ledger: Ledger,
    /// Whether the node votes and serves reads: its join-time copy is done (sync.rs).
    ready: bool,
    sync: Option<SyncState>,

    /// Members and departed nodes (members.rs).
    members: Members,
    /// No grant before this: the membership shrank by a removal, and the removed node may
    /// still answer reads until its read lease runs out (members.rs).
    settled_at: Time,
    /// When this node last sent its view to each peer (views are rate-limited).
    view_sent: BTreeMap<NodeId, Time>,
    /// This node answers "unknown key" only before this: a member counted it recently
    /// (lease.rs).
    read_lease_until: Time,
    /// When the last round of membership probes left.
    probe_sent: Option<Time>,
    /// Reads of free keys waiting for the read lease to be renewed.
    lease_reads: BTreeMap<CallId, Key>,
    /// An operator's removal being checked with every member (removal.rs).
    removal: Option<PendingRemoval>,
    /// Leaving (leave.rs): stop granting, settle everything, then say so once.
    leaving: bool,
    leave_complete: bool,
    /// While leaving: the members that hold no reservation naming this node.
    leave_clear: BTreeSet<NodeId>,

    /// Client PUTs this node coordinates (coordinator.rs).
    ops: BTreeMap<u64, PutOp>,
    next_op: u64,
    proposal_ids: ProposalIds,
    /// Request ids for at-most-once retries (requests.rs).
    requests: RequestTable,
    /// Vote collections: the coordinator's, resolutions, a leaving node's confirmations
    /// (decider.rs, resolve.rs).
    deciders: BTreeMap<ProposalId, Decider>,
    /// Reads waiting on a reserved key, and the reads waiting on each proposal (reads.rs).
    reads: BTreeMap<CallId, ReadWait>,
    readers: BTreeMap<ProposalId, BTreeSet<CallId>>,
    verifies: BTreeMap<u64, Verify>,
    /// Fan-outs this node runs as a representative (representative.rs).
    relays: BTreeMap<RelayKey, Relay>,
    /// Tags of verify reads and of relayed reads (one counter for both).
    next_tag: u64,
}

/// Deliberately broken behaviour, for showing that the simulator catches it. Selectable
/// through `Config::bug` only when the `bug-injection` feature is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InjectedBug {
    /// Grant a Reserve although the key is reserved by another proposal.
    GrantWhenReserved,
    /// Commit when all participants but one granted.
    CommitOnPartialVote,
    /// Answer a read of a reserved key "unknown" at once.
    ReadReservedAsUnknown,
    /// Drop a reservation on Abort without recording a refusal.
    ForgetFenceOnAbort,
    /// Send messages before the writes they depend on are durable.
    VoteBeforeDurable,
    /// Answer Status of a proposal this node does not hold without fencing it.
    StatusWithoutFence,
    /// Start after a restart from the membership the driver happens to know (here: only this
    /// node), not the recorded one: the bug that let a cluster restarted during a partition
    /// found a network of its own.
    ForgetMembershipOnRestart,
    /// Answer "unknown key" without a read lease: a removed node that does not know it yet
    /// serves stale reads.
    ReadWithoutLease,
    /// Persist a grant as a lazy write, like `Stored`: the vote leaves before the reservation
    /// it reports is durable.
    LazyGrant,
    /// Answer a leave or removal check before the lazy writes so far are durable: "clear"
    /// vouches for a commit that a crash may still undo into a reservation naming a node that
    /// is about to be gone.
    ClearBeforeLazyDurable,
}

/// Counts worth exporting as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub keys_stored: usize,
    pub reservations_open: usize,
    pub refusals: usize,
    pub proposals_in_flight: usize,
    pub resolutions: usize,
    pub reads_waiting: usize,
    pub relays: usize,
    pub timers: usize,
    pub held_messages: usize,
}

impl Node {
    /// Every member but this node, in id order.
    fn other_members(&self) -> Vec<NodeId> {
        self.members
            .current()
            .nodes()
            .filter(|n| **n != self.id)
            .cloned()
            .collect()
    }

    /// Starts a node from its durable state only: its keys, refusals, network and the whole
    /// membership it recorded (whatever it rediscovers later can only add to it). `seed` seeds
    /// the jitter of backoffs.
    pub fn new(
        config: Config,
        id: NodeId,
        cluster: ClusterId,
        recovered: Recovered,
        now: Time,
        seed: u64,
    ) -> Result<Node, ConfigError> {
        config.validate()?;
        let Recovered {
            network,
            members,
            keys,
            refusals,
            watermarks,
            counter_ceiling,
            requests,
            ready,
            departed,
        } = recovered;
        let forget = bug_in(&config, InjectedBug::ForgetMembershipOnRestart);
        let recorded = members
            .into_iter()
            .filter(|_| !forget)
            .map(|(node, cluster)| (cluster, node));
        // A removal recorded before the restart may be moments old: settle as after one.
        let settled_at = if departed.is_empty() {
            now
        } else {
            now + config.read_lease.saturating_mul(2)
        };
        let members = Members::new(id.clone(), cluster.clone(), recorded, departed);
        let proposal_ids = ProposalIds::new(counter_ceiling, config.counter_block);
        let requests = RequestTable::new(requests, now, config.requests_max, config.request_ttl);
        let ledger = Ledger::new(keys, refusals, watermarks, config.refusals_max, ready);
        let out = Outbox::new(id.clone(), bug_in(&config, InjectedBug::VoteBeforeDurable));
        let mut node = Node {
            config,
            id,
            cluster,
            network,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            timers: Timers::default(),
            out,
            ledger,
            ready,
            sync: None,
            members,
            settled_at,
            view_sent: BTreeMap::new(),
            read_lease_until: Time::ZERO,
            probe_sent: None,
            lease_reads: BTreeMap::new(),
            removal: None,
            leaving: false,
            leave_complete: false,
            leave_clear: BTreeSet::new(),
            ops: BTreeMap::new(),
            next_op: 0,
            proposal_ids,
            requests,
            deciders: BTreeMap::new(),
            reads: BTreeMap::new(),
            readers: BTreeMap::new(),
            verifies: BTreeMap::new(),
            relays: BTreeMap::new(),
            next_tag: 0,
        };
        // Every reservation found on disk is resolved soon after the restart; the jitter keeps
        // a whole cluster that restarts at once from resolving in lockstep.
        let open: Vec<ProposalId> = node
            .ledger
            .keys()
            .filter(|(_, s)| !s.is_stored())
            .map(|(_, s)| s.proposal().clone())
            .collect();
        for p in open {
            let delay = node.jitter(node.config.resolve_backoff_min);
            node.timers.set(Timer::Lease(p), now + delay);
        }
        if !node.ready {
            node.start_sync();
        }
        Ok(node)
    }

    // ---------------------------------------------------------------- getters

    pub fn id(&self) -> &NodeId {
        &self.id
    }
    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }
    pub fn membership(&self) -> &Membership {
        self.members.current()
    }
    /// The network this node belongs to.
    pub fn network(&self) -> &NetworkId {
        &self.network
    }
    /// Whether an operator removed this node (it serves nothing any more).
    pub fn is_removed(&self) -> bool {
        self.members.this_node_removed()
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Whether the node votes and serves reads (its join-time copy is done).
    pub fn is_ready(&self) -> bool {
        self.ready
    }
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }
    /// The node's current state of a key (`None`: free).
    pub fn key_state(&self, key: &Key) -> Option<&DurableKey> {
        self.ledger.get(key)
    }
    /// Every key this node stores or has reserved, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&Key, &DurableKey)> {
        self.ledger.keys()
    }
    /// Whether this node refuses proposal `p` (it refused it, fenced it, saw it aborted, or it
    /// is under its coordinator's watermark and not held here).
    pub fn refuses(&self, p: &ProposalId, key: &Key) -> bool {
        self.ledger.refused(p, key)
    }
    pub fn stats(&self) -> Stats {
        Stats {
            keys_stored: self.ledger.keys_stored(),
            reservations_open: self.ledger.reservation_count(),
            refusals: self.ledger.refusal_count(),
            proposals_in_flight: self.ops.len(),
            resolutions: self.deciders.len(),
            reads_waiting: self.reads.len(),
            relays: self.relays.len(),
            timers: self.timers.len(),
            held_messages: self.out.held_len(),
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Feeds one input. Then drain [`Node::poll_output`].
    pub fn handle(&mut self, now: Time, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Message { from, msg } => self.on_message(from, msg),
            Input::Client { call, cmd } => self.on_command(call, cmd),
            Input::Persisted { upto } => self.out.on_persisted(upto),
            Input::Timeout => {
                while let Some(timer) = self.timers.pop_due(self.now) {
                    self.on_timer(timer);
                }
            }
            Input::NodeDiscovered {
                cluster,
                node,
                network,
            } => self.on_discovered(cluster, node, network),
            Input::NodeRemoved { node, goodbye } => self.on_removed(node, goodbye),
            Input::Leave => self.on_leave(),
        }
        self.drain_inbox();
        if self.leaving {
            // Whatever settled the last open proposal (a Commit, an Abort, a vote, a clear
            // answer), check here once rather than on every path.
            self.check_leave_complete();
        }
        self.out.flush();
    }

    // ---------------------------------------------------------------- outputs

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.poll()
    }

    /// When [`Input::Timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    // ---------------------------------------------------------------- routing

    fn on_message(&mut self, from: NodeId, msg: Message) {
        if let Err(reason) = self.check_message(&msg) {
            self.out.note(Note::PeerInputRejected { from, reason });
            return;
        }
        self.tell_departed_sender(&from);
        match msg {
            Message::Request(req) => {
                if let Some(resp) = self.on_request(&from, req) {
                    self.out.send(from, Message::Response(resp));
                }
            }
            Message::Response(resp) => self.on_response(&from, resp),
            Message::Relay {
                cluster,
                targets,
                request,
            } => self.on_relay(from, cluster, targets, request),
            Message::RelayReply { cluster, responses } => {
                self.on_relay_reply(from, cluster, responses)
            }
            Message::SyncRequest { after } => self.on_sync_request(from, after),
            Message::SyncPage { entries, done } => self.on_sync_page(from, entries, done),
            Message::SyncRefused { reason } => self.on_sync_refused(from, reason),
            Message::LeaveCheck => self.on_leave_check(from),
            Message::LeaveClear { clear } => self.on_leave_clear(from, clear),
            Message::Removed { node } => self.on_removed_message(from, node),
            Message::RemoveCheck { node } => self.on_remove_check(from, node),
            Message::RemoveCheckReply { node, open } => {
                self.on_remove_check_reply(from, node, open)
            }
            Message::View { members, departed } => self.on_view(from, members, departed),
            Message::Probe { sent } => self.on_probe(from, sent),
            Message::ProbeReply { sent } => self.on_probe_reply(from, sent),
        }
    }

    /// A response goes to the fan-out this node relays as a representative, if it relays one
    /// for it, and to the vote collection or verify read it answers.
    fn on_response(&mut self, from: &NodeId, resp: Response) {
        match resp {
            Response::Vote { p, key, node, vote } => {
                if *from != node && !self.members.contains(from) {
                    return;
                }
                let relay_key = RelayKey::Votes(p.clone());
                if self.relays.contains_key(&relay_key) {
                    // Anything but a grant decides: it goes back at once.
                    let decisive = !matches!(vote, Vote::Granted);
                    let resp = Response::Vote {
                        p: p.clone(),
                        key,
                        node: node.clone(),
                        vote: vote.clone(),
                    };
                    self.relay_collect(&relay_key, &node, resp, decisive);
                }
                self.on_vote_response(p, node, vote);
            }
            Response::Read {
                key,
                tag,
                node,
                state,
            } => {
                let relay_key = RelayKey::Read(tag);
                if self.relays.contains_key(&relay_key) {
                    let resp = Response::Read {
                        key,
                        tag,
                        node: node.clone(),
                        state,
                    };
                    return self.relay_collect(&relay_key, &node, resp, false);
                }
                self.on_verify_answer(key, tag, node, state);
            }
        }
    }

    fn on_command(&mut self, call: CallId, cmd: Command) {
        if self.members.this_node_removed() {
            let removed = NotReady::Removed;
            let reply = match cmd {
                Command::Put { .. } => Reply::Put(PutOutcome::NotReady(removed)),
                Command::Get { .. } | Command::Verify { .. } => {
                    Reply::Get(GetOutcome::NotReady(removed))
                }
                Command::RemoveNode { .. } => Reply::Remove(RemoveOutcome::Unknown),
            };
            return self.out.reply(call, reply);
        }
        match cmd {
            Command::Put {
                key,
                value,
                request,
            } => self.on_put(call, key, value, request),
            Command::Get { key } => self.on_get(call, key),
            Command::Verify { key } => self.on_verify(call, key),
            Command::RemoveNode { node, force } => self.on_remove_command(call, node, force),
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Vote(p) => self.on_vote_timeout(&p),
            Timer::Representative(p, cluster) => self.on_representative_timeout(p, cluster),
            Timer::Resolve(p) => self.on_resolve_timer(&p),
            Timer::Lease(p) => self.on_lease_timeout(p),
            Timer::Relay(key) => self.relay_flush(&key),
            Timer::ReadWait(call) => self.on_read_wait(call),
            Timer::ReadDeadline(call) => self.on_read_deadline(call),
            Timer::Verify(tag) => self.finish_verify(tag),
            Timer::BusyRetry(op) => self.on_busy_retry(op),
            Timer::PutDeadline(op) => self.on_put_deadline(op),
            Timer::LeaveCheck => self.send_leave_checks(),
            Timer::RemoveCheck => self.on_remove_check_timer(),
            Timer::Sync => self.on_sync_timer(),
        }
    }

    /// Handles the messages this node sent itself, as they are released.
    fn drain_inbox(&mut self) {
        while let Some(msg) = self.out.next_local() {
            let me = self.id.clone();
            self.on_message(me, msg);
        }
    }

    // ---------------------------------------------------------------- helpers

    /// A uniformly drawn wait of at most `max`, from the node's seeded generator.
    fn jitter(&mut self, max: Duration) -> Duration {
        let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.rng.random_range(0..=max_us))
    }

    #[inline(always)]
    fn bug_is(&self, check: InjectedBug) -> bool {
        bug_in(&self.config, check)
    }
}

/// `min` doubled `attempt` times (at most `doublings_max` times, below 32), never more than
/// `max`: the base of every backoff (Resolve rounds, Busy retries), before its jitter.
fn exponential(min: Duration, max: Duration, attempt: u32, doublings_max: u32) -> Duration {
    min.saturating_mul(1u32 << attempt.min(doublings_max))
        .min(max)
}

#[cfg(feature = "bug-injection")]
fn bug_in(config: &Config, check: InjectedBug) -> bool {
    config.bug == Some(check)
}

#[cfg(not(feature = "bug-injection"))]
#[inline(always)]
fn bug_in(_config: &Config, _check: InjectedBug) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_caps() {
        let ms = Duration::from_millis;
        let e = |attempt, doublings_max| exponential(ms(10), ms(200), attempt, doublings_max);
        assert_eq!(e(0, 16), ms(10));
        assert_eq!(e(3, 16), ms(80));
        assert_eq!(e(5, 16), ms(200), "capped at max");
        assert_eq!(e(3, 2), ms(40), "capped doublings");
        assert_eq!(e(u32::MAX, 16), ms(200), "no overflow");
    }
}
