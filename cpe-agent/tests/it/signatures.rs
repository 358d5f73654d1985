//! The `bittorrent-block` kernel fast path against crafted packets through a
//! real router namespace: each signature catches its BitTorrent message and
//! remembers both endpoints, later packets from or to them are dropped, and
//! ordinary traffic (DNS, QUIC, TLS, HTTP, SSH-like, random UDP) passes and
//! is never remembered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use isdf_agent::backend::nft::NftBackend;
use isdf_agent::backend::FirewallBackend;
use isdf_controller::model::{Labels, Selector};
use isdf_controller::services::compiler::{compile_firewall, CompiledAssignment};
use isdf_controller::services::{ServiceKind, ServiceSpec};

use crate::netns::Topology;

fn bittorrent_firewall() -> isdf_api::Firewall {
    let assignment = CompiledAssignment {
        id: uuid::Uuid::nil(),
        selector: Selector::parse("*").unwrap(),
        created_at: 0,
        spec: ServiceSpec::parse(
            ServiceKind::BittorrentBlock,
            &serde_json::json!({"block_secs": 600}),
        )
        .unwrap(),
    };
    compile_firewall(&Labels::default(), &[assignment], &[], None, 0)
}

const WAN_V4: &str = "198.51.100.2";
const WAN_V6: &str = "2001:db8:2::2";

/// Sends one UDP datagram from the LAN host (from `sport`) to `dst`; returns
/// whether the WAN host received it.
pub(crate) fn udp_passes(
    topo: &Topology,
    dst: SocketAddr,
    sport: u16,
    payload: &'static [u8],
) -> bool {
    let sink = topo.wan.enter(move || {
        let s = UdpSocket::bind(dst).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    });
    let v6 = dst.is_ipv6();
    topo.lan.enter(move || {
        let bind: SocketAddr = if v6 {
            format!("[::]:{sport}").parse().unwrap()
        } else {
            format!("0.0.0.0:{sport}").parse().unwrap()
        };
        let s = UdpSocket::bind(bind).unwrap();
        let _ = s.send_to(payload, dst);
    });
    let mut buf = [0u8; 2048];
    sink.recv_from(&mut buf)
        .is_ok_and(|(n, _)| &buf[..n] == payload)
}

/// Opens a TCP connection from the LAN host, sends `payload` and returns
/// whether the WAN server received it.
pub(crate) fn tcp_passes(topo: &Topology, dst: SocketAddr, payload: &'static [u8]) -> bool {
    let listener = topo.wan.enter(move || TcpListener::bind(dst).unwrap());
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        // Bounded: a dropped connection never arrives.
        let started = std::time::Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if started.elapsed() < Duration::from_millis(1500) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let mut buf = vec![0u8; payload.len()];
        stream.read_exact(&mut buf).ok()?;
        Some(buf)
    });
    topo.lan.enter(move || {
        if let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
            let _ = s.write_all(payload);
            std::thread::sleep(Duration::from_millis(600));
        }
    });
    server.join().unwrap().is_some_and(|got| got == payload)
}

pub(crate) fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// DNS, QUIC (v4 and v6), random UDP that starts like uTP, a WireGuard-like
/// UDP message, TLS, HTTP (also a path that starts like an announce) and an
/// SSH banner all pass the router.
pub(crate) fn ordinary_traffic_passes(topo: &Topology) {
    let dns_query: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
    let mut quic = [0u8; 1200];
    quic[0] = 0xc3;
    quic[1..5].copy_from_slice(&[0, 0, 0, 1]);
    quic[5] = 8;
    let quic: &'static [u8] = Box::leak(Box::new(quic));
    let tls_hello: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
    let ordinary_udp: [(&str, u16, &'static [u8]); 5] = [
        (WAN_V4, 53, dns_query),
        (WAN_V4, 443, quic),
        (WAN_V6, 443, quic),
        (WAN_V4, 40000, b"\x41\x00\x12\x34 twenty bytes of noise"),
        (
            WAN_V4,
            51820,
            b"\x01\x00\x00\x00 a wireguard-ish first message",
        ),
    ];
    // Wait until both families are routed (neighbour discovery done).
    for ip in [WAN_V4, WAN_V6] {
        let started = std::time::Instant::now();
        while !udp_passes(topo, addr(ip, 9), 32999, b"warm up") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{ip} is unreachable"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (ip, port, payload) in ordinary_udp {
        assert!(
            udp_passes(topo, addr(ip, port), 33000, payload),
            "udp {ip}:{port} passes"
        );
    }
    for (port, payload) in [
        (443u16, tls_hello),
        (
            80,
            b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
        ),
        (22, b"SSH-2.0-OpenSSH_9.2\r\n".as_slice()),
        (8080, b"GET /announcements HTTP/1.1\r\n\r\n".as_slice()),
    ] {
        assert!(
            tcp_passes(topo, addr(WAN_V4, port), payload),
            "tcp {port} passes"
        );
    }
}

#[test]
fn signatures_catch_bittorrent_and_nothing_else() {
    let topo = Topology::create("sig");
    let firewall = bittorrent_firewall();
    topo.router.enter({
        let firewall = firewall.clone();
        move || {
            NftBackend::new()
                .apply(&firewall, 0)
                .expect("the bittorrent firewall loads")
        }
    });
    let learned = || {
        let firewall = firewall.clone();
        topo.router
            .enter(move || NftBackend::new().learned_endpoints(&firewall).unwrap())
    };

    // Ordinary traffic first: none of it is caught.
    ordinary_traffic_passes(&topo);
    assert!(
        learned().is_empty(),
        "ordinary traffic was remembered: {:?}",
        learned()
    );

    // Each BitTorrent message is dropped and both its endpoints remembered.
    let utp_syn: &[u8] =
        b"\x41\x00\x30\x39\x01\x02\x03\x04\x00\x00\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00";
    let udp_tracker: &[u8] = b"\x00\x00\x04\x17\x27\x10\x19\x80\x00\x00\x00\x00\xde\xad\xbe\xef";
    let dht: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
    let cases: [(&str, u16, u16, &'static [u8]); 4] = [
        (WAN_V4, 6881, 41001, utp_syn),
        (WAN_V4, 6969, 41002, udp_tracker),
        (WAN_V6, 6882, 41003, dht),
        (WAN_V4, 6883, 41004, dht),
    ];
    for (ip, port, sport, payload) in cases {
        assert!(
            !udp_passes(&topo, addr(ip, port), sport, payload),
            "udp {ip}:{port} is dropped"
        );
    }
    let handshake: &[u8] = b"\x13BitTorrent protocol\x00\x00\x00\x00\x00\x10\x00\x05";
    assert!(!tcp_passes(&topo, addr(WAN_V4, 51413), handshake));
    assert!(!tcp_passes(
        &topo,
        addr(WAN_V4, 8000),
        b"GET /announce?info_hash=%12%34&peer_id=-TR3000- HTTP/1.1\r\n\r\n"
    ));
    let found = learned();
    for (ip, port) in [
        (WAN_V4, 6881),
        (WAN_V4, 6969),
        (WAN_V6, 6882),
        (WAN_V4, 51413),
        (WAN_V4, 8000),
    ] {
        assert!(
            found
                .iter()
                .any(|l| l.endpoint.addr.to_string() == ip && l.endpoint.port == port),
            "{ip}:{port} remembered: {found:?}"
        );
    }
    // The client's own UDP port too, but never its TCP port: that one is
    // ephemeral (a TCP signature remembers the connection's responder).
    assert!(found.iter().any(|l| l.endpoint.port == 41001));
    assert!(
        found
            .iter()
            .all(|l| l.endpoint.protocol != isdf_api::Protocol::Tcp
                || [51413, 8000].contains(&l.endpoint.port)),
        "only the TCP responders are remembered: {found:?}"
    );
    assert!(found
        .iter()
        .all(|l| l.remaining_ms > 590_000 && l.remaining_ms <= 600_000));

    // A remembered peer is cut for everything, whatever the payload.
    assert!(!udp_passes(&topo, addr(WAN_V4, 6881), 42000, b"hello"));
    assert!(!tcp_passes(&topo, addr(WAN_V4, 51413), b"plain"));
    // Others are not.
    assert!(udp_passes(&topo, addr(WAN_V4, 7000), 42000, b"hello"));
}
