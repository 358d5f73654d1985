//! The BitTorrent signatures, one function per message kind, each looking at
//! one payload; and the peer lists that tracker and DHT answers reveal.
//! References: BEP 3 (peer wire, HTTP trackers), 5 (DHT), 14 (local service
//! discovery), 15 (UDP trackers), 23 (compact peer lists), 29 (uTP), and the
//! message stream encryption (MSE) specification.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bencode::{self, Value};
use super::ip::{be16, be32, Ep};

/// The start of the peer wire handshake, in the clear over TCP or uTP.
pub(super) const HANDSHAKE: &[u8; 20] = b"\x13BitTorrent protocol";

/// Local service discovery announces, sent to a multicast group.
const LSD: &[u8] = b"BT-SEARCH * HTTP/1.1\r\n";

/// The BEP 15 protocol id that opens a UDP tracker connect request.
const UDP_TRACKER_MAGIC: [u8; 8] = 0x0417_2710_1980_u64.to_be_bytes();

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum HttpTracker {
    Announce,
    Scrape,
}

/// An HTTP tracker request: a GET whose query has `info_hash` (and
/// `peer_id` for an announce; a scrape's path says `scrape`).
pub(super) fn http_tracker(payload: &[u8]) -> Option<HttpTracker> {
    let line = payload.strip_prefix(b"GET ")?;
    let line = &line[..find(line, b" ").unwrap_or(line.len())];
    let query = find(line, b"?").map_or(&b""[..], |at| &line[at + 1..]);
    let has = |name: &[u8]| {
        query
            .split(|&b| b == b'&')
            .any(|param| param.starts_with(name))
    };
    if !has(b"info_hash=") {
        None
    } else if find(&line[..line.len() - query.len()], b"scrape").is_some() {
        Some(HttpTracker::Scrape)
    } else {
        has(b"peer_id=").then_some(HttpTracker::Announce)
    }
}

pub(super) fn lsd_announce(payload: &[u8]) -> bool {
    payload.starts_with(LSD)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum UdpTracker {
    Connect,
    Announce,
}

/// A BEP 15 connect or announce request, and its transaction id. A connect
/// request has 64 bits of magic. An announce (98 bytes, then BEP 41
/// options) has action 1 and an event of at most 3, more than 60 fixed
/// bits; and, against binary protocols full of zeros, a connection id (from
/// the tracker's answer to connect), an info hash and a port that are not 0.
pub(super) fn udp_tracker_request(payload: &[u8]) -> Option<(UdpTracker, u32)> {
    let (action, transaction) = (be32(payload, 8)?, be32(payload, 12)?);
    if payload[..8] == UDP_TRACKER_MAGIC && action == 0 {
        return Some((UdpTracker::Connect, transaction));
    }
    let nonzero = |range: std::ops::Range<usize>| payload[range].iter().any(|&b| b != 0);
    let announce = (98..=98 + 512).contains(&payload.len())
        && action == 1
        && be32(payload, 80)? <= 3
        && nonzero(0..8)
        && nonzero(16..36)
        && nonzero(96..98);
    announce.then_some((UdpTracker::Announce, transaction))
}

/// The compact peers of a UDP tracker's answer to announce `transaction`:
/// IPv6 peers when the tracker is reached over IPv6 (BEP 15).
pub(super) fn udp_tracker_answer(payload: &[u8], transaction: u32, v6: bool) -> Option<Peers<'_>> {
    let ok = be32(payload, 0)? == 1 && be32(payload, 4)? == transaction;
    ok.then(|| Peers::compact(payload.get(20..).unwrap_or_default(), v6))
}

/// A KRPC message (BEP 5): one whole dictionary with a transaction id `t`, a
/// type `y` and, for queries and responses, the sender's 20-byte `id`.
pub(super) fn dht_message(payload: &[u8]) -> bool {
    let Some((Value::Dict(message), length)) = bencode::parse(payload) else {
        return false;
    };
    // One pass over the message's entries: lookups by key would parse it again each time.
    let (mut transaction, mut kind, mut method, mut body) = (false, None, false, None);
    for (key, value) in message.entries() {
        match key {
            b"t" => transaction = value.bytes().is_some(),
            b"y" => kind = value.bytes(),
            b"q" => method = value.bytes().is_some(),
            b"a" | b"r" | b"e" => body = Some((key, value)),
            _ => {}
        }
    }
    let has_id = |body: Value| {
        body.dict()
            .and_then(|b| b.get(b"id")?.bytes())
            .map(<[u8]>::len)
            == Some(20)
    };
    length == payload.len()
        && transaction
        && match (kind, body) {
            (Some(b"q"), Some((b"a", arguments))) => method && has_id(arguments),
            (Some(b"r"), Some((b"r", response))) => has_id(response),
            (Some(b"e"), Some((b"e", error))) => error.list().is_some(),
            _ => false,
        }
}

/// Peers and nodes in a DHT response's `values`, `nodes` and `nodes6`.
pub(super) fn dht_answer(payload: &[u8]) -> (Peers<'_>, Peers<'_>) {
    let body = bencode::parse(payload).and_then(|(v, _)| v.dict()?.get(b"r")?.dict());
    let field = |key: &[u8]| body.and_then(|b| b.get(key));
    let bytes = |key: &[u8]| field(key).and_then(Value::bytes).unwrap_or_default();
    let values = Peers::List(field(b"values").and_then(Value::list));
    let nodes = Peers::Nodes(bytes(b"nodes"), bytes(b"nodes6"));
    (values, nodes)
}

/// The part of an HTTP answer's segment after its headers, if they end here.
pub(super) fn http_body(segment: &[u8]) -> Option<&[u8]> {
    Some(&segment[find(segment, b"\r\n\r\n")? + 4..])
}

/// Peers in the start of an HTTP tracker's answer body (`peers`, compact or
/// a list of dictionaries, and `peers6`).
pub(super) fn http_tracker_answer(mut body: &[u8]) -> (Peers<'_>, Peers<'_>) {
    // A chunked body starts with its first chunk's size in hexadecimal.
    if let Some(end) = find(body.get(..10).unwrap_or(body), b"\r\n") {
        if body[..end].iter().all(u8::is_ascii_hexdigit) {
            body = &body[end + 2..];
        }
    }
    let (mut peers, mut peers6) = (Peers::List(None), Peers::List(None));
    for (key, value) in bencode::dict_prefix(body)
        .into_iter()
        .flat_map(|answer| answer.entries())
    {
        match (key, value) {
            (b"peers", Value::Bytes(compact)) => peers = Peers::compact(compact, false),
            (b"peers", Value::List(list)) => peers = Peers::List(Some(list)),
            (b"peers6", Value::Bytes(compact)) => peers6 = Peers::compact(compact, true),
            _ => {}
        }
    }
    (peers, peers6)
}

/// A peer list in one of its encodings, read lazily from the packet.
#[derive(Clone, Copy)]
pub(super) enum Peers<'a> {
    /// BEP 23 compact entries: 6 bytes for IPv4, 18 for IPv6.
    Compact(&'a [u8], bool),
    /// DHT `nodes` (26-byte entries) and `nodes6` (38-byte entries).
    Nodes(&'a [u8], &'a [u8]),
    /// A bencoded list: compact strings (DHT `values`) or dictionaries
    /// with `ip` and `port` (a non-compact tracker answer).
    List(Option<bencode::Items<'a>>),
}

impl<'a> Peers<'a> {
    fn compact(bytes: &'a [u8], v6: bool) -> Self {
        Peers::Compact(bytes, v6)
    }

    /// Calls `f` on each well-formed peer; stops quietly at malformed data.
    pub fn for_each(self, mut f: impl FnMut(Ep)) {
        match self {
            Peers::Compact(bytes, v6) => bytes
                .chunks_exact(if v6 { 18 } else { 6 })
                .filter_map(compact)
                .for_each(f),
            Peers::Nodes(v4, v6) => {
                let nodes = v4.chunks_exact(26).chain(v6.chunks_exact(38));
                nodes.filter_map(|node| compact(&node[20..])).for_each(f)
            }
            Peers::List(list) => {
                for peer in list.into_iter().flat_map(|list| list.values()) {
                    if let Some(peer) = list_peer(peer) {
                        f(peer)
                    }
                }
            }
        }
    }
}

fn list_peer(peer: Value) -> Option<Ep> {
    match peer {
        Value::Bytes(bytes) => compact(bytes),
        Value::Dict(peer) => {
            let ip = std::str::from_utf8(peer.get(b"ip")?.bytes()?)
                .ok()?
                .parse()
                .ok()?;
            let Value::Int(port) = peer.get(b"port")? else {
                return None;
            };
            Some((ip, u16::try_from(port).ok()?))
        }
        _ => None,
    }
}

/// One compact peer: address then port, both big-endian.
fn compact(bytes: &[u8]) -> Option<Ep> {
    let ip: IpAddr = match bytes.len() {
        6 => Ipv4Addr::from(be32(bytes, 0)?).into(),
        18 => Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?).into(),
        _ => return None,
    };
    Some((ip, be16(bytes, bytes.len() - 2)?))
}

/// A uTP header (BEP 29) that is well formed: version 1, a known type, a
/// valid extension chain. Returns type, connection id, seq_nr, ack_nr and
/// the payload after the extensions.
pub(super) struct Utp<'a> {
    pub kind: u8,
    pub connection: u16,
    pub seq: u16,
    pub ack: u16,
    pub payload: &'a [u8],
}

pub(super) const UTP_DATA: u8 = 0;
pub(super) const UTP_STATE: u8 = 2;
pub(super) const UTP_SYN: u8 = 4;

pub(super) fn utp(packet: &[u8]) -> Option<Utp<'_>> {
    let kind = packet.first()? >> 4;
    if packet[0] & 0x0f != 1 || kind > UTP_SYN || packet.len() < 20 {
        return None;
    }
    // Extensions: 1 selective ACK (a multiple of 4 bytes), 2 extension bits
    // (8 bytes), 3 close reason (libtorrent, 4 bytes).
    let (mut next, mut rest) = (packet[1], &packet[20..]);
    for _ in 0..4 {
        if next == 0 {
            break;
        }
        let length = usize::from(*rest.get(1)?);
        let ok = match next {
            1 => length >= 4 && length % 4 == 0,
            2 => length == 8,
            3 => length == 4,
            _ => false,
        };
        if !ok {
            return None;
        }
        next = rest[0];
        rest = rest.get(2 + length..)?;
    }
    let payload_ok = match kind {
        UTP_DATA => !rest.is_empty(),
        UTP_STATE | UTP_SYN => rest.is_empty(),
        _ => true,
    };
    (next == 0 && payload_ok).then(|| Utp {
        kind,
        connection: be16(packet, 2).unwrap_or_default(),
        seq: be16(packet, 16).unwrap_or_default(),
        ack: be16(packet, 18).unwrap_or_default(),
        payload: rest,
    })
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
