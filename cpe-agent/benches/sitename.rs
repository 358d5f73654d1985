//! What reading a flow's site name costs the router, per flow on one core
//! (issue 21): a browser's ClientHello in one TLS record and over TCP
//! segments' worth of records, an HTTP request head, and a QUIC client
//! Initial opened with its derived keys (HKDF, header protection,
//! AES-128-GCM over 1,200 bytes) and read; then the same on the packet
//! path's terms (`flow_reader`): whole IP packets through the name reader
//! (`sitename::flows::FlowReader`), which finds the payload, keeps a flow
//! whose hello spans packets and forgets it once decided. The figures are
//! in docs/benchmarks.md.
//!
//! Run: `cargo bench -p isdf-agent --bench sitename`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use isdf_agent::sitename::flows::{FlowReader, Read};
use isdf_agent::sitename::{http, quic, samples, tls, Sighting};

fn sitename(c: &mut Criterion) {
    let hello = samples::browser_hello("video.example.com");
    let one_record = samples::records(&hello, 16_384);
    let split = samples::records(&hello, 1_000);
    let head = b"GET /watch?v=42 HTTP/1.1\r\nHost: video.example.com\r\nUser-Agent: Mozilla/5.0 \
                 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 \
                 Safari/537.36\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: \
                 en-GB,en;q=0.9\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n";
    let initial = samples::rfc9001_client_initial();
    for (name, bytes) in [("tls", &one_record), ("tls_split", &split)] {
        assert!(matches!(tls::from_records(bytes), Sighting::Name { .. }));
        let mut group = c.benchmark_group("sitename");
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| b.iter(|| tls::from_records(black_box(bytes))));
        group.finish();
    }
    assert!(matches!(http::host(head), Sighting::Name { .. }));
    assert!(quic::open_initial(&initial).is_some());
    let mut group = c.benchmark_group("sitename");
    group.throughput(Throughput::Elements(1));
    group.bench_function("http", |b| b.iter(|| http::host(black_box(head))));
    group.bench_function("quic_initial", |b| {
        b.iter(|| {
            let opened = quic::open_initial(black_box(&initial)).expect("opens");
            quic::sighting(&opened.crypto)
        })
    });
    group.finish();
}

/// Per flow: its packets, in order, through one reader (the flow is
/// forgotten once decided, so every iteration reads a new flow).
fn flow_reader(c: &mut Criterion) {
    let hello = samples::records(&samples::browser_hello("video.example.com"), 16_384);
    let (first, second) = hello.split_at(hello.len() / 2);
    let head = b"GET / HTTP/1.1\r\nHost: video.example.com\r\nAccept: */*\r\n\r\n";
    let flows: [(&str, Vec<Vec<u8>>); 4] = [
        ("tls", vec![samples::ipv4_tcp(443, 1, &hello)]),
        (
            "tls_two_segments",
            vec![
                samples::ipv4_tcp(443, 1, first),
                samples::ipv4_tcp(443, 1 + first.len() as u32, second),
            ],
        ),
        ("http", vec![samples::ipv4_tcp(80, 1, head)]),
        (
            "quic_initial_ipv6",
            vec![samples::ipv6_udp(&samples::rfc9001_client_initial())],
        ),
    ];
    let mut group = c.benchmark_group("flow_reader");
    group.throughput(Throughput::Elements(1));
    for (name, packets) in &flows {
        let mut reader = FlowReader::new();
        let mut now_ms = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                now_ms += 1;
                let mut read = Read::Pending;
                for packet in packets {
                    read = reader.packet(black_box(packet), now_ms);
                }
                assert!(matches!(read, Read::Decided(Sighting::Name { .. })));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sitename, flow_reader);
criterion_main!(benches);
