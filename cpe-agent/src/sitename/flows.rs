//! The name reader's memory of flows, pure: fed the client's packets of a
//! web flow (IP packets as NFQUEUE copies them), it joins what a name may
//! span (a ClientHello over several TCP segments, an HTTP head over
//! several, CRYPTO frames over several QUIC Initial packets) and says when
//! the flow's name is known, or known to be absent.
//!
//! Bounded: at most `FLOWS` flows are followed at once (a full bucket
//! forgets its oldest, whose flow the kernel then judges by its addresses
//! after its first packets), each keeping at most `MAX_STREAM` bytes; a
//! flow is forgotten as soon as it is decided. A flow whose first data was
//! not seen (the queue was full) reads as no protocol: unnamed.

use crate::classify::ip::{self, write_endpoint, Ep};
use crate::classify::table::{Key, Table};
use crate::classify::Transport;

use super::{http, quic, tls, Sighting};

/// Flows followed at once: flows whose name spans packets, on one LAN.
pub const FLOWS: usize = 256;
/// Bytes kept of one flow: a ClientHello with post-quantum key shares is
/// about 1.8 KiB, an HTTP head rarely 2; one that hides its name deeper is
/// judged nameless.
pub const MAX_STREAM: usize = 8 * 1024;
/// A flow not heard of for this long is forgotten (caller's milliseconds).
const IDLE_MS: u64 = 10_000;

/// What a client packet tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Not yet: the name may come in the flow's next packets.
    Pending,
    /// The flow's name (or its absence), final.
    Decided(Sighting),
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    protocol: Transport,
    client: Ep,
    server: Ep,
}

impl Key for FlowKey {
    fn bytes(&self) -> [u8; 40] {
        let mut bytes = [0; 40];
        write_endpoint(&mut bytes[..18], self.client);
        write_endpoint(&mut bytes[18..36], self.server);
        bytes[36] = self.protocol as u8;
        bytes
    }
}

enum Partial {
    /// The client's bytes from its first data on, and the sequence number
    /// that follows them.
    Tcp { next_seq: u32, stream: Vec<u8> },
    /// The CRYPTO frames of the connection's Initial packets so far.
    Quic {
        dcid: Vec<u8>,
        crypto: Vec<(u64, Vec<u8>)>,
    },
}

/// The flows being read.
pub struct FlowReader {
    flows: Table<FlowKey, Partial>,
}

impl Default for FlowReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowReader {
    pub fn new() -> Self {
        FlowReader {
            flows: Table::with_capacity(FLOWS),
        }
    }

    /// Reads one packet from the client of a web flow: TCP to port 80
    /// (HTTP) or 443 (TLS), UDP to 443 (QUIC). `now_ms`: the caller's clock.
    pub fn packet(&mut self, packet: &[u8], now_ms: u64) -> Read {
        let Some(p) = ip::parse(packet) else {
            return Read::Decided(Sighting::Other);
        };
        let key = FlowKey {
            protocol: p.protocol,
            client: p.src,
            server: p.dst,
        };
        let since = now_ms.saturating_sub(IDLE_MS);
        let read = match p.protocol {
            // A SYN's data (TCP Fast Open) follows the one number it takes.
            Transport::Tcp => {
                let seq = p.seq.wrapping_add(u32::from(p.syn));
                self.tcp(key, seq, p.payload, p.dst.1, now_ms, since)
            }
            Transport::Udp => self.quic(key, p.payload, now_ms, since),
        };
        if read != Read::Pending {
            self.flows.remove(&key);
        }
        read
    }

    /// What is kept of `key`'s flow (heard of since `since`), or `start()`
    /// for a flow not followed yet; stamped `now_ms`.
    fn follow(
        &mut self,
        key: FlowKey,
        now_ms: u64,
        since: u64,
        start: impl FnOnce() -> Partial,
    ) -> &mut Partial {
        let index = match self.flows.find(&key, since) {
            Some(index) => index,
            None => self.flows.insert(key, start(), now_ms),
        };
        let slot = self.flows.slot_mut(index);
        slot.stamp = now_ms;
        &mut slot.value
    }

    fn tcp(
        &mut self,
        key: FlowKey,
        seq: u32,
        payload: &[u8],
        port: u16,
        now_ms: u64,
        since: u64,
    ) -> Read {
        if payload.is_empty() {
            return Read::Pending;
        }
        let partial = self.follow(key, now_ms, since, || Partial::Tcp {
            next_seq: seq,
            stream: Vec::new(),
        });
        let Partial::Tcp { next_seq, stream } = partial else {
            return Read::Decided(Sighting::Other);
        };
        // Where this segment starts relative to what we have: a
        // retransmission overlaps it, a later segment leaves a gap (wait
        // for the missing one, which TCP sends again).
        let ahead = seq.wrapping_sub(*next_seq) as i32;
        if ahead > 0 {
            return Read::Pending;
        }
        let overlap = ahead.unsigned_abs() as usize;
        let Some(new) = payload.get(overlap..).filter(|n| !n.is_empty()) else {
            return Read::Pending;
        };
        let room = MAX_STREAM - stream.len();
        stream.extend_from_slice(&new[..new.len().min(room)]);
        *next_seq = next_seq.wrapping_add(new.len() as u32);
        let sighting = if port == 80 {
            http::host(stream)
        } else {
            tls::from_records(stream)
        };
        match sighting {
            Sighting::Incomplete if stream.len() < MAX_STREAM => Read::Pending,
            Sighting::Incomplete => Read::Decided(Sighting::Nameless { ech: false }),
            decided => Read::Decided(decided),
        }
    }

    fn quic(&mut self, key: FlowKey, payload: &[u8], now_ms: u64, since: u64) -> Read {
        let Some(initial) = quic::open_initial(payload) else {
            // Not a client Initial of a version we know: a name we cannot
            // read (the flow is judged by its addresses).
            return Read::Decided(Sighting::Other);
        };
        let partial = self.follow(key, now_ms, since, || Partial::Quic {
            dcid: initial.dcid.clone(),
            crypto: Vec::new(),
        });
        let Partial::Quic { dcid, crypto } = partial else {
            return Read::Decided(Sighting::Other);
        };
        if *dcid != initial.dcid {
            // Another connection on the same ports: start over with it.
            *dcid = initial.dcid;
            crypto.clear();
        }
        let mut kept: usize = crypto.iter().map(|(_, bytes)| bytes.len()).sum();
        for frame in initial.crypto {
            if kept + frame.1.len() > MAX_STREAM {
                return Read::Decided(Sighting::Nameless { ech: false });
            }
            kept += frame.1.len();
            crypto.push(frame);
        }
        match quic::sighting(crypto) {
            Sighting::Incomplete => Read::Pending,
            decided => Read::Decided(decided),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sitename::samples;

    fn tcp(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        samples::ipv4_tcp(port, seq, payload)
    }

    fn udp6(payload: &[u8]) -> Vec<u8> {
        samples::ipv6_udp(payload)
    }

    fn named(name: &str) -> Read {
        Read::Decided(Sighting::Name {
            name: name.to_owned(),
            ech: false,
        })
    }

    #[test]
    fn a_client_hello_split_over_segments_is_joined_in_order() {
        let hello = samples::records(&samples::browser_hello("video.test"), 16 * 1024);
        let (first, second) = hello.split_at(hello.len() / 2);
        let mut reader = FlowReader::new();
        // The handshake's last ACK carries nothing.
        assert_eq!(reader.packet(&tcp(443, 1000, b""), 1), Read::Pending);
        assert_eq!(reader.packet(&tcp(443, 1000, first), 2), Read::Pending);
        // A retransmission of the first half changes nothing.
        assert_eq!(reader.packet(&tcp(443, 1000, first), 3), Read::Pending);
        let next = 1000 + first.len() as u32;
        assert_eq!(
            reader.packet(&tcp(443, next, second), 4),
            named("video.test")
        );
    }

    #[test]
    fn a_client_hello_in_the_syn_is_read() {
        let hello = samples::records(&samples::browser_hello("video.test"), 16 * 1024);
        let mut syn = tcp(443, 999, &hello);
        syn[33] = 0x02; // SYN alone
        assert_eq!(FlowReader::new().packet(&syn, 1), named("video.test"));
    }

    #[test]
    fn out_of_order_segments_wait_for_the_missing_one() {
        let head = b"GET / HTTP/1.1\r\nHost: news.test\r\nAccept: */*\r\n\r\n";
        let (first, second) = head.split_at(10);
        let mut reader = FlowReader::new();
        // The first data byte starts the stream; a later one arrives first
        // only after it, so the reader never starts mid-stream here.
        assert_eq!(reader.packet(&tcp(80, 5, first), 1), Read::Pending);
        let gap = 5 + first.len() as u32 + 3;
        assert_eq!(reader.packet(&tcp(80, gap, &second[3..]), 2), Read::Pending);
        // The retransmitted segment covers the gap and the rest again.
        let next = 5 + first.len() as u32;
        assert_eq!(reader.packet(&tcp(80, next, second), 3), named("news.test"));
    }

    #[test]
    fn what_is_no_protocol_or_too_long_is_decided_without_a_name() {
        let mut reader = FlowReader::new();
        assert_eq!(
            reader.packet(&tcp(443, 1, b"\x00\x01garbage"), 1),
            Read::Decided(Sighting::Other)
        );
        // A head growing past MAX_STREAM without a Host.
        let mut seq = 1;
        let mut last = Read::Pending;
        let chunk = [b'a'; 1400];
        let mut start = b"GET /".to_vec();
        start.extend_from_slice(&chunk[..1000]);
        for i in 0..8 {
            let payload: &[u8] = if i == 0 { &start } else { &chunk };
            last = reader.packet(&tcp(80, seq, payload), 2);
            seq += payload.len() as u32;
            if last != Read::Pending {
                break;
            }
        }
        assert_eq!(last, Read::Decided(Sighting::Nameless { ech: false }));
        assert_eq!(
            reader.packet(&udp6(b"not quic"), 3),
            Read::Decided(Sighting::Other)
        );
        assert_eq!(reader.packet(b"\x45", 4), Read::Decided(Sighting::Other));
    }

    #[test]
    fn a_quic_initial_is_read_over_ipv6() {
        let mut reader = FlowReader::new();
        assert_eq!(
            reader.packet(&udp6(&samples::rfc9001_client_initial()), 1),
            named("example.com")
        );
    }

    #[test]
    fn a_flow_left_idle_starts_over() {
        let head = b"GET / HTTP/1.1\r\nHost: news.test\r\n\r\n";
        let mut reader = FlowReader::new();
        assert_eq!(reader.packet(&tcp(80, 1, &head[..10]), 0), Read::Pending);
        // Long after, the rest alone is no request.
        assert_eq!(
            reader.packet(&tcp(80, 11, &head[10..]), IDLE_MS + 1),
            Read::Decided(Sighting::Other)
        );
    }
}
