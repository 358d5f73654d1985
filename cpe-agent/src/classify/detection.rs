//! A detection, and what it teaches the router to block.

use std::net::{IpAddr, SocketAddr};

use super::{Endpoint, FiveTuple, MseFeatures, Reason, Transport};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The remote side: the side not on the LAN (by the interface the
    /// flow's first packet came in on; without it, when exactly one side
    /// has a private, link-local or shared (CGNAT) address, the other one);
    /// else the responder.
    pub peer: Endpoint,
    /// The LAN host's side of the flow, when known (see `peer`).
    pub lan: Option<SocketAddr>,
    pub flow: FiveTuple,
    pub reason: Reason,
    /// What a heuristic rule measured (`None` for signatures).
    pub features: Option<MseFeatures>,
}

impl Detection {
    /// The rule and, for a heuristic, its measurements: what the router
    /// block's reason says, for the operator to judge a detection by.
    pub fn describe(&self) -> String {
        match &self.features {
            Some(features) => format!("{} {features}", self.reason),
            None => self.reason.to_string(),
        }
    }

    /// What a detection teaches the router to block: the peer's endpoint,
    /// and, where the detection is of the peer wire or the DHT and the peer
    /// listens on that port, the same port on the other transport too (a client serves TCP, uTP and the
    /// DHT on one port number, and falls back from one to the other: a uTP
    /// peer blocked over UDP is tried again over TCP), and the LAN host's
    /// listening endpoint on both (its uTP/DHT socket, or the port it
    /// accepted a peer on), so peers that find it another way cannot reach
    /// it either. A LAN host's outgoing TCP port is ephemeral and never
    /// blocked; nor is any port below 1024 on the other transport (a peer
    /// on 443/tcp does not make its QUIC on 443/udp BitTorrent).
    pub fn endpoints_to_block(&self) -> Vec<Endpoint> {
        let mut out = vec![self.peer];
        if !self.reason.teaches_both_transports() {
            return out;
        }
        let other = |e: Endpoint| Endpoint {
            protocol: match e.protocol {
                Transport::Tcp => Transport::Udp,
                Transport::Udp => Transport::Tcp,
            },
            ..e
        };
        // A remote TCP initiator's port is ephemeral: nothing listens on it.
        let peer_listens =
            self.flow.protocol == Transport::Udp || self.peer.addr == self.flow.responder;
        if peer_listens && self.peer.addr.port() >= 1024 {
            out.push(other(self.peer));
        }
        let local = if self.flow.initiator == self.peer.addr {
            self.flow.responder
        } else {
            self.flow.initiator
        };
        let listening = match self.flow.protocol {
            // One UDP socket for uTP and the DHT: its port is the listener.
            Transport::Udp => true,
            // Over TCP only a LAN host that accepted the connection listens.
            Transport::Tcp => local == self.flow.responder,
        };
        if listening && self.lan == Some(local) && local.port() >= 1024 {
            let local = Endpoint {
                protocol: self.flow.protocol,
                addr: local,
            };
            out.extend([local, other(local)]);
        }
        out
    }
}

/// A private, link-local, loopback or shared (CGNAT) address: a LAN side.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (a == 100 && b & 0xc0 == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    }
}
