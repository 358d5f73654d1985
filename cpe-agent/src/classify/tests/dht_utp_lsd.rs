//! BitTorrent's UDP protocols: DHT queries and answers (and the nodes and
//! peers they teach), uTP, local service discovery, and the endpoints learned
//! from them.

use super::*;

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
