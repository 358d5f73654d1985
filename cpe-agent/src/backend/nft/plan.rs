//! The planner: `Firewall` + now + what the router is like (`PlanInputs`) ->
//! one nft script. Pure and snapshot-tested (`tests.rs`); `apply.rs` only
//! runs what it writes.
//!
//! The script first makes sure `table inet isdf` exists, then deletes and
//! recreates it inside the same transaction: no moment exists with a half
//! ruleset. The agent's own rules come first in each chain: anti-spoofing
//! (`antispoof`, in a chain of its own), then the tunnels' isolation (`tunnels.rs`).
//!
//! Anti-spoofing, in `forward` and `input`: a packet whose source belongs
//! to the router's own LAN may arrive only on a LAN interface (or `lo`).
//! "Belongs to the LAN" is asked of the kernel's routing at each packet
//! (`fib saddr oifname`): the source is routed out of a LAN interface,
//! which covers every LAN prefix, those routed to a router behind the LAN
//! and a delegated IPv6 prefix that changes, with no list to keep current.
//! The router's own addresses are routed locally, so a second rule drops
//! unicast from them (`fib saddr type local`): Linux drops such IPv4
//! sources as martians by itself, but forwards IPv6 ones. Multicast the
//! router sends is looped back to it from its own address on the outgoing
//! interface; `meta pkttype host` leaves it alone. Both need the LAN
//! interfaces (setting `lan_interfaces`); without any there are no such
//! rules, and a tunnel's own entry rule (`tunnels.rs`) still keeps the WAN
//! out of it. A `prerouting` nat chain (`redirect to :port`) exists only while
//! a rule in force needs it, so kernels without nat take every other config.
//! Consecutive rules that look only at a flow's first packets
//! (`first_packets`, as the BitTorrent signatures and classify rules do)
//! sit in a chain of their own, reached by one `ct packets` check
//! (`chains_with_rules`): every packet of an established flow would
//! otherwise be compared with each of them.
//! A rule with `until` carries `meta time < until`: the kernel stops
//! matching at that second by itself. Once past, the planner leaves the rule
//! out, and `next_reapply` asks for a re-plan then, which only tidies.

use std::fmt::Write as _;

use isdf_api::{
    Action, Chain, Family, Firewall, FlowNames, Match, PayloadMatch, Protocol, Rule, Set,
};

use super::names::{
    flow_name_expr, group_dispatch, names_chains, portal_statement, tag_chain, unnamed_dispatch,
    wanted_tag, NameRun,
};
use super::sets::{layout, plan_set, ports, prefix, Carried, Elements, Layout};
use super::tunnels::{plan_tunnel_sets, tunnel_rules, tunnels};
use crate::backend::planning::{Interfaces, ANTISPOOF_JUMP_ID, ANTISPOOF_RULE_ID, CLASSIFY_QUEUE};
use crate::sys::hex::lower_hex;

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
pub(super) const MAX_META_TIME_SECS: i64 = (u64::MAX / 1_000_000_000) as i64;

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
pub(super) fn in_force(rule: &Rule, now_ms: i64) -> bool {
    rule.matches
        .until
        .is_none_or(|until| until.saturating_mul(1000) > now_ms)
}

/// The chains the plan has: the filter chains always (an empty config still
/// installs them), `prerouting` only when a rule in force needs it, so a
/// kernel without nat still takes every config that does not.
pub(super) fn planned_chains(firewall: &Firewall, now_ms: i64) -> Vec<Chain> {
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

pub(super) fn plan_script(
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
    for chain in chains_with_rules(firewall, now_ms, &layout, inputs)? {
        let _ = writeln!(s, "\tchain {} {{", chain.name);
        if let Some(header) = &chain.header {
            let _ = writeln!(s, "\t\t{header}");
        }
        for rule in &chain.rules {
            let _ = writeln!(s, "\t\t{}", rule.line);
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    Ok(s)
}

/// One chain of the plan and its rules in order.
pub(super) struct PlannedChain {
    pub(super) name: String,
    /// The hook of a base chain; `None` for a chain only jumped to.
    pub(super) header: Option<String>,
    pub(super) rules: Vec<PlannedRule>,
}

/// One nft rule line (its comment included) and its comment, which the
/// verification compares with the kernel's listing.
pub(super) struct PlannedRule {
    pub(super) comment: String,
    pub(super) line: String,
}

/// Where a filter chain's early-packet rules sit: `<chain>_early_<n>` for
/// the n-th run of consecutive config rules that look only at a flow's
/// first packets (`first_packets`). The base chain reaches the run with one
/// `ct packets` check, commented with the run chain's name, so a packet of
/// an established flow passes every rule of the run at the cost of one.
/// Runs are counted over all the chain's rules, in force or not: a run's
/// name does not change when a rule's `until` comes.
pub(super) const EARLY_CHAIN_INFIX: &str = "_early_";

/// The chains of the plan with their rules: the base chains
/// (`planned_chains`), the agent's rules first in each, then the config's
/// rules in force, each run of early-packet rules in a chain of its own
/// (`EARLY_CHAIN_INFIX`) after the base chain it is reached from.
pub(super) fn chains_with_rules(
    firewall: &Firewall,
    now_ms: i64,
    layout: &Layout<'_>,
    inputs: &PlanInputs,
) -> anyhow::Result<Vec<PlannedChain>> {
    let mut planned = names_chains(firewall, &inputs.interfaces.lan, inputs.queueing);
    for chain in planned_chains(firewall, now_ms) {
        let agent_rule = |(comment, line): (String, String)| PlannedRule {
            line: format!("{line} comment \"{comment}\""),
            comment,
        };
        let mut base = PlannedChain {
            name: chain.name().to_owned(),
            header: Some(chain_header(chain)),
            rules: Vec::new(),
        };
        let mut runs = Vec::new();
        if let Some((check, rules)) = antispoof(chain, &inputs.interfaces.lan) {
            let name = format!("{}_antispoof", chain.name());
            base.rules.push(agent_rule((
                ANTISPOOF_JUMP_ID.to_owned(),
                format!("{check} jump {name}"),
            )));
            runs.push(PlannedChain {
                name,
                header: None,
                rules: rules.into_iter().map(agent_rule).collect(),
            });
        }
        let tunnels = tunnel_rules(chain, tunnels(firewall));
        base.rules.extend(tunnels.into_iter().map(agent_rule));
        if chain == Chain::Forward {
            if let Some((jump, tags)) = tag_chain(firewall) {
                base.rules.push(jump);
                runs.push(tags);
            }
        }
        let lines = |rule: &Rule| -> anyhow::Result<Vec<PlannedRule>> {
            Ok(rule_lines(rule, firewall, layout, inputs)?
                .into_iter()
                .map(|line| PlannedRule {
                    comment: rule.id.to_string(),
                    line,
                })
                .collect())
        };
        let rules: Vec<&Rule> = firewall.rules.iter().filter(|r| r.chain == chain).collect();
        // Only filter chains group: a nat chain sees a flow's first packet only.
        let groups = chain != Chain::Prerouting;
        let mut early_runs = 0;
        let mut name_runs = 0;
        for run in rules
            .chunk_by(|a, b| a.matches.first_packets.is_some() == b.matches.first_packets.is_some())
        {
            let in_force: Vec<&Rule> = run
                .iter()
                .copied()
                .filter(|r| in_force(r, now_ms))
                .collect();
            let early = run[0].matches.first_packets.is_some() && groups;
            if !early {
                for run in in_force.chunk_by(|a, b| NameRun::of(a) == NameRun::of(b)) {
                    let kind = NameRun::of(run[0]);
                    if kind == NameRun::Any {
                        for rule in run {
                            base.rules.extend(lines(rule)?);
                        }
                        continue;
                    }
                    let prefix = format!("{}_byname_{name_runs}", chain.name());
                    name_runs += 1;
                    // (tag, its chain), in the order the run first names them.
                    let mut chains: Vec<(u32, PlannedChain)> = Vec::new();
                    for rule in run {
                        let tag = match (&rule.matches.flow_name, kind) {
                            (Some(wanted), NameRun::Groups) => {
                                wanted_tag(firewall.flow_names.as_ref(), wanted)
                            }
                            _ => 0,
                        };
                        let at = match chains.iter().position(|(t, _)| *t == tag) {
                            Some(at) => at,
                            None => {
                                let name = format!("{prefix}_{}", chains.len());
                                chains.push((
                                    tag,
                                    PlannedChain {
                                        name,
                                        header: None,
                                        rules: Vec::new(),
                                    },
                                ));
                                chains.len() - 1
                            }
                        };
                        chains[at].1.rules.extend(lines(rule)?);
                    }
                    base.rules.push(match kind {
                        NameRun::Groups => group_dispatch(
                            &chains
                                .iter()
                                .map(|(tag, c)| (*tag, c.name.clone()))
                                .collect::<Vec<_>>(),
                        ),
                        _ => unnamed_dispatch(&chains[0].1.name),
                    });
                    runs.extend(chains.into_iter().map(|(_, c)| c));
                }
                continue;
            }
            let name = format!("{}{EARLY_CHAIN_INFIX}{early_runs}", chain.name());
            early_runs += 1;
            let mut run_chain = PlannedChain {
                name: name.clone(),
                header: None,
                rules: Vec::new(),
            };
            for rule in &in_force {
                run_chain.rules.extend(lines(rule)?);
            }
            let budget = in_force
                .iter()
                .filter_map(|r| r.matches.first_packets)
                .max();
            if let (Some(budget), false) = (budget, run_chain.rules.is_empty()) {
                base.rules.push(PlannedRule {
                    line: format!(
                        "{}ct packets 1-{budget} jump {name} comment \"{name}\"",
                        common_family(&in_force, &firewall.sets)
                    ),
                    comment: name,
                });
            }
            // A run with nothing in force keeps its number, and is left out.
            runs.push(run_chain);
        }
        planned.push(base);
        planned.extend(runs.into_iter().filter(|run| !run.rules.is_empty()));
    }
    Ok(planned)
}

/// `meta nfproto ... ` when every rule of `rules` is of one family, else
/// nothing: the check that leads to a run of early-packet rules.
fn common_family(rules: &[&Rule], sets: &[Set]) -> &'static str {
    let families: Vec<Option<Family>> = rules
        .iter()
        .map(|r| r.matches.family_with(sets).ok().flatten())
        .collect();
    match families.first() {
        Some(&Some(first)) if families.iter().all(|f| *f == Some(first)) => match first {
            Family::Ipv4 => "meta nfproto ipv4 ",
            Family::Ipv6 => "meta nfproto ipv6 ",
        },
        _ => "",
    }
}

/// The anti-spoofing of `chain` for a router whose LAN interfaces are
/// `lan` (see the module's documentation): the check that leads a packet
/// from outside the LAN to the rules, and the rules (comment, rule), in a
/// chain of their own so a LAN packet passes them at the cost of one.
pub(super) fn antispoof(chain: Chain, lan: &[String]) -> Option<(String, Vec<(String, String)>)> {
    if lan.is_empty() || !matches!(chain, Chain::Forward | Chain::Input) {
        return None;
    }
    // Quoted: `Settings::parse` checked the interface names.
    let quoted: Vec<String> = lan.iter().map(|n| format!("\"{n}\"")).collect();
    let lan = quoted.join(", ");
    let rules = [
        format!("fib saddr oifname {{ {lan} }} counter drop"),
        "meta pkttype host fib saddr type local counter drop".to_owned(),
    ]
    .into_iter()
    .map(|rule| (ANTISPOOF_RULE_ID.to_owned(), rule))
    .collect();
    Some((format!("iifname != {{ {lan}, \"lo\" }}"), rules))
}

/// The match expressions of a rule (without action or counter): one per
/// combination of the kernel sets its set references stand for.
/// `interfaces`: the names `in_interface` stands for (None: any).
fn match_exprs(
    m: &Match,
    sets: &[Set],
    names: Option<&FlowNames>,
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
    if let Some(wanted) = &m.flow_name {
        parts.push(flow_name_expr(names, wanted));
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
    let hex = |b: &[u8]| format!("0x{}", lower_hex(b));
    match &p.mask {
        Some(mask) => format!("@ih,{offset},{bits} & {} == {}", hex(mask), hex(&p.bytes)),
        None => format!("@ih,{offset},{bits} {}", hex(&p.bytes)),
    }
}

/// The statements that add the packet's endpoints to an endpoint set, one
/// variant per rule line: both endpoints for UDP (a socket is one endpoint
/// for all its flows); for TCP only the connection's responder, the side
/// that listens: a packet from the initiator adds its destination, one
/// from the responder its source. The initiator's port is ephemeral, and
/// blocking it would cut whichever later connection of that host happens
/// to reuse it.
fn add_endpoints(rule: &Rule, family: Option<Family>) -> Vec<String> {
    let (Some(add), Some(f)) = (&rule.add_endpoints_to, family) else {
        return vec![String::new()];
    };
    let ip = if f == Family::Ipv4 { "ip" } else { "ip6" };
    let statement = |side: &str| {
        format!(
            "add @{} {{ {ip} {side} timeout {}s }} ",
            add.set, add.timeout_secs
        )
    };
    let (source, destination) = (
        statement("saddr . meta l4proto . th sport"),
        statement("daddr . meta l4proto . th dport"),
    );
    match rule.matches.protocol {
        Some(Protocol::Tcp) => vec![
            format!("ct direction original {destination}"),
            format!("ct direction reply {source}"),
        ],
        _ => vec![format!("{source}{destination}")],
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
pub(super) fn rule_lines(
    rule: &Rule,
    firewall: &Firewall,
    layout: &Layout<'_>,
    inputs: &PlanInputs,
) -> anyhow::Result<Vec<String>> {
    let sets = &firewall.sets[..];
    let comment = format!("comment \"{}\"", rule.id);
    let interfaces = inputs.interfaces.for_rule(rule)?;
    let queueing = inputs.queueing;
    // A classify rule's endpoints are added by the classifier, on a find.
    let remembers = match rule.action {
        Action::Classify => vec![String::new()],
        _ => add_endpoints(rule, rule.family_with(sets).ok().flatten()),
    };
    let mut lines = Vec::new();
    let names = firewall.flow_names.as_ref();
    let exprs = match_exprs(&rule.matches, sets, names, layout, interfaces);
    for (expr, remember) in exprs
        .iter()
        .flat_map(|e| remembers.iter().map(move |r| (e, r)))
    {
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
            Action::Portal => lines.push(format!(
                "{expr}{sep}counter {} {comment}",
                portal_statement(queueing)
            )),
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
