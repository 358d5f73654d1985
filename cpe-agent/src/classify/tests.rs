//! Hand-built packets for every reason, the protocols that must never be
//! flagged, and property tests for malformed input and random payloads.

use std::net::SocketAddr;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;

const CLIENT: &str = "192.168.1.10:50000";
const PEER: &str = "203.0.113.5:6881";
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// An IPv4 or IPv6 packet (as the endpoints are) around a TCP or UDP header.
fn ip(protocol: Transport, src: &str, dst: &str, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (addr(src), addr(dst));
    let mut l4 = Vec::new();
    l4.extend(src.port().to_be_bytes());
    l4.extend(dst.port().to_be_bytes());
    let next = match protocol {
        Transport::Tcp => {
            l4.extend(seq.to_be_bytes());
            l4.extend([0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            6
        }
        Transport::Udp => {
            l4.extend((8 + payload.len() as u16).to_be_bytes());
            l4.extend([0, 0]);
            17
        }
    };
    l4.extend(payload);
    let mut packet = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            packet.extend([0x45, 0]);
            packet.extend((20 + l4.len() as u16).to_be_bytes());
            packet.extend([0, 0, 0x40, 0, 64, next, 0, 0]);
            packet.extend(s.octets());
            packet.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            packet.extend([0x60, 0, 0, 0]);
            packet.extend((l4.len() as u16).to_be_bytes());
            packet.extend([next, 64]);
            packet.extend(s.octets());
            packet.extend(d.octets());
        }
        _ => unreachable!("one address family"),
    }
    packet.extend(l4);
    packet
}

fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    ip(Transport::Udp, src, dst, 0, 0, payload)
}

fn tcp(src: &str, dst: &str, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    ip(Transport::Tcp, src, dst, flags, seq, payload)
}

/// Deterministic bytes that look random (xorshift).
fn noise(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn classifier() -> Classifier {
    Classifier::new(Limits::default())
}

/// A TCP connection from `client` to `server`: the three-way handshake,
/// then `segments` from the client and `answers` from the server, in turn.
/// Returns the verdict of every packet.
fn tcp_flow(
    c: &mut Classifier,
    client: &str,
    server: &str,
    segments: &[&[u8]],
    answers: &[&[u8]],
) -> Vec<Verdict> {
    let mut verdicts = vec![
        c.packet(&tcp(client, server, SYN, 1000, b""), 1),
        c.packet(&tcp(server, client, SYN_ACK, 5000, b""), 1),
        c.packet(&tcp(client, server, ACK, 1001, b""), 1),
    ];
    let (mut seq, mut answer_seq) = (1001u32, 5001u32);
    for i in 0..segments.len().max(answers.len()) {
        if let Some(segment) = segments.get(i) {
            verdicts.push(c.packet(&tcp(client, server, ACK, seq, segment), 2));
            seq += segment.len() as u32;
        }
        if let Some(answer) = answers.get(i) {
            verdicts.push(c.packet(&tcp(server, client, ACK, answer_seq, answer), 2));
            answer_seq += answer.len() as u32;
        }
    }
    verdicts
}

fn reason(verdict: Verdict) -> Option<Reason> {
    match verdict {
        Verdict::BitTorrent(detection) => Some(detection.reason),
        _ => None,
    }
}

fn last(verdicts: &[Verdict]) -> Verdict {
    *verdicts.last().unwrap()
}

fn never_bittorrent(verdicts: &[Verdict]) -> bool {
    verdicts
        .iter()
        .all(|v| !matches!(v, Verdict::BitTorrent(_)))
}

fn handshake() -> Vec<u8> {
    let mut handshake = HANDSHAKE.to_vec();
    handshake.extend([0, 0, 0, 0, 0, 0x10, 0, 5]); // extension protocol (BEP 10) and DHT bits
    handshake.extend([0xaa; 20]); // info hash
    handshake.extend(b"-qB4650-abcdefghijkl"); // peer id
    handshake
}

fn utp_header(kind: u8, extension: u8, connection: u16, seq: u16, ack: u16) -> Vec<u8> {
    let mut header = vec![kind << 4 | 1, extension];
    header.extend(connection.to_be_bytes());
    header.extend([0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0x10, 0, 0]);
    header.extend(seq.to_be_bytes());
    header.extend(ack.to_be_bytes());
    header
}

const DHT_PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

fn compact(peer: &str) -> Vec<u8> {
    let peer = addr(peer);
    let mut bytes = match peer.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.extend(peer.port().to_be_bytes());
    bytes
}

fn bstr(bytes: &[u8]) -> Vec<u8> {
    let mut encoded = format!("{}:", bytes.len()).into_bytes();
    encoded.extend(bytes);
    encoded
}

#[test]
fn tcp_handshake_in_one_segment() {
    let mut c = classifier();
    let verdicts = tcp_flow(&mut c, CLIENT, PEER, &[&handshake()], &[]);
    assert_eq!(verdicts[..3], [Verdict::NeedMore; 3]);
    let Verdict::BitTorrent(detection) = last(&verdicts) else {
        panic!("{verdicts:?}")
    };
    assert_eq!(detection.reason, Reason::TcpHandshake);
    assert_eq!(
        detection.peer,
        Endpoint {
            protocol: Transport::Tcp,
            addr: addr(PEER)
        }
    );
    assert_eq!(
        detection.flow,
        FiveTuple {
            protocol: Transport::Tcp,
            initiator: addr(CLIENT),
            responder: addr(PEER)
        }
    );
    // Later packets of the flow keep the verdict.
    assert_eq!(
        c.packet(&tcp(PEER, CLIENT, ACK, 5001, &handshake()), 3),
        Verdict::BitTorrent(detection)
    );
}

#[test]
fn incoming_handshake_names_the_remote_initiator_as_peer() {
    let mut c = classifier();
    let verdicts = tcp_flow(&mut c, PEER, CLIENT, &[&handshake()], &[]);
    let Verdict::BitTorrent(detection) = last(&verdicts) else {
        panic!("{verdicts:?}")
    };
    assert_eq!(detection.peer.addr, addr(PEER));
}

#[test]
fn split_tcp_handshake() {
    let mut c = classifier();
    let handshake = handshake();
    let verdicts = tcp_flow(
        &mut c,
        CLIENT,
        PEER,
        &[&handshake[..1], &handshake[1..9], &handshake[9..]],
        &[],
    );
    assert_eq!(verdicts[3..5], [Verdict::NeedMore; 2]);
    assert_eq!(reason(last(&verdicts)), Some(Reason::SplitTcpHandshake));
}

#[test]
fn split_handshake_out_of_order_and_retransmitted() {
    let mut c = classifier();
    let handshake = handshake();
    let send = |c: &mut Classifier, seq: u32, bytes: &[u8]| {
        c.packet(&tcp(CLIENT, PEER, ACK, seq, bytes), 2)
    };
    c.packet(&tcp(CLIENT, PEER, SYN, 999, b""), 1);
    assert_eq!(
        send(&mut c, 1005, &handshake[5..]),
        Verdict::NeedMore,
        "a gap waits"
    );
    assert_eq!(send(&mut c, 1000, &handshake[..3]), Verdict::NeedMore);
    assert_eq!(
        send(&mut c, 1000, &handshake[..3]),
        Verdict::NeedMore,
        "a retransmission"
    );
    assert_eq!(
        reason(send(&mut c, 1001, &handshake[1..])),
        Some(Reason::SplitTcpHandshake)
    );
}

#[test]
fn not_a_handshake_once_a_byte_differs() {
    let mut c = classifier();
    let verdicts = tcp_flow(
        &mut c,
        CLIENT,
        PEER,
        &[b"\x13BitTorrent", b" protocoL"],
        &[],
    );
    assert_eq!(verdicts[3], Verdict::NeedMore);
    assert_eq!(last(&verdicts), Verdict::NotBitTorrent);
}

#[test]
fn http_tracker_announce_and_its_answer() {
    let mut c = classifier();
    let request = b"GET /ann?passkey=x&info_hash=%aa%bb&peer_id=-qB4650-abc&port=6881&left=0 HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut answer =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nd8:intervali1800e5:peers12:".to_vec();
    answer.extend(compact("198.51.100.7:51413"));
    answer.extend(compact("198.51.100.8:80")); // below 1024: ignored
    answer.extend(b"6:peers618:");
    answer.extend(compact("[2001:db8::7]:6881"));
    answer.extend(b"e");
    let tracker = "192.0.2.1:80";
    let verdicts = tcp_flow(&mut c, CLIENT, tracker, &[request], &[&answer]);
    assert_eq!(reason(verdicts[3]), Some(Reason::HttpTrackerAnnounce));
    assert_eq!(reason(last(&verdicts)), Some(Reason::HttpTrackerAnnounce));
    // An encrypted connection to a listed peer: flagged from its SYN.
    let syn = c.packet(&tcp(CLIENT, "198.51.100.7:51413", SYN, 1, b""), 3);
    assert_eq!(reason(syn), Some(Reason::TrackerAnswerPeer));
    let syn = c.packet(
        &tcp("[2001:db8::10]:40000", "[2001:db8::7]:6881", SYN, 1, b""),
        3,
    );
    assert_eq!(reason(syn), Some(Reason::TrackerAnswerPeer));
    assert_eq!(
        c.packet(&tcp(CLIENT, "198.51.100.8:80", SYN, 1, b""), 3),
        Verdict::NeedMore
    );
    // The tracker itself is not a peer.
    assert_eq!(
        c.packet(&tcp("192.168.1.10:50001", tracker, SYN, 1, b""), 3),
        Verdict::NeedMore
    );
}

#[test]
fn http_tracker_answer_with_dictionary_peers_and_chunks() {
    let mut c = classifier();
    let request = b"GET /announce?info_hash=%aa&peer_id=x HTTP/1.0\r\n\r\n";
    let body = b"d5:peersld2:ip12:198.51.100.94:porti6881eed2:ip3:bad4:porti1eeee";
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend(body);
    tcp_flow(&mut c, CLIENT, "192.0.2.1:6969", &[request], &[&answer]);
    let syn = c.packet(&tcp(CLIENT, "198.51.100.9:6881", SYN, 1, b""), 3);
    assert_eq!(reason(syn), Some(Reason::TrackerAnswerPeer));
}

#[test]
fn http_tracker_scrape() {
    let mut c = classifier();
    let verdicts = tcp_flow(
        &mut c,
        CLIENT,
        "192.0.2.1:80",
        &[b"GET /scrape.php?info_hash=%aa%bb HTTP/1.1\r\n\r\n"],
        &[],
    );
    assert_eq!(reason(last(&verdicts)), Some(Reason::HttpTrackerScrape));
}

#[test]
fn http_without_info_hash_is_not_bittorrent() {
    let mut c = classifier();
    for request in [
        &b"GET /index.html?peer_id=3 HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"GET /announce?xinfo_hash=1&peer_id=2 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nReferer: /announce?info_hash=1&peer_id=2\r\n\r\n",
        b"POST /announce?info_hash=1&peer_id=2 HTTP/1.1\r\n\r\n",
    ] {
        let verdicts = tcp_flow(
            &mut c,
            CLIENT,
            "192.0.2.80:80",
            &[request],
            &[b"HTTP/1.1 200 OK\r\n\r\n"],
        );
        assert!(
            never_bittorrent(&verdicts),
            "{:?}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(verdicts[3], Verdict::NotBitTorrent);
        c = classifier();
    }
}

fn udp_tracker_connect(transaction: u32) -> Vec<u8> {
    let mut request = 0x0417_2710_1980_u64.to_be_bytes().to_vec();
    request.extend(0u32.to_be_bytes());
    request.extend(transaction.to_be_bytes());
    request
}

fn udp_tracker_announce(transaction: u32) -> Vec<u8> {
    let mut request = noise(7, 8); // connection id from the connect answer
    request.extend(1u32.to_be_bytes());
    request.extend(transaction.to_be_bytes());
    request.extend([0xaa; 20]); // info hash
    request.extend(b"-qB4650-abcdefghijkl");
    request.extend([0; 24]); // downloaded, left, uploaded
    request.extend(2u32.to_be_bytes()); // event: started
    request.extend([0; 8]); // ip, key
    request.extend((-1i32).to_be_bytes());
    request.extend(6881u16.to_be_bytes());
    assert_eq!(request.len(), 98);
    request
}

#[test]
fn udp_tracker_connect_announce_and_answer() {
    let mut c = classifier();
    let tracker = "192.0.2.2:1337";
    assert_eq!(
        reason(c.packet(&udp(CLIENT, tracker, &udp_tracker_connect(7)), 1)),
        Some(Reason::UdpTrackerConnect)
    );
    let mut connected = vec![0, 0, 0, 0, 0, 0, 0, 7];
    connected.extend(noise(7, 8));
    assert_eq!(
        reason(c.packet(&udp(tracker, CLIENT, &connected), 1)),
        Some(Reason::UdpTrackerConnect)
    );
    c.packet(&udp(CLIENT, tracker, &udp_tracker_announce(8)), 2);
    let mut answer = vec![0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 7, 8, 0, 0, 0, 1, 0, 0, 0, 2];
    answer.extend(compact("198.51.100.20:40000"));
    c.packet(&udp(tracker, CLIENT, &answer), 2);
    // uTP with MSE to the listed peer: flagged from its first packet.
    let syn = utp_header(UTP_SYN, 0, 77, 1, 0);
    assert_eq!(
        reason(c.packet(&udp(CLIENT, "198.51.100.20:40000", &syn), 3)),
        Some(Reason::TrackerAnswerPeer)
    );
}

#[test]
fn udp_tracker_announce_lookalikes_full_of_zeros_are_not_bittorrent() {
    for zeroed in [0..8, 16..36, 96..98] {
        let mut announce = udp_tracker_announce(8);
        announce[zeroed].fill(0);
        let verdict = classifier().packet(&udp(CLIENT, "192.0.2.2:1337", &announce), 1);
        assert_eq!(verdict, Verdict::NotBitTorrent);
    }
}

#[test]
fn udp_tracker_answer_with_another_transaction_teaches_nothing() {
    let mut c = classifier();
    let tracker = "192.0.2.2:1337";
    c.packet(&udp(CLIENT, tracker, &udp_tracker_announce(8)), 2);
    let mut answer = vec![0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 7, 8, 0, 0, 0, 1, 0, 0, 0, 2];
    answer.extend(compact("198.51.100.20:40000"));
    c.packet(&udp(tracker, CLIENT, &answer), 2);
    assert_eq!(c.learned_peers(3).count(), 0);
}

#[test]
fn udp_tracker_announce_over_ipv6_lists_ipv6_peers() {
    let mut c = classifier();
    let (client, tracker) = ("[2001:db8::10]:6881", "[2001:db8::1]:6969");
    let verdict = c.packet(&udp(client, tracker, &udp_tracker_announce(3)), 1);
    assert_eq!(reason(verdict), Some(Reason::UdpTrackerAnnounce));
    let mut answer = vec![0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 7, 8, 0, 0, 0, 1, 0, 0, 0, 2];
    answer.extend(compact("[2001:db8::20]:51413"));
    c.packet(&udp(tracker, client, &answer), 1);
    let learned: Vec<_> = c.learned_peers(2).collect();
    assert!(
        learned.contains(&(addr("[2001:db8::20]:51413"), Reason::TrackerAnswerPeer)),
        "{learned:?}"
    );
}

#[test]
fn dht_query_response_and_error() {
    for message in [
        DHT_PING,
        b"d1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:re",
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:v4:LT011:y1:qe",
    ] {
        let mut c = classifier();
        let verdict = c.packet(&udp(CLIENT, PEER, message), 1);
        assert_eq!(reason(verdict), Some(Reason::DhtMessage), "{}", String::from_utf8_lossy(message));
    }
}

#[test]
fn dht_lookalikes_are_not_bittorrent() {
    for message in [
        &b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"[..], // short id
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qeX", // trailing byte
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:xe", // unknown type
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe", // no transaction
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:q", // truncated
        b"d1:",
    ] {
        let mut c = classifier();
        let verdict = c.packet(&udp(CLIENT, PEER, message), 1);
        assert_eq!(
            verdict,
            Verdict::NotBitTorrent,
            "{}",
            String::from_utf8_lossy(message)
        );
    }
}

#[test]
fn dht_answer_teaches_nodes_and_peers() {
    let mut c = classifier();
    let mut nodes = vec![b'n'; 20];
    nodes.extend(compact("198.51.100.30:6881"));
    let mut answer = b"d1:rd2:id20:abcdefghij01234567895:nodes".to_vec();
    answer.extend(bstr(&nodes));
    answer.extend(b"5:token2:tk6:valuesl");
    answer.extend(bstr(&compact("198.51.100.31:51413")));
    answer.extend(bstr(&compact("[2001:db8::31]:51413")));
    answer.extend(b"ee1:t2:aa1:y1:re");
    assert_eq!(
        reason(c.packet(&udp(CLIENT, PEER, DHT_PING), 1)),
        Some(Reason::DhtMessage)
    );
    assert_eq!(
        reason(c.packet(&udp(PEER, CLIENT, &answer), 1)),
        Some(Reason::DhtMessage)
    );
    let to = |c: &mut Classifier, peer| {
        reason(c.packet(&tcp("192.168.1.11:40000", peer, SYN, 1, b""), 2))
    };
    assert_eq!(
        to(&mut c, "198.51.100.30:6881"),
        Some(Reason::DhtAnswerNode)
    );
    assert_eq!(
        to(&mut c, "198.51.100.31:51413"),
        Some(Reason::DhtAnswerPeer)
    );
    let v6 = c.packet(
        &tcp("[2001:db8::10]:40000", "[2001:db8::31]:51413", SYN, 1, b""),
        2,
    );
    assert_eq!(reason(v6), Some(Reason::DhtAnswerPeer));
}

#[test]
fn utp_syn_answered_by_state() {
    let mut c = classifier();
    let syn = utp_header(UTP_SYN, 0, 0x1234, 1, 0);
    assert_eq!(c.packet(&udp(CLIENT, PEER, &syn), 1), Verdict::NeedMore);
    let state = utp_header(UTP_STATE, 0, 0x1234, 0x5555, 1);
    let Verdict::BitTorrent(detection) = c.packet(&udp(PEER, CLIENT, &state), 1) else {
        panic!()
    };
    assert_eq!(detection.reason, Reason::UtpSyn);
    assert_eq!(
        detection.peer,
        Endpoint {
            protocol: Transport::Udp,
            addr: addr(PEER)
        }
    );
}

#[test]
fn utp_state_with_another_ack_is_not_an_answer() {
    let mut c = classifier();
    c.packet(&udp(CLIENT, PEER, &utp_header(UTP_SYN, 0, 0x1234, 1, 0)), 1);
    let mut state = utp_header(UTP_STATE, 0, 0x1234, 0x5555, 2);
    assert_eq!(c.packet(&udp(PEER, CLIENT, &state), 1), Verdict::NeedMore);
    state[1] = 9; // an unknown extension
    assert_eq!(
        c.packet(&udp(PEER, CLIENT, &state), 1),
        Verdict::NotBitTorrent
    );
}

#[test]
fn utp_data_with_handshake_and_selective_ack() {
    let mut c = classifier();
    let mut data = utp_header(UTP_DATA, 1, 0x1235, 2, 0x5555);
    data.extend([0, 4, 0xff, 0, 0, 0]); // selective ACK, then no more extensions
    data.extend(handshake());
    assert_eq!(
        reason(c.packet(&udp(CLIENT, PEER, &data), 1)),
        Some(Reason::UtpData)
    );
}

#[test]
fn lsd_announce() {
    let mut c = classifier();
    let announce = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: aa\r\n\r\n\r\n";
    let verdict = c.packet(
        &udp("192.168.1.10:6771", "239.192.152.143:6771", announce),
        1,
    );
    assert_eq!(reason(verdict), Some(Reason::LsdAnnounce));
}

#[test]
fn endpoints_of_utp_flows_are_learned() {
    let mut c = classifier();
    c.packet(&udp(CLIENT, PEER, &utp_header(UTP_SYN, 0, 9, 1, 0)), 1);
    c.packet(&udp(PEER, CLIENT, &utp_header(UTP_STATE, 0, 9, 3, 1)), 1);
    // The peer again, over TCP and encrypted.
    assert_eq!(
        reason(c.packet(&tcp("192.168.1.10:40001", PEER, SYN, 1, b""), 2)),
        Some(Reason::LearnedPeer)
    );
    // Someone connecting to the client's uTP port, over TCP.
    let incoming = c.packet(&tcp("198.51.100.40:50123", CLIENT, SYN, 1, b""), 2);
    assert_eq!(reason(incoming), Some(Reason::LearnedPeer));
    // The learned endpoint as a TCP initiator is an ephemeral port: not flagged.
    assert_eq!(
        c.packet(&tcp(PEER, "198.51.100.41:443", SYN, 1, b""), 2),
        Verdict::NeedMore
    );
    // Its UDP socket talking to anyone is BitTorrent.
    assert_eq!(
        reason(c.packet(&udp(CLIENT, "198.51.100.42:1234", b"x"), 2)),
        Some(Reason::LearnedPeer)
    );
    // Learned peers expire.
    let later = 2 + Limits::default().learned_peer_ttl_ms + 1;
    assert_eq!(
        c.packet(&tcp("192.168.1.10:40002", PEER, SYN, 1, b""), later),
        Verdict::NeedMore
    );
}

#[test]
fn learn_peer_from_elsewhere() {
    let mut c = classifier();
    c.learn_peer(addr("198.51.100.50:6881"), 1);
    c.learn_peer(addr("198.51.100.51:53"), 1); // a DNS server: refused
    assert_eq!(
        reason(c.packet(&tcp(CLIENT, "198.51.100.50:6881", SYN, 1, b""), 2)),
        Some(Reason::LearnedPeer)
    );
    assert_eq!(c.learned_peers(2).count(), 1);
}

/// A host that already ran BitTorrent (here, a DHT ping).
fn classifier_knowing_client() -> Classifier {
    let mut c = classifier();
    c.packet(&udp(CLIENT, "198.51.100.99:6881", DHT_PING), 1);
    c
}

#[test]
fn mse_handshake_of_a_known_bittorrent_host() {
    let mut c = classifier_knowing_client();
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40000",
        PEER,
        &[&noise(1, 96 + 300)],
        &[&noise(2, 96 + 17)],
    );
    assert_eq!(verdicts[3], Verdict::NeedMore);
    assert_eq!(reason(last(&verdicts)), Some(Reason::MseHandshake));
    // And incoming: the remote peer starts the exchange.
    let verdicts = tcp_flow(
        &mut c,
        "198.51.100.60:40000",
        "192.168.1.10:6881",
        &[&noise(3, 96)],
        &[&noise(4, 608)],
    );
    assert_eq!(reason(last(&verdicts)), Some(Reason::MseHandshake));
}

#[test]
fn mse_lookalikes_are_not_bittorrent() {
    let mut c = classifier();
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40000",
        PEER,
        &[&noise(1, 200)],
        &[&noise(2, 200)],
    );
    assert_eq!(
        verdicts[3],
        Verdict::NotBitTorrent,
        "the host is not known to run BitTorrent"
    );
    let mut c = classifier_knowing_client();
    let answers: [&[u8]; 4] = [
        &noise(2, 95),
        &noise(2, 609),
        &[b'a'; 200],
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ];
    for (port, answer) in (40001..).zip(answers) {
        let client = format!("192.168.1.10:{port}");
        let verdicts = tcp_flow(&mut c, &client, PEER, &[&noise(1, 200)], &[answer]);
        assert_eq!(last(&verdicts), Verdict::NotBitTorrent, "{}", answer.len());
    }
    // An MSE initiator waits for the answer; one that sends more is something else.
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40010",
        PEER,
        &[&noise(1, 200), &noise(5, 50)],
        &[],
    );
    assert_eq!(last(&verdicts), Verdict::NotBitTorrent);
    // Base64 and text are not random enough.
    let base64: Vec<u8> = noise(6, 300)
        .iter()
        .map(|b| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[usize::from(b % 64)]
        })
        .collect();
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40011",
        PEER,
        &[&base64],
        &[&noise(2, 200)],
    );
    assert_eq!(verdicts[3], Verdict::NotBitTorrent);
}

fn tls_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend(noise(9, 512 - 6)); // random, session id, and the rest
    hello
}

#[test]
fn common_tcp_protocols_of_a_bittorrent_host_are_not_bittorrent() {
    let mut c = classifier_knowing_client();
    let flows: [(&str, &[u8], &[u8]); 4] = [
        (
            "198.51.100.70:443",
            &tls_client_hello(),
            &[0x16, 0x03, 0x03, 0x00, 0x7a, 2, 0, 0, 0x76, 3, 3],
        ),
        (
            "198.51.100.71:22",
            b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
            b"SSH-2.0-OpenSSH_9.2p1\r\n",
        ),
        (
            "198.51.100.72:80",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ),
        ("198.51.100.73:853", &noise(10, 60), &noise(11, 60)),
    ];
    for (server, request, answer) in flows {
        let verdicts = tcp_flow(&mut c, "192.168.1.10:41000", server, &[request], &[answer]);
        assert_eq!(verdicts[3], Verdict::NotBitTorrent, "{server}");
        assert!(never_bittorrent(&verdicts));
    }
    // A server that speaks first (SSH, SMTP) is decided at its banner.
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:41001",
        "198.51.100.74:22",
        &[],
        &[b"SSH-2.0-OpenSSH_9.6\r\n"],
    );
    assert_eq!(last(&verdicts), Verdict::NotBitTorrent);
}

fn dns_query() -> Vec<u8> {
    let mut query = vec![0x41, 0x00, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend(b"\x07example\x03com\x00\x00\x01\x00\x01");
    query
}

#[test]
fn common_udp_protocols_are_not_bittorrent() {
    let mut c = classifier_knowing_client();
    let mut dns_answer = dns_query();
    dns_answer[2] = 0x81;
    dns_answer[3] = 0x80;
    let mut quic = vec![0xc3, 0, 0, 0, 1, 8];
    quic.extend(noise(12, 1200 - 6));
    let mut wireguard = vec![1, 0, 0, 0];
    wireguard.extend(noise(13, 144));
    let mut wireguard_answer = vec![2, 0, 0, 0];
    wireguard_answer.extend(noise(14, 88));
    let mut wireguard_data = vec![4, 0, 0, 0];
    wireguard_data.extend(noise(15, 128));
    let (query, quic_answer) = (dns_query(), noise(16, 1200));
    let flows: [(&str, Vec<&[u8]>); 3] = [
        ("198.51.100.80:53", vec![&query, &dns_answer]),
        ("198.51.100.81:443", vec![&quic, &quic_answer]),
        (
            "198.51.100.82:51820",
            vec![&wireguard, &wireguard_answer, &wireguard_data],
        ),
    ];
    for (server, packets) in flows {
        let mut verdicts = Vec::new();
        for (i, payload) in packets.iter().enumerate() {
            let (src, dst) = if i % 2 == 0 {
                ("192.168.1.10:42000", server)
            } else {
                (server, "192.168.1.10:42000")
            };
            verdicts.push(c.packet(&udp(src, dst, payload), 1));
        }
        assert!(never_bittorrent(&verdicts), "{server}: {verdicts:?}");
        assert!(
            verdicts.contains(&Verdict::NotBitTorrent),
            "{server}: {verdicts:?}"
        );
    }
}

#[test]
fn ipv6_handshake_and_utp() {
    let mut c = classifier();
    let (client, peer) = ("[2001:db8::10]:50000", "[2001:db8:1::5]:6881");
    let verdicts = tcp_flow(&mut c, client, peer, &[&handshake()], &[]);
    let Verdict::BitTorrent(detection) = last(&verdicts) else {
        panic!("{verdicts:?}")
    };
    assert_eq!(detection.reason, Reason::TcpHandshake);
    assert_eq!(detection.peer.addr, addr(peer));
    c.packet(
        &udp(
            client,
            "[2001:db8:1::6]:6881",
            &utp_header(UTP_SYN, 0, 1, 1, 0),
        ),
        1,
    );
    let verdict = c.packet(
        &udp(
            "[2001:db8:1::6]:6881",
            client,
            &utp_header(UTP_STATE, 0, 1, 1, 1),
        ),
        1,
    );
    assert_eq!(reason(verdict), Some(Reason::UtpSyn));
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut packet = tcp(
        "[2001:db8::10]:50000",
        "[2001:db8:1::5]:6881",
        ACK,
        1,
        &handshake(),
    );
    packet[6] = 0; // hop-by-hop options, 8 bytes, then TCP
    let length = u16::from_be_bytes([packet[4], packet[5]]) + 8;
    packet[4..6].copy_from_slice(&length.to_be_bytes());
    packet.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(
        reason(classifier().packet(&packet, 1)),
        Some(Reason::TcpHandshake)
    );
}

#[test]
fn fragments_and_malformed_packets_are_unknown() {
    let mut c = classifier();
    let mut packet = udp(CLIENT, PEER, DHT_PING);
    packet[6] = 0x20;
    packet[7] = 0x10; // a later fragment
    assert_eq!(c.packet(&packet, 1), Verdict::Unknown);
    let packet = udp(CLIENT, PEER, DHT_PING);
    for end in 0..28 {
        assert_eq!(c.packet(&packet[..end], 1), Verdict::Unknown, "{end}");
    }
    let mut packet = tcp(CLIENT, PEER, ACK, 1, b"x");
    packet[32] = 0x40; // a TCP header shorter than 20 bytes
    assert_eq!(c.packet(&packet, 1), Verdict::Unknown);
    assert_eq!(c.packet(b"\x70\x00", 1), Verdict::Unknown);
}

#[test]
fn flows_stay_undecided_for_a_bounded_number_of_packets() {
    let mut c = classifier();
    let syn = utp_header(UTP_SYN, 0, 1, 1, 0);
    let verdicts: Vec<_> = (0..20)
        .map(|_| c.packet(&udp(CLIENT, PEER, &syn), 1))
        .collect();
    let limit = usize::from(Limits::default().max_payload_packets);
    assert_eq!(verdicts[..limit], vec![Verdict::NeedMore; limit]);
    assert_eq!(verdicts[limit..], vec![Verdict::NotBitTorrent; 20 - limit]);
}

#[test]
fn idle_flows_start_afresh_and_full_tables_forget_the_oldest() {
    let mut c = Classifier::new(Limits {
        max_flows: 16,
        ..Limits::default()
    });
    c.packet(&udp(CLIENT, PEER, &dns_query()), 1);
    let fresh_start = 1 + Limits::default().flow_idle_ms + 1;
    assert_eq!(
        reason(c.packet(&udp(CLIENT, PEER, DHT_PING), fresh_start)),
        Some(Reason::DhtMessage)
    );
    for port in 0..10_000u16 {
        let client = format!("192.168.1.10:{}", 10_000 + port);
        c.packet(
            &udp(&client, PEER, &dns_query()),
            fresh_start + u64::from(port),
        );
    }
    assert!(c.flows.iter().count() <= 16);
}

#[test]
fn reason_names_are_unique_snake_case() {
    let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Reason::ALL.len());
    assert!(names
        .iter()
        .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
}

#[test]
fn pcap_reader_handles_its_link_types() {
    let ip_packet = udp(CLIENT, PEER, DHT_PING);
    let mut ethernet = vec![0; 12];
    ethernet.extend([0x81, 0x00, 0, 5, 0x08, 0x00]); // a VLAN tag, then IPv4
    let mut sll = vec![0; 14];
    sll.extend([0x08, 0x00]);
    let mut sll2 = vec![0x08, 0x00];
    sll2.extend([0; 18]);
    for (link, header) in [(1u32, ethernet), (113, sll), (276, sll2), (101, vec![])] {
        let mut file = vec![
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0,
        ];
        file.extend(link.to_le_bytes());
        let frame = [header, ip_packet.clone()].concat();
        file.extend(7u32.to_le_bytes());
        file.extend(500_000u32.to_le_bytes());
        file.extend((frame.len() as u32).to_le_bytes());
        file.extend((frame.len() as u32).to_le_bytes());
        file.extend(&frame);
        file.extend([1, 2, 3]); // a truncated record
        let packets: Vec<_> = pcap::packets(&file).unwrap().collect();
        assert_eq!(packets.len(), 1, "link type {link}");
        assert_eq!(packets[0].time_ms, 7500);
        assert_eq!(packets[0].ip_packet, &ip_packet[..]);
    }
    assert!(
        pcap::packets(b"\x0a\x0d\x0d\x0a").is_none(),
        "pcapng is not read"
    );
}

fn fixed_seed(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x15df),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(fixed_seed(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut c = classifier();
        c.packet(&bytes, 1);
        // The same bytes behind a valid IPv4 or IPv6 header and TCP or UDP.
        for protocol in [Transport::Tcp, Transport::Udp] {
            for (src, dst) in [(CLIENT, PEER), ("[2001:db8::1]:1", "[2001:db8::2]:2")] {
                let mut packet = ip(protocol, src, dst, ACK, 1, &bytes);
                c.packet(&packet, 1);
                // ... with the transport header overwritten too.
                let start = if src.starts_with('[') { 40 } else { 20 };
                packet.truncate(start);
                packet.extend(&bytes);
                c.packet(&packet, 1);
            }
        }
    }

    #[test]
    fn arbitrary_bencode_and_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut c = classifier();
        let tracker = "192.0.2.1:80";
        tcp_flow(&mut c, CLIENT, tracker, &[b"GET /a?info_hash=1&peer_id=2 HTTP/1.1\r\n\r\n"], &[&[b"HTTP/1.1 200 OK\r\n\r\nd5:peers".as_slice(), &bytes].concat()]);
        c.packet(&udp(CLIENT, PEER, DHT_PING), 1);
        c.packet(&udp(PEER, CLIENT, &[b"d1:rd2:id20:abcdefghij0123456789".as_slice(), &bytes].concat()), 1);
        c.packet(&udp(PEER, CLIENT, &[b"d".as_slice(), &bytes].concat()), 1);
    }

    /// Random payloads, several per flow in both directions, of hosts not
    /// known to run BitTorrent (an MSE key exchange is random bytes too).
    #[test]
    fn random_payloads_are_never_bittorrent(
        udp_flow in any::<bool>(),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 1..6),
    ) {
        let mut c = classifier();
        let protocol = if udp_flow { Transport::Udp } else { Transport::Tcp };
        let mut seqs = [1000u32, 5000u32];
        for (i, payload) in payloads.iter().enumerate() {
            let (src, dst) = if i % 2 == 0 { (CLIENT, PEER) } else { (PEER, CLIENT) };
            let verdict = c.packet(&ip(protocol, src, dst, ACK, seqs[i % 2], payload), 1);
            seqs[i % 2] += payload.len() as u32;
            prop_assert!(!matches!(verdict, Verdict::BitTorrent(_)), "{:?}", verdict);
        }
    }

    /// Random uTP-shaped packets: a valid header, random fields.
    #[test]
    fn random_utp_headers_are_never_bittorrent(
        fields in proptest::collection::vec((0u8..5, any::<u16>(), any::<u16>(), any::<u16>(), 0usize..40), 1..6),
    ) {
        let mut c = classifier();
        for (i, &(kind, connection, seq, ack, extra)) in fields.iter().enumerate() {
            let (src, dst) = if i % 2 == 0 { (CLIENT, PEER) } else { (PEER, CLIENT) };
            let mut packet = utp_header(kind, 0, connection, seq, ack);
            packet.extend(noise(u64::from(seq), extra));
            let verdict = c.packet(&udp(src, dst, &packet), 1);
            prop_assert!(!matches!(verdict, Verdict::BitTorrent(_)), "{:?}", verdict);
        }
    }
}

#[test]
fn http_tracker_answer_with_its_body_in_a_segment_of_its_own() {
    let mut c = classifier();
    let request = b"GET /announce?info_hash=%aa&peer_id=x&compact=1 HTTP/1.1\r\n\r\n";
    let headers = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 78\r\n\r\n";
    let body = [
        &b"d8:completei1e10:incompletei1e8:intervali10e5:peers6:"[..],
        &compact("198.51.100.2:40000"),
        b"e",
    ]
    .concat();
    tcp_flow(
        &mut c,
        CLIENT,
        "198.51.100.2:7070",
        &[request],
        &[headers, &body],
    );
    let syn = c.packet(&tcp(CLIENT, "198.51.100.2:40000", SYN, 1, b""), 3);
    assert_eq!(reason(syn), Some(Reason::TrackerAnswerPeer));
}

#[test]
fn table_entries_stay_small() {
    // 4,096 flows (120 bytes each) and 8,192 peers (32 bytes) by default: 0.75 MB.
    assert!(std::mem::size_of::<Option<table::Slot<FlowKey, Flow>>>() <= 120);
    assert!(std::mem::size_of::<Option<table::Slot<Ep, Reason>>>() <= 32);
}
