//! The protocol state machine of one node: the roles it is made of and the routing of every
//! input to the role that handles it. Each role owns its state and borrows the environment
//! ([`Env`]: outbox, timers, clock, config, jitter) and, read-only, what it needs of the
//! others; it returns what happened, and this file routes that on (see the map in lib.rs).

mod acceptor;
mod bounds;
mod contention;
mod coordinator;
mod fanout;
mod health;
mod lateness;
mod learner;
mod leave;
mod members;
mod outbox;
mod proposer;
mod reader;
mod relay;
mod removal;
mod requests;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::api::{
    Command, GetOutcome, Input, Invalid, NotReady, Note, Output, PutOutcome, RemoveOutcome, Reply,
};
use crate::config::{Config, ConfigError};
use crate::decided::{DecidedKeys, Unreadable};
use crate::faults::{PeerFault, Violation};
use crate::membership::{Digest, Membership};
use crate::storage::{DurableKey, Recovered, RequestOutcome};
use crate::timers::{RelayKey, Timer, Timers};
use crate::types::{CallId, ClusterId, Key, NetworkId, NodeId, Proposal, RequestId, Time, Value};
use crate::wire::{Answer, Message, QueryState, ReadState, RefuseReason, Request, Response};

use acceptor::{Acceptor, Learned};
pub use bounds::{validate_key, validate_put};
use coordinator::{Coordinator, ProposalIds, outcome_reply};
use fanout::Peers;
use health::Health;
use learner::Learner;
use leave::Leaving;
use members::Members;
use outbox::Outbox;
use proposer::{AnswerFrom, Outcome, Proposer, Start};
use reader::{ReadEvent, Reader};
use relay::Relays;
use removal::PendingRemoval;
use requests::{RequestTable, fingerprint};
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
    env: Env,
    network: NetworkId,

    /// Promises, accepted values, decisions (acceptor.rs).
    acceptor: Acceptor,
    /// Ballots this node runs for keys (proposer.rs).
    proposer: Proposer,
    /// Clients' PUTs (coordinator.rs).
    coordinator: Coordinator,
    /// Request ids for at-most-once retries (requests.rs).
    requests: RequestTable,
    /// Catch-up from this node's cluster (learner.rs).
    learner: Learner,
    /// Reads waiting for their cluster, verify reads (reader.rs).
    reader: Reader,
    /// Fan-outs this node runs as its cluster's representative (relay.rs).
    relays: Relays,
    /// Peers suspected down or slow (health.rs).
    health: Health,

    /// Members and departed nodes (members.rs).
    members: Members,
    /// When this node last sent its view to each peer (views are rate-limited).
    view_sent: std::collections::BTreeMap<NodeId, Time>,
    /// Whether the node votes and serves reads: its join-time copy is done (sync.rs).
    ready: bool,
    sync: Option<SyncState>,
    /// Leaving (leave.rs).
    leaving: Option<Leaving>,
    /// An operator's removal being checked (removal.rs).
    removal: Option<PendingRemoval>,
}

/// What every role borrows: the outbox (writes, the barrier, everything emitted), the timers,
/// the clock, the config, this node's identity and the jitter.
pub(crate) struct Env {
    pub config: Config,
    pub id: NodeId,
    pub cluster: ClusterId,
    pub now: Time,
    pub timers: Timers,
    pub out: Outbox,
    rng: ChaCha8Rng,
}

impl Env {
    /// A uniformly drawn wait of at most `max`, from the node's seeded generator.
    pub fn jitter(&mut self, max: Duration) -> Duration {
        let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.rng.random_range(0..=max_us))
    }

    #[inline(always)]
    pub fn bug(&self, check: InjectedBug) -> bool {
        bug_in(&self.config, check)
    }
}

/// Deliberately broken behaviour, for showing that the simulator catches it. Selectable
/// through `Config::bug` only when the `bug-injection` feature is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InjectedBug {
    /// Phase 2 counts a majority of the coordinator's own cluster only.
    PhaseTwoOwnClusterOnly,
    /// A proposer proposes its own value after phase 1, ignoring the accepted ones.
    IgnoreAcceptedValues,
    /// A promise is a lazy write: it may be lost in a crash after it was answered.
    PromiseNotDurable,
    /// An Accept below the promised ballot is accepted.
    AcceptBelowPromise,
    /// A read answers "unknown" from the node's own state, without asking its cluster.
    UnknownFromLocalState,
    /// A read answers a value accepted in its cluster before it is known to be chosen.
    ReadAcceptedBeforeChosen,
    /// A PUT is answered Busy at its deadline although an Accept carrying its value left.
    BusyAfterAcceptLeft,
    /// The ballot round ceiling is a lazy write: a restarted node may run a ballot again.
    LazyRoundCeiling,
    /// The proposal counter ceiling is a lazy write: a restarted node may reuse a proposal id.
    LazyCounterCeiling,
    /// The fast round chooses with every participant but one.
    FastRoundAllButOne,
    /// Messages leave before the writes they depend on are durable.
    VoteBeforeDurable,
    /// Start after a restart from the membership the driver happens to know (here: only this
    /// node), not the recorded one: the bug that let a cluster restarted during a partition
    /// found a network of its own.
    ForgetMembershipOnRestart,
    /// Answer a leave check before the lazy writes so far are durable: "clear" vouches for
    /// decisions pulled from the leaving node that a crash may still undo.
    ClearBeforeLazyDurable,
}

/// Counts worth exporting as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Decisions stored here. Each is numbered in turn, so this is the last number (a record
    /// repaired after damage counts twice): counting them in the store would cost a read.
    pub keys_stored: u64,
    /// Decisions held in memory until their write is durable (then read from the store).
    pub undurable_decisions: usize,
    /// Keys with an accepted value here not known to be decided.
    pub accepted_undecided: usize,
    /// Keys with a promise only.
    pub promises_only: usize,
    /// Keys whose record was damaged on disk (this node abstains for them).
    pub damaged_keys: usize,
    /// Damaged or unreadable records this node wrote again with their decision, since it
    /// started.
    pub repaired_keys: u64,
    pub puts_in_flight: usize,
    /// Keys this node runs ballots for.
    pub proposers: usize,
    pub reads_waiting: usize,
    pub relays: usize,
    pub timers: usize,
    pub held_messages: usize,
    /// How many decisions of some member of this cluster this node has not pulled yet, at most.
    pub behind: u64,
    /// Peers suspected down or slow now.
    pub suspects: usize,
}

impl Node {
    /// Starts a node from its durable state only: its records, network and the whole
    /// membership it recorded (whatever it rediscovers later can only add to it). `seed` seeds
    /// the jitter of backoffs.
    pub fn new(
        config: Config,
        id: NodeId,
        cluster: ClusterId,
        recovered: Recovered,
        decided: Box<dyn DecidedKeys>,
        now: Time,
        seed: u64,
    ) -> Result<Node, ConfigError> {
        config.validate()?;
        let Recovered {
            network,
            members,
            keys,
            last_decision,
            decision_order: _,
            damaged,
            floor,
            counter_ceiling,
            round_ceiling,
            caught_up,
            requests,
            ready,
            departed,
        } = recovered;
        let forget = bug_in(&config, InjectedBug::ForgetMembershipOnRestart);
        let recorded = members
            .into_iter()
            .filter(|_| !forget)
            .map(|(node, cluster)| (cluster, node));
        let members = Members::new(id.clone(), cluster.clone(), recorded, departed);
        let ids = ProposalIds::new(counter_ceiling, config.counter_block);
        let requests = RequestTable::new(requests, now, config.requests_max, config.request_ttl);
        let out = Outbox::new(id.clone(), bug_in(&config, InjectedBug::VoteBeforeDurable));
        let block = config.counter_block;
        let proposer = Proposer::new(round_ceiling, block, config.vote_timeout / 4);
        let mut node = Node {
            env: Env {
                config,
                id,
                cluster,
                now,
                timers: Timers::default(),
                out,
                rng: ChaCha8Rng::seed_from_u64(seed),
            },
            network,
            acceptor: Acceptor::new(keys, decided, damaged, floor, last_decision),
            proposer,
            coordinator: Coordinator::new(ids),
            requests,
            learner: Learner::new(caught_up),
            reader: Reader::default(),
            relays: Relays::default(),
            health: Health::default(),
            members,
            view_sent: std::collections::BTreeMap::new(),
            ready,
            sync: None,
            leaving: None,
            removal: None,
        };
        // Every value accepted and not decided is recovered after a lease, as if it had just
        // been accepted (its proposer may be alive and about to decide it); the jitter keeps a
        // whole cluster that restarts at once from recovering in lockstep.
        let open: Vec<Key> = node.acceptor.accepted_undecided().cloned().collect();
        for key in open {
            let lease = node.env.config.lease;
            let delay = lease + node.env.jitter(lease / 2);
            node.env.timers.set(Timer::Lease(key), now + delay);
        }
        if node.ready {
            // Learn what was decided while this node was down.
            let delay = node.env.jitter(node.env.config.backoff_min);
            node.env.timers.set(Timer::CatchUp, now + delay);
        } else {
            node.start_sync();
        }
        Ok(node)
    }

    // ---------------------------------------------------------------- getters

    pub fn id(&self) -> &NodeId {
        &self.env.id
    }
    pub fn cluster(&self) -> &ClusterId {
        &self.env.cluster
    }
    pub fn membership(&self) -> &Arc<Membership> {
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
        &self.env.config
    }
    /// Whether the node votes and serves reads (its join-time copy is done).
    pub fn is_ready(&self) -> bool {
        self.ready
    }
    pub fn is_leaving(&self) -> bool {
        self.leaving.is_some()
    }
    /// The node's record of a key (`None`: it knows nothing of it), read from memory or from
    /// its store; `Err` if it cannot be read now (damaged).
    pub fn key_state(&self, key: &Key) -> Result<Option<DurableKey>, Unreadable> {
        self.acceptor.get(key)
    }
    /// The records this node holds in memory (what is in flight: open records and decisions
    /// not durable yet), in key order.
    pub fn records_in_memory(&self) -> impl Iterator<Item = (&Key, &DurableKey)> {
        self.acceptor.records_in_memory()
    }
    /// The nodes this node suspects to be down or slow now.
    pub fn suspects(&self) -> impl Iterator<Item = &NodeId> {
        self.health.suspects(self.env.now)
    }
    /// Keys whose record was damaged on disk and whose decision is not learned yet.
    pub fn damaged_keys(&self) -> usize {
        self.acceptor.damaged_count()
    }
    /// Damaged or unreadable records this node wrote again with their decision, since it
    /// started.
    pub fn repaired_keys(&self) -> u64 {
        self.acceptor.repaired_count()
    }
    pub fn stats(&self) -> Stats {
        Stats {
            keys_stored: self.acceptor.seq(),
            undurable_decisions: self.acceptor.undurable_decisions(),
            accepted_undecided: self.acceptor.accepted_undecided_count(),
            promises_only: self.acceptor.promised_only_count(),
            damaged_keys: self.acceptor.damaged_count(),
            repaired_keys: self.acceptor.repaired_count(),
            puts_in_flight: self.coordinator.len(),
            proposers: self.proposer.len(),
            reads_waiting: self.reader.waiting(),
            relays: self.relays.len(),
            timers: self.env.timers.len(),
            held_messages: self.env.out.held_len(),
            behind: self.learner.behind(),
            suspects: self.health.suspects(self.env.now).count(),
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Feeds one input. Then drain [`Node::poll_output`].
    pub fn handle(&mut self, now: Time, input: Input) {
        self.env.now = self.env.now.max(now);
        match input {
            Input::Message { from, msg } => self.on_message(from, msg),
            Input::Client { call, cmd } => self.on_command(call, cmd),
            Input::Persisted { upto } => {
                self.env.out.on_persisted(upto);
                self.acceptor.on_durable(self.env.out.durable_upto());
            }
            Input::Timeout => {
                while let Some(timer) = self.env.timers.pop_due(self.env.now) {
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
        if self.leaving.is_some() {
            // Whatever settled the last open key (a decision, a clear answer), check here once
            // rather than on every path.
            self.check_leave_complete();
        }
        self.env.out.flush();
    }

    // ---------------------------------------------------------------- outputs

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.env.out.poll()
    }

    /// When [`Input::Timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.env.timers.next()
    }

    // ---------------------------------------------------------------- routing: messages

    fn on_message(&mut self, from: NodeId, msg: Message) {
        if let Err(reason) = self.check_message(&msg) {
            self.env.out.note(Note::PeerInputRejected { from, reason });
            return;
        }
        self.tell_departed_sender(&from);
        match msg {
            Message::Request(req) => self.on_request(from, req),
            Message::Response(resp) => self.on_response(&from, resp),
            Message::Relay {
                cluster,
                targets,
                request,
            } => {
                if !self.members.contains(&from) {
                    let reason = PeerFault::RelayFromNonMember;
                    return self.env.out.note(Note::PeerInputRejected { from, reason });
                }
                let nodes = self.members.current().nodes_of(&self.env.cluster).to_vec();
                self.relays
                    .on_relay(&mut self.env, from, cluster, &nodes, targets, request);
            }
            Message::RelayReply { cluster, responses } => {
                for resp in responses {
                    if let Response::Ballot {
                        key,
                        ballot,
                        proposal,
                        ..
                    } = &resp
                    {
                        self.proposer.representative_answered(
                            &mut self.env,
                            key,
                            &cluster,
                            (ballot, proposal.as_ref()),
                        );
                    }
                    self.on_response(&from, resp);
                }
            }
            Message::SyncRequest { after, digest } => self.on_sync_request(from, after, digest),
            Message::SyncPage {
                after,
                entries,
                floor,
                seq,
                done,
            } => self.on_sync_page(from, after, entries, floor, seq, done),
            Message::SyncRefused { reason } => self.on_sync_refused(from, reason),
            Message::CatchUp { after } => {
                if self.members.current().cluster_of(&from) == Some(&self.env.cluster)
                    && !self.members.this_node_removed()
                {
                    self.learner
                        .serve(&mut self.env, &self.acceptor, from, after);
                }
            }
            Message::CatchUpPage {
                entries,
                last,
                latest,
            } => {
                let Some(entries) =
                    self.learner
                        .on_page(&mut self.env, &from, entries, last, latest)
                else {
                    return;
                };
                for (key, chosen) in entries {
                    self.learn(&key, &chosen, &from);
                }
            }
            Message::LeaveCheck { seq } => self.on_leave_check(from, seq),
            Message::LeaveClear { seq } => self.on_leave_clear(from, seq),
            Message::Removed { node } => self.on_removed_message(from, node),
            Message::RemoveCheck { node } => self.on_remove_check(from, node),
            Message::RemoveCheckReply { node, cluster } => {
                self.on_remove_check_reply(from, node, cluster)
            }
            Message::View { members, departed } => self.on_view(from, members, departed),
        }
    }

    /// Why this node takes no part in a ballot or a read's question now, if it does not: a
    /// request of another membership also gets this node's view (views converge).
    fn refusal(
        &mut self,
        from: &NodeId,
        digest: Digest,
        ballot_request: bool,
    ) -> Option<RefuseReason> {
        let changed = digest != self.members.current().digest();
        if changed {
            // The requester's view or this node's lacks a discovery, a goodbye or a removal:
            // exchange views so that the next attempt finds them equal, whatever this node
            // answers (a leaving node that missed a removal would otherwise never learn it).
            self.send_view(from);
        }
        if self.members.this_node_removed() {
            Some(RefuseReason::Departed)
        } else if !self.ready {
            Some(RefuseReason::NotReady)
        } else if ballot_request && self.leaving.is_some() && *from != self.env.id {
            // A leaving node takes part in its own ballots only: they decide what it holds.
            Some(RefuseReason::Leaving)
        } else if changed {
            Some(RefuseReason::MembershipChanged)
        } else {
            None
        }
    }

    /// A request from a member (or from this node itself).
    fn on_request(&mut self, from: NodeId, req: Request) {
        if from != self.env.id && !self.members.contains(&from) {
            let reason = PeerFault::RequestFromNonMember;
            return self.env.out.note(Note::PeerInputRejected { from, reason });
        }
        let me = self.env.id.clone();
        match req {
            Request::Prepare {
                key,
                ballot,
                digest,
            } => {
                let answer = match self.refusal(&from, digest, true) {
                    Some(reason) => Answer::Refused { reason },
                    None => self.acceptor.prepare(&mut self.env, &key, &ballot),
                };
                if matches!(answer, Answer::Promise { .. }) {
                    self.proposer.saw_ballot(&mut self.env, &key, &ballot);
                }
                let resp = Response::Ballot {
                    key,
                    ballot,
                    proposal: None,
                    node: me,
                    digest: self.members.current().digest(),
                    answer,
                };
                self.env.out.send(from, Message::Response(resp));
            }
            Request::Accept {
                key,
                ballot,
                proposal,
                digest,
            } => {
                let answer = match self.refusal(&from, digest, true) {
                    Some(reason) => Answer::Refused { reason },
                    None => self
                        .acceptor
                        .accept(&mut self.env, &key, &ballot, &proposal),
                };
                if matches!(answer, Answer::Accepted) {
                    self.proposer.saw_ballot(&mut self.env, &key, &ballot);
                }
                let resp = Response::Ballot {
                    key,
                    ballot,
                    proposal: Some(proposal.p),
                    node: me,
                    digest: self.members.current().digest(),
                    answer,
                };
                self.env.out.send(from, Message::Response(resp));
            }
            Request::Decide { key, chosen } => {
                if self.ready && !self.members.this_node_removed() {
                    self.learn(&key, &chosen, &from);
                }
            }
            Request::Query { key, tag, digest } => {
                let state = match self.refusal(&from, digest, false) {
                    Some(reason) => QueryState::Refused(reason),
                    None => self.acceptor.query(&key),
                };
                let resp = Response::Query {
                    key,
                    tag,
                    node: me,
                    state,
                };
                self.env.out.send(from, Message::Response(resp));
            }
            Request::Read { key, tag } => {
                let state = self.read_state(&key);
                let resp = Response::Read {
                    key,
                    tag,
                    node: me,
                    state,
                };
                self.env.out.send(from, Message::Response(resp));
            }
        }
    }

    /// A response goes to the fan-out this node relays as a representative, if it relays one
    /// for it, and to the proposer or read it answers.
    fn on_response(&mut self, from: &NodeId, resp: Response) {
        match resp {
            Response::Ballot {
                key,
                ballot,
                proposal,
                node,
                digest,
                answer,
            } => {
                if *from != node && !self.members.contains(from) {
                    return;
                }
                if let Some(p) = &proposal {
                    let relay_key = RelayKey::Ballot(key.clone(), ballot.clone(), p.clone());
                    if self.relays.relays(&relay_key) {
                        let resp = Response::Ballot {
                            key: key.clone(),
                            ballot: ballot.clone(),
                            proposal: proposal.clone(),
                            node: node.clone(),
                            digest,
                            answer: answer.clone(),
                        };
                        self.relays.collect(&mut self.env, &relay_key, resp);
                    }
                }
                match &answer {
                    Answer::Refused {
                        reason: RefuseReason::MembershipChanged,
                    } if self.proposer.is_running(&key) => self.send_view(&node),
                    Answer::Refused {
                        reason: RefuseReason::Departed,
                    } => self.on_departed_vote(&node),
                    _ => {}
                }
                let start = start_of(&self.members, &self.acceptor, &key);
                let outcome = self.proposer.on_answer(
                    &mut self.env,
                    &start,
                    &mut self.health,
                    AnswerFrom {
                        key: &key,
                        node: &node,
                        ballot: &ballot,
                        proposal: proposal.as_ref(),
                        digest,
                    },
                    answer,
                );
                self.route(outcome);
            }
            Response::Query {
                key,
                tag,
                node,
                state,
            } => {
                if *from != node {
                    return;
                }
                if state == QueryState::Refused(RefuseReason::MembershipChanged) {
                    self.send_view(&node);
                }
                if let Some(ReadEvent::Learned { key: k, chosen }) =
                    self.reader
                        .on_answer(&mut self.env, &key, tag, node.clone(), state)
                {
                    debug_assert_eq!(k, key);
                    self.learn(&k, &chosen, &node);
                }
            }
            Response::Read {
                key,
                tag,
                node,
                state,
            } => {
                let relay_key = RelayKey::Read(tag);
                if self.relays.relays(&relay_key) {
                    let resp = Response::Read {
                        key,
                        tag,
                        node,
                        state,
                    };
                    return self.relays.collect(&mut self.env, &relay_key, resp);
                }
                self.reader
                    .on_verify_answer(&mut self.env, key, tag, node, state);
            }
        }
    }

    /// Routes what a proposer learned.
    fn route(&mut self, outcome: Option<Outcome>) {
        match outcome {
            None => {}
            Some(Outcome::Chosen {
                key,
                chosen,
                ballot: _,
                storing,
                participants,
                silent_reps,
            }) => {
                for rep in &silent_reps {
                    let suspect_for = self.env.config.suspect_for;
                    self.health.suspect(rep, self.env.now, suspect_for);
                }
                self.tell_decision(&key, &chosen, &participants, &storing);
                let me = self.env.id.clone();
                self.learn(&key, &chosen, &me);
            }
            Some(Outcome::NothingChosen { key }) => {
                self.reader.nothing_chosen(&mut self.env, &key);
                self.keep_lease(&key);
            }
            Some(Outcome::GaveUp { key, left }) => {
                if let Some(p) = left {
                    self.coordinator.value_left(&key, &p);
                }
                self.keep_lease(&key);
            }
        }
    }

    /// A proposer of `key` stopped undecided: if a value is accepted here, it is recovered
    /// again after a lease (every accepted value ends decided).
    fn keep_lease(&mut self, key: &Key) {
        if self
            .acceptor
            .get(key)
            .is_ok_and(|s| s.is_some_and(|s| s.accepted().is_some()))
        {
            let at = self.env.now + self.env.config.lease;
            self.env.timers.set(Timer::Lease(key.clone()), at);
        }
    }

    /// Sends Decide to every participant that is not known to store the key already (rule 4;
    /// no acknowledgement: a node that misses it pulls it from its cluster).
    fn tell_decision(
        &mut self,
        key: &Key,
        chosen: &Proposal,
        participants: &Arc<Membership>,
        storing: &[NodeId],
    ) {
        let decide = Request::Decide {
            key: key.clone(),
            chosen: chosen.clone(),
        };
        let me = self.env.id.clone();
        let peers = Peers {
            departed: self.members.departed(),
            health: &self.health,
        };
        let spread = fanout::spread_of(&self.env.id, self.env.now);
        fanout::send_to_participants(
            &mut self.env,
            &peers,
            participants,
            spread,
            |_| 0,
            &decide,
            |n| *n != me && !storing.contains(n),
        );
    }

    /// `chosen` is the decision of `key` (decided here, or told by `source`): the one place a
    /// decision is stored, and whoever waits on the key is answered.
    fn learn(&mut self, key: &Key, chosen: &Proposal, source: &NodeId) {
        match self.acceptor.store(&mut self.env, key, chosen) {
            Learned::New | Learned::Known => {}
            Learned::Conflict(known) => {
                let reason = Violation::TwoDecisions {
                    key: key.clone(),
                    stored: known.p,
                    told: chosen.p.clone(),
                    from: source.clone(),
                    at: self.env.id.clone(),
                };
                return self.env.out.note(Note::Violation { reason });
            }
        }
        self.proposer.stop(&mut self.env, key);
        self.coordinator
            .decided(&mut self.env, &mut self.requests, key, chosen);
        self.reader.key_stored(&mut self.env, key, chosen);
    }

    // ---------------------------------------------------------------- routing: clients

    fn on_command(&mut self, call: CallId, cmd: Command) {
        if self.members.this_node_removed() {
            let removed = NotReady::Removed;
            let reply = match cmd {
                // A request id may name a PUT that ran here or at another node before, whose
                // value may be chosen: a removed node cannot learn that, so it cannot say
                // "no effect" (the simulator's seed 323757209: a retry told NotReady(Removed)
                // after its value was chosen).
                Command::Put {
                    request: Some(_), ..
                } => Reply::Put(PutOutcome::Unavailable(crate::api::Silence::default())),
                Command::Put { .. } => Reply::Put(PutOutcome::NotReady(removed)),
                Command::Get { .. } | Command::Verify { .. } => {
                    Reply::Get(GetOutcome::NotReady(removed))
                }
                Command::RemoveNode { .. } => Reply::Remove(RemoveOutcome::Unknown),
            };
            return self.env.out.reply(call, reply);
        }
        match cmd {
            Command::Put {
                key,
                value,
                request,
            } => self.on_put(call, key, value, request),
            Command::Get { key } => self.on_get(call, key),
            Command::Verify { key } => {
                if let Err(invalid) = validate_key(&self.env.config, &key) {
                    return self
                        .env
                        .out
                        .reply(call, Reply::Get(GetOutcome::Invalid(invalid)));
                }
                let peers = Peers {
                    departed: self.members.departed(),
                    health: &self.health,
                };
                let members = self.members.current().clone();
                self.reader
                    .start_verify(&mut self.env, &peers, call, key, &members);
            }
            Command::RemoveNode { node, force } => self.on_remove_command(call, node, force),
        }
    }

    /// A client PUT: validated, answered from the request record or the key's decision when
    /// it can be, otherwise proposed until the key is decided or `put_timeout` passes.
    fn on_put(&mut self, call: CallId, key: Key, value: Value, request: Option<RequestId>) {
        if let Err(invalid) = validate_put(&self.env.config, &key, &value, request.as_ref()) {
            return self
                .env
                .out
                .reply(call, Reply::Put(PutOutcome::Invalid(invalid)));
        }
        if let Some(id) = &request {
            let coordinator = &self.coordinator;
            let running = |id: &RequestId| coordinator.is_running(id);
            self.requests
                .expire(self.env.now, running, &mut self.env.out);
            if let Some(record) = self.requests.get(id).cloned() {
                if record.key != key || record.value_fingerprint != fingerprint(&value) {
                    let invalid = PutOutcome::Invalid(Invalid::RequestIdReused);
                    return self.env.out.reply(call, Reply::Put(invalid));
                }
                if let Some(outcome) = record.outcome {
                    return self.env.out.reply(call, Reply::Put(outcome_reply(outcome)));
                }
                if let Some(op) = self.coordinator.running_request(id) {
                    return self.coordinator.join(op, call);
                }
                // Known, not running, no outcome (a restart, or an earlier Unavailable): run
                // the same proposal again, with a classic ballot that learns the outcome. It
                // never starts a second value: it is the same value, and a value found
                // accepted is proposed before it.
                let proposal = Proposal {
                    p: record.proposal,
                    request: request.clone(),
                    value,
                };
                // Its first run may have sent the value: this one can end Unavailable, never
                // Busy.
                return self.propose(call, key, proposal, false, true);
            }
        }
        if let Some(refusal) = self.write_refusal() {
            return self.env.out.reply(call, Reply::Put(refusal));
        }
        if let Some(stored) = self.acceptor.stored(&key) {
            // Decided here, so decided: no need to ask anyone.
            let outcome = if request.is_some() && stored.request == request {
                RequestOutcome::Stored
            } else {
                RequestOutcome::Exists(stored.value.clone())
            };
            if let Some(id) = request {
                let p = self.next_proposal();
                self.remember_request(id, &key, &value, p, Some(outcome.clone()));
            }
            return self.env.out.reply(call, Reply::Put(outcome_reply(outcome)));
        }
        let p = self.next_proposal();
        if let Some(id) = &request {
            self.remember_request(id.clone(), &key, &value, p.clone(), None);
        }
        let proposal = Proposal { p, request, value };
        self.propose(call, key, proposal, true, false);
    }

    /// Runs a PUT of `proposal` for `key` (the fast round allowed if `fast`; `left`: an
    /// Accept carrying it may have left before).
    fn propose(&mut self, call: CallId, key: Key, proposal: Proposal, fast: bool, left: bool) {
        if let Some(refusal) = self.write_refusal() {
            // A retry whose first run may have sent the value cannot say "nothing happened".
            let reply = if left {
                PutOutcome::Unavailable(crate::api::Silence::default())
            } else {
                refusal
            };
            return self.env.out.reply(call, Reply::Put(reply));
        }
        let op = self
            .coordinator
            .add(&mut self.env, call, key.clone(), proposal.clone());
        if left {
            self.coordinator.value_left(&key, &proposal.p);
        }
        let _ = op;
        if let Some(stored) = self.acceptor.stored(&key) {
            return self
                .coordinator
                .decided(&mut self.env, &mut self.requests, &key, &stored);
        }
        let start = start_of(&self.members, &self.acceptor, &key);
        self.proposer.start(
            &mut self.env,
            &start,
            &self.health,
            &key,
            Some(proposal),
            fast,
        );
    }

    /// Why this node cannot start a write now, if it cannot.
    fn write_refusal(&self) -> Option<PutOutcome> {
        if !self.ready {
            return Some(PutOutcome::NotReady(NotReady::Joining));
        }
        if self.leaving.is_some() {
            return Some(PutOutcome::NotReady(NotReady::Leaving));
        }
        let members = self.members.current().nodes_of(&self.env.cluster).len();
        if members < self.env.config.cluster_size_min {
            return Some(PutOutcome::NotReady(NotReady::ClusterTooSmall {
                members,
                min: self.env.config.cluster_size_min,
            }));
        }
        if self.coordinator.len() >= self.env.config.proposals_max {
            return Some(PutOutcome::Overloaded);
        }
        None
    }

    /// A PUT's time is up: Unavailable if an Accept carrying its value left, else Busy, and
    /// then its value must never leave.
    fn on_put_deadline(&mut self, op_id: u64) {
        let Some(op) = self.coordinator.op(op_id) else {
            return;
        };
        let (key, p) = (op.key.clone(), op.proposal.p.clone());
        let left = (op.left || self.proposer.left(&key, &p))
            && !self.env.bug(InjectedBug::BusyAfterAcceptLeft);
        if !left {
            let never_left = self.proposer.withdraw(&key, &p);
            assert!(
                never_left || self.env.bug(InjectedBug::BusyAfterAcceptLeft),
                "{p} answered Busy after its value left"
            );
        }
        let silence = self.proposer.silence(&key);
        self.coordinator
            .deadline(&mut self.env, &mut self.requests, op_id, left, silence);
    }

    /// A client GET: a stored value at once, otherwise a question to this node's cluster.
    fn on_get(&mut self, call: CallId, key: Key) {
        if let Err(invalid) = validate_key(&self.env.config, &key) {
            return self
                .env
                .out
                .reply(call, Reply::Get(GetOutcome::Invalid(invalid)));
        }
        if !self.ready {
            let reply = Reply::Get(GetOutcome::NotReady(NotReady::Joining));
            return self.env.out.reply(call, reply);
        }
        if let Some(stored) = self.acceptor.stored(&key) {
            let value = stored.value.clone();
            return self
                .env
                .out
                .reply(call, Reply::Get(GetOutcome::Value(value)));
        }
        let members = self.members.current().clone();
        self.reader
            .start(&mut self.env, call, key, &members, self.members.departed());
    }

    /// What this node holds for `key`, as a verify read asks it.
    fn read_state(&self, key: &Key) -> ReadState {
        if !self.ready || self.members.this_node_removed() {
            return ReadState::NotReady;
        }
        match self.acceptor.get(key) {
            // It cannot tell: as a node that is not ready.
            Err(Unreadable) => ReadState::NotReady,
            Ok(Some(DurableKey::Stored { chosen, .. })) => ReadState::Stored(chosen.value),
            Ok(Some(DurableKey::Open {
                accepted: Some(_), ..
            })) => ReadState::Undecided,
            Ok(Some(DurableKey::Open { accepted: None, .. }) | None) => ReadState::Free,
        }
    }

    // ---------------------------------------------------------------- routing: timers

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Phase(key) => self.on_phase_timer(&key),
            Timer::Retry(key) => {
                let start = start_of(&self.members, &self.acceptor, &key);
                let outcome =
                    self.proposer
                        .on_retry_timer(&mut self.env, &start, &self.health, &key);
                self.route(outcome);
            }
            Timer::Representative(key, cluster) => {
                let departed = self.members.departed().clone();
                self.proposer.on_representative_timer(
                    &mut self.env,
                    &departed,
                    &mut self.health,
                    &key,
                    &cluster,
                );
            }
            Timer::Lease(key) => self.recover(&key, Timer::Lease(key.clone())),
            Timer::Relay(key) => self.relays.on_timeout(&mut self.env, &key),
            Timer::ReadWait(call) => {
                let departed = self.members.departed();
                let event = self.reader.on_wait_timer(&mut self.env, call, departed);
                if let Some(ReadEvent::Recover { key }) = event {
                    self.recover(&key, Timer::ReadWait(call));
                }
            }
            Timer::ReadDeadline(call) => self.reader.on_deadline(&mut self.env, call),
            Timer::Verify(tag) => self.reader.finish_verify(&mut self.env, tag),
            Timer::PutDeadline(op) => self.on_put_deadline(op),
            Timer::Sync => self.on_sync_timer(),
            Timer::CatchUp => {
                let others: Vec<NodeId> = self
                    .members
                    .current()
                    .nodes_of(&self.env.cluster)
                    .iter()
                    .filter(|n| **n != self.env.id)
                    .cloned()
                    .collect();
                self.health.prune(self.members.current());
                self.learner.on_timer(&mut self.env, &others);
            }
            Timer::LeaveCheck => self.on_leave_timer(),
            Timer::RemoveCheck => self.on_remove_check_timer(),
        }
    }

    fn on_phase_timer(&mut self, key: &Key) {
        let start = start_of(&self.members, &self.acceptor, key);
        let outcome = self
            .proposer
            .on_phase_timer(&mut self.env, &start, &mut self.health, key);
        self.route(outcome);
    }

    /// Recovers `key` (rule 6): a value accepted here (or in this cluster, for a read) and not
    /// known to be decided is driven to a decision by a classic ballot of this node, which
    /// adopts the highest accepted value it finds. When too many keys are being recovered,
    /// `retry` fires again later.
    fn recover(&mut self, key: &Key, retry: Timer) {
        if self.acceptor.stored(key).is_some() || !self.ready || self.members.this_node_removed() {
            return;
        }
        if self.proposer.is_running(key) {
            return;
        }
        let max = self.env.config.recoveries_max + self.env.config.proposals_max;
        if self.proposer.len() >= max {
            let again = self.env.now + self.env.config.backoff_max;
            return self.env.timers.set(retry, again);
        }
        let start = start_of(&self.members, &self.acceptor, key);
        self.proposer
            .start(&mut self.env, &start, &self.health, key, None, false);
    }

    // ---------------------------------------------------------------- helpers

    /// Handles the messages this node sent itself, as they are released.
    fn drain_inbox(&mut self) {
        while let Some(msg) = self.env.out.next_local() {
            let me = self.env.id.clone();
            self.on_message(me, msg);
        }
    }

    /// Every member but this node, in id order.
    fn other_members(&self) -> Vec<NodeId> {
        self.members
            .current()
            .nodes()
            .filter(|n| **n != self.env.id)
            .cloned()
            .collect()
    }

    /// A fresh proposal id of this node.
    fn next_proposal(&mut self) -> crate::types::ProposalId {
        let lazy = self.env.bug(InjectedBug::LazyCounterCeiling);
        self.coordinator
            .ids
            .next(&self.env.id, &mut self.env.out, lazy)
    }

    /// Records the request's proposal (and outcome, if definite).
    fn remember_request(
        &mut self,
        id: RequestId,
        key: &Key,
        value: &Value,
        p: crate::types::ProposalId,
        outcome: Option<RequestOutcome>,
    ) {
        let coordinator = &self.coordinator;
        let running = |id: &RequestId| coordinator.is_running(id);
        self.requests.remember(
            id,
            key,
            value,
            p,
            outcome,
            self.env.now,
            running,
            &mut self.env.out,
        );
    }
}

/// What a proposer of `key` reads of the rest of the node.
fn start_of<'a>(members: &'a Members, acceptor: &Acceptor, key: &Key) -> Start<'a> {
    Start {
        departed: members.departed(),
        members: members.current(),
        untouched: acceptor.untouched(key),
        local_highest: acceptor.highest_ballot(key),
    }
}

/// `min` doubled `attempt` times (at most `doublings_max` times, below 32), never more than
/// `max`: the base of every backoff, before its jitter.
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
