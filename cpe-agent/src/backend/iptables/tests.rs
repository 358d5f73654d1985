//! The iptables planner's tests: snapshots of the three scripts, the
//! layout `verify` compares, and parsing of `iptables-save` and
//! `ipset list -t`.

use std::collections::BTreeMap;

use isdf_api::{ElementValue, Family, Firewall, Prefix};

use super::listing::{parse_ipset_terse, SavedFilter, SavedRule};
use super::plan::{antispoof_chain, refuse_unsupported, Layout};
use super::sets::{PlannedSet, SetKind, MAX_TIMEOUT};
use super::Generation;
use super::*;
use crate::backend::sample_firewall as sample;
use crate::backend::Interfaces;

/// 100 s before the sample's timed element expires.
const NOW: i64 = 1_795_003_500;
const EXPIRY: i64 = 1_795_003_600;

#[test]
fn plan_of_the_shared_sample() {
    insta::assert_snapshot!(plan(&sample(), NOW).unwrap().render());
}

#[test]
fn expired_elements_are_left_out() {
    let plan = plan(&sample(), EXPIRY).unwrap().render();
    assert!(!plan.contains("5000"), "{plan}");
    assert!(!plan.contains("timeout 1"), "{plan}");
}

#[test]
fn flow_sets_use_an_ipset_only_when_every_live_element_fits() {
    // While the port-range element lives, the set is inlined.
    let before = plan(&sample(), NOW).unwrap();
    assert!(!before.ipset.contains("flow_drop_v4"), "{before}");
    assert!(before.v4.contains("--dport 5000:5010"), "{before}");
    // Once it has expired, the rest fits a hash:net,port,net set.
    let after = plan(&sample(), EXPIRY).unwrap();
    insta::assert_snapshot!(after.render());
    assert!(after
        .v4
        .contains("-m set --match-set isdfa-flow_drop_v4 src,dst,dst"));
    // Without kernel support it stays inline.
    let no_support = plan_with(
        &sample(),
        EXPIRY,
        Capabilities {
            net_port_net: false,
        },
        &Interfaces::default(),
        &[],
    )
    .unwrap();
    assert!(!no_support.ipset.contains("flow_drop_v4"), "{no_support}");
    assert!(
        no_support
            .v4
            .contains("-d 198.51.100.2/32 -p tcp -m tcp --dport 9000"),
        "{no_support}"
    );
    // A flow set without protocol never fits.
    assert!(!after.ipset.contains("flow_drop_v6"));
    assert!(after
        .v6
        .contains("-A ISDFA-FORWARD -s 2001:db8:1::/48 -m comment --comment flow-drop-v6 -j DROP"));
}

#[test]
fn every_match_field_is_planned() {
    let firewall: Firewall = serde_json::from_str(
        r#"{
        "sets": [
            {"name":"lan","key":"ipv4-addr","elements":[{"addr":"192.0.2.0/24"},{"addr":"0.0.0.0/0","expires_at":1000}]},
            {"name":"wan6","key":"ipv6-addr","elements":[{"addr":"::/0"}]},
            {"name":"flows","key":"ipv4-flow","elements":[
                {"flow":{"protocol":"tcp","src":"10.0.0.0/8","dst":"0.0.0.0/0","dport":"80-90"}},
                {"flow":{"protocol":"udp","src":"0.0.0.0/0","dst":"198.51.100.0/24","dport":"53"}},
                {"flow":{"src":"10.1.0.0/16","dst":"0.0.0.0/0"},"expires_at":2000}
            ]}
        ],
        "rules": [
            {"id":"a","chain":"input","match":{"protocol":"tcp","src":"192.0.2.0/24","dst":"198.51.100.1","sport":"1024-65535","dport":22},"action":"accept"},
            {"id":"b","chain":"output","match":{"family":"ipv6","protocol":"icmpv6"},"action":"count"},
            {"id":"c","chain":"forward","match":{"protocol":"udp","dst":"2001:db8::/32","dport":"443"},"action":"reject"},
            {"id":"d","chain":"forward","match":{"src_in_set":"lan","dst_in_set":"lan","protocol":"icmp"},"action":"drop"},
            {"id":"e","chain":"forward","match":{"dst_in_set":"wan6"},"action":"reject"},
            {"id":"f","chain":"forward","match":{"flow_in_set":"flows","protocol":"tcp","dport":"85-100"},"action":"count"},
            {"id":"g","chain":"input","match":{},"action":"accept"}
        ]
    }"#,
    )
    .unwrap();
    insta::assert_snapshot!(plan(&firewall, 100).unwrap().render());
}

#[test]
fn reject_fits_iptables_one_protocol_per_rule() {
    let firewall: Firewall = serde_json::from_str(
        r#"{"rules":[
            {"id":"any","chain":"input","match":{"family":"ipv4"},"action":"reject"},
            {"id":"tcp","chain":"input","match":{"family":"ipv4","protocol":"tcp"},"action":"reject"},
            {"id":"udp","chain":"input","match":{"family":"ipv4","protocol":"udp"},"action":"reject"}
        ]}"#,
    )
    .unwrap();
    let layout = Layout::new(
        &firewall,
        0,
        Capabilities::ALL,
        &Interfaces::default(),
        Generation::A,
    )
    .unwrap();
    let lines: Vec<&str> = layout.rules[&Family::Ipv4]
        .iter()
        .map(|r| r.line.as_str())
        .collect();
    assert_eq!(
        lines,
        [
            "-p tcp -m comment --comment any -j REJECT --reject-with tcp-reset",
            "-m comment --comment any -j REJECT --reject-with icmp-admin-prohibited",
            "-p tcp -m comment --comment tcp -j REJECT --reject-with tcp-reset",
            "-p udp -m comment --comment udp -j REJECT --reject-with icmp-admin-prohibited",
        ]
    );
    assert!(!layout.rules.contains_key(&Family::Ipv6));
}

#[test]
fn inline_elements_are_intersected_with_the_rule() {
    let firewall: Firewall = serde_json::from_str(
        r#"{
        "sets": [{"name":"f","key":"ipv4-flow","elements":[
            {"flow":{"protocol":"udp","src":"0.0.0.0/0","dst":"0.0.0.0/0","dport":"1-2"}},
            {"flow":{"protocol":"tcp","src":"10.0.0.0/8","dst":"0.0.0.0/0","dport":"1-2"}},
            {"flow":{"protocol":"tcp","src":"10.1.0.0/16","dst":"0.0.0.0/0","dport":"1-2"}},
            {"flow":{"protocol":"tcp","src":"11.0.0.0/8","dst":"0.0.0.0/0","dport":"1-2"}},
            {"flow":{"protocol":"tcp","src":"10.0.0.0/8","dst":"0.0.0.0/0","dport":"1-2"}}
        ]}],
        "rules": [{"id":"r","chain":"forward","match":{"flow_in_set":"f","protocol":"tcp","src":"10.0.0.0/12","dport":"2-9"},"action":"drop"}]
    }"#,
    )
    .unwrap();
    let layout = Layout::new(
        &firewall,
        0,
        Capabilities::ALL,
        &Interfaces::default(),
        Generation::A,
    )
    .unwrap();
    let lines: Vec<&str> = layout.rules[&Family::Ipv4]
        .iter()
        .map(|r| r.line.as_str())
        .collect();
    // udp and 11/8 cannot match; the duplicate is planned once.
    assert_eq!(
        lines,
        [
            "-s 10.0.0.0/12 -p tcp -m tcp --dport 2 -m comment --comment r -j DROP",
            "-s 10.1.0.0/16 -p tcp -m tcp --dport 2 -m comment --comment r -j DROP",
        ]
    );
}

#[test]
fn next_reapply_is_the_next_inline_expiry() {
    assert_eq!(
        Layout::new(
            &sample(),
            NOW,
            Capabilities::ALL,
            &Interfaces::default(),
            Generation::A
        )
        .unwrap()
        .next_reapply,
        Some(EXPIRY)
    );
    assert_eq!(
        Layout::new(
            &sample(),
            EXPIRY,
            Capabilities::ALL,
            &Interfaces::default(),
            Generation::A
        )
        .unwrap()
        .next_reapply,
        None
    );

    // Kernel-side timeouts need no re-apply, unless too long for ipset.
    let mut firewall = sample();
    firewall.sets[2].elements[0].expires_at = Some(NOW + 60);
    let far = NOW + 30 * 24 * 3600;
    firewall.sets[2].elements.push(isdf_api::SetElement {
        value: ElementValue::Addr(Prefix::parse("203.0.113.10").unwrap()),
        expires_at: Some(far),
    });
    let layout = Layout::new(
        &firewall,
        EXPIRY,
        Capabilities::ALL,
        &Interfaces::default(),
        Generation::A,
    )
    .unwrap();
    assert_eq!(layout.next_reapply, Some(far - MAX_TIMEOUT as i64));
    let script = layout.ipset_script();
    assert!(
        script.contains("add isdfa-blocked_hosts_v4 203.0.113.10/32\n"),
        "{script}"
    );
}

#[test]
fn duplicate_entries_keep_the_longest_timeout() {
    let firewall: Firewall = serde_json::from_str(
        r#"{"sets":[{"name":"s","key":"ipv4-addr","elements":[
            {"addr":"192.0.2.1","expires_at":110},{"addr":"192.0.2.1","expires_at":150},
            {"addr":"192.0.2.2","expires_at":103},{"addr":"192.0.2.2"}
        ]}]}"#,
    )
    .unwrap();
    let layout = Layout::new(
        &firewall,
        100,
        Capabilities::ALL,
        &Interfaces::default(),
        Generation::A,
    )
    .unwrap();
    let entries: Vec<_> = layout.sets[0]
        .entries
        .iter()
        .map(|(e, t)| (e.as_str(), *t))
        .collect();
    assert_eq!(
        entries,
        [("192.0.2.1/32", Some(50)), ("192.0.2.2/32", None)]
    );
}

const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 28 04:02:15 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [10:600]
:OUTPUT ACCEPT [0:0]
:ISDF-FORWARD - [0:0]
:ISDF-INPUT - [0:0]
[1:60] -A INPUT -j fw_input
[0:0] -A INPUT -j ISDF-INPUT
[0:0] -A FORWARD -j ISDF-FORWARD
[0:0] -A FORWARD -j ISDF-FORWARD
[0:0] -A FORWARD -i eth0 -j ISDF-FORWARD
[3:180] -A ISDF-FORWARD -p tcp -m set --match-set isdf-b dst -m comment --comment blocked-hosts -j REJECT --reject-with tcp-reset
[2:100] -A ISDF-FORWARD -m set --match-set isdf-b dst -m comment --comment blocked-hosts -j REJECT --reject-with icmp-admin-prohibited
[7:700] -A ISDF-INPUT -m comment --comment \"no-telnet\"
[9:900] -A ISDF-INPUT -j LOG
COMMIT
# Completed on Sat Nov 28 04:02:15 2026
*nat
:ISDF-OUTPUT - [0:0]
-A ISDF-OUTPUT -m comment --comment elsewhere
COMMIT
";

#[test]
fn saved_rules_are_parsed() {
    let saved = SavedFilter::parse(SAVED).unwrap();
    assert!(saved.chains.contains("ISDF-FORWARD") && !saved.chains.contains("ISDF-OUTPUT"));
    let comments: Vec<_> = saved
        .rules_in("ISDF-INPUT")
        .map(SavedRule::comment)
        .collect();
    assert_eq!(comments, [Some("no-telnet"), None]);
    let first = saved.rules_in("ISDF-FORWARD").next().unwrap();
    assert_eq!((first.packets, first.bytes), (3, 180));
    assert_eq!(first.target(), Some("REJECT"));
    assert!(SavedFilter::parse("*filter\n[1:x] -A INPUT\nCOMMIT\n").is_err());
}

#[test]
fn jumps_are_repaired_to_one_at_the_top() {
    let saved = SavedFilter::parse(SAVED).unwrap();
    assert_eq!(
        saved.jump_repairs(),
        [
            "-D FORWARD -j ISDF-FORWARD",
            "-D FORWARD -j ISDF-FORWARD",
            "-I FORWARD 1 -j ISDF-FORWARD",
            "-D INPUT -j ISDF-INPUT",
            "-I INPUT 1 -j ISDF-INPUT",
            "-I OUTPUT 1 -j ISDF-OUTPUT",
        ]
    );
    let repaired = SavedFilter::parse(
        "*filter\n-A FORWARD -j ISDF-FORWARD\n-A FORWARD -j x\n-A INPUT -j ISDF-INPUT\n-A OUTPUT -j ISDF-OUTPUT\nCOMMIT\n",
    )
    .unwrap();
    assert!(repaired.jump_repairs().is_empty());
}

#[test]
fn pay_per_site_primitives_are_refused() {
    let with = |extra: serde_json::Value| -> String {
        let mut doc = serde_json::json!({
            "sets": [{"name": "site_v4", "key": "ipv4-addr"}, {"name": "site_v6", "key": "ipv6-addr"}],
            "rules": []
        });
        for (key, value) in extra.as_object().unwrap() {
            doc[key] = value.clone();
        }
        let firewall: Firewall = serde_json::from_value(doc).unwrap();
        match refuse_unsupported(&firewall) {
            Ok(()) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        }
    };
    let refusals = [
        with(
            serde_json::json!({"rules": [{"id": "portal-http", "chain": "prerouting",
            "match": {"protocol": "tcp", "dport": 80}, "action": {"redirect": {"port": 8042}}}]}),
        ),
        with(
            serde_json::json!({"rules": [{"id": "skip", "chain": "prerouting",
            "match": {"dst_in_set": "site_v4"}, "action": "accept"}]}),
        ),
        with(
            serde_json::json!({"rules": [{"id": "paid", "chain": "forward",
            "match": {"dst_in_set": "site_v4", "until": 1_795_000_000}, "action": "accept"}]}),
        ),
        with(
            serde_json::json!({"dns": {"fill_sets": [{"domains": ["video.test"],
            "ipv4_set": "site_v4", "ipv6_set": "site_v6"}]}}),
        ),
        with(serde_json::json!({"portal": {"port": 8042, "default_url": "https://portal.test/"}})),
        with(
            serde_json::json!({"rules": [{"id": "from-lan", "chain": "forward",
            "match": {"in_interface": "lan"}, "action": "count"}]}),
        ),
    ];
    insta::assert_snapshot!(refusals.join("\n"));
}

#[test]
fn tunnels_are_refused_but_a_key_alone_is_not() {
    let with = |wireguard: serde_json::Value| {
        let firewall: Firewall =
            serde_json::from_value(serde_json::json!({ "wireguard": wireguard })).unwrap();
        refuse_unsupported(&firewall).map_err(|e| e.to_string())
    };
    assert!(with(serde_json::json!({"key_generation": 1})).is_ok());
    let err = with(serde_json::json!({
        "public_key": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
        "key_generation": 1,
        "tunnels": [{"interface": "isdf0", "listen_port": 51820, "address": "10.99.0.1/32"}]
    }))
    .unwrap_err();
    assert!(
        err.contains("WireGuard") && err.contains("nftables"),
        "{err}"
    );
}

#[test]
fn in_interface_becomes_one_rule_per_interface() {
    let firewall: Firewall = serde_json::from_str(
        r#"{"rules":[
            {"id":"lan-ssh","chain":"input","match":{"in_interface":"lan","protocol":"tcp","dport":22},"action":"accept"},
            {"id":"wan-any","chain":"forward","match":{"in_interface":"wan","family":"ipv4"},"action":"reject"}
        ]}"#,
    )
    .unwrap();
    let interfaces = Interfaces {
        lan: vec!["lan0".into(), "br-*".into()],
        wan: vec!["wan".into()],
    };
    let plan = plan_with(&firewall, 0, Capabilities::ALL, &interfaces, &[]).unwrap();
    let ours: Vec<&str> = plan
        .v4
        .lines()
        .filter(|l| l.starts_with("-A ISDFA-"))
        .collect();
    assert_eq!(
        ours,
        [
            "-A ISDFA-FORWARD -i wan -p tcp -m comment --comment wan-any -j REJECT --reject-with tcp-reset",
            "-A ISDFA-FORWARD -i wan -m comment --comment wan-any -j REJECT --reject-with icmp-admin-prohibited",
            "-A ISDFA-INPUT -i lan0 -p tcp -m tcp --dport 22 -m comment --comment lan-ssh -j ACCEPT",
            "-A ISDFA-INPUT -i br-+ -p tcp -m tcp --dport 22 -m comment --comment lan-ssh -j ACCEPT",
        ]
    );
    assert_eq!(
        plan.v6
            .lines()
            .filter(|l| l.starts_with("-A ISDFA-"))
            .count(),
        2,
        "{}",
        plan.v6
    );
    let err = plan_with(
        &firewall,
        0,
        Capabilities::ALL,
        &Interfaces {
            lan: Vec::new(),
            ..interfaces
        },
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("`lan_interfaces`"), "{err}");
}

#[test]
fn lan_sources_from_elsewhere_are_dropped_ahead_of_the_config() {
    let interfaces = Interfaces {
        lan: vec!["lan0".into(), "wlan0".into()],
        wan: vec!["wan".into()],
    };
    let prefixes = ["192.0.2.0/24", "10.0.0.0/8"].map(|p| Prefix::parse(p).unwrap());
    let plan = plan_with(&sample(), NOW, Capabilities::ALL, &interfaces, &prefixes).unwrap();
    // The generation's chains: the entry chains only dispatch to them.
    let ours: Vec<&str> = plan
        .v4
        .lines()
        .filter(|l| l.starts_with("-A ISDFA-"))
        .collect();
    let jump = "-m comment --comment agent-antispoof-check -j ISDFA-ANTISPOOF";
    assert_eq!(ours[0], format!("-A ISDFA-FORWARD {jump}"));
    assert_eq!(
        ours.iter().position(|l| l.starts_with("-A ISDFA-INPUT")),
        ours.iter()
            .position(|l| *l == format!("-A ISDFA-INPUT {jump}")),
        "the jump comes first in ISDFA-INPUT too: {ours:?}"
    );
    assert_eq!(
        ours[ours.len() - 5..],
        [
            "-A ISDFA-ANTISPOOF -i lan0 -j RETURN",
            "-A ISDFA-ANTISPOOF -i wlan0 -j RETURN",
            "-A ISDFA-ANTISPOOF -i lo -j RETURN",
            "-A ISDFA-ANTISPOOF -s 192.0.2.0/24 -m comment --comment agent-antispoof -j DROP",
            "-A ISDFA-ANTISPOOF -s 10.0.0.0/8 -m comment --comment agent-antispoof -j DROP",
        ]
    );
    // Only the generation's own chains reach it, so the switch moves it
    // with the rest of the ruleset.
    let reaching: Vec<&str> = plan
        .v4
        .lines()
        .filter(|l| l.contains("ANTISPOOF") && !l.starts_with(":"))
        .filter(|l| !l.starts_with("-A ISDFA-ANTISPOOF "))
        .collect();
    assert_eq!(
        reaching,
        [
            format!("-A ISDFA-FORWARD {jump}"),
            format!("-A ISDFA-INPUT {jump}")
        ]
    );
    assert!(
        plan.v4.contains(":ISDFA-ANTISPOOF - [0:0]\n"),
        "{}",
        plan.v4
    );
    // No IPv6 LAN prefix: the chain exists (emptied), nothing jumps to it.
    assert!(
        plan.v6.contains(":ISDFA-ANTISPOOF - [0:0]\n"),
        "{}",
        plan.v6
    );
    assert!(!plan.v6.contains("-j ISDFA-ANTISPOOF"), "{}", plan.v6);
    // Built in generation `b`, all of it is `b`'s.
    let b = Layout::new(
        &sample(),
        NOW,
        Capabilities::ALL,
        &interfaces,
        Generation::B,
    )
    .unwrap()
    .with_antispoof(&interfaces.lan, &prefixes)
    .rules_script(Family::Ipv4, &[], &[]);
    assert!(
        b.contains(
            "-A ISDFB-FORWARD -m comment --comment agent-antispoof-check -j ISDFB-ANTISPOOF\n"
        ) && b.contains("-A ISDFB-ANTISPOOF -i lo -j RETURN\n")
            && !b.contains("ISDFA-ANTISPOOF"),
        "{b}"
    );
}

#[test]
fn removal_deletes_every_jump_and_our_chains_only() {
    let saved = SavedFilter::parse(SAVED).unwrap();
    insta::assert_snapshot!(saved.removal_script().unwrap());
    let nothing = SavedFilter::parse("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").unwrap();
    assert_eq!(nothing.removal_script(), None);
}

#[test]
fn ipset_terse_listing_is_parsed() {
    let text = "\
Name: isdf-a
Type: hash:net
Revision: 7
Header: family inet hashsize 1024 maxelem 262144 timeout 0 bucketsize 12 initval 0xa64a0605
Size in memory: 520
References: 1
Number of entries: 3
Name: other
Type: hash:ip
Header: family inet6 hashsize 1024 maxelem 65536
Number of entries: 0
";
    let sets = parse_ipset_terse(text).unwrap();
    assert_eq!(sets.len(), 2);
    let a = &sets["isdf-a"];
    assert_eq!((a.kind.as_str(), a.entries), ("hash:net", 3));
    let planned = PlannedSet {
        name: "isdf-a".into(),
        kind: SetKind::Net,
        family: Family::Ipv4,
        entries: BTreeMap::new(),
        expiring_soon: 0,
        just_expired: 0,
    };
    assert!(planned.fits(a));
    assert!(!planned.fits(&sets["other"]));
    assert!(!PlannedSet {
        family: Family::Ipv6,
        ..planned
    }
    .fits(a));
}

#[test]
fn the_chain_returns_for_the_lan_and_drops_its_prefixes_elsewhere() {
    let lan = ["br-lan".to_owned()];
    let prefixes = [
        Prefix::parse("192.0.2.0/24").unwrap(),
        Prefix::parse("2001:db8:1::/64").unwrap(),
    ];
    assert_eq!(
        antispoof_chain(Family::Ipv4, &lan, &prefixes),
        [
            "-i br-lan -j RETURN",
            "-i lo -j RETURN",
            "-s 192.0.2.0/24 -m comment --comment agent-antispoof -j DROP"
        ]
    );
    assert_eq!(
        antispoof_chain(Family::Ipv6, &lan, &prefixes)
            .last()
            .unwrap(),
        "-s 2001:db8:1::/64 -m comment --comment agent-antispoof -j DROP"
    );
    assert!(antispoof_chain(Family::Ipv4, &lan, &prefixes[1..]).is_empty());
    assert!(antispoof_chain(Family::Ipv4, &[], &prefixes).is_empty());
}

#[test]
fn generations_switch_in_one_operation_and_know_their_leftovers() {
    use super::generation::{clear_chains_script, is_stale_set, switch, Switch};
    // With a generation live, the switch is the one swap of the two
    // `list:set`s; with none, one swap of a filled new switch.
    assert_eq!(switch(Generation::B, Some(Generation::A)), Switch::Swap);
    let Switch::TurnOn(first) = switch(Generation::A, None) else {
        panic!("nothing live: turned on by a filled switch");
    };
    let changes: Vec<&str> = first.lines().filter(|l| l.contains("isdf_gen_a")).collect();
    assert_eq!(changes, ["swap isdf_gen_new isdf_gen_a"], "{first}");
    // Clearing empties only the chains that hold rules, and keeps them.
    let script = clear_chains_script(Generation::B, |c| c == "ISDFB-INPUT").unwrap();
    assert_eq!(script, "*filter\n:ISDFB-INPUT - [0:0]\nCOMMIT\n");
    assert_eq!(clear_chains_script(Generation::B, |_| false), None);
    // The anti-spoofing chain is the generation's too.
    let script = clear_chains_script(Generation::B, |c| c.starts_with("ISDFB-")).unwrap();
    assert_eq!(
        script,
        "*filter\n:ISDFB-FORWARD - [0:0]\n:ISDFB-INPUT - [0:0]\n:ISDFB-OUTPUT - [0:0]\n:ISDFB-ANTISPOOF - [0:0]\nCOMMIT\n"
    );
    // Once `a` is live: `b`'s sets and a leftover switch go, earlier
    // agents' sets only when asked (their rules may still use them).
    assert!(is_stale_set("isdfb-hosts", Generation::A, false));
    assert!(is_stale_set("isdf_gen_new", Generation::A, false));
    assert!(!is_stale_set("isdfa-hosts", Generation::A, true));
    assert!(!is_stale_set("isdf_gen_b", Generation::A, true));
    assert!(!is_stale_set("isdf_all4", Generation::A, true));
    assert!(!is_stale_set("isdf-hosts", Generation::A, false));
    assert!(is_stale_set("isdf-hosts", Generation::A, true));
    assert!(is_stale_set("isdf+hosts", Generation::A, true));
}

/// What an agent with anti-spoofing but before the generations left: its
/// rules in the entry chains, jumping to `ISDF-ANTISPOOF`.
const SAVED_LEGACY_ANTISPOOF: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISDF-FORWARD - [0:0]
:ISDF-INPUT - [0:0]
:ISDF-ANTISPOOF - [0:0]
:ISDFA-ANTISPOOF - [0:0]
-A INPUT -j ISDF-INPUT
-A FORWARD -j ISDF-FORWARD
-A FORWARD -i eth9 -j ISDF-ANTISPOOF
-A ISDF-FORWARD -m comment --comment agent-antispoof-check -j ISDF-ANTISPOOF
-A ISDF-INPUT -m comment --comment agent-antispoof-check -j ISDF-ANTISPOOF
-A ISDF-ANTISPOOF -i lan -j RETURN
-A ISDF-ANTISPOOF -s 192.0.2.0/24 -m comment --comment agent-antispoof -j DROP
COMMIT
";

#[test]
fn an_earlier_agents_antispoof_chain_is_taken_away() {
    let saved = SavedFilter::parse(SAVED_LEGACY_ANTISPOOF).unwrap();
    // With the entry chains rewritten in the same transaction, only a jump
    // from someone else's chain still reaches it.
    assert_eq!(
        saved.legacy_removals(),
        [
            "-D FORWARD -i eth9 -j ISDF-ANTISPOOF",
            "-F ISDF-ANTISPOOF",
            "-X ISDF-ANTISPOOF"
        ]
    );
    assert!(SavedFilter::parse(SAVED)
        .unwrap()
        .legacy_removals()
        .is_empty());
    // Uninstalling takes it, and a generation's, with the rest.
    let removal = saved.removal_script().unwrap();
    for line in [
        "-X ISDF-FORWARD",
        "-X ISDF-ANTISPOOF",
        "-X ISDFA-ANTISPOOF",
        "-D FORWARD -i eth9 -j ISDF-ANTISPOOF",
    ] {
        assert!(removal.lines().any(|l| l == line), "{line}: {removal}");
    }
    let flushed = removal.find("-F ISDF-ANTISPOOF").unwrap();
    assert!(
        flushed < removal.find("-X ISDF-FORWARD").unwrap(),
        "{removal}"
    );
}
