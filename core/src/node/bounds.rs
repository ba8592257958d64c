//! Bounds and shapes that peer and client input cannot get past (core/PROTOCOL.md, "Bounds"):
//! input that breaks them is dropped with `Note::PeerInputRejected` (or refused `Invalid`)
//! and changes nothing. Deeper checks happen where a message is used.

use crate::api::Invalid;
use crate::config::Config;
use crate::faults::{PeerFault, ROUND_MAX};
use crate::membership::Membership;
use crate::storage::DurableKey;
use crate::types::{Ballot, Key, Proposal, RequestId, Value};
use crate::wire::{Answer, Message, QueryState, ReadState, Request, Response};

use super::Node;

impl Node {
    /// Bounds and shapes a peer cannot get past. Deeper checks happen where a message is used.
    pub(super) fn check_message(&self, msg: &Message) -> Result<(), PeerFault> {
        let nodes_max = self.env.config.cluster_nodes_max;
        match msg {
            Message::Request(req) => self.check_request(req),
            Message::Response(resp) => self.check_response(resp),
            Message::Relay {
                targets, request, ..
            } => {
                if targets.len() > nodes_max {
                    return Err(PeerFault::RelayTooManyTargets {
                        targets: targets.len(),
                        max: nodes_max,
                    });
                }
                self.check_request(request)
            }
            Message::RelayReply { responses, .. } => {
                if responses.len() > nodes_max {
                    return Err(PeerFault::RelayReplyTooManyResponses {
                        responses: responses.len(),
                    });
                }
                responses.iter().try_for_each(|r| self.check_response(r))
            }
            Message::SyncRequest { after, .. } => {
                after.as_ref().map_or(Ok(()), |k| self.check_key(k))
            }
            Message::SyncPage {
                after,
                entries,
                floor,
                ..
            } => {
                if entries.len() > self.env.config.sync_page_keys {
                    return Err(PeerFault::SyncPageTooLong {
                        keys: entries.len(),
                    });
                }
                if let Some(k) = after {
                    self.check_key(k)?;
                }
                check_ballot(floor)?;
                for (key, state) in entries {
                    self.check_key(key)?;
                    self.check_record(state)?;
                }
                Ok(())
            }
            Message::CatchUpPage {
                entries,
                last,
                latest,
            } => {
                if entries.len() > self.env.config.sync_page_keys {
                    return Err(PeerFault::CatchUpPageTooLong {
                        keys: entries.len(),
                    });
                }
                if last > latest {
                    return Err(PeerFault::CatchUpPageOutOfOrder);
                }
                for (key, chosen) in entries {
                    self.check_key(key)?;
                    self.check_proposal(chosen)?;
                }
                Ok(())
            }
            Message::SyncRefused { .. }
            | Message::CatchUp { .. }
            | Message::LeaveCheck { .. }
            | Message::LeaveClear { .. }
            | Message::Removed { .. }
            | Message::RemoveCheck { .. } => Ok(()),
            Message::RemoveCheckReply { cluster, .. } => {
                if cluster.len() > nodes_max {
                    return Err(PeerFault::RemoveCheckReplyTooLong {
                        nodes: cluster.len(),
                    });
                }
                Ok(())
            }
            Message::View { members, departed } => {
                if departed.len() > self.departed_listed_max() {
                    return Err(PeerFault::ViewTooManyDeparted {
                        departed: departed.len(),
                    });
                }
                self.check_membership(members)
            }
        }
    }

    /// The key, ballot and value a request carries.
    fn check_request(&self, req: &Request) -> Result<(), PeerFault> {
        match req {
            Request::Prepare { key, ballot, .. } => {
                self.check_key(key)?;
                check_ballot(ballot)?;
                if ballot.is_fast() {
                    return Err(PeerFault::MalformedBallot {
                        ballot: ballot.clone(),
                    });
                }
                Ok(())
            }
            Request::Accept {
                key,
                ballot,
                proposal,
                ..
            } => {
                self.check_key(key)?;
                check_ballot(ballot)?;
                self.check_proposal(proposal)
            }
            Request::Decide { key, chosen } => {
                self.check_key(key)?;
                self.check_proposal(chosen)
            }
            Request::Query { key, .. } | Request::Read { key, .. } => self.check_key(key),
        }
    }

    /// The key, ballots and values a response carries.
    fn check_response(&self, resp: &Response) -> Result<(), PeerFault> {
        match resp {
            Response::Ballot {
                key,
                ballot,
                answer,
                ..
            } => {
                self.check_key(key)?;
                check_ballot(ballot)?;
                match answer {
                    Answer::Promise {
                        accepted: Some((b, a)),
                    } => {
                        check_ballot(b)?;
                        self.check_proposal(a)
                    }
                    Answer::Nack { promised, .. } => check_ballot(promised),
                    Answer::Stored { chosen } => self.check_proposal(chosen),
                    Answer::Promise { accepted: None }
                    | Answer::Accepted
                    | Answer::Refused { .. } => Ok(()),
                }
            }
            Response::Query { key, state, .. } => {
                self.check_key(key)?;
                match state {
                    QueryState::Stored(a) => self.check_proposal(a),
                    QueryState::Accepted(b, a) => {
                        check_ballot(b)?;
                        self.check_proposal(a)
                    }
                    QueryState::Nothing | QueryState::Refused(_) => Ok(()),
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

    /// A record copied from a member.
    fn check_record(&self, record: &DurableKey) -> Result<(), PeerFault> {
        match record {
            DurableKey::Stored { chosen, .. } => self.check_proposal(chosen),
            DurableKey::Open { promised, accepted } => {
                check_ballot(promised)?;
                if let Some((b, a)) = accepted {
                    check_ballot(b)?;
                    self.check_proposal(a)?;
                }
                Ok(())
            }
        }
    }

    /// A proposal's value and request id within the configured sizes.
    fn check_proposal(&self, proposal: &Proposal) -> Result<(), PeerFault> {
        self.check_value(&proposal.value)?;
        if let Some(id) = &proposal.request {
            let bytes = id.as_str().len();
            let max = self.env.config.request_id_bytes_max;
            if bytes == 0 || bytes > max {
                return Err(PeerFault::Invalid(Invalid::RequestIdTooLong { bytes, max }));
            }
        }
        Ok(())
    }

    /// A key within the configured size.
    fn check_key(&self, key: &Key) -> Result<(), PeerFault> {
        validate_key(&self.env.config, key).map_err(PeerFault::Invalid)
    }

    /// A value within the configured size.
    fn check_value(&self, value: &Value) -> Result<(), PeerFault> {
        if value.len() > self.env.config.value_bytes_max {
            return Err(PeerFault::Invalid(Invalid::ValueTooLong {
                bytes: value.len(),
                max: self.env.config.value_bytes_max,
            }));
        }
        Ok(())
    }

    /// A membership within the configured clusters and nodes per cluster.
    fn check_membership(&self, m: &Membership) -> Result<(), PeerFault> {
        if m.cluster_count() > self.env.config.clusters_max
            || m.clusters()
                .any(|(_, n)| n.len() > self.env.config.cluster_nodes_max)
        {
            return Err(PeerFault::MembershipOverLimits);
        }
        Ok(())
    }
}

/// A ballot whose round and node go together, with a round a node could have used.
fn check_ballot(ballot: &Ballot) -> Result<(), PeerFault> {
    if !ballot.is_well_formed() || ballot.round > ROUND_MAX {
        return Err(PeerFault::MalformedBallot {
            ballot: ballot.clone(),
        });
    }
    Ok(())
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
