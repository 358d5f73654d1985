//! Several packets in one fuzz input, and the packets the seeds are made of.
//!
//! An input is a sequence of records: one byte `step`, the packet's length
//! (two bytes, big-endian), the packet. The clock advances `step² × 10` ms
//! before each packet (up to 650 s, past the flow idle time), so one input
//! is a conversation over time. A truncated last record is cut to what is
//! there: any input is a valid sequence.

use std::net::{IpAddr, SocketAddr};

/// Bytes of each packet the kernel copies to the agent (`inspect.rs`:
/// whole packets, which a QUIC Initial needs).
pub const COPY_BYTES: usize = u16::MAX as usize;

/// The packets of `data`, each with the milliseconds the clock advanced
/// before it. At most `COPY_BYTES` of each, as the queue delivers them.
pub fn decode(data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&step, after) = rest.split_first()?;
        let length = match after {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => 0,
        };
        let body = after.get(2..).unwrap_or_default();
        let (packet, next) = body.split_at(length.min(body.len()));
        rest = next;
        let step = u64::from(step);
        Some((step * step * 10, &packet[..packet.len().min(COPY_BYTES)]))
    })
}

/// One record of an input: `packet` after a step of `step² × 10` ms.
pub fn encode(step: u8, packet: &[u8]) -> Vec<u8> {
    let length = u16::try_from(packet.len()).expect("a packet fits a record");
    let mut record = vec![step];
    record.extend(length.to_be_bytes());
    record.extend(packet);
    record
}

pub const SYN: u8 = 0x02;
pub const SYN_ACK: u8 = 0x12;
pub const ACK: u8 = 0x10;

/// An IPv4 or IPv6 packet (as the endpoints are) around a TCP header with
/// `flags` and `seq`, or a UDP header when `tcp` is None.
pub fn ip(tcp: Option<(u8, u32)>, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let parse = |text: &str| -> SocketAddr { text.parse().expect("an endpoint") };
    let (src, dst) = (parse(src), parse(dst));
    let mut l4 = Vec::new();
    l4.extend(src.port().to_be_bytes());
    l4.extend(dst.port().to_be_bytes());
    let next = match tcp {
        Some((flags, seq)) => {
            l4.extend(seq.to_be_bytes());
            l4.extend([0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            6
        }
        None => {
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
        _ => panic!("one address family per packet"),
    }
    packet.extend(l4);
    packet
}

pub fn tcp(src: &str, dst: &str, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    ip(Some((flags, seq)), src, dst, payload)
}

pub fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    ip(None, src, dst, payload)
}

/// A TCP connection from `client` to `server`: the handshake, then
/// `client_says` and `server_says` in turn.
pub fn tcp_conversation(
    client: &str,
    server: &str,
    client_says: &[&[u8]],
    server_says: &[&[u8]],
) -> Vec<Vec<u8>> {
    let mut packets = vec![
        tcp(client, server, SYN, 1000, b""),
        tcp(server, client, SYN_ACK, 5000, b""),
        tcp(client, server, ACK, 1001, b""),
    ];
    let (mut seq, mut answer_seq) = (1001u32, 5001u32);
    for i in 0..client_says.len().max(server_says.len()) {
        if let Some(segment) = client_says.get(i) {
            packets.push(tcp(client, server, ACK, seq, segment));
            seq += segment.len() as u32;
        }
        if let Some(answer) = server_says.get(i) {
            packets.push(tcp(server, client, ACK, answer_seq, answer));
            answer_seq += answer.len() as u32;
        }
    }
    packets
}
