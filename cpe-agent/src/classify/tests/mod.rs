//! The classifier's tests: hand-built packets for every reason, the
//! protocols that must never be flagged, and property tests for malformed
//! input and random payloads, one file per topic. This file holds the
//! packet builders they share.

mod dht_utp_lsd;
mod handshakes;
mod mse;
mod not_bittorrent;
mod packets;
mod properties;
mod teaches;
mod trackers;

use std::net::SocketAddr;

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

/// A host that already ran BitTorrent (here, a DHT ping): the rules are
/// the same for it.
fn classifier_knowing_client() -> Classifier {
    let mut c = classifier();
    c.packet(&udp(CLIENT, "198.51.100.99:6881", DHT_PING), 1);
    c
}

fn dns_query() -> Vec<u8> {
    let mut query = vec![0x41, 0x00, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend(b"\x07example\x03com\x00\x00\x01\x00\x01");
    query
}
