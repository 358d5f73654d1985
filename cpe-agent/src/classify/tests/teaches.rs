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
    let lan = [initiator, responder]
        .into_iter()
        .find(|side| *side != peer)
        .map(addr)
        .filter(|side| is_local(side.ip()));
    Detection {
        peer: endpoint(protocol, peer),
        lan,
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

/// Told by the interface which side is the LAN, the classifier needs no
/// private addresses: a LAN with public IPv4 or IPv6 addresses gets the
/// same blocks (the WAN side is the peer, the LAN host's listening socket
/// is blocked too).
#[test]
fn the_lan_side_comes_from_the_interface_when_addresses_are_public() {
    let (lan_host, wan_peer) = ("[2001:db8:1::10]:40001", "[2001:db8:2::5]:40000");
    let mut c = classifier();
    let syn = utp_header(4, 0, 100, 1, 0);
    let state = utp_header(2, 0, 100, 7, 1);
    c.packet_from(&udp(lan_host, wan_peer, &syn), Some(true), 1);
    let verdict = c.packet_from(&udp(wan_peer, lan_host, &state), Some(false), 1);
    let Verdict::BitTorrent(found) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(found.peer, endpoint(Transport::Udp, wan_peer));
    assert_eq!(found.lan, Some(addr(lan_host)));
    assert!(found
        .endpoints_to_block()
        .contains(&endpoint(Transport::Tcp, lan_host)));
    // An incoming connection: the remote initiator is the peer, whatever
    // the addresses.
    let incoming = tcp_flow(
        &mut c,
        wan_peer,
        "[2001:db8:1::10]:6881",
        &[&handshake()],
        &[],
    );
    let Verdict::BitTorrent(found) = last(&incoming) else {
        panic!("{incoming:?}")
    };
    // (Without the interface the responder would have been taken for the
    // peer; `tcp_flow` does not say, so the guess is by address here.)
    assert_eq!(found.lan, None);
    let mut c = classifier();
    let syn = tcp(wan_peer, "[2001:db8:1::10]:6881", SYN, 1000, b"");
    let ack = tcp(wan_peer, "[2001:db8:1::10]:6881", ACK, 1001, &handshake());
    c.packet_from(&syn, Some(false), 1);
    let Verdict::BitTorrent(found) = c.packet_from(&ack, Some(false), 1) else {
        panic!("no detection")
    };
    assert_eq!(found.peer.addr, addr(wan_peer));
    assert_eq!(found.lan, Some(addr("[2001:db8:1::10]:6881")));
    assert!(found
        .endpoints_to_block()
        .contains(&endpoint(Transport::Udp, "[2001:db8:1::10]:6881")));
}
