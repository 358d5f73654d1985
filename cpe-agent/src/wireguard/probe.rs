//! The controller's reachability probe: with each facts report the agent
//! asks the controller to send a UDP datagram carrying a nonce to the
//! router's WAN addresses, and waits for it here. The nonce goes back with
//! the facts, as evidence that datagrams from outside reach the router.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::listing::probe_nonce;

/// How long the agent waits for the controller's probe datagram.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

/// The socket the probe arrives on: dual-stack where the router has IPv6.
pub fn probe_socket(port: u16) -> anyhow::Result<std::net::UdpSocket> {
    let any6 = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let any4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
    std::net::UdpSocket::bind(any6)
        .or_else(|_| std::net::UdpSocket::bind(any4))
        .with_context(|| format!("binding UDP port {port} for the probe"))
}

/// Waits up to `PROBE_WAIT` on `socket` for the controller's probe; its
/// nonce, or None. Blocking: the agent loop pauses for at most that long
/// every `wireguard_facts_secs` (std's socket costs the small binary less
/// than tokio's).
pub fn receive_probe(socket: &std::net::UdpSocket) -> Option<String> {
    let deadline = Instant::now() + PROBE_WAIT;
    let mut buf = [0u8; 128];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        if let Some(nonce) = probe_nonce(&buf[..n]) {
            return Some(nonce);
        }
    }
}
