//! Which addresses a peer reports are worth dialing: routable TCP addresses, loopback ones only
//! when the informant is on this host.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::MEMBER_ADDRS_MAX;

pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// `addr` without a `/p2p` suffix, if it is a TCP address this node can dial: a routable IP
/// (loopback only when `allow_loopback`, i.e. the informant is on this host) or a DNS name.
pub(super) fn usable_addr(addr: &Multiaddr, allow_loopback: bool) -> Option<Multiaddr> {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    let mut parts = addr.iter();
    let host_ok = match parts.next() {
        Some(Protocol::Ip4(ip)) => {
            !ip.is_unspecified()
                && !ip.is_multicast()
                && !ip.is_broadcast()
                && (allow_loopback || !ip.is_loopback())
        }
        Some(Protocol::Ip6(ip)) => {
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            !ip.is_unspecified()
                && !ip.is_multicast()
                && !link_local
                && (allow_loopback || !ip.is_loopback())
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    };
    let port_ok = matches!(parts.next(), Some(Protocol::Tcp(port)) if port != 0);
    (host_ok && port_ok && parts.next().is_none()).then_some(addr)
}

pub(super) fn usable_addrs(addrs: Vec<Multiaddr>, allow_loopback: bool) -> Vec<Multiaddr> {
    let mut usable: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        if usable.len() >= MEMBER_ADDRS_MAX {
            break;
        }
        if let Some(addr) = usable_addr(&addr, allow_loopback)
            && !usable.contains(&addr)
        {
            usable.push(addr);
        }
    }
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn addresses_are_filtered() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let with_p2p = ma("/ip4/10.0.0.1/tcp/4001").with(Protocol::P2p(peer));
        assert_eq!(
            usable_addr(&with_p2p, false),
            Some(ma("/ip4/10.0.0.1/tcp/4001"))
        );
        assert_eq!(usable_addr(&ma("/ip4/127.0.0.1/tcp/4001"), false), None);
        assert!(usable_addr(&ma("/ip4/127.0.0.1/tcp/4001"), true).is_some());
        assert_eq!(usable_addr(&ma("/ip4/0.0.0.0/tcp/4001"), true), None);
        assert_eq!(usable_addr(&ma("/ip4/10.0.0.1/tcp/0"), true), None);
        assert_eq!(
            usable_addr(&ma("/ip4/10.0.0.1/udp/4001/quic-v1"), true),
            None
        );
        assert_eq!(usable_addr(&ma("/ip6/fe80::1/tcp/4001"), true), None);
        assert!(usable_addr(&ma("/dns4/node-1/tcp/4001"), false).is_some());
        let many: Vec<Multiaddr> = (1..=20)
            .map(|i| ma(&format!("/ip4/10.0.0.{i}/tcp/1")))
            .collect();
        assert_eq!(usable_addrs(many, false).len(), MEMBER_ADDRS_MAX);
    }
}
