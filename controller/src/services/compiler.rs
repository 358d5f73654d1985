//! The compiler: a pure function from one device and the assignments in force
//! to that device's firewall primitives. No I/O, no clock: `now` is an input,
//! so the same inputs always give the same output (and the same digest).
//! Each service kind compiles itself (`flow_block.rs`, `bittorrent_block.rs`,
//! `pay_per_site/gate.rs`); this file decides which assignments apply and how
//! several assignments of one kind combine.

use isdf_api::{Firewall, FlowPattern};

use super::bittorrent_block::BittorrentBlockSpec;
use super::flow_block::{BlockAction, FlowBlocks};
use super::pay_per_site::{DeviceShop, PayPerSiteSpec};
use super::ServiceSpec;
use crate::model::{Labels, Selector};

/// A timed block an operator set on one device, as the compiler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBlock {
    pub action: BlockAction,
    pub pattern: FlowPattern,
    /// Unix seconds.
    pub expires_at: i64,
}

/// An assignment as the compiler sees it: its selector and the parsed spec of
/// the revision it pins.
#[derive(Debug, Clone)]
pub struct CompiledAssignment {
    /// The assignment's id (a staged rollout swaps forms by it).
    pub id: uuid::Uuid,
    pub selector: Selector,
    /// Unix seconds; timed services count their duration from here.
    pub created_at: i64,
    pub spec: ServiceSpec,
}

/// Compiles the firewall of a device with `labels` from every assignment in
/// force, the device's own timed blocks and, for `pay-per-site`, its shop
/// (catalogs, the household's passes, portal links; None: the service
/// compiles to nothing). Assignments whose selector does not match are
/// ignored; timed elements and passes already ended at `now` are left out.
pub fn compile_firewall<'a>(
    labels: &Labels,
    assignments: impl IntoIterator<Item = &'a CompiledAssignment>,
    device_blocks: &[DeviceBlock],
    shop: Option<&DeviceShop<'_>>,
    now: i64,
) -> Firewall {
    let mut blocks = FlowBlocks::default();
    let mut bittorrent: Option<BittorrentBlockSpec> = None;
    let mut pay_per_site: Option<&PayPerSiteSpec> = None;
    for assignment in assignments
        .into_iter()
        .filter(|a| a.selector.matches(labels))
    {
        match &assignment.spec {
            ServiceSpec::FlowBlock(spec) => blocks.add_spec(spec, assignment.created_at, now),
            // Assigned twice: once, with the longest block time, and
            // heuristics on if any assignment wants them (the stricter).
            ServiceSpec::BittorrentBlock(spec) => {
                bittorrent = Some(match bittorrent {
                    Some(b) => BittorrentBlockSpec {
                        block_secs: b.block_secs.max(spec.block_secs),
                        heuristics: b.heuristics || spec.heuristics,
                    },
                    None => spec.clone(),
                })
            }
            // A router takes one catalog: of several, the first by name.
            ServiceSpec::PayPerSite(spec) => {
                pay_per_site = Some(match pay_per_site {
                    Some(p) if p.catalog <= spec.catalog => p,
                    _ => spec,
                })
            }
            // Not the firewall's: `agent_release::wanted` picks it.
            ServiceSpec::AgentRelease(_) => {}
        }
    }
    for block in device_blocks.iter().filter(|b| b.expires_at > now) {
        blocks.add_pattern(block.action, block.pattern.clone(), Some(block.expires_at));
    }

    let mut firewall = Firewall::default();
    blocks.add_to(&mut firewall);
    if let Some(spec) = &bittorrent {
        super::bittorrent_block::add_to(&mut firewall, spec);
    }
    if let (Some(spec), Some(shop)) = (pay_per_site, shop) {
        super::pay_per_site::add_to(&mut firewall, spec, shop, now);
    }
    firewall
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::ServiceKind;
    use isdf_api::{Action, Chain};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    fn assignment(selector: &str, created_at: i64, spec: &str) -> CompiledAssignment {
        CompiledAssignment {
            id: uuid::Uuid::new_v4(),
            selector: Selector::parse(selector).unwrap(),
            created_at,
            spec: ServiceSpec::parse(ServiceKind::FlowBlock, &serde_json::from_str(spec).unwrap())
                .unwrap(),
        }
    }

    #[test]
    fn flow_block_compiles_to_sets_and_rules() {
        let assignments = [
            assignment(
                "env=prod",
                100,
                r#"{"flows":[{"protocol":"tcp","dst":"198.51.100.2","dport":9000}]}"#,
            ),
            assignment(
                "*",
                100,
                r#"{"action":"reject","flows":[{"protocol":"udp","dport":"5000-5010"}],"duration_secs":60}"#,
            ),
            assignment("env=lab", 100, r#"{"flows":[{"dst":"203.0.113.0/24"}]}"#),
        ];
        let firewall = compile_firewall(&labels(&[("env", "prod")]), &assignments, &[], None, 120);
        insta::assert_json_snapshot!(firewall);
    }

    #[test]
    fn expired_timed_blocks_are_left_out() {
        let assignments = [assignment(
            "*",
            100,
            r#"{"flows":[{"protocol":"tcp","dport":1}],"duration_secs":60}"#,
        )];
        assert_eq!(
            compile_firewall(&Labels::default(), &assignments, &[], None, 159)
                .sets
                .len(),
            2
        );
        assert!(
            compile_firewall(&Labels::default(), &assignments, &[], None, 160)
                .sets
                .is_empty()
        );
    }

    #[test]
    fn overlapping_assignments_merge_and_the_longest_block_wins() {
        let spec =
            r#"{"flows":[{"protocol":"tcp","dst":"192.0.2.1","dport":1}],"duration_secs":60}"#;
        let permanent = r#"{"flows":[{"protocol":"tcp","dst":"192.0.2.1","dport":1}]}"#;
        let timed = [assignment("*", 100, spec), assignment("*", 200, spec)];
        let fw = compile_firewall(&Labels::default(), &timed, &[], None, 150);
        assert_eq!(fw.sets[0].elements.len(), 1);
        assert_eq!(fw.sets[0].elements[0].expires_at, Some(260));
        let mixed = [assignment("*", 100, spec), assignment("*", 100, permanent)];
        let fw = compile_firewall(&Labels::default(), &mixed, &[], None, 150);
        assert_eq!(fw.sets[0].elements[0].expires_at, None);
    }

    #[test]
    fn output_does_not_depend_on_assignment_order() {
        let a = assignment(
            "*",
            1,
            r#"{"flows":[{"dst":"192.0.2.1"},{"dst":"192.0.2.2"}]}"#,
        );
        let b = assignment(
            "*",
            2,
            r#"{"action":"reject","flows":[{"dst":"2001:db8::1"}]}"#,
        );
        let one = compile_firewall(&Labels::default(), &[a.clone(), b.clone()], &[], None, 0);
        let two = compile_firewall(&Labels::default(), &[b, a], &[], None, 0);
        assert_eq!(one.digest(), two.digest());
    }

    #[test]
    fn device_blocks_join_the_flow_sets_until_they_expire() {
        let pattern: FlowPattern = serde_json::from_value(serde_json::json!(
            {"protocol": "tcp", "src": "192.0.2.2", "sport": 40000, "dst": "198.51.100.2", "dport": 22}
        ))
        .unwrap();
        let service = [assignment(
            "*",
            100,
            r#"{"flows":[{"protocol":"tcp","src":"192.0.2.2","sport":40000,"dst":"198.51.100.2","dport":22}],"duration_secs":10}"#,
        )];
        let block = DeviceBlock {
            action: BlockAction::Drop,
            pattern: pattern.clone(),
            expires_at: 130,
        };
        // Merged with the same flow from a service: the later end wins.
        let fw = compile_firewall(
            &Labels::default(),
            &service,
            std::slice::from_ref(&block),
            None,
            105,
        );
        assert_eq!(fw.sets.len(), 1);
        assert_eq!(fw.sets[0].elements.len(), 1);
        assert_eq!(fw.sets[0].elements[0].expires_at, Some(130));
        assert_eq!(fw.rules[0].action, Action::Drop);
        assert!(
            compile_firewall(&Labels::default(), &[], &[block], None, 130)
                .sets
                .is_empty()
        );
    }

    fn validated(firewall: Firewall) -> Firewall {
        let config = isdf_api::DeviceConfig {
            device_id: "d".into(),
            version: 1,
            issued_at: 0,
            expires_at: 1,
            firewall,
            agent_release: None,
        };
        config.validate().unwrap();
        config.firewall
    }

    #[test]
    fn pay_per_site_gates_unpaid_sites_and_opens_paid_ones_until_their_end() {
        use crate::services::pay_per_site::{CatalogSite, Catalogs, PortalLinks};
        let spec = |catalog: &str| CompiledAssignment {
            id: uuid::Uuid::nil(),
            selector: Selector::parse("*").unwrap(),
            created_at: 0,
            spec: ServiceSpec::parse(
                ServiceKind::PayPerSite,
                &serde_json::json!({"catalog": catalog, "max_ttl_secs": 30,
                    "extra_doh_addresses": ["198.51.100.53"]}),
            )
            .unwrap(),
        };
        let site = |id: i64, domain: &str| CatalogSite {
            id,
            domains: vec![isdf_api::DomainPattern::parse(domain).unwrap()],
            addresses: if id == 1 {
                vec![
                    "203.0.113.7".parse().unwrap(),
                    "2001:db8::7".parse().unwrap(),
                ]
            } else {
                Vec::new()
            },
        };
        let catalogs: Catalogs = [
            (
                "main".to_owned(),
                vec![site(1, "video.test"), site(2, "*.games.test")],
            ),
            ("zzz".to_owned(), vec![site(9, "other.test")]),
        ]
        .into();
        let portal = PortalLinks::new("https://portal.isp.test", [1; 32]);
        let passes = [(1, 1_000), (2, 500)].into();
        let shop = DeviceShop {
            device_id: "dev-1",
            catalogs: &catalogs,
            passes: &passes,
            portal: &portal,
            reads_names: true,
        };
        // Two assignments: the first catalog by name wins.
        let firewall = validated(compile_firewall(
            &Labels::default(),
            &[spec("zzz"), spec("main")],
            &[],
            Some(&shop),
            600,
        ));
        insta::assert_json_snapshot!(firewall);
        // Site 2's pass ended at 500: no pass rules for it. Site 1's opens
        // its flows by name and its addresses' unnamed flows, ahead of the
        // gate of each.
        let ids: Vec<&str> = firewall.rules.iter().map(|r| r.id.as_str()).collect();
        let at = |id: &str| ids.iter().position(|i| *i == id).unwrap();
        assert!(at("pps1-named-pass") < at("pps1-named-portal"));
        assert!(at("pps1-pass-v6") < at("pps1-gate-v6"));
        assert!(!ids
            .iter()
            .any(|id| id.starts_with("pps2") && id.contains("pass")));
        assert!(!ids.iter().any(|id| id.starts_with("pps9")));
        // Names are read for each site, learning into its sets for the TTL cap.
        let names = firewall.flow_names.as_ref().unwrap();
        let groups: Vec<&str> = names.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!((groups, names.learn_secs), (vec!["pps1", "pps2"], 30));
        // No nat redirect any more: HTTP is answered from the forward path.
        assert!(firewall
            .rules
            .iter()
            .all(|r| r.chain != Chain::Prerouting
                || matches!(r.action, Action::Redirect { port: 53 })));
        // An agent older than flow names gets the gate by address alone,
        // which it parses: no flow_names, no flow_name or portal rule.
        let old = DeviceShop {
            reads_names: false,
            ..shop
        };
        let legacy = validated(compile_firewall(
            &Labels::default(),
            &[spec("main")],
            &[],
            Some(&old),
            600,
        ));
        assert!(legacy.flow_names.is_none());
        assert!(legacy
            .rules
            .iter()
            .all(|r| r.matches.flow_name.is_none() && r.action != Action::Portal));
        let ids: Vec<&str> = legacy.rules.iter().map(|r| r.id.as_str()).collect();
        assert!(ids.contains(&"pps1-portal-v4") && ids.contains(&"pps1-open-v6"));
        for (version, reads) in [
            (None, true),
            (Some("0.1.0"), false),
            (Some("0.2.0"), true),
            (Some("0.2.0-rc.1"), false),
            (Some("0.99.0-next"), true),
            (Some("test"), true),
        ] {
            assert_eq!(
                crate::services::pay_per_site::reads_flow_names(version),
                reads,
                "{version:?}"
            );
        }
        // Without a shop (no catalog data) the service adds nothing.
        assert!(
            compile_firewall(&Labels::default(), &[spec("main")], &[], None, 600)
                .rules
                .is_empty()
        );
    }

    #[test]
    fn bittorrent_block_compiles_to_signatures_that_validate() {
        let spec = |secs: u32| CompiledAssignment {
            id: uuid::Uuid::nil(),
            selector: Selector::parse("*").unwrap(),
            created_at: 0,
            spec: ServiceSpec::parse(
                ServiceKind::BittorrentBlock,
                &serde_json::json!({ "block_secs": secs }),
            )
            .unwrap(),
        };
        let firewall = compile_firewall(&Labels::default(), &[spec(60), spec(600)], &[], None, 0);
        insta::assert_json_snapshot!(validated(firewall));
        assert!(ServiceSpec::parse(
            ServiceKind::BittorrentBlock,
            &serde_json::json!({"block_secs": 0})
        )
        .is_err());
    }

    #[test]
    fn heuristics_turned_off_reach_the_config_unless_another_assignment_wants_them() {
        let spec = |json: serde_json::Value| CompiledAssignment {
            id: uuid::Uuid::nil(),
            selector: Selector::parse("*").unwrap(),
            created_at: 0,
            spec: ServiceSpec::parse(ServiceKind::BittorrentBlock, &json).unwrap(),
        };
        let off = spec(serde_json::json!({"block_secs": 60, "heuristics": false}));
        let on = spec(serde_json::json!({"block_secs": 600}));
        let firewall = validated(compile_firewall(
            &Labels::default(),
            std::slice::from_ref(&off),
            &[],
            None,
            0,
        ));
        assert_eq!(
            firewall.classifier,
            Some(isdf_api::ClassifierPolicy { heuristics: false })
        );
        assert!(!firewall.classifier_heuristics());
        let both = compile_firewall(&Labels::default(), &[off, on], &[], None, 0);
        assert_eq!(both.classifier, None, "the stricter assignment wins");
        assert!(both.classifier_heuristics());
        // On is the default and is not written out: configs of routers that
        // keep the default do not change.
        let ServiceSpec::BittorrentBlock(default) =
            ServiceSpec::parse(ServiceKind::BittorrentBlock, &serde_json::json!({})).unwrap()
        else {
            unreachable!()
        };
        assert!(default.heuristics);
        assert_eq!(
            serde_json::to_value(&default).unwrap(),
            serde_json::json!({"block_secs": 3600})
        );
    }

    #[test]
    fn compiled_configs_pass_the_agent_side_validation() {
        let assignments = [assignment(
            "*",
            0,
            r#"{"flows":[{"protocol":"icmp"},{"protocol":"tcp","sport":"1-2","dst":"::/0","dport":3}]}"#,
        )];
        validated(compile_firewall(
            &Labels::default(),
            &assignments,
            &[],
            None,
            0,
        ));
    }

    fn arbitrary_flow() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let v4 = (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| {
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), l)
                .unwrap()
                .trunc()
                .to_string()
        });
        let v6 = (any::<[u16; 8]>(), 0u8..=128).prop_map(|(a, l)| {
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(a), l)
                .unwrap()
                .trunc()
                .to_string()
        });
        let ports =
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b)));
        (
            any::<bool>(),
            v4,
            v6,
            proptest::option::of(ports.clone()),
            proptest::option::of(ports),
            any::<bool>(),
        )
            .prop_map(|(ipv6, a4, a6, sport, dport, tcp)| {
                let addr = if ipv6 { a6 } else { a4 };
                serde_json::json!({
                    "protocol": if tcp { "tcp" } else { "udp" },
                    "dst": addr, "sport": sport, "dport": dport,
                })
            })
    }

    proptest::proptest! {
        #[test]
        fn any_valid_spec_compiles_to_a_config_the_agent_accepts(
            flows in proptest::collection::vec(arbitrary_flow(), 1..20),
            duration in proptest::option::of(1u64..100_000),
            now in 0i64..200_000,
        ) {
            let spec = serde_json::json!({"flows": flows, "duration_secs": duration});
            let assignment = CompiledAssignment {
                id: uuid::Uuid::nil(),
                selector: Selector::parse("*").unwrap(),
                created_at: 100_000,
                spec: ServiceSpec::parse(ServiceKind::FlowBlock, &spec).unwrap(),
            };
            let firewall = compile_firewall(&Labels::default(), &[assignment], &[], None, now);
            let config = isdf_api::DeviceConfig { device_id: "d".into(), version: 1, issued_at: 0, expires_at: 1, firewall, agent_release: None };
            proptest::prop_assert!(config.validate().is_ok());
            let bytes = serde_json::to_vec(&config).unwrap();
            let again: isdf_api::DeviceConfig = serde_json::from_slice(&bytes).unwrap();
            proptest::prop_assert_eq!(again, config);
        }
    }
}
