//! A minimal reader of classic libpcap files, for the classifier's bench and
//! example: it yields the IP packets of Ethernet (with VLAN tags), Linux
//! cooked (SLL, SLL2) and raw IP captures. Not pcapng.

use super::ip::be16;

/// One captured IP packet and its capture time in milliseconds.
pub struct Captured<'a> {
    pub time_ms: u64,
    pub ip_packet: &'a [u8],
}

/// The IP packets of a classic pcap file, or `None` if `file` is not one.
/// Records of other link or network protocols are skipped; a truncated
/// last record ends the iteration.
pub fn packets(file: &[u8]) -> Option<impl Iterator<Item = Captured<'_>>> {
    let magic: [u8; 4] = file.get(..4)?.try_into().ok()?;
    let (big_endian, nanos) = match magic {
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        _ => return None,
    };
    let u32_at = move |bytes: &[u8], at: usize| -> Option<u32> {
        let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        })
    };
    let link = u32_at(file, 20)? & 0x0fff_ffff;
    let mut rest = file.get(24..)?;
    Some(std::iter::from_fn(move || loop {
        let length = u32_at(rest, 8)? as usize;
        let frame = rest.get(16..16 + length)?;
        let (seconds, fraction) = (u64::from(u32_at(rest, 0)?), u64::from(u32_at(rest, 4)?));
        rest = &rest[16 + length..];
        let time_ms = seconds * 1000 + fraction / if nanos { 1_000_000 } else { 1_000 };
        if let Some(ip_packet) = ip_of_frame(link, frame) {
            return Some(Captured { time_ms, ip_packet });
        }
    }))
}

fn ip_of_frame(link: u32, frame: &[u8]) -> Option<&[u8]> {
    let (mut ethertype, mut at) = match link {
        1 => (be16(frame, 12)?, 14),         // Ethernet
        113 => (be16(frame, 14)?, 16),       // Linux cooked (SLL)
        276 => (be16(frame, 0)?, 20),        // Linux cooked v2 (SLL2)
        12 | 14 | 101 => return Some(frame), // Raw IP
        _ => return None,
    };
    // 802.1Q and 802.1ad tags.
    while matches!(ethertype, 0x8100 | 0x88a8) {
        ethertype = be16(frame, at + 2)?;
        at += 4;
    }
    matches!(ethertype, 0x0800 | 0x86dd).then_some(frame.get(at..)?)
}
