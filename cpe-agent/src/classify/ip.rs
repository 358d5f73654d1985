//! Finds the transport endpoints and payload of an IPv4 or IPv6 packet.
//! Anything malformed, truncated, a later fragment or neither TCP nor UDP is
//! `None`: the classifier only reads, so it need not say why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Transport;

/// An address and port, smaller than `SocketAddr` (which carries IPv6 flow
/// info and scope), because thousands of them sit in the flow table.
pub(crate) type Ep = (IpAddr, u16);

/// Tables hash endpoints as bytes: the address (IPv4 mapped into IPv6)
/// then the port.
impl super::table::Key for Ep {
    fn bytes(&self) -> [u8; 40] {
        let mut bytes = [0; 40];
        write_endpoint(&mut bytes[..18], *self);
        bytes
    }
}

impl super::table::Key for IpAddr {
    fn bytes(&self) -> [u8; 40] {
        (*self, 0).bytes()
    }
}

pub(crate) fn write_endpoint(bytes: &mut [u8], (ip, port): Ep) {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    bytes[..16].copy_from_slice(&octets);
    bytes[16..18].copy_from_slice(&port.to_be_bytes());
}

pub(crate) struct Packet<'a> {
    pub protocol: Transport,
    pub src: Ep,
    pub dst: Ep,
    /// TCP sequence number of the first payload byte (0 for UDP).
    pub seq: u32,
    /// A TCP SYN (with or without ACK): each side's first packet.
    pub syn: bool,
    pub payload: &'a [u8],
}

pub(super) fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn v6(bytes: &[u8]) -> Option<IpAddr> {
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into())
}

pub(crate) fn parse(packet: &[u8]) -> Option<Packet<'_>> {
    let (src, dst, mut next, mut rest) = match packet.first()? >> 4 {
        4 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(be16(packet, 2)?);
            // Only the first fragment carries the transport header.
            if header < 20 || total < header || be16(packet, 6)? & 0x1fff != 0 {
                return None;
            }
            let src = Ipv4Addr::from(be32(packet, 12)?).into();
            let dst = Ipv4Addr::from(be32(packet, 16)?).into();
            (
                src,
                dst,
                packet[9],
                packet.get(header..total.min(packet.len()))?,
            )
        }
        6 => {
            let length = usize::from(be16(packet, 4)?);
            let end = if length == 0 {
                packet.len()
            } else {
                (40 + length).min(packet.len())
            };
            let rest = packet.get(40..end)?;
            (v6(&packet[8..24])?, v6(&packet[24..40])?, packet[6], rest)
        }
        _ => return None,
    };
    // IPv6 extension headers; a bounded number, so crafted chains stay cheap.
    for _ in 0..8 {
        let length = match next {
            0 | 43 | 60 => (usize::from(*rest.get(1)?) + 1) * 8,
            44 if be16(rest, 2)? & 0xfff8 != 0 => return None,
            44 => 8,
            51 => (usize::from(*rest.get(1)?) + 2) * 4,
            _ => break,
        };
        next = *rest.first()?;
        rest = rest.get(length..)?;
    }
    let (src_port, dst_port) = (be16(rest, 0)?, be16(rest, 2)?);
    let (protocol, seq, syn, payload) = match next {
        6 => {
            let offset = usize::from(rest.get(12)? >> 4) * 4;
            if offset < 20 {
                return None;
            }
            let syn = rest.get(13)? & 0x02 != 0;
            (Transport::Tcp, be32(rest, 4)?, syn, rest.get(offset..)?)
        }
        17 => {
            let length = usize::from(be16(rest, 4)?);
            let end = if length < 8 {
                rest.len()
            } else {
                length.min(rest.len())
            };
            (Transport::Udp, 0, false, rest.get(8..end)?)
        }
        _ => return None,
    };
    Some(Packet {
        protocol,
        src: (src, src_port),
        dst: (dst, dst_port),
        seq,
        syn,
        payload,
    })
}
