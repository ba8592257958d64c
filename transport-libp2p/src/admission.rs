//! Who may connect at all, decided below every behaviour: the transport stack.
//!
//! - With a pre-shared key ([`NetConfig::psk`], libp2p's `pnet`: XSalsa20 keyed by the shared
//!   secret, under noise), a peer without the key never completes a connection: its bytes do not
//!   decrypt, so multistream-select fails before noise, identify or any protocol of this crate.
//! - With an allow-list ([`NetConfig::allow_peers`]), a connection whose noise-authenticated
//!   peer id is not on it fails right after the handshake, before any behaviour sees it.
//! - Every handshake (pnet, noise, yamux) must finish within [`NetConfig::handshake_timeout`],
//!   and at most [`NetConfig::pending_handshakes_per_ip_max`] inbound handshakes run per remote
//!   IP: more are closed at once. So a flood of half-open connections from one address can
//!   neither keep the overall pending limit full nor lock other peers out for long.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{
    Boxed, DialOpts, ListenerId, PortUse, TransportError, TransportEvent,
};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PnetConfig;
use libp2p::{Multiaddr, PeerId, Transport, noise, tcp, yamux};
use tracing::{debug, warn};

use crate::{NetConfig, NetError};

/// The authenticated, multiplexed transport of a node (TCP, then pnet if a key is set, noise,
/// yamux), with the allow-list and the per-IP bound on pending inbound handshakes.
pub(crate) fn transport(cfg: &NetConfig) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let upgraded = match cfg.psk {
        Some(psk) => secure(
            tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
            cfg,
        )?,
        None => secure(tcp, cfg)?,
    };
    let allowed = cfg.allow_peers.clone();
    let admitted = upgraded
        .and_then(move |(peer, muxer), _| async move {
            match &allowed {
                Some(list) if !list.contains(&peer) => {
                    debug!(peer = %peer, "connection refused: the peer is not on the allow-list");
                    Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("peer {peer} is not on the allow-list"),
                    ))
                }
                _ => Ok((peer, muxer)),
            }
        })
        .boxed();
    Ok(PendingPerIp::new(admitted, cfg.pending_handshakes_per_ip_max).boxed())
}

/// noise + yamux over any byte stream transport.
fn secure<T>(base: T, cfg: &NetConfig) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let noise =
        noise::Config::new(&cfg.keypair).map_err(|e| NetError::Setup(format!("noise: {e}")))?;
    Ok(base
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Bounds the inbound connections still in their handshake, per remote IP: one beyond the bound
/// is closed at once (its upgrade is dropped before it starts).
struct PendingPerIp<T> {
    inner: T,
    max: usize,
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl<T> PendingPerIp<T> {
    fn new(inner: T, max: usize) -> Self {
        PendingPerIp {
            inner,
            max: max.max(1),
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a new pending handshake from `addr`; `None` if its IP is at the bound.
    fn admit(&self, addr: &Multiaddr) -> Option<PendingGuard> {
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })?;
        let mut pending = self
            .pending
            .lock()
            .expect("never poisoned: no panics inside");
        let count = pending.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PendingGuard {
            ip,
            pending: self.pending.clone(),
        })
    }
}

/// Releases one pending handshake of its IP when the upgrade ends (done, failed, timed out).
struct PendingGuard {
    ip: IpAddr,
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut pending = self
            .pending
            .lock()
            .expect("never poisoned: no panics inside");
        if let Some(count) = pending.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.ip);
            }
        }
    }
}

/// An inbound upgrade holding its IP's pending slot until it ends.
struct Guarded<F> {
    upgrade: F,
    _guard: Option<PendingGuard>,
}

impl<F: Future + Unpin> Future for Guarded<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.upgrade).poll(cx)
    }
}

impl<T> Transport for PendingPerIp<T>
where
    T: Transport + Unpin,
    T::ListenerUpgrade: Unpin,
{
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = Guarded<T::ListenerUpgrade>;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        mut opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        // Outgoing connections take a fresh local port. libp2p dials from the listening port
        // by default (for NAT hole punching, which we do not use); that fails with "Address
        // already in use" whenever the same address pair is already connected or lingering,
        // as happens when many nodes share one host.
        opts.port_use = PortUse::New;
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        loop {
            let event = match Pin::new(&mut self.inner).poll(cx) {
                Poll::Ready(event) => event,
                Poll::Pending => return Poll::Pending,
            };
            let TransportEvent::Incoming {
                listener_id,
                upgrade,
                local_addr,
                send_back_addr,
            } = event
            else {
                return Poll::Ready(event.map_upgrade(|upgrade| Guarded {
                    upgrade,
                    _guard: None,
                }));
            };
            match self.admit(&send_back_addr) {
                Some(guard) => {
                    return Poll::Ready(TransportEvent::Incoming {
                        listener_id,
                        upgrade: Guarded {
                            upgrade,
                            _guard: Some(guard),
                        },
                        local_addr,
                        send_back_addr,
                    });
                }
                None => {
                    // Dropping the upgrade closes the socket before any handshake byte.
                    warn!(
                        remote = %send_back_addr,
                        max = self.max,
                        "too many pending inbound handshakes from this address: connection closed"
                    );
                    drop(upgrade);
                }
            }
        }
    }
}
