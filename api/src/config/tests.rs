//! Tests of the config document: parsing, validation, digests.

use super::*;

fn sample() -> DeviceConfig {
    serde_json::from_str(include_str!("../../tests/vectors/config-sample.json")).unwrap()
}

#[test]
fn sample_config_is_valid_and_round_trips() {
    let config = sample();
    config.validate().unwrap();
    let again: DeviceConfig =
        serde_json::from_slice(&serde_json::to_vec(&config).unwrap()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    let base = serde_json::to_value(sample()).unwrap();
    let pointers = [
        "",
        "/firewall",
        "/firewall/sets/0",
        "/firewall/rules/0",
        "/firewall/rules/0/match",
    ];
    for pointer in pointers {
        let mut doc = base.clone();
        doc.pointer_mut(pointer)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert("surprise".into(), 1.into());
        let err = serde_json::from_value::<DeviceConfig>(doc).unwrap_err();
        assert!(
            err.to_string().contains("unknown field"),
            "{pointer}: {err}"
        );
    }
}

#[test]
fn inconsistent_configs_are_rejected() {
    let mut c = sample();
    c.firewall.rules.retain(|r| r.action != Action::Classify);
    c.firewall.classifier = Some(ClassifierPolicy { heuristics: false });
    assert!(c.validate().unwrap_err().0.contains("no classify rule"));

    let mut c = sample();
    c.firewall.rules[0].matches.flow_in_set = Some(Name::parse("nope").unwrap());
    assert!(c.validate().unwrap_err().0.contains("unknown set"));

    let mut c = sample();
    c.firewall.rules.push(c.firewall.rules[0].clone());
    assert!(c.validate().unwrap_err().0.contains("twice"));

    let mut c = sample();
    c.firewall.sets[0].key = SetKey::Ipv6Flow;
    assert!(c.validate().unwrap_err().0.contains("wrong family"));

    let mut c = sample();
    c.firewall.rules[0].matches.dport = Some(PortRange::single(1));
    c.firewall.rules[0].matches.protocol = None;
    assert!(c.validate().unwrap_err().0.contains("ports need"));

    let mut c = sample();
    c.expires_at = c.issued_at;
    assert!(c.validate().is_err());
}

#[test]
fn chains_dns_and_portal_are_checked() {
    let rule = |json: serde_json::Value| serde_json::from_value::<Rule>(json).unwrap();
    let with = |rules: Vec<Rule>, extra: serde_json::Value| {
        let mut c = sample();
        c.firewall.rules = rules;
        let mut doc = serde_json::to_value(&c).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            doc["firewall"][k] = v.clone();
        }
        serde_json::from_value::<DeviceConfig>(doc)
            .unwrap()
            .validate()
    };
    let redirect = rule(serde_json::json!({"id": "dns", "chain": "prerouting",
        "match": {"protocol": "udp", "dport": "53", "in_interface": "lan"},
        "action": {"redirect": {"port": 53}}}));
    assert_eq!(with(vec![redirect.clone()], serde_json::json!({})), Ok(()));
    let mut misplaced = redirect.clone();
    misplaced.chain = Chain::Forward;
    assert!(with(vec![misplaced], serde_json::json!({}))
        .unwrap_err()
        .0
        .contains("only in prerouting"));
    let mut dropping = redirect.clone();
    dropping.action = Action::Drop;
    assert!(with(vec![dropping], serde_json::json!({})).is_err());
    let mut no_proto = redirect;
    no_proto.matches.protocol = None;
    no_proto.matches.dport = None;
    assert!(with(vec![no_proto], serde_json::json!({}))
        .unwrap_err()
        .0
        .contains("protocol"));

    let sets = serde_json::json!([
        {"name": "site_v4", "key": "ipv4-addr", "elements": [{"addr": "192.0.2.7"}]},
        {"name": "site_v6", "key": "ipv6-addr"}]);
    let fill = |v4: &str| {
        serde_json::json!({"sets": sets, "dns": {"max_ttl_secs": 30,
        "fill_sets": [{"domains": ["video.test"], "ipv4_set": v4, "ipv6_set": "site_v6"}],
        "local_answers": [{"domain": "use-application-dns.net"}]}})
    };
    assert_eq!(with(vec![], fill("site_v4")), Ok(()));
    assert!(with(vec![], fill("site_v6"))
        .unwrap_err()
        .0
        .contains("not a Ipv4Addr"));
    assert!(with(vec![], fill("nope"))
        .unwrap_err()
        .0
        .contains("unknown set"));
    let mut prefixed = fill("site_v4");
    prefixed["sets"][0]["elements"][0]["addr"] = "192.0.2.0/24".into();
    assert!(with(vec![], prefixed)
        .unwrap_err()
        .0
        .contains("single addresses"));
    let mut zero_ttl = fill("site_v4");
    zero_ttl["dns"]["max_ttl_secs"] = 0.into();
    assert!(with(vec![], zero_ttl).is_err());

    let portal = |url: &str| {
        serde_json::json!({"portal": {"port": 8042,
        "default_url": url, "sites": [{"domains": ["video.test"], "url": "https://p/1"}]}})
    };
    assert_eq!(with(vec![], portal("https://p/")), Ok(()));
    assert!(with(vec![], portal("https://p/\r\nX: y")).is_err());
}

#[test]
fn flow_patterns_check_their_parts() {
    let p = |j: &str| serde_json::from_str::<FlowPattern>(j).unwrap().check();
    assert_eq!(
        p(r#"{"src":"0.0.0.0/0","dst":"192.0.2.1"}"#),
        Ok(Family::Ipv4)
    );
    assert!(p(r#"{"src":"::/0","dst":"192.0.2.1"}"#).is_err());
    assert!(p(r#"{"src":"::/0","dst":"::/0","dport":"80"}"#).is_err());
    assert!(p(r#"{"protocol":"icmp","src":"::/0","dst":"::/0"}"#).is_err());
    assert_eq!(
        p(r#"{"protocol":"tcp","src":"::/0","dst":"2001:db8::/32","dport":"80-90"}"#),
        Ok(Family::Ipv6)
    );
}

#[test]
fn digest_depends_only_on_firewall_content() {
    let a = sample();
    let mut b = a.clone();
    b.version += 1;
    b.issued_at += 10;
    assert_eq!(a.firewall.digest(), b.firewall.digest());
    b.firewall.rules.pop();
    assert_ne!(a.firewall.digest(), b.firewall.digest());
}
