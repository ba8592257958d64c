//! The libp2p side of a node: its behaviours, the private protocol names of the deployment,
//! and the swarm built from them.

use std::time::Duration;

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::request_response::{self as rr, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, kad, ping};

use crate::codec::FrameCodec;
use crate::streams;
use crate::{CONTROL_FRAME_BYTES_MAX, MEMBERS_MAX, NetConfig, NetError};

/// Control streams per connection (libp2p's request-response bound, inbound and outbound
/// together; beyond it libp2p drops streams).
const STREAMS_PER_CONNECTION_MAX: usize = 256;
/// Connections: a full mesh of [`MEMBERS_MAX`] members, with room for simultaneous dials and
/// short-lived connections of candidates.
const CONNECTIONS_MAX: u32 = 2 * MEMBERS_MAX as u32;
const CONNECTIONS_PER_PEER_MAX: u32 = 4;
const PENDING_INCOMING_MAX: u32 = 128;
/// Connections are kept open between members (pings need them); an idle one is closed after
/// this and redialed when needed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const KAD_PACKET_BYTES_MAX: usize = 1024 * 1024;
const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(600);
const PROVIDER_REPUBLISH_INTERVAL: Duration = Duration::from_secs(120);

/// The libp2p behaviours of a node.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Bounds the connections (and so every per-connection state, here and in libp2p).
    pub(super) limits: connection_limits::Behaviour,
    pub(super) kad: kad::Behaviour<MemoryStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    /// Carries the node's frames: one long-lived stream per peer and direction (see
    /// `frames.rs`).
    pub(super) streams: streams::Behaviour,
    /// Carries [`crate::control::Control`] messages.
    pub(super) control: rr::Behaviour<FrameCodec>,
}

/// The private protocol names of one deployment.
pub(super) struct Protocols {
    pub(super) id: String,
    pub(super) kad: StreamProtocol,
    pub(super) frames: StreamProtocol,
    pub(super) control: StreamProtocol,
    /// The identify "protocol version": peers announcing another one are not used for routing.
    pub(super) identify_version: String,
}

impl Protocols {
    pub(super) fn new(protocol_id: &str) -> Result<Self, NetError> {
        let valid = !protocol_id.is_empty()
            && protocol_id.len() <= 64
            && protocol_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(NetError::InvalidConfig(format!(
                "protocol_id {protocol_id:?} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'"
            )));
        }
        let name = |kind: &str| {
            StreamProtocol::try_from_owned(format!("/replicator/{protocol_id}/{kind}/1.0.0"))
                .map_err(|e| NetError::InvalidConfig(format!("protocol name: {e}")))
        };
        Ok(Self {
            id: protocol_id.to_owned(),
            kad: name("kad")?,
            frames: name("frames")?,
            control: name("member")?,
            identify_version: format!("/replicator/{protocol_id}/1.0.0"),
        })
    }
}

pub(super) fn build_swarm(
    cfg: &NetConfig,
    protocols: &Protocols,
    streams: streams::Behaviour,
) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| NetError::Setup(format!("{what}: {e}"));
    let local_peer_id = cfg.keypair.public().to_peer_id();
    let ping_interval =
        (cfg.down_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));

    let mut kad_config = kad::Config::new(protocols.kad.clone());
    kad_config
        .set_query_timeout(KAD_QUERY_TIMEOUT)
        .set_max_packet_size(KAD_PACKET_BYTES_MAX)
        .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
        .set_provider_publication_interval(Some(PROVIDER_REPUBLISH_INTERVAL))
        // Nothing a peer sends is stored without our say: only provider records for our
        // rendezvous key are (see `on_kad` in `discovery.rs`), so the store stays bounded.
        .set_record_filtering(kad::StoreInserts::FilterBoth);
    let store = MemoryStore::with_config(
        local_peer_id,
        MemoryStoreConfig {
            max_records: 1,
            max_value_bytes: 1,
            max_providers_per_key: MEMBERS_MAX,
            max_provided_keys: 16,
        },
    );
    let mut kad = kad::Behaviour::with_config(local_peer_id, store, kad_config);
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(protocols.identify_version.clone(), cfg.keypair.public())
            .with_agent_version(format!("replicator/{}", env!("CARGO_PKG_VERSION")))
            .with_push_listen_addr_updates(true),
    );
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(ping_interval)
            .with_timeout(ping_interval.max(Duration::from_secs(1))),
    );
    let rr_config = rr::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX);
    let control = rr::Behaviour::with_codec(
        FrameCodec::new(CONTROL_FRAME_BYTES_MAX, CONTROL_FRAME_BYTES_MAX),
        [(protocols.control.clone(), ProtocolSupport::Full)],
        rr_config,
    );
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(PENDING_INCOMING_MAX))
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
            .with_max_established(Some(CONNECTIONS_MAX)),
    );
    let behaviour = Behaviour {
        limits,
        kad,
        identify,
        ping,
        streams,
        control,
    };

    let transport = crate::admission::transport(cfg)?;
    let swarm = SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .unwrap_or_else(|never| match never {})
        .with_dns()
        .map_err(|e| setup("dns resolver", &e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| setup("behaviour", &e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .with_connection_timeout(cfg.handshake_timeout)
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ids_are_validated() {
        assert!(Protocols::new("prod-eu.1").is_ok());
        assert!(Protocols::new("").is_err());
        assert!(Protocols::new("a/b").is_err());
        assert!(Protocols::new(&"x".repeat(65)).is_err());
        let protocols = Protocols::new("t1").expect("valid");
        assert_eq!(protocols.kad.as_ref(), "/replicator/t1/kad/1.0.0");
    }
}
