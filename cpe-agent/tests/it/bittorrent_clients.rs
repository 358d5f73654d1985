//! Real BitTorrent clients from Debian through a router running the agent
//! with the `bittorrent-block` service: a leecher on the LAN host, a
//! tracker (HTTP and UDP), a closed DHT and a seeder on the WAN host
//! (cpe-agent/tests/bt, driven by `swarm.py`). Every namespace is the
//! test's own; the clients' public bootstrap nodes, LSD, UPnP and NAT-PMP
//! are off.
//!
//! Each blocked combination runs in its own topology, so no block learned
//! in one run helps another; with the service the leecher must get under 1%
//! of the payload in 60 s, and without it the same download completes.
//!
//! The hidden-discovery cases give the router nothing to read but the peer
//! wire itself: libtorrent with encryption required (MSE/PE, RC4 only) and
//! either no tracker and no DHT at all (the seeder's address handed to the
//! leecher, `manual`) or a tracker over HTTPS (`https`), with DHT, PEX and
//! LSD off, over TCP, uTP, or both enabled (libtorrent then tries uTP first
//! and falls back to TCP to the same address and port).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{blocking, in_wan, serve_greeting, AgentProcess, Stage, OPEN_PORT};

const SWARM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bt/swarm.py");
const PYTHON: &str = "/usr/bin/python3";
const WINDOW_SECS: u64 = 60;

fn require_clients() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success())
        && ["aria2c", "transmission-daemon"].iter().all(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    assert!(
        ok,
        "these tests need aria2, transmission-daemon and python3-libtorrent (Debian's \
         /usr/bin/python3): run scripts/install-bt-deps, or the whole suite with scripts/test"
    );
}

/// One download through the router; the harness's JSON line.
fn swarm(topo: &crate::netns::Topology, combo: (&str, &str, &str, &str), timeout: u64) -> Value {
    let (client, mode, transport, discovery) = combo;
    let out = Command::new(PYTHON)
        .arg(SWARM)
        .args(["--client", client, "--mode", mode, "--transport", transport])
        .args(["--discovery", discovery, "--size-mb", "8"])
        .args(["--timeout", &timeout.to_string()])
        .args(["--lan-ns", &topo.lan.name, "--lan-addr", "192.0.2.2"])
        .args(["--wan-ns", &topo.wan.name, "--wan-addr", "198.51.100.2"])
        .output()
        .expect("running swarm.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "swarm.py printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

type Combo = (&'static str, &'static str, &'static str, &'static str);

/// Runs each of `combos` in turn through one router whose agent runs
/// without the `bittorrent-block` service: every download completes.
fn complete_without_the_service(tag: &str, combos: &'static [Combo]) {
    require_clients();
    in_wan(tag, move |topo, work| async move {
        let stage = Stage::prepare(&work, None).await;
        let _agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        stage.operator.wait_applied(&stage.device, 1).await;
        for &combo in combos {
            let result = {
                let topo = topo.clone();
                blocking(move || swarm(&topo, combo, 90)).await
            };
            eprintln!("{combo:?} without the service: {result}");
            assert_eq!(
                result["complete"], true,
                "{combo:?}: without the service the download completes: {result}"
            );
        }
    });
}

/// Runs `combo` through a router whose agent enforces `bittorrent-block`:
/// the leecher gets under 1% of the payload in the window, ordinary
/// traffic still flows, and the router reports a detection.
fn run_blocked(tag: &str, combo: Combo) {
    require_clients();
    in_wan(tag, move |topo, work| async move {
        serve_greeting(OPEN_PORT).await;
        let stage = Stage::prepare(&work, None).await;
        let (agent, _) = stage.start_with_bittorrent_block(&topo.router).await;
        let result = {
            let topo = topo.clone();
            blocking(move || swarm(&topo, combo, WINDOW_SECS)).await
        };
        eprintln!("{combo:?} blocked: {result}");
        let total = result["total_bytes"].as_u64().unwrap();
        let received = result["received_bytes"].as_u64().unwrap_or(0);
        // What the router caught (reported within a bounded wait) is part
        // of the verdict either way: it says why a download got through.
        let (detections, events) = detection_events(&stage).await;
        assert!(
            received * 100 < total,
            "{combo:?}: the leecher got {received} of {total} bytes in {WINDOW_SECS} s; \
             the router's events: {events}\nthe agent's log ends:\n{}",
            log_tail(&agent.log(), 40)
        );
        // Ordinary traffic through the same router still works.
        let lan = topo.clone();
        assert!(
            blocking(move || lan
                .lan
                .tcp_works(crate::harness::wan(OPEN_PORT), Duration::from_secs(1)))
            .await
        );
        // The router reported what it caught.
        assert!(
            detections > 0,
            "{combo:?}: no detection reached the controller: {events}"
        );
        eprintln!(
            "{combo:?}: {detections} detection events; totals {}",
            events["totals"]
        );
    });
}

/// The last `lines` lines of `log`.
fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The router's events once at least one detection has reached the
/// controller, or after 10 s; with the number of detection events.
async fn detection_events(stage: &Stage) -> (u64, Value) {
    let path = format!("/api/v1/devices/{}/events", stage.device);
    let started = std::time::Instant::now();
    loop {
        let events = stage.operator.get(&path).await;
        let detections = events["totals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["origin"] == "detection")
            .map(|t| t["count"].as_u64().unwrap())
            .sum::<u64>();
        if detections > 0 || started.elapsed() >= Duration::from_secs(10) {
            return (detections, events);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

macro_rules! blocked {
    ($($name:ident: $client:literal $mode:literal $transport:literal $discovery:literal;)*) => {$(
        #[test]
        fn $name() {
            run_blocked(&format!("b{}", &stringify!($name)[..3]), ($client, $mode, $transport, $discovery));
        }
    )*};
}

// Every combination the clients support (aria2 has no uTP): 30 runs of
// 60 s, two at a time in CI.
blocked! {
    bt_aria2_plain_tcp_http_is_blocked: "aria2" "plain" "tcp" "http";
    bt_aria2_plain_tcp_udp_is_blocked: "aria2" "plain" "tcp" "udp";
    bt_aria2_plain_tcp_dht_is_blocked: "aria2" "plain" "tcp" "dht";
    bt_aria2_encrypted_tcp_http_is_blocked: "aria2" "encrypted" "tcp" "http";
    bt_aria2_encrypted_tcp_udp_is_blocked: "aria2" "encrypted" "tcp" "udp";
    bt_aria2_encrypted_tcp_dht_is_blocked: "aria2" "encrypted" "tcp" "dht";
    bt_libtorrent_plain_tcp_http_is_blocked: "libtorrent" "plain" "tcp" "http";
    bt_libtorrent_plain_tcp_udp_is_blocked: "libtorrent" "plain" "tcp" "udp";
    bt_libtorrent_plain_tcp_dht_is_blocked: "libtorrent" "plain" "tcp" "dht";
    bt_libtorrent_plain_utp_http_is_blocked: "libtorrent" "plain" "utp" "http";
    bt_libtorrent_plain_utp_udp_is_blocked: "libtorrent" "plain" "utp" "udp";
    bt_libtorrent_plain_utp_dht_is_blocked: "libtorrent" "plain" "utp" "dht";
    bt_libtorrent_encrypted_tcp_http_is_blocked: "libtorrent" "encrypted" "tcp" "http";
    bt_libtorrent_encrypted_tcp_udp_is_blocked: "libtorrent" "encrypted" "tcp" "udp";
    bt_libtorrent_encrypted_tcp_dht_is_blocked: "libtorrent" "encrypted" "tcp" "dht";
    bt_libtorrent_encrypted_utp_http_is_blocked: "libtorrent" "encrypted" "utp" "http";
    bt_libtorrent_encrypted_utp_udp_is_blocked: "libtorrent" "encrypted" "utp" "udp";
    bt_libtorrent_encrypted_utp_dht_is_blocked: "libtorrent" "encrypted" "utp" "dht";
    bt_transmission_plain_tcp_http_is_blocked: "transmission" "plain" "tcp" "http";
    bt_transmission_plain_tcp_udp_is_blocked: "transmission" "plain" "tcp" "udp";
    bt_transmission_plain_tcp_dht_is_blocked: "transmission" "plain" "tcp" "dht";
    bt_transmission_plain_utp_http_is_blocked: "transmission" "plain" "utp" "http";
    bt_transmission_plain_utp_udp_is_blocked: "transmission" "plain" "utp" "udp";
    bt_transmission_plain_utp_dht_is_blocked: "transmission" "plain" "utp" "dht";
    bt_transmission_encrypted_tcp_http_is_blocked: "transmission" "encrypted" "tcp" "http";
    bt_transmission_encrypted_tcp_udp_is_blocked: "transmission" "encrypted" "tcp" "udp";
    bt_transmission_encrypted_tcp_dht_is_blocked: "transmission" "encrypted" "tcp" "dht";
    bt_transmission_encrypted_utp_http_is_blocked: "transmission" "encrypted" "utp" "http";
    bt_transmission_encrypted_utp_udp_is_blocked: "transmission" "encrypted" "utp" "udp";
    bt_transmission_encrypted_utp_dht_is_blocked: "transmission" "encrypted" "utp" "dht";
}

// Discovery hidden from the router: libtorrent, encryption required, the
// seeder handed over by hand or announced over HTTPS.
blocked! {
    bt_libtorrent_encrypted_tcp_manual_is_blocked: "libtorrent" "encrypted" "tcp" "manual";
    bt_libtorrent_encrypted_utp_manual_is_blocked: "libtorrent" "encrypted" "utp" "manual";
    bt_libtorrent_encrypted_both_manual_is_blocked: "libtorrent" "encrypted" "both" "manual";
    bt_libtorrent_encrypted_tcp_https_is_blocked: "libtorrent" "encrypted" "tcp" "https";
    bt_libtorrent_encrypted_utp_https_is_blocked: "libtorrent" "encrypted" "utp" "https";
    bt_libtorrent_encrypted_both_https_is_blocked: "libtorrent" "encrypted" "both" "https";
}

#[test]
fn bt_downloads_complete_without_the_service() {
    complete_without_the_service(
        "bok",
        &[
            ("aria2", "encrypted", "tcp", "http"),
            ("libtorrent", "encrypted", "utp", "dht"),
            ("transmission", "encrypted", "tcp", "udp"),
        ],
    );
}

#[test]
fn bt_hidden_discovery_downloads_complete_without_the_service() {
    complete_without_the_service(
        "bhk",
        &[
            ("libtorrent", "encrypted", "tcp", "manual"),
            ("libtorrent", "encrypted", "utp", "manual"),
            ("libtorrent", "encrypted", "both", "manual"),
            ("libtorrent", "encrypted", "tcp", "https"),
            ("libtorrent", "encrypted", "utp", "https"),
            ("libtorrent", "encrypted", "both", "https"),
        ],
    );
}
