//! The agent's classifier on the packet path (NFQUEUE with bypass), for what
//! the kernel's fixed-offset signatures cannot see: a peer handshake split
//! across TCP segments and a tracker announce on another path. And the
//! queue fails open: with the agent killed, traffic still flows.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::harness::{blocking, in_wan, serve_greeting, wan, AgentProcess, Stage, OPEN_PORT};
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
        let agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        stage.operator.wait_applied(&stage.device, 1).await;
        stage
            .operator
            .assign_everywhere("bittorrent-block", json!({"block_secs": 600}))
            .await;
        stage.operator.wait_applied(&stage.device, 2).await;

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
