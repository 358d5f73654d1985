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
//!
//! Sets the config's DNS policy fills (`dns.fill_sets`) are plain hash sets
//! the router's resolver adds answers to at run time. Replacing the table
//! would empty them and open whatever they gate until clients ask again, so
//! `apply` reads what the resolver added and the script puts it back in the
//! same transaction (`Carried`).
//!
//! Each WireGuard tunnel of the config gets the agent's own interval sets
//! (`agent_wg<n>_*`) and rules ahead of the config's, which keep the tunnel
//! to traffic between its VPN's prefixes (`tunnel_rules`).
//!
//! A rule with `until` carries `meta time < until`: the kernel stops matching
//! at that second by itself. Once past, the planner leaves the rule out, and
//! `next_reapply` asks for a re-plan then, which only tidies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{bail, Context};
use isdf_api::wireguard::Tunnel;
use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, Match, PayloadMatch, PortRange,
    Prefix, Protocol, Rule, RuleCounter, Set, SetElement, SetKey,
};

use super::{
    interval_layers, remaining_ms, FirewallBackend, Interfaces, LearnedEndpoint, CLASSIFY_QUEUE,
};
use crate::sys::processes;

pub const TABLE: &str = "isdf";
/// Our chains run just before fw4's (priority filter = 0), so a block here
/// wins over an accept there.
const CHAIN_PRIORITY: &str = "filter - 10";
/// Our redirects run just before fw4's port forwards (priority dstnat).
const NAT_PRIORITY: &str = "dstnat - 10";
/// The last second `meta time` can compare (the kernel counts nanoseconds in
/// 64 bits, in 2554). nft silently wraps larger values (`18446744074`
/// becomes 1970 and the rule would never match), so an `until` beyond it is
/// left out of the rule: it matches as long as the kernel can count.
const MAX_META_TIME_SECS: i64 = (u64::MAX / 1_000_000_000) as i64;
/// Most elements of a set DNS fills (the resolver adds one per answer).
pub const DNS_SET_SIZE: usize = 65_536;
/// The comment on the config's own elements of a DNS-filled set: what the
/// resolver added has none, and only that is carried into the next ruleset
/// (the config's elements come from the config, so removing one works).
const CONFIG_ELEMENT_COMMENT: &str = "config";
/// Longest element timeout written to the kernel (nft refuses values of a few
/// months). An element lasting longer goes in without a timeout, and the agent
/// re-applies when its remaining time fits (see `next_reapply`).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
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

/// Plans the complete nft script that replaces our table with `firewall` as
/// of `now_ms` (Unix milliseconds: timeouts end to the millisecond), on a
/// router with no interfaces configured and nothing to carry over.
///
/// The script first makes sure the table exists, then deletes and recreates
/// it inside the same transaction: no moment exists with a half ruleset.
pub fn plan(firewall: &Firewall, now_ms: i64) -> anyhow::Result<String> {
    plan_with(firewall, now_ms, &PlanInputs::default())
}

/// What the planner needs to know about the router besides the config.
/// `apply` gathers it (probes, settings, the kernel's sets); the planner
/// stays pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanInputs {
    /// What `in_interface` roles stand for.
    pub interfaces: Interfaces,
    pub queueing: Queueing,
    /// What the resolver added to the DNS-filled sets, by set name.
    pub carried: Carried,
}

/// Elements of DNS-filled sets the kernel held when the apply began and the
/// config did not put there, by set name: they go into the new sets.
pub type Carried = BTreeMap<String, Vec<CarriedElement>>;

/// An element the resolver added to a DNS-filled set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarriedElement {
    pub addr: IpAddr,
    /// Time left in the kernel (None: no timeout).
    pub remaining_ms: Option<u64>,
}

/// How `classify` rules hand packets to the agent's classifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Queueing {
    /// nft's `queue` statement with `bypass` (the kernel has nft_queue).
    #[default]
    Native,
    /// The kernel lacks nft_queue: the rule marks the packet (one bit,
    /// `CLASSIFY_MARK`) and an iptables `NFQUEUE --queue-bypass` rule on
    /// that mark, after our chain, queues it.
    Mark,
}

/// The packet mark bit of `Queueing::Mark`.
pub const CLASSIFY_MARK: u32 = 0x4000_0000;

/// `plan` on a router described by `inputs`. Fails only when a rule needs
/// something the router lacks (an interface role with no interface).
pub fn plan_with(firewall: &Firewall, now_ms: i64, inputs: &PlanInputs) -> anyhow::Result<String> {
    plan_script(firewall, now_ms, Elements::Include, inputs)
}

/// Whether `rule` still matches at `now_ms`: a rule whose `until` has come
/// is left out of the plan (the kernel already stopped matching it).
fn in_force(rule: &Rule, now_ms: i64) -> bool {
    rule.matches
        .until
        .is_none_or(|until| until.saturating_mul(1000) > now_ms)
}

/// The chains the plan has: the filter chains always (an empty config still
/// installs them), `prerouting` only when a rule in force needs it, so a
/// kernel without nat still takes every config that does not.
fn planned_chains(firewall: &Firewall, now_ms: i64) -> Vec<Chain> {
    let prerouting = firewall
        .rules
        .iter()
        .any(|r| r.chain == Chain::Prerouting && in_force(r, now_ms));
    Chain::ALL
        .into_iter()
        .filter(|&c| c != Chain::Prerouting || prerouting)
        .collect()
}

fn chain_header(chain: Chain) -> String {
    match chain {
        Chain::Prerouting => {
            format!("type nat hook prerouting priority {NAT_PRIORITY}; policy accept;")
        }
        Chain::Forward | Chain::Input | Chain::Output => format!(
            "type filter hook {} priority {CHAIN_PRIORITY}; policy accept;",
            chain.name()
        ),
    }
}

/// The names of the sets the config's DNS policy fills.
fn dns_filled(firewall: &Firewall) -> BTreeSet<&str> {
    firewall
        .dns
        .iter()
        .flat_map(|dns| &dns.fill_sets)
        .flat_map(|fill| [fill.ipv4_set.as_str(), fill.ipv6_set.as_str()])
        .collect()
}

fn plan_script(
    firewall: &Firewall,
    now_ms: i64,
    elements: Elements,
    inputs: &PlanInputs,
) -> anyhow::Result<String> {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let layout = layout(firewall, &inputs.carried);
    for kernel_set in layout.values().flatten() {
        plan_set(&mut s, kernel_set, now_ms, elements);
    }
    let tunnels = tunnels(firewall);
    plan_tunnel_sets(&mut s, tunnels, elements);
    for chain in planned_chains(firewall, now_ms) {
        let _ = writeln!(s, "\tchain {} {{", chain.name());
        let _ = writeln!(s, "\t\t{}", chain_header(chain));
        for (comment, line) in tunnel_rules(chain, tunnels) {
            let _ = writeln!(s, "\t\t{line} comment \"{comment}\"");
        }
        let rules = firewall
            .rules
            .iter()
            .filter(|r| r.chain == chain && in_force(r, now_ms));
        for rule in rules {
            for line in rule_lines(rule, &firewall.sets, &layout, inputs)? {
                let _ = writeln!(s, "\t\t{line}");
            }
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    Ok(s)
}

/// The config's tunnels (none without a tunnel side).
fn tunnels(firewall: &Firewall) -> &[Tunnel] {
    firewall.wireguard.as_ref().map_or(&[], |w| &w.tunnels)
}

/// The agent's sets of tunnel `index`: `agent_wg<index>_remote_v4` (what
/// its peers may send from) and `_vpn_v4` (every prefix of the VPN), and
/// the same for IPv6.
fn tunnel_set_name(index: usize, what: &str, v6: bool) -> String {
    format!("agent_wg{index}_{what}_{}", if v6 { "v6" } else { "v4" })
}

fn plan_tunnel_sets(s: &mut String, tunnels: &[Tunnel], elements: Elements) {
    for (index, tunnel) in tunnels.iter().enumerate() {
        let remote: Vec<&Prefix> = tunnel
            .peers
            .iter()
            .flat_map(|p| &p.allowed_prefixes)
            .collect();
        let vpn: Vec<&Prefix> = tunnel.vpn_prefixes().collect();
        for (what, prefixes) in [("remote", &remote), ("vpn", &vpn)] {
            for (v6, family) in [(false, Family::Ipv4), (true, Family::Ipv6)] {
                let values: Vec<String> = prefixes
                    .iter()
                    .filter(|p| p.family() == family && elements == Elements::Include)
                    .map(|p| prefix(p))
                    .collect();
                let _ = writeln!(s, "\tset {} {{", tunnel_set_name(index, what, v6));
                let _ = writeln!(s, "\t\ttype {}; flags interval;", addr_type(family));
                if !values.is_empty() {
                    let _ = writeln!(s, "\t\telements = {{ {} }}", values.join(", "));
                }
                let _ = writeln!(s, "\t}}");
            }
        }
    }
}

/// The rules (comment, rule) that keep each tunnel to its VPN, ahead of
/// everything else in `chain`. Forward: from the tunnel only the peers'
/// prefixes to the VPN's, into it only the VPN's to the peers'. Forward and
/// input: the peers' prefixes arrive through the tunnel only (no spoofing
/// from the WAN or another tunnel). Input from the tunnel: echo requests and
/// replies to the router's own connections only.
fn tunnel_rules(chain: Chain, tunnels: &[Tunnel]) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    for (index, tunnel) in tunnels.iter().enumerate() {
        // Quoted: the config's names are `isdf` and a-z 0-9 - (api checks).
        let interface = format!("\"{}\"", tunnel.interface);
        let comment = |what: &str| format!("agent-wg{index}-{what}");
        for v6 in [false, true] {
            let ip = if v6 { "ip6" } else { "ip" };
            let remote = tunnel_set_name(index, "remote", v6);
            let vpn = tunnel_set_name(index, "vpn", v6);
            if chain == Chain::Forward {
                for (side, not_in) in [("saddr", &remote), ("daddr", &vpn)] {
                    rules.push((
                        comment("in"),
                        format!("iifname {interface} {ip} {side} != @{not_in} counter drop"),
                    ));
                }
                for (side, not_in) in [("saddr", &vpn), ("daddr", &remote)] {
                    rules.push((
                        comment("out"),
                        format!("oifname {interface} {ip} {side} != @{not_in} counter drop"),
                    ));
                }
            }
            if matches!(chain, Chain::Forward | Chain::Input) {
                rules.push((
                    comment("spoof"),
                    format!("iifname != {interface} {ip} saddr @{remote} counter drop"),
                ));
            }
        }
        if chain == Chain::Input {
            let fresh = format!("iifname {interface} ct state new,invalid,untracked");
            for rest in [
                "meta l4proto != { icmp, ipv6-icmp }",
                "icmp type != echo-request",
                "icmpv6 type != echo-request",
            ] {
                rules.push((comment("local"), format!("{fresh} {rest} counter drop")));
            }
        }
    }
    rules
}

/// A set as the kernel holds it.
struct KernelSet<'a> {
    name: String,
    type_expr: &'static str,
    interval: bool,
    /// Rules add elements at run time (endpoint sets).
    dynamic: bool,
    /// The resolver adds elements at run time (`dns.fill_sets`).
    dns_filled: bool,
    elements: Vec<&'a SetElement>,
    /// What the resolver added before this apply (DNS-filled sets only).
    carried: &'a [CarriedElement],
}

/// Most elements rules may add to an endpoint set.
const DYNAMIC_SET_SIZE: usize = 65_536;

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

/// Kernel sets of every config set, by config set name.
type Layout<'a> = BTreeMap<&'a str, Vec<KernelSet<'a>>>;

fn layout<'a>(firewall: &'a Firewall, carried: &'a Carried) -> Layout<'a> {
    let dns_filled = dns_filled(firewall);
    firewall
        .sets
        .iter()
        .map(|set| {
            let kernel = if dns_filled.contains(set.name.as_str()) {
                let carried = carried
                    .get(set.name.as_str())
                    .map_or(&[][..], Vec::as_slice);
                vec![dns_filled_set(set, carried)]
            } else {
                kernel_sets(set)
            };
            (set.name.as_str(), kernel)
        })
        .collect()
}

/// A set the resolver fills: one hash set of single addresses under the
/// set's own name (its config elements are single addresses, `validate`
/// makes sure), so the resolver and rules find it by that name.
fn dns_filled_set<'a>(set: &'a Set, carried: &'a [CarriedElement]) -> KernelSet<'a> {
    KernelSet {
        name: set.name.to_string(),
        type_expr: addr_type(set.key.family()),
        interval: false,
        dynamic: false,
        dns_filled: true,
        elements: set.elements.iter().collect(),
        carried,
    }
}

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ipv4_addr",
        Family::Ipv6 => "ipv6_addr",
    }
}

/// Keeps one of identical elements, the one lasting longest.
fn dedup_exact(elements: Vec<&SetElement>) -> Vec<&SetElement> {
    let mut by_value: BTreeMap<&FlowPattern, &SetElement> = BTreeMap::new();
    for element in elements {
        let ElementValue::Flow(flow) = &element.value else {
            continue;
        };
        by_value
            .entry(flow)
            .and_modify(|kept| {
                let longer = match (kept.expires_at, element.expires_at) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => b > a,
                };
                if longer {
                    *kept = element;
                }
            })
            .or_insert(element);
    }
    by_value.into_values().collect()
}

/// The kernel sets standing for one config set: for a flow set, a hash set of
/// exact 5-tuples plus interval layers (`_R`, `_R1`, ...); for an address
/// set, interval layers (the first keeps the set's own name). There is always
/// at least one interval set, so rules never lose their set.
fn kernel_sets(set: &Set) -> Vec<KernelSet<'_>> {
    let flow_type = |family| match family {
        Family::Ipv4 => "inet_proto . ipv4_addr . inet_service . ipv4_addr . inet_service",
        Family::Ipv6 => "inet_proto . ipv6_addr . inet_service . ipv6_addr . inet_service",
    };
    if set.key.is_endpoint() {
        return vec![KernelSet {
            name: set.name.to_string(),
            type_expr: match set.key.family() {
                Family::Ipv4 => "ipv4_addr . inet_proto . inet_service",
                Family::Ipv6 => "ipv6_addr . inet_proto . inet_service",
            },
            interval: false,
            dynamic: true,
            dns_filled: false,
            elements: set.elements.iter().collect(),
            carried: &[],
        }];
    }
    let (type_expr, mut sets, ranges, first_layer_name) = match set.key {
        SetKey::Ipv4Addr | SetKey::Ipv6Addr => (
            addr_type(set.key.family()),
            Vec::new(),
            set.elements.iter().collect::<Vec<_>>(),
            set.name.to_string(),
        ),
        SetKey::Ipv4Flow | SetKey::Ipv6Flow | SetKey::Ipv4Endpoint | SetKey::Ipv6Endpoint => {
            let (exact, ranges): (Vec<_>, Vec<_>) = set
                .elements
                .iter()
                .partition(|e| matches!(&e.value, ElementValue::Flow(f) if is_exact(f)));
            let hash = KernelSet {
                name: set.name.to_string(),
                type_expr: flow_type(set.key.family()),
                interval: false,
                dynamic: false,
                dns_filled: false,
                elements: dedup_exact(exact),
                carried: &[],
            };
            (
                hash.type_expr,
                vec![hash],
                ranges,
                format!("{}{RANGES_SUFFIX}", set.name),
            )
        }
    };
    let mut layers = interval_layers::layers(&ranges);
    if layers.is_empty() {
        layers.push(Vec::new());
    }
    for (i, elements) in layers.into_iter().enumerate() {
        sets.push(KernelSet {
            name: if i == 0 {
                first_layer_name.clone()
            } else {
                format!("{}{RANGES_SUFFIX}{i}", set.name)
            },
            type_expr,
            interval: true,
            dynamic: false,
            dns_filled: false,
            elements,
            carried: &[],
        });
    }
    sets
}

fn ports(range: PortRange) -> String {
    range.to_string()
}

/// A prefix as nft reads it; host prefixes as bare addresses, which hash
/// sets require.
fn prefix(p: &Prefix) -> String {
    p.to_string()
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

fn plan_set(s: &mut String, set: &KernelSet<'_>, now_ms: i64, elements: Elements) {
    let flags = match (set.interval, set.dynamic) {
        (true, _) => "interval, timeout",
        (false, true) => "dynamic, timeout",
        (false, false) => "timeout",
    };
    let values = match elements {
        Elements::Omit => Vec::new(),
        Elements::Include if set.dns_filled => dns_filled_values(set, now_ms),
        Elements::Include => set
            .elements
            .iter()
            .filter_map(|e| {
                let value = match &e.value {
                    ElementValue::Addr(p) => prefix(p),
                    ElementValue::Flow(f) => flow_element(f),
                    ElementValue::Endpoint(e) => {
                        format!("{} . {} . {}", e.addr, e.protocol.number(), e.port)
                    }
                };
                let ms = kernel_timeout_ms(e.expires_at, now_ms)?;
                Some(match ms {
                    None => value,
                    Some(ms) => format!("{value} timeout {}", timeout(ms)),
                })
            })
            .collect(),
    };
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(s, "\t\ttype {}; flags {flags};", set.type_expr);
    if set.dynamic {
        let _ = writeln!(s, "\t\tsize {DYNAMIC_SET_SIZE};");
    }
    if set.dns_filled {
        // Never smaller than what goes in now, so carrying cannot fail.
        let _ = writeln!(s, "\t\tsize {};", DNS_SET_SIZE.max(values.len()));
    }
    if !values.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{\n\t\t\t{}\n\t\t}}",
            values.join(",\n\t\t\t")
        );
    }
    let _ = writeln!(s, "\t}}");
}

/// The kernel timeout of an element expiring at `expires_at` as of `now_ms`:
/// None when it is already gone (leave it out), Some(None) for no timeout
/// (none, or one too long for the kernel: see `next_reapply`).
fn kernel_timeout_ms(expires_at: Option<i64>, now_ms: i64) -> Option<Option<u64>> {
    match remaining_ms(expires_at, now_ms) {
        None => Some(None),
        Some(0) => None,
        Some(ms) if ms > MAX_TIMEOUT_SECS * 1000 => Some(None),
        Some(ms) => Some(Some(ms)),
    }
}

/// The elements of a DNS-filled set: the config's (marked with
/// `CONFIG_ELEMENT_COMMENT`) and what the resolver added, one per address,
/// in address order. Where both hold an address, the longer lasting copy
/// stays (no timeout lasts longest); on a tie, the config's. A config copy
/// that stays is no longer carried once the config drops it: the resolver
/// adds it again at its next answer for it.
fn dns_filled_values(set: &KernelSet<'_>, now_ms: i64) -> Vec<String> {
    // Address -> (time left, from the config).
    let mut by_addr: BTreeMap<IpAddr, (Option<u64>, bool)> = BTreeMap::new();
    let lasts_longer = |new: Option<u64>, kept: Option<u64>| match (new, kept) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
    };
    let config = set.elements.iter().filter_map(|e| match &e.value {
        ElementValue::Addr(p) => {
            let ms = kernel_timeout_ms(e.expires_at, now_ms)?;
            Some((p.net().addr(), ms, true))
        }
        _ => None,
    });
    let carried = set
        .carried
        .iter()
        .filter(|c| c.remaining_ms != Some(0))
        .map(|c| (c.addr, c.remaining_ms, false));
    for (addr, ms, from_config) in config.chain(carried) {
        let family_fits = matches!(
            (addr, set.type_expr),
            (IpAddr::V4(_), "ipv4_addr") | (IpAddr::V6(_), "ipv6_addr")
        );
        if !family_fits {
            continue;
        }
        by_addr
            .entry(addr)
            .and_modify(|kept| {
                if lasts_longer(ms, kept.0) {
                    *kept = (ms, from_config);
                }
            })
            .or_insert((ms, from_config));
    }
    by_addr
        .into_iter()
        .map(|(addr, (ms, from_config))| {
            let mut value = addr.to_string();
            if let Some(ms) = ms {
                let _ = write!(value, " timeout {}", timeout(ms));
            }
            if from_config {
                let _ = write!(value, " comment \"{CONFIG_ELEMENT_COMMENT}\"");
            }
            value
        })
        .collect()
}

/// A timeout as nft reads it: `90s`, or `1s500ms` (a bare millisecond count
/// above 2^32 is refused).
fn timeout(ms: u64) -> String {
    match (ms / 1000, ms % 1000) {
        (secs, 0) => format!("{secs}s"),
        (secs, ms) => format!("{secs}s{ms}ms"),
    }
}

/// The match expressions of a rule (without action or counter): one per
/// combination of the kernel sets its set references stand for.
/// `interfaces`: the names `in_interface` stands for (None: any).
fn match_exprs(
    m: &Match,
    sets: &[Set],
    layout: &Layout<'_>,
    interfaces: Option<&[String]>,
) -> Vec<String> {
    let family = m.family_with(sets).ok().flatten();
    let ip = |f: Family| if f == Family::Ipv4 { "ip" } else { "ip6" };
    let mut parts = Vec::new();
    if let Some(f) = family {
        parts.push(format!(
            "meta nfproto {}",
            if f == Family::Ipv4 { "ipv4" } else { "ipv6" }
        ));
    }
    if let Some(names) = interfaces {
        // Quoted: `Interfaces::for_rule` allows no quote or backslash.
        let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        parts.push(format!("iifname {{ {} }}", quoted.join(", ")));
    }
    if let Some(until) = m.until.filter(|&u| u <= MAX_META_TIME_SECS) {
        // An integer is Unix seconds; the kernel compares its own clock, so
        // the rule stops matching on time with no agent running.
        parts.push(format!("meta time < {until}"));
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
    if let Some(r) = m.payload_len {
        // The UDP length field counts its 8-byte header.
        let (a, b) = (u32::from(r.first()) + 8, u32::from(r.last()) + 8);
        parts.push(if a == b {
            format!("udp length {a}")
        } else {
            format!("udp length {a}-{b}")
        });
    }
    if let Some(n) = m.first_packets {
        // Both directions counted (conntrack accounting; see `apply`).
        parts.push(format!("ct packets 1-{n}"));
    }
    for p in &m.payload {
        parts.push(payload_expr(p));
    }
    let mut exprs = vec![parts.join(" ")];
    let Some(f) = family else { return exprs };
    let ip = ip(f);
    if let Some(name) = &m.endpoint_in_set {
        // Either side of the packet: one rule line per side.
        exprs = exprs
            .iter()
            .flat_map(|base| {
                [
                    "saddr . meta l4proto . th sport",
                    "daddr . meta l4proto . th dport",
                ]
                .map(|side| format!("{base} {ip} {side} @{name}").trim().to_owned())
            })
            .collect();
    }
    let lookups = [
        (&m.src_in_set, format!("{ip} saddr")),
        (&m.dst_in_set, format!("{ip} daddr")),
        (
            &m.flow_in_set,
            format!("meta l4proto . {ip} saddr . th sport . {ip} daddr . th dport"),
        ),
    ];
    for (reference, key) in &lookups {
        let Some(name) = reference else { continue };
        let kernel_names: Vec<&str> = layout
            .get(name.as_str())
            .map(|k| k.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default();
        let mut combined = Vec::with_capacity(exprs.len() * kernel_names.len());
        for base in &exprs {
            for set in &kernel_names {
                combined.push(format!("{base} {key} @{set}").trim().to_owned());
            }
        }
        exprs = combined;
    }
    exprs
}

/// One payload match: `@ih` is the transport payload (after the TCP or UDP
/// header); a mask compares only its bits.
fn payload_expr(p: &PayloadMatch) -> String {
    let (offset, bits) = (u32::from(p.offset) * 8, p.bytes.len() * 8);
    let hex = |b: &[u8]| {
        b.iter().fold(String::from("0x"), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
    };
    match &p.mask {
        Some(mask) => format!("@ih,{offset},{bits} & {} == {}", hex(mask), hex(&p.bytes)),
        None => format!("@ih,{offset},{bits} {}", hex(&p.bytes)),
    }
}

/// The statements that add both endpoints of the packet to an endpoint set.
fn add_endpoints(rule: &Rule, family: Option<Family>) -> String {
    let (Some(add), Some(f)) = (&rule.add_endpoints_to, family) else {
        return String::new();
    };
    let ip = if f == Family::Ipv4 { "ip" } else { "ip6" };
    [
        "saddr . meta l4proto . th sport",
        "daddr . meta l4proto . th dport",
    ]
    .map(|side| {
        format!(
            "add @{} {{ {ip} {side} timeout {}s }} ",
            add.set, add.timeout_secs
        )
    })
    .concat()
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
fn rule_lines(
    rule: &Rule,
    sets: &[Set],
    layout: &Layout<'_>,
    inputs: &PlanInputs,
) -> anyhow::Result<Vec<String>> {
    let comment = format!("comment \"{}\"", rule.id);
    let interfaces = inputs.interfaces.for_rule(rule)?;
    let queueing = inputs.queueing;
    // A classify rule's endpoints are added by the classifier, on a find.
    let remember = match rule.action {
        Action::Classify => String::new(),
        _ => add_endpoints(rule, rule.family_with(sets).ok().flatten()),
    };
    let mut lines = Vec::new();
    for expr in match_exprs(&rule.matches, sets, layout, interfaces) {
        let sep = if expr.is_empty() { "" } else { " " };
        let sep = format!("{sep}{remember}");
        let sep = sep.as_str();
        match rule.action {
            Action::Accept => lines.push(format!("{expr}{sep}counter accept {comment}")),
            Action::Drop => lines.push(format!("{expr}{sep}counter drop {comment}")),
            Action::Count => lines.push(format!("{expr}{sep}counter {comment}")),
            Action::Redirect { port } => {
                lines.push(format!("{expr}{sep}counter redirect to :{port} {comment}"))
            }
            Action::Classify => lines.push(match queueing {
                Queueing::Native => {
                    format!("{expr}{sep}counter queue num {CLASSIFY_QUEUE} bypass {comment}")
                }
                Queueing::Mark => format!(
                    "{expr}{sep}counter meta mark set meta mark | {CLASSIFY_MARK:#x} {comment}"
                ),
            }),
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
    Ok(lines)
}

/// What `nft -t -j list table inet isdf` shows: set names and, per chain,
/// rule comments in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    sets: Vec<String>,
    chains: BTreeMap<String, Vec<String>>,
}

/// The shape `plan_with(firewall, now_ms, inputs)` gives the table.
fn expected_shape(firewall: &Firewall, now_ms: i64, inputs: &PlanInputs) -> anyhow::Result<Shape> {
    let layout = layout(firewall, &inputs.carried);
    let mut sets: Vec<String> = layout.values().flatten().map(|k| k.name.clone()).collect();
    for index in 0..tunnels(firewall).len() {
        for what in ["remote", "vpn"] {
            sets.extend([false, true].map(|v6| tunnel_set_name(index, what, v6)));
        }
    }
    sets.sort();
    let mut chains = BTreeMap::new();
    for chain in planned_chains(firewall, now_ms) {
        let mut comments: Vec<String> = tunnel_rules(chain, tunnels(firewall))
            .into_iter()
            .map(|(comment, _)| comment)
            .collect();
        let rules = firewall
            .rules
            .iter()
            .filter(|r| r.chain == chain && in_force(r, now_ms));
        for rule in rules {
            let lines = rule_lines(rule, &firewall.sets, &layout, inputs)?.len();
            comments.extend(std::iter::repeat_n(rule.id.to_string(), lines));
        }
        chains.insert(chain.name().to_owned(), comments);
    }
    Ok(Shape { sets, chains })
}

/// `listed` without the rules of `firewall` whose `until` has come by
/// `now_ms`, and without a `prerouting` chain left empty by that: the plan
/// applied before `until` still has them, and the kernel no longer matches
/// them, until the re-apply at `until` tidies them away.
fn without_ended_rules(mut listed: Shape, firewall: &Firewall, now_ms: i64) -> Shape {
    let ended: BTreeSet<&str> = firewall
        .rules
        .iter()
        .filter(|r| !in_force(r, now_ms))
        .map(|r| r.id.as_str())
        .collect();
    for comments in listed.chains.values_mut() {
        comments.retain(|c| !ended.contains(c.as_str()));
    }
    let prerouting = Chain::Prerouting.name();
    if listed.chains.get(prerouting).is_some_and(Vec::is_empty)
        && !planned_chains(firewall, now_ms).contains(&Chain::Prerouting)
    {
        listed.chains.remove(prerouting);
    }
    listed
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

/// Parses `nft -j` output. From bytes, as `isdf_api` reads JSON values (the
/// root chain): a second deserializer, for text, would add some kB to the
/// small binary.
fn parse_json(out: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(out.as_bytes()).context("parsing nft -j output")
}

/// The elements of one listed endpoint set (`nft -j list set`): each is
/// `{"elem": {"val": {"concat": [addr, proto, port]}, "expires": secs}}`.
fn parse_endpoints(set: &str, json: &serde_json::Value) -> Vec<LearnedEndpoint> {
    let elements = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten();
    elements
        .filter_map(|e| {
            let concat = e["elem"]["val"]["concat"].as_array()?;
            let addr = concat.first()?.as_str()?.parse().ok()?;
            let protocol = match &concat.get(1)? {
                serde_json::Value::String(name) if name == "tcp" => Protocol::Tcp,
                serde_json::Value::String(name) if name == "udp" => Protocol::Udp,
                serde_json::Value::Number(n) if n.as_u64() == Some(6) => Protocol::Tcp,
                serde_json::Value::Number(n) if n.as_u64() == Some(17) => Protocol::Udp,
                _ => return None,
            };
            let port = u16::try_from(concat.get(2)?.as_u64()?).ok()?;
            let expires_secs = e["elem"]["expires"].as_u64().unwrap_or(0);
            Some(LearnedEndpoint {
                set: set.to_owned(),
                endpoint: isdf_api::Endpoint {
                    addr,
                    protocol,
                    port,
                },
                remaining_ms: expires_secs * 1000,
            })
        })
        .collect()
}

/// What the resolver added to a DNS-filled set, from its listing (`nft -j
/// list set`), if the kernel set is one the planner makes for a set DNS
/// fills (a hash set of `type_expr`); anything else carries nothing.
/// Elements look like `"192.0.2.1"` (no timeout) or `{"elem": {"val":
/// "192.0.2.1", "timeout": 60, "expires": 42, "comment": ...}}`; those with
/// the config's comment are the config's own and are not carried.
fn parse_carried(json: &serde_json::Value, type_expr: &str) -> Vec<CarriedElement> {
    let sets = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("set"));
    let mut carried = Vec::new();
    for set in sets {
        let interval = set["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "interval"));
        if set["type"] != type_expr || interval {
            continue;
        }
        for element in set["elem"].as_array().into_iter().flatten() {
            let (value, detail) = match element.get("elem") {
                Some(detail) => (&detail["val"], Some(detail)),
                None => (element, None),
            };
            let Some(addr) = value.as_str().and_then(|v| v.parse::<IpAddr>().ok()) else {
                continue;
            };
            if detail.is_some_and(|d| d["comment"] == CONFIG_ELEMENT_COMMENT) {
                continue;
            }
            // The listing counts whole seconds left (rounded down): an
            // element with less than a second left is left to expire.
            let remaining_ms = detail
                .filter(|d| d.get("timeout").is_some() || d.get("expires").is_some())
                .map(|d| {
                    let secs = d["expires"].as_u64().or(d["timeout"].as_u64());
                    secs.unwrap_or(0).saturating_mul(1000)
                });
            if remaining_ms == Some(0) {
                continue;
            }
            carried.push(CarriedElement { addr, remaining_ms });
        }
    }
    carried
}

/// `ct packets` needs conntrack accounting: without it the expression never
/// matches and signatures would silently stop working. OpenWrt turns it on
/// by default; the agent makes sure.
fn enable_conntrack_accounting() -> anyhow::Result<()> {
    const PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1").with_context(|| format!("turning on conntrack accounting ({PATH})"))
}

/// Runs `nft` in the agent's network namespace.
pub struct NftBackend {
    program: String,
    /// Probed at the first apply that needs it.
    queueing: std::sync::OnceLock<Queueing>,
    interfaces: Interfaces,
}

impl NftBackend {
    /// A backend for a router with no interfaces configured (rules matching
    /// `in_interface` are refused).
    pub fn new() -> Self {
        Self::with_interfaces(Interfaces::default())
    }

    /// A backend whose `in_interface` roles stand for `interfaces`.
    pub fn with_interfaces(interfaces: Interfaces) -> Self {
        NftBackend {
            program: std::env::var("ISDF_NFT").unwrap_or_else(|_| "nft".to_owned()),
            queueing: std::sync::OnceLock::new(),
            interfaces,
        }
    }

    /// What the resolver added to the sets `firewall`'s DNS policy fills,
    /// read from the kernel sets of the same name and type (absent ones
    /// start empty).
    fn read_dns_filled(&self, firewall: &Firewall) -> anyhow::Result<Carried> {
        let mut carried = Carried::new();
        let dns_filled = dns_filled(firewall);
        for set in firewall
            .sets
            .iter()
            .filter(|s| dns_filled.contains(s.name.as_str()))
        {
            let name = set.name.as_str();
            let out = match processes::run(
                &self.program,
                &["-j", "list", "set", "inet", TABLE, name],
                "",
            ) {
                Ok(out) => out,
                Err(e) if format!("{e:#}").contains("No such file or directory") => continue,
                // Not knowing what the resolver added would empty the set:
                // better not to replace the ruleset at all.
                Err(e) => return Err(e.context(format!("reading DNS-filled set {name}"))),
            };
            let json = parse_json(&out)?;
            let elements = parse_carried(&json, addr_type(set.key.family()));
            if !elements.is_empty() {
                carried.insert(name.to_owned(), elements);
            }
        }
        Ok(carried)
    }

    /// Whether this kernel has nft's `queue` (a dry run, nothing changes).
    fn queueing(&self) -> Queueing {
        *self.queueing.get_or_init(|| {
            let probe = format!(
                "table inet {TABLE}_probe {{\n\tchain c {{\n\t\ttype filter hook forward priority 0;\n\t\tqueue num {CLASSIFY_QUEUE} bypass\n\t}}\n}}\n"
            );
            if processes::run(&self.program, &["-c", "-f", "-"], &probe).is_ok() {
                Queueing::Native
            } else {
                tracing::info!("this kernel has no nft queue: classify rules mark packets for an iptables NFQUEUE rule");
                Queueing::Mark
            }
        })
    }

    /// Adds or removes the iptables rule that queues marked packets (only
    /// with `Queueing::Mark`), for IPv4 and IPv6.
    fn sync_mark_queue(&self, wanted: bool) -> anyhow::Result<()> {
        let (queue, mark) = (
            CLASSIFY_QUEUE.to_string(),
            format!("{CLASSIFY_MARK:#x}/{CLASSIFY_MARK:#x}"),
        );
        for tool in ["iptables", "ip6tables"] {
            let rule = |op: &'static str| {
                let mut args = vec!["-w", "-t", "filter", op, "FORWARD"];
                args.extend(["-m", "mark", "--mark", &mark, "-m", "comment"]);
                args.extend(["--comment", "isdf-classify", "-j", "NFQUEUE"]);
                args.extend(["--queue-num", &queue, "--queue-bypass"]);
                processes::run(tool, &args, "")
            };
            let present = rule("-C").is_ok();
            if wanted && !present {
                rule("-I")
                    .with_context(|| format!("adding the {tool} NFQUEUE rule for classify"))?;
            } else if !wanted && present {
                rule("-D").with_context(|| format!("removing the {tool} NFQUEUE rule"))?;
            }
        }
        Ok(())
    }

    /// Lists our table without set elements (terse): what verification and
    /// counters need, at a fraction of a full listing's cost.
    fn list_terse(&self) -> anyhow::Result<Option<serde_json::Value>> {
        match processes::run(
            &self.program,
            &["-t", "-j", "list", "table", "inet", TABLE],
            "",
        ) {
            Ok(out) => Ok(Some(parse_json(&out)?)),
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

    fn apply(&mut self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        if firewall
            .rules
            .iter()
            .any(|r| r.matches.first_packets.is_some())
        {
            enable_conntrack_accounting()?;
        }
        let classifies = firewall.rules.iter().any(|r| r.action == Action::Classify);
        // Without classify rules the queueing does not show in the script.
        let queueing = if classifies {
            self.queueing()
        } else {
            Queueing::Native
        };
        let mut inputs = PlanInputs {
            interfaces: self.interfaces.clone(),
            queueing,
            carried: Carried::new(),
        };
        let structure = plan_script(firewall, now_ms, Elements::Omit, &inputs)?;
        processes::run(&self.program, &["-c", "-f", "-"], &structure)
            .context("nft rejected the planned ruleset (check)")?;
        // Read as late as possible: what the resolver adds between this read
        // and the transaction below is lost (it adds it again on the
        // client's next query, which the TTL cap keeps near).
        inputs.carried = self.read_dns_filled(firewall)?;
        processes::run(
            &self.program,
            &["-f", "-"],
            &plan_with(firewall, now_ms, &inputs)?,
        )
        .context("applying the ruleset with nft -f")?;
        if self.queueing.get() == Some(&Queueing::Mark) {
            self.sync_mark_queue(classifies)?;
        }
        Ok(())
    }

    /// Checks our table, its sets, chains and rules are what the plan made.
    /// Set elements are not compared: they arrive in the same transaction as
    /// the rules, listing them costs as much as loading them, and the sets
    /// DNS fills hold what the resolver added besides. Rules whose `until`
    /// came after the apply may still be listed.
    fn verify(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        let Some(json) = self.list_terse()? else {
            bail!("table inet {TABLE} is missing");
        };
        let (listed, _) = listed_shape(&json)?;
        let listed = without_ended_rules(listed, firewall, now_ms);
        let inputs = PlanInputs {
            interfaces: self.interfaces.clone(),
            ..PlanInputs::default()
        };
        let expected = expected_shape(firewall, now_ms, &inputs)?;
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

    /// The earliest of: when an element's timeout first fits the kernel,
    /// and when a rule's `until` comes (the kernel stops matching it by
    /// itself; the re-plan only leaves it out).
    fn next_reapply(&self, firewall: &Firewall, now_ms: i64) -> Option<i64> {
        let max = i64::try_from(MAX_TIMEOUT_SECS).unwrap_or(i64::MAX);
        let now = now_ms.div_euclid(1000);
        let long_timeouts = firewall
            .sets
            .iter()
            .flat_map(|s| &s.elements)
            .filter_map(|e| e.expires_at)
            .filter(|&e| e - now > max)
            .map(|e| e - max);
        let untils = firewall
            .rules
            .iter()
            .filter(|r| in_force(r, now_ms))
            .filter_map(|r| r.matches.until);
        long_timeouts.chain(untils).min()
    }

    fn learned_endpoints(&self, firewall: &Firewall) -> anyhow::Result<Vec<LearnedEndpoint>> {
        let mut learned = Vec::new();
        for set in firewall.sets.iter().filter(|s| s.key.is_endpoint()) {
            let out = processes::run(
                &self.program,
                &["-j", "list", "set", "inet", TABLE, set.name.as_str()],
                "",
            )?;
            let json = parse_json(&out)?;
            learned.extend(parse_endpoints(set.name.as_str(), &json));
        }
        Ok(learned)
    }

    fn forget_endpoint(&self, firewall: &Firewall, endpoint: &isdf_api::Endpoint) {
        let sets = firewall
            .sets
            .iter()
            .filter(|s| s.key.is_endpoint() && s.key.family() == endpoint.family());
        for set in sets {
            let element = format!(
                "{{ {} . {} . {} }}",
                endpoint.addr,
                endpoint.protocol.number(),
                endpoint.port
            );
            // Absent (never learned by the kernel, or expired) is fine.
            let _ = processes::run(
                &self.program,
                &[
                    "delete",
                    "element",
                    "inet",
                    TABLE,
                    set.name.as_str(),
                    &element,
                ],
                "",
            );
        }
    }

    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        match self.list_terse()? {
            Some(json) => Ok(listed_shape(&json)?.1),
            None => Ok(Vec::new()),
        }
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        if self.queueing.get() == Some(&Queueing::Mark) {
            self.sync_mark_queue(false)?;
        }
        processes::run(
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

    use crate::backend::sample_firewall as sample;

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
            10
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
            ["paid-v4", "gate-v4", "gate-v4", "gate-v6"]
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
