//! The ipsets a config's sets become: which sets fit an ipset at all
//! (`hash:net` for addresses, `hash:net,port,net` for flow patterns that fit
//! it, where the kernel has it), their entries (ipset refuses `/0`, so "any"
//! becomes two halves) and timeouts. Pure. A flow set that does not fit is
//! inlined as rules by the planner instead.

use std::collections::BTreeMap;

use isdf_api::{ElementValue, Family, FlowPattern, Prefix, Protocol};

/// The largest element timeout ipset accepts (about 24.8 days).
pub(super) const MAX_TIMEOUT: u64 = 2_147_483;

/// ipset's default of 65536 is too small for large block lists; this is only a
/// cap, memory grows with the elements actually present.
pub(super) const MAX_ELEMENTS: u32 = 262_144;

/// Elements this close to their expiry may or may not be in the kernel when
/// `verify` looks.
pub(super) const EXPIRY_SLACK: u64 = 5;

/// How an ipset stores a set's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetKind {
    /// Address sets.
    Net,
    /// Flow sets whose every element is `tcp|udp, src, any sport, dst, one dport`.
    NetPortNet,
}

impl SetKind {
    pub(super) fn type_name(self) -> &'static str {
        match self {
            SetKind::Net => "hash:net",
            SetKind::NetPortNet => "hash:net,port,net",
        }
    }
}

pub(super) fn ipset_family(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "inet",
        Family::Ipv6 => "inet6",
    }
}

/// One ipset as planned.
#[derive(Debug)]
pub(super) struct PlannedSet {
    /// `isdfa-<name>` or `isdfb-<name>` (see `generation.rs`).
    pub(super) name: String,
    pub(super) kind: SetKind,
    pub(super) family: Family,
    /// Entry -> timeout in seconds (None: permanent). Deduplicated, because
    /// ipset refuses to add an entry twice.
    pub(super) entries: BTreeMap<String, Option<u64>>,
    /// Entries whose timeout ends within `EXPIRY_SLACK`.
    pub(super) expiring_soon: usize,
    /// Entries of elements that expired within `EXPIRY_SLACK` (the kernel may
    /// not have collected them yet).
    pub(super) just_expired: usize,
}

impl PlannedSet {
    /// `timeout 0` makes elements permanent unless they carry their own
    /// timeout. Created afresh, or emptied if a leftover could not go.
    pub(super) fn create(&self) -> String {
        format!(
            "create {name} {} family {} maxelem {MAX_ELEMENTS} timeout 0 -exist\nflush {name}",
            self.kind.type_name(),
            ipset_family(self.family),
            name = self.name,
        )
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
pub(super) fn fits_net_port_net(f: &FlowPattern) -> bool {
    matches!(f.protocol, Some(Protocol::Tcp | Protocol::Udp))
        && f.sport.is_any()
        && f.dport.first() == f.dport.last()
}

/// The ipset entries one element becomes (None: it does not fit `kind`).
pub(super) fn ipset_entries(kind: SetKind, value: &ElementValue) -> Option<Vec<String>> {
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
