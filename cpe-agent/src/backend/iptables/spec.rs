//! The match part of one iptables rule (`Spec`): a rule's own constraints,
//! narrowed by each element of an inlined flow set (`and_flow`; no packet
//! can match a disjoint pair, so it is left out), rendered as iptables
//! options. Pure.

use isdf_api::{FlowPattern, PortRange, Prefix, Protocol};

/// The match part of one iptables rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Spec {
    /// `-i`: the interface the packet came in on (`+` ends a prefix).
    pub(super) in_interface: Option<String>,
    pub(super) protocol: Option<Protocol>,
    pub(super) src: Option<Prefix>,
    pub(super) dst: Option<Prefix>,
    pub(super) sport: Option<PortRange>,
    pub(super) dport: Option<PortRange>,
    /// (ipset name, direction flags) for `-m set --match-set`.
    pub(super) sets: Vec<(String, &'static str)>,
}

impl Spec {
    /// The spec that matches packets matching both `self` and flow pattern
    /// `flow`, or None when no packet can.
    pub(super) fn and_flow(&self, flow: &FlowPattern) -> Option<Spec> {
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

    pub(super) fn render(&self) -> String {
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
