//! Property tests with a fixed seed: arbitrary bytes and bencode never panic,
//! random payloads and uTP-shaped packets are never BitTorrent.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;

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

    /// Random payloads, several per flow in both directions, in flows not
    /// seen from their SYN (an MSE key exchange is random bytes too, and
    /// `mse.rs` tests what it catches of flows seen from the start).
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
