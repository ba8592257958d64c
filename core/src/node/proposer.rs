//! The proposer (core/PROTOCOL.md, "Writing a key", rules 1 to 3 and 6): for each key this
//! node proposes a value for (a client's PUT, or a recovery of a value accepted and never
//! decided), the ballots it runs one after the other until one chooses a value.
//!
//! - The fast round (ballot 0): `Accept(0)` to every participant; chosen when every one
//!   accepted. Skipped when a participant is suspected, when this node's record of the key
//!   shows anything, and after a first attempt.
//! - A classic ballot `b`: `Prepare(b)` to this node's cluster; on promises from a majority of
//!   it, the value is the accepted one with the highest ballot among them (this node's own
//!   only if none accepted anything), then `Accept(b)` to every participant; chosen when a
//!   majority of every cluster accepted.
//! - A failed ballot is followed by a higher one after a wait ordered by the race rule
//!   (`contention.rs`), until the proposer's time is up.
//!
//! It owns the running proposals and its ballot rounds, borrows the environment and what it
//! needs to read of the rest (peers, this node's record of the key), and returns what
//! happened ([`Outcome`]) for the node to route.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Note, Silence};
use crate::membership::{Digest, Membership};
use crate::quorum;
use crate::storage::WriteOp;
use crate::timers::Timer;
use crate::types::{Ballot, ClusterId, Key, NodeId, Proposal, ProposalId, Time};
use crate::wire::{Answer, Message, Request};

use super::contention::{self, Met};
use super::fanout::{self, Peers};
use super::health::Health;
use super::lateness::Lateness;
use super::{Env, InjectedBug, exponential};

pub(crate) struct Proposer {
    running: BTreeMap<Key, Proposing>,
    rounds: Rounds,
    /// How long a ballot's phase 2 (or the fast round) takes here, smoothed: the time another
    /// proposer needs to finish, which one that is behind it waits for.
    phase_two: Duration,
    /// Recent fast rounds' answer times: who made a fast round wait (suspected then).
    lateness: Lateness,
}

/// A proposer puts off its next ballot for another node's higher one at most this many times
/// in a row: that node may have died meanwhile.
const DEFERRALS_MAX: u32 = 2;

/// What a proposer learned. The node stores a chosen value, tells the participants, and
/// answers whoever waits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `chosen` is the key's value: a quorum of this node's ballot accepted it (`ballot`), or
    /// a node answered that it stores it (`ballot` is `None`).
    Chosen {
        key: Key,
        chosen: Proposal,
        ballot: Option<Ballot>,
        /// Nodes known to store it already (they need no Decide).
        storing: Vec<NodeId>,
        /// The participants of the last ballot: whom to tell.
        participants: Arc<Membership>,
        /// Representatives the last ballot's request went to that never answered (their
        /// clusters answered straight, to resends): suspected before the Decide goes out, so
        /// that it takes another path.
        silent_reps: Vec<NodeId>,
    },
    /// A proposer with no value of its own (a recovery, or a PUT that withdrew) found no
    /// value accepted by a majority of its cluster: nothing is chosen for the key (as of its
    /// phase 1).
    NothingChosen { key: Key },
    /// Its time is up, undecided. `left`: the proposal of its own whose Accept had left.
    GaveUp { key: Key, left: Option<ProposalId> },
}

/// One key being proposed.
struct Proposing {
    participants: Arc<Membership>,
    /// The value this node proposes if it finds none accepted: a client's.
    own: Option<Proposal>,
    /// Whether an Accept carrying `own` ever left (a PUT is Busy only if none did).
    own_left: bool,
    /// Whether the fast round may be tried (a retry of a known request, or a recovery, learns
    /// the outcome with a classic ballot instead).
    fast_allowed: bool,
    step: Step,
    attempt: u32,
    /// The highest ballot heard of for the key.
    highest: Ballot,
    attempt_started: Time,
    /// When the current Accepts left (the fast round's, or phase 2's).
    accepts_left: Time,
    give_up_at: Time,
    /// Participants that answered the current ballot (anything).
    answered: BTreeSet<NodeId>,
    /// Participants whose answer makes the current ballot fail there (a refusal, a Nack).
    against: BTreeSet<NodeId>,
    /// Representatives per remote cluster for the current ballot.
    reps: BTreeMap<ClusterId, Rep>,
    /// Where this key's choice of representatives starts (`fanout::spread_of`), fixed for
    /// all its ballots, so that a failover never comes back to a node it left.
    spread: u64,
    /// Proposals found accepted at ballot 0 by a Nack of the fast round (the race rule).
    holders: BTreeSet<ProposalId>,
    /// A Nack named a classic ballot of another node: another proposer is ahead.
    behind: bool,
    /// A Nack named a ballot above this one (maybe a ballot floor): a higher one is needed.
    outdated: bool,
    /// Ballots in a row put off for another proposer's (which may have died since).
    deferrals: u32,
    /// Nodes that answered they store the key.
    storing: Vec<NodeId>,
    /// The current phase's request was sent again to the silent participants (a lost message
    /// costs half a vote timeout, not a ballot).
    resent: bool,
}

#[derive(Default, Clone)]
struct Rep {
    /// How many representatives of the cluster were given up on (the next one is tried).
    failovers: usize,
    /// The representative the last request went to.
    current: Option<NodeId>,
    answered: bool,
}

enum Step {
    Fast {
        /// Who accepted, and when the acceptance arrived (to tell the late ones).
        accepted: BTreeMap<NodeId, Time>,
        /// A majority of every cluster has accepted: the rest get a grace period.
        majority: bool,
    },
    Prepare {
        ballot: Ballot,
        promises: BTreeMap<NodeId, Option<(Ballot, Proposal)>>,
    },
    Accept {
        ballot: Ballot,
        proposal: Proposal,
        accepted: BTreeSet<NodeId>,
    },
    /// Between two ballots.
    Waiting,
}

impl Step {
    fn ballot(&self) -> Option<Ballot> {
        match self {
            Step::Fast { .. } => Some(Ballot::FAST),
            Step::Prepare { ballot, .. } | Step::Accept { ballot, .. } => Some(ballot.clone()),
            Step::Waiting => None,
        }
    }
}

/// Ballot rounds of this node: they never repeat, across restarts too, because the ceiling
/// under which rounds are used is persisted (in blocks) before any ballot under it can leave.
struct Rounds {
    used: u64,
    ceiling: u64,
    block: u64,
}

impl Rounds {
    /// The next round, above `above` and above every round used before.
    fn next(&mut self, env: &mut Env, above: u64) -> u64 {
        let round = self.used.max(above) + 1;
        self.used = round;
        if round >= self.ceiling {
            self.ceiling = round + self.block;
            let op = WriteOp::RoundCeiling(self.ceiling);
            if env.bug(InjectedBug::LazyRoundCeiling) {
                env.out.persist_lazy(op);
            } else {
                env.out.persist(op);
            }
        }
        round
    }
}

/// What starting a ballot needs to read of the rest of the node (with its [`Health`]).
pub(crate) struct Start<'a> {
    pub departed: &'a BTreeSet<NodeId>,
    /// The current membership: a new ballot's participants.
    pub members: &'a Arc<Membership>,
    /// Whether this node's own record of the key shows nothing (the fast round may work).
    pub untouched: bool,
    /// The highest ballot this node's record of the key shows.
    pub local_highest: Ballot,
}

/// Whom an answer comes from and what it answers: a ballot's Prepare (no proposal) or the
/// Accept of a proposal.
pub struct AnswerFrom<'a> {
    pub key: &'a Key,
    pub node: &'a NodeId,
    pub ballot: &'a Ballot,
    pub proposal: Option<&'a ProposalId>,
    /// The membership the node answered in.
    pub digest: Digest,
}

impl Proposer {
    /// `phase_two`: a first guess of how long a phase 2 takes, until ballots measure it.
    pub fn new(round_ceiling: u64, block: u64, phase_two: Duration) -> Proposer {
        assert!(block > 0);
        Proposer {
            running: BTreeMap::new(),
            rounds: Rounds {
                used: round_ceiling,
                ceiling: round_ceiling,
                block,
            },
            phase_two,
            lateness: Lateness::default(),
        }
    }

    // ---------------------------------------------------------------- getters

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_running(&self, key: &Key) -> bool {
        self.running.contains_key(key)
    }

    /// Whether an Accept carrying proposal `p` left for `key`.
    pub fn left(&self, key: &Key, p: &ProposalId) -> bool {
        self.running
            .get(key)
            .is_some_and(|r| r.own_left && r.own.as_ref().is_some_and(|o| o.p == *p))
    }

    /// Who has not answered the current ballot of `key`.
    pub fn silence(&self, key: &Key) -> Silence {
        self.running.get(key).map_or_else(Silence::default, |r| {
            Silence::among(&r.participants, |n| r.answered.contains(n))
        })
    }

    // ---------------------------------------------------------------- starting

    /// Proposes for `key`: `own` (if found nothing accepted) under a new proposer, or joins
    /// the running one (which takes `own` if it has no value of its own yet). `fast`: the fast
    /// round may be tried.
    pub fn start(
        &mut self,
        env: &mut Env,
        start: &Start<'_>,
        health: &Health,
        key: &Key,
        own: Option<Proposal>,
        fast: bool,
    ) {
        let until = env.now + env.config.put_timeout;
        if let Some(r) = self.running.get_mut(key) {
            r.give_up_at = r.give_up_at.max(until);
            if r.own.is_none() {
                r.own = own;
            }
            return;
        }
        let proposing = Proposing {
            participants: start.members.clone(),
            own,
            own_left: false,
            fast_allowed: fast,
            step: Step::Waiting,
            attempt: 0,
            highest: start.local_highest.clone(),
            attempt_started: env.now,
            accepts_left: env.now,
            give_up_at: until,
            answered: BTreeSet::new(),
            against: BTreeSet::new(),
            reps: BTreeMap::new(),
            spread: fanout::spread_of(&env.id, env.now),
            holders: BTreeSet::new(),
            behind: false,
            outdated: false,
            deferrals: 0,
            storing: Vec::new(),
            resent: false,
        };
        self.running.insert(key.clone(), proposing);
        self.begin(env, start, health, key);
    }

    /// This node promised or accepted `ballot` of another node for `key`: that node is
    /// deciding the key, and a ballot of this node would only get in its way. A running
    /// ballot below it stops, and the next one waits as long as a proposer behind waits
    /// (rule 6: a node that sees a higher ballot waits for its Decide before competing).
    pub fn saw_ballot(&mut self, env: &mut Env, key: &Key, ballot: &Ballot) {
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        if ballot.is_fast() || ballot.node.as_ref() == Some(&env.id) {
            return;
        }
        if r.highest < *ballot {
            r.highest = ballot.clone();
        }
        let below = r.step.ballot().is_none_or(|b| b < *ballot);
        if !below {
            return;
        }
        r.behind = true;
        self.fail(env, key);
    }

    /// A client gave up on `p` (it was told Busy): its value must never leave from now on.
    /// Returns whether it never left.
    pub fn withdraw(&mut self, key: &Key, p: &ProposalId) -> bool {
        let Some(r) = self.running.get_mut(key) else {
            return true;
        };
        match &r.own {
            Some(own) if own.p == *p => {
                if r.own_left {
                    return false;
                }
                r.own = None;
                true
            }
            _ => true,
        }
    }

    /// `key` was decided through another path (a Decide, a catch-up, a read): stop.
    pub fn stop(&mut self, env: &mut Env, key: &Key) {
        if let Some(r) = self.running.remove(key) {
            clear_timers(env, key, &r);
        }
    }

    /// Starts the next ballot of `key`: the fast round if it may work, else a classic one.
    fn begin(&mut self, env: &mut Env, start: &Start<'_>, health: &Health, key: &Key) {
        let peers = Peers {
            departed: start.departed,
            health,
        };
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        r.participants = start.members.clone();
        r.attempt_started = env.now;
        r.answered.clear();
        r.against.clear();
        r.holders.clear();
        r.behind = false;
        r.outdated = false;
        // Representatives that failed over stay failed over for the next ballot.
        let before = std::mem::take(&mut r.reps);
        r.reps = r
            .participants
            .clusters()
            .filter(|(c, _)| **c != env.cluster)
            .map(|(c, _)| {
                let failovers = before.get(c).map_or(0, |rep| rep.failovers);
                let rep = Rep {
                    failovers,
                    ..Rep::default()
                };
                (c.clone(), rep)
            })
            .collect();
        let fast = r.attempt == 0
            && r.fast_allowed
            && start.untouched
            && r.own.is_some()
            && !health.any_suspect(&r.participants, env.now);
        r.attempt += 1;
        r.resent = false;
        if r.highest < start.local_highest {
            let foreign = start.local_highest.node.as_ref() != Some(&env.id);
            r.highest = start.local_highest.clone();
            if foreign && r.attempt > 1 && r.deferrals < DEFERRALS_MAX {
                r.deferrals += 1;
                // Since this proposer last looked, another one ran a higher ballot here: it is
                // deciding the key. Wait for its Decide rather than preempt it.
                r.behind = true;
                r.step = Step::Waiting;
                self.fail(env, key);
                return;
            }
        }
        r.deferrals = 0;
        if fast {
            r.step = Step::Fast {
                accepted: BTreeMap::new(),
                majority: false,
            };
            r.own_left = true;
            r.accepts_left = env.now;
            let own = r.own.clone().expect("checked above");
            self.send_accept(env, &peers, key, Ballot::FAST, own, |_| true);
        } else {
            let round = self.rounds.next(env, r.highest.round);
            let ballot = Ballot::classic(round, env.id.clone());
            r.highest = r.highest.clone().max(ballot.clone());
            r.step = Step::Prepare {
                ballot: ballot.clone(),
                promises: BTreeMap::new(),
            };
            let prepare = Request::Prepare {
                key: key.clone(),
                ballot,
                digest: r.participants.digest(),
            };
            let own_cluster = r.participants.nodes_of(&env.cluster).to_vec();
            for n in own_cluster {
                if !start.departed.contains(&n) {
                    env.out.send(n, Message::Request(prepare.clone()));
                }
            }
        }
        env.timers.set(
            Timer::Phase(key.clone()),
            env.now + env.config.vote_timeout / 2,
        );
    }

    /// Sends `Accept(ballot, proposal)` to the participants `wanted` keeps and arms the
    /// representatives' timers.
    fn send_accept(
        &mut self,
        env: &mut Env,
        peers: &Peers<'_>,
        key: &Key,
        ballot: Ballot,
        proposal: Proposal,
        wanted: impl Fn(&NodeId) -> bool,
    ) {
        let r = self.running.get_mut(key).expect("running");
        let accept = Request::Accept {
            key: key.clone(),
            ballot,
            proposal,
            digest: r.participants.digest(),
        };
        let reps = &r.reps;
        let relayed = fanout::send_to_participants(
            env,
            peers,
            &r.participants,
            r.spread,
            |c| reps.get(c).map_or(0, |rep| rep.failovers),
            &accept,
            wanted,
        );
        for (c, rep) in relayed {
            let Some(r) = self.running.get_mut(key).and_then(|r| r.reps.get_mut(&c)) else {
                continue;
            };
            r.current = Some(rep);
            if !r.answered {
                env.timers.set(
                    Timer::Representative(key.clone(), c),
                    env.now + env.config.representative_timeout,
                );
            }
        }
    }

    // ---------------------------------------------------------------- answers

    /// A representative of `cluster` answered for `key` at `ballot` (for `proposal`): if that
    /// is the current Accept, the representative works.
    pub fn representative_answered(
        &mut self,
        env: &mut Env,
        key: &Key,
        cluster: &ClusterId,
        (ballot, proposal): (&Ballot, Option<&ProposalId>),
    ) {
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        let current = match &r.step {
            Step::Fast { .. } => ballot.is_fast() && proposal == r.own.as_ref().map(|o| &o.p),
            Step::Accept {
                ballot: b,
                proposal: p,
                ..
            } => b == ballot && proposal == Some(&p.p),
            Step::Prepare { .. } | Step::Waiting => false,
        };
        if let (true, Some(rep)) = (current, r.reps.get_mut(cluster)) {
            rep.answered = true;
            env.timers
                .cancel(&Timer::Representative(key.clone(), cluster.clone()));
        }
    }

    /// `from.node` answered `answer` about `from.key` at `from.ballot` (to a Prepare, or to an
    /// Accept of `from.proposal`).
    pub fn on_answer(
        &mut self,
        env: &mut Env,
        start: &Start<'_>,
        health: &mut Health,
        from: AnswerFrom<'_>,
        answer: Answer,
    ) -> Option<Outcome> {
        let AnswerFrom {
            key,
            node,
            ballot,
            proposal,
            digest,
        } = from;
        let r = self.running.get_mut(key)?;
        if !r.participants.contains(node) {
            return None;
        }
        if matches!(answer, Answer::Promise { .. } | Answer::Accepted)
            && digest != r.participants.digest()
        {
            // A promise or an accept counts only in the membership it was given in.
            return None;
        }
        if let Answer::Nack { promised, .. } = &answer
            && *promised > r.highest
        {
            r.highest = promised.clone();
        }
        if let Answer::Stored { chosen } = answer {
            if !r.storing.contains(node) {
                r.storing.push(node.clone());
            }
            return Some(self.finish(env, key, chosen, None));
        }
        let current = r.step.ballot();
        let answers_current = match &r.step {
            Step::Fast { .. } => proposal == r.own.as_ref().map(|o| &o.p),
            Step::Accept { proposal: p, .. } => proposal == Some(&p.p),
            Step::Prepare { .. } => proposal.is_none(),
            Step::Waiting => false,
        };
        if current.as_ref() != Some(ballot) || !answers_current {
            return None;
        }
        r.answered.insert(node.clone());
        match answer {
            Answer::Stored { .. } => unreachable!("handled above"),
            Answer::Refused { .. } => {
                r.against.insert(node.clone());
            }
            Answer::Nack {
                promised,
                holder,
                folded,
            } => {
                r.against.insert(node.clone());
                if let Some(h) = holder
                    && ballot.is_fast()
                {
                    r.holders.insert(h);
                }
                // Another node's ballot at work on the key: wait for it. A floor is no proposer
                // (and a classic ballot above it is all it asks for).
                if !promised.is_fast() && promised.node.as_ref() != Some(&env.id) && !folded {
                    r.behind = true;
                }
                if promised > *ballot {
                    r.outdated = true;
                }
            }
            Answer::Accepted => match &mut r.step {
                Step::Fast { accepted, majority } => {
                    accepted.entry(node.clone()).or_insert(env.now);
                    let everyone = quorum::everyone(&r.participants, |n| accepted.contains_key(n))
                        || (env.bug(InjectedBug::FastRoundAllButOne)
                            && r.participants.len() > 1
                            && accepted.len() + 1 >= r.participants.len());
                    if everyone {
                        // The fast round waited for every answer: the late ones are suspected
                        // (the next creates go without them), the others answered in time.
                        let late = self.lateness.judge(
                            &r.participants,
                            &env.cluster,
                            accepted,
                            r.attempt_started,
                            env.config.fast_grace_min,
                        );
                        let late_reps = late
                            .clusters
                            .iter()
                            .filter_map(|c| r.reps.get(c).and_then(|rep| rep.current.as_ref()));
                        let slow: BTreeSet<&NodeId> = late.nodes.iter().chain(late_reps).collect();
                        for n in accepted.keys() {
                            if slow.contains(n) {
                                health.suspect(n, env.now, env.config.suspect_for);
                            } else {
                                health.vouch(n);
                            }
                        }
                        let own = r.own.clone().expect("the fast round carries its own value");
                        return Some(self.finish(env, key, own, Some(Ballot::FAST)));
                    }
                    if !*majority
                        && quorum::every_cluster_majority(&r.participants, |n| {
                            accepted.contains_key(n)
                        })
                    {
                        *majority = true;
                        let took = env.now.since(r.attempt_started);
                        let grace = took.max(env.config.fast_grace_min);
                        env.timers.set(Timer::Phase(key.clone()), env.now + grace);
                    }
                }
                Step::Accept {
                    accepted, proposal, ..
                } => {
                    accepted.insert(node.clone());
                    let own_cluster_only = env.bug(InjectedBug::PhaseTwoOwnClusterOnly);
                    let chosen = if own_cluster_only {
                        quorum::cluster_majority(&r.participants, &env.cluster, |n| {
                            accepted.contains(n)
                        })
                    } else {
                        quorum::every_cluster_majority(&r.participants, |n| accepted.contains(n))
                    };
                    if chosen {
                        // Whoever accepted by the time the quorum was complete answered in time.
                        for n in accepted.iter() {
                            health.vouch(n);
                        }
                        let chosen = proposal.clone();
                        return Some(self.finish(env, key, chosen, Some(ballot.clone())));
                    }
                }
                Step::Prepare { .. } | Step::Waiting => {}
            },
            Answer::Promise { accepted } => {
                if let Step::Prepare { promises, .. } = &mut r.step {
                    promises.insert(node.clone(), accepted);
                    let promised = quorum::cluster_majority(&r.participants, &env.cluster, |n| {
                        promises.contains_key(n)
                    });
                    if promised {
                        let peers = Peers {
                            departed: start.departed,
                            health: &*health,
                        };
                        return self.phase_two(env, &peers, key, ballot.clone());
                    }
                }
            }
        }
        let nacked = self
            .running
            .get(key)
            .is_some_and(|r| r.behind || r.outdated);
        if nacked || self.hopeless(env, key) {
            // A higher ballot of another node exists: this one would only be nacked further
            // on (and waits here for a node that may be down, in vain).
            self.fail(env, key);
        }
        None
    }

    /// Promises from a majority of this node's cluster: pick the value and send the Accepts.
    fn phase_two(
        &mut self,
        env: &mut Env,
        peers: &Peers<'_>,
        key: &Key,
        ballot: Ballot,
    ) -> Option<Outcome> {
        let r = self.running.get_mut(key).expect("running");
        let Step::Prepare { promises, .. } = &r.step else {
            unreachable!("phase two follows phase one")
        };
        let found = highest_accepted(promises, r.own.as_ref());
        let value = if env.bug(InjectedBug::IgnoreAcceptedValues) && r.own.is_some() {
            r.own.clone()
        } else {
            found.or_else(|| r.own.clone())
        };
        let Some(value) = value else {
            self.stop(env, key);
            return Some(Outcome::NothingChosen { key: key.clone() });
        };
        if r.own.as_ref().is_some_and(|o| o.p == value.p) {
            r.own_left = true;
        }
        r.step = Step::Accept {
            ballot: ballot.clone(),
            proposal: value.clone(),
            accepted: BTreeSet::new(),
        };
        r.answered.clear();
        r.against.clear();
        r.resent = false;
        r.accepts_left = env.now;
        for rep in r.reps.values_mut() {
            rep.answered = false;
        }
        self.send_accept(env, peers, key, ballot, value, |_| true);
        env.timers.set(
            Timer::Phase(key.clone()),
            env.now + env.config.vote_timeout / 2,
        );
        None
    }

    /// Whether the current ballot can no longer reach its quorum (too many refused it).
    fn hopeless(&self, env: &Env, key: &Key) -> bool {
        let Some(r) = self.running.get(key) else {
            return false;
        };
        let possible = |n: &NodeId| !r.against.contains(n);
        match &r.step {
            Step::Fast { .. } => !r.against.is_empty(),
            Step::Prepare { .. } => {
                !quorum::cluster_majority(&r.participants, &env.cluster, possible)
            }
            Step::Accept { .. } => !quorum::every_cluster_majority(&r.participants, possible),
            Step::Waiting => false,
        }
    }

    /// The current ballot failed: wait (by the race rule), then try a higher one.
    fn fail(&mut self, env: &mut Env, key: &Key) {
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        let mine = r.own.as_ref().map(|o| o.p.clone());
        let met = match (&mine, r.behind) {
            (_, true) => Met::Behind,
            (Some(p), false) => contention::met(key, p, r.holders.iter()),
            (None, false) => Met::Nobody,
        };
        let took = env.now.since(r.attempt_started);
        let waiting = matches!(r.step, Step::Waiting);
        r.step = Step::Waiting;
        let attempt = r.attempt;
        let pending = env.timers.get(&Timer::Retry(key.clone()));
        clear_timers(env, key, r);
        let (min, max) = (env.config.backoff_min, env.config.backoff_max);
        let backoff = exponential(min, max, attempt, 10);
        // A round trip stretched by a timeout says little about the race: capped. A proposer
        // that was waiting already measures from the ballot it last ran.
        let round_trip = took.min(env.config.put_timeout / 8);
        // Behind another proposer: give it the time its phase 2 takes (a Nack may come from
        // this node's own cluster, after a LAN round trip, while the ballot that caused it
        // needs a WAN one).
        let round_trip = match met {
            Met::Behind => round_trip.max(self.phase_two.min(env.config.put_timeout / 8)),
            Met::Ahead | Met::Nobody => round_trip,
        };
        let mut delay = contention::retry_delay(met, round_trip, backoff, |d| env.jitter(d));
        if met == Met::Behind {
            // The one ahead may need a few resends (a lost message, a representative that is
            // down) to finish: preempting it then would only start the race over.
            delay = delay.max(env.config.vote_timeout + env.jitter(env.config.vote_timeout / 2));
        }
        let mut at = env.now + delay;
        if waiting && let Some(pending) = pending {
            at = at.max(pending);
        }
        env.timers.set(Timer::Retry(key.clone()), at);
    }

    /// `key` is chosen: forget its proposer.
    fn finish(
        &mut self,
        env: &mut Env,
        key: &Key,
        chosen: Proposal,
        ballot: Option<Ballot>,
    ) -> Outcome {
        let r = self.running.remove(key).expect("running");
        clear_timers(env, key, &r);
        if ballot.is_some() {
            // Smoothed over the last eight ballots that chose a value.
            let took = env.now.since(r.accepts_left);
            self.phase_two = (self.phase_two * 7 + took) / 8;
        }
        if let Some(ballot) = &ballot {
            env.out.note(Note::Decided {
                key: key.clone(),
                chosen: chosen.p.clone(),
                ballot: ballot.clone(),
            });
        }
        let silent_reps = r
            .reps
            .values()
            .filter(|rep| !rep.answered)
            .filter_map(|rep| rep.current.clone())
            .collect();
        Outcome::Chosen {
            key: key.clone(),
            chosen,
            ballot,
            storing: r.storing,
            participants: r.participants,
            silent_reps,
        }
    }

    // ---------------------------------------------------------------- timers

    /// The current ballot's phase timer. In the fast round, the grace after a majority (or
    /// half the vote timeout) ran out: the silent participants are suspected and a classic
    /// ballot follows at once. In a classic phase, every half vote timeout: the request goes
    /// again to the silent participants (through the next representative of a cluster none of
    /// whose nodes answered); after a whole one, the silent nodes are suspected too. Only a
    /// refusal or a higher ballot ends a classic ballot: late answers still count, where a new
    /// ballot would start over.
    pub fn on_phase_timer(
        &mut self,
        env: &mut Env,
        start: &Start<'_>,
        health: &mut Health,
        key: &Key,
    ) -> Option<Outcome> {
        let r = self.running.get_mut(key)?;
        if env.now >= r.give_up_at {
            return self.give_up(env, key);
        }
        let fast = matches!(r.step, Step::Fast { .. });
        if matches!(r.step, Step::Waiting) {
            return None;
        }
        if fast {
            // The classic ballot that follows tries the next representative of a cluster that
            // did not answer the fast round, and the silent one is suspected: a healthy one
            // answers once a majority of its cluster did, well within half a vote timeout, and
            // the Decide must not go its way (suspicion only costs speed, never safety).
            for rep in r.reps.values_mut() {
                if !rep.answered {
                    if let Some(silent) = rep.current.take() {
                        health.suspect(&silent, env.now, env.config.suspect_for);
                    }
                    rep.failovers += 1;
                }
            }
        }
        if fast || r.resent {
            // The silent nodes of clusters that answered otherwise missed the ballot.
            let missed: Vec<NodeId> = r
                .participants
                .clusters()
                .filter(|(_, nodes)| nodes.iter().any(|n| r.answered.contains(n)))
                .flat_map(|(_, nodes)| nodes.iter())
                .filter(|n| !r.answered.contains(*n) && **n != env.id)
                .cloned()
                .collect();
            for n in &missed {
                health.suspect(n, env.now, env.config.suspect_for);
            }
        }
        if fast {
            clear_timers(env, key, r);
            self.begin(env, start, health, key);
            return None;
        }
        // A representative that has not answered by now may be what failed (down, or a broken
        // link): the resend goes around it, and it is suspected, so that the Decide and the
        // next ballots take another path. Without this, every ballot would complete through
        // resends, half a vote timeout late, before the representative's own timer blames it.
        if matches!(r.step, Step::Accept { .. }) {
            for rep in r.reps.values_mut() {
                if let (false, Some(silent)) = (rep.answered, rep.current.take()) {
                    health.suspect(&silent, env.now, env.config.suspect_for);
                    rep.failovers += 1;
                }
            }
        }
        r.resent = !r.resent;
        self.resend(env, start, key);
        let again = env.now + env.config.vote_timeout / 2;
        env.timers.set(Timer::Phase(key.clone()), again);
        None
    }

    /// Sends the current phase's request again, straight to each participant that has not
    /// answered (not through a representative: a resend is the uncommon case, and a
    /// representative may be what failed).
    fn resend(&mut self, env: &mut Env, start: &Start<'_>, key: &Key) {
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        let silent: Vec<NodeId> = r
            .participants
            .nodes()
            .filter(|n| !r.answered.contains(*n) && !start.departed.contains(*n))
            .cloned()
            .collect();
        let request = match &r.step {
            Step::Prepare { ballot, .. } => Request::Prepare {
                key: key.clone(),
                ballot: ballot.clone(),
                digest: r.participants.digest(),
            },
            Step::Accept {
                ballot, proposal, ..
            } => Request::Accept {
                key: key.clone(),
                ballot: ballot.clone(),
                proposal: proposal.clone(),
                digest: r.participants.digest(),
            },
            Step::Fast { .. } | Step::Waiting => return,
        };
        let own_cluster_only = matches!(request, Request::Prepare { .. });
        for n in silent {
            if !own_cluster_only || r.participants.cluster_of(&n) == Some(&env.cluster) {
                env.out.send(n, Message::Request(request.clone()));
            }
        }
    }

    /// The wait between two ballots is over.
    pub fn on_retry_timer(
        &mut self,
        env: &mut Env,
        start: &Start<'_>,
        health: &Health,
        key: &Key,
    ) -> Option<Outcome> {
        let r = self.running.get(key)?;
        if env.now >= r.give_up_at {
            return self.give_up(env, key);
        }
        self.begin(env, start, health, key);
        None
    }

    /// A representative did not answer in time: it is suspected (the next ballot goes
    /// through the next node of its cluster), and the current Accept goes straight to the
    /// nodes of its cluster that have not answered.
    pub fn on_representative_timer(
        &mut self,
        env: &mut Env,
        departed: &BTreeSet<NodeId>,
        health: &mut Health,
        key: &Key,
        cluster: &ClusterId,
    ) {
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        let Some(rep) = r.reps.get_mut(cluster) else {
            return;
        };
        if rep.answered {
            return;
        }
        if let Some(silent_rep) = rep.current.take() {
            health.suspect(&silent_rep, env.now, env.config.suspect_for);
        }
        rep.failovers += 1;
        let (ballot, proposal) = match &r.step {
            Step::Fast { .. } => match &r.own {
                Some(own) => (Ballot::FAST, own.clone()),
                None => return,
            },
            Step::Accept {
                ballot, proposal, ..
            } => (ballot.clone(), proposal.clone()),
            Step::Prepare { .. } | Step::Waiting => return,
        };
        let request = Request::Accept {
            key: key.clone(),
            ballot,
            proposal,
            digest: r.participants.digest(),
        };
        for n in r.participants.nodes_of(cluster) {
            if !r.answered.contains(n) && !departed.contains(n) {
                env.out.send(n.clone(), Message::Request(request.clone()));
            }
        }
    }

    fn give_up(&mut self, env: &mut Env, key: &Key) -> Option<Outcome> {
        let r = self.running.remove(key)?;
        clear_timers(env, key, &r);
        let left = r.own.filter(|_| r.own_left).map(|o| o.p);
        Some(Outcome::GaveUp {
            key: key.clone(),
            left,
        })
    }
}

/// The accepted proposal with the highest ballot among the promises (phase 1's rule). At
/// ballot 0, where promises may carry different proposals, any of them will do (a value
/// chosen at ballot 0 was accepted by every node, so then they all agree): this node's own
/// first, then the lowest proposal id, so that every run picks the same.
fn highest_accepted(
    promises: &BTreeMap<NodeId, Option<(Ballot, Proposal)>>,
    own: Option<&Proposal>,
) -> Option<Proposal> {
    let accepted = promises.values().flatten();
    let top = accepted.clone().map(|(b, _)| b).max()?;
    let at_top: Vec<&Proposal> = accepted.filter(|(b, _)| b == top).map(|(_, a)| a).collect();
    if let Some(own) = own
        && let Some(mine) = at_top.iter().find(|a| a.p == own.p)
    {
        return Some((*mine).clone());
    }
    at_top.into_iter().min_by(|a, b| a.p.cmp(&b.p)).cloned()
}

fn clear_timers(env: &mut Env, key: &Key, r: &Proposing) {
    env.timers.cancel(&Timer::Phase(key.clone()));
    env.timers.cancel(&Timer::Retry(key.clone()));
    for c in r.reps.keys() {
        env.timers
            .cancel(&Timer::Representative(key.clone(), c.clone()));
    }
}
