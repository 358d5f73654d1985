//! The server name inside a QUIC client's Initial packets. Initial packets
//! are protected with keys anyone can derive from the client's destination
//! connection id (RFC 9001 5.2, and RFC 9369 for QUIC version 2): so can the
//! router. It removes the header protection, opens the payload (AES-128-GCM),
//! collects the CRYPTO frames (a ClientHello with a post-quantum key share
//! spans two Initial packets, and browsers shuffle the frames) and reads the
//! ClientHello's server name with `tls.rs`.
//!
//! The cryptography is ring's, which the agent already links for rustls:
//! HKDF-SHA256, AES-128-GCM and QUIC header protection.

use ring::aead::{self, quic, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use super::{tls, Sighting};

const VERSION_1: u32 = 0x0000_0001;
const VERSION_2: u32 = 0x6b33_43cf;
/// RFC 9001 5.2.
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 3.3.1.
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];
const MAX_CID: usize = 20;
/// The CRYPTO bytes kept per connection: a ClientHello fits well within.
pub const MAX_CRYPTO: usize = tls::MAX_HELLO;

/// A client Initial packet, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initial {
    /// The destination connection id the keys came from: what the client's
    /// later Initial packets of this connection carry too.
    pub dcid: Vec<u8>,
    /// CRYPTO frames: (offset in the stream, bytes).
    pub crypto: Vec<(u64, Vec<u8>)>,
}

/// Opens the first packet of `datagram` if it is a client Initial of QUIC
/// version 1 or 2; None for anything else (other packets, other versions,
/// a packet that does not open: keys from another connection id, or
/// corrupted).
pub fn open_initial(datagram: &[u8]) -> Option<Initial> {
    let first = *datagram.first()?;
    // Long header, fixed bit.
    if first & 0xc0 != 0xc0 {
        return None;
    }
    let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
    let (salt, labels, initial_type) = match version {
        VERSION_1 => (&SALT_V1, ["quic key", "quic iv", "quic hp"], 0b00),
        VERSION_2 => (&SALT_V2, ["quicv2 key", "quicv2 iv", "quicv2 hp"], 0b01),
        _ => return None,
    };
    if (first >> 4) & 0b11 != initial_type {
        return None;
    }
    let mut at = 5;
    let dcid_len = usize::from(*datagram.get(at)?);
    if dcid_len > MAX_CID {
        return None;
    }
    let dcid = datagram.get(at + 1..at + 1 + dcid_len)?;
    at += 1 + dcid_len;
    let scid_len = usize::from(*datagram.get(at)?);
    if scid_len > MAX_CID {
        return None;
    }
    at += 1 + scid_len;
    let (token_len, n) = varint(datagram.get(at..)?)?;
    at = at
        .checked_add(n)?
        .checked_add(usize::try_from(token_len).ok()?)?;
    let (length, n) = varint(datagram.get(at..)?)?;
    let pn_offset = at + n;
    let end = pn_offset.checked_add(usize::try_from(length).ok()?)?;
    let mut packet = datagram.get(..end)?.to_vec();
    let keys = Keys::derive(salt, labels, dcid)?;

    // Header protection: a mask from 16 bytes sampled 4 past the packet
    // number's start.
    let sample = packet.get(pn_offset + 4..pn_offset + 20)?;
    let mask = keys.hp.new_mask(sample).ok()?;
    packet[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(packet[0] & 0x03) + 1;
    let mut pn = 0u64;
    for i in 0..pn_len {
        packet[pn_offset + i] ^= mask[1 + i];
        pn = pn << 8 | u64::from(packet[pn_offset + i]);
    }
    // A client's first packet numbers are small: the truncated number is
    // the whole one.
    let mut nonce = keys.iv;
    for (byte, pn_byte) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
        *byte ^= pn_byte;
    }
    let (header, payload) = packet.split_at_mut(pn_offset + pn_len);
    let plain = keys
        .key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header[..]),
            payload,
        )
        .ok()?;
    Some(Initial {
        dcid: dcid.to_vec(),
        crypto: crypto_frames(plain)?,
    })
}

/// The server name from the CRYPTO frames of a connection's Initial
/// packets so far (in any order, overlapping or not).
pub fn sighting(crypto: &[(u64, Vec<u8>)]) -> Sighting {
    let mut stream = Vec::new();
    // Join what starts at offset 0 and follows without a gap.
    let mut frames: Vec<&(u64, Vec<u8>)> = crypto.iter().collect();
    frames.sort_by_key(|(offset, _)| *offset);
    for (offset, data) in frames {
        let offset = usize::try_from(*offset).unwrap_or(usize::MAX);
        if offset > stream.len() {
            break;
        }
        let end = offset.saturating_add(data.len()).min(MAX_CRYPTO);
        if end > stream.len() {
            stream.extend_from_slice(&data[stream.len() - offset..end - offset]);
        }
    }
    tls::from_handshake(&stream)
}

/// The frames of an Initial packet's payload: its CRYPTO frames; None when
/// a frame is malformed or not allowed in an Initial packet.
fn crypto_frames(mut payload: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut crypto = Vec::new();
    while !payload.is_empty() {
        let (kind, n) = varint(payload)?;
        payload = &payload[n..];
        match kind {
            // PADDING, PING.
            0x00 | 0x01 => {}
            // ACK (0x03 with ECN counts).
            0x02 | 0x03 => {
                // Largest acknowledged, delay, then the range count.
                for _ in 0..2 {
                    let (_, n) = varint(payload)?;
                    payload = &payload[n..];
                }
                let (ranges, n) = varint(payload)?;
                payload = &payload[n..];
                // The first range, a gap and a length per further range,
                // three ECN counts. Each at least a byte: bounded by the
                // payload, whatever the count says.
                let ranges = usize::try_from(ranges).ok()?.min(payload.len());
                let fields = 1 + 2 * ranges + if kind == 0x03 { 3 } else { 0 };
                for _ in 0..fields {
                    let (_, n) = varint(payload)?;
                    payload = &payload[n..];
                }
            }
            0x06 => {
                let (offset, n) = varint(payload)?;
                payload = &payload[n..];
                let (length, n) = varint(payload)?;
                payload = &payload[n..];
                let length = usize::try_from(length).ok()?;
                let data = payload.get(..length)?;
                if offset.checked_add(length as u64)? <= MAX_CRYPTO as u64 {
                    crypto.push((offset, data.to_vec()));
                }
                payload = &payload[length..];
            }
            // CONNECTION_CLOSE: nothing after it matters.
            0x1c => break,
            _ => return None,
        }
    }
    Some(crypto)
}

/// A QUIC variable-length integer (RFC 9000 16): its value and length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let raw = bytes.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for &b in &raw[1..] {
        value = value << 8 | u64::from(b);
    }
    Some((value, len))
}

/// The client's Initial keys for one connection id.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    hp: quic::HeaderProtectionKey,
}

impl Keys {
    fn derive(salt: &[u8; 20], labels: [&str; 3], dcid: &[u8]) -> Option<Keys> {
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(dcid);
        let client: hkdf::Prk = expand_label(&initial, "client in", 32)
            .map(|secret| hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret))?;
        let key = expand_label(&client, labels[0], 16)?;
        let iv = expand_label(&client, labels[1], 12)?;
        let hp = expand_label(&client, labels[2], 16)?;
        Some(Keys {
            key: LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).ok()?),
            iv: iv.try_into().ok()?,
            hp: quic::HeaderProtectionKey::new(&quic::AES_128, &hp).ok()?,
        })
    }
}

/// HKDF-Expand-Label (RFC 8446 7.1) with an empty context.
fn expand_label(secret: &hkdf::Prk, label: &str, len: usize) -> Option<Vec<u8>> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(len).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label.as_bytes(), &[0]];
    let mut out = vec![0; len];
    secret.expand(&info, Len(len)).ok()?.fill(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sitename::samples::{client_hello, rfc9001_client_initial, sni, unhex};

    #[test]
    fn the_keys_are_rfc_9001s() {
        let dcid = unhex("8394c8f03e515708");
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &SALT_V1).extract(&dcid);
        let secret = expand_label(&initial, "client in", 32).unwrap();
        assert_eq!(
            secret,
            unhex("c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea")
        );
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        assert_eq!(
            expand_label(&client, "quic key", 16).unwrap(),
            unhex("1f369613dd76d5467730efcbe3b1a22d")
        );
        assert_eq!(
            expand_label(&client, "quic iv", 12).unwrap(),
            unhex("fa044b2f42a3fd3b46fb255c")
        );
        assert_eq!(
            expand_label(&client, "quic hp", 16).unwrap(),
            unhex("9f50449e04a0e810283a1e9933adedd2")
        );
    }

    #[test]
    fn the_rfc_9001_client_initial_names_its_server() {
        let packet = rfc9001_client_initial();
        assert_eq!(packet.len(), 1200);
        let initial = open_initial(&packet).expect("the RFC's packet opens");
        assert_eq!(initial.dcid, unhex("8394c8f03e515708"));
        assert_eq!(
            sighting(&initial.crypto),
            Sighting::Name {
                name: "example.com".into(),
                ech: false
            }
        );
        // One bit changed anywhere: it does not open.
        for bit in [0usize, 8 * 30, 8 * 600 + 3, 8 * 1199 + 7] {
            let mut bad = packet.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                open_initial(&bad)
                    .map(|i| sighting(&i.crypto))
                    .filter(|s| matches!(s, Sighting::Name { .. })),
                None,
                "bit {bit}"
            );
        }
    }

    /// Seals `payload` as a client Initial of `version` for `dcid` (what a
    /// QUIC client does; the tests' own encoder).
    fn seal(version: u32, dcid: &[u8], pn: u8, payload: &[u8]) -> Vec<u8> {
        let (salt, labels, kind) = match version {
            VERSION_1 => (&SALT_V1, ["quic key", "quic iv", "quic hp"], 0b00),
            _ => (&SALT_V2, ["quicv2 key", "quicv2 iv", "quicv2 hp"], 0b01),
        };
        let keys = Keys::derive(salt, labels, dcid).unwrap();
        let mut packet = vec![0xc0 | kind << 4]; // pn length 1
        packet.extend(version.to_be_bytes());
        packet.push(dcid.len() as u8);
        packet.extend(dcid);
        packet.push(0); // no scid
        packet.push(0); // no token
        let length = 1 + payload.len() + 16;
        packet.extend((0x4000u16 | length as u16).to_be_bytes());
        let pn_offset = packet.len();
        packet.push(pn);
        let mut nonce = keys.iv;
        nonce[11] ^= pn;
        let mut body = payload.to_vec();
        keys.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&packet[..]),
                &mut body,
            )
            .unwrap();
        packet.extend(body);
        let mask = keys
            .hp
            .new_mask(&packet[pn_offset + 4..pn_offset + 20])
            .unwrap();
        packet[0] ^= mask[0] & 0x0f;
        packet[pn_offset] ^= mask[1];
        packet
    }

    fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x06, 0x80];
        frame.extend(&(offset as u32).to_be_bytes()[1..]); // a 4-byte varint
        frame.extend((0x4000u16 | data.len() as u16).to_be_bytes());
        frame.extend(data);
        frame
    }

    #[test]
    fn a_hello_over_two_packets_in_shuffled_frames_is_read_in_v1_and_v2() {
        let hello = client_hello(&[
            (51, vec![1; 1500]),
            sni("video.example.com"),
            (21, vec![0; 50]),
        ]);
        let (a, b) = hello.split_at(700);
        let (b, c) = b.split_at(500);
        for version in [VERSION_1, VERSION_2] {
            let dcid = [0x11; 8];
            // Packet 0: the second and first pieces, then PING and padding.
            let mut first = crypto_frame(700, b);
            first.extend(crypto_frame(0, a));
            first.push(0x01);
            first.resize(first.len().max(1100), 0);
            // Packet 1: the last piece.
            let mut second = crypto_frame(1200, c);
            second.resize(second.len().max(1100), 0);
            let p0 = open_initial(&seal(version, &dcid, 0, &first)).unwrap();
            assert_eq!(
                sighting(&p0.crypto),
                Sighting::Incomplete,
                "not all of it yet"
            );
            let p1 = open_initial(&seal(version, &dcid, 1, &second)).unwrap();
            let mut all = p0.crypto.clone();
            all.extend(p1.crypto);
            assert_eq!(
                sighting(&all),
                Sighting::Name {
                    name: "video.example.com".into(),
                    ech: false
                },
                "version {version:#x}"
            );
        }
    }

    #[test]
    fn other_packets_are_not_initials() {
        let dcid = [7u8; 8];
        let payload = [
            crypto_frame(0, &client_hello(&[sni("a.example")])),
            vec![0; 1000],
        ]
        .concat();
        let mut v1 = seal(VERSION_1, &dcid, 0, &payload);
        assert!(open_initial(&v1).is_some());
        // A short header, another version, a Handshake packet type.
        assert_eq!(open_initial(&[0x40; 1200]), None);
        let mut other_version = v1.clone();
        other_version[1..5].copy_from_slice(&0xff00_001du32.to_be_bytes());
        assert_eq!(open_initial(&other_version), None);
        v1[0] = (v1[0] & 0xcf) | 0x20;
        assert_eq!(open_initial(&v1), None);
        // Every prefix of a valid packet, and junk: no panic, nothing opened.
        let whole = seal(VERSION_1, &dcid, 0, &payload);
        for cut in 0..whole.len() {
            assert_eq!(open_initial(&whole[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn frames_not_allowed_in_an_initial_refuse_the_packet() {
        let mut payload = crypto_frame(0, b"\x01\x00");
        payload.push(0x08); // a STREAM frame
        payload.resize(1100, 0);
        assert_eq!(open_initial(&seal(VERSION_1, &[1; 8], 0, &payload)), None);
        let mut ack = vec![0x02, 0x05, 0x00, 0x01, 0x00, 0x01, 0x01];
        ack.extend(crypto_frame(0, b"\x01"));
        ack.resize(1100, 0);
        let opened = open_initial(&seal(VERSION_1, &[1; 8], 0, &ack)).unwrap();
        assert_eq!(opened.crypto, vec![(0, vec![1])]);
    }
}
