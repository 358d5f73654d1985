//! The distributed VPN end to end: the real controller in an ISP namespace,
//! four real agents with wireguard-go. Customer A has three sites (a3 behind
//! a NAT), customer B one. A's LAN hosts reach each other (ping and TCP),
//! a3 goes through the hub, A and B cannot reach each other, a spoofed VPN
//! source from the ISP side is dropped (a remote site's prefix and a1's own
//! LAN prefix), a key rotation during a transfer barely pauses it, and
//! removing a site removes it from every peer. The network is
//! `isp_network.rs`.
//!
//! ```text
//!   a1h ─ a1 ─┐
//!   a2h ─ a2 ─┤
//!             ├─ br0 (isp: the controller, 203.0.113.1) ─ nat ─ a3 ─ a3h
//!   b1h ─ b1 ─┘
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isdf_agent::backend::ANTISPOOF_RULE_ID;
use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::{json, Value};

use crate::harness::{block_on_in, blocking, nft_counter, wait_until, AgentProcess, Operator};
use crate::isp_network::{agent_toml, Network, SiteSpec, Wan, ISP};
use crate::netns::{datagrams_until, Netns};

fn pings(from: &Netns, to: &str) -> bool {
    from.exec("ping", &["-c", "1", "-W", "1", to])
        .status
        .success()
}

/// A TCP sink on the LAN host: counts bytes and remembers the longest pause
/// between reads while `recording`.
#[derive(Default)]
struct Sink {
    received: AtomicU64,
    longest_gap_ms: AtomicU64,
    recording: AtomicBool,
}

fn serve_sink(host: &Netns, port: u16) -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    let listener = host.enter(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let inner = sink.clone();
    std::thread::spawn(move || {
        // One connection per transfer, bounded by the test's lifetime.
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
            let mut buf = vec![0u8; 64 * 1024];
            let mut last = Instant::now();
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let gap = last.elapsed().as_millis() as u64;
                last = Instant::now();
                if inner.recording.load(Ordering::SeqCst) {
                    inner.longest_gap_ms.fetch_max(gap, Ordering::SeqCst);
                }
                inner.received.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    });
    sink
}

/// Sends `bytes` to `to` from the LAN host; true when all were written.
fn send(host: &Netns, to: SocketAddr, bytes: usize) -> bool {
    host.enter(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            return false;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let chunk = vec![7u8; 16 * 1024];
        let mut sent = 0;
        while sent < bytes {
            if stream.write_all(&chunk).is_err() {
                return false;
            }
            sent += chunk.len();
        }
        true
    })
}

fn wg(agent: &AgentProcess, what: &str) -> String {
    agent.exec_beside("wg", &["show", "isdfvpn", what])
}

/// The controller in the ISP namespace and an agent on every router of
/// `net`: `customers` own the routers whose names start with their letter
/// (`a...` is customer `a`), `relays` are made ISP relays.
struct Fleet {
    controller: TestController,
    operator: Operator,
    devices: std::collections::HashMap<&'static str, String>,
    customers: std::collections::HashMap<char, String>,
    agents: Arc<std::collections::HashMap<&'static str, AgentProcess>>,
}

impl Fleet {
    async fn start(net: &Network, work: &Path, relays: &[&str]) -> Self {
        let mut options = TestControllerOptions::new(&work.join("controller"));
        options.device_listen = format!("{ISP}:0").parse().unwrap();
        options.device_tls_names = vec![ISP.to_owned()];
        let controller = TestController::start(options).await.expect("controller");
        let operator = Operator::new(&controller.api_url, &controller.operator_token);
        let mut devices = std::collections::HashMap::new();
        let mut customers = std::collections::HashMap::new();
        let mut agents = std::collections::HashMap::new();
        for site in &net.sites {
            let created = operator
                .post("/api/v1/devices", json!({"name": site.name, "labels": {}}))
                .await;
            let id = created["device"]["id"].as_str().unwrap().to_owned();
            if relays.contains(&site.name) {
                operator
                    .call(
                        reqwest::Method::PUT,
                        &format!("/api/v1/vpn-relays/{id}"),
                        None,
                    )
                    .await;
            } else {
                let letter = site.name.chars().next().unwrap();
                if let std::collections::hash_map::Entry::Vacant(slot) = customers.entry(letter) {
                    let customer = operator
                        .post(
                            "/api/v1/customers",
                            json!({"name": format!("customer {letter}")}),
                        )
                        .await;
                    slot.insert(customer["id"].as_str().unwrap().to_owned());
                }
                operator
                    .call(
                        reqwest::Method::PUT,
                        &format!("/api/v1/customers/{}/devices/{id}", customers[&letter]),
                        None,
                    )
                    .await;
            }
            let config = agent_toml(
                &work.join(site.name),
                &controller.enrollment_url,
                created["enrollment_token"].as_str().unwrap(),
                created["ca_pem"].as_str().unwrap(),
            );
            devices.insert(site.name, id);
            let agent = AgentProcess::start_with_own_run(
                &site.router,
                &config,
                &work.join(site.name).join("agent.log"),
            );
            agents.insert(site.name, agent);
        }
        Fleet {
            controller,
            operator,
            devices,
            customers,
            agents: Arc::new(agents),
        }
    }

    /// Creates an `auto` VPN of `sites` (their LAN prefixes) for the
    /// customer their names start with; returns its id.
    async fn vpn(&self, net: &Network, name: &str, sites: &[&str]) -> String {
        let members: Vec<Value> = sites
            .iter()
            .map(|s| json!({"device_id": self.devices[s], "prefixes": [net.site(s).lan]}))
            .collect();
        let letter = sites[0].chars().next().unwrap();
        let vpn = self
            .operator
            .post(
                "/api/v1/vpns",
                json!({"customer_id": self.customers[&letter], "name": name,
                       "topology": "auto", "members": members}),
            )
            .await;
        vpn["id"].as_str().unwrap().to_owned()
    }

    /// The router's WireGuard facts, once it has reported them.
    async fn facts(&self, name: &str) -> Value {
        let path = format!("/api/v1/devices/{}/wireguard", self.devices[name]);
        let started = Instant::now();
        loop {
            let response = self.operator.try_get(&path).await;
            if let Some(view) = response.filter(|v| v["public_key"].is_string()) {
                return view;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} reported no facts"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a probe reached the router.
    async fn wait_reachable(&self, name: &str) {
        let started = Instant::now();
        loop {
            let view = self.facts(name).await;
            if view["reachable_address"].is_string() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} never reachable: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn config(&self, name: &str) -> Value {
        self.operator
            .get(&format!("/api/v1/devices/{}/config", self.devices[name]))
            .await
    }

    async fn stop(self) {
        for (name, agent) in self.agents.iter() {
            let log = agent.log();
            assert!(!log.contains("panicked"), "{name} agent panicked:\n{log}");
        }
        drop(self.agents);
        self.controller.stop().await.unwrap();
    }
}

/// Runs `scenario` with a runtime inside the ISP namespace.
fn in_isp<F: std::future::Future<Output = ()>>(
    net: Arc<Network>,
    scenario: impl FnOnce(Arc<Network>, PathBuf) -> F + Send + 'static,
) {
    let inner = net.clone();
    block_on_in(&net.isp, move |work| scenario(inner, work));
}

#[test]
fn distributed_vpn_end_to_end() {
    let net = Arc::new(Network::create(
        "vpn",
        &[
            SiteSpec {
                name: "a1",
                wan: Wan::Direct("203.0.113.11/24"),
                lan: Some("10.1.0.0/24"),
            },
            SiteSpec {
                name: "a2",
                wan: Wan::Direct("203.0.113.12/24"),
                lan: Some("10.2.0.0/24"),
            },
            SiteSpec {
                name: "a3",
                wan: Wan::BehindNat,
                lan: Some("10.3.0.0/24"),
            },
            SiteSpec {
                name: "b1",
                wan: Wan::Direct("203.0.113.14/24"),
                lan: Some("10.9.0.0/24"),
            },
        ],
    ));
    in_isp(net, scenario);
}

async fn scenario(net: Arc<Network>, work: PathBuf) {
    let fleet = Fleet::start(&net, &work, &[]).await;
    let vpn_a = fleet.vpn(&net, "offices", &["a1", "a2", "a3"]).await;
    fleet.vpn(&net, "shop", &["b1"]).await;
    let (operator, devices, agents) = (&fleet.operator, &fleet.devices, fleet.agents.clone());
    let facts = |name: &'static str| fleet.facts(name);

    // Facts: a1, a2 and b1 are reachable (a probe got through), a3 is not.
    for name in ["a1", "a2", "b1"] {
        fleet.wait_reachable(name).await;
    }
    let a3 = facts("a3").await;
    assert_eq!(
        a3["reachable_address"],
        Value::Null,
        "a3 is behind NAT: {a3}"
    );

    // A's LAN hosts reach each other, a3 through the hub.
    let net2 = net.clone();
    let connected = blocking(move || {
        let (a1, a2, a3) = (net2.site("a1"), net2.site("a2"), net2.site("a3"));
        wait_until(
            "A's sites reach each other",
            Duration::from_secs(30),
            || {
                pings(a1.host(), &a2.host_addr)
                    && pings(a1.host(), &a3.host_addr)
                    && pings(a3.host(), &a2.host_addr)
                    && pings(a2.host(), &a3.host_addr)
            },
        )
    })
    .await;
    eprintln!("A's sites connected {connected:?} after the facts");
    let a3_config = operator
        .get(&format!("/api/v1/devices/{}/config", devices["a3"]))
        .await;
    let a3_peers = &a3_config["config"]["firewall"]["wireguard"]["tunnels"][0]["peers"];
    assert_eq!(
        a3_peers.as_array().unwrap().len(),
        1,
        "a3 has only its hub: {a3_peers}"
    );
    assert_eq!(
        a3_peers[0]["name"], "a1",
        "the hub is a1 (lowest tunnel address)"
    );
    let view = operator.get(&format!("/api/v1/vpns/{vpn_a}")).await;
    let roles: Vec<(&str, &str)> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [("a1", "hub"), ("a2", "mesh"), ("a3", "spoke")],
        "{view}"
    );
    let a2_keys = wg(&agents["a2"], "peers");
    assert_eq!(
        a2_keys.lines().count(),
        1,
        "a2 peers only with a1: {a2_keys}"
    );

    // TCP through the mesh and through the hub.
    let a2_sink = serve_sink(net.site("a2").host(), 7000);
    let net2 = net.clone();
    assert!(
        blocking(move || send(
            net2.site("a3").host(),
            "10.2.0.2:7000".parse().unwrap(),
            4 << 20
        ))
        .await
    );
    let net2 = net.clone();
    assert!(
        blocking(move || send(
            net2.site("a1").host(),
            "10.2.0.2:7000".parse().unwrap(),
            4 << 20
        ))
        .await
    );
    let sink = a2_sink.clone();
    blocking(move || {
        wait_until(
            "8 MiB arrived at a2's host",
            Duration::from_secs(10),
            || sink.received.load(Ordering::SeqCst) >= 8 << 20,
        )
    })
    .await;

    // B and A cannot reach each other, in either direction.
    let net2 = net.clone();
    blocking(move || {
        let (a1, b1) = (net2.site("a1"), net2.site("b1"));
        for (from, to) in [
            (b1.host(), "10.1.0.2"),
            (b1.host(), "10.3.0.2"),
            (a1.host(), "10.9.0.2"),
        ] {
            assert!(!pings(from, to), "{} reached {to}", from.name);
        }
        let to: SocketAddr = "10.2.0.2:7000".parse().unwrap();
        assert!(!b1.host().tcp_works(to, Duration::from_millis(500)));
    })
    .await;
    // Not even a router of B that claims an A address: spoofed VPN sources
    // coming in from the ISP side never reach A's LAN.
    let net2 = net.clone();
    blocking(move || {
        let (a1, b1) = (net2.site("a1"), net2.site("b1"));
        let listener = a1.host().enter(|| UdpSocket::bind("0.0.0.0:7001").unwrap());
        listener
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        b1.router
            .run("ip", &["addr", "add", "10.2.0.99/32", "dev", "lo"]);
        b1.router.run(
            "ip",
            &["route", "add", "10.1.0.0/24", "via", "203.0.113.11"],
        );
        b1.router.enter(|| {
            let socket = UdpSocket::bind("10.2.0.99:0").unwrap();
            for _ in 0..3 {
                socket.send_to(b"spoofed", "10.1.0.2:7001").unwrap();
            }
        });
        let mut buf = [0u8; 16];
        assert!(
            listener.recv_from(&mut buf).is_err(),
            "a spoofed VPN source got in"
        );
        // The same datagram from B's own address does arrive: the drop was
        // the VPN's anti-spoofing, not a dead path.
        b1.router.enter(|| {
            let socket = UdpSocket::bind("203.0.113.14:0").unwrap();
            socket.send_to(b"plain", "10.1.0.2:7001").unwrap();
        });
        assert!(
            listener.recv_from(&mut buf).is_ok(),
            "the ISP path to a1 works"
        );
    })
    .await;
    // Nor one that claims a1's *own* LAN prefix: a1 takes it neither into
    // the VPN (to a3's host) nor into its own LAN, and its anti-spoofing
    // rule is what drops it.
    let net2 = net.clone();
    blocking(move || {
        let (a1, a3, b1) = (net2.site("a1"), net2.site("a3"), net2.site("b1"));
        let at_a3 = a3.host().udp_socket("0.0.0.0:7003");
        let at_a1 = a1.host().udp_socket("0.0.0.0:7003");
        b1.router
            .run("ip", &["addr", "add", "10.1.0.99/32", "dev", "lo"]);
        b1.router.run(
            "ip",
            &["route", "add", "10.3.0.0/24", "via", "203.0.113.11"],
        );
        let before = nft_counter(&a1.router, ANTISPOOF_RULE_ID);
        for to in ["10.3.0.2:7003", "10.1.0.2:7003"] {
            b1.router.send_udp("10.1.0.99:0", to, b"forged", 3);
        }
        wait_until(
            "a1's anti-spoofing rule dropped the 6 forged datagrams",
            Duration::from_secs(5),
            || nft_counter(&a1.router, ANTISPOOF_RULE_ID) >= before + 6,
        );
        // The same tunnel carries a1's LAN, the same WAN link b1's own
        // address.
        a1.host()
            .send_udp("10.1.0.2:0", "10.3.0.2:7003", b"plain", 1);
        b1.router
            .send_udp("203.0.113.14:0", "10.1.0.2:7003", b"plain", 1);
        for (socket, host) in [(&at_a3, "a3's host"), (&at_a1, "a1's host")] {
            assert_eq!(
                datagrams_until(socket, "plain"),
                ["plain"],
                "a forged own-LAN source reached {host}"
            );
        }
    })
    .await;

    // A key rotation during a transfer: a2 rotates while a1's host sends to
    // a2's host; the longest pause in what arrives is measured.
    let old_key = facts("a2").await["active_public_key"].clone();
    let sink = a2_sink.clone();
    sink.recording.store(true, Ordering::SeqCst);
    let before = sink.received.load(Ordering::SeqCst);
    let net2 = net.clone();
    let transfer = tokio::task::spawn_blocking(move || {
        send(
            net2.site("a1").host(),
            "10.2.0.2:7000".parse().unwrap(),
            96 << 20,
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotated_at = Instant::now();
    operator
        .post(
            &format!("/api/v1/devices/{}/wireguard/rotate", devices["a2"]),
            json!({}),
        )
        .await;
    loop {
        let view = facts("a2").await;
        if view["active_public_key"] != old_key && view["rotation_stage"].is_null() {
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(60),
            "rotation never finished: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotation_took = rotated_at.elapsed();
    assert!(
        transfer.await.unwrap(),
        "the transfer survived the rotation"
    );
    sink.recording.store(false, Ordering::SeqCst);
    let gap = Duration::from_millis(sink.longest_gap_ms.load(Ordering::SeqCst));
    let moved = sink.received.load(Ordering::SeqCst) - before;
    eprintln!(
        "rotation took {rotation_took:?}; longest pause in the transfer {gap:?}; {moved} bytes"
    );
    // The pause (under 300 ms in every run so far, target 1 s) is a figure
    // for docs/benchmarks.md (h), not gated here; the test checks what the
    // overlap is for: no handshake refused and retried 5 s later.
    assert!(
        gap < Duration::from_secs(4),
        "the transfer paused {gap:?} during the rotation: a handshake was refused"
    );
    // The rotation is over at the controller; a1 drops the old key once it
    // fetched and applied the config that says so.
    let (agents1, old) = (agents.clone(), old_key.as_str().unwrap().to_owned());
    blocking(move || {
        wait_until("a2's old key left a1", Duration::from_secs(10), || {
            !wg(&agents1["a1"], "peers").contains(&old)
        })
    })
    .await;

    // Removing a2: it leaves every peer.
    let a2_key = facts("a2").await["active_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let removed_at = Instant::now();
    operator
        .delete(&format!("/api/v1/vpns/{vpn_a}/members/{}", devices["a2"]))
        .await;
    let agents2 = agents.clone();
    blocking(move || {
        wait_until("a2 left every peer", Duration::from_secs(10), || {
            !wg(&agents2["a1"], "peers").contains(&a2_key)
                && !agents2["a3"]
                    .exec_beside("ip", &["route", "show", "table", "all"])
                    .contains("10.2.0.0/24")
        })
    })
    .await;
    let gone = removed_at.elapsed();
    eprintln!("a2 left every peer {gone:?} after the DELETE");
    let net2 = net.clone();
    blocking(move || {
        assert!(
            !pings(net2.site("a1").host(), "10.2.0.2"),
            "a2 is out of the VPN"
        );
        assert!(
            pings(net2.site("a1").host(), "10.3.0.2"),
            "a1 and a3 still connect"
        );
    })
    .await;

    drop(agents);
    fleet.stop().await;
}

/// Customer C's two sites are both behind the NAT: no site can take
/// another's call, so the controller puts the ISP relay (an agent on an
/// ISP host, enrolled like any router) between them.
#[test]
fn sites_that_nothing_reaches_go_through_the_isp_relay() {
    let net = Arc::new(Network::create(
        "rly",
        &[
            SiteSpec {
                name: "c1",
                wan: Wan::BehindNat,
                lan: Some("10.21.0.0/24"),
            },
            SiteSpec {
                name: "c2",
                wan: Wan::BehindNat,
                lan: Some("10.22.0.0/24"),
            },
            SiteSpec {
                name: "relay",
                wan: Wan::Direct("203.0.113.50/24"),
                lan: None,
            },
        ],
    ));
    in_isp(net, relayed);
}

async fn relayed(net: Arc<Network>, work: PathBuf) {
    let fleet = Fleet::start(&net, &work, &["relay"]).await;
    fleet.vpn(&net, "depots", &["c1", "c2"]).await;
    fleet.wait_reachable("relay").await;
    for name in ["c1", "c2"] {
        assert_eq!(fleet.facts(name).await["reachable_address"], Value::Null);
    }
    let net2 = net.clone();
    let connected = blocking(move || {
        let (c1, c2) = (net2.site("c1"), net2.site("c2"));
        wait_until(
            "C's sites reach each other",
            Duration::from_secs(40),
            || pings(c1.host(), &c2.host_addr) && pings(c2.host(), &c1.host_addr),
        )
    })
    .await;
    eprintln!("C's sites connected through the relay {connected:?} after its probe");
    let c1 = fleet.config("c1").await;
    let peers = &c1["config"]["firewall"]["wireguard"]["tunnels"][0]["peers"];
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
    assert_eq!(peers[0]["name"], "relay");
    let relay = fleet.config("relay").await;
    let tunnel = &relay["config"]["firewall"]["wireguard"]["tunnels"][0];
    assert_eq!(tunnel["interface"], "isdfrelay1", "{tunnel}");
    assert_eq!(tunnel["peers"].as_array().unwrap().len(), 2);

    let sink = serve_sink(net.site("c2").host(), 7000);
    let net2 = net.clone();
    assert!(
        blocking(move || send(
            net2.site("c1").host(),
            "10.22.0.2:7000".parse().unwrap(),
            4 << 20
        ))
        .await
    );
    blocking(move || {
        wait_until(
            "4 MiB arrived at c2's host",
            Duration::from_secs(10),
            || sink.received.load(Ordering::SeqCst) >= 4 << 20,
        )
    })
    .await;
    fleet.stop().await;
}
