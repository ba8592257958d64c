//! The protocol state machine of one node.

mod coordinator;
mod decider;
mod ledger;
mod members;
mod outbox;
mod requests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::api::{
    Command, GetOutcome, Input, Invalid, NotReady, Note, Output, PutOutcome, RemoveOutcome, Reply,
    Silence, VerifyReport,
};
use crate::config::{Config, ConfigError};
use crate::membership::Membership;
use crate::storage::{DurableKey, Recovered, RefusalWhy, RequestOutcome, WriteOp};
use crate::timers::{RelayKey, Timer, Timers};
use crate::types::{CallId, ClusterId, Key, NetworkId, NodeId, ProposalId, RequestId, Time, Value};
use crate::wire::{DenyReason, Message, ReadState, Request, Response, SyncRefusal, Vote};

use coordinator::ProposalIds;
use decider::{Decider, Phase, Rule};
use ledger::Ledger;
use outbox::Outbox;
use requests::{RequestTable, fingerprint};

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
    membership: Arc<Membership>,
    departed: BTreeSet<NodeId>,
    /// An operator removed this node: it serves nothing any more.
    removed: bool,
    /// No grant before this: the membership shrank by a removal, and the removed node may
    /// still answer reads until its read lease runs out.
    settled_at: Time,
    /// This node answers "unknown key" only before this (a member counted it recently).
    read_lease_until: Time,
    /// When the last round of membership probes left.
    probe_sent: Option<Time>,
    /// Reads of free keys waiting for the read lease to be renewed.
    lease_reads: BTreeMap<CallId, Key>,
    /// When this node last sent its view to each peer (views are rate-limited).
    view_sent: BTreeMap<NodeId, Time>,
    rng: ChaCha8Rng,
    now: Time,

    ledger: Ledger,
    proposal_ids: ProposalIds,

    ready: bool,
    sync: Option<SyncState>,
    leaving: bool,
    leave_complete: bool,
    /// While leaving: the members that hold no reservation naming this node.
    leave_clear: BTreeSet<NodeId>,
    /// An operator's removal being checked with every member.
    removal: Option<PendingRemoval>,

    requests: RequestTable,

    ops: BTreeMap<u64, PutOp>,
    next_op: u64,
    deciders: BTreeMap<ProposalId, Decider>,
    reads: BTreeMap<CallId, ReadWait>,
    readers: BTreeMap<ProposalId, BTreeSet<CallId>>,
    verifies: BTreeMap<u64, Verify>,
    relays: BTreeMap<RelayKey, Relay>,
    next_tag: u64,

    timers: Timers,
    out: Outbox,
}

/// A client PUT this node coordinates, across its Busy retries.
struct PutOp {
    key: Key,
    value: Value,
    request: Option<RequestId>,
    calls: Vec<CallId>,
    current: Option<ProposalId>,
    retries_left: u32,
    attempt: u32,
}

struct ReadWait {
    key: Key,
    p: ProposalId,
}

struct Verify {
    call: CallId,
    key: Key,
    participants: Arc<Membership>,
    answers: BTreeMap<NodeId, ReadState>,
}

struct Relay {
    origins: BTreeSet<NodeId>,
    waiting: BTreeSet<NodeId>,
    responses: Vec<Response>,
    /// For a verify read: the origin's tag, to put back on the answers.
    origin_tag: Option<u64>,
}

struct SyncState {
    after: Option<Key>,
    source_index: usize,
    awaiting: Option<NodeId>,
    copied: bool,
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
}

impl Node {
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
        let membership =
            Arc::new(Membership::from_pairs(recorded).with_node(cluster.clone(), id.clone()));
        // A removal recorded before the restart may be moments old: settle as after one.
        let settled_at = if departed.is_empty() {
            now
        } else {
            now + config.read_lease.saturating_mul(2)
        };
        let removed = departed.contains(&id);
        let proposal_ids = ProposalIds::new(counter_ceiling, config.counter_block);
        let requests = RequestTable::new(requests, now, config.requests_max, config.request_ttl);
        let ledger = Ledger::new(keys, refusals, watermarks, config.refusals_max, ready);
        let out = Outbox::new(id.clone(), bug_in(&config, InjectedBug::VoteBeforeDurable));
        let mut node = Node {
            config,
            id,
            cluster,
            network,
            membership,
            departed,
            removed,
            settled_at,
            read_lease_until: Time::ZERO,
            probe_sent: None,
            lease_reads: BTreeMap::new(),
            view_sent: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            ledger,
            proposal_ids,
            ready,
            sync: None,
            leaving: false,
            leave_complete: false,
            leave_clear: BTreeSet::new(),
            removal: None,
            requests,
            ops: BTreeMap::new(),
            next_op: 0,
            deciders: BTreeMap::new(),
            reads: BTreeMap::new(),
            readers: BTreeMap::new(),
            verifies: BTreeMap::new(),
            relays: BTreeMap::new(),
            next_tag: 0,
            timers: Timers::default(),
            out,
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
            node.sync = Some(SyncState {
                after: None,
                source_index: 0,
                awaiting: None,
                copied: false,
            });
            node.timers.set(Timer::Sync, now);
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
        &self.membership
    }
    /// The network this node belongs to.
    pub fn network(&self) -> &NetworkId {
        &self.network
    }
    /// Whether an operator removed this node (it serves nothing any more).
    pub fn is_removed(&self) -> bool {
        self.removed
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

    // ================================================================ messages

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
                for resp in responses {
                    if let Response::Vote { p, .. } = &resp
                        && let Some(d) = self.deciders.get_mut(p)
                    {
                        if let Some(rep) = d.reps.get_mut(&cluster) {
                            rep.answered = true;
                        }
                        let p = p.clone();
                        self.timers
                            .cancel(&Timer::Representative(p, cluster.clone()));
                    }
                    self.on_response(&from, resp);
                }
            }
            Message::SyncRequest { after } => self.on_sync_request(from, after),
            Message::SyncPage { entries, done } => self.on_sync_page(from, entries, done),
            Message::SyncRefused { reason: _ } => self.on_sync_refused(from),
            Message::LeaveCheck => self.on_leave_check(from),
            Message::Removed { node } => {
                if !self.membership.contains(&from) || from == self.id {
                } else if node == self.id {
                    self.on_self_removed(from);
                } else {
                    self.on_removed(node, false);
                }
            }
            Message::RemoveCheck { node } => self.on_remove_check(from, node),
            Message::View { members, departed } => self.on_view(from, members, departed),
            Message::Probe { sent } => self.on_probe(from, sent),
            Message::ProbeReply { sent } => self.on_probe_reply(from, sent),
            Message::RemoveCheckReply { node, open } => {
                self.on_remove_check_reply(from, node, open)
            }
            Message::LeaveClear { clear } => {
                if clear && self.leaving && self.membership.contains(&from) {
                    self.leave_clear.insert(from);
                    self.check_leave_complete();
                }
            }
        }
    }

    /// Bounds and shapes a peer cannot get past. Deeper checks happen where a message is used.
    fn check_message(&self, msg: &Message) -> Result<(), String> {
        let nodes_max = self.config.cluster_nodes_max;
        match msg {
            Message::Request(req) => self.check_request(req),
            Message::Response(resp) => self.check_response(resp),
            Message::Relay {
                targets, request, ..
            } => {
                if targets.len() > nodes_max {
                    return Err(format!(
                        "relay to {} targets, limit {nodes_max}",
                        targets.len()
                    ));
                }
                self.check_request(request)
            }
            Message::RelayReply { responses, .. } => {
                if responses.len() > nodes_max {
                    return Err(format!("relay reply with {} responses", responses.len()));
                }
                responses.iter().try_for_each(|r| self.check_response(r))
            }
            Message::SyncRequest { after } => after.as_ref().map_or(Ok(()), |k| self.check_key(k)),
            Message::SyncPage { entries, .. } => {
                if entries.len() > self.config.sync_page_keys {
                    return Err(format!("sync page of {} keys", entries.len()));
                }
                for (key, state) in entries {
                    self.check_key(key)?;
                    self.check_value(state.value())?;
                    if let DurableKey::Reserved { participants, .. } = state {
                        self.check_membership(participants)?;
                    }
                }
                Ok(())
            }
            Message::SyncRefused { .. }
            | Message::LeaveCheck
            | Message::LeaveClear { .. }
            | Message::Removed { .. }
            | Message::RemoveCheck { .. } => Ok(()),
            Message::RemoveCheckReply { open, .. } => {
                if open.len() > OPEN_LISTED_MAX {
                    return Err(format!("remove check reply lists {} proposals", open.len()));
                }
                Ok(())
            }
            Message::View { members, departed } => {
                if departed.len() > self.departed_listed_max() {
                    return Err(format!("view lists {} departed nodes", departed.len()));
                }
                self.check_membership(members)
            }
            Message::Probe { .. } | Message::ProbeReply { .. } => Ok(()),
        }
    }

    fn check_request(&self, req: &Request) -> Result<(), String> {
        match req {
            Request::Reserve { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Request::Status { key, .. }
            | Request::Commit { key, .. }
            | Request::Abort { key, .. }
            | Request::Read { key, .. } => self.check_key(key),
        }
    }

    fn check_response(&self, resp: &Response) -> Result<(), String> {
        match resp {
            Response::Vote { key, vote, .. } => {
                self.check_key(key)?;
                match vote {
                    Vote::Denied {
                        stored: Some(v), ..
                    } => self.check_value(v),
                    _ => Ok(()),
                }
            }
            Response::Read { key, state, .. } => {
                self.check_key(key)?;
                match state {
                    ReadState::Stored(v) => self.check_value(v),
                    _ => Ok(()),
                }
            }
        }
    }

    fn check_key(&self, key: &Key) -> Result<(), String> {
        validate_key(&self.config, key).map_err(|e| e.to_string())
    }
    fn check_value(&self, value: &Value) -> Result<(), String> {
        if value.len() > self.config.value_bytes_max {
            return Err(Invalid::ValueTooLong {
                bytes: value.len(),
                max: self.config.value_bytes_max,
            }
            .to_string());
        }
        Ok(())
    }
    fn check_membership(&self, m: &Membership) -> Result<(), String> {
        if m.cluster_count() > self.config.clusters_max
            || m.clusters()
                .any(|(_, n)| n.len() > self.config.cluster_nodes_max)
        {
            return Err("membership over the configured limits".into());
        }
        Ok(())
    }

    // ---------------------------------------------------------------- as a participant

    fn on_request(&mut self, from: &NodeId, req: Request) -> Option<Response> {
        let authorised = *from == self.id
            || self.membership.contains(from)
            || match &req {
                Request::Commit { p, key } | Request::Abort { p, key } => self
                    .ledger
                    .reservation(p, key)
                    .is_some_and(|participants| participants.contains(from)),
                _ => false,
            };
        if !authorised {
            self.out.note(Note::PeerInputRejected {
                from: from.clone(),
                reason: "request from a node outside the membership".into(),
            });
            return None;
        }
        match req {
            Request::Reserve {
                p,
                key,
                value,
                digest,
            } => {
                if let Some(other) = self.ledger.reserved_key(&p)
                    && *other != key
                {
                    // No honest coordinator reuses a proposal for another key.
                    let reason = format!("Reserve({p}) of {key:?}, which reserves {other:?} here");
                    self.out.note(Note::PeerInputRejected {
                        from: from.clone(),
                        reason,
                    });
                    return None;
                }
                let vote = self.on_reserve(&p, &key, value, digest);
                Some(Response::Vote {
                    p,
                    key,
                    node: self.id.clone(),
                    vote,
                })
            }
            Request::Status { p, key } => {
                let vote = self.on_status(&p, &key);
                Some(Response::Vote {
                    p,
                    key,
                    node: self.id.clone(),
                    vote,
                })
            }
            Request::Commit { p, key } => {
                self.on_commit(from, &p, &key);
                None
            }
            Request::Abort { p, key } => {
                self.on_abort(&p, &key);
                None
            }
            Request::Read { key, tag } => {
                let state = if !self.ready || self.removed {
                    ReadState::NotReady
                } else {
                    match self.ledger.get(&key) {
                        Some(DurableKey::Stored { value, .. }) => ReadState::Stored(value.clone()),
                        Some(DurableKey::Reserved { .. }) => ReadState::Reserved,
                        None => ReadState::Free,
                    }
                };
                Some(Response::Read {
                    key,
                    tag,
                    node: self.id.clone(),
                    state,
                })
            }
        }
    }

    fn on_reserve(
        &mut self,
        p: &ProposalId,
        key: &Key,
        value: Value,
        digest: crate::membership::Digest,
    ) -> Vote {
        if self.ledger.refused(p, key) {
            return self.denied(DenyReason::Fenced, p, key);
        }
        match self.ledger.get(key) {
            Some(DurableKey::Stored { p: q, .. }) if q == p => return Vote::Committed,
            Some(DurableKey::Reserved { p: q, .. }) if q == p => return Vote::Granted,
            Some(DurableKey::Stored { .. }) => return self.refuse(p, key, DenyReason::Exists),
            Some(DurableKey::Reserved { .. }) if !self.bug_is(InjectedBug::GrantWhenReserved) => {
                return self.refuse(p, key, DenyReason::Busy);
            }
            Some(DurableKey::Reserved { .. }) | None => {}
        }
        let changed = digest != self.membership.digest();
        if changed {
            // The coordinator's view or this node's lacks a discovery, a goodbye or a
            // removal: exchange views so that the next attempt finds them equal. Whatever
            // this node answers: a leaving node that missed a removal would otherwise wait
            // forever for the removed node's clearance, refusing every write meanwhile (found
            // by sim seed 9, `--joins 1 --leaves 1 --faults remove,crash,pause,isolate-node`).
            self.send_view(&p.coordinator.clone());
        }
        let reason = if self.removed {
            Some(DenyReason::Departed)
        } else if self.leaving {
            Some(DenyReason::Leaving)
        } else if !self.ready {
            Some(DenyReason::NotReady)
        } else if changed {
            Some(DenyReason::MembershipChanged)
        } else if self.now < self.settled_at {
            Some(DenyReason::Settling)
        } else if self.ledger.reservation_count() >= self.config.reservations_max {
            Some(DenyReason::Overloaded)
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.refuse(p, key, reason);
        }
        let participants = self.membership.clone();
        if let Some(old) = self
            .ledger
            .grant(p, key, value, participants, &mut self.out)
        {
            // Only reachable with the GrantWhenReserved bug: the old reservation is overwritten.
            self.timers.cancel(&Timer::Lease(old));
        }
        self.timers
            .set(Timer::Lease(p.clone()), self.now + self.config.lease);
        Vote::Granted
    }

    fn on_status(&mut self, p: &ProposalId, key: &Key) -> Vote {
        if self.ledger.refused(p, key) {
            return self.denied(DenyReason::Fenced, p, key);
        }
        match self.ledger.get(key) {
            Some(DurableKey::Stored { p: q, .. }) if q == p => Vote::Committed,
            Some(DurableKey::Reserved { p: q, .. }) if q == p => Vote::Granted,
            _ if self.bug_is(InjectedBug::StatusWithoutFence) => Vote::Denied {
                reason: DenyReason::Fenced,
                stored: None,
            },
            _ => {
                self.ledger
                    .record_refusal(p, RefusalWhy::Fenced, &mut self.out);
                self.denied(DenyReason::Fenced, p, key)
            }
        }
    }

    fn on_commit(&mut self, from: &NodeId, p: &ProposalId, key: &Key) {
        match self.ledger.get(key) {
            Some(DurableKey::Reserved { p: q, .. }) if q == p => {
                self.ledger.commit(p, key, &mut self.out);
                self.timers.cancel(&Timer::Lease(p.clone()));
                self.out.note(Note::Committed {
                    p: p.clone(),
                    key: key.clone(),
                });
                self.learned(p, true);
                self.key_changed(p);
            }
            Some(DurableKey::Stored { p: q, .. }) if q == p => {}
            other => {
                let held = match other {
                    None => "nothing".to_string(),
                    Some(DurableKey::Reserved { p: q, .. }) => format!("a reservation of {q}"),
                    Some(DurableKey::Stored { p: q, .. }) => format!("a value stored by {q}"),
                };
                let refused = if self.ledger.refusal(p).is_some() {
                    " and a refusal of it"
                } else {
                    ""
                };
                self.out.note(Note::Violation {
                    reason: format!(
                        "Commit({p}) for key {key:?} from {from} reached {} holding {held}{refused}",
                        self.id
                    ),
                });
            }
        }
    }

    fn on_abort(&mut self, p: &ProposalId, key: &Key) {
        match self.ledger.get(key) {
            Some(DurableKey::Reserved { p: q, .. }) if q == p => {
                self.ledger.abort(p, key, &mut self.out);
                self.timers.cancel(&Timer::Lease(p.clone()));
                if !self.bug_is(InjectedBug::ForgetFenceOnAbort) {
                    self.ledger
                        .record_refusal(p, RefusalWhy::Aborted, &mut self.out);
                }
                self.learned(p, false);
                self.key_changed(p);
            }
            Some(DurableKey::Stored { p: q, .. }) if q == p => {
                self.out.note(Note::Violation {
                    reason: format!("Abort({p}) reached {} which stores {key:?} for it", self.id),
                });
            }
            _ => {
                if self.ledger.refusal(p).is_none() && !self.bug_is(InjectedBug::ForgetFenceOnAbort)
                {
                    self.ledger
                        .record_refusal(p, RefusalWhy::Aborted, &mut self.out);
                }
                self.learned(p, false);
            }
        }
    }

    fn refuse(&mut self, p: &ProposalId, key: &Key, reason: DenyReason) -> Vote {
        self.ledger
            .record_refusal(p, RefusalWhy::Denied(reason), &mut self.out);
        self.denied(reason, p, key)
    }

    fn denied(&self, reason: DenyReason, p: &ProposalId, key: &Key) -> Vote {
        let reason = match (reason, self.ledger.refusal(p)) {
            (DenyReason::Fenced, Some(RefusalWhy::Aborted)) => DenyReason::Aborted,
            (DenyReason::Fenced, Some(RefusalWhy::Denied(r))) => r,
            (r, _) => r,
        };
        let stored = match self.ledger.get(key) {
            Some(DurableKey::Stored { p: q, value }) if q != p => Some(value.clone()),
            _ => None,
        };
        Vote::Denied { reason, stored }
    }

    // ---------------------------------------------------------------- votes and decisions

    fn on_response(&mut self, from: &NodeId, resp: Response) {
        match resp {
            Response::Vote { p, key, node, vote } => {
                if *from != node && !self.membership.contains(from) {
                    return;
                }
                let relay_key = RelayKey::Votes(p.clone());
                if self.relays.contains_key(&relay_key) {
                    let decisive = !matches!(vote, Vote::Granted);
                    let resp = Response::Vote {
                        p: p.clone(),
                        key,
                        node: node.clone(),
                        vote: vote.clone(),
                    };
                    self.relay_collect(&relay_key, &node, resp, decisive);
                }
                // A participant that refuses because an operator removed it says the truth (it
                // believes so only once a member that recorded the removal told it): take the
                // removal here too. Otherwise, when the remover's messages were lost and the
                // remover left, the removed node refuses every proposal forever and nobody
                // else learns why (found by sim seed 357, `--joins 2 --leaves 1`).
                if let Vote::Denied {
                    reason: DenyReason::Departed,
                    ..
                } = vote
                    && node != self.id
                    && self.membership.contains(&node)
                {
                    self.on_removed(node.clone(), false);
                }
                if let Vote::Denied {
                    reason: DenyReason::MembershipChanged,
                    ..
                } = vote
                    && self.deciders.contains_key(&p)
                {
                    self.send_view(&node);
                }
                self.on_vote(&p, node, vote);
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
                    self.relay_collect(&relay_key, &node, resp, false);
                    return;
                }
                if let Some(v) = self.verifies.get_mut(&tag)
                    && v.key == key
                    && v.participants.contains(&node)
                {
                    v.answers.insert(node, state);
                    if v.answers.len() == v.participants.len() {
                        self.finish_verify(tag);
                    }
                }
            }
        }
    }

    fn on_vote(&mut self, p: &ProposalId, node: NodeId, vote: Vote) {
        let Some(d) = self.deciders.get_mut(p) else {
            return;
        };
        if !d.participants.contains(&node) {
            return;
        }
        if let Phase::Confirming { committed, .. } = d.phase
            && !decider::reflects(&vote, committed)
        {
            // Only an answer that reflects the decision confirms it; anything else (a Granted
            // from a node the decision has not reached yet) is asked again next round.
            return;
        }
        d.votes.insert(node, vote);
        self.evaluate(p);
    }

    /// Applies the decision rule to what `p`'s decider has heard.
    fn evaluate(&mut self, p: &ProposalId) {
        let Some(d) = self.deciders.get(p) else {
            return;
        };
        if let Phase::Confirming { committed, .. } = d.phase {
            if decider::confirmed(&d.participants, &self.departed, &d.votes, committed) {
                self.drop_decider(p);
                self.check_leave_complete();
            }
            return;
        }
        let rule = if self.bug_is(InjectedBug::CommitOnPartialVote) {
            Rule::AllButOne
        } else {
            Rule::EveryParticipant
        };
        let decision = decider::decision(&d.participants, &self.departed, &d.votes, rule);
        if let Some(committed) = decision {
            self.decide(p, committed);
        }
    }

    /// `p` is decided here: tell every participant, answer whoever waits.
    fn decide(&mut self, p: &ProposalId, committed: bool) {
        let Some(d) = self.deciders.get(p) else {
            return;
        };
        let key = d.key.clone();
        let participants = d.participants.clone();
        self.out.note(Note::Decided {
            p: p.clone(),
            key: key.clone(),
            committed,
        });
        self.broadcast_decision(p, &key, &participants, committed);
        self.finish_decider(p, committed);
    }

    fn broadcast_decision(
        &mut self,
        p: &ProposalId,
        key: &Key,
        participants: &Arc<Membership>,
        committed: bool,
    ) {
        let request = if committed {
            Request::Commit {
                p: p.clone(),
                key: key.clone(),
            }
        } else {
            Request::Abort {
                p: p.clone(),
                key: key.clone(),
            }
        };
        self.send_to_participants(p, participants, &request, None);
        if !participants.contains(&self.id) && self.ledger.holds(p, key) {
            // A copied reservation (joining node): apply the outcome here too.
            self.out.send(self.id.clone(), Message::Request(request));
        }
    }

    /// Ends the vote collection of `p` with an outcome learned or decided here.
    fn finish_decider(&mut self, p: &ProposalId, committed: bool) {
        let Some(d) = self.deciders.get_mut(p) else {
            return;
        };
        let op = d.op.take();
        if d.confirm {
            d.phase = Phase::Confirming {
                committed,
                attempt: 0,
            };
            d.votes.keep_reflecting(committed);
            let until = self.now + self.config.resolve_backoff_min;
            self.timers.set(Timer::Resolve(p.clone()), until);
        }
        let denial = self.deciders[p].votes.stored_elsewhere();
        if !self.deciders[p].confirm {
            self.drop_decider(p);
        }
        if let Some(op) = op {
            self.finish_attempt(op, committed, denial);
        }
    }

    fn drop_decider(&mut self, p: &ProposalId) {
        let Some(d) = self.deciders.remove(p) else {
            return;
        };
        self.timers.cancel(&Timer::Vote(p.clone()));
        self.timers.cancel(&Timer::Resolve(p.clone()));
        for c in d.reps.keys() {
            self.timers
                .cancel(&Timer::Representative(p.clone(), c.clone()));
        }
    }

    /// An outcome of `p` reached this node as a Commit or an Abort.
    fn learned(&mut self, p: &ProposalId, committed: bool) {
        if let Some(d) = self.deciders.get(p) {
            if matches!(d.phase, Phase::Confirming { .. }) {
                return;
            }
            self.finish_decider(p, committed);
        }
    }

    /// Sends `request` to every participant of `p`: directly inside this node's cluster,
    /// through one representative elsewhere. `only` narrows it to nodes that lack a vote.
    fn send_to_participants(
        &mut self,
        p: &ProposalId,
        participants: &Arc<Membership>,
        request: &Request,
        only: Option<&BTreeSet<NodeId>>,
    ) {
        let wanted = |n: &NodeId| only.is_none_or(|voted| !voted.contains(n));
        for (cluster, nodes) in participants.clusters() {
            let targets: Vec<NodeId> = nodes
                .iter()
                .filter(|n| wanted(n) && !self.departed.contains(*n))
                .cloned()
                .collect();
            if targets.is_empty() {
                continue;
            }
            if *cluster == self.cluster {
                for n in targets {
                    self.out.send(n, Message::Request(request.clone()));
                }
            } else {
                let index = self
                    .deciders
                    .get(p)
                    .and_then(|d| d.reps.get(cluster))
                    .map_or(0, |r| r.index);
                let rep = pick_representative(nodes, &self.departed, index, p);
                let Some(rep) = rep else { continue };
                self.out.send(
                    rep,
                    Message::Relay {
                        cluster: cluster.clone(),
                        targets,
                        request: request.clone(),
                    },
                );
            }
        }
    }

    /// Starts (or joins) the resolution of `p`. Returns false if there is no room for it.
    fn resolve(&mut self, p: &ProposalId, key: &Key, participants: Arc<Membership>) -> bool {
        if let Some(d) = self.deciders.get_mut(p) {
            if d.phase == Phase::Reserving {
                d.phase = Phase::Resolving { attempt: 0 };
                self.timers.cancel(&Timer::Vote(p.clone()));
                self.resolve_round(p);
            }
            return true;
        }
        if self.deciders.len() >= self.config.resolutions_max + self.ops.len() {
            return false;
        }
        let phase = Phase::Resolving { attempt: 0 };
        let d = Decider::new(
            key.clone(),
            participants,
            &self.cluster,
            phase,
            None,
            self.leaving,
        );
        self.deciders.insert(p.clone(), d);
        self.resolve_round(p);
        true
    }

    /// One round of Resolve: ask Status of every participant without a vote, and schedule
    /// the next round.
    fn resolve_round(&mut self, p: &ProposalId) {
        let Some(d) = self.deciders.get_mut(p) else {
            return;
        };
        let (attempt, confirming) = match &mut d.phase {
            Phase::Resolving { attempt } => (*attempt, None),
            Phase::Confirming { attempt, committed } => (*attempt, Some(*committed)),
            Phase::Reserving => return,
        };
        for rep in d.reps.values_mut() {
            rep.answered = false;
        }
        let key = d.key.clone();
        let participants = d.participants.clone();
        let voted: BTreeSet<NodeId> = d.votes.voters().cloned().collect();
        let clusters: Vec<ClusterId> = d.reps.keys().cloned().collect();
        if let Some(committed) = confirming {
            self.broadcast_decision(p, &key, &participants, committed);
        }
        let status = Request::Status { p: p.clone(), key };
        self.send_to_participants(p, &participants, &status, Some(&voted));
        for c in clusters {
            self.timers.set(
                Timer::Representative(p.clone(), c),
                self.now + self.config.representative_timeout,
            );
        }
        let backoff = self.backoff(attempt);
        self.timers
            .set(Timer::Resolve(p.clone()), self.now + backoff);
    }

    /// The wait before round `attempt + 1` of a resolution: exponential, plus up to half
    /// again of jitter, so that concurrent resolvers drift apart.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let (min, max) = (
            self.config.resolve_backoff_min,
            self.config.resolve_backoff_max,
        );
        let base = exponential(min, max, attempt, 16);
        base + self.jitter(base / 2)
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.rng.random_range(0..=max_us))
    }

    fn silence(&self, p: &ProposalId) -> Silence {
        self.deciders
            .get(p)
            .map_or_else(Silence::default, Decider::silence)
    }

    // ---------------------------------------------------------------- as a representative

    fn on_relay(
        &mut self,
        origin: NodeId,
        cluster: ClusterId,
        targets: Vec<NodeId>,
        request: Request,
    ) {
        let refusal = if cluster != self.cluster {
            Some(format!(
                "relay for cluster {cluster} reached {} of {}",
                self.id, self.cluster
            ))
        } else if !self.membership.contains(&origin) {
            Some("relay from a node outside the membership".to_string())
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.out.note(Note::PeerInputRejected {
                from: origin,
                reason,
            });
        }
        let targets: Vec<NodeId> = targets
            .into_iter()
            .filter(|n| self.membership.cluster_of(n) == Some(&self.cluster))
            .collect();
        let (relay_key, fanned) = match &request {
            Request::Commit { .. } | Request::Abort { .. } => {
                for n in targets {
                    self.out.send(n, Message::Request(request.clone()));
                }
                return;
            }
            Request::Reserve { p, .. } | Request::Status { p, .. } => {
                (RelayKey::Votes(p.clone()), request.clone())
            }
            Request::Read { key, tag } => {
                let local = self.next_tag;
                self.next_tag += 1;
                let fanned = Request::Read {
                    key: key.clone(),
                    tag: local,
                };
                let key = RelayKey::Read(local);
                if self.relays.len() >= self.config.relays_max {
                    return;
                }
                self.relays.insert(
                    key.clone(),
                    Relay {
                        origins: BTreeSet::from([origin.clone()]),
                        waiting: BTreeSet::new(),
                        responses: Vec::new(),
                        origin_tag: Some(*tag),
                    },
                );
                (key, fanned)
            }
        };
        if !self.relays.contains_key(&relay_key) {
            if self.relays.len() >= self.config.relays_max {
                return;
            }
            self.relays.insert(
                relay_key.clone(),
                Relay {
                    origins: BTreeSet::new(),
                    waiting: BTreeSet::new(),
                    responses: Vec::new(),
                    origin_tag: None,
                },
            );
        }
        let relay = self.relays.get_mut(&relay_key).expect("inserted above");
        relay.origins.insert(origin);
        relay.waiting.extend(targets.iter().cloned());
        self.timers.set(
            Timer::Relay(relay_key),
            self.now + self.config.relay_timeout,
        );
        for n in targets {
            self.out.send(n, Message::Request(fanned.clone()));
        }
    }

    fn relay_collect(
        &mut self,
        relay_key: &RelayKey,
        node: &NodeId,
        resp: Response,
        decisive: bool,
    ) {
        let Some(relay) = self.relays.get_mut(relay_key) else {
            return;
        };
        if !relay.waiting.remove(node) {
            return;
        }
        let resp = match (resp, relay.origin_tag) {
            (
                Response::Read {
                    key, node, state, ..
                },
                Some(tag),
            ) => Response::Read {
                key,
                tag,
                node,
                state,
            },
            (resp, _) => resp,
        };
        // One answer per node: a relay that many resolvers join is re-armed by each of them,
        // and a node answering every round must not grow the reply past its cluster's size
        // (receivers refuse replies longer than `cluster_nodes_max`; found by seed 2191).
        let slot = relay.responses.iter_mut().find(|r| match r {
            Response::Vote { node: n, .. } | Response::Read { node: n, .. } => n == node,
        });
        match slot {
            Some(slot) => *slot = resp,
            None => relay.responses.push(resp),
        }
        if decisive || relay.waiting.is_empty() {
            self.relay_flush(relay_key);
        }
    }

    fn relay_flush(&mut self, relay_key: &RelayKey) {
        self.timers.cancel(&Timer::Relay(relay_key.clone()));
        let Some(relay) = self.relays.remove(relay_key) else {
            return;
        };
        if relay.responses.is_empty() {
            return;
        }
        for origin in relay.origins {
            self.out.send(
                origin,
                Message::RelayReply {
                    cluster: self.cluster.clone(),
                    responses: relay.responses.clone(),
                },
            );
        }
    }

    // ================================================================ clients

    fn on_command(&mut self, call: CallId, cmd: Command) {
        if self.removed {
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

    fn on_put(&mut self, call: CallId, key: Key, value: Value, request: Option<RequestId>) {
        if let Err(invalid) = validate_put(&self.config, &key, &value, request.as_ref()) {
            return self
                .out
                .reply(call, Reply::Put(PutOutcome::Invalid(invalid)));
        }
        if let Some(id) = &request {
            self.expire_requests();
            if let Some(record) = self.requests.get(id) {
                if record.key != key || record.value_fingerprint != fingerprint(&value) {
                    return self.out.reply(
                        call,
                        Reply::Put(PutOutcome::Invalid(Invalid::RequestIdReused)),
                    );
                }
                if let Some(outcome) = record.outcome.clone() {
                    return self.out.reply(call, Reply::Put(outcome_reply(outcome)));
                }
                if let Some((_, op)) = self
                    .ops
                    .iter_mut()
                    .find(|(_, op)| op.request.as_ref() == Some(id))
                {
                    op.calls.push(call);
                    return;
                }
                let p = record.proposal.clone();
                return self.recover_request(call, id.clone(), key, value, p);
            }
        }
        if let Some(refusal) = self.write_refusal() {
            return self.out.reply(call, Reply::Put(refusal));
        }
        if let Some(DurableKey::Stored { value: stored, .. }) = self.ledger.get(&key) {
            // Committed here, so committed: no need to ask anyone.
            let stored = stored.clone();
            if let Some(id) = request {
                let p = self.next_proposal();
                self.remember_request(
                    id,
                    &key,
                    &value,
                    p,
                    Some(RequestOutcome::Exists(stored.clone())),
                );
            }
            return self
                .out
                .reply(call, Reply::Put(PutOutcome::Exists { value: stored }));
        }
        let op_id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            op_id,
            PutOp {
                key,
                value,
                request,
                calls: vec![call],
                current: None,
                retries_left: self.config.busy_retries_max,
                attempt: 0,
            },
        );
        self.timers.set(
            Timer::PutDeadline(op_id),
            self.now + self.config.put_timeout,
        );
        self.start_attempt(op_id);
    }

    /// Why this node cannot start a write now, if it cannot.
    fn write_refusal(&self) -> Option<PutOutcome> {
        if !self.ready {
            return Some(PutOutcome::NotReady(NotReady::Joining));
        }
        if self.leaving {
            return Some(PutOutcome::NotReady(NotReady::Leaving));
        }
        let members = self.membership.nodes_of(&self.cluster).len();
        if members < self.config.cluster_size_min {
            return Some(PutOutcome::NotReady(NotReady::ClusterTooSmall {
                members,
                min: self.config.cluster_size_min,
            }));
        }
        if self.ops.len() >= self.config.proposals_max {
            return Some(PutOutcome::Overloaded);
        }
        None
    }

    /// Runs one proposal for a PUT: reserve everywhere, through representatives.
    fn start_attempt(&mut self, op_id: u64) {
        let p = self.next_proposal();
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.current = Some(p.clone());
        op.attempt += 1;
        let (key, value, request) = (op.key.clone(), op.value.clone(), op.request.clone());
        if let Some(id) = request {
            self.remember_request(id, &key, &value, p.clone(), None);
        }
        let participants = self.membership.clone();
        let d = Decider::new(
            key.clone(),
            participants.clone(),
            &self.cluster,
            Phase::Reserving,
            Some(op_id),
            false,
        );
        let clusters: Vec<ClusterId> = d.reps.keys().cloned().collect();
        self.deciders.insert(p.clone(), d);
        let reserve = Request::Reserve {
            p: p.clone(),
            key,
            value,
            digest: participants.digest(),
        };
        self.send_to_participants(&p, &participants, &reserve, None);
        self.timers
            .set(Timer::Vote(p.clone()), self.now + self.config.vote_timeout);
        for c in clusters {
            self.timers.set(
                Timer::Representative(p.clone(), c),
                self.now + self.config.representative_timeout,
            );
        }
    }

    /// One proposal of a PUT ended; answer the client or try again.
    fn finish_attempt(&mut self, op_id: u64, committed: bool, stored: Option<Value>) {
        let outcome = if committed {
            RequestOutcome::Stored
        } else if let Some(value) = stored {
            RequestOutcome::Exists(value)
        } else {
            let Some(op) = self.ops.get_mut(&op_id) else {
                return;
            };
            op.current = None;
            if op.retries_left > 0 {
                op.retries_left -= 1;
                let (min, max) = (self.config.busy_backoff_min, self.config.busy_backoff_max);
                let base = exponential(min, max, op.attempt, 10);
                // Full jitter: two coordinators that met on a key must not meet again.
                let delay = self.jitter(base);
                self.timers.set(Timer::BusyRetry(op_id), self.now + delay);
                return;
            }
            RequestOutcome::Busy
        };
        self.end_op(op_id, Some(outcome));
    }

    /// Answers every call of a PUT and forgets it. `None`: the outcome is not known (Unavailable).
    fn end_op(&mut self, op_id: u64, outcome: Option<RequestOutcome>) {
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        self.timers.cancel(&Timer::BusyRetry(op_id));
        self.timers.cancel(&Timer::PutDeadline(op_id));
        let reply = match &outcome {
            Some(o) => outcome_reply(o.clone()),
            None => {
                let silence = op
                    .current
                    .as_ref()
                    .map(|p| self.silence(p))
                    .unwrap_or_default();
                PutOutcome::Unavailable(silence)
            }
        };
        if let Some(p) = &op.current
            && let Some(d) = self.deciders.get_mut(p)
        {
            d.op = None;
        }
        if let (Some(id), Some(outcome)) = (&op.request, outcome) {
            self.requests.set_outcome(id, outcome, &mut self.out);
        }
        for call in op.calls {
            self.out.reply(call, Reply::Put(reply.clone()));
        }
    }

    /// A retried request id whose proposal is not running here (a restart, or an earlier
    /// Unavailable): answer from what this node knows of the proposal, resolving it if needed.
    fn recover_request(
        &mut self,
        call: CallId,
        id: RequestId,
        key: Key,
        value: Value,
        p: ProposalId,
    ) {
        let state = self.ledger.get(&key).cloned();
        let outcome = match &state {
            Some(DurableKey::Stored { p: q, .. }) if *q == p => Some(RequestOutcome::Stored),
            Some(DurableKey::Reserved { p: q, .. }) if *q == p => None,
            _ => {
                // Not held here, and this node is the proposal's coordinator and a participant:
                // fencing it here makes sure it never commits.
                if !self.ledger.refused(&p, &key) {
                    self.ledger
                        .record_refusal(&p, RefusalWhy::Fenced, &mut self.out);
                }
                Some(match &state {
                    Some(DurableKey::Stored { value, .. }) => RequestOutcome::Exists(value.clone()),
                    _ => RequestOutcome::Busy,
                })
            }
        };
        let op_id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            op_id,
            PutOp {
                key: key.clone(),
                value,
                request: Some(id),
                calls: vec![call],
                current: Some(p.clone()),
                retries_left: 0,
                attempt: 1,
            },
        );
        if let Some(outcome) = outcome {
            return self.end_op(op_id, Some(outcome));
        }
        let Some(DurableKey::Reserved { participants, .. }) = state else {
            return;
        };
        self.timers.set(
            Timer::PutDeadline(op_id),
            self.now + self.config.put_timeout,
        );
        if !self.resolve(&p, &key, participants) {
            return self.end_op(op_id, None);
        }
        if let Some(d) = self.deciders.get_mut(&p) {
            d.op = Some(op_id);
        }
    }

    fn next_proposal(&mut self) -> ProposalId {
        self.proposal_ids.next(&self.id, &mut self.out)
    }

    fn remember_request(
        &mut self,
        id: RequestId,
        key: &Key,
        value: &Value,
        p: ProposalId,
        outcome: Option<RequestOutcome>,
    ) {
        let ops = &self.ops;
        let running = |id: &RequestId| ops.values().any(|op| op.request.as_ref() == Some(id));
        self.requests
            .remember(id, key, value, p, outcome, self.now, running, &mut self.out);
    }

    fn expire_requests(&mut self) {
        let ops = &self.ops;
        let running = |id: &RequestId| ops.values().any(|op| op.request.as_ref() == Some(id));
        self.requests.expire(self.now, running, &mut self.out);
    }

    fn on_get(&mut self, call: CallId, key: Key) {
        if let Err(invalid) = validate_key(&self.config, &key) {
            return self
                .out
                .reply(call, Reply::Get(GetOutcome::Invalid(invalid)));
        }
        if !self.ready {
            return self
                .out
                .reply(call, Reply::Get(GetOutcome::NotReady(NotReady::Joining)));
        }
        self.read_now(call, key);
    }

    /// Answers a read from the key's state here: its value, "unknown" (under the read lease),
    /// or a wait for the outcome of the proposal that reserved it.
    fn read_now(&mut self, call: CallId, key: Key) {
        match self.ledger.get(&key) {
            Some(DurableKey::Stored { value, .. }) => {
                let value = value.clone();
                self.timers.cancel(&Timer::ReadDeadline(call));
                self.out.reply(call, Reply::Get(GetOutcome::Value(value)))
            }
            None => self.answer_free(call, key),
            Some(DurableKey::Reserved { .. })
                if self.bug_is(InjectedBug::ReadReservedAsUnknown) =>
            {
                self.out.reply(call, Reply::Get(GetOutcome::Unknown))
            }
            Some(DurableKey::Reserved { p, .. }) => {
                if self.reads.len() >= self.config.reads_waiting_max {
                    self.timers.cancel(&Timer::ReadDeadline(call));
                    return self.out.reply(call, Reply::Get(GetOutcome::Overloaded));
                }
                let p = p.clone();
                if self.timers.get(&Timer::ReadDeadline(call)).is_none() {
                    self.timers.set(
                        Timer::ReadDeadline(call),
                        self.now + self.config.read_timeout,
                    );
                }
                self.wait_read(call, key, p);
            }
        }
    }

    fn wait_read(&mut self, call: CallId, key: Key, p: ProposalId) {
        self.timers
            .set(Timer::ReadWait(call), self.now + self.config.read_wait);
        self.readers.entry(p.clone()).or_default().insert(call);
        self.reads.insert(call, ReadWait { key, p });
    }

    /// The key that `p` reserved here changed: answer or move the reads waiting on it.
    fn key_changed(&mut self, p: &ProposalId) {
        let Some(calls) = self.readers.remove(p) else {
            return;
        };
        for call in calls {
            let Some(read) = self.reads.remove(&call) else {
                continue;
            };
            self.timers.cancel(&Timer::ReadWait(call));
            match self.ledger.get(&read.key) {
                Some(DurableKey::Reserved { p: q, .. }) => {
                    let q = q.clone();
                    self.wait_read(call, read.key, q);
                }
                _ => self.read_now(call, read.key),
            }
        }
    }

    fn on_verify(&mut self, call: CallId, key: Key) {
        if let Err(invalid) = validate_key(&self.config, &key) {
            return self
                .out
                .reply(call, Reply::Get(GetOutcome::Invalid(invalid)));
        }
        if self.verifies.len() >= self.config.verifies_max {
            return self.out.reply(call, Reply::Get(GetOutcome::Overloaded));
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let participants = self.membership.clone();
        self.verifies.insert(
            tag,
            Verify {
                call,
                key: key.clone(),
                participants: participants.clone(),
                answers: BTreeMap::new(),
            },
        );
        self.timers
            .set(Timer::Verify(tag), self.now + self.config.verify_timeout);
        let request = Request::Read { key, tag };
        for (cluster, nodes) in participants.clusters() {
            if *cluster == self.cluster {
                for n in nodes {
                    self.out.send(n.clone(), Message::Request(request.clone()));
                }
            } else if let Some(rep) = pick_representative(
                nodes,
                &self.departed,
                0,
                &ProposalId {
                    coordinator: self.id.clone(),
                    counter: tag,
                },
            ) {
                let msg = Message::Relay {
                    cluster: cluster.clone(),
                    targets: nodes.to_vec(),
                    request: request.clone(),
                };
                self.out.send(rep, msg);
            }
        }
    }

    fn finish_verify(&mut self, tag: u64) {
        self.timers.cancel(&Timer::Verify(tag));
        let Some(v) = self.verifies.remove(&tag) else {
            return;
        };
        let silence = Silence::among(&v.participants, |n| v.answers.contains_key(n));
        let mut committed = v.answers.values().filter_map(|s| match s {
            ReadState::Stored(value) => Some(value),
            _ => None,
        });
        let agree = match committed.next() {
            Some(first) => v
                .answers
                .values()
                .all(|s| matches!(s, ReadState::Stored(x) if x == first)),
            None => v.answers.values().all(|s| matches!(s, ReadState::Free)),
        };
        let report = VerifyReport {
            key: v.key,
            answers: v.answers.into_iter().collect(),
            silent: silence,
            agree,
        };
        self.out.reply(v.call, Reply::Verify(report));
    }

    // ================================================================ timers

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Vote(p) => {
                let Some(d) = self.deciders.get(&p) else {
                    return;
                };
                let (key, participants) = (d.key.clone(), d.participants.clone());
                self.resolve(&p, &key, participants);
            }
            Timer::Representative(p, cluster) => self.on_representative_timeout(p, cluster),
            Timer::Resolve(p) => {
                let Some(d) = self.deciders.get_mut(&p) else {
                    return;
                };
                match &mut d.phase {
                    Phase::Resolving { attempt } | Phase::Confirming { attempt, .. } => {
                        *attempt = attempt.saturating_add(1)
                    }
                    Phase::Reserving => return,
                }
                // A resolution nobody waits for and whose reservation is gone has no reason
                // to go on (the key was decided through another path).
                let needed = d.op.is_some()
                    || d.confirm
                    || self.ledger.reserved_key(&p).is_some()
                    || self.readers.contains_key(&p);
                if !needed {
                    self.drop_decider(&p);
                    self.check_leave_complete();
                    return;
                }
                self.resolve_round(&p);
            }
            Timer::Lease(p) => {
                let Some(key) = self.ledger.reserved_key(&p).cloned() else {
                    return;
                };
                let Some(participants) = self.ledger.reservation(&p, &key).cloned() else {
                    return;
                };
                if !self.resolve(&p, &key, participants) {
                    let later = self.now + self.config.resolve_backoff_max;
                    self.timers.set(Timer::Lease(p), later);
                }
            }
            Timer::Relay(key) => self.relay_flush(&key),
            Timer::ReadWait(call) => {
                let Some(read) = self.reads.get(&call) else {
                    return;
                };
                let (key, p) = (read.key.clone(), read.p.clone());
                if let Some(participants) = self.ledger.reservation(&p, &key) {
                    let participants = participants.clone();
                    if !self.resolve(&p, &key, participants) {
                        self.timers
                            .set(Timer::ReadWait(call), self.now + self.config.read_wait);
                    }
                }
            }
            Timer::ReadDeadline(call) => {
                if self.lease_read_deadline(call) {
                    return;
                }
                let Some(read) = self.reads.remove(&call) else {
                    return;
                };
                self.timers.cancel(&Timer::ReadWait(call));
                if let Some(set) = self.readers.get_mut(&read.p) {
                    set.remove(&call);
                    if set.is_empty() {
                        self.readers.remove(&read.p);
                    }
                }
                let silence = self.silence(&read.p);
                self.out
                    .reply(call, Reply::Get(GetOutcome::Unavailable(silence)));
            }
            Timer::Verify(tag) => self.finish_verify(tag),
            Timer::BusyRetry(op) => {
                if self.ops.contains_key(&op) {
                    // The node may have started leaving meanwhile: then the PUT stays Busy.
                    if self.leaving || !self.ready {
                        return self.end_op(op, Some(RequestOutcome::Busy));
                    }
                    self.start_attempt(op);
                }
            }
            Timer::PutDeadline(op) => {
                // Between two attempts every attempt so far was aborted: that is definite.
                let between_attempts = self.ops.get(&op).is_some_and(|o| o.current.is_none());
                let outcome = between_attempts.then_some(RequestOutcome::Busy);
                self.end_op(op, outcome)
            }
            Timer::LeaveCheck => self.send_leave_checks(),
            Timer::RemoveCheck => self.on_remove_check_timer(),
            Timer::Sync => self.on_sync_timer(),
        }
    }

    fn on_representative_timeout(&mut self, p: ProposalId, cluster: ClusterId) {
        let Some(d) = self.deciders.get_mut(&p) else {
            return;
        };
        let Some(rep) = d.reps.get_mut(&cluster) else {
            return;
        };
        if rep.answered {
            return;
        }
        rep.index += 1;
        let nodes = d.participants.nodes_of(&cluster);
        let targets: Vec<NodeId> = nodes
            .iter()
            .filter(|n| !d.votes.contains(n) && !self.departed.contains(*n))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let request = match d.phase {
            Phase::Reserving => {
                let Some(op) = d.op.and_then(|o| self.ops.get(&o)) else {
                    return;
                };
                Request::Reserve {
                    p: p.clone(),
                    key: d.key.clone(),
                    value: op.value.clone(),
                    digest: d.participants.digest(),
                }
            }
            Phase::Resolving { .. } | Phase::Confirming { .. } => Request::Status {
                p: p.clone(),
                key: d.key.clone(),
            },
        };
        let Some(next) = pick_representative(nodes, &self.departed, rep.index, &p) else {
            return;
        };
        self.out.send(
            next,
            Message::Relay {
                cluster: cluster.clone(),
                targets,
                request,
            },
        );
        self.timers.set(
            Timer::Representative(p, cluster),
            self.now + self.config.representative_timeout,
        );
    }

    // ================================================================ join-time copy

    fn on_sync_request(&mut self, from: NodeId, after: Option<Key>) {
        let refusal = if !self.ready || self.removed {
            Some(SyncRefusal::NotReady)
        } else if !self.membership.contains(&from) {
            Some(SyncRefusal::NotMember)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.out.send(from, Message::SyncRefused { reason });
        }
        let range = self.ledger.keys_after(after.as_ref());
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut done = true;
        for (key, state) in range {
            if entries.len() >= self.config.sync_page_keys || bytes >= self.config.sync_page_bytes {
                done = false;
                break;
            }
            bytes += key.as_str().len() + state.value().len();
            entries.push((key.clone(), state.clone()));
        }
        self.out.send(from, Message::SyncPage { entries, done });
    }

    fn on_sync_page(&mut self, from: NodeId, entries: Vec<(Key, DurableKey)>, done: bool) {
        let Some(sync) = &self.sync else { return };
        if sync.awaiting.as_ref() != Some(&from) {
            return;
        }
        let mut after = sync.after.clone();
        for (key, state) in entries {
            if after.as_ref().is_some_and(|a| key <= *a) {
                let reason = "sync page out of key order".to_string();
                return self.out.note(Note::PeerInputRejected { from, reason });
            }
            after = Some(key.clone());
            match (&state, self.ledger.get(&key)) {
                (_, Some(DurableKey::Stored { .. })) => {}
                (DurableKey::Stored { .. }, _) => {
                    if let Some(old) = self.ledger.copy_stored(&key, state, &mut self.out) {
                        self.timers.cancel(&Timer::Lease(old));
                    }
                }
                (
                    DurableKey::Reserved {
                        p, participants, ..
                    },
                    None,
                ) => {
                    // A proposal that counts this node as a participant needs this node's
                    // own grant, which a joining node never gives: never adopt it (found by
                    // seed 1079, `--leaves 1`). Any other proposal must be adopted unless it
                    // was explicitly refused (seen aborted): a watermark over-approximates
                    // refusals, and skipping a proposal that committed would leave this node
                    // without the key forever (found by seed 3186).
                    if participants.contains(&self.id) || self.ledger.refusal(p).is_some() {
                        continue;
                    }
                    if self.ledger.reserved_key(p).is_some() {
                        // No honest member holds one proposal on two keys.
                        let reason = format!("sync page reserves {key:?} for {p}, held here");
                        return self.out.note(Note::PeerInputRejected { from, reason });
                    }
                    let p = p.clone();
                    self.ledger.adopt(&key, state, &mut self.out);
                    // Resolve it at once: the node is not ready until it is decided.
                    self.timers.set(Timer::Lease(p), self.now);
                }
                (DurableKey::Reserved { .. }, Some(DurableKey::Reserved { .. })) => {}
            }
        }
        let sync = self.sync.as_mut().expect("checked above");
        sync.after = after.clone();
        if done {
            sync.copied = true;
            sync.awaiting = None;
            self.timers.cancel(&Timer::Sync);
            self.check_ready();
        } else {
            self.out.send(from, Message::SyncRequest { after });
            self.timers
                .set(Timer::Sync, self.now + self.config.sync_timeout);
        }
    }

    fn on_sync_refused(&mut self, from: NodeId) {
        let Some(sync) = &mut self.sync else { return };
        if sync.awaiting.as_ref() != Some(&from) {
            return;
        }
        sync.awaiting = None;
        sync.source_index += 1;
        self.timers
            .set(Timer::Sync, self.now + self.config.sync_timeout / 4);
    }

    fn on_sync_timer(&mut self) {
        let Some(sync) = &mut self.sync else { return };
        if sync.copied {
            return self.check_ready();
        }
        if sync.awaiting.take().is_some() {
            sync.source_index += 1;
        }
        let sources: Vec<&NodeId> = self.membership.nodes().filter(|n| **n != self.id).collect();
        let retry_at = self.now + self.config.sync_timeout;
        if sources.is_empty() {
            self.timers.set(Timer::Sync, retry_at);
            return;
        }
        let source = sources[sync.source_index % sources.len()].clone();
        sync.awaiting = Some(source.clone());
        let after = sync.after.clone();
        self.out.send(source, Message::SyncRequest { after });
        self.timers.set(Timer::Sync, retry_at);
    }

    /// A joining node becomes ready once its copy is complete and every reservation it copied
    /// is decided.
    fn check_ready(&mut self) {
        let copied = self.sync.as_ref().is_some_and(|s| s.copied);
        if !copied || self.ledger.reservation_count() > 0 {
            if copied {
                // Check again later: copied reservations are being resolved.
                self.timers
                    .set(Timer::Sync, self.now + self.config.sync_timeout);
            }
            return;
        }
        self.sync = None;
        self.ready = true;
        self.ledger.start_folding(&mut self.out);
        self.timers.cancel(&Timer::Sync);
        self.out.persist(WriteOp::Ready(true));
        self.out.note(Note::Ready);
    }

    fn drain_inbox(&mut self) {
        while let Some(msg) = self.out.next_local() {
            let me = self.id.clone();
            self.on_message(me, msg);
        }
    }

    #[inline(always)]
    fn bug_is(&self, check: InjectedBug) -> bool {
        bug_in(&self.config, check)
    }
}

/// `min` doubled `attempt` times (at most `doublings_max` times), never more than `max`: the
/// base of every backoff (Resolve rounds, Busy retries), before its jitter.
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

/// Proposals listed in a removal's answer, at most.
const OPEN_LISTED_MAX: usize = 100;

struct PendingRemoval {
    call: CallId,
    node: NodeId,
    waiting: BTreeSet<NodeId>,
    open: Vec<ProposalId>,
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

/// The representative of a cluster for a proposal: spread over the cluster by proposal, the
/// `index`-th choice after failovers, skipping departed nodes.
fn pick_representative(
    nodes: &[NodeId],
    departed: &BTreeSet<NodeId>,
    index: usize,
    p: &ProposalId,
) -> Option<NodeId> {
    let live: Vec<&NodeId> = nodes.iter().filter(|n| !departed.contains(*n)).collect();
    if live.is_empty() {
        return None;
    }
    let start = (p.counter as usize) % live.len();
    Some(live[(start + index) % live.len()].clone())
}

fn outcome_reply(outcome: RequestOutcome) -> PutOutcome {
    match outcome {
        RequestOutcome::Stored => PutOutcome::Stored,
        RequestOutcome::Exists(value) => PutOutcome::Exists { value },
        RequestOutcome::Busy => PutOutcome::Busy,
    }
}

/// Checks a key against the config: non-empty, not too long.
pub fn validate_key(config: &Config, key: &Key) -> Result<(), Invalid> {
    let bytes = key.as_str().len();
    if bytes == 0 {
        return Err(Invalid::EmptyKey);
    }
    if bytes > config.key_bytes_max {
        return Err(Invalid::KeyTooLong {
            bytes,
            max: config.key_bytes_max,
        });
    }
    Ok(())
}

/// Checks a PUT's key, value and request id against the config.
pub fn validate_put(
    config: &Config,
    key: &Key,
    value: &Value,
    request: Option<&RequestId>,
) -> Result<(), Invalid> {
    validate_key(config, key)?;
    if value.len() > config.value_bytes_max {
        return Err(Invalid::ValueTooLong {
            bytes: value.len(),
            max: config.value_bytes_max,
        });
    }
    if let Some(id) = request {
        let bytes = id.as_str().len();
        if bytes == 0 || bytes > config.request_id_bytes_max {
            return Err(Invalid::RequestIdTooLong {
                bytes,
                max: config.request_id_bytes_max,
            });
        }
    }
    Ok(())
}
