//! Bounds and shapes that peer and client input cannot get past (core/PROTOCOL.md, "Bounds"):
//! input that breaks them is dropped with `Note::PeerInputRejected` (or refused `Invalid`)
//! and changes nothing. Deeper checks happen where a message is used.

use crate::api::Invalid;
use crate::config::Config;
use crate::membership::Membership;
use crate::storage::DurableKey;
use crate::types::{Key, RequestId, Value};
use crate::wire::{Message, ReadState, Request, Response, Vote};

use super::Node;
use super::removal::OPEN_LISTED_MAX;

impl Node {
    /// Bounds and shapes a peer cannot get past. Deeper checks happen where a message is used.
    pub(super) fn check_message(&self, msg: &Message) -> Result<(), String> {
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

    /// The key and value a request carries.
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

    /// The key and value a response carries.
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

    /// A key within the configured size.
    fn check_key(&self, key: &Key) -> Result<(), String> {
        validate_key(&self.config, key).map_err(|e| e.to_string())
    }

    /// A value within the configured size.
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

    /// A membership within the configured clusters and nodes per cluster.
    fn check_membership(&self, m: &Membership) -> Result<(), String> {
        if m.cluster_count() > self.config.clusters_max
            || m.clusters()
                .any(|(_, n)| n.len() > self.config.cluster_nodes_max)
        {
            return Err("membership over the configured limits".into());
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
