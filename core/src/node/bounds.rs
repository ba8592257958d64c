//! Bounds and shapes that peer and client input cannot get past (core/PROTOCOL.md, "Bounds"):
//! input that breaks them is dropped with `Note::PeerInputRejected` (or refused `Invalid`)
//! and changes nothing. Deeper checks happen where a message is used.

use crate::api::Invalid;
use crate::config::Config;
use crate::faults::PeerFault;
use crate::membership::Membership;
use crate::storage::DurableKey;
use crate::types::{Key, RequestId, Value};
use crate::wire::{Message, ReadState, Request, Response, Vote};

use super::Node;
use super::removal::OPEN_LISTED_MAX;

impl Node {
    /// Bounds and shapes a peer cannot get past. Deeper checks happen where a message is used.
    pub(super) fn check_message(&self, msg: &Message) -> Result<(), PeerFault> {
        let nodes_max = self.config.cluster_nodes_max;
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
            Message::SyncRequest { after } => after.as_ref().map_or(Ok(()), |k| self.check_key(k)),
            Message::SyncPage { entries, .. } => {
                if entries.len() > self.config.sync_page_keys {
                    return Err(PeerFault::SyncPageTooLong {
                        keys: entries.len(),
                    });
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
                    return Err(PeerFault::RemoveCheckReplyTooLong { open: open.len() });
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
            Message::Probe { .. } | Message::ProbeReply { .. } => Ok(()),
        }
    }

    /// The key and value a request carries.
    fn check_request(&self, req: &Request) -> Result<(), PeerFault> {
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

    /// The key and value a response carries.
    fn check_response(&self, resp: &Response) -> Result<(), PeerFault> {
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

    /// A key within the configured size.
    fn check_key(&self, key: &Key) -> Result<(), PeerFault> {
        validate_key(&self.config, key).map_err(PeerFault::Invalid)
    }

    /// A value within the configured size.
    fn check_value(&self, value: &Value) -> Result<(), PeerFault> {
        if value.len() > self.config.value_bytes_max {
            return Err(PeerFault::Invalid(Invalid::ValueTooLong {
                bytes: value.len(),
                max: self.config.value_bytes_max,
            }));
        }
        Ok(())
    }

    /// A membership within the configured clusters and nodes per cluster.
    fn check_membership(&self, m: &Membership) -> Result<(), PeerFault> {
        if m.cluster_count() > self.config.clusters_max
            || m.clusters()
                .any(|(_, n)| n.len() > self.config.cluster_nodes_max)
        {
            return Err(PeerFault::MembershipOverLimits);
        }
        Ok(())
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
