//! nftables backend: the agent's own `table inet isdf`, replaced as one
//! `nft -f` transaction, so the kernel switches from the old ruleset to the
//! new one at once or not at all.
//!
//! Element expiries become nft element timeouts: they leave the set on time
//! even if the agent is not running.
//!
//! Each flow set of the config becomes two kernel sets: exact 5-tuples go to
//! a hash set (`<name>`), patterns with prefixes, ranges or "any" go to an
//! interval set (`<name>_R`; the uppercase suffix cannot collide with a config
//! name). Interval sets of concatenations cost nft about six times more per
//! element to load than hash sets, and timed 5-tuple blocks are the bulk case.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context};
use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, Match, PortRange, Prefix, Protocol,
    Rule, RuleCounter, Set, SetElement, SetKey,
};

use super::{exec, remaining_secs, FirewallBackend};

pub const TABLE: &str = "isdf";
/// Our chains run just before fw4's (priority filter = 0), so a block here
/// wins over an accept there.
const CHAIN_PRIORITY: &str = "filter - 10";
/// Suffix of the interval half of a flow set.
const RANGES_SUFFIX: &str = "_R";

/// Whether to write set elements into a script. The pre-flight `nft -c` check
/// runs on the structure only: element values are typed by the planner, and
/// loading them is part of the all-or-nothing transaction anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elements {
    Include,
    Omit,
}

/// Plans the complete nft script that replaces our table with `firewall` as of `now`.
///
/// The script first makes sure the table exists, then deletes and recreates
/// it inside the same transaction: no moment exists with a half ruleset.
pub fn plan(firewall: &Firewall, now: i64) -> String {
    plan_script(firewall, now, Elements::Include)
}

fn plan_script(firewall: &Firewall, now: i64, elements: Elements) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for set in &firewall.sets {
        for kernel_set in kernel_sets(set) {
            plan_set(&mut s, &kernel_set, now, elements);
        }
    }
    for chain in Chain::ALL {
        let _ = writeln!(s, "\tchain {} {{", chain.name());
        let _ = writeln!(
            s,
            "\t\ttype filter hook {} priority {CHAIN_PRIORITY}; policy accept;",
            chain.name()
        );
        for rule in firewall.rules.iter().filter(|r| r.chain == chain) {
            for line in rule_lines(rule, &firewall.sets) {
                let _ = writeln!(s, "\t\t{line}");
            }
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// A set as the kernel holds it.
struct KernelSet<'a> {
    name: String,
    type_expr: &'static str,
    interval: bool,
    elements: Vec<&'a SetElement>,
}

fn is_host(p: &Prefix) -> bool {
    p.net().prefix_len() == p.net().max_prefix_len()
}

fn is_exact(f: &FlowPattern) -> bool {
    f.protocol.is_some_and(Protocol::has_ports)
        && is_host(&f.src)
        && is_host(&f.dst)
        && f.sport.first() == f.sport.last()
        && f.dport.first() == f.dport.last()
}

fn kernel_sets(set: &Set) -> Vec<KernelSet<'_>> {
    let flow_type = |family| match family {
        Family::Ipv4 => "inet_proto . ipv4_addr . inet_service . ipv4_addr . inet_service",
        Family::Ipv6 => "inet_proto . ipv6_addr . inet_service . ipv6_addr . inet_service",
    };
    match set.key {
        SetKey::Ipv4Addr | SetKey::Ipv6Addr => vec![KernelSet {
            name: set.name.to_string(),
            type_expr: if set.key == SetKey::Ipv4Addr {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            },
            interval: true,
            elements: set.elements.iter().collect(),
        }],
        SetKey::Ipv4Flow | SetKey::Ipv6Flow => {
            let (exact, ranges): (Vec<_>, Vec<_>) = set
                .elements
                .iter()
                .partition(|e| matches!(&e.value, ElementValue::Flow(f) if is_exact(f)));
            vec![
                KernelSet {
                    name: set.name.to_string(),
                    type_expr: flow_type(set.key.family()),
                    interval: false,
                    elements: exact,
                },
                KernelSet {
                    name: format!("{}{RANGES_SUFFIX}", set.name),
                    type_expr: flow_type(set.key.family()),
                    interval: true,
                    elements: ranges,
                },
            ]
        }
    }
}

fn ports(range: PortRange) -> String {
    range.to_string()
}

fn prefix(p: &Prefix) -> String {
    p.net().to_string()
}

fn flow_element(f: &FlowPattern) -> String {
    let proto = f
        .protocol
        .map_or_else(|| "0-255".to_owned(), |p| p.number().to_string());
    format!(
        "{proto} . {} . {} . {} . {}",
        prefix(&f.src),
        ports(f.sport),
        prefix(&f.dst),
        ports(f.dport)
    )
}

fn plan_set(s: &mut String, set: &KernelSet<'_>, now: i64, elements: Elements) {
    let flags = if set.interval {
        "interval, timeout"
    } else {
        "timeout"
    };
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(s, "\t\ttype {}; flags {flags};", set.type_expr);
    let values: Vec<String> = set
        .elements
        .iter()
        .filter(|_| elements == Elements::Include)
        .filter_map(|e| {
            let value = match &e.value {
                ElementValue::Addr(p) => prefix(p),
                ElementValue::Flow(f) => flow_element(f),
            };
            match remaining_secs(e.expires_at, now) {
                None => Some(value),
                Some(0) => None,
                Some(secs) => Some(format!("{value} timeout {secs}s")),
            }
        })
        .collect();
    if !values.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{\n\t\t\t{}\n\t\t}}",
            values.join(",\n\t\t\t")
        );
    }
    let _ = writeln!(s, "\t}}");
}

/// The match expressions of a rule (without action or counter): one per
/// kernel set it looks up, so a flow set gives two.
fn match_exprs(m: &Match, sets: &[Set]) -> Vec<String> {
    let family = m.family_with(sets).ok().flatten();
    let ip = |f: Family| if f == Family::Ipv4 { "ip" } else { "ip6" };
    let mut parts = Vec::new();
    if let Some(f) = family {
        parts.push(format!(
            "meta nfproto {}",
            if f == Family::Ipv4 { "ipv4" } else { "ipv6" }
        ));
    }
    if let Some(p) = m.protocol {
        parts.push(format!("meta l4proto {}", p.number()));
    }
    if let (Some(p), Some(f)) = (&m.src, family) {
        parts.push(format!("{} saddr {}", ip(f), prefix(p)));
    }
    if let (Some(p), Some(f)) = (&m.dst, family) {
        parts.push(format!("{} daddr {}", ip(f), prefix(p)));
    }
    if let Some(r) = m.sport {
        parts.push(format!("th sport {}", ports(r)));
    }
    if let Some(r) = m.dport {
        parts.push(format!("th dport {}", ports(r)));
    }
    if let (Some(name), Some(f)) = (&m.src_in_set, family) {
        parts.push(format!("{} saddr @{name}", ip(f)));
    }
    if let (Some(name), Some(f)) = (&m.dst_in_set, family) {
        parts.push(format!("{} daddr @{name}", ip(f)));
    }
    let base = parts.join(" ");
    match (&m.flow_in_set, family) {
        (Some(name), Some(f)) => {
            let ip = ip(f);
            let key = format!("meta l4proto . {ip} saddr . th sport . {ip} daddr . th dport");
            [name.to_string(), format!("{name}{RANGES_SUFFIX}")]
                .iter()
                .map(|set| {
                    [base.as_str(), &format!("{key} @{set}")]
                        .join(" ")
                        .trim()
                        .to_owned()
                })
                .collect()
        }
        _ => vec![base],
    }
}

/// Which reject statements a match needs: (TCP reset, ICMP). A rule already
/// limited to one protocol needs only one of them.
fn reject_variants(m: &Match) -> (bool, bool) {
    match m.protocol {
        Some(Protocol::Tcp) => (true, false),
        Some(_) => (false, true),
        None => (true, true),
    }
}

/// The nft rule lines of one config rule; all carry the rule id as comment,
/// so their counters add up under it.
fn rule_lines(rule: &Rule, sets: &[Set]) -> Vec<String> {
    let comment = format!("comment \"{}\"", rule.id);
    let mut lines = Vec::new();
    for expr in match_exprs(&rule.matches, sets) {
        let sep = if expr.is_empty() { "" } else { " " };
        match rule.action {
            Action::Accept => lines.push(format!("{expr}{sep}counter accept {comment}")),
            Action::Drop => lines.push(format!("{expr}{sep}counter drop {comment}")),
            Action::Count => lines.push(format!("{expr}{sep}counter {comment}")),
            Action::Reject => {
                // TCP gets a reset (the client fails at once), the rest an
                // ICMP administratively-prohibited.
                let (tcp, other) = reject_variants(&rule.matches);
                if tcp {
                    lines.push(format!(
                        "{expr}{sep}meta l4proto tcp counter reject with tcp reset {comment}"
                    ));
                }
                if other {
                    lines.push(format!(
                        "{expr}{sep}counter reject with icmpx admin-prohibited {comment}"
                    ));
                }
            }
        }
    }
    lines
}

/// What `nft -t -j list table inet isdf` shows: set names and, per chain,
/// rule comments in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    sets: Vec<String>,
    chains: BTreeMap<String, Vec<String>>,
}

fn expected_shape(firewall: &Firewall) -> Shape {
    let mut sets: Vec<String> = firewall
        .sets
        .iter()
        .flat_map(kernel_sets)
        .map(|k| k.name)
        .collect();
    sets.sort();
    let chains = Chain::ALL
        .iter()
        .map(|chain| {
            let comments = firewall
                .rules
                .iter()
                .filter(|r| r.chain == *chain)
                .flat_map(|r| {
                    std::iter::repeat_n(r.id.to_string(), rule_lines(r, &firewall.sets).len())
                })
                .collect();
            (chain.name().to_owned(), comments)
        })
        .collect();
    Shape { sets, chains }
}

fn listed_shape(json: &serde_json::Value) -> anyhow::Result<(Shape, Vec<RuleCounter>)> {
    let items = json["nftables"]
        .as_array()
        .context("nft -j output has no `nftables` array")?;
    let mut shape = Shape::default();
    let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            shape
                .sets
                .push(set["name"].as_str().context("set without name")?.to_owned());
        } else if let Some(chain) = item.get("chain") {
            let name = chain["name"].as_str().context("chain without name")?;
            shape.chains.entry(name.to_owned()).or_default();
        } else if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().context("rule without chain")?;
            let comment = rule["comment"].as_str().unwrap_or("").to_owned();
            if let Some(counter) = rule["expr"]
                .as_array()
                .and_then(|exprs| exprs.iter().find_map(|e| e.get("counter")))
            {
                let entry = counters.entry(comment.clone()).or_default();
                entry.0 += counter["packets"].as_u64().unwrap_or(0);
                entry.1 += counter["bytes"].as_u64().unwrap_or(0);
            }
            shape
                .chains
                .entry(chain.to_owned())
                .or_default()
                .push(comment);
        }
    }
    shape.sets.sort();
    let counters = counters
        .into_iter()
        .filter(|(id, _)| !id.is_empty())
        .map(|(rule_id, (packets, bytes))| RuleCounter {
            rule_id,
            packets,
            bytes,
        })
        .collect();
    Ok((shape, counters))
}

/// Runs `nft` in the agent's network namespace.
pub struct NftBackend {
    program: String,
}

impl NftBackend {
    pub fn new() -> Self {
        NftBackend {
            program: std::env::var("ISDF_NFT").unwrap_or_else(|_| "nft".to_owned()),
        }
    }

    /// Lists our table without set elements (terse): what verification and
    /// counters need, at a fraction of a full listing's cost.
    fn list_terse(&self) -> anyhow::Result<Option<serde_json::Value>> {
        match exec::run(
            &self.program,
            &["-t", "-j", "list", "table", "inet", TABLE],
            "",
        ) {
            Ok(out) => Ok(Some(
                serde_json::from_str(&out).context("parsing nft -j output")?,
            )),
            Err(e) if format!("{e:#}").contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Default for NftBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FirewallBackend for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, firewall: &Firewall, now: i64) -> anyhow::Result<()> {
        let structure = plan_script(firewall, now, Elements::Omit);
        exec::run(&self.program, &["-c", "-f", "-"], &structure)
            .context("nft rejected the planned ruleset (check)")?;
        exec::run(&self.program, &["-f", "-"], &plan(firewall, now))
            .context("applying the ruleset with nft -f")?;
        Ok(())
    }

    /// Checks our table, its sets, chains and rules are what the plan made.
    /// Set elements are not compared: they arrive in the same transaction as
    /// the rules, and listing them costs as much as loading them.
    fn verify(&self, firewall: &Firewall, _now: i64) -> anyhow::Result<()> {
        let Some(json) = self.list_terse()? else {
            bail!("table inet {TABLE} is missing");
        };
        let (listed, _) = listed_shape(&json)?;
        let expected = expected_shape(firewall);
        if listed.chains != expected.chains {
            bail!(
                "chains differ: kernel has {:?}, expected {:?}",
                listed.chains,
                expected.chains
            );
        }
        if listed.sets != expected.sets {
            bail!(
                "sets differ: kernel has {:?}, expected {:?}",
                listed.sets,
                expected.sets
            );
        }
        Ok(())
    }

    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        match self.list_terse()? {
            Some(json) => Ok(listed_shape(&json)?.1),
            None => Ok(Vec::new()),
        }
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        exec::run(
            &self.program,
            &["-f", "-"],
            &format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Firewall {
        let config: isdf_api::DeviceConfig = serde_json::from_str(include_str!(
            "../../../api/tests/vectors/config-sample.json"
        ))
        .unwrap();
        config.firewall
    }

    #[test]
    fn plan_of_the_shared_sample() {
        // now is 100 s before the timed element expires.
        insta::assert_snapshot!(plan(&sample(), 1_795_003_500));
    }

    #[test]
    fn expired_elements_are_left_out() {
        let script = plan(&sample(), 1_795_003_600);
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
        insta::assert_snapshot!(plan(&firewall, 0));
    }

    #[test]
    fn the_check_script_has_the_structure_without_elements() {
        let structure = plan_script(&sample(), 0, Elements::Omit);
        assert!(!structure.contains("elements"));
        assert_eq!(
            structure.lines().filter(|l| l.contains("comment")).count(),
            plan(&sample(), 0)
                .lines()
                .filter(|l| l.contains("comment"))
                .count()
        );
    }

    #[test]
    fn empty_config_still_installs_an_empty_table() {
        insta::assert_snapshot!(plan(&Firewall::default(), 0));
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
            sets: vec![],
            rules,
        };
        insta::assert_snapshot!(plan(&firewall, 0));
    }

    #[test]
    fn the_expected_shape_matches_what_the_plan_writes() {
        let firewall = sample();
        let shape = expected_shape(&firewall);
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

    #[test]
    fn listing_is_parsed_into_shape_and_counters() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("testdata/nft-list.json")).unwrap();
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
}
