//! Both backends against the real tools in a namespace of their own: configs
//! with overlapping patterns, every match kind and timed elements load,
//! verify, re-apply and uninstall; and the iptables backend taking over
//! what an agent from before its two generations left.

use isdf_agent::backend::iptables::IptablesBackend;
use isdf_agent::backend::nft::NftBackend;
use isdf_agent::backend::FirewallBackend;
use isdf_api::Firewall;

use crate::netns::Netns;

fn tricky_firewall() -> Firewall {
    serde_json::from_value(serde_json::json!({
        "sets": [
            {"name": "f4", "key": "ipv4-flow", "elements": [
                {"flow": {"protocol": "tcp", "src": "0.0.0.0/0", "dst": "198.51.100.0/24", "dport": 9000}},
                {"flow": {"protocol": "tcp", "src": "0.0.0.0/0", "dst": "198.51.100.2", "dport": 9000}, "expires_at": 4_000_000_000i64},
                {"flow": {"protocol": "tcp", "src": "0.0.0.0/0", "dst": "0.0.0.0/0", "dport": "8000-9000"}},
                {"flow": {"protocol": "tcp", "src": "0.0.0.0/0", "dst": "0.0.0.0/0", "dport": "9000-9500"}},
                {"flow": {"protocol": "udp", "src": "192.0.2.7", "sport": 5353, "dst": "198.51.100.9", "dport": 53}, "expires_at": 4_000_000_000i64},
                {"flow": {"src": "203.0.113.0/24", "dst": "0.0.0.0/0"}}
            ]},
            {"name": "f6", "key": "ipv6-flow", "elements": [
                {"flow": {"protocol": "udp", "src": "::/0", "dst": "2001:db8::/32", "dport": 443}}
            ]},
            {"name": "hosts", "key": "ipv4-addr", "elements": [
                {"addr": "10.0.0.0/8"}, {"addr": "10.1.0.0/16", "expires_at": 4_000_000_000i64}, {"addr": "192.0.2.0/24"}
            ]}
        ],
        "rules": [
            {"id": "f4", "chain": "forward", "match": {"flow_in_set": "f4"}, "action": "drop"},
            {"id": "f6", "chain": "forward", "match": {"flow_in_set": "f6"}, "action": "reject"},
            {"id": "hosts", "chain": "forward", "match": {"src_in_set": "hosts", "protocol": "tcp", "dport": "22"}, "action": "reject"},
            {"id": "ssh-in", "chain": "input", "match": {"protocol": "tcp", "dport": 22, "src": "2001:db8::/32"}, "action": "accept"},
            {"id": "count-out", "chain": "output", "match": {}, "action": "count"}
        ]
    }))
    .unwrap()
}

fn exercise(backend: &'static str) {
    let ns = Netns::create(format!("isdf-bk-{}-{}", &backend[..3], std::process::id()));
    ns.enter(move || {
        let mut b: Box<dyn FirewallBackend> = match backend {
            "nftables" => Box::new(NftBackend::new()),
            _ => Box::new(IptablesBackend::new()),
        };
        let firewall = tricky_firewall();
        let now = 1_795_000_000_000;
        for round in 0..2 {
            b.apply(&firewall, now)
                .unwrap_or_else(|e| panic!("{backend} apply round {round}: {e:#}"));
            b.verify(&firewall, now)
                .unwrap_or_else(|e| panic!("{backend} verify round {round}: {e:#}"));
        }
        let ids: Vec<String> = b
            .counters()
            .unwrap()
            .into_iter()
            .map(|c| c.rule_id)
            .collect();
        for id in ["f4", "hosts", "count-out"] {
            assert!(
                ids.contains(&id.to_owned()),
                "{backend}: no counter for {id}: {ids:?}"
            );
        }
        b.apply(&Firewall::default(), now).unwrap();
        b.verify(&Firewall::default(), now).unwrap();
        assert!(
            b.verify(&firewall, now).is_err(),
            "{backend}: verify notices the difference"
        );
        b.remove().unwrap();
        b.remove().unwrap();
    });
}

#[test]
fn nftables_loads_overlapping_and_mixed_configs() {
    exercise("nftables");
}

#[test]
fn iptables_loads_overlapping_and_mixed_configs() {
    exercise("iptables");
}

/// An agent from before the two generations left its chains (rules in
/// `ISDF-FORWARD` itself, and its anti-spoofing chain `ISDF-ANTISPOOF`
/// jumped to from there and from `ISDF-INPUT`) and `isdf-<name>` sets: the
/// first apply takes the chains over, the old anti-spoofing chain goes with
/// the rules that reached it, and the old sets go once nothing uses them.
#[test]
fn iptables_takes_over_what_an_older_agent_left() {
    let ns = Netns::create(format!("isdf-bk-old-{}", std::process::id()));
    ns.run(
        "ipset",
        &["create", "isdf-hosts", "hash:net", "family", "inet"],
    );
    ns.run(
        "ipset",
        &["create", "isdf+hosts", "hash:net", "family", "inet"],
    );
    ns.run("iptables", &["-N", "ISDF-FORWARD"]);
    ns.run(
        "iptables",
        &[
            "-A",
            "ISDF-FORWARD",
            "-m",
            "set",
            "--match-set",
            "isdf-hosts",
            "dst",
            "-j",
            "DROP",
        ],
    );
    ns.run("iptables", &["-I", "FORWARD", "-j", "ISDF-FORWARD"]);
    for family in ["iptables", "ip6tables"] {
        let spoofed = if family == "iptables" {
            "192.0.2.0/24"
        } else {
            "2001:db8:1::/64"
        };
        ns.run(family, &["-N", "ISDF-ANTISPOOF"]);
        ns.run(
            family,
            &["-A", "ISDF-ANTISPOOF", "-i", "lan", "-j", "RETURN"],
        );
        ns.run(
            family,
            &["-A", "ISDF-ANTISPOOF", "-s", spoofed, "-j", "DROP"],
        );
        for chain in ["ISDF-FORWARD", "ISDF-INPUT"] {
            // `-N` fails for the one made above.
            let _ = ns.exec(family, &["-N", chain]);
            ns.run(family, &["-I", chain, "1", "-j", "ISDF-ANTISPOOF"]);
        }
    }
    let (sets, saved) = ns.enter(move || {
        let mut b = IptablesBackend::new();
        let firewall = tricky_firewall();
        let now = 1_795_000_000_000;
        b.apply(&firewall, now).unwrap();
        b.verify(&firewall, now).unwrap();
        b.apply(&firewall, now).unwrap();
        b.verify(&firewall, now).unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let saved =
            run("iptables-save", &["-t", "filter"]) + &run("ip6tables-save", &["-t", "filter"]);
        (run("ipset", &["list", "-n"]), saved)
    });
    assert!(
        !saved.contains("ISDF-ANTISPOOF"),
        "the older agent's anti-spoofing chain is left:\n{saved}"
    );
    let old: Vec<&str> = sets
        .lines()
        .filter(|s| s.starts_with("isdf-") || s.starts_with("isdf+"))
        .collect();
    assert!(old.is_empty(), "older agent's sets left: {old:?}");
}
