//! The planner: `Firewall` + now + the generation to build in -> an `ipset
//! restore` script for that generation's sets and two `iptables-restore
//! --noflush` scripts for its chains and the entry chains
//! (`IptablesPlan`, with the switch that makes it live: `generation.rs`).
//! Pure and snapshot-tested (`tests.rs`); `Layout` is the structured plan
//! the scripts are rendered from and `verify` compares the kernel with.
//!
//! Anti-spoofing: a packet whose source is one of the router's LAN
//! prefixes may arrive only on a LAN interface (or `lo`). iptables has no
//! routing lookup in the `filter` table, so the prefixes are those the
//! kernel routes out of a LAN interface when the backend plans
//! (`planning::lan_prefixes`), compared again at every verification: a
//! prefix that comes or goes is drift, and the next pass applies again.
//! One `-i` per rule cannot say "none of these interfaces", so the checks
//! live in a chain of their own in each generation (`ISDFA-ANTISPOOF`),
//! jumped to first from that generation's `FORWARD` and `INPUT` chains: it
//! returns for the LAN interfaces and `lo`, then drops the LAN prefixes.
//! Being the generation's, it is built, switched to and cleared with the
//! rest of the ruleset.
//!
//! `in_interface` is one rule per interface (`-i`). What iptables cannot
//! enforce is refused before planning (`refuse_unsupported`): payload
//! signatures, endpoint sets, tunnels and the pay-per-site primitives
//! (prerouting, redirect, `until`, DNS policy, portal), so the agent rolls
//! back rather than enforce part of a config.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use anyhow::bail;
use isdf_api::{Action, Chain, ElementValue, Family, Firewall, Prefix, Protocol, Rule, Set};

use super::generation::{
    dispatch_rules, entry_chain, switch, switch_sets_script, Generation, Switch,
};
use super::sets::{
    fits_net_port_net, ipset_entries, PlannedSet, SetKind, EXPIRY_SLACK, MAX_TIMEOUT,
};
use super::spec::Spec;
use crate::backend::planning::{remaining_secs, Interfaces, ANTISPOOF_JUMP_ID, ANTISPOOF_RULE_ID};

/// The chains whose generation's chain jumps to the anti-spoofing chain
/// first.
pub(super) const GUARDED: [Chain; 2] = [Chain::Forward, Chain::Input];

/// The rules (after `-A ISDFA-ANTISPOOF`) of one family for a router whose
/// LAN interfaces are `lan` and LAN prefixes `prefixes`; empty when no LAN
/// prefix of that family is known (then nothing jumps to the chain).
pub(super) fn antispoof_chain(family: Family, lan: &[String], prefixes: &[Prefix]) -> Vec<String> {
    let drops: Vec<String> = prefixes
        .iter()
        .filter(|p| p.family() == family)
        .map(|p| {
            format!(
                "-s {} -m comment --comment {ANTISPOOF_RULE_ID} -j DROP",
                p.net()
            )
        })
        .collect();
    if drops.is_empty() || lan.is_empty() {
        return Vec::new();
    }
    let mut rules: Vec<String> = lan
        .iter()
        .map(|name| format!("-i {} -j RETURN", iptables_interface(name)))
        .collect();
    rules.push("-i lo -j RETURN".to_owned());
    rules.extend(drops);
    rules
}

/// The jump to `generation`'s anti-spoofing chain (after `-A
/// ISDFA-FORWARD` or `-A ISDFA-INPUT`, for generation `a`).
pub(super) fn antispoof_jump(generation: Generation) -> String {
    format!(
        "-m comment --comment {ANTISPOOF_JUMP_ID} -j {}",
        generation.antispoof_chain()
    )
}

pub(super) fn builtin_chain(chain: Chain) -> &'static str {
    match chain {
        Chain::Forward => "FORWARD",
        Chain::Input => "INPUT",
        Chain::Output => "OUTPUT",
        Chain::Prerouting => "PREROUTING",
    }
}

pub(super) const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// What the kernel's ipset supports beyond the basic `hash:net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `hash:net,port,net` (Linux 3.13 and later, when the module is built).
    pub net_port_net: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities { net_port_net: true };
}

/// The scripts of a first apply (into generation `a`, nothing live yet),
/// in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesPlan {
    /// For `ipset -exist restore`: the switch sets, and the generation's
    /// sets, filled.
    pub ipset: String,
    /// For `iptables-restore --noflush`: the entry chains and the
    /// generation's IPv4 chains.
    pub v4: String,
    /// For `ip6tables-restore --noflush`: the same for IPv6.
    pub v6: String,
    /// For `ipset restore`: turns the generation on, both families at once.
    pub switch: String,
}

impl IptablesPlan {
    /// All three scripts with headers, for snapshot tests and debugging.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for IptablesPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "### ipset restore")?;
        f.write_str(&self.ipset)?;
        writeln!(f, "### iptables-restore --noflush")?;
        f.write_str(&self.v4)?;
        writeln!(f, "### ip6tables-restore --noflush")?;
        f.write_str(&self.v6)?;
        writeln!(f, "### ipset restore (the switch)")?;
        f.write_str(&self.switch)
    }
}

/// Plans the scripts that make the kernel enforce `firewall` as of `now`,
/// assuming the kernel supports every set type and the router has no
/// interfaces configured.
pub fn plan(firewall: &Firewall, now: i64) -> anyhow::Result<IptablesPlan> {
    plan_with(
        firewall,
        now,
        Capabilities::ALL,
        &Interfaces::default(),
        &[],
    )
}

/// Plans the scripts for a kernel with `capabilities` on a router with
/// `interfaces`, whose LAN interfaces the kernel routes `lan_prefixes` to.
/// Fails when a rule needs an interface role with none.
pub fn plan_with(
    firewall: &Firewall,
    now: i64,
    capabilities: Capabilities,
    interfaces: &Interfaces,
    lan_prefixes: &[Prefix],
) -> anyhow::Result<IptablesPlan> {
    let generation = Generation::A;
    let layout = Layout::new(firewall, now, capabilities, interfaces, generation)?
        .with_antispoof(&interfaces.lan, lan_prefixes);
    let missing: Vec<&str> = Chain::FILTER
        .iter()
        .map(|&c| generation.other().chain(c))
        .collect();
    let Switch::TurnOn(switch) = switch(generation, None) else {
        unreachable!("nothing is live before a first apply");
    };
    Ok(IptablesPlan {
        ipset: format!(
            "{}{}",
            switch_sets_script(generation),
            layout.ipset_script()
        ),
        v4: layout.rules_script(Family::Ipv4, &missing, &[]),
        v6: layout.rules_script(Family::Ipv6, &missing, &[]),
        switch,
    })
}

/// How a set is put into the kernel.
enum Representation<'a> {
    Ipset(String),
    Inline(&'a Set),
}

/// One iptables rule as planned.
#[derive(Debug)]
pub(super) struct PlannedRule {
    chain: Chain,
    /// Everything after `-A <chain>`.
    pub(super) line: String,
    pub(super) id: String,
}

/// The structured plan: what the scripts are rendered from and what `verify`
/// compares the kernel against.
#[derive(Debug)]
pub(super) struct Layout {
    /// The generation whose chains and sets these are.
    pub(super) generation: Generation,
    pub(super) sets: Vec<PlannedSet>,
    /// Per family, in config order (after the jumps to the anti-spoofing
    /// chain).
    pub(super) rules: BTreeMap<Family, Vec<PlannedRule>>,
    /// Per family, the anti-spoofing chain's rules (after `-A <chain>`).
    pub(super) antispoof: BTreeMap<Family, Vec<String>>,
    pub(super) next_reapply: Option<i64>,
}

/// An interface name as iptables reads it: nft's trailing wildcard `*` is
/// iptables' `+`.
pub(super) fn iptables_interface(name: &str) -> String {
    match name.strip_suffix('*') {
        Some(prefix) => format!("{prefix}+"),
        None => name.to_owned(),
    }
}

impl Layout {
    pub(super) fn new(
        firewall: &Firewall,
        now: i64,
        capabilities: Capabilities,
        interfaces: &Interfaces,
        generation: Generation,
    ) -> anyhow::Result<Layout> {
        let mut layout = Layout {
            generation,
            sets: Vec::new(),
            rules: BTreeMap::new(),
            antispoof: BTreeMap::new(),
            next_reapply: None,
        };
        let mut representations = HashMap::new();
        for set in &firewall.sets {
            let live: Vec<_> = set
                .elements
                .iter()
                .filter(|e| remaining_secs(e.expires_at, now) != Some(0))
                .collect();
            let kind = if !set.key.is_flow() {
                Some(SetKind::Net)
            } else if capabilities.net_port_net
                && live
                    .iter()
                    .all(|e| matches!(&e.value, ElementValue::Flow(f) if fits_net_port_net(f)))
            {
                Some(SetKind::NetPortNet)
            } else {
                None
            };
            let Some(kind) = kind else {
                representations.insert(set.name.as_str(), Representation::Inline(set));
                continue;
            };
            let planned = layout.plan_set(set, kind, now);
            representations.insert(
                set.name.as_str(),
                Representation::Ipset(planned.name.clone()),
            );
            layout.sets.push(planned);
        }
        for rule in &firewall.rules {
            let families = match rule.matches.family_with(&firewall.sets).ok().flatten() {
                Some(f) => vec![f],
                None => FAMILIES.to_vec(),
            };
            let in_interfaces = interfaces.for_rule(rule)?;
            for family in families {
                let planned = layout.plan_rule(rule, family, &representations, in_interfaces, now);
                layout.rules.entry(family).or_default().extend(planned);
            }
        }
        Ok(layout)
    }

    /// Adds the anti-spoofing chain for a router whose LAN interfaces are
    /// `lan` and LAN prefixes `prefixes`, and the jumps to it ahead of
    /// every other rule of the generation's `FORWARD` and `INPUT` chains.
    pub(super) fn with_antispoof(mut self, lan: &[String], prefixes: &[Prefix]) -> Layout {
        for family in FAMILIES {
            let chain_rules = antispoof_chain(family, lan, prefixes);
            if chain_rules.is_empty() {
                continue;
            }
            let rules = self.rules.entry(family).or_default();
            for (index, chain) in GUARDED.into_iter().enumerate() {
                let jump = PlannedRule {
                    chain,
                    line: antispoof_jump(self.generation),
                    id: ANTISPOOF_JUMP_ID.to_owned(),
                };
                rules.insert(index, jump);
            }
            self.antispoof.insert(family, chain_rules);
        }
        self
    }

    fn reapply_at(&mut self, at: i64) {
        self.next_reapply = Some(self.next_reapply.map_or(at, |t| t.min(at)));
    }

    fn plan_set(&mut self, set: &Set, kind: SetKind, now: i64) -> PlannedSet {
        let mut planned = PlannedSet {
            name: format!("{}{}", self.generation.set_prefix(), set.name),
            kind,
            family: set.key.family(),
            entries: BTreeMap::new(),
            expiring_soon: 0,
            just_expired: 0,
        };
        for element in &set.elements {
            let Some(entries) = ipset_entries(kind, &element.value) else {
                continue;
            };
            let timeout = match (element.expires_at, remaining_secs(element.expires_at, now)) {
                (Some(at), Some(0)) => {
                    if now.saturating_sub(at) <= EXPIRY_SLACK as i64 {
                        planned.just_expired += entries.len();
                    }
                    continue;
                }
                (Some(at), Some(secs)) if secs > MAX_TIMEOUT => {
                    // Too far away for a kernel timeout: permanent for now,
                    // and re-applied once the timeout fits.
                    self.reapply_at(at - MAX_TIMEOUT as i64);
                    None
                }
                (_, secs) => secs,
            };
            for entry in entries {
                // A duplicate lives as long as its longest-lived copy.
                planned
                    .entries
                    .entry(entry)
                    .and_modify(|t| *t = t.zip(timeout).map(|(a, b)| a.max(b)))
                    .or_insert(timeout);
            }
        }
        planned.expiring_soon = planned
            .entries
            .values()
            .filter(|t| t.is_some_and(|t| t <= EXPIRY_SLACK))
            .count();
        planned
    }

    fn plan_rule(
        &mut self,
        rule: &Rule,
        family: Family,
        representations: &HashMap<&str, Representation>,
        in_interfaces: Option<&[String]>,
        now: i64,
    ) -> Vec<PlannedRule> {
        let m = &rule.matches;
        let mut base = Spec {
            in_interface: None,
            protocol: m.protocol,
            src: m.src,
            dst: m.dst,
            sport: m.sport,
            dport: m.dport,
            sets: Vec::new(),
        };
        let prefix = self.generation.set_prefix();
        if let Some(name) = &m.src_in_set {
            base.sets.push((format!("{prefix}{name}"), "src"));
        }
        if let Some(name) = &m.dst_in_set {
            base.sets.push((format!("{prefix}{name}"), "dst"));
        }
        let mut specs = Vec::new();
        match &m.flow_in_set {
            None => specs.push(base),
            Some(name) => match representations.get(name.as_str()) {
                Some(Representation::Inline(set)) => {
                    for element in &set.elements {
                        let ElementValue::Flow(flow) = &element.value else {
                            continue;
                        };
                        if remaining_secs(element.expires_at, now) == Some(0) {
                            continue;
                        }
                        let Some(spec) = base.and_flow(flow) else {
                            continue;
                        };
                        if let Some(at) = element.expires_at {
                            self.reapply_at(at);
                        }
                        if !specs.contains(&spec) {
                            specs.push(spec);
                        }
                    }
                }
                Some(Representation::Ipset(set)) => {
                    base.sets.insert(0, (set.clone(), "src,dst,dst"));
                    specs.push(base);
                }
                // An unknown set (never in a validated config) stays an ipset
                // reference, so iptables-restore refuses the rule instead of
                // it silently disappearing.
                None => {
                    base.sets
                        .insert(0, (format!("{prefix}{name}"), "src,dst,dst"));
                    specs.push(base);
                }
            },
        }
        if let Some(names) = in_interfaces {
            // One rule per interface, each with every spec.
            specs = names
                .iter()
                .flat_map(|name| {
                    specs.iter().map(|spec| Spec {
                        in_interface: Some(iptables_interface(name)),
                        ..spec.clone()
                    })
                })
                .collect();
        }
        let id = rule.id.to_string();
        let mut planned = Vec::new();
        let mut push = |spec: &Spec, target: String| {
            let spec = spec.render();
            let sep = if spec.is_empty() { "" } else { " " };
            planned.push(PlannedRule {
                chain: rule.chain,
                line: format!("{spec}{sep}-m comment --comment {id}{target}"),
                id: id.clone(),
            });
        };
        for spec in &specs {
            match rule.action {
                Action::Accept => push(spec, " -j ACCEPT".into()),
                Action::Drop => push(spec, " -j DROP".into()),
                // A rule without a target only counts, then the packet goes on.
                Action::Count => push(spec, String::new()),
                // Refused before planning (`refuse_unsupported`).
                Action::Classify | Action::Redirect { .. } | Action::Portal => {}
                Action::Reject => {
                    // As in nft.rs: TCP gets a reset (the client fails at
                    // once), the rest an ICMP administratively-prohibited.
                    // iptables allows one `-p` per rule, so a rule already
                    // restricted to a protocol gets only the fitting one.
                    let icmp = match family {
                        Family::Ipv4 => " -j REJECT --reject-with icmp-admin-prohibited",
                        Family::Ipv6 => " -j REJECT --reject-with icmp6-adm-prohibited",
                    };
                    match spec.protocol {
                        None => {
                            let tcp = Spec {
                                protocol: Some(Protocol::Tcp),
                                ..spec.clone()
                            };
                            push(&tcp, " -j REJECT --reject-with tcp-reset".into());
                            push(spec, icmp.into());
                        }
                        Some(Protocol::Tcp) => {
                            push(spec, " -j REJECT --reject-with tcp-reset".into())
                        }
                        Some(_) => push(spec, icmp.into()),
                    }
                }
            }
        }
        planned
    }

    /// `ipset restore` lines that create and fill the generation's sets
    /// (an apply destroys leftovers first, so a set that changed type can
    /// be made again). Nothing uses them until the generation goes live.
    pub(super) fn ipset_script(&self) -> String {
        let mut s = String::new();
        for set in &self.sets {
            let _ = writeln!(s, "{}", set.create());
            for (entry, timeout) in &set.entries {
                match timeout {
                    Some(secs) => {
                        let _ = writeln!(s, "add {} {entry} timeout {secs}", set.name);
                    }
                    None => {
                        let _ = writeln!(s, "add {} {entry}", set.name);
                    }
                }
            }
        }
        s
    }

    /// The restore script for one family: the entry chains with their two
    /// fixed rules (rewritten alike, so nothing changes for packets), the
    /// generation's chains with the planned rules (its anti-spoofing chain
    /// among them), the `missing` chains the entry chains name but that do
    /// not exist yet (declared empty), and the `extra` lines (jump repairs,
    /// an earlier agent's chain removed), all in one transaction.
    pub(super) fn rules_script(
        &self,
        family: Family,
        missing: &[&str],
        extra: &[String],
    ) -> String {
        let mut s = String::from("*filter\n");
        // In a --noflush restore, declaring a chain creates it or empties it.
        for chain in Chain::FILTER {
            let _ = writeln!(s, ":{} - [0:0]", entry_chain(chain));
        }
        for chain in self.generation.filter_chains() {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for chain in missing {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for chain in Chain::FILTER {
            for rule in dispatch_rules(chain) {
                let _ = writeln!(s, "-A {} {rule}", entry_chain(chain));
            }
        }
        for chain in Chain::FILTER {
            for rule in self.rules_in(family, chain) {
                let _ = writeln!(s, "-A {} {}", self.generation.chain(chain), rule.line);
            }
        }
        for rule in self.antispoof_rules(family) {
            let _ = writeln!(s, "-A {} {rule}", self.generation.antispoof_chain());
        }
        for line in extra {
            let _ = writeln!(s, "{line}");
        }
        s.push_str("COMMIT\n");
        s
    }

    /// The anti-spoofing chain's rules of `family` (after `-A <chain>`).
    pub(super) fn antispoof_rules(&self, family: Family) -> &[String] {
        self.antispoof.get(&family).map_or(&[], Vec::as_slice)
    }

    pub(super) fn rules_in(
        &self,
        family: Family,
        chain: Chain,
    ) -> impl Iterator<Item = &PlannedRule> {
        self.rules
            .get(&family)
            .into_iter()
            .flatten()
            .filter(move |r| r.chain == chain)
    }
}

/// Payload signatures, endpoint sets filled by rules and the pay-per-site
/// primitives are nftables features here: a config using them is refused
/// (and rolled back) rather than enforced in part.
pub(super) fn refuse_unsupported(firewall: &Firewall) -> anyhow::Result<()> {
    let endpoint_sets = firewall.sets.iter().any(|s| s.key.is_endpoint());
    let signatures = firewall.rules.iter().any(|r| {
        !r.matches.payload.is_empty()
            || r.matches.payload_len.is_some()
            || r.matches.first_packets.is_some()
            || r.action == isdf_api::Action::Classify
            || r.matches.endpoint_in_set.is_some()
            || r.add_endpoints_to.is_some()
    });
    if endpoint_sets || signatures {
        bail!(
            "the iptables backend cannot enforce payload signatures or endpoint sets \
             (the bittorrent-block service); run the agent with the nftables backend"
        );
    }
    if firewall
        .wireguard
        .as_ref()
        .is_some_and(|w| !w.tunnels.is_empty())
    {
        bail!(
            "the iptables backend cannot keep WireGuard tunnels to their VPN's traffic; \
             run the agent with the nftables backend"
        );
    }
    let mut pay_per_site = Vec::new();
    if let Some(rule) = firewall.rules.iter().find(|r| r.chain == Chain::Prerouting) {
        pay_per_site.push(format!("prerouting rules (`{}`)", rule.id));
    }
    if let Some(rule) = firewall
        .rules
        .iter()
        .find(|r| matches!(r.action, Action::Redirect { .. }))
    {
        pay_per_site.push(format!("redirects (`{}`)", rule.id));
    }
    if let Some(rule) = firewall.rules.iter().find(|r| r.matches.until.is_some()) {
        pay_per_site.push(format!("rules with `until` (`{}`)", rule.id));
    }
    if firewall.dns.is_some() {
        pay_per_site.push("a DNS policy".to_owned());
    }
    if firewall.portal.is_some() {
        pay_per_site.push("a portal".to_owned());
    }
    if firewall.flow_names.is_some() {
        pay_per_site.push("flow names".to_owned());
    }
    if !pay_per_site.is_empty() {
        bail!(
            "the iptables backend cannot enforce {} (the pay-per-site service); \
             run the agent with the nftables backend",
            pay_per_site.join(", ")
        );
    }
    Ok(())
}
