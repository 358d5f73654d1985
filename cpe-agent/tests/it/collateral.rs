//! No collateral: real programs of protocols a BitTorrent rule must leave
//! alone (TLS 1.2/1.3, QUIC, OpenSSH, WireGuard, OpenVPN, shadowsocks,
//! obfs4, HTTP, DNS; cpe-agent/tests/bt/collateral.py) from the LAN host to
//! the WAN host, through a router enforcing `bittorrent-block`: every
//! session works and nothing is detected or blocked, both before and after
//! the same LAN host was caught running BitTorrent (which gives its new
//! flows a stricter look).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{blocking, in_wan, Stage};
use crate::netns::Topology;

const COLLATERAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bt/collateral.py");
const SWARM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bt/swarm.py");
const PYTHON: &str = "/usr/bin/python3";

/// Sessions per protocol and round: a few each, a few dozen of the two
/// whose bytes look random from the first (shadowsocks, obfs4), and one
/// per variant of OpenVPN (six).
const ROUND: &[(&str, u32)] = &[
    ("tls12", 6),
    ("tls13", 6),
    ("quic", 4),
    ("ssh", 4),
    ("wireguard", 3),
    ("openvpn", 6),
    ("shadowsocks", 30),
    ("obfs4", 30),
    ("http", 4),
    ("dns", 4),
];

/// The ports of the BitTorrent run's WAN side (swarm.py): seeder, HTTP and
/// UDP trackers, DHT nodes.
fn bittorrent_port(port: u16) -> bool {
    matches!(port, 40000 | 7070 | 7071 | 41000..=41031)
}

/// The LAN host's ephemeral ports: the collateral clients' and, apart, the
/// BitTorrent run's (a detection may block the LAN end of a tracker
/// connection), so no collateral flow shares a port with what the
/// BitTorrent run got blocked.
const COLLATERAL_EPHEMERAL: (u16, u16) = (42000, 60999);
const BITTORRENT_EPHEMERAL: (u16, u16) = (61000, 65000);

fn ephemeral_ports(lan: &crate::netns::Netns, (first, last): (u16, u16)) {
    lan.run(
        "sysctl",
        &[
            "-qw",
            &format!("net.ipv4.ip_local_port_range={first} {last}"),
        ],
    );
}

fn require_programs() {
    let checks = [
        ("openssl", "openssl"),
        ("gnutls-cli", "gnutls-bin"),
        ("gnutls-serv", "gnutls-bin"),
        ("gtlsclient", "ngtcp2-client"),
        ("/usr/sbin/gtlsserver", "ngtcp2-server"),
        ("ssh", "openssh-client"),
        ("/usr/sbin/sshd", "openssh-server"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("/usr/sbin/openvpn", "openvpn"),
        ("ss-server", "shadowsocks-libev"),
        ("ss-local", "shadowsocks-libev"),
        ("obfs4proxy", "obfs4proxy"),
        ("curl", "curl"),
        ("dig", "bind9-dnsutils"),
        ("dnsmasq", "dnsmasq-base"),
    ];
    let missing: BTreeSet<&str> = checks
        .iter()
        .filter(|(program, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    let libtorrent = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        missing.is_empty() && libtorrent,
        "this test needs the collateral programs {missing:?} and python3-libtorrent \
         (libtorrent: {libtorrent}): run scripts/install-bt-deps, or the whole suite with \
         scripts/test"
    );
}

/// One protocol's sessions from the LAN host to the WAN host;
/// collateral.py's JSON line.
fn collateral(topo: &Topology, protocol: &str, sessions: u32) -> Value {
    let out = Command::new(PYTHON)
        .arg(COLLATERAL)
        .args(["--protocol", protocol, "--sessions", &sessions.to_string()])
        .args(["--lan-ns", &topo.lan.name, "--lan-addr", "192.0.2.2"])
        .args(["--wan-ns", &topo.wan.name, "--wan-addr", "198.51.100.2"])
        .output()
        .expect("running collateral.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "collateral.py --protocol {protocol} printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every protocol of `ROUND`, one after the other; asserts each session
/// worked and returns the WAN endpoints they used ("addr:port/proto").
async fn round(topo: &std::sync::Arc<Topology>, when: &str) -> BTreeSet<String> {
    let mut servers = BTreeSet::new();
    for &(protocol, sessions) in ROUND {
        let topo = topo.clone();
        let result = blocking(move || collateral(&topo, protocol, sessions)).await;
        eprintln!("{when}: {result}");
        assert!(
            result["ok"] == sessions && result["failed"] == 0,
            "{when}: {protocol} through the router with bittorrent-block: {result}"
        );
        servers.extend(
            result["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned()),
        );
    }
    servers
}

/// The endpoint a detection block stands for, as "addr:port/proto": the
/// side of its flow that names a host and a port.
fn blocked_endpoint(block: &Value) -> String {
    let flow = &block["flow"];
    let (addr, port) = match flow["sport"].as_str() {
        Some(sport) => (&flow["src"], sport),
        None => (&flow["dst"], flow["dport"].as_str().unwrap_or("any")),
    };
    let addr = addr.as_str().unwrap_or("?");
    let addr = addr.strip_suffix("/32").unwrap_or(addr);
    format!(
        "{addr}:{port}/{}",
        flow["protocol"].as_str().unwrap_or("any")
    )
}

/// Whether a blocked endpoint could be a collateral flow's: a collateral
/// server, the LAN host on a collateral client's port, or anything that
/// is not the BitTorrent run's.
fn names_collateral(endpoint: &str, servers: &BTreeSet<String>) -> bool {
    let Some((addr, rest)) = endpoint.rsplit_once(':') else {
        return true;
    };
    let Some(port) = rest.split('/').next().and_then(|p| p.parse::<u16>().ok()) else {
        return true;
    };
    let (first, last) = COLLATERAL_EPHEMERAL;
    match addr {
        "198.51.100.2" => servers.contains(endpoint) || !bittorrent_port(port),
        "192.0.2.2" => (first..=last).contains(&port),
        _ => true,
    }
}

/// The agent's router blocks of origin `detection`, as it holds them now
/// (its local interface: nothing to wait for).
fn router_detections(socket: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_isdf-agent"))
        .args(["blocks", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "isdf-agent blocks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocks: Value = serde_json::from_slice(&out.stdout).unwrap();
    blocks
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["origin"] == "detection")
        .cloned()
        .collect()
}

/// Every detection event the controller holds, once the router has
/// reported everything up to now: a local block with a fresh reason is
/// added last, and events arrive in the router's order.
async fn reported_detections(stage: &Stage, socket: &Path, marker: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_isdf-agent"))
        .args(["block", "tcp", "192.0.2.2", "any", "198.51.100.2", "9"])
        .args(["--for", "2s", "--reason", marker, "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "isdf-agent block: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = format!("/api/v1/devices/{}/events?limit=500", stage.device);
    let started = Instant::now();
    loop {
        let events = stage.operator.get(&path).await;
        let items = events["items"].as_array().unwrap();
        if items
            .iter()
            .any(|e| e["event"]["block"]["reason"] == marker)
        {
            return items
                .iter()
                .filter(|e| e["event"]["block"]["origin"] == "detection")
                .map(|e| e["event"].clone())
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the router never reported the marker block `{marker}`: {events}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn collateral_protocols_pass_also_from_a_host_caught_running_bittorrent() {
    require_programs();
    in_wan("col", |topo, work| async move {
        ephemeral_ports(&topo.lan, COLLATERAL_EPHEMERAL);
        let stage = Stage::prepare(&work, None).await;
        let socket = stage.config_path.with_file_name("agent.sock");
        let (_agent, _) = stage.start_with_bittorrent_block(&topo.router).await;

        // 1. A LAN host with no BitTorrent history.
        let mut servers = round(&topo, "before BitTorrent").await;
        let blocks = router_detections(&socket);
        assert!(
            blocks.is_empty(),
            "the router blocked collateral traffic: {blocks:?}"
        );
        let events = reported_detections(&stage, &socket, "collateral marker 1").await;
        assert!(
            events.is_empty(),
            "collateral traffic was reported as BitTorrent: {events:?}"
        );

        // 2. The same host downloads with a plain BitTorrent client (blocked
        // within seconds); the detection reaches the controller.
        ephemeral_ports(&topo.lan, BITTORRENT_EPHEMERAL);
        let swarm = {
            let topo = topo.clone();
            blocking(move || {
                Command::new(PYTHON)
                    .arg(SWARM)
                    .args(["--client", "libtorrent", "--mode", "plain"])
                    .args(["--transport", "tcp", "--discovery", "http"])
                    .args(["--size-mb", "1", "--timeout", "8"])
                    .args(["--lan-ns", &topo.lan.name, "--lan-addr", "192.0.2.2"])
                    .args(["--wan-ns", &topo.wan.name, "--wan-addr", "198.51.100.2"])
                    .output()
                    .expect("running swarm.py")
            })
            .await
        };
        eprintln!(
            "BitTorrent from the LAN host: {}",
            String::from_utf8_lossy(&swarm.stdout).trim()
        );
        let caught = reported_detections(&stage, &socket, "collateral marker 2").await;
        assert!(
            !caught.is_empty(),
            "the BitTorrent download was not detected, so the second round proves nothing"
        );

        // 3. The host caught running BitTorrent: the same protocols again.
        ephemeral_ports(&topo.lan, COLLATERAL_EPHEMERAL);
        servers.extend(round(&topo, "after BitTorrent").await);
        let reported = reported_detections(&stage, &socket, "collateral marker 3").await;
        let mut named: Vec<(String, String)> = router_detections(&socket)
            .iter()
            .chain(reported.iter().map(|e| &e["block"]))
            .map(|b| {
                (
                    blocked_endpoint(b),
                    b["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        named.sort();
        named.dedup();
        eprintln!("detections (endpoint, reason): {named:?}");
        for (endpoint, reason) in &named {
            assert!(
                !names_collateral(endpoint, &servers),
                "a detection names {endpoint} (reason `{reason}`), which may be a collateral \
                 flow's: collateral servers {servers:?}, clients' ports {COLLATERAL_EPHEMERAL:?}"
            );
        }
    });
}
