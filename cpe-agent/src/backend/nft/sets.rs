//! The kernel sets one config set becomes, and their elements as nft reads
//! them. Pure: the planner writes what this module decides.
//!
//! Each flow set of the config becomes two kinds of kernel set: exact
//! 5-tuples go to a hash set (`<name>`), patterns with prefixes, ranges or
//! "any" go to interval sets (`<name>_R`, `_R1`, ...; the uppercase suffix
//! cannot collide with a config name), overlapping patterns packed into
//! layers the kernel accepts (`interval_layers`). Interval sets of
//! concatenations cost nft about six times more per element to load than
//! hash sets, and timed 5-tuple blocks are the bulk case.
//!
//! Element expiries become nft element timeouts, to the millisecond: they
//! leave the set on time even if the agent is not running. A timeout past
//! what the kernel accepts is left out, and the element re-applied once it
//! fits (`next_reapply`).
//!
//! Sets the config's DNS policy fills (`dns.fill_sets`) are plain hash sets
//! the router's resolver adds answers to at run time. Replacing the table
//! would empty them and open whatever they gate until clients ask again, so
//! `apply` reads what the resolver added (`Carried`) and the script puts it
//! back in the same transaction, beside the config's own elements (marked
//! with a comment so they are not carried).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use isdf_api::{
    ElementValue, Family, Firewall, FlowPattern, PortRange, Prefix, Protocol, Set, SetElement,
    SetKey,
};

use crate::backend::interval_layers;
use crate::backend::planning::remaining_ms;

/// Most elements of a set DNS fills (the resolver adds one per answer).
pub const DNS_SET_SIZE: usize = 65_536;

/// The comment on the config's own elements of a DNS-filled set: what the
/// resolver added has none, and only that is carried into the next ruleset
/// (the config's elements come from the config, so removing one works).
pub(super) const CONFIG_ELEMENT_COMMENT: &str = "config";

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
pub(super) enum Elements {
    Include,
    Omit,
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

/// The names of the sets filled at run time: by the config's DNS policy,
/// and by the flows named in a `flow_names` group (their server addresses).
pub(super) fn dns_filled(firewall: &Firewall) -> BTreeSet<&str> {
    let by_dns = firewall
        .dns
        .iter()
        .flat_map(|dns| &dns.fill_sets)
        .flat_map(|fill| [fill.ipv4_set.as_str(), fill.ipv6_set.as_str()]);
    let by_names = firewall
        .flow_names
        .iter()
        .flat_map(|names| &names.groups)
        .flat_map(|group| [group.ipv4_set.as_str(), group.ipv6_set.as_str()]);
    by_dns.chain(by_names).collect()
}

/// A set as the kernel holds it.
pub(super) struct KernelSet<'a> {
    pub(super) name: String,
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
pub(super) type Layout<'a> = BTreeMap<&'a str, Vec<KernelSet<'a>>>;

pub(super) fn layout<'a>(firewall: &'a Firewall, carried: &'a Carried) -> Layout<'a> {
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
        // Rules add to it (`update @set`: a flow's name taught its address).
        dynamic: true,
        dns_filled: true,
        elements: set.elements.iter().collect(),
        carried,
    }
}

pub(super) fn addr_type(family: Family) -> &'static str {
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

pub(super) fn ports(range: PortRange) -> String {
    range.to_string()
}

/// A prefix as nft reads it; host prefixes as bare addresses, which hash
/// sets require.
pub(super) fn prefix(p: &Prefix) -> String {
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

pub(super) fn plan_set(s: &mut String, set: &KernelSet<'_>, now_ms: i64, elements: Elements) {
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
    if set.dns_filled {
        // Never smaller than what goes in now, so carrying cannot fail.
        let _ = writeln!(s, "\t\tsize {};", DNS_SET_SIZE.max(values.len()));
    } else if set.dynamic {
        let _ = writeln!(s, "\t\tsize {DYNAMIC_SET_SIZE};");
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
