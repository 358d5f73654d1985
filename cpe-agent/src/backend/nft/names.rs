//! Flow names (`flow_names`) in nft, pure: which packets go to the agent's
//! name reader, how its verdict becomes the connection's mark that rules
//! match (`flow_name`), and how a named flow teaches its group's sets the
//! server address.
//!
//! A base chain of its own, `names`, runs before the connection's other
//! rules (priority mangle - 10) and only queues: a LAN web flow (TCP 80 and
//! 443, UDP 443) not yet decided sends its first client packets
//! (`NAME_READ_PACKETS`: a TCP flow's data, and a SYN that carries some) to
//! the reader, bypassed
//! when no agent listens. Every other LAN flow, and a web flow still
//! undecided past those packets (no agent: judged by its addresses, as
//! before names), is tagged there by its server address, looked up once per
//! flow: unnamed if a group's sets hold it, unnamed elsewhere if none do
//! (most of a LAN's traffic, which then passes every rule by name or
//! address with one comparison). Being a base chain, its `accept` ends only
//! itself: the packet still meets every rule of `forward`.
//!
//! The packet goes to the reader (`names_read`) already marked with what its
//! address alone says (the group whose sets hold it, else unnamed
//! elsewhere), so one the reader never answers (no agent: bypassed) leaves
//! its flow judged by its address from then on, never let through unread;
//! and the reader knows
//! when a name disagrees with an address known to be a group's. It answers
//! with the packet's mark carrying the flow's tag (none while the name may
//! still come);
//! `forward` first copies it into the connection's mark (`forward_names`),
//! one rule per tag, reached only by packets that carry one. So the very
//! packet that named the flow, and every later one, meets the config's rules
//! with its name decided: the kernel alone judges them from then on.
//!
//! In `forward`, a run of config rules by group name is reached by one
//! verdict map on the connection's tag, each group's rules in a chain of
//! their own (`forward_byname_<run>_<i>`, see `NameRun`), and a run of rules
//! for unnamed flows by one comparison: the rules of 50 sites cost a packet
//! a lookup, not 400 comparisons.
//!
//! Without nft's queue (`Queueing::Mark`) the `names` chain marks the packet
//! instead, and an iptables rule in the mangle table's FORWARD chain
//! (priority -150, after `names`, before `forward`) queues it.

use isdf_api::{Firewall, FlowName, FlowNames, Rule};

use super::plan::{PlannedChain, PlannedRule, Queueing};
use crate::backend::planning::{
    group_tag, NAMES_QUEUE, NAME_QUEUE_MARK, NAME_READ_PACKETS, NAME_TAG_MASK, PORTAL_MARK,
    PORTAL_QUEUE, TAG_NAMED_ELSEWHERE, TAG_UNDECIDED, TAG_UNNAMED, TAG_UNNAMED_ELSEWHERE,
};

/// The comment (and counter id) of the agent's name-reading rules.
pub const NAMES_RULE_ID: &str = "agent-names";

/// The chain that copies the reader's verdict into the connection.
const TAG_CHAIN: &str = "forward_names";
/// The longest SYN without data: an IPv6 header and a TCP header with the
/// most options (40 + 60 bytes).
const SYN_WITHOUT_DATA: u32 = 100;

/// The chain of the packets the reader reads.
const READ_CHAIN: &str = "names_read";

fn agent_rule(line: String) -> PlannedRule {
    PlannedRule {
        line: format!("{line} comment \"{NAMES_RULE_ID}\""),
        comment: NAMES_RULE_ID.to_owned(),
    }
}

/// `ct mark` (or `meta mark`) holding `tag` in the name bits.
fn tag_is(mark: &str, tag: u32) -> String {
    format!("{mark} & {NAME_TAG_MASK:#010x} == {tag:#010x}")
}

/// Sets the connection's name bits to `tag`, keeping the others.
fn set_tag(tag: u32) -> String {
    format!(
        "ct mark set ct mark & {:#010x} | {tag:#010x}",
        !NAME_TAG_MASK
    )
}

/// The `names` base chain, when the config reads names and the router has
/// LAN interfaces (names are read from LAN flows only; `validate` ties
/// every `flow_name` to `in_interface: lan`, which needs them), and
/// `names_read`, where the packets the reader reads go.
pub(super) fn names_chains(
    firewall: &Firewall,
    lan: &[String],
    queueing: Queueing,
) -> Vec<PlannedChain> {
    let Some(names) = firewall.flow_names.as_ref() else {
        return Vec::new();
    };
    if lan.is_empty() {
        return Vec::new();
    }
    let quoted: Vec<String> = lan.iter().map(|n| format!("\"{n}\"")).collect();
    let first = format!("ct original packets 1-{NAME_READ_PACKETS}");
    let entry = [
        format!("iifname != {{ {} }} return", quoted.join(", ")),
        format!("ct mark & {NAME_TAG_MASK:#010x} != {TAG_UNDECIDED:#010x} return"),
        format!("tcp dport {{ 80, 443 }} tcp flags & syn == 0 {first} goto {READ_CHAIN}"),
        // A SYN longer than any header carries data (TCP Fast Open): read.
        format!(
            "tcp dport {{ 80, 443 }} tcp flags & syn == syn meta length > {SYN_WITHOUT_DATA} {first} goto {READ_CHAIN}"
        ),
        format!("tcp dport {{ 80, 443 }} {first} return"),
        format!("udp dport 443 {first} goto {READ_CHAIN}"),
    ];
    // Every other flow carries no name: judged by address if its server
    // address is a group's now (the sets are looked in once per flow).
    let mut entry: Vec<String> = entry.into_iter().collect();
    entry.push(set_tag(TAG_UNNAMED_ELSEWHERE));
    for group in &names.groups {
        for (ip, set) in [("ip", &group.ipv4_set), ("ip6", &group.ipv6_set)] {
            entry.push(format!("{ip} daddr @{set} {}", set_tag(TAG_UNNAMED)));
        }
    }
    // The packet goes to the reader marked with what its address alone
    // says: the group whose sets hold it, else unnamed. The reader
    // overwrites that with its verdict, so a packet it never saw (no agent,
    // a full queue, no config yet) leaves its flow judged by its address,
    // never let through unread; and the reader learns which group the
    // address is known for.
    let keep = !NAME_TAG_MASK;
    let mut read = vec![format!(
        "meta mark set meta mark & {keep:#010x} | {TAG_UNNAMED_ELSEWHERE:#010x}"
    )];
    for (index, group) in names.groups.iter().enumerate() {
        for (ip, set) in [("ip", &group.ipv4_set), ("ip6", &group.ipv6_set)] {
            read.push(format!(
                "{ip} daddr @{set} meta mark set meta mark & {keep:#010x} | {:#010x}",
                group_tag(index)
            ));
        }
    }
    read.push(match queueing {
        Queueing::Native => format!("queue num {NAMES_QUEUE} bypass"),
        Queueing::Mark => format!("meta mark set meta mark | {NAME_QUEUE_MARK:#x} accept"),
    });
    vec![
        PlannedChain {
            name: "names".to_owned(),
            header: Some(
                "type filter hook forward priority mangle - 10; policy accept;".to_owned(),
            ),
            rules: entry.into_iter().map(agent_rule).collect(),
        },
        PlannedChain {
            name: READ_CHAIN.to_owned(),
            header: None,
            rules: read.into_iter().map(agent_rule).collect(),
        },
    ]
}

/// The jump at the top of `forward` for packets carrying the reader's
/// verdict on an undecided flow, and the chain it leads to: the tag into
/// the connection's mark, and for a group's tag the server address into
/// the group's sets for `learn_secs` (refreshed by each new flow).
pub(super) fn tag_chain(firewall: &Firewall) -> Option<(PlannedRule, PlannedChain)> {
    let names = firewall.flow_names.as_ref()?;
    let jump = agent_rule(format!(
        "meta mark & {NAME_TAG_MASK:#010x} != 0 {} jump {TAG_CHAIN}",
        tag_is("ct mark", TAG_UNDECIDED)
    ));
    let mut rules = Vec::new();
    for tag in [TAG_UNNAMED, TAG_NAMED_ELSEWHERE, TAG_UNNAMED_ELSEWHERE] {
        rules.push(format!(
            "{} {} return",
            tag_is("meta mark", tag),
            set_tag(tag)
        ));
    }
    for (index, group) in names.groups.iter().enumerate() {
        let tag = group_tag(index);
        for (nfproto, ip, set) in [
            ("ipv4", "ip", &group.ipv4_set),
            ("ipv6", "ip6", &group.ipv6_set),
        ] {
            rules.push(format!(
                "{} meta nfproto {nfproto} {} update @{set} {{ {ip} daddr timeout {}s }} return",
                tag_is("meta mark", tag),
                set_tag(tag),
                names.learn_secs
            ));
        }
    }
    let chain = PlannedChain {
        name: TAG_CHAIN.to_owned(),
        header: None,
        rules: rules.into_iter().map(agent_rule).collect(),
    };
    Some((jump, chain))
}

/// The match of a rule's `flow_name`; an unknown group (which `validate`
/// refuses) matches nothing.
pub(super) fn flow_name_expr(names: Option<&FlowNames>, wanted: &FlowName) -> String {
    tag_is("ct mark", wanted_tag(names, wanted))
}

/// The statement of a `portal` rule: the request to the agent, which
/// answers it and drops it; no bypass, so with no agent it is dropped.
pub(super) fn portal_statement(queueing: Queueing) -> String {
    match queueing {
        Queueing::Native => format!("queue num {PORTAL_QUEUE}"),
        Queueing::Mark => format!("meta mark set meta mark | {PORTAL_MARK:#x} accept"),
    }
}

/// How a run of consecutive config rules is reached, by what they ask of
/// the flow's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameRun {
    /// Rules that ask nothing of it: in the chain, in order.
    Any,
    /// Rules each for one group: one verdict map on the tag, a chain per
    /// group holding its rules in order (a flow has one tag, so the rules of
    /// other groups could not match it anyway).
    Groups,
    /// Rules for unnamed flows: one comparison, then a chain of them.
    Unnamed,
}

impl NameRun {
    pub(super) fn of(rule: &Rule) -> Self {
        match rule.matches.flow_name {
            None => NameRun::Any,
            Some(FlowName::Group(_)) => NameRun::Groups,
            Some(FlowName::Unnamed) => NameRun::Unnamed,
        }
    }
}

/// The tag a rule's `flow_name` compares with (`flow_name_expr`'s).
pub(super) fn wanted_tag(names: Option<&FlowNames>, wanted: &FlowName) -> u32 {
    match wanted {
        FlowName::Unnamed => TAG_UNNAMED,
        FlowName::Group(id) => names
            .and_then(|n| n.groups.iter().position(|g| &g.id == id))
            .map_or(NAME_TAG_MASK, group_tag),
    }
}

/// The verdict map that leads a packet to its group's chain of a run:
/// `chains` are (tag, chain name).
pub(super) fn group_dispatch(chains: &[(u32, String)]) -> PlannedRule {
    let entries: Vec<String> = chains
        .iter()
        .map(|(tag, chain)| format!("{tag:#010x} : jump {chain}"))
        .collect();
    agent_rule(format!(
        "ct mark & {NAME_TAG_MASK:#010x} vmap {{ {} }}",
        entries.join(", ")
    ))
}

/// The comparison that leads unnamed flows to a run's chain.
pub(super) fn unnamed_dispatch(chain: &str) -> PlannedRule {
    agent_rule(format!("{} jump {chain}", tag_is("ct mark", TAG_UNNAMED)))
}
