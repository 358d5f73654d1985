//! What one detection teaches: the peer on both transports, and the LAN
//! host's listening port on both, within the limits that keep other
//! services out of it.

use super::*;

fn endpoint(protocol: Transport, text: &str) -> Endpoint {
    Endpoint {
        protocol,
        addr: addr(text),
    }
}

fn detection(
    protocol: Transport,
    initiator: &str,
    responder: &str,
    peer: &str,
    reason: Reason,
) -> Detection {
    Detection {
        peer: endpoint(protocol, peer),
        flow: FiveTuple {
            protocol,
            initiator: addr(initiator),
            responder: addr(responder),
        },
        reason,
        features: None,
    }
}

#[test]
fn a_utp_peer_is_blocked_on_tcp_too_and_so_is_the_lan_hosts_socket() {
    let found = detection(Transport::Udp, CLIENT, PEER, PEER, Reason::UtpSyn);
    assert_eq!(
        found.endpoints_to_block(),
        [
            endpoint(Transport::Udp, PEER),
            endpoint(Transport::Tcp, PEER),
            endpoint(Transport::Udp, CLIENT),
            endpoint(Transport::Tcp, CLIENT),
        ]
    );
}

#[test]
fn an_outgoing_tcp_peer_connection_never_blocks_the_lan_hosts_ephemeral_port() {
    let found = detection(Transport::Tcp, CLIENT, PEER, PEER, Reason::MseHandshake);
    assert_eq!(
        found.endpoints_to_block(),
        [
            endpoint(Transport::Tcp, PEER),
            endpoint(Transport::Udp, PEER)
        ]
    );
}

#[test]
fn a_peer_that_reached_the_lan_host_blocks_its_listening_port_on_both() {
    // The peer's own port is ephemeral here: only that TCP endpoint.
    let found = detection(Transport::Tcp, PEER, CLIENT, PEER, Reason::TcpHandshake);
    assert_eq!(
        found.endpoints_to_block(),
        [
            endpoint(Transport::Tcp, PEER),
            endpoint(Transport::Tcp, CLIENT),
            endpoint(Transport::Udp, CLIENT),
        ]
    );
}

#[test]
fn trackers_and_low_ports_stay_on_their_own_transport() {
    let tracker = "198.51.100.9:6969";
    let found = detection(
        Transport::Tcp,
        CLIENT,
        tracker,
        tracker,
        Reason::HttpTrackerAnnounce,
    );
    assert_eq!(
        found.endpoints_to_block(),
        [endpoint(Transport::Tcp, tracker)]
    );
    // A peer on 443/tcp: its 443/udp (QUIC) is left alone, and so is a LAN
    // host's port below 1024.
    let web_peer = "203.0.113.7:443";
    let found = detection(
        Transport::Tcp,
        CLIENT,
        web_peer,
        web_peer,
        Reason::TcpHandshake,
    );
    assert_eq!(
        found.endpoints_to_block(),
        [endpoint(Transport::Tcp, web_peer)]
    );
    let low_lan = "192.168.1.10:123";
    let found = detection(Transport::Udp, low_lan, PEER, PEER, Reason::DhtMessage);
    assert_eq!(
        found.endpoints_to_block(),
        [
            endpoint(Transport::Udp, PEER),
            endpoint(Transport::Tcp, PEER)
        ]
    );
}
