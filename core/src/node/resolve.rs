//! Votes and decisions: collecting the votes of a proposal (as its coordinator or as a
//! resolver), applying the decision rule of `decider.rs`, telling every participant, answering
//! whoever waits; and Resolve(P) rounds with their backoff (core/PROTOCOL.md, "Writing a key",
//! steps 3 and 6, and "Resolve(P)").

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Note, Silence};
use crate::membership::Membership;
use crate::timers::Timer;
use crate::types::{ClusterId, Key, NodeId, ProposalId};
use crate::wire::{DenyReason, Message, Request, Vote};

use super::contention;
use super::decider::{self, Decider, Phase, Rule};
use super::{InjectedBug, Node, exponential};

impl Node {
    /// A participant's vote on `p` reached this node (directly or through a representative).
    pub(super) fn on_vote_response(&mut self, p: ProposalId, node: NodeId, vote: Vote) {
        match vote {
            Vote::Denied {
                reason: DenyReason::Departed,
                ..
            } => self.on_departed_vote(&node),
            Vote::Denied {
                reason: DenyReason::MembershipChanged,
                ..
            } if self.deciders.contains_key(&p) => {
                // The views differ: send ours, so that the next attempt finds them equal
                // (core/PROTOCOL.md, "Views").
                self.send_view(&node);
            }
            _ => {}
        }
        self.on_vote(&p, node, vote);
    }

    /// Counts `node`'s vote on `p`, and decides if it can.
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
    pub(super) fn evaluate(&mut self, p: &ProposalId) {
        let Some(d) = self.deciders.get(p) else {
            return;
        };
        if let Phase::Confirming { committed, .. } = d.phase {
            if decider::confirmed(
                &d.participants,
                self.members.departed(),
                &d.votes,
                committed,
            ) {
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
        let decision = decider::decision(&d.participants, self.members.departed(), &d.votes, rule);
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

    /// Sends Commit(P) or Abort(P) to every participant (and applies it to a reservation
    /// copied here, for a joining node that is no participant).
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
        // Every path here (a decision, a Commit or Abort learned) skips a confirming decider:
        // an outcome is reached once.
        assert!(
            !matches!(d.phase, Phase::Confirming { .. }),
            "{p} decided twice"
        );
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
        let votes = &self.deciders[p].votes;
        let denial = votes.stored_elsewhere();
        let met = contention::met(&self.deciders[p].key, p, votes.holders());
        let passing = votes.only_passing_refusals(|q| {
            q.coordinator == self.id && q != p && !self.deciders.contains_key(q)
        });
        if !self.deciders[p].confirm {
            self.drop_decider(p);
        }
        if let Some(op) = op {
            self.finish_attempt(op, committed, denial, met, passing);
        }
    }

    /// Forgets the vote collection of `p` and its timers.
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
    pub(super) fn learned(&mut self, p: &ProposalId, committed: bool) {
        if let Some(d) = self.deciders.get(p) {
            if matches!(d.phase, Phase::Confirming { .. }) {
                return;
            }
            self.finish_decider(p, committed);
        }
    }

    /// Votes are still missing at `vote_timeout`: the coordinator resolves.
    pub(super) fn on_vote_timeout(&mut self, p: &ProposalId) {
        let Some(d) = self.deciders.get(p) else {
            return;
        };
        let (key, participants) = (d.key.clone(), d.participants.clone());
        self.resolve(p, &key, participants);
    }

    /// Starts (or joins) the resolution of `p`. Returns false if there is no room for it.
    pub(super) fn resolve(
        &mut self,
        p: &ProposalId,
        key: &Key,
        participants: Arc<Membership>,
    ) -> bool {
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

    /// Resolves `p`, or, when there is no room for another resolution, tries again after
    /// `retry_in` (through the reservation's lease timer).
    pub(super) fn resolve_or_retry(
        &mut self,
        p: ProposalId,
        key: &Key,
        participants: Arc<Membership>,
        retry_in: Duration,
    ) {
        if !self.resolve(&p, key, participants) {
            self.timers.set(Timer::Lease(p), self.now + retry_in);
        }
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

    /// The next round of a resolution is due.
    pub(super) fn on_resolve_timer(&mut self, p: &ProposalId) {
        let Some(d) = self.deciders.get_mut(p) else {
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
            || self.ledger.reserved_key(p).is_some()
            || self.readers.contains_key(p);
        if !needed {
            self.drop_decider(p);
            self.check_leave_complete();
            return;
        }
        self.resolve_round(p);
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

    /// Who has not voted on `p` (nobody, if no vote collection runs for it).
    pub(super) fn silence(&self, p: &ProposalId) -> Silence {
        self.deciders
            .get(p)
            .map_or_else(Silence::default, Decider::silence)
    }
}
