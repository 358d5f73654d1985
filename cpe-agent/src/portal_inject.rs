//! Answers an HTTP request the router saw on its forward path (a copy
//! NFQUEUE hands the agent) as if the web server had: a forged segment with
//! the caller's HTTP response (a `302` to the portal) goes to the client, and
//! a reset goes to the server so it holds no half-open request. The caller
//! then drops the queued request, so the server never sees it.
//!
//! `forge` is pure: it reads the request's addresses, ports and sequence
//! numbers and writes the two packets, checksums included, so it is tested
//! without privileges. `Injector` is the only I/O: two raw sockets (IPv4 and
//! IPv6, header included) the packets leave by, which need `CAP_NET_RAW`.
//!
//! The packets follow from the request alone:
//! - to the client, from the server's address and port: `seq` is the
//!   request's `ack` (the server's next byte as the client knows it), `ack`
//!   is the request's `seq` plus its payload (and its FIN, if any), flags
//!   ACK|PSH|FIN, the HTTP response as payload, so the client reads the
//!   answer and sees the server close in one segment;
//! - to the server, from the client's address and port: RST|ACK with the
//!   request's own `seq` (exactly the byte the server expects next, since
//!   the caller drops this request, so the server accepts the reset at once
//!   rather than answering it with a challenge ACK) and the request's `ack`.
//!
//! The sockets are `socket2`'s (already linked through tokio and hyper), so
//! this module needs no `unsafe` of its own: the workspace forbids it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[cfg(test)]
mod tests;

/// Largest HTTP response `forge` sends: it must fit one segment on any
/// path (an IPv6 header, a TCP header and this stay under a 1480-byte MTU,
/// a PPPoE link's 1492 with room to spare).
pub const MAX_HTTP_BYTES: usize = 1400;

/// TTL (IPv4) and hop limit (IPv6) of both forged packets.
const HOP_LIMIT: u8 = 64;
/// Window the forged answer advertises. The client ignores it in practice:
/// the server is closing, and the client has nothing more to send.
const ANSWER_WINDOW: u16 = 65535;
/// `IPPROTO_RAW`: a raw socket for it sends packets whose IP header the
/// caller writes (for IPv6 since Linux 4.5).
const IPPROTO_RAW: i32 = 255;
/// IP protocol number (and IPv6 next header) of TCP.
const IPPROTO_TCP: u8 = 6;

const IPV4_HEADER_BYTES: usize = 20;
const IPV6_HEADER_BYTES: usize = 40;
const TCP_HEADER_BYTES: usize = 20;

/// IPv4 flags and fragment offset: Don't Fragment.
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// IPv4 flags and fragment offset: More Fragments, and the offset itself.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// The two packets that answer `request` (an IP packet, v4 or v6, TCP, from the client) with `http` as the server.
///
/// Send `to_server` first: the client answers `to_client` at once with
/// its own ACK and FIN, which the router forwards, and the server should
/// have forgotten the connection before they reach it (else it takes them
/// as out of order and answers the client with a stray duplicate ACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forged {
    /// From the server to the client: `http`, then the server's FIN.
    pub to_client: Vec<u8>,
    /// From the client to the server: a reset, so it forgets the connection.
    pub to_server: Vec<u8>,
}

/// Forges the server's answer to `request` (a whole IPv4 or IPv6 packet
/// carrying a TCP segment from the client) with `http` as its payload, and
/// the reset that clears the server's side.
///
/// `None` for anything it cannot answer safely: a packet that is truncated
/// (NFQUEUE may copy only a packet's head), malformed, a fragment, not TCP
/// (IPv6 extension headers included), a SYN or a RST, a segment without
/// ACK (whose `ack` would mean nothing), or an `http` longer than
/// [`MAX_HTTP_BYTES`].
pub fn forge(request: &[u8], http: &[u8]) -> Option<Forged> {
    if http.len() > MAX_HTTP_BYTES {
        return None;
    }
    let request = TcpRequest::parse(request)?;
    if request.flags & (TCP_SYN | TCP_RST) != 0 || request.flags & TCP_ACK == 0 {
        return None;
    }
    // Sequence space the request occupies: its bytes, and its FIN if the
    // client closed its side with it.
    let consumed = request.payload_bytes + u32::from(request.flags & TCP_FIN != 0);
    let answer = TcpSegment {
        source_port: request.destination_port,
        destination_port: request.source_port,
        seq: request.ack,
        ack: request.seq.wrapping_add(consumed),
        flags: TCP_ACK | TCP_PSH | TCP_FIN,
        window: ANSWER_WINDOW,
        payload: http,
    };
    let reset = TcpSegment {
        source_port: request.source_port,
        destination_port: request.destination_port,
        seq: request.seq,
        ack: request.ack,
        flags: TCP_RST | TCP_ACK,
        window: 0,
        payload: &[],
    };
    Some(Forged {
        to_client: request.addresses.reversed().packet(&answer),
        to_server: request.addresses.packet(&reset),
    })
}

/// Source and destination of a packet, of one IP version.
#[derive(Debug, Clone, Copy)]
enum AddressPair {
    V4 {
        source: Ipv4Addr,
        destination: Ipv4Addr,
    },
    V6 {
        source: Ipv6Addr,
        destination: Ipv6Addr,
    },
}

impl AddressPair {
    /// The pair a reply travels with.
    fn reversed(self) -> AddressPair {
        match self {
            AddressPair::V4 {
                source,
                destination,
            } => AddressPair::V4 {
                source: destination,
                destination: source,
            },
            AddressPair::V6 {
                source,
                destination,
            } => AddressPair::V6 {
                source: destination,
                destination: source,
            },
        }
    }

    /// A whole IP packet carrying `segment` between these addresses, both
    /// checksums computed.
    fn packet(&self, segment: &TcpSegment) -> Vec<u8> {
        let mut tcp = segment.encode();
        let tcp_checksum = self.tcp_checksum(&tcp);
        tcp[16..18].copy_from_slice(&tcp_checksum.to_be_bytes());
        match self {
            AddressPair::V4 {
                source,
                destination,
            } => {
                let total_length = u16::try_from(IPV4_HEADER_BYTES + tcp.len())
                    .expect("a forged segment is bounded by MAX_HTTP_BYTES");
                let mut packet = Vec::with_capacity(IPV4_HEADER_BYTES + tcp.len());
                packet.push(0x45); // Version 4, a 5-word header (no options).
                packet.push(0); // DSCP and ECN.
                packet.extend_from_slice(&total_length.to_be_bytes());
                packet.extend_from_slice(&[0, 0]); // Identification: unused with DF.
                packet.extend_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
                packet.push(HOP_LIMIT);
                packet.push(IPPROTO_TCP);
                packet.extend_from_slice(&[0, 0]); // Header checksum, below.
                packet.extend_from_slice(&source.octets());
                packet.extend_from_slice(&destination.octets());
                let header_checksum = Checksum::default().add(&packet).finish();
                packet[10..12].copy_from_slice(&header_checksum.to_be_bytes());
                packet.extend_from_slice(&tcp);
                packet
            }
            AddressPair::V6 {
                source,
                destination,
            } => {
                let payload_length = u16::try_from(tcp.len())
                    .expect("a forged segment is bounded by MAX_HTTP_BYTES");
                let mut packet = Vec::with_capacity(IPV6_HEADER_BYTES + tcp.len());
                // Version 6; traffic class and flow label 0.
                packet.extend_from_slice(&[0x60, 0, 0, 0]);
                packet.extend_from_slice(&payload_length.to_be_bytes());
                packet.push(IPPROTO_TCP);
                packet.push(HOP_LIMIT);
                packet.extend_from_slice(&source.octets());
                packet.extend_from_slice(&destination.octets());
                packet.extend_from_slice(&tcp);
                packet
            }
        }
    }

    /// The TCP checksum of `tcp` (its checksum field zero) between these
    /// addresses: over the pseudo-header of RFC 793 (IPv4) or RFC 8200
    /// section 8.1 (IPv6), then the segment.
    fn tcp_checksum(&self, tcp: &[u8]) -> u16 {
        let length = u32::try_from(tcp.len()).expect("a forged segment is small");
        let checksum = match self {
            AddressPair::V4 {
                source,
                destination,
            } => Checksum::default()
                .add(&source.octets())
                .add(&destination.octets())
                .add(&[0, IPPROTO_TCP])
                .add(&(length as u16).to_be_bytes()),
            AddressPair::V6 {
                source,
                destination,
            } => Checksum::default()
                .add(&source.octets())
                .add(&destination.octets())
                .add(&length.to_be_bytes())
                .add(&[0, 0, 0, IPPROTO_TCP]),
        };
        checksum.add(tcp).finish()
    }
}

/// What `forge` needs of the client's request.
#[derive(Debug)]
struct TcpRequest {
    addresses: AddressPair,
    source_port: u16,
    destination_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_bytes: u32,
}

impl TcpRequest {
    /// Reads an IPv4 or IPv6 packet carrying a whole TCP header; `None`
    /// when it is anything else, or shorter than its headers say.
    fn parse(packet: &[u8]) -> Option<TcpRequest> {
        let (addresses, segment) = match packet.first()? >> 4 {
            4 => ipv4_segment(packet)?,
            6 => ipv6_segment(packet)?,
            _ => return None,
        };
        if segment.len() < TCP_HEADER_BYTES {
            return None;
        }
        let header_bytes = usize::from(segment[12] >> 4) * 4;
        if header_bytes < TCP_HEADER_BYTES || header_bytes > segment.len() {
            return None;
        }
        Some(TcpRequest {
            addresses,
            source_port: u16::from_be_bytes([segment[0], segment[1]]),
            destination_port: u16::from_be_bytes([segment[2], segment[3]]),
            seq: u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]),
            ack: u32::from_be_bytes([segment[8], segment[9], segment[10], segment[11]]),
            flags: segment[13],
            payload_bytes: u32::try_from(segment.len() - header_bytes).ok()?,
        })
    }
}

/// The addresses and the TCP segment of an IPv4 packet: the bytes its total
/// length covers past its header (a link layer may pad the packet).
fn ipv4_segment(packet: &[u8]) -> Option<(AddressPair, &[u8])> {
    if packet.len() < IPV4_HEADER_BYTES {
        return None;
    }
    let header_bytes = usize::from(packet[0] & 0x0f) * 4;
    let total_length = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_bytes < IPV4_HEADER_BYTES
        || total_length < header_bytes
        || total_length > packet.len()
    {
        return None;
    }
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & IPV4_FRAGMENT_BITS;
    if fragment != 0 || packet[9] != IPPROTO_TCP {
        return None;
    }
    let addresses = AddressPair::V4 {
        source: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        destination: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
    };
    Some((addresses, &packet[header_bytes..total_length]))
}

/// The addresses and the TCP segment of an IPv6 packet with no extension
/// header: the bytes its payload length covers.
fn ipv6_segment(packet: &[u8]) -> Option<(AddressPair, &[u8])> {
    if packet.len() < IPV6_HEADER_BYTES {
        return None;
    }
    let payload_length = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    // A payload length of 0 with a hop-by-hop header is a jumbogram; any
    // other header in front of TCP is one `forge` does not walk.
    if packet[6] != IPPROTO_TCP || IPV6_HEADER_BYTES + payload_length > packet.len() {
        return None;
    }
    let address_at = |offset: usize| -> Option<Ipv6Addr> {
        let octets: [u8; 16] = packet[offset..offset + 16].try_into().ok()?;
        Some(Ipv6Addr::from(octets))
    };
    let addresses = AddressPair::V6 {
        source: address_at(8)?,
        destination: address_at(24)?,
    };
    Some((
        addresses,
        &packet[IPV6_HEADER_BYTES..IPV6_HEADER_BYTES + payload_length],
    ))
}

/// A TCP segment to encode, without options.
struct TcpSegment<'a> {
    source_port: u16,
    destination_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload: &'a [u8],
}

impl TcpSegment<'_> {
    /// The segment's bytes, with its checksum field zero.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(TCP_HEADER_BYTES + self.payload.len());
        bytes.extend_from_slice(&self.source_port.to_be_bytes());
        bytes.extend_from_slice(&self.destination_port.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.ack.to_be_bytes());
        bytes.push(((TCP_HEADER_BYTES / 4) as u8) << 4); // Data offset, no options.
        bytes.push(self.flags);
        bytes.extend_from_slice(&self.window.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]); // Checksum, filled in by the caller.
        bytes.extend_from_slice(&[0, 0]); // Urgent pointer.
        bytes.extend_from_slice(self.payload);
        bytes
    }
}

/// The Internet checksum (RFC 1071): the one's complement of the one's
/// complement sum of 16-bit words. Every piece but the last must have an
/// even length, which the headers here all have.
#[derive(Default)]
struct Checksum {
    sum: u64,
}

impl Checksum {
    fn add(mut self, bytes: &[u8]) -> Checksum {
        let mut words = bytes.chunks_exact(2);
        for word in &mut words {
            self.sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            self.sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
        self
    }

    fn finish(self) -> u16 {
        let mut sum = self.sum;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

/// The destination address of an IPv4 or IPv6 packet, if its header is
/// whole.
fn destination_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= IPV4_HEADER_BYTES => {
            let octets: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        6 if packet.len() >= IPV6_HEADER_BYTES => {
            let octets: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// Raw sockets the forged packets leave by (IPv4 and IPv6, header included). Needs CAP_NET_RAW.
#[derive(Debug)]
pub struct Injector {
    ipv4: Socket,
    ipv6: Socket,
}

impl Injector {
    /// Opens both sockets, close-on-exec (as `socket2` always opens them),
    /// so the processes the agent starts inherit neither.
    #[tracing::instrument(level = "debug")]
    pub fn open() -> anyhow::Result<Injector> {
        let raw = Some(Protocol::from(IPPROTO_RAW));
        let ipv4 = Socket::new(Domain::IPV4, Type::RAW, raw)
            .context("opening the raw IPv4 socket for forged answers (needs CAP_NET_RAW)")?;
        let ipv6 = Socket::new(Domain::IPV6, Type::RAW, raw)
            .context("opening the raw IPv6 socket for forged answers (needs CAP_NET_RAW)")?;
        // IPPROTO_RAW already implies both on Linux 4.5 and later (every
        // OpenWrt kernel); saying so costs nothing. IPV6_HDRINCL came with
        // 4.5, so its refusal only means an older kernel, logged.
        ipv4.set_header_included_v4(true)
            .context("setting IP_HDRINCL on the raw IPv4 socket")?;
        if let Err(error) = ipv6.set_header_included_v6(true) {
            tracing::debug!(%error, "IPV6_HDRINCL refused; relying on IPPROTO_RAW");
        }
        Ok(Injector { ipv4, ipv6 })
    }

    /// Sends `packet` (a whole IP packet, header included) to its
    /// destination address, on the socket of its IP version.
    pub fn send(&self, packet: &[u8]) -> anyhow::Result<()> {
        let destination = destination_of(packet)
            .context("sending a forged packet: not an IPv4 or IPv6 packet")?;
        let socket = match destination {
            IpAddr::V4(_) => &self.ipv4,
            IpAddr::V6(_) => &self.ipv6,
        };
        let address = SockAddr::from(SocketAddr::new(destination, 0));
        let sent = socket
            .send_to(packet, &address)
            .with_context(|| format!("sending a forged packet to {destination}"))?;
        anyhow::ensure!(
            sent == packet.len(),
            "sending a forged packet to {destination}: {sent} of {} bytes sent",
            packet.len()
        );
        Ok(())
    }
}

/// The answer to a gated HTTP request: a `302 Found` to `url` (one of the
/// signed config's portal URLs, printable ASCII without spaces: it cannot
/// end the header), with no body, small enough for one TCP segment.
pub fn portal_answer(url: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {url}\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}
