//! nftables backend: the agent's own `table inet isdf`, replaced as one
//! `nft -f` transaction (checked first with `nft -c`), so the kernel switches
//! from the old ruleset to the new one at once or not at all.
//!
//! Element expiries become nft element timeouts: they leave the set on time
//! even if the agent is not running.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context};
use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, Match, PortRange, Prefix, Protocol,
    Rule, RuleCounter, Set, SetKey,
};

use super::{exec, remaining_secs, FirewallBackend};

pub const TABLE: &str = "isdf";
/// Our chains run just before fw4's (priority filter = 0), so a block here
/// wins over an accept there.
const CHAIN_PRIORITY: &str = "filter - 10";

/// Plans the complete nft script that replaces our table with `firewall` as of `now`.
///
/// The script first makes sure the table exists, then deletes and recreates
/// it inside the same transaction: no moment exists with a half ruleset.
pub fn plan(firewall: &Firewall, now: i64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for set in &firewall.sets {
        plan_set(&mut s, set, now);
    }
    for chain in Chain::ALL {
        let _ = writeln!(s, "\tchain {} {{", chain.name());
        let _ = writeln!(
            s,
            "\t\ttype filter hook {} priority {CHAIN_PRIORITY}; policy accept;",
            chain.name()
        );
        for rule in firewall.rules.iter().filter(|r| r.chain == chain) {
            plan_rule(&mut s, rule, &firewall.sets);
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

fn set_type(key: SetKey) -> &'static str {
    match key {
        SetKey::Ipv4Addr => "ipv4_addr",
        SetKey::Ipv6Addr => "ipv6_addr",
        SetKey::Ipv4Flow => "inet_proto . ipv4_addr . inet_service . ipv4_addr . inet_service",
        SetKey::Ipv6Flow => "inet_proto . ipv6_addr . inet_service . ipv6_addr . inet_service",
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

fn plan_set(s: &mut String, set: &Set, now: i64) {
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(
        s,
        "\t\ttype {}; flags interval, timeout;",
        set_type(set.key)
    );
    let elements: Vec<String> = set
        .elements
        .iter()
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
    if !elements.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{\n\t\t\t{}\n\t\t}}",
            elements.join(",\n\t\t\t")
        );
    }
    let _ = writeln!(s, "\t}}");
}

/// The match expression of a rule (without action or counter).
fn match_expr(m: &Match, sets: &[Set]) -> String {
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
    if let (Some(name), Some(f)) = (&m.flow_in_set, family) {
        let ip = ip(f);
        parts.push(format!(
            "meta l4proto . {ip} saddr . th sport . {ip} daddr . th dport @{name}"
        ));
    }
    if let (Some(name), Some(f)) = (&m.src_in_set, family) {
        parts.push(format!("{} saddr @{name}", ip(f)));
    }
    if let (Some(name), Some(f)) = (&m.dst_in_set, family) {
        parts.push(format!("{} daddr @{name}", ip(f)));
    }
    parts.join(" ")
}

fn plan_rule(s: &mut String, rule: &Rule, sets: &[Set]) {
    let expr = match_expr(&rule.matches, sets);
    let sep = if expr.is_empty() { "" } else { " " };
    let comment = format!("comment \"{}\"", rule.id);
    match rule.action {
        Action::Accept => {
            let _ = writeln!(s, "\t\t{expr}{sep}counter accept {comment}");
        }
        Action::Drop => {
            let _ = writeln!(s, "\t\t{expr}{sep}counter drop {comment}");
        }
        Action::Count => {
            let _ = writeln!(s, "\t\t{expr}{sep}counter {comment}");
        }
        Action::Reject => {
            // TCP gets a reset (the client fails at once), the rest an ICMP
            // administratively-prohibited; both count under the same id.
            let (tcp, other) = reject_variants(&rule.matches);
            if tcp {
                let _ = writeln!(
                    s,
                    "\t\t{expr}{sep}meta l4proto tcp counter reject with tcp reset {comment}"
                );
            }
            if other {
                let _ = writeln!(
                    s,
                    "\t\t{expr}{sep}counter reject with icmpx admin-prohibited {comment}"
                );
            }
        }
    }
}

/// Which reject rules a match needs: (TCP reset, ICMP) — a rule already
/// limited to one protocol needs only one of them.
fn reject_variants(m: &Match) -> (bool, bool) {
    match m.protocol {
        Some(Protocol::Tcp) => (true, false),
        Some(_) => (false, true),
        None => (true, true),
    }
}

/// What `nft -j list table inet isdf` should show after applying a plan.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    /// Set name -> number of elements.
    sets: BTreeMap<String, usize>,
    /// Chain name -> rule comments in order.
    chains: BTreeMap<String, Vec<String>>,
}

fn expected_shape(firewall: &Firewall, now: i64) -> (Shape, BTreeMap<String, usize>) {
    let mut shape = Shape::default();
    // Elements about to expire may be gone by the time we look.
    let mut may_expire = BTreeMap::new();
    for set in &firewall.sets {
        let live = set
            .elements
            .iter()
            .filter(|e| remaining_secs(e.expires_at, now) != Some(0))
            .count();
        let soon = set
            .elements
            .iter()
            .filter(|e| remaining_secs(e.expires_at, now).is_some_and(|r| r <= 5))
            .count();
        shape.sets.insert(set.name.to_string(), live);
        may_expire.insert(set.name.to_string(), soon);
    }
    for chain in Chain::ALL {
        let mut ids = Vec::new();
        for rule in firewall.rules.iter().filter(|r| r.chain == chain) {
            let copies = match rule.action {
                Action::Reject => {
                    let (tcp, other) = reject_variants(&rule.matches);
                    usize::from(tcp) + usize::from(other)
                }
                _ => 1,
            };
            ids.extend(std::iter::repeat_n(rule.id.to_string(), copies));
        }
        shape.chains.insert(chain.name().to_owned(), ids);
    }
    (shape, may_expire)
}

fn listed_shape(json: &serde_json::Value) -> anyhow::Result<(Shape, Vec<RuleCounter>)> {
    let items = json["nftables"]
        .as_array()
        .context("nft -j output has no `nftables` array")?;
    let mut shape = Shape::default();
    let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            let name = set["name"].as_str().context("set without name")?;
            let count = set
                .get("elem")
                .and_then(|e| e.as_array())
                .map_or(0, Vec::len);
            shape.sets.insert(name.to_owned(), count);
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

/// Runs `nft` (optionally inside nothing else: the agent runs in the router's
/// network namespace already).
pub struct NftBackend {
    program: String,
}

impl NftBackend {
    pub fn new() -> Self {
        NftBackend {
            program: std::env::var("ISDF_NFT").unwrap_or_else(|_| "nft".to_owned()),
        }
    }

    fn list(&self) -> anyhow::Result<Option<serde_json::Value>> {
        match exec::run(&self.program, &["-j", "list", "table", "inet", TABLE], "") {
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
        let script = plan(firewall, now);
        exec::run(&self.program, &["-c", "-f", "-"], &script)
            .context("nft rejected the planned ruleset (check)")?;
        exec::run(&self.program, &["-f", "-"], &script)
            .context("applying the ruleset with nft -f")?;
        Ok(())
    }

    fn verify(&self, firewall: &Firewall, now: i64) -> anyhow::Result<()> {
        let Some(json) = self.list()? else {
            bail!("table inet {TABLE} is missing");
        };
        let (listed, _) = listed_shape(&json)?;
        let (expected, may_expire) = expected_shape(firewall, now);
        if listed.chains != expected.chains {
            bail!(
                "chains differ: kernel has {:?}, expected {:?}",
                listed.chains,
                expected.chains
            );
        }
        if listed.sets.keys().ne(expected.sets.keys()) {
            bail!(
                "sets differ: kernel has {:?}, expected {:?}",
                listed.sets.keys(),
                expected.sets.keys()
            );
        }
        for (name, want) in &expected.sets {
            let have = listed.sets[name];
            let slack = may_expire.get(name).copied().unwrap_or(0);
            if have > *want || have + slack < *want {
                bail!("set {name} has {have} elements, expected {want}");
            }
        }
        Ok(())
    }

    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        match self.list()? {
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
        // Only the sets' flags lines mention timeouts now.
        assert_eq!(
            script.matches("timeout").count(),
            sample().sets.len(),
            "{script}"
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
    fn listing_is_parsed_into_shape_and_counters() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("testdata/nft-list.json")).unwrap();
        let (shape, counters) = listed_shape(&json).unwrap();
        assert_eq!(shape.sets["flow_drop_v4"], 2);
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
