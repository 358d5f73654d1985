//! The nftables planner's tests: snapshots of whole scripts, the shape
//! verification compares, and parsing of the kernel's listings.

use isdf_api::{Chain, Firewall, Protocol, Rule, RuleCounter};

use super::listing::{
    expected_shape, listed_shape, parse_carried, parse_endpoints, without_ended_rules,
};
use super::plan::{antispoof, plan_script, MAX_META_TIME_SECS};
use super::sets::Elements;
use super::*;
use crate::backend::sample_firewall as sample;
use crate::backend::{FirewallBackend, Interfaces};

#[test]
fn plan_of_the_shared_sample() {
    // now is 100 s before the timed element expires.
    insta::assert_snapshot!(plan(&sample(), 1_795_003_500_000).unwrap());
}

#[test]
fn expired_elements_are_left_out() {
    let script = plan(&sample(), 1_795_003_600_000).unwrap();
    assert!(!script.contains("5000-5010"));
    assert!(
        !script.contains("s,\n") && !script.contains("s\n\t\t}"),
        "{script}"
    );
}

#[test]
fn exact_flows_go_to_a_hash_set_and_patterns_to_an_interval_set() {
    let firewall: Firewall = serde_json::from_str(
        r#"{"sets":[{"name":"f","key":"ipv4-flow","elements":[
            {"flow":{"protocol":"tcp","src":"192.0.2.2","sport":40000,"dst":"198.51.100.2","dport":443},"expires_at":60},
            {"flow":{"protocol":"udp","src":"0.0.0.0/0","dst":"198.51.100.2","dport":53}}
        ]}],"rules":[{"id":"f","chain":"forward","match":{"flow_in_set":"f"},"action":"drop"}]}"#,
    )
    .unwrap();
    insta::assert_snapshot!(plan(&firewall, 0).unwrap());
}

#[test]
fn the_check_script_has_the_structure_without_elements() {
    let structure = plan_script(&sample(), 0, Elements::Omit, &PlanInputs::default()).unwrap();
    assert!(!structure.contains("elements"));
    assert_eq!(
        structure.lines().filter(|l| l.contains("comment")).count(),
        plan(&sample(), 0)
            .unwrap()
            .lines()
            .filter(|l| l.contains("comment"))
            .count()
    );
}

#[test]
fn timeouts_beyond_the_kernel_limit_wait_for_a_reapply() {
    let now = 1_000;
    let long = now + 40 * 24 * 3600;
    let firewall: Firewall = serde_json::from_value(serde_json::json!({"sets": [{"name": "a", "key": "ipv4-addr",
        "elements": [{"addr": "192.0.2.1", "expires_at": long}, {"addr": "192.0.2.2", "expires_at": now + 60}]}]}))
    .unwrap();
    let script = plan(&firewall, now * 1000).unwrap();
    assert!(
        script.contains("192.0.2.1,\n") || script.contains("192.0.2.1\n"),
        "{script}"
    );
    assert!(script.contains("192.0.2.2 timeout 60s"), "{script}");
    let reapply = NftBackend::new()
        .next_reapply(&firewall, now * 1000)
        .unwrap();
    assert_eq!(reapply, long - MAX_TIMEOUT_SECS as i64);
    assert!(plan(&firewall, reapply * 1000)
        .unwrap()
        .contains(&format!("192.0.2.1 timeout {MAX_TIMEOUT_SECS}s")));
}

#[test]
fn timeouts_end_to_the_millisecond() {
    let firewall: Firewall = serde_json::from_value(serde_json::json!({"sets": [{"name": "a", "key": "ipv4-addr",
        "elements": [{"addr": "192.0.2.1", "expires_at": 100}, {"addr": "192.0.2.2", "expires_at": 101}]}]}))
    .unwrap();
    let script = plan(&firewall, 99_250).unwrap();
    assert!(script.contains("192.0.2.1 timeout 0s750ms"), "{script}");
    assert!(script.contains("192.0.2.2 timeout 1s750ms"), "{script}");
    assert!(!plan(&firewall, 100_000).unwrap().contains("192.0.2.1"));
}

#[test]
fn learned_endpoints_parse_from_the_listing() {
    let json: serde_json::Value = serde_json::from_str(r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "bt", "table": "isdf",
        "elem": [{"elem": {"val": {"concat": ["198.51.100.2", "udp", 6969]}, "timeout": 60, "expires": 59}},
                 {"elem": {"val": {"concat": ["2001:db8::1", "tcp", 6881]}, "timeout": 60, "expires": 3}}]}}]}"#).unwrap();
    let learned = parse_endpoints("bt", &json);
    assert_eq!(learned.len(), 2);
    assert_eq!(learned[0].endpoint.port, 6969);
    assert_eq!(learned[0].endpoint.protocol, Protocol::Udp);
    assert_eq!(learned[0].remaining_ms, 59_000);
    assert_eq!(learned[1].endpoint.addr.to_string(), "2001:db8::1");
}

/// A router with one tunnel (two peers, one rotating) and one
/// relay-style tunnel without local prefixes, after the router blocks.
fn with_tunnels() -> Firewall {
    serde_json::from_value(serde_json::json!({
        "rules": [{"id": "web", "chain": "forward", "match": {"protocol": "tcp", "dport": 80}, "action": "drop"}],
        "wireguard": {
            "public_key": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "key_generation": 1,
            "tunnels": [
                {"interface": "isdf0", "listen_port": 51820, "address": "10.99.0.1/32",
                 "local_prefixes": ["10.1.0.0/24", "2001:db8:1::/64"],
                 "peers": [
                    {"name": "b", "public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                     "alternate_public_key": "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
                     "endpoint": "192.0.2.2:51820", "allowed_prefixes": ["10.2.0.0/24", "10.99.0.2/32"]},
                    {"name": "c", "public_key": "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=",
                     "allowed_prefixes": ["10.3.0.0/24", "2001:db8:3::/64"], "keepalive_secs": 25}
                 ]},
                {"interface": "isdf-relay", "listen_port": 51821, "address": "10.98.0.1/32",
                 "peers": [
                    {"name": "d", "public_key": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
                     "allowed_prefixes": ["10.1.0.0/24"]}
                 ]}
            ]
        }
    }))
    .unwrap()
}

#[test]
fn tunnels_get_isolation_sets_and_rules_ahead_of_the_config() {
    let firewall = with_tunnels();
    insta::assert_snapshot!(plan(&firewall, 0).unwrap());
    let check = plan_script(&firewall, 0, Elements::Omit, &PlanInputs::default()).unwrap();
    assert!(!check.contains("10.1.0.0/24"), "{check}");
}

#[test]
fn the_expected_shape_of_tunnels_matches_the_plan() {
    let firewall = with_tunnels();
    let script = plan(&firewall, 0).unwrap();
    let shape = expected_shape(&firewall, 0, &PlanInputs::default()).unwrap();
    let listed_sets = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("set "))
        .count();
    assert_eq!(shape.sets.len(), listed_sets);
    assert_eq!(shape.sets.len(), 8);
    let forward = &shape.chains["forward"];
    assert_eq!(forward.last().map(String::as_str), Some("web"));
    assert_eq!(
        forward
            .iter()
            .filter(|c| c.starts_with("agent-wg0"))
            .count(),
        11
    );
    // On a router with a LAN, anti-spoofing comes first, in the plan and
    // in the shape verification expects.
    let shape = expected_shape(&firewall, 0, &router()).unwrap();
    for chain in ["forward", "input"] {
        assert_eq!(shape.chains[chain][0], "agent-antispoof-check", "{chain}");
        assert_eq!(
            shape.chains[&format!("{chain}_antispoof")],
            ["agent-antispoof", "agent-antispoof"],
            "{chain}"
        );
    }
    assert!(shape.chains["output"].is_empty());
    let script = plan_with(&firewall, 0, &router()).unwrap();
    let forward = script.split("chain forward {").nth(1).unwrap();
    assert!(
        forward.lines().nth(2).unwrap().contains(
            "iifname != { \"lan0\", \"br-lan\", \"lo\" } jump forward_antispoof comment \"agent-antispoof-check\""
        ),
        "{script}"
    );
    let antispoof = script.split("chain forward_antispoof {").nth(1).unwrap();
    assert!(
        antispoof.lines().nth(1).unwrap().contains(
            "fib saddr oifname { \"lan0\", \"br-lan\" } counter drop comment \"agent-antispoof\""
        ),
        "{script}"
    );
    assert_eq!(
        shape.chains["input"]
            .iter()
            .filter(|c| *c == "agent-wg1-local")
            .count(),
        3
    );
}

#[test]
fn empty_config_still_installs_an_empty_table() {
    insta::assert_snapshot!(plan(&Firewall::default(), 0).unwrap());
}

#[test]
fn every_match_field_is_planned() {
    let rules: Vec<Rule> = serde_json::from_str(
        r#"[
        {"id":"a","chain":"input","match":{"protocol":"tcp","src":"192.0.2.0/24","dst":"198.51.100.1","sport":"1024-65535","dport":22},"action":"accept"},
        {"id":"b","chain":"output","match":{"family":"ipv6","protocol":"icmpv6"},"action":"count"},
        {"id":"c","chain":"forward","match":{"protocol":"udp","dst":"2001:db8::/32","dport":"443"},"action":"reject"}
    ]"#,
    )
    .unwrap();
    let firewall = Firewall {
        rules,
        ..Firewall::default()
    };
    insta::assert_snapshot!(plan(&firewall, 0).unwrap());
}

#[test]
fn the_expected_shape_matches_what_the_plan_writes() {
    let firewall = sample();
    let shape = expected_shape(&firewall, 0, &PlanInputs::default()).unwrap();
    assert_eq!(
        shape.sets,
        [
            "blocked_hosts_v4",
            "flow_drop_v4",
            "flow_drop_v4_R",
            "flow_drop_v6",
            "flow_drop_v6_R"
        ]
    );
    assert_eq!(shape.chains["forward"].len(), 6);
    assert_eq!(shape.chains["input"], ["no-telnet"]);
}

/// A pay-per-site firewall with every new primitive: a DNS-filled set
/// pair gating a site, a prerouting redirect from the LAN, rules in
/// force until a time (one already ended at `PPS_NOW`), `in_interface`.
fn pay_per_site() -> Firewall {
    serde_json::from_value(serde_json::json!({
        "sets": [
            {"name": "site_v4", "key": "ipv4-addr", "elements": [
                {"addr": "192.0.2.7"}, {"addr": "192.0.2.8", "expires_at": PPS_NOW / 1000 + 60}]},
            {"name": "site_v6", "key": "ipv6-addr"},
            {"name": "other_v4", "key": "ipv4-addr", "elements": [{"addr": "10.0.0.0/8"}]}
        ],
        "rules": [
            {"id": "http-portal", "chain": "prerouting",
             "match": {"protocol": "tcp", "dport": 80, "in_interface": "lan", "dst_in_set": "site_v4"},
             "action": {"redirect": {"port": 8042}}},
            {"id": "paid-v4", "chain": "forward",
             "match": {"dst_in_set": "site_v4", "until": PPS_NOW / 1000 + 3600},
             "action": "accept"},
            {"id": "paid-earlier", "chain": "forward",
             "match": {"dst_in_set": "site_v4", "until": PPS_NOW / 1000},
             "action": "accept"},
            {"id": "gate-v4", "chain": "forward",
             "match": {"dst_in_set": "site_v4", "in_interface": "lan"}, "action": "reject"},
            {"id": "gate-v6", "chain": "forward",
             "match": {"dst_in_set": "site_v6", "protocol": "tcp"}, "action": "reject"},
            {"id": "ssh-from-wan", "chain": "input",
             "match": {"protocol": "tcp", "dport": 22, "in_interface": "wan"}, "action": "drop"}
        ],
        "dns": {"max_ttl_secs": 60, "fill_sets": [
            {"domains": ["video.test"], "ipv4_set": "site_v4", "ipv6_set": "site_v6"}]}
    }))
    .unwrap()
}

const PPS_NOW: i64 = 1_795_000_000_000;

fn router() -> PlanInputs {
    PlanInputs {
        interfaces: Interfaces {
            lan: vec!["lan0".into(), "br-lan".into()],
            wan: vec!["wan".into()],
        },
        ..PlanInputs::default()
    }
}

fn carried(addr: &str, remaining_ms: Option<u64>) -> CarriedElement {
    CarriedElement {
        addr: addr.parse().unwrap(),
        remaining_ms,
    }
}

#[test]
fn plan_of_every_pay_per_site_primitive() {
    let firewall = pay_per_site();
    let mut inputs = router();
    inputs.carried.insert(
        "site_v4".into(),
        vec![
            carried("203.0.113.7", None),
            carried("203.0.113.8", Some(30_000)),
            // The config has it for good: the config's copy stays.
            carried("192.0.2.7", Some(5_000)),
            // The config's ends in 60 s: the resolver's lasts longer.
            carried("192.0.2.8", None),
            // Another family never goes in (the kernel would refuse it).
            carried("2001:db8::9", None),
        ],
    );
    inputs
        .carried
        .insert("site_v6".into(), vec![carried("2001:db8::7", Some(1_500))]);
    // Not filled by DNS: nothing is carried into it.
    inputs
        .carried
        .insert("other_v4".into(), vec![carried("203.0.113.9", None)]);
    insta::assert_snapshot!(plan_with(&firewall, PPS_NOW, &inputs).unwrap());
}

#[test]
fn the_shape_of_a_pay_per_site_plan_matches_its_script() {
    let firewall = pay_per_site();
    let script = plan_with(&firewall, PPS_NOW, &router()).unwrap();
    let shape = expected_shape(&firewall, PPS_NOW, &router()).unwrap();
    assert_eq!(shape.sets, ["other_v4", "site_v4", "site_v6"]);
    assert_eq!(shape.chains["prerouting"], ["http-portal"]);
    assert_eq!(
        shape.chains["forward"],
        [
            "agent-antispoof-check",
            "paid-v4",
            "gate-v4",
            "gate-v4",
            "gate-v6"
        ]
    );
    assert_eq!(
        shape.chains["forward_antispoof"],
        ["agent-antispoof", "agent-antispoof"]
    );
    for (chain, comments) in &shape.chains {
        let body = script
            .split(&format!("\tchain {chain} {{\n"))
            .nth(1)
            .and_then(|rest| rest.split("\n\t}").next())
            .unwrap();
        let listed: Vec<&str> = body
            .lines()
            .filter_map(|l| l.rsplit_once("comment \"").map(|(_, c)| &c[..c.len() - 1]))
            .collect();
        assert_eq!(&listed, comments, "{chain}");
    }
}

#[test]
fn prerouting_is_planned_only_for_rules_in_force() {
    let script = plan(&sample(), 0).unwrap();
    assert!(!script.contains("prerouting") && !script.contains("nat"));
    assert!(!expected_shape(&sample(), 0, &PlanInputs::default())
        .unwrap()
        .chains
        .contains_key("prerouting"));

    let mut firewall = pay_per_site();
    firewall.rules[0].matches.until = Some(PPS_NOW / 1000 + 10);
    let before = plan_with(&firewall, PPS_NOW + 9_999, &router()).unwrap();
    assert!(before.contains("type nat hook prerouting priority dstnat - 10; policy accept;"));
    assert!(before.contains(&format!("meta time < {}", PPS_NOW / 1000 + 10)));
    let after = plan_with(&firewall, PPS_NOW + 10_000, &router()).unwrap();
    assert!(!after.contains("prerouting"), "{after}");
    assert!(!expected_shape(&firewall, PPS_NOW + 10_000, &router())
        .unwrap()
        .chains
        .contains_key("prerouting"));
}

#[test]
fn rules_leave_the_plan_when_their_until_comes_and_the_agent_replans_then() {
    let firewall = pay_per_site();
    let until = PPS_NOW / 1000 + 3600;
    let backend = NftBackend::with_interfaces(router().interfaces);
    // `paid-earlier` ended at PPS_NOW: left out, and no reason to re-plan.
    let at_now = plan_with(&firewall, PPS_NOW, &router()).unwrap();
    assert!(!at_now.contains("paid-earlier"));
    assert!(at_now.contains("paid-v4"));
    assert!(plan_with(&firewall, PPS_NOW - 1, &router())
        .unwrap()
        .contains("paid-earlier"));
    assert_eq!(backend.next_reapply(&firewall, PPS_NOW), Some(until));
    let ended = plan_with(&firewall, until * 1000, &router()).unwrap();
    assert!(!ended.contains("paid-v4"), "{ended}");
    assert_eq!(backend.next_reapply(&firewall, until * 1000), None);
}

#[test]
fn an_until_beyond_the_kernel_clock_is_left_to_the_rule() {
    let mut firewall = pay_per_site();
    firewall.rules[1].matches.until = Some(MAX_META_TIME_SECS);
    let script = plan_with(&firewall, PPS_NOW, &router()).unwrap();
    assert!(script.contains("meta time < 18446744073 "), "{script}");
    // nft would wrap this one to 1970.
    firewall.rules[1].matches.until = Some(MAX_META_TIME_SECS + 1);
    let script = plan_with(&firewall, PPS_NOW, &router()).unwrap();
    assert!(!script.contains("meta time"), "{script}");
    assert!(script.contains("paid-v4"));
}

#[test]
fn the_earliest_reason_to_reapply_wins() {
    let now = 1_000;
    let mut firewall: Firewall = serde_json::from_value(serde_json::json!({"sets": [{"name": "a", "key": "ipv4-addr",
        "elements": [{"addr": "192.0.2.1", "expires_at": now + 40 * 24 * 3600}]}],
        "rules": [{"id": "r", "chain": "forward", "match": {"until": now + 60}, "action": "accept"}]}))
    .unwrap();
    let backend = NftBackend::new();
    assert_eq!(backend.next_reapply(&firewall, now * 1000), Some(now + 60));
    firewall.rules[0].matches.until = Some(now + 20 * 24 * 3600);
    assert_eq!(
        backend.next_reapply(&firewall, now * 1000),
        Some(now + 10 * 24 * 3600)
    );
}

#[test]
fn verify_accepts_rules_that_ended_since_the_apply() {
    let firewall = pay_per_site();
    let until = PPS_NOW / 1000 + 3600;
    // What the kernel lists: the plan applied at PPS_NOW.
    let applied = expected_shape(&firewall, PPS_NOW, &router()).unwrap();
    let later = until * 1000 + 5_000;
    let expected = expected_shape(&firewall, later, &router()).unwrap();
    assert_ne!(applied, expected);
    assert_eq!(without_ended_rules(applied, &firewall, later), expected);
    // Another missing rule is still drift.
    let mut flushed = expected_shape(&firewall, PPS_NOW, &router()).unwrap();
    flushed.chains.get_mut("forward").unwrap().pop();
    assert_ne!(without_ended_rules(flushed, &firewall, later), expected);
}

#[test]
fn a_role_without_interfaces_is_an_error_naming_the_setting() {
    let firewall = pay_per_site();
    let err = plan(&firewall, PPS_NOW).unwrap_err().to_string();
    assert!(err.contains("`lan_interfaces`"), "{err}");
    assert!(err.contains("rule `gate-v4`"), "{err}");
    let mut inputs = router();
    inputs.interfaces.wan.clear();
    let err = plan_with(&firewall, PPS_NOW, &inputs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`wan_interfaces`"), "{err}");
    inputs.interfaces.wan = vec!["we\"ird".into()];
    let err = plan_with(&firewall, PPS_NOW, &inputs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an interface name"), "{err}");
}

#[test]
fn carried_elements_parse_from_the_listing() {
    let json: serde_json::Value = serde_json::from_str(
        r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "site_v4", "table": "isdf",
        "type": "ipv4_addr", "size": 65536, "flags": ["timeout"], "elem": [
            {"elem": {"val": "192.0.2.7", "comment": "config"}},
            {"elem": {"val": "192.0.2.8", "timeout": 60, "expires": 42, "comment": "config"}},
            {"elem": {"val": "203.0.113.8", "timeout": 60, "expires": 42}},
            {"elem": {"val": "203.0.113.9", "timeout": 60, "expires": 0}},
            "203.0.113.7"]}}]}"#,
    )
    .unwrap();
    assert_eq!(
        parse_carried(&json, "ipv4_addr"),
        [
            carried("203.0.113.8", Some(42_000)),
            carried("203.0.113.7", None)
        ]
    );
    // Another type, or an interval set (a set of the same name that
    // DNS did not fill), carries nothing.
    assert!(parse_carried(&json, "ipv6_addr").is_empty());
    let mut interval = json.clone();
    interval["nftables"][1]["set"]["flags"] = serde_json::json!(["interval", "timeout"]);
    assert!(parse_carried(&interval, "ipv4_addr").is_empty());
}

#[test]
fn the_check_script_of_a_dns_filled_set_has_no_elements() {
    let mut inputs = router();
    inputs
        .carried
        .insert("site_v4".into(), vec![carried("203.0.113.7", None)]);
    let structure = plan_script(&pay_per_site(), PPS_NOW, Elements::Omit, &inputs).unwrap();
    assert!(!structure.contains("elements"), "{structure}");
    assert!(structure.contains("\t\tsize 65536;\n"));
}

#[test]
fn listing_is_parsed_into_shape_and_counters() {
    let json: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/nft-list.json")).unwrap();
    let (shape, counters) = listed_shape(&json).unwrap();
    assert_eq!(shape.sets, ["flow_drop_v4", "flow_drop_v6"]);
    assert_eq!(
        shape.chains["forward"],
        vec!["r1".to_owned(), String::new()]
    );
    assert_eq!(
        counters,
        vec![RuleCounter {
            rule_id: "r1".into(),
            packets: 3,
            bytes: 180
        }]
    );
}

#[test]
fn anti_spoofing_is_in_forward_and_input_of_a_router_with_a_lan() {
    let lan = ["br-lan".to_owned(), "wlan0".to_owned()];
    assert!(antispoof(Chain::Forward, &[]).is_none());
    assert!(antispoof(Chain::Output, &lan).is_none());
    assert!(antispoof(Chain::Prerouting, &lan).is_none());
    let input = antispoof(Chain::Input, &lan);
    assert_eq!(input, antispoof(Chain::Forward, &lan));
    let (check, rules) = input.unwrap();
    assert_eq!(check, "iifname != { \"br-lan\", \"wlan0\", \"lo\" }");
    assert_eq!(
        rules,
        [
            (
                "agent-antispoof".to_owned(),
                "fib saddr oifname { \"br-lan\", \"wlan0\" } counter drop".to_owned()
            ),
            (
                "agent-antispoof".to_owned(),
                "meta pkttype host fib saddr type local counter drop".to_owned()
            ),
        ]
    );
    // Packets from the LAN pass one check; the rest meet the rules.
    let firewall = Firewall::default();
    let inputs = PlanInputs {
        interfaces: Interfaces {
            lan: lan.to_vec(),
            wan: Vec::new(),
        },
        ..PlanInputs::default()
    };
    let script = plan_with(&firewall, 0, &inputs).unwrap();
    assert!(script.contains(
        "\t\tiifname != { \"br-lan\", \"wlan0\", \"lo\" } jump forward_antispoof comment \"agent-antispoof-check\"\n"
    ));
    let shape = expected_shape(&firewall, 0, &inputs).unwrap();
    assert_eq!(shape.chains["forward"], ["agent-antispoof-check"]);
    assert_eq!(shape.chains["input"], ["agent-antispoof-check"]);
    assert_eq!(
        shape.chains["forward_antispoof"],
        ["agent-antispoof", "agent-antispoof"]
    );
    assert_eq!(shape.chains["output"], Vec::<String>::new());
}

/// Rules that look only at a flow's first packets, in runs between others:
/// the bittorrent-block layout, plus a run of mixed families and a run of
/// one rule that ends at `EARLY_UNTIL`.
fn early_packet_rules() -> Firewall {
    serde_json::from_value(serde_json::json!({"rules": [
        {"id": "peer", "chain": "forward", "match": {"dst": "192.0.2.9"}, "action": "drop"},
        {"id": "sig", "chain": "forward", "match": {"family": "ipv4", "protocol": "udp", "first_packets": 10,
            "payload": [{"offset": 0, "bytes": "64313a61"}]}, "action": "drop"},
        {"id": "look", "chain": "forward", "match": {"family": "ipv4", "protocol": "tcp", "first_packets": 12},
            "action": "classify"},
        {"id": "peer6", "chain": "forward", "match": {"dst": "2001:db8::9"}, "action": "drop"},
        {"id": "mixed4", "chain": "forward", "match": {"family": "ipv4", "first_packets": 3}, "action": "count"},
        {"id": "mixed", "chain": "forward", "match": {"first_packets": 5}, "action": "count"},
        {"id": "later", "chain": "forward", "match": {"dport": 80}, "action": "accept"},
        {"id": "timed", "chain": "forward", "match": {"first_packets": 2, "until": EARLY_UNTIL}, "action": "count"},
        {"id": "spy", "chain": "input", "match": {"first_packets": 4}, "action": "count"}
    ]}))
    .unwrap()
}

const EARLY_UNTIL: i64 = 2_000_000_000;

#[test]
fn early_packet_rules_sit_behind_one_check_per_run() {
    let firewall = early_packet_rules();
    let script = plan(&firewall, 0).unwrap();
    insta::assert_snapshot!(script);
    // An established flow's packet meets one check per run, not each rule.
    assert!(script.contains(
        "meta nfproto ipv4 ct packets 1-12 jump forward_early_0 comment \"forward_early_0\""
    ));
    assert!(script.contains("\tct packets 1-5 jump forward_early_1 comment \"forward_early_1\""));
    let shape = expected_shape(&firewall, 0, &PlanInputs::default()).unwrap();
    assert_eq!(
        shape.chains["forward"],
        [
            "peer",
            "forward_early_0",
            "peer6",
            "forward_early_1",
            "later",
            "forward_early_2"
        ]
    );
    assert_eq!(shape.chains["forward_early_0"], ["sig", "look"]);
    assert_eq!(shape.chains["forward_early_1"], ["mixed4", "mixed"]);
    assert_eq!(shape.chains["forward_early_2"], ["timed"]);
    assert_eq!(shape.chains["input"], ["input_early_0"]);
    assert_eq!(shape.chains["input_early_0"], ["spy"]);
    // The script's chains are the shape's, each run after its base chain.
    let chains: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|l| l.trim_end_matches(" {"))
        .collect();
    assert_eq!(
        chains,
        [
            "forward",
            "forward_early_0",
            "forward_early_1",
            "forward_early_2",
            "input",
            "input_early_0",
            "output"
        ]
    );
    let mut sorted = chains.clone();
    sorted.sort_unstable();
    assert!(sorted.iter().eq(shape.chains.keys()));
}

#[test]
fn a_run_whose_rules_ended_leaves_with_its_jump_and_the_others_keep_their_names() {
    let firewall = early_packet_rules();
    let applied = expected_shape(&firewall, 0, &PlanInputs::default()).unwrap();
    let later = EARLY_UNTIL * 1000 + 1;
    let expected = expected_shape(&firewall, later, &PlanInputs::default()).unwrap();
    assert!(!expected.chains.contains_key("forward_early_2"));
    assert_eq!(expected.chains["forward"].last().unwrap(), "later");
    assert_eq!(expected.chains["input"], ["input_early_0"]);
    assert_eq!(without_ended_rules(applied, &firewall, later), expected);
    assert!(!plan(&firewall, later).unwrap().contains("forward_early_2"));
}

/// A gate by flow names: two groups learning into their sets, rules by
/// name and for unnamed flows by address, a portal answer.
fn gate_by_names() -> Firewall {
    serde_json::from_value(serde_json::json!({
        "sets": [
            {"name": "site_v4", "key": "ipv4-addr"},
            {"name": "site_v6", "key": "ipv6-addr"},
            {"name": "news_v4", "key": "ipv4-addr"},
            {"name": "news_v6", "key": "ipv6-addr"}
        ],
        "rules": [
            {"id": "site-named-pass", "chain": "forward",
             "match": {"in_interface": "lan", "flow_name": {"group": "site"},
                       "until": PPS_NOW / 1000 + 3600},
             "action": "accept"},
            {"id": "site-named-portal", "chain": "forward",
             "match": {"in_interface": "lan", "flow_name": {"group": "site"},
                       "protocol": "tcp", "dport": 80},
             "action": "portal"},
            {"id": "news-named-gate", "chain": "forward",
             "match": {"in_interface": "lan", "flow_name": {"group": "news"}},
             "action": "reject"},
            {"id": "site-gate-v4", "chain": "forward",
             "match": {"in_interface": "lan", "flow_name": "unnamed", "dst_in_set": "site_v4"},
             "action": "reject"}
        ],
        "flow_names": {"learn_secs": 300, "groups": [
            {"id": "site", "domains": ["video.test"], "ipv4_set": "site_v4", "ipv6_set": "site_v6"},
            {"id": "news", "domains": ["*.news.test"], "ipv4_set": "news_v4", "ipv6_set": "news_v6"}
        ]},
        "portal": {"port": 8042, "default_url": "https://portal.test/"}
    }))
    .unwrap()
}

#[test]
fn flow_names_queue_web_flows_and_tag_their_connections() {
    let firewall = gate_by_names();
    insta::assert_snapshot!(plan_with(&firewall, PPS_NOW, &router()).unwrap());
    let shape = expected_shape(&firewall, PPS_NOW, &router()).unwrap();
    assert_eq!(
        shape.chains["names"].len(),
        11,
        "7, and 2 groups × 2 families by address"
    );
    assert_eq!(
        shape.chains["names_read"].len(),
        6,
        "unnamed, 2 groups × 2 families, queue"
    );
    assert_eq!(
        shape.chains["forward_names"].len(),
        7,
        "3 + 2 groups × 2 families"
    );
    // The config's rules: one verdict map for the run by group, one
    // comparison for the run by address, each group's rules in its chain.
    assert_eq!(shape.chains["forward"][1..], ["agent-names"; 3]);
    assert_eq!(
        shape.chains["forward_byname_0_0"],
        ["site-named-pass", "site-named-portal"]
    );
    assert_eq!(shape.chains["forward_byname_0_1"], ["news-named-gate"; 2]);
    assert_eq!(shape.chains["forward_byname_1_0"], ["site-gate-v4"; 2]);
    // Without nft's queue, marks for iptables to queue by; the portal's
    // request stops our chain there (no reject may answer it first).
    let marked = plan_with(
        &firewall,
        PPS_NOW,
        &PlanInputs {
            queueing: Queueing::Mark,
            ..router()
        },
    )
    .unwrap();
    assert!(marked.contains("meta mark set meta mark | 0x20000000 accept comment \"agent-names\""));
    assert!(marked.contains(
        "counter meta mark set meta mark | 0x10000000 accept comment \"site-named-portal\""
    ));
    assert!(!marked.contains("queue num"));
    // No LAN interface: no names are read (and flow_name rules cannot be
    // planned, as every `in_interface: lan` rule).
    assert!(plan_with(&firewall, PPS_NOW, &PlanInputs::default()).is_err());
}
