//! [`crate::start`]: checks the configuration, builds the swarm and the frame streams, and
//! waits for the listeners and the bootstrap peer before handing out the [`Client`].

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, kad};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::EventLoop;
use super::behaviour::{Protocols, build_swarm};
use super::discovery::DiscoverySchedule;
use super::outbox::EventOutbox;
use super::peers::Peers;
use crate::client::Client;
use crate::control::valid_network_id;
use crate::frames::{Limits, Links, accept_streams};
use crate::streams;
use crate::{
    CLUSTER_ID_BYTES_MAX, MEMBERS_MAX, NETWORK_ID_BYTES_MAX, NetConfig, NetError, NetEvent,
};

/// Commands from [`Client`]s waiting for the loop (frames to other peers do not go through
/// it; frames to this node itself do, and are dropped when it is full).
const COMMANDS_QUEUE_LEN: usize = 1024;
/// Peers with a frame queue, writer or reader: every member, plus room for peers that are not
/// (yet) members.
const PEERS_WITH_FRAMES_MAX: usize = 2 * MEMBERS_MAX;

/// The frame streams' tasks, stopped when the event loop is dropped.
pub(super) struct FrameTasks {
    links: Arc<Links>,
    acceptor: tokio::task::AbortHandle,
}

impl Drop for FrameTasks {
    fn drop(&mut self) {
        self.links.stop();
        self.acceptor.abort();
    }
}

pub(super) async fn start(
    cfg: NetConfig,
) -> Result<(Client, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    validate(&cfg)?;
    let bootstrap = cfg.bootstrap.as_ref().map(split_p2p).transpose()?;
    let (command_tx, command_rx) = mpsc::channel(COMMANDS_QUEUE_LEN);
    let (event_tx, event_rx) = mpsc::channel(cfg.event_queue_len);
    let (mut event_loop, listeners) = new_event_loop(&cfg, command_rx, event_tx)?;
    let local_peer_id = event_loop.local_peer_id;
    let span = tracing::info_span!("net", peer = %local_peer_id, cluster = %cfg.cluster);
    async {
        event_loop.wait_for_listeners(listeners).await?;
        if let Some((peer, addr)) = bootstrap {
            event_loop
                .connect_bootstrap(peer, addr, cfg.bootstrap_timeout)
                .await?;
        }
        event_loop.redial(&cfg.redial);
        event_loop.start_discovery();
        Ok::<(), NetError>(())
    }
    .instrument(span)
    .await?;
    debug_assert!(valid_network_id(&event_loop.network), "known after start");
    let client = Client::new(
        local_peer_id,
        event_loop.network.clone(),
        cfg.frame_max_bytes,
        command_tx,
        event_loop.links.clone(),
    );
    Ok((client, event_rx, event_loop))
}

impl EventLoop {
    /// Adds the known addresses to the DHT's routing table and dials each once.
    fn redial(&mut self, known: &[Multiaddr]) {
        for addr in known {
            let Ok((peer, base)) = split_p2p(addr) else {
                tracing::warn!(%addr, "a known peer address without /p2p/<peer id>: skipped");
                continue;
            };
            if peer == self.local_peer_id {
                continue;
            }
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, base.clone());
            let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(vec![base])
                .build();
            if let Err(e) = self.swarm.dial(dial) {
                tracing::debug!(%peer, error = %e, "cannot dial a known peer");
            }
        }
    }
}

/// The event loop with its swarm listening and its frame streams running; nothing has been
/// waited for yet.
fn new_event_loop(
    cfg: &NetConfig,
    commands: mpsc::Receiver<crate::client::Command>,
    events: mpsc::Sender<NetEvent>,
) -> Result<(EventLoop, Vec<libp2p::core::transport::ListenerId>), NetError> {
    let local_peer_id = cfg.keypair.public().to_peer_id();
    let protocols = Protocols::new(&cfg.protocol_id)?;
    let (streams, opener, incoming) = streams::new(protocols.frames.clone(), cfg.request_timeout);
    let mut swarm = build_swarm(cfg, &protocols, streams)?;
    let mut listeners = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        let listener = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Setup(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(listener);
    }
    let limits = Limits {
        frame_max_bytes: cfg.frame_max_bytes,
        peer_frames_max: cfg.send_queue_frames_max,
        peer_bytes_max: cfg.send_queue_bytes_max,
        total_frames_max: cfg.send_queue_total_frames_max,
        total_bytes_max: cfg.send_queue_total_bytes_max,
        peers_max: PEERS_WITH_FRAMES_MAX,
        open_timeout: cfg.request_timeout,
    };
    let links = Links::new(limits, opener);
    let acceptor = tokio::spawn(accept_streams(links.clone(), incoming, events.clone()));
    let frame_tasks = FrameTasks {
        links: links.clone(),
        acceptor: acceptor.abort_handle(),
    };
    let event_loop = EventLoop {
        swarm,
        local_peer_id,
        cluster: cfg.cluster.clone(),
        network: cfg.network.clone().unwrap_or_default(),
        rendezvous: kad::RecordKey::new(&cfg.rendezvous),
        protocol_id: protocols.id,
        identify_version: protocols.identify_version,
        kad_protocol: protocols.kad,
        down_after: cfg.down_after,
        commands,
        outbox: EventOutbox::new(events, cfg.event_queue_len),
        listen_addrs: Vec::new(),
        peers: Peers::new(),
        links,
        _frame_tasks: frame_tasks,
        pending_control: Default::default(),
        discovery: DiscoverySchedule::new(Instant::now()),
        tick_period: (cfg.down_after / 8)
            .clamp(Duration::from_millis(50), Duration::from_millis(500)),
        leaving: None,
        stop: None,
    };
    Ok((event_loop, listeners))
}

fn validate(cfg: &NetConfig) -> Result<(), NetError> {
    let invalid = |msg: String| Err(NetError::InvalidConfig(msg));
    if cfg.cluster.is_empty() || cfg.cluster.len() > CLUSTER_ID_BYTES_MAX {
        return invalid(format!(
            "cluster id must be 1 to {CLUSTER_ID_BYTES_MAX} bytes, got {}",
            cfg.cluster.len()
        ));
    }
    match &cfg.network {
        Some(id) if !valid_network_id(id) => {
            return invalid(format!(
                "network id {id:?} must be 1 to {NETWORK_ID_BYTES_MAX} ASCII letters, digits, '-' or '_'"
            ));
        }
        None if cfg.bootstrap.is_none() => {
            return invalid(
                "no network id and no bootstrap peer: a founder needs a network id, a joiner a bootstrap peer to learn it from"
                    .into(),
            );
        }
        _ => {}
    }
    if cfg.listen.is_empty() {
        return invalid("no listen address".into());
    }
    if cfg.rendezvous.is_empty() {
        return invalid("empty rendezvous key".into());
    }
    if cfg.frame_max_bytes == 0 || cfg.frame_max_bytes > u32::MAX as usize {
        return invalid(format!(
            "frame_max_bytes must be 1 to {}, got {}",
            u32::MAX,
            cfg.frame_max_bytes
        ));
    }
    if cfg.event_queue_len == 0
        || cfg.send_queue_frames_max == 0
        || cfg.send_queue_total_frames_max < cfg.send_queue_frames_max
    {
        return invalid(format!(
            "event_queue_len and send_queue_frames_max must be positive, and send_queue_total_frames_max at least send_queue_frames_max; got {}, {} and {}",
            cfg.event_queue_len, cfg.send_queue_frames_max, cfg.send_queue_total_frames_max
        ));
    }
    if cfg.send_queue_bytes_max < cfg.frame_max_bytes
        || cfg.send_queue_total_bytes_max < cfg.send_queue_bytes_max
    {
        return invalid(format!(
            "send_queue_bytes_max must be at least frame_max_bytes, and send_queue_total_bytes_max at least send_queue_bytes_max; got {}, {} and {}",
            cfg.send_queue_bytes_max, cfg.frame_max_bytes, cfg.send_queue_total_bytes_max
        ));
    }
    if cfg.down_after.is_zero() || cfg.request_timeout.is_zero() {
        return invalid("down_after and request_timeout must be positive".into());
    }
    Ok(())
}

/// Splits `/.../p2p/<peer>` into the peer id and the address without the suffix.
fn split_p2p(addr: &Multiaddr) -> Result<(PeerId, Multiaddr), NetError> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Ok((peer, base)),
        _ => Err(NetError::InvalidConfig(format!(
            "bootstrap address {addr} must end with /p2p/<peer id>"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_address_needs_a_peer_id() {
        assert!(split_p2p(&"/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr")).is_err());
    }
}
