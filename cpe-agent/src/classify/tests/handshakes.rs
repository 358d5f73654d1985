//! TCP handshakes: in one segment, split, out of order, retransmitted, and
//! one byte off.

use super::*;

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
