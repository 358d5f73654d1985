//! What a config must hold that its types cannot say: unique names,
//! references to existing sets of the right type, elements that fit their
//! set, rules that do not mix families, DNS, portal and tunnel consistency.
//! The agent refuses a config that fails [`DeviceConfig::validate`].

use std::collections::HashSet;

use super::{
    Action, Chain, ConfigError, DeviceConfig, ElementValue, Match, Rule, Set, SetElement, SetKey,
    SetName,
};
use crate::dns::check_url;
use crate::net::{Family, Protocol};
use crate::wireguard::check_wireguard;

impl DeviceConfig {
    /// Checks everything the type system cannot: unique names, references to
    /// existing sets of the right type, elements matching their set, rules
    /// that do not mix families. The agent refuses a config that fails this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.expires_at <= self.issued_at {
            return fail("expires_at is not after issued_at".into());
        }
        if let Some(release) = &self.agent_release {
            release.check().map_err(ConfigError)?;
        }
        let mut set_names = HashSet::new();
        for set in &self.firewall.sets {
            if set.name.as_str().starts_with(RESERVED_PREFIX) {
                return fail(format!(
                    "set `{}`: names starting with `{RESERVED_PREFIX}` are the router's own",
                    set.name
                ));
            }
            if !set_names.insert(set.name.as_str()) {
                return fail(format!("set `{}` is defined twice", set.name));
            }
            for element in &set.elements {
                check_element(set, element).map_err(ConfigError)?;
            }
        }
        let mut rule_ids = HashSet::new();
        for rule in &self.firewall.rules {
            if rule.id.as_str().starts_with(RESERVED_PREFIX) {
                return fail(format!(
                    "rule `{}`: names starting with `{RESERVED_PREFIX}` are the router's own",
                    rule.id
                ));
            }
            if !rule_ids.insert(rule.id.as_str()) {
                return fail(format!("rule `{}` is defined twice", rule.id));
            }
            rule.family_with(&self.firewall.sets)
                .map_err(|m| ConfigError(format!("rule `{}`: {m}", rule.id)))?;
            rule.check_chain()
                .map_err(|m| ConfigError(format!("rule `{}`: {m}", rule.id)))?;
            rule.check_names(&self.firewall)
                .map_err(|m| ConfigError(format!("rule `{}`: {m}", rule.id)))?;
        }
        if let Some(dns) = &self.firewall.dns {
            check_dns(dns, &self.firewall.sets).map_err(ConfigError)?;
        }
        if let Some(names) = &self.firewall.flow_names {
            names.check(&self.firewall.sets).map_err(ConfigError)?;
        }
        if let Some(portal) = &self.firewall.portal {
            check_portal(portal).map_err(ConfigError)?;
        }
        if let Some(wireguard) = &self.firewall.wireguard {
            check_wireguard(wireguard).map_err(ConfigError)?;
        }
        let classifies = self
            .firewall
            .rules
            .iter()
            .any(|r| r.action == Action::Classify);
        if self.firewall.classifier.is_some() && !classifies {
            return fail("classifier: there is no classify rule for it to apply to".into());
        }
        Ok(())
    }
}

/// Latest `until` (2500-01-01): the kernel's clock match wraps past 2554.
pub const MAX_UNTIL: i64 = 16_725_225_600;

/// Longest TTL cap: a day.
pub const MAX_DNS_TTL_SECS: u32 = 24 * 3600;

fn check_dns(dns: &crate::dns::DnsPolicy, sets: &[Set]) -> Result<(), String> {
    if dns
        .max_ttl_secs
        .is_some_and(|t| !(1..=MAX_DNS_TTL_SECS).contains(&t))
    {
        return Err("dns max_ttl_secs is 1 s to 1 day".into());
    }
    for fill in &dns.fill_sets {
        if fill.domains.is_empty() {
            return Err("a dns fill_sets entry names no domain".into());
        }
        for (name, key) in [
            (&fill.ipv4_set, SetKey::Ipv4Addr),
            (&fill.ipv6_set, SetKey::Ipv6Addr),
        ] {
            check_single_address_set(sets, name, key).map_err(|m| format!("dns fills {m}"))?;
        }
    }
    Ok(())
}

/// A set the router adds addresses to at run time (from DNS answers or
/// from flows' names): of type `key`, holding single addresses only.
pub(super) fn check_single_address_set(
    sets: &[Set],
    name: &SetName,
    key: SetKey,
) -> Result<(), String> {
    let set = sets
        .iter()
        .find(|s| &s.name == name)
        .ok_or_else(|| format!("unknown set `{name}`"))?;
    if set.key != key {
        return Err(format!("set `{name}`, which is not a {key:?} set"));
    }
    if set.elements.iter().any(|e| {
        !matches!(&e.value, ElementValue::Addr(p)
            if p.net().prefix_len() == p.net().max_prefix_len())
    }) {
        return Err(format!(
            "set `{name}` is filled at run time and may only hold single addresses"
        ));
    }
    Ok(())
}

fn check_portal(portal: &crate::dns::PortalRedirect) -> Result<(), String> {
    if portal.port == 0 {
        return Err("the portal port is 1 to 65535".into());
    }
    check_url(&portal.default_url)?;
    for site in &portal.sites {
        if site.domains.is_empty() {
            return Err("a portal site names no domain".into());
        }
        check_url(&site.url)?;
    }
    Ok(())
}

/// Set names and rule ids starting with this belong to the agent: it adds
/// its own sets and rules (local blocks, detections) next to the config's,
/// and a config can never name them.
pub const RESERVED_PREFIX: &str = "agent";

fn check_element(set: &Set, element: &SetElement) -> Result<(), String> {
    let family = match (set.key, &element.value) {
        (SetKey::Ipv4Addr | SetKey::Ipv6Addr, ElementValue::Addr(addr)) => addr.family(),
        (SetKey::Ipv4Flow | SetKey::Ipv6Flow, ElementValue::Flow(flow)) => flow
            .check()
            .map_err(|m| format!("set `{}`: {m}", set.name))?,
        (SetKey::Ipv4Endpoint | SetKey::Ipv6Endpoint, ElementValue::Endpoint(e)) => {
            if !e.protocol.has_ports() {
                return Err(format!("set `{}`: endpoints are tcp or udp", set.name));
            }
            e.family()
        }
        _ => {
            return Err(format!(
                "set `{}` holds an element of the wrong type",
                set.name
            ))
        }
    };
    if family != set.key.family() {
        return Err(format!(
            "set `{}` holds an element of the wrong family",
            set.name
        ));
    }
    Ok(())
}

/// The three kinds of sets, by what a rule may look up in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    Addr,
    Flow,
    Endpoint,
}

impl SetKind {
    fn of(key: SetKey) -> Self {
        match key {
            SetKey::Ipv4Addr | SetKey::Ipv6Addr => SetKind::Addr,
            SetKey::Ipv4Flow | SetKey::Ipv6Flow => SetKind::Flow,
            SetKey::Ipv4Endpoint | SetKey::Ipv6Endpoint => SetKind::Endpoint,
        }
    }
}

impl Rule {
    /// Checks the action and match fields suit the rule's chain.
    fn check_chain(&self) -> Result<(), String> {
        let redirect = matches!(self.action, Action::Redirect { .. });
        if let Action::Redirect { port } = self.action {
            if port == 0 {
                return Err("redirect port is 1 to 65535".into());
            }
            if !self.matches.protocol.is_some_and(Protocol::has_ports) {
                return Err("redirect needs protocol tcp or udp".into());
            }
        }
        match self.chain {
            Chain::Prerouting => {
                if !matches!(
                    self.action,
                    Action::Accept | Action::Count | Action::Redirect { .. }
                ) {
                    return Err("prerouting rules accept, count or redirect".into());
                }
                if self.add_endpoints_to.is_some() || self.matches.first_packets.is_some() {
                    return Err(
                        "prerouting sees only a connection's first packet: no add_endpoints_to or first_packets"
                            .into(),
                    );
                }
            }
            _ if redirect => return Err("redirect only in prerouting".into()),
            Chain::Output if self.matches.in_interface.is_some() => {
                return Err("output traffic comes in on no interface".into())
            }
            _ => {}
        }
        Ok(())
    }

    /// The rule's family (None: both), checking `add_endpoints_to` too.
    pub fn family_with(&self, sets: &[Set]) -> Result<Option<Family>, String> {
        let family = self.matches.family_with(sets)?;
        let Some(add) = &self.add_endpoints_to else {
            if self.action == Action::Classify {
                return Err(
                    "classify needs add_endpoints_to: where the classifier's finds go".into(),
                );
            }
            return Ok(family);
        };
        let set = sets
            .iter()
            .find(|s| s.name == add.set)
            .ok_or_else(|| format!("add_endpoints_to names unknown set `{}`", add.set))?;
        if !set.key.is_endpoint() {
            return Err(format!(
                "add_endpoints_to names set `{}` of the wrong type",
                add.set
            ));
        }
        if family.is_some_and(|f| f != set.key.family()) {
            return Err("add_endpoints_to names a set of another family than the rule".into());
        }
        if !self.matches.protocol.is_some_and(Protocol::has_ports) {
            return Err("add_endpoints_to needs protocol tcp or udp".into());
        }
        if self.action == Action::Classify && self.matches.first_packets.is_none() {
            return Err(
                "classify needs first_packets: only a flow's first packets go to the classifier"
                    .into(),
            );
        }
        if !(1..=30 * 24 * 3600).contains(&add.timeout_secs) {
            return Err("add_endpoints_to lasts 1 s to 30 days".into());
        }
        Ok(Some(set.key.family()))
    }
}

impl Match {
    /// The single family this match is restricted to (None: both), or why it
    /// is contradictory.
    pub fn family_with(&self, sets: &[Set]) -> Result<Option<Family>, String> {
        let mut family = self.family;
        let mut require = |f: Family, what: &str| -> Result<(), String> {
            match family {
                Some(existing) if existing != f => {
                    Err(format!("{what} is {f:?} but the rule is {existing:?}"))
                }
                _ => {
                    family = Some(f);
                    Ok(())
                }
            }
        };
        if let Some(p) = &self.src {
            require(p.family(), "source")?;
        }
        if let Some(p) = &self.dst {
            require(p.family(), "destination")?;
        }
        if let Some(f) = self.protocol.and_then(Protocol::family) {
            require(f, "protocol")?;
        }
        let set_refs = [
            (&self.flow_in_set, SetKind::Flow, "flow_in_set"),
            (&self.src_in_set, SetKind::Addr, "src_in_set"),
            (&self.dst_in_set, SetKind::Addr, "dst_in_set"),
            (&self.endpoint_in_set, SetKind::Endpoint, "endpoint_in_set"),
        ];
        for (reference, wants, what) in set_refs {
            let Some(name) = reference else { continue };
            let set = sets
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| format!("{what} names unknown set `{name}`"))?;
            if SetKind::of(set.key) != wants {
                return Err(format!("{what} names set `{name}` of the wrong type"));
            }
            require(set.key.family(), what)?;
        }
        for p in &self.payload {
            p.check()?;
        }
        if !self.payload.is_empty() && !self.protocol.is_some_and(Protocol::has_ports) {
            return Err("payload matches need protocol tcp or udp".into());
        }
        if self.payload_len.is_some() && self.protocol != Some(Protocol::Udp) {
            return Err("payload_len needs protocol udp".into());
        }
        if self.until.is_some_and(|t| !(0..=MAX_UNTIL).contains(&t)) {
            return Err("until is a Unix time between 1970 and 2500".into());
        }
        if self.first_packets.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err("first_packets is 1 to 1000".into());
        }
        let has_ports = self.sport.is_some() || self.dport.is_some();
        if has_ports && !self.protocol.is_some_and(Protocol::has_ports) {
            return Err("ports need protocol tcp or udp".into());
        }
        Ok(family)
    }
}
