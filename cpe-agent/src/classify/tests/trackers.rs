//! HTTP and UDP trackers: announces, their answers (and the peers they list,
//! which the classifier learns), scrapes and lookalikes.

use super::*;

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
