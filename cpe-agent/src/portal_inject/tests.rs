//! Tests of `forge`: requests written byte by byte here (not with the
//! module's own encoder), every header field of both answers, checksums
//! checked by a verifier of their own, and malformed input refused without
//! panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80);
const CLIENT_PORT: u16 = 40000;
const REQUEST_SEQ: u32 = 1_000_000;
const REQUEST_ACK: u32 = 7_000_000;
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
const FOUND: &[u8] =
    b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// A request segment to write by hand; `tcp_options` must be a multiple of
/// four bytes long.
struct Request<'a> {
    seq: u32,
    ack: u32,
    flags: u8,
    tcp_options: &'a [u8],
    payload: &'a [u8],
}

impl Default for Request<'_> {
    fn default() -> Self {
        Request {
            seq: REQUEST_SEQ,
            ack: REQUEST_ACK,
            flags: TCP_ACK | TCP_PSH,
            tcp_options: &[],
            payload: GET,
        }
    }
}

impl Request<'_> {
    /// The TCP segment, with a checksum field `forge` must not care about.
    fn segment(&self) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
        tcp.extend_from_slice(&80u16.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((((20 + self.tcp_options.len()) / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&[0x01, 0xf6, 0xab, 0xcd, 0, 0]); // Window, checksum, urgent.
        tcp.extend_from_slice(self.tcp_options);
        tcp.extend_from_slice(self.payload);
        tcp
    }

    /// An IPv4 packet with `ip_options` (a multiple of four bytes) in its
    /// header.
    fn ipv4(&self, ip_options: &[u8]) -> Vec<u8> {
        let tcp = self.segment();
        let header = 20 + ip_options.len();
        let mut packet = vec![0x40 | (header / 4) as u8, 0];
        packet.extend_from_slice(&((header + tcp.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0x12, 0x34, 0x40, 0, 63, 6, 0, 0]);
        packet.extend_from_slice(&CLIENT_V4.octets());
        packet.extend_from_slice(&SERVER_V4.octets());
        packet.extend_from_slice(ip_options);
        packet.extend_from_slice(&tcp);
        packet
    }

    fn ipv6(&self) -> Vec<u8> {
        let tcp = self.segment();
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[6, 63]);
        packet.extend_from_slice(&CLIENT_V6.octets());
        packet.extend_from_slice(&SERVER_V6.octets());
        packet.extend_from_slice(&tcp);
        packet
    }
}

/// The one's complement sum of `bytes` as 16-bit words, folded.
fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for word in bytes.chunks(2) {
        sum += u32::from(word[0]) << 8 | u32::from(*word.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// What a receiver reads of a forged packet, checking both checksums on
/// the way: a correct checksum makes the sum over what it covers 0xffff.
struct Received {
    source: IpAddr,
    destination: IpAddr,
    tcp: Vec<u8>,
}

impl Received {
    fn read(packet: &[u8]) -> Received {
        let (source, destination, tcp, pseudo_header) = match packet[0] >> 4 {
            4 => {
                assert_eq!(packet[0], 0x45, "version 4, no options");
                assert_eq!(
                    ones_complement_sum(&packet[..20]),
                    0xffff,
                    "IPv4 header checksum"
                );
                let tcp = &packet[20..];
                let mut pseudo = packet[12..20].to_vec();
                pseudo.extend_from_slice(&[0, 6]);
                pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                let source = IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).unwrap());
                let destination = IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).unwrap());
                (source, destination, tcp, pseudo)
            }
            6 => {
                let tcp = &packet[40..];
                let mut pseudo = packet[8..40].to_vec();
                pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 6]);
                let source = IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).unwrap());
                let destination = IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).unwrap());
                (source, destination, tcp, pseudo)
            }
            version => panic!("IP version {version}"),
        };
        let mut covered = pseudo_header;
        covered.extend_from_slice(tcp);
        assert_eq!(ones_complement_sum(&covered), 0xffff, "TCP checksum");
        Received {
            source,
            destination,
            tcp: tcp.to_vec(),
        }
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_be_bytes([self.tcp[offset], self.tcp[offset + 1]])
    }

    fn u32_at(&self, offset: usize) -> u32 {
        u32::from_be_bytes(self.tcp[offset..offset + 4].try_into().unwrap())
    }

    fn ports(&self) -> (u16, u16) {
        (self.u16_at(0), self.u16_at(2))
    }

    fn seq_ack(&self) -> (u32, u32) {
        (self.u32_at(4), self.u32_at(8))
    }

    fn flags(&self) -> u8 {
        self.tcp[13]
    }

    fn payload(&self) -> &[u8] {
        &self.tcp[usize::from(self.tcp[12] >> 4) * 4..]
    }

    /// Everything but the checksum: the data offset, window and urgent
    /// pointer of a segment without options.
    fn assert_plain_header(&self, window: u16) {
        assert_eq!(self.tcp[12], 0x50, "data offset 5, no options");
        assert_eq!(self.u16_at(14), window, "window");
        assert_eq!(self.u16_at(18), 0, "urgent pointer");
    }
}

/// The IPv4 header fields both forged packets share.
fn assert_ipv4_header(packet: &[u8]) {
    assert_eq!(packet[1], 0, "DSCP and ECN");
    assert_eq!(
        u16::from_be_bytes([packet[2], packet[3]]) as usize,
        packet.len()
    );
    assert_eq!(&packet[4..6], &[0, 0], "identification");
    assert_eq!(&packet[6..8], &[0x40, 0], "DF, not a fragment");
    assert_eq!(packet[8], 64, "TTL");
    assert_eq!(packet[9], 6, "protocol TCP");
}

/// The IPv6 header fields both forged packets share.
fn assert_ipv6_header(packet: &[u8]) {
    assert_eq!(&packet[..4], &[0x60, 0, 0, 0], "version, class, flow label");
    assert_eq!(
        u16::from_be_bytes([packet[4], packet[5]]) as usize,
        packet.len() - 40
    );
    assert_eq!(packet[6], 6, "next header TCP");
    assert_eq!(packet[7], 64, "hop limit");
}

/// The TCP fields of both answers to a request that carried `consumed`
/// sequence numbers, between `client` and `server`.
fn assert_answers(forged: &Forged, client: IpAddr, server: IpAddr, consumed: u32) {
    let answer = Received::read(&forged.to_client);
    assert_eq!((answer.source, answer.destination), (server, client));
    assert_eq!(answer.ports(), (80, CLIENT_PORT));
    assert_eq!(answer.seq_ack(), (REQUEST_ACK, REQUEST_SEQ + consumed));
    assert_eq!(answer.flags(), TCP_ACK | TCP_PSH | TCP_FIN);
    answer.assert_plain_header(65535);
    assert_eq!(answer.payload(), FOUND);

    let reset = Received::read(&forged.to_server);
    assert_eq!((reset.source, reset.destination), (client, server));
    assert_eq!(reset.ports(), (CLIENT_PORT, 80));
    assert_eq!(reset.seq_ack(), (REQUEST_SEQ, REQUEST_ACK));
    assert_eq!(reset.flags(), TCP_RST | TCP_ACK);
    reset.assert_plain_header(0);
    assert_eq!(reset.payload(), b"");
}

#[test]
fn an_ipv4_request_gets_the_answer_and_the_server_a_reset() {
    let forged = forge(&Request::default().ipv4(&[]), FOUND).expect("a plain request");
    assert_eq!(forged.to_client.len(), 20 + 20 + FOUND.len());
    assert_eq!(forged.to_server.len(), 40);
    assert_ipv4_header(&forged.to_client);
    assert_ipv4_header(&forged.to_server);
    assert_answers(
        &forged,
        CLIENT_V4.into(),
        SERVER_V4.into(),
        GET.len() as u32,
    );
}

#[test]
fn an_ipv6_request_gets_the_answer_and_the_server_a_reset() {
    let forged = forge(&Request::default().ipv6(), FOUND).expect("a plain request");
    assert_eq!(forged.to_client.len(), 40 + 20 + FOUND.len());
    assert_eq!(forged.to_server.len(), 60);
    assert_ipv6_header(&forged.to_client);
    assert_ipv6_header(&forged.to_server);
    assert_answers(
        &forged,
        CLIENT_V6.into(),
        SERVER_V6.into(),
        GET.len() as u32,
    );
}

#[test]
fn header_options_and_link_layer_padding_do_not_count_as_payload() {
    // Timestamps (with two NOPs), as Linux clients send on every segment.
    let timestamps = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let request = Request {
        tcp_options: &timestamps,
        ..Request::default()
    };
    // A router alert option (four bytes) in the IPv4 header.
    let mut ipv4 = request.ipv4(&[0x94, 4, 0, 0]);
    ipv4.extend_from_slice(&[0; 6]); // Ethernet padding past the total length.
    let forged = forge(&ipv4, FOUND).expect("options are fine");
    assert_answers(
        &forged,
        CLIENT_V4.into(),
        SERVER_V4.into(),
        GET.len() as u32,
    );

    let mut ipv6 = request.ipv6();
    ipv6.extend_from_slice(&[0; 6]);
    let forged = forge(&ipv6, FOUND).expect("options are fine");
    assert_answers(
        &forged,
        CLIENT_V6.into(),
        SERVER_V6.into(),
        GET.len() as u32,
    );
}

#[test]
fn a_request_with_fin_is_acknowledged_with_its_fin() {
    let request = Request {
        flags: TCP_ACK | TCP_PSH | TCP_FIN,
        ..Request::default()
    };
    let forged = forge(&request.ipv4(&[]), FOUND).unwrap();
    assert_answers(
        &forged,
        CLIENT_V4.into(),
        SERVER_V4.into(),
        GET.len() as u32 + 1,
    );
}

#[test]
fn the_acknowledgement_wraps_around_the_sequence_space() {
    let request = Request {
        seq: u32::MAX - 3,
        ..Request::default()
    };
    let answer = Received::read(&forge(&request.ipv6(), FOUND).unwrap().to_client);
    assert_eq!(answer.seq_ack().1, GET.len() as u32 - 4);
}

#[test]
fn a_request_without_payload_is_answered_too() {
    // The segment that completes the handshake carries no request yet, but
    // answering it is still consistent: the ack is the request's seq.
    let request = Request {
        payload: b"",
        ..Request::default()
    };
    let forged = forge(&request.ipv4(&[]), FOUND).unwrap();
    assert_answers(&forged, CLIENT_V4.into(), SERVER_V4.into(), 0);
}

#[test]
fn the_http_answer_must_fit_one_segment() {
    let longest = vec![b'x'; MAX_HTTP_BYTES];
    let forged = forge(&Request::default().ipv6(), &longest).expect("at the limit");
    assert_eq!(forged.to_client.len(), 40 + 20 + MAX_HTTP_BYTES);
    let too_long = vec![b'x'; MAX_HTTP_BYTES + 1];
    assert_eq!(forge(&Request::default().ipv6(), &too_long), None);
    assert_eq!(forge(&Request::default().ipv4(&[]), &too_long), None);
}

#[test]
fn truncated_packets_are_refused() {
    for packet in [
        Request::default().ipv4(&[0x94, 4, 0, 0]),
        Request::default().ipv6(),
    ] {
        for length in 0..packet.len() {
            assert_eq!(forge(&packet[..length], FOUND), None, "cut at {length}");
        }
    }
}

#[test]
fn segments_it_must_not_answer_are_refused() {
    for flags in [
        TCP_SYN,
        TCP_SYN | TCP_ACK,
        TCP_RST,
        TCP_RST | TCP_ACK,
        TCP_PSH,
        0,
    ] {
        let request = Request {
            flags,
            ..Request::default()
        };
        assert_eq!(forge(&request.ipv4(&[]), FOUND), None, "flags {flags:#x}");
        assert_eq!(forge(&request.ipv6(), FOUND), None, "flags {flags:#x}");
    }
}

#[test]
fn malformed_ip_headers_are_refused() {
    let valid = Request::default().ipv4(&[]);
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut packet = valid.clone();
        edit(&mut packet);
        forge(&packet, FOUND)
    };
    assert_eq!(with(&|p| p[9] = 17), None, "UDP");
    assert_eq!(with(&|p| p[0] = 0x44), None, "IHL 4");
    assert_eq!(with(&|p| p[0] = 0x4f), None, "IHL past the packet's end");
    assert_eq!(with(&|p| p[0] = 0x55), None, "version 5");
    assert_eq!(
        with(&|p| p[2..4].copy_from_slice(&[0, 19])),
        None,
        "total length under IHL"
    );
    assert_eq!(
        with(&|p| p[2..4].copy_from_slice(&[0xff, 0xff])),
        None,
        "total length past the end"
    );
    assert_eq!(
        with(&|p| p[6..8].copy_from_slice(&[0x20, 0])),
        None,
        "first fragment"
    );
    assert_eq!(
        with(&|p| p[6..8].copy_from_slice(&[0, 8])),
        None,
        "later fragment"
    );
    assert_eq!(forge(&[], FOUND), None, "empty");

    let valid = Request::default().ipv6();
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut packet = valid.clone();
        edit(&mut packet);
        forge(&packet, FOUND)
    };
    assert_eq!(with(&|p| p[6] = 17), None, "UDP");
    assert_eq!(with(&|p| p[6] = 0), None, "hop-by-hop extension header");
    assert_eq!(
        with(&|p| p[4..6].copy_from_slice(&[0xff, 0xff])),
        None,
        "payload past the end"
    );
    assert_eq!(
        with(&|p| p[4..6].copy_from_slice(&[0, 19])),
        None,
        "payload under a TCP header"
    );
}

#[test]
fn malformed_tcp_headers_are_refused() {
    for data_offset in [0u8, 4, 15] {
        let mut ipv4 = Request {
            payload: b"",
            ..Request::default()
        }
        .ipv4(&[]);
        ipv4[20 + 12] = data_offset << 4;
        assert_eq!(forge(&ipv4, FOUND), None, "data offset {data_offset}");
        let mut ipv6 = Request {
            payload: b"",
            ..Request::default()
        }
        .ipv6();
        ipv6[40 + 12] = data_offset << 4;
        assert_eq!(forge(&ipv6, FOUND), None, "data offset {data_offset}");
    }
}

#[test]
fn the_injector_finds_each_packets_destination() {
    let forged = forge(&Request::default().ipv4(&[]), FOUND).unwrap();
    assert_eq!(destination_of(&forged.to_client), Some(CLIENT_V4.into()));
    assert_eq!(destination_of(&forged.to_server), Some(SERVER_V4.into()));
    let forged = forge(&Request::default().ipv6(), FOUND).unwrap();
    assert_eq!(destination_of(&forged.to_client), Some(CLIENT_V6.into()));
    assert_eq!(destination_of(&forged.to_server), Some(SERVER_V6.into()));
    assert_eq!(destination_of(&forged.to_server[..39]), None);
    assert_eq!(destination_of(&[0x50; 60]), None);
    assert_eq!(destination_of(&[]), None);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        request in proptest::collection::vec(any::<u8>(), 0..200),
        http in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let _ = forge(&request, &http);
        let _ = destination_of(&request);
    }

    /// Bytes changed in a real request (where most of them still parse):
    /// never a panic, and whatever is forged checksums right.
    #[test]
    fn corrupted_requests_never_panic(
        ipv6 in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut packet = if ipv6 { Request::default().ipv6() } else { Request::default().ipv4(&[]) };
        for (at, byte) in edits {
            let len = packet.len();
            packet[at % len] = byte;
        }
        packet.truncate(cut % (packet.len() + 1) + 1);
        if let Some(forged) = forge(&packet, FOUND) {
            Received::read(&forged.to_client);
            Received::read(&forged.to_server);
        }
    }

    #[test]
    fn every_plain_request_is_answered_with_correct_checksums(
        ipv6 in any::<bool>(),
        seq in any::<u32>(),
        ack in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1400),
        http in proptest::collection::vec(any::<u8>(), 0..=MAX_HTTP_BYTES),
    ) {
        let request = Request { seq, ack, payload: &payload, ..Request::default() };
        let packet = if ipv6 { request.ipv6() } else { request.ipv4(&[]) };
        let forged = forge(&packet, &http).expect("a plain request");
        let answer = Received::read(&forged.to_client);
        prop_assert_eq!(answer.seq_ack(), (ack, seq.wrapping_add(payload.len() as u32)));
        prop_assert_eq!(answer.payload(), &http[..]);
        let reset = Received::read(&forged.to_server);
        prop_assert_eq!(reset.seq_ack(), (seq, ack));
    }
}

#[test]
fn the_portal_answer_is_a_bodyless_redirect_that_closes() {
    let answer = String::from_utf8(portal_answer("https://portal.isp.test/p/r/1?sig=ab")).unwrap();
    assert_eq!(
        answer,
        "HTTP/1.1 302 Found\r\nLocation: https://portal.isp.test/p/r/1?sig=ab\r\n\
         Cache-Control: no-store\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    assert!(answer.len() <= MAX_HTTP_BYTES);
}
