//! The agent's classifier on the packet path (NFQUEUE with bypass), for what
//! the kernel's fixed-offset signatures cannot see: a peer handshake split
//! across TCP segments and a tracker announce on another path. And the
//! queue fails open: with the agent killed, traffic still flows.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::harness::{blocking, in_wan, serve_greeting, wan, Stage, OPEN_PORT};
use crate::netns::Topology;

/// A WAN server that records how many bytes each connection sent.
fn recording_server(topo: &Topology, port: u16) -> std::sync::mpsc::Receiver<usize> {
    let listener = topo
        .wan
        .enter(move || TcpListener::bind(wan(port)).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let (mut total, mut buf) = (0, [0u8; 256]);
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                let _ = tx.send(total);
            });
        }
    });
    rx
}

/// Sends `pieces` from the LAN host as separate TCP segments, 100 ms apart.
fn send_pieces(topo: &Topology, port: u16, pieces: &'static [&'static [u8]]) {
    topo.lan.enter(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&wan(port), Duration::from_secs(1)) else {
            return;
        };
        stream.set_nodelay(true).unwrap();
        for piece in pieces {
            if stream.write_all(piece).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn the_classifier_catches_what_signatures_miss_and_fails_open() {
    in_wan("cls", |topo, work| async move {
        serve_greeting(OPEN_PORT).await;
        let handshakes = recording_server(&topo, 51413);
        let tracker = recording_server(&topo, 8081);
        let stage = Stage::prepare(&work, None).await;
        let (agent, _) = stage.start_with_bittorrent_block(&topo.router).await;

        // Ordinary traffic passes the live classifier untouched.
        let t = topo.clone();
        blocking(move || crate::signatures::ordinary_traffic_passes(&t)).await;

        // The handshake in two segments: the kernel signature needs all 20
        // bytes in one packet; the classifier reassembles and drops the
        // second segment.
        const SPLIT: &[&[u8]] = &[
            b"\x13BitTor",
            b"rent protocol\x00\x00\x00\x00\x00\x10\x00\x05",
        ];
        let t = topo.clone();
        blocking(move || send_pieces(&t, 51413, SPLIT)).await;
        let got = handshakes.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, 7, "the server got only the first segment");

        // An announce on a path no fixed signature knows.
        const ANNOUNCE: &[&[u8]] = &[b"GET /tracker/announce.php?info_hash=%aa%bb&peer_id=-TR3000-abcdefghijkl&port=51413 HTTP/1.1\r\nHost: t\r\n\r\n"];
        let t = topo.clone();
        blocking(move || send_pieces(&t, 8081, ANNOUNCE)).await;
        let got = tracker.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, 0, "the announce never reached the tracker");

        // Both peers are blocked from now on, whatever is sent.
        let t = topo.clone();
        assert!(!blocking(move || t.lan.tcp_works(wan(51413), Duration::from_millis(500))).await);
        let t = topo.clone();
        assert!(blocking(move || t.lan.tcp_works(wan(OPEN_PORT), Duration::from_secs(1))).await);

        // The controller hears why.
        let path = format!("/api/v1/devices/{}/events", stage.device);
        let started = std::time::Instant::now();
        loop {
            let events = stage.operator.get(&path).await;
            let reasons: Vec<String> = events["totals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["reason"].as_str().unwrap().to_owned())
                .collect();
            if reasons.iter().any(|r| r == "split_tcp_handshake")
                && reasons.iter().any(|r| r == "http_tracker_announce")
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the controller never got the classifier's reasons: {events}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Ending the detection early (say, a false positive) lets the peer
        // through again at once, kernel sets included.
        let socket = stage.config_path.with_file_name("agent.sock");
        let cli = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_isdf-agent"))
                .args(args)
                .arg("--socket")
                .arg(&socket)
                .output()
                .unwrap()
        };
        let listed: serde_json::Value =
            serde_json::from_slice(&cli(&["blocks", "--json"]).stdout).unwrap();
        let id = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["origin"] == "detection" && b["flow"]["dport"] == "51413")
            .unwrap_or_else(|| panic!("no detection of the peer: {listed}"))["id"]
            .to_string();
        assert!(cli(&["unblock", &id]).status.success());
        let t = topo.clone();
        assert!(
            blocking(move || t.lan.enter(move || TcpStream::connect_timeout(
                &wan(51413),
                Duration::from_secs(1)
            )
            .is_ok()))
            .await
        );

        // Fail open: with the agent gone, new flows still pass (the queue
        // has no listener and the rule has bypass).
        agent.kill();
        for port in [OPEN_PORT, OPEN_PORT] {
            let t = topo.clone();
            assert!(
                blocking(move || t.lan.tcp_works(wan(port), Duration::from_secs(1))).await,
                "traffic stops when the agent is gone"
            );
        }
    });
}

/// Deterministic random-looking bytes (xorshift), as an MSE key and padding.
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

/// A WAN peer that answers an MSE-shaped exchange: reads `i1` bytes,
/// answers 200 random bytes, reads message 3 (124 bytes), answers message
/// 4 (82 bytes), then counts what else arrives (the encrypted payload)
/// until the connection ends or goes quiet for 2 s.
fn mse_responder(topo: &Topology, port: u16, i1: usize) -> std::sync::mpsc::Receiver<usize> {
    let listener = topo
        .wan
        .enter(move || TcpListener::bind(wan(port)).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (seed, stream) in (0u64..).zip(listener.incoming().take(4)) {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let (mut first, mut third) = (vec![0; i1], [0u8; 124]);
            let handshake = stream.read_exact(&mut first).is_ok()
                && stream.write_all(&noise(100 + seed, 200)).is_ok()
                && stream.read_exact(&mut third).is_ok()
                && stream.write_all(&noise(200 + seed, 82)).is_ok();
            let (mut after, mut buf) = (0, [0u8; 1024]);
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || !handshake {
                    break;
                }
                after += n;
            }
            let _ = tx.send(after);
        }
    });
    rx
}

/// The LAN side of an MSE-shaped exchange: `i1` random bytes, the 200-byte
/// answer, message 3 (124 bytes), message 4, then 4,000 bytes of "payload".
fn mse_initiator(topo: &Topology, port: u16, i1: usize, seed: u64) {
    topo.lan.enter(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&wan(port), Duration::from_secs(1)) else {
            return;
        };
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (mut second, mut fourth) = ([0u8; 200], [0u8; 82]);
        let _ = stream.write_all(&noise(seed, i1)).is_ok()
            && stream.read_exact(&mut second).is_ok()
            && stream.write_all(&noise(seed + 1, 124)).is_ok()
            && stream.read_exact(&mut fourth).is_ok()
            && stream.write_all(&noise(seed + 2, 4000)).is_ok();
    });
}

/// The encrypted handshake recognised by its shape on a host never seen
/// running BitTorrent: message 4 is dropped, the peer blocked on both
/// transports, and the event says what the rule measured. Then the
/// operator turns heuristics off: the block ends and the same exchange
/// passes.
#[test]
fn the_mse_shape_is_caught_reported_with_its_features_and_can_be_turned_off() {
    in_wan("mse", |topo, work| async move {
        serve_greeting(OPEN_PORT).await;
        let port = 46881;
        let peer = mse_responder(&topo, port, 300);
        let stage = Stage::prepare(&work, None).await;
        let (_agent, service) = stage.start_with_bittorrent_block(&topo.router).await;

        let t = topo.clone();
        blocking(move || mse_initiator(&t, port, 300, 1)).await;
        let after = peer.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            after, 0,
            "message 4 never reached the initiator, nor payload the peer"
        );
        // The peer's endpoint is blocked, on TCP and on UDP.
        let blocks = wait_for_detection(&stage, "mse_handshake").await;
        let flows: Vec<String> = blocks.iter().map(|b| b["flow"].to_string()).collect();
        for protocol in ["tcp", "udp"] {
            assert!(
                flows
                    .iter()
                    .any(|f| f.contains(protocol) && f.contains(&port.to_string())),
                "{protocol}: {flows:?}"
            );
        }
        let reason = blocks[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("mse_handshake i1=300 r1=200 i2=124 r2=82 segs=1/1 bits="),
            "{reason}"
        );
        // The LAN host (known by the interface, its address being public)
        // now gets a closer look: more of its TCP flows' packets.
        let watch = topo
            .router
            .run("nft", &["list", "set", "inet", "isdf", "agent_bt_watch_v4"]);
        assert!(watch.contains("192.0.2.2"), "{watch}");
        // Totals count by rule, not by measurement.
        let events = stage
            .operator
            .get(&format!("/api/v1/devices/{}/events", stage.device))
            .await;
        assert!(
            events["totals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["reason"] == "mse_handshake"),
            "{events}"
        );
        // Ordinary traffic is untouched.
        let t = topo.clone();
        assert!(blocking(move || t.lan.tcp_works(wan(OPEN_PORT), Duration::from_secs(1))).await);

        // Heuristics off: a new revision of the service.
        let id = service["id"].as_str().unwrap();
        let r2 = stage
            .operator
            .post(
                &format!("/api/v1/services/{id}/revisions"),
                json!({"spec": {"block_secs": 600, "heuristics": false}}),
            )
            .await;
        let assignments = stage.operator.get("/api/v1/assignments").await;
        let assignment = assignments["items"][0]["id"].as_str().unwrap();
        stage
            .operator
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/assignments/{assignment}"),
                Some(json!({"revision": r2["revision"]})),
            )
            .await;
        stage.operator.wait_applied(&stage.device, 3).await;
        // The router ended them when it applied the config; the controller
        // hears of it with the next events (10 s at most).
        let path = format!("/api/v1/devices/{}/blocks", stage.device);
        let started = std::time::Instant::now();
        loop {
            let blocks = stage.operator.get(&path).await;
            if !blocks.to_string().contains("mse_handshake") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the heuristic's blocks never ended: {blocks}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let t = topo.clone();
        blocking(move || mse_initiator(&t, port, 300, 11)).await;
        let after = peer.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(after, 4000, "with heuristics off the exchange passes");
    });
}

/// Waits (10 s at most) until the controller lists router blocks of origin
/// `detection` whose reason starts with `rule`; returns them.
async fn wait_for_detection(stage: &Stage, rule: &str) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/devices/{}/blocks", stage.device);
    let started = std::time::Instant::now();
    loop {
        let listed = stage.operator.get(&path).await;
        let found: Vec<_> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| {
                b["origin"] == "detection" && b["reason"].as_str().unwrap_or("").starts_with(rule)
            })
            .cloned()
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {rule} detection reached the controller: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
