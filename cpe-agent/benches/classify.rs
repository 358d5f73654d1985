//! Packets per second of the BitTorrent classifier on one core: over a
//! synthetic mix of BitTorrent and other flows, and over the captures of
//! `ISDF_BT_CAPTURES` (default /var/tmp/isdf-bt-captures) if it exists.
//! Each run starts from an empty classifier, so flows are inspected rather
//! than found decided.
//!
//! Run: `cargo bench -p isdf-agent --bench classify`

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use isdf_agent::classify::{pcap, Classifier, Limits};

/// A minimal IPv4 packet; the classifier ignores checksums.
fn ipv4(
    protocol: u8,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        unreachable!()
    };
    let mut l4 = [src.port().to_be_bytes(), dst.port().to_be_bytes()].concat();
    if protocol == 6 {
        l4.extend(seq.to_be_bytes());
        l4.extend([0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend((8 + payload.len() as u16).to_be_bytes());
        l4.extend([0, 0]);
    }
    l4.extend(payload);
    let mut packet = vec![0x45, 0];
    packet.extend((20 + l4.len() as u16).to_be_bytes());
    packet.extend([0, 0, 0x40, 0, 64, protocol, 0, 0]);
    packet.extend(s.octets());
    packet.extend(d.octets());
    packet.extend(l4);
    packet
}

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

/// 2,000 flows of a few packets each, a third of them BitTorrent: TCP
/// handshakes, uTP connections and DHT pings among HTTPS, HTTP, DNS, QUIC
/// and encrypted TCP.
fn synthetic_mix() -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut handshake = b"\x13BitTorrent protocol".to_vec();
    handshake.extend([0; 8]);
    handshake.extend(noise(1, 40));
    let mut tls = vec![0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3];
    tls.extend(noise(2, 506));
    for i in 0..2000u32 {
        let client: SocketAddr = (
            IpAddr::from([192, 168, 1, (i % 200) as u8]),
            20_000 + i as u16,
        )
            .into();
        let server: SocketAddr = (IpAddr::from([198, 51, (i >> 8) as u8, i as u8]), 6881).into();
        let tcp = |packets: &mut Vec<Vec<u8>>, request: &[u8], answer: &[u8]| {
            packets.push(ipv4(6, client, server, 0x02, 99, b""));
            packets.push(ipv4(6, server, client, 0x12, 499, b""));
            packets.push(ipv4(6, client, server, 0x10, 100, b""));
            packets.push(ipv4(6, client, server, 0x18, 100, request));
            packets.push(ipv4(6, server, client, 0x18, 500, answer));
            packets.push(ipv4(
                6,
                client,
                server,
                0x10,
                100 + request.len() as u32,
                b"",
            ));
        };
        let udp = |packets: &mut Vec<Vec<u8>>, request: &[u8], answer: &[u8]| {
            packets.push(ipv4(17, client, server, 0, 0, request));
            packets.push(ipv4(17, server, client, 0, 0, answer));
        };
        match i % 6 {
            0 => tcp(&mut packets, &handshake, &handshake),
            1 => {
                let syn = [
                    0x41, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0,
                ];
                let state = [
                    0x21, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 0, 1,
                ];
                udp(&mut packets, &syn, &state)
            }
            2 => udp(
                &mut packets,
                b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
                b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            ),
            3 => tcp(&mut packets, &tls, &noise(3, 1400)),
            4 => udp(&mut packets, &noise(4, 1200), &noise(5, 1200)),
            _ => tcp(
                &mut packets,
                b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n",
                &noise(6, 1400),
            ),
        }
    }
    packets
}

/// Up to a million IP packets of the capture directory's pcap files.
fn captured() -> Vec<Vec<u8>> {
    let dir =
        std::env::var("ISDF_BT_CAPTURES").unwrap_or_else(|_| "/var/tmp/isdf-bt-captures".into());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut packets = Vec::new();
    for entry in entries.flatten() {
        let Ok(file) = std::fs::read(entry.path()) else {
            continue;
        };
        let Some(found) = pcap::packets(&file) else {
            continue;
        };
        let room = 1_000_000 - packets.len();
        packets.extend(found.map(|p| p.ip_packet.to_vec()).take(room));
    }
    packets
}

fn bench(c: &mut Criterion, name: &str, packets: &[Vec<u8>]) {
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(packets.len() as u64));
    group.bench_function(name, |b| {
        b.iter_batched(
            || Classifier::new(Limits::default()),
            |mut classifier| {
                for (i, packet) in packets.iter().enumerate() {
                    black_box(classifier.packet(packet, i as u64 / 64));
                }
                classifier
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    bench(c, "synthetic_mix", &synthetic_mix());
    let captured = captured();
    if !captured.is_empty() {
        bench(c, "captures", &captured);
    }
}

criterion_group!(benches, classify);
criterion_main!(benches);
