//! Anti-spoofing with real traffic, for both backends: the WAN host claims
//! the router's LAN addresses (a LAN prefix's, IPv4 and IPv6, and the
//! router's own LAN address, IPv6: Linux drops an IPv4 one as a martian by
//! itself) towards the LAN host and the router. The backend runs in the
//! router namespace with its LAN and WAN interfaces configured and an
//! otherwise empty config. For iptables, whose anti-spoofing chain is a
//! generation's, also: the chain moves with each switch, and a LAN prefix
//! that appears after an apply is drift until the next apply drops it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use isdf_agent::backend::iptables::IptablesBackend;
use isdf_agent::backend::nft::NftBackend;
use isdf_agent::backend::{FirewallBackend, Interfaces, ANTISPOOF_RULE_ID};
use isdf_api::Firewall;

use crate::harness::wait_until;
use crate::netns::{datagrams_until, Netns, Topology};

/// A backend, used from threads that enter the router namespace.
type Shared = Arc<Mutex<Box<dyn FirewallBackend>>>;

/// The backend's packet counter of the anti-spoofing rules (read in the
/// router namespace).
fn dropped(router: &Netns, backend: &Shared) -> u64 {
    let backend = backend.clone();
    router.enter(move || {
        backend
            .lock()
            .unwrap()
            .counters()
            .expect("reading the counters")
            .iter()
            .filter(|c| c.rule_id == ANTISPOOF_RULE_ID)
            .map(|c| c.packets)
            .sum()
    })
}

fn forged_lan_sources_are_dropped(backend_name: &'static str) {
    let topo = Topology::create(&format!("spf{}", &backend_name[..3]));
    for args in [
        ["addr", "add", "192.0.2.99/32", "dev", "lo"].as_slice(),
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:1::99/128",
            "dev",
            "lo",
            "nodad",
        ],
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:1::1/128",
            "dev",
            "lo",
            "nodad",
        ],
    ] {
        topo.wan.run("ip", args);
    }
    let interfaces = Interfaces {
        lan: vec!["lan".into()],
        wan: vec!["wan".into()],
    };
    // The table goes with the namespace.
    let backend: Shared = topo.router.enter(move || {
        let mut backend: Box<dyn FirewallBackend> = match backend_name {
            "nftables" => Box::new(NftBackend::with_interfaces(interfaces)),
            _ => Box::new(IptablesBackend::with_interfaces(interfaces)),
        };
        let firewall = Firewall::default();
        backend.apply(&firewall, 0).expect("apply");
        backend.verify(&firewall, 0).expect("verify");
        Arc::new(Mutex::new(backend))
    });

    let lan_v4 = topo.lan.udp_socket("0.0.0.0:7001");
    let lan_v6 = topo.lan.udp_socket("[::]:7006");
    let router_v4 = topo.router.udp_socket("0.0.0.0:7001");
    let router_v6 = topo.router.udp_socket("[::]:7006");
    let before = dropped(&topo.router, &backend);
    let forged = [
        ("192.0.2.99:0", "192.0.2.2:7001"),
        ("[2001:db8:1::99]:0", "[2001:db8:1::2]:7006"),
        ("[2001:db8:1::1]:0", "[2001:db8:1::2]:7006"),
        ("192.0.2.99:0", "198.51.100.1:7001"),
        ("[2001:db8:1::99]:0", "[2001:db8:2::1]:7006"),
    ];
    for (from, to) in forged {
        topo.wan.send_udp(from, to, b"forged", 2);
    }
    wait_until(
        "the anti-spoofing rules dropped every forged datagram",
        Duration::from_secs(5),
        || dropped(&topo.router, &backend) >= before + 2 * forged.len() as u64,
    );
    // The same paths carry the WAN host's own addresses.
    for (from, to) in [
        ("198.51.100.2:0", "192.0.2.2:7001"),
        ("[2001:db8:2::2]:0", "[2001:db8:1::2]:7006"),
        ("198.51.100.2:0", "198.51.100.1:7001"),
        ("[2001:db8:2::2]:0", "[2001:db8:2::1]:7006"),
    ] {
        topo.wan.send_udp(from, to, b"plain", 1);
    }
    for (socket, what) in [
        (&lan_v4, "the LAN host (IPv4)"),
        (&lan_v6, "the LAN host (IPv6)"),
        (&router_v4, "the router (IPv4)"),
        (&router_v6, "the router (IPv6)"),
    ] {
        let got = datagrams_until(socket, "plain");
        assert_eq!(
            got,
            ["plain"],
            "{backend_name}: a forged LAN source reached {what}"
        );
    }
    // The LAN itself is not affected: its host still reaches the WAN host.
    let wan_v6 = topo.wan.udp_socket("[::]:7006");
    topo.lan
        .send_udp("[2001:db8:1::2]:0", "[2001:db8:2::2]:7006", b"plain", 1);
    assert_eq!(datagrams_until(&wan_v6, "plain"), ["plain"]);
    let after = dropped(&topo.router, &backend);
    assert_eq!(
        after,
        before + 2 * forged.len() as u64,
        "{backend_name}: only the forged datagrams were dropped"
    );
}

#[test]
fn nftables_drops_forged_lan_sources_from_the_wan() {
    forged_lan_sources_are_dropped("nftables");
}

#[test]
fn iptables_drops_forged_lan_sources_from_the_wan() {
    forged_lan_sources_are_dropped("iptables");
}

fn verify_now(router: &Netns, backend: &Shared) -> Result<(), String> {
    let backend = backend.clone();
    router.enter(move || {
        backend
            .lock()
            .unwrap()
            .verify(&Firewall::default(), 0)
            .map_err(|e| format!("{e:#}"))
    })
}

fn apply_now(router: &Netns, backend: &Shared) {
    let backend = backend.clone();
    router.enter(move || {
        let mut backend = backend.lock().unwrap();
        backend.apply(&Firewall::default(), 0).expect("apply");
        backend.verify(&Firewall::default(), 0).expect("verify");
    });
}

#[test]
fn iptables_antispoof_switches_with_its_generation_and_a_new_lan_prefix_is_drift() {
    let topo = Topology::create("spfgen");
    topo.wan
        .run("ip", &["addr", "add", "10.9.0.5/32", "dev", "lo"]);
    let interfaces = Interfaces {
        lan: vec!["lan".into()],
        wan: vec!["wan".into()],
    };
    let backend: Shared = topo.router.enter(move || {
        Arc::new(Mutex::new(
            Box::new(IptablesBackend::with_interfaces(interfaces)) as Box<dyn FirewallBackend>,
        ))
    });
    // The first apply turns generation a on, the second switches to b and
    // empties a, its anti-spoofing chain included.
    apply_now(&topo.router, &backend);
    apply_now(&topo.router, &backend);
    let saved = topo.router.run("iptables-save", &["-t", "filter"]);
    assert!(
        saved.contains(
            "-A ISDFB-FORWARD -m comment --comment agent-antispoof-check -j ISDFB-ANTISPOOF\n"
        ) && saved.contains("-A ISDFB-ANTISPOOF -s 192.0.2.0/24 ")
            && !saved.contains("-A ISDFA-"),
        "{saved}"
    );

    // A prefix routed out of the LAN after the apply: verify says so.
    topo.router
        .run("ip", &["addr", "add", "10.9.0.1/16", "dev", "lan"]);
    let drift = verify_now(&topo.router, &backend).expect_err("a new LAN prefix is drift");
    assert!(
        drift.contains("ISDFB-ANTISPOOF") && drift.contains("10.9.0.0/16"),
        "{drift}"
    );
    // The next apply (back to generation a) drops it from the WAN too.
    apply_now(&topo.router, &backend);
    let lan_v4 = topo.lan.udp_socket("0.0.0.0:7001");
    let router_v4 = topo.router.udp_socket("0.0.0.0:7001");
    let before = dropped(&topo.router, &backend);
    for to in ["192.0.2.2:7001", "198.51.100.1:7001"] {
        topo.wan.send_udp("10.9.0.5:0", to, b"forged", 2);
    }
    wait_until(
        "the anti-spoofing rules dropped the new prefix's forged datagrams",
        Duration::from_secs(5),
        || dropped(&topo.router, &backend) >= before + 4,
    );
    for to in ["192.0.2.2:7001", "198.51.100.1:7001"] {
        topo.wan.send_udp("198.51.100.2:0", to, b"plain", 1);
    }
    for (socket, what) in [(&lan_v4, "the LAN host"), (&router_v4, "the router")] {
        assert_eq!(
            datagrams_until(socket, "plain"),
            ["plain"],
            "a forged source of the new LAN prefix reached {what}"
        );
    }
    assert_eq!(dropped(&topo.router, &backend), before + 4);
}
