//! iptables + ipset backend, for routers whose kernel or firmware has no
//! nftables: the agent's own chains `ISDF-FORWARD`, `ISDF-INPUT` and
//! `ISDF-OUTPUT` in the `filter` table of both families, each replaced as a
//! whole by one `iptables-restore --noflush` transaction per family, and one
//! ipset per set, replaced by filling a temporary set and swapping it in.
//!
//! It has the same semantics as the nftables backend (`nft.rs`), with these
//! differences forced by the tools:
//! - ipset cannot hold every flow pattern, and some kernels have no
//!   `hash:net,port,net` at all. A flow set that does not fit is inlined: each
//!   rule naming it becomes one iptables rule per element. Inlined elements
//!   cannot expire in the kernel, so `next_reapply` asks the agent to re-apply
//!   when one does.
//!   A count rule naming an inlined set counts a packet once per element it
//!   matches (nft counts it once); identical elements are merged.
//! - The change is atomic per table, not across sets and both families: sets
//!   are swapped first (old rules briefly see new set contents), then the IPv4
//!   rules, then the IPv6 rules.
//! - Our chains run first because the jumps to them are kept at the top of
//!   `FORWARD`, `INPUT` and `OUTPUT` (nft uses a hook priority instead).
//! - `in_interface` becomes one rule per interface (`-i`).
//! - The pay-per-site primitives are refused (`refuse_unsupported`):
//!   prerouting redirects, `until` (iptables has no clock match this agent
//!   can rely on: `-m time` is optional and counts in local time), and a DNS
//!   policy or portal (their sets must survive each replacement).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, PortRange, Prefix, Protocol, Rule,
    RuleCounter, Set,
};

use super::{nearest_second, remaining_secs, FirewallBackend, Interfaces};
use crate::sys::processes;

/// Live sets are `isdf-<name>`; set names are at most 24 bytes, so this stays
/// within ipset's 31.
const SET_PREFIX: &str = "isdf-";
/// A set being filled before it is swapped in. Never referenced by a rule, so
/// a leftover one (from an interrupted apply) can always be destroyed.
const TEMP_PREFIX: &str = "isdf+";
/// Set names start with a letter, so this can never be a set's temporary name.
const PROBE_SET: &str = "isdf+_probe";
/// The largest element timeout ipset accepts (about 24.8 days).
const MAX_TIMEOUT: u64 = 2_147_483;
/// ipset's default of 65536 is too small for large block lists; this is only a
/// cap, memory grows with the elements actually present.
const MAX_ELEMENTS: u32 = 262_144;
/// Elements this close to their expiry may or may not be in the kernel when
/// `verify` looks.
const EXPIRY_SLACK: u64 = 5;

/// Our chain for each hook, jumped to from the top of the builtin chain.
fn our_chain(chain: Chain) -> &'static str {
    match chain {
        Chain::Forward => "ISDF-FORWARD",
        Chain::Input => "ISDF-INPUT",
        Chain::Output => "ISDF-OUTPUT",
        Chain::Prerouting => "ISDF-PREROUTING",
    }
}

fn builtin_chain(chain: Chain) -> &'static str {
    match chain {
        Chain::Forward => "FORWARD",
        Chain::Input => "INPUT",
        Chain::Output => "OUTPUT",
        Chain::Prerouting => "PREROUTING",
    }
}

fn is_our_chain(name: &str) -> bool {
    Chain::ALL.iter().any(|&c| our_chain(c) == name)
}

const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// What the kernel's ipset supports beyond the basic `hash:net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `hash:net,port,net` (Linux 3.13 and later, when the module is built).
    pub net_port_net: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities { net_port_net: true };
}

/// The three scripts that replace what this agent enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesPlan {
    /// For `ipset restore`: fills and swaps in every set.
    pub ipset: String,
    /// For `iptables-restore --noflush`: replaces our IPv4 chains.
    pub v4: String,
    /// For `ip6tables-restore --noflush`: replaces our IPv6 chains.
    pub v6: String,
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
        f.write_str(&self.v6)
    }
}

/// Plans the scripts that make the kernel enforce `firewall` as of `now`,
/// assuming the kernel supports every set type and the router has no
/// interfaces configured.
pub fn plan(firewall: &Firewall, now: i64) -> anyhow::Result<IptablesPlan> {
    plan_with(firewall, now, Capabilities::ALL, &Interfaces::default())
}

/// Plans the scripts for a kernel with `capabilities` on a router with
/// `interfaces`. Fails when a rule needs an interface role with none.
pub fn plan_with(
    firewall: &Firewall,
    now: i64,
    capabilities: Capabilities,
    interfaces: &Interfaces,
) -> anyhow::Result<IptablesPlan> {
    let layout = Layout::new(firewall, now, capabilities, interfaces)?;
    Ok(IptablesPlan {
        ipset: layout.ipset_script(),
        v4: layout.rules_script(Family::Ipv4, &[]),
        v6: layout.rules_script(Family::Ipv6, &[]),
    })
}

/// How an ipset stores a set's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    /// Address sets.
    Net,
    /// Flow sets whose every element is `tcp|udp, src, any sport, dst, one dport`.
    NetPortNet,
}

impl SetKind {
    fn type_name(self) -> &'static str {
        match self {
            SetKind::Net => "hash:net",
            SetKind::NetPortNet => "hash:net,port,net",
        }
    }
}

fn ipset_family(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "inet",
        Family::Ipv6 => "inet6",
    }
}

/// One ipset as planned.
#[derive(Debug)]
struct PlannedSet {
    /// `isdf-<name>`.
    name: String,
    kind: SetKind,
    family: Family,
    /// Entry -> timeout in seconds (None: permanent). Deduplicated, because
    /// ipset refuses to add an entry twice.
    entries: BTreeMap<String, Option<u64>>,
    /// Entries whose timeout ends within `EXPIRY_SLACK`.
    expiring_soon: usize,
    /// Entries of elements that expired within `EXPIRY_SLACK` (the kernel may
    /// not have collected them yet).
    just_expired: usize,
}

impl PlannedSet {
    /// `timeout 0` makes elements permanent unless they carry their own timeout.
    fn create(&self, name: &str) -> String {
        format!(
            "create {name} {} family {} maxelem {MAX_ELEMENTS} timeout 0 -exist",
            self.kind.type_name(),
            ipset_family(self.family)
        )
    }

    /// Whether an existing set of this name can be swapped with ours.
    fn fits(&self, live: &LiveSet) -> bool {
        live.kind == self.kind.type_name()
            && live.header.get("family").map(String::as_str) == Some(ipset_family(self.family))
            && live.header.get("maxelem") == Some(&MAX_ELEMENTS.to_string())
            && live.header.contains_key("timeout")
    }
}

/// How a set is put into the kernel.
enum Representation<'a> {
    Ipset(String),
    Inline(&'a Set),
}

/// The match part of one iptables rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Spec {
    /// `-i`: the interface the packet came in on (`+` ends a prefix).
    in_interface: Option<String>,
    protocol: Option<Protocol>,
    src: Option<Prefix>,
    dst: Option<Prefix>,
    sport: Option<PortRange>,
    dport: Option<PortRange>,
    /// (ipset name, direction flags) for `-m set --match-set`.
    sets: Vec<(String, &'static str)>,
}

impl Spec {
    /// The spec that matches packets matching both `self` and flow pattern
    /// `flow`, or None when no packet can.
    fn and_flow(&self, flow: &FlowPattern) -> Option<Spec> {
        let any_to_none = |p: Prefix| (!p.is_any()).then_some(p);
        let ports = |r: PortRange| (!r.is_any()).then_some(r);
        Some(Spec {
            in_interface: self.in_interface.clone(),
            protocol: both(self.protocol, flow.protocol, |a, b| (a == b).then_some(a))?,
            src: both(self.src, any_to_none(flow.src), narrower)?,
            dst: both(self.dst, any_to_none(flow.dst), narrower)?,
            sport: both(self.sport, ports(flow.sport), overlap)?,
            dport: both(self.dport, ports(flow.dport), overlap)?,
            sets: self.sets.clone(),
        })
    }

    fn render(&self) -> String {
        let mut parts = Vec::new();
        if let Some(name) = &self.in_interface {
            parts.push(format!("-i {name}"));
        }
        if let Some(p) = self.src {
            parts.push(format!("-s {}", p.net()));
        }
        if let Some(p) = self.dst {
            parts.push(format!("-d {}", p.net()));
        }
        if let Some(p) = self.protocol {
            let name = protocol_name(p);
            parts.push(format!("-p {name}"));
            if self.sport.is_some() || self.dport.is_some() {
                parts.push(format!("-m {name}"));
            }
        }
        if let Some(r) = self.sport {
            parts.push(format!("--sport {}", port_arg(r)));
        }
        if let Some(r) = self.dport {
            parts.push(format!("--dport {}", port_arg(r)));
        }
        for (set, flags) in &self.sets {
            parts.push(format!("-m set --match-set {set} {flags}"));
        }
        parts.join(" ")
    }
}

/// Combines two optional constraints: absent means "any".
fn both<T: Copy>(
    a: Option<T>,
    b: Option<T>,
    meet: impl Fn(T, T) -> Option<T>,
) -> Option<Option<T>> {
    match (a, b) {
        (Some(a), Some(b)) => meet(a, b).map(Some),
        (a, b) => Some(a.or(b)),
    }
}

/// The prefix of two that lies inside the other, or None when they are disjoint.
fn narrower(a: Prefix, b: Prefix) -> Option<Prefix> {
    if a.net().contains(&b.net()) {
        Some(b)
    } else if b.net().contains(&a.net()) {
        Some(a)
    } else {
        None
    }
}

fn overlap(a: PortRange, b: PortRange) -> Option<PortRange> {
    PortRange::new(a.first().max(b.first()), a.last().min(b.last())).ok()
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Icmpv6 => "ipv6-icmp",
    }
}

fn port_arg(r: PortRange) -> String {
    if r.first() == r.last() {
        r.first().to_string()
    } else {
        format!("{}:{}", r.first(), r.last())
    }
}

/// ipset's `hash:net` refuses `/0`, so "any" becomes its two halves (also in
/// `hash:net,port,net`, which is documented to take `/0`, to keep one path).
fn ipset_nets(p: &Prefix) -> Vec<String> {
    if !p.is_any() {
        return vec![p.net().to_string()];
    }
    match p.family() {
        Family::Ipv4 => vec!["0.0.0.0/1".into(), "128.0.0.0/1".into()],
        Family::Ipv6 => vec!["::/1".into(), "8000::/1".into()],
    }
}

/// Whether a flow pattern fits a `hash:net,port,net` entry.
fn fits_net_port_net(f: &FlowPattern) -> bool {
    matches!(f.protocol, Some(Protocol::Tcp | Protocol::Udp))
        && f.sport.is_any()
        && f.dport.first() == f.dport.last()
}

/// The ipset entries one element becomes (None: it does not fit `kind`).
fn ipset_entries(kind: SetKind, value: &ElementValue) -> Option<Vec<String>> {
    match (kind, value) {
        (SetKind::Net, ElementValue::Addr(p)) => Some(ipset_nets(p)),
        (SetKind::NetPortNet, ElementValue::Flow(f)) if fits_net_port_net(f) => {
            let proto = f.protocol?.name();
            let port = f.dport.first();
            let mut entries = Vec::new();
            for src in ipset_nets(&f.src) {
                for dst in ipset_nets(&f.dst) {
                    entries.push(format!("{src},{proto}:{port},{dst}"));
                }
            }
            Some(entries)
        }
        _ => None,
    }
}

/// One iptables rule as planned.
#[derive(Debug)]
struct PlannedRule {
    chain: Chain,
    /// Everything after `-A <chain>`.
    line: String,
    id: String,
}

/// The structured plan: what the scripts are rendered from and what `verify`
/// compares the kernel against.
#[derive(Debug, Default)]
struct Layout {
    sets: Vec<PlannedSet>,
    /// Per family, in config order.
    rules: BTreeMap<Family, Vec<PlannedRule>>,
    next_reapply: Option<i64>,
}

/// An interface name as iptables reads it: nft's trailing wildcard `*` is
/// iptables' `+`.
fn iptables_interface(name: &str) -> String {
    match name.strip_suffix('*') {
        Some(prefix) => format!("{prefix}+"),
        None => name.to_owned(),
    }
}

impl Layout {
    fn new(
        firewall: &Firewall,
        now: i64,
        capabilities: Capabilities,
        interfaces: &Interfaces,
    ) -> anyhow::Result<Layout> {
        let mut layout = Layout::default();
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

    fn reapply_at(&mut self, at: i64) {
        self.next_reapply = Some(self.next_reapply.map_or(at, |t| t.min(at)));
    }

    fn plan_set(&mut self, set: &Set, kind: SetKind, now: i64) -> PlannedSet {
        let mut planned = PlannedSet {
            name: format!("{SET_PREFIX}{}", set.name),
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
        if let Some(name) = &m.src_in_set {
            base.sets.push((format!("{SET_PREFIX}{name}"), "src"));
        }
        if let Some(name) = &m.dst_in_set {
            base.sets.push((format!("{SET_PREFIX}{name}"), "dst"));
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
                        .insert(0, (format!("{SET_PREFIX}{name}"), "src,dst,dst"));
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
                Action::Classify | Action::Redirect { .. } => {}
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

    fn ipset_script(&self) -> String {
        let mut s = String::new();
        for set in &self.sets {
            let temp = format!("{TEMP_PREFIX}{}", &set.name[SET_PREFIX.len()..]);
            let _ = writeln!(s, "{}", set.create(&temp));
            let _ = writeln!(s, "flush {temp}");
            for (entry, timeout) in &set.entries {
                match timeout {
                    Some(secs) => {
                        let _ = writeln!(s, "add {temp} {entry} timeout {secs}");
                    }
                    None => {
                        let _ = writeln!(s, "add {temp} {entry}");
                    }
                }
            }
            let _ = writeln!(s, "{}", set.create(&set.name));
            let _ = writeln!(s, "swap {temp} {}", set.name);
            let _ = writeln!(s, "destroy {temp}");
        }
        s
    }

    /// The restore script for one family; `extra` lines (jump repairs) join
    /// the same transaction.
    fn rules_script(&self, family: Family, extra: &[String]) -> String {
        let mut s = String::from("*filter\n");
        // In a --noflush restore, declaring a chain creates it or empties it.
        for chain in Chain::FILTER {
            let _ = writeln!(s, ":{} - [0:0]", our_chain(chain));
        }
        for chain in Chain::FILTER {
            for rule in self.rules_in(family, chain) {
                let _ = writeln!(s, "-A {} {}", our_chain(chain), rule.line);
            }
        }
        for line in extra {
            let _ = writeln!(s, "{line}");
        }
        s.push_str("COMMIT\n");
        s
    }

    fn rules_in(&self, family: Family, chain: Chain) -> impl Iterator<Item = &PlannedRule> {
        self.rules
            .get(&family)
            .into_iter()
            .flatten()
            .filter(move |r| r.chain == chain)
    }
}

/// One rule line of `iptables-save`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SavedRule {
    chain: String,
    /// Everything after `-A <chain>`.
    spec: String,
    packets: u64,
    bytes: u64,
}

impl SavedRule {
    fn option(&self, name: &str) -> Option<&str> {
        let mut tokens = self.spec.split_whitespace();
        tokens.find(|t| *t == name)?;
        tokens.next().map(|t| t.trim_matches('"'))
    }

    fn comment(&self) -> Option<&str> {
        self.option("--comment")
    }

    fn target(&self) -> Option<&str> {
        self.option("-j")
    }
}

/// The `filter` table as `iptables-save` shows it.
#[derive(Debug, Default)]
struct SavedFilter {
    chains: BTreeSet<String>,
    rules: Vec<SavedRule>,
}

impl SavedFilter {
    fn parse(text: &str) -> anyhow::Result<SavedFilter> {
        let mut saved = SavedFilter::default();
        let mut in_filter = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(table) = line.strip_prefix('*') {
                in_filter = table == "filter";
                continue;
            }
            if !in_filter {
                continue;
            }
            if let Some(declaration) = line.strip_prefix(':') {
                let name = declaration.split_whitespace().next().unwrap_or_default();
                saved.chains.insert(name.to_owned());
                continue;
            }
            let (packets, bytes, rest) = match line.strip_prefix('[') {
                Some(counted) => {
                    let (counts, rest) = counted
                        .split_once(']')
                        .with_context(|| format!("unterminated counters in `{line}`"))?;
                    let (p, b) = counts
                        .split_once(':')
                        .with_context(|| format!("bad counters in `{line}`"))?;
                    let parse = |n: &str| {
                        n.parse::<u64>()
                            .with_context(|| format!("bad counter `{n}` in `{line}`"))
                    };
                    (parse(p)?, parse(b)?, rest.trim_start())
                }
                None => (0, 0, line),
            };
            if let Some(rule) = rest.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                saved.rules.push(SavedRule {
                    chain: chain.to_owned(),
                    spec: spec.trim().to_owned(),
                    packets,
                    bytes,
                });
            }
        }
        Ok(saved)
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Lines that leave exactly one jump to each of our chains, at the top
    /// of its builtin chain: rules above ours could accept what we block.
    fn jump_repairs(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for chain in Chain::FILTER {
            let (builtin, ours) = (builtin_chain(chain), our_chain(chain));
            let jump = format!("-j {ours}");
            let positions: Vec<usize> = self
                .rules_in(builtin)
                .enumerate()
                .filter(|(_, r)| r.spec == jump)
                .map(|(i, _)| i)
                .collect();
            if positions != [0] {
                lines.extend(positions.iter().map(|_| format!("-D {builtin} {jump}")));
                lines.push(format!("-I {builtin} 1 {jump}"));
            }
        }
        lines
    }

    /// A restore script that removes our chains and every jump to them, or
    /// None when there is nothing of ours.
    fn removal_script(&self) -> Option<String> {
        let mut lines = Vec::new();
        for rule in &self.rules {
            if !is_our_chain(&rule.chain) && rule.target().is_some_and(is_our_chain) {
                lines.push(format!("-D {} {}", rule.chain, rule.spec));
            }
        }
        for chain in Chain::FILTER.map(our_chain) {
            if self.chains.contains(chain) {
                lines.push(format!("-F {chain}"));
                lines.push(format!("-X {chain}"));
            }
        }
        (!lines.is_empty()).then(|| format!("*filter\n{}\nCOMMIT\n", lines.join("\n")))
    }
}

/// One set as `ipset list -t` shows it.
#[derive(Debug, Default, PartialEq, Eq)]
struct LiveSet {
    kind: String,
    /// `Header:` as key-value pairs (`family inet maxelem 65536 ...`).
    header: HashMap<String, String>,
    entries: usize,
}

/// Parses `ipset list -t`: blocks of `Key: value` lines, each starting at `Name:`.
fn parse_ipset_terse(text: &str) -> anyhow::Result<BTreeMap<String, LiveSet>> {
    let mut sets = BTreeMap::new();
    let mut current: Option<(String, LiveSet)> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "Name" => {
                sets.extend(current.take());
                current = Some((value.to_owned(), LiveSet::default()));
            }
            "Type" => {
                if let Some((_, set)) = &mut current {
                    set.kind = value.to_owned();
                }
            }
            "Header" => {
                if let Some((_, set)) = &mut current {
                    let words: Vec<&str> = value.split_whitespace().collect();
                    set.header = words
                        .chunks(2)
                        .map(|kv| {
                            (
                                kv[0].to_owned(),
                                kv.get(1).copied().unwrap_or("").to_owned(),
                            )
                        })
                        .collect();
                }
            }
            "Number of entries" => {
                if let Some((name, set)) = &mut current {
                    set.entries = value
                        .parse()
                        .with_context(|| format!("ipset set {name}: bad entry count `{value}`"))?;
                }
            }
            _ => {}
        }
    }
    sets.extend(current);
    Ok(sets)
}

/// Runs `iptables-restore`, `iptables-save` and `ipset` (names overridable
/// with `ISDF_IPTABLES`, `ISDF_IP6TABLES` and `ISDF_IPSET`, e.g.
/// `ISDF_IPTABLES=iptables-legacy`; `-restore` and `-save` are appended).
pub struct IptablesBackend {
    iptables: String,
    ip6tables: String,
    ipset: String,
    capabilities: OnceLock<Capabilities>,
    interfaces: Interfaces,
}

impl IptablesBackend {
    /// A backend for a router with no interfaces configured (rules matching
    /// `in_interface` are refused).
    pub fn new() -> Self {
        Self::with_interfaces(Interfaces::default())
    }

    /// A backend whose `in_interface` roles stand for `interfaces`.
    pub fn with_interfaces(interfaces: Interfaces) -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        IptablesBackend {
            iptables: var("ISDF_IPTABLES", "iptables"),
            ip6tables: var("ISDF_IP6TABLES", "ip6tables"),
            ipset: var("ISDF_IPSET", "ipset"),
            capabilities: OnceLock::new(),
            interfaces,
        }
    }

    fn layout(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<Layout> {
        Layout::new(
            firewall,
            nearest_second(now_ms),
            self.capabilities(),
            &self.interfaces,
        )
    }

    fn tool(&self, family: Family) -> &str {
        match family {
            Family::Ipv4 => &self.iptables,
            Family::Ipv6 => &self.ip6tables,
        }
    }

    /// Probes the kernel once: creating a set loads its module if there is one.
    fn capabilities(&self) -> Capabilities {
        *self.capabilities.get_or_init(|| {
            let created = processes::run(
                &self.ipset,
                &[
                    "-exist",
                    "create",
                    PROBE_SET,
                    "hash:net,port,net",
                    "family",
                    "inet",
                ],
                "",
            );
            let net_port_net = created.is_ok();
            if net_port_net {
                if let Err(e) = processes::run(&self.ipset, &["destroy", PROBE_SET], "") {
                    tracing::warn!("could not destroy ipset probe set: {e:#}");
                }
            } else {
                tracing::info!(
                    "no hash:net,port,net in this kernel's ipset; flow sets are inlined as rules"
                );
            }
            Capabilities { net_port_net }
        })
    }

    fn save(&self, family: Family, with_counters: bool) -> anyhow::Result<SavedFilter> {
        let program = format!("{}-save", self.tool(family));
        let args: &[&str] = if with_counters {
            &["-c", "-t", "filter"]
        } else {
            &["-t", "filter"]
        };
        let text = processes::run(&program, args, "")
            .with_context(|| format!("listing rules with {program}"))?;
        SavedFilter::parse(&text).with_context(|| format!("parsing {program} output"))
    }

    fn restore(&self, family: Family, script: &str) -> anyhow::Result<()> {
        let program = format!("{}-restore", self.tool(family));
        processes::run(&program, &["-w", "--noflush", "--test"], script)
            .with_context(|| format!("{program} rejected the planned rules (test)"))?;
        processes::run(&program, &["-w", "--noflush"], script)
            .with_context(|| format!("applying the rules with {program}"))?;
        Ok(())
    }

    fn live_sets(&self) -> anyhow::Result<BTreeMap<String, LiveSet>> {
        let text = processes::run(&self.ipset, &["list", "-t"], "").context("listing ipsets")?;
        let mut sets = parse_ipset_terse(&text).context("parsing `ipset list -t`")?;
        sets.retain(|name, _| name.starts_with(SET_PREFIX) || name.starts_with(TEMP_PREFIX));
        Ok(sets)
    }

    fn destroy_set(&self, name: &str) -> anyhow::Result<()> {
        processes::run(&self.ipset, &["destroy", name], "")
            .map(drop)
            .with_context(|| format!("destroying ipset {name}"))
    }
}

impl Default for IptablesBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Payload signatures, endpoint sets filled by rules and the pay-per-site
/// primitives are nftables features here: a config using them is refused
/// (and rolled back) rather than enforced in part.
fn refuse_unsupported(firewall: &Firewall) -> anyhow::Result<()> {
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
    if !pay_per_site.is_empty() {
        bail!(
            "the iptables backend cannot enforce {} (the pay-per-site service); \
             run the agent with the nftables backend",
            pay_per_site.join(", ")
        );
    }
    Ok(())
}

impl FirewallBackend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }

    #[tracing::instrument(skip(self, firewall))]
    fn apply(&mut self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        refuse_unsupported(firewall)?;
        let layout = self.layout(firewall, now_ms)?;
        let live = self.live_sets()?;
        for name in live.keys().filter(|n| n.starts_with(TEMP_PREFIX)) {
            self.destroy_set(name)?;
        }
        // A set whose name now has another type cannot be swapped; it must
        // go, and rules may still use it. Emptying our chains first makes
        // this one change non-atomic, which is rare (a set name changing key).
        let misfits: Vec<&str> = layout
            .sets
            .iter()
            .filter(|s| live.get(&s.name).is_some_and(|l| !s.fits(l)))
            .map(|s| s.name.as_str())
            .collect();
        if !misfits.is_empty() {
            tracing::warn!(
                ?misfits,
                "ipsets changed type; emptying our chains while they are recreated"
            );
            let empty = Layout::default();
            for family in FAMILIES {
                self.restore(family, &empty.rules_script(family, &[]))?;
            }
            for name in &misfits {
                self.destroy_set(name)?;
            }
        }
        processes::run(&self.ipset, &["restore"], &layout.ipset_script())
            .context("filling the ipsets with ipset restore")?;
        for family in FAMILIES {
            let repairs = self.save(family, false)?.jump_repairs();
            self.restore(family, &layout.rules_script(family, &repairs))?;
        }
        // Only now does no rule of ours use the sets that left the config.
        let planned: BTreeSet<&str> = layout.sets.iter().map(|s| s.name.as_str()).collect();
        for name in live
            .keys()
            .filter(|n| n.starts_with(SET_PREFIX) && !planned.contains(n.as_str()))
        {
            // The new config is enforced; a stale set someone else still
            // uses is only clutter, not a reason to roll back.
            if let Err(e) = self.destroy_set(name) {
                tracing::warn!("{e:#}");
            }
        }
        Ok(())
    }

    fn verify(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        let layout = self.layout(firewall, now_ms)?;
        for family in FAMILIES {
            let saved = self.save(family, false)?;
            let tool = self.tool(family);
            for chain in Chain::FILTER {
                let ours = our_chain(chain);
                if !saved.chains.contains(ours) {
                    bail!("{tool}: chain {ours} is missing");
                }
                let expected: Vec<&str> = layout
                    .rules_in(family, chain)
                    .map(|r| r.id.as_str())
                    .collect();
                let listed: Vec<&str> = saved
                    .rules_in(ours)
                    .map(|r| r.comment().unwrap_or(""))
                    .collect();
                if listed != expected {
                    bail!("{tool}: chain {ours} has rules {listed:?}, expected {expected:?}");
                }
            }
            if !saved.jump_repairs().is_empty() {
                bail!("{tool}: the jumps to our chains are missing, duplicated or not first");
            }
        }
        let live = self.live_sets()?;
        for set in &layout.sets {
            let Some(have) = live.get(&set.name) else {
                bail!("ipset {} is missing", set.name);
            };
            if !set.fits(have) {
                bail!(
                    "ipset {} has type {} {:?}, not the planned one",
                    set.name,
                    have.kind,
                    have.header
                );
            }
            let want = set.entries.len();
            if have.entries + set.expiring_soon < want || have.entries > want + set.just_expired {
                bail!(
                    "ipset {} has {} entries, expected {want}",
                    set.name,
                    have.entries
                );
            }
        }
        Ok(())
    }

    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for family in FAMILIES {
            let saved = self.save(family, true)?;
            for rule in saved.rules.iter().filter(|r| is_our_chain(&r.chain)) {
                if let Some(id) = rule.comment() {
                    let sum = sums.entry(id.to_owned()).or_default();
                    sum.0 += rule.packets;
                    sum.1 += rule.bytes;
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|(rule_id, (packets, bytes))| RuleCounter {
                rule_id,
                packets,
                bytes,
            })
            .collect())
    }

    fn next_reapply(&self, firewall: &Firewall, now_ms: i64) -> Option<i64> {
        // A firewall that does not plan was refused by `apply`.
        self.layout(firewall, now_ms).ok()?.next_reapply
    }

    #[tracing::instrument(skip_all)]
    fn remove(&mut self) -> anyhow::Result<()> {
        for family in FAMILIES {
            if let Some(script) = self.save(family, false)?.removal_script() {
                let program = format!("{}-restore", self.tool(family));
                processes::run(&program, &["-w", "--noflush"], &script)
                    .with_context(|| format!("removing our chains with {program}"))?;
            }
        }
        for name in self.live_sets()?.keys() {
            self.destroy_set(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::sample_firewall as sample;

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
            .contains("-m set --match-set isdf-flow_drop_v4 src,dst,dst"));
        // Without kernel support it stays inline.
        let no_support = plan_with(
            &sample(),
            EXPIRY,
            Capabilities {
                net_port_net: false,
            },
            &Interfaces::default(),
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
        assert!(after.v6.contains(
            "-A ISDF-FORWARD -s 2001:db8:1::/48 -m comment --comment flow-drop-v6 -j DROP"
        ));
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
        let layout = Layout::new(&firewall, 0, Capabilities::ALL, &Interfaces::default()).unwrap();
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
        let layout = Layout::new(&firewall, 0, Capabilities::ALL, &Interfaces::default()).unwrap();
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
            Layout::new(&sample(), NOW, Capabilities::ALL, &Interfaces::default())
                .unwrap()
                .next_reapply,
            Some(EXPIRY)
        );
        assert_eq!(
            Layout::new(&sample(), EXPIRY, Capabilities::ALL, &Interfaces::default())
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
        let layout =
            Layout::new(&firewall, EXPIRY, Capabilities::ALL, &Interfaces::default()).unwrap();
        assert_eq!(layout.next_reapply, Some(far - MAX_TIMEOUT as i64));
        let script = layout.ipset_script();
        assert!(
            script.contains("add isdf+blocked_hosts_v4 203.0.113.10/32\n"),
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
        let layout =
            Layout::new(&firewall, 100, Capabilities::ALL, &Interfaces::default()).unwrap();
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
            with(
                serde_json::json!({"portal": {"port": 8042, "default_url": "https://portal.test/"}}),
            ),
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
        let plan = plan_with(&firewall, 0, Capabilities::ALL, &interfaces).unwrap();
        let ours: Vec<&str> = plan.v4.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(
            ours,
            [
                "-A ISDF-FORWARD -i wan -p tcp -m comment --comment wan-any -j REJECT --reject-with tcp-reset",
                "-A ISDF-FORWARD -i wan -m comment --comment wan-any -j REJECT --reject-with icmp-admin-prohibited",
                "-A ISDF-INPUT -i lan0 -p tcp -m tcp --dport 22 -m comment --comment lan-ssh -j ACCEPT",
                "-A ISDF-INPUT -i br-+ -p tcp -m tcp --dport 22 -m comment --comment lan-ssh -j ACCEPT",
            ]
        );
        assert_eq!(
            plan.v6.lines().filter(|l| l.starts_with("-A")).count(),
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
        )
        .unwrap_err();
        assert!(err.to_string().contains("`lan_interfaces`"), "{err}");
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
}
