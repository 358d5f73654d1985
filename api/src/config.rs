//! The `DeviceConfig` document: one router's complete desired state, built
//! from a small set of data-plane primitives (typed sets and rules).
//!
//! The agent knows these primitives, never services: the controller compiles
//! every service into them, so a new service needs no new firmware.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dns::{check_url, DnsPolicy, PortalRedirect};
pub use crate::name::{Name, RuleId, SetName};
use crate::net::{Family, PortRange, Prefix, Protocol};
use crate::wireguard::{check_wireguard, Wireguard};

/// The signed desired state of one router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device this config is for; the agent refuses any other.
    pub device_id: String,
    /// Increases whenever the content changes; the agent refuses anything
    /// not above the version it enforces.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; after this the agent keeps enforcing it but reports it stale.
    pub expires_at: i64,
    pub firewall: Firewall,
}

/// The data-plane primitives: kernel sets and rules, and the DNS policy and
/// portal redirect that fill and serve them (one unit: sets filled by DNS
/// and the rules using them only make sense together, and are applied and
/// rolled back together).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    #[serde(default)]
    pub sets: Vec<Set>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What the router's resolver enforces; None: the agent runs no resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsPolicy>,
    /// The router's answer to HTTP requests a `redirect` rule sends to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<PortalRedirect>,
    /// Site-to-site tunnels; None: the router runs none and makes no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Wireguard>,
}

impl Firewall {
    /// SHA-256 over the canonical JSON of the firewall content. The controller
    /// uses it to decide whether a recompile changed anything; the agent
    /// reports it as the digest of what it enforces.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("firewall serialises");
        hex::encode(Sha256::digest(bytes))
    }
}

/// A named, typed kernel set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    pub name: SetName,
    pub key: SetKey,
    #[serde(default)]
    pub elements: Vec<SetElement>,
}

/// What a set's elements are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetKey {
    /// IPv4 addresses or prefixes.
    Ipv4Addr,
    /// IPv6 addresses or prefixes.
    Ipv6Addr,
    /// IPv4 flow patterns: protocol, source prefix and ports, destination prefix and ports.
    Ipv4Flow,
    /// IPv6 flow patterns.
    Ipv6Flow,
    /// IPv4 endpoints (address, protocol, port) that rules may also add at
    /// run time (`Rule::add_endpoints_to`): peers the router found itself.
    Ipv4Endpoint,
    /// IPv6 endpoints.
    Ipv6Endpoint,
}

impl SetKey {
    pub fn family(self) -> Family {
        match self {
            SetKey::Ipv4Addr | SetKey::Ipv4Flow | SetKey::Ipv4Endpoint => Family::Ipv4,
            SetKey::Ipv6Addr | SetKey::Ipv6Flow | SetKey::Ipv6Endpoint => Family::Ipv6,
        }
    }

    pub fn is_endpoint(self) -> bool {
        matches!(self, SetKey::Ipv4Endpoint | SetKey::Ipv6Endpoint)
    }

    pub fn is_flow(self) -> bool {
        matches!(self, SetKey::Ipv4Flow | SetKey::Ipv6Flow)
    }
}

/// One set element, optionally with an absolute expiry (Unix seconds). The
/// agent turns the expiry into a kernel element timeout, so an element leaves
/// the set on time even when the agent is not running.
///
/// On the wire: `{"addr": "192.0.2.1"}` or `{"flow": {...}, "expires_at": 1795003600}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireSetElement", into = "WireSetElement")]
pub struct SetElement {
    pub value: ElementValue,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ElementValue {
    Addr(Prefix),
    Flow(FlowPattern),
    Endpoint(Endpoint),
}

/// One side of a connection: address, protocol with ports, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub addr: std::net::IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl Endpoint {
    pub fn family(&self) -> Family {
        match self.addr {
            std::net::IpAddr::V4(_) => Family::Ipv4,
            std::net::IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl SetElement {
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSetElement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    addr: Option<Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flow: Option<FlowPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
}

impl TryFrom<WireSetElement> for SetElement {
    type Error = String;
    fn try_from(w: WireSetElement) -> Result<Self, String> {
        let value = match (w.addr, w.flow, w.endpoint) {
            (Some(a), None, None) => ElementValue::Addr(a),
            (None, Some(f), None) => ElementValue::Flow(f),
            (None, None, Some(e)) => ElementValue::Endpoint(e),
            _ => {
                return Err("a set element has exactly one of `addr`, `flow` and `endpoint`".into())
            }
        };
        Ok(SetElement {
            value,
            expires_at: w.expires_at,
        })
    }
}

impl From<SetElement> for WireSetElement {
    fn from(e: SetElement) -> Self {
        let (mut addr, mut flow, mut endpoint) = (None, None, None);
        match e.value {
            ElementValue::Addr(a) => addr = Some(a),
            ElementValue::Flow(f) => flow = Some(f),
            ElementValue::Endpoint(p) => endpoint = Some(p),
        }
        WireSetElement {
            addr,
            flow,
            endpoint,
            expires_at: e.expires_at,
        }
    }
}

/// A flow pattern: each field may be "any". Ports need a protocol with ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowPattern {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    pub src: Prefix,
    #[serde(default = "any_port", skip_serializing_if = "PortRange::is_any")]
    pub sport: PortRange,
    pub dst: Prefix,
    #[serde(default = "any_port", skip_serializing_if = "PortRange::is_any")]
    pub dport: PortRange,
}

fn any_port() -> PortRange {
    PortRange::ANY
}

impl FlowPattern {
    /// Whether a packet or connection with this 5-tuple matches (`protocol`
    /// is the IANA number; ports are ignored for protocols without ports).
    pub fn matches(
        &self,
        protocol: u8,
        src: std::net::IpAddr,
        sport: u16,
        dst: std::net::IpAddr,
        dport: u16,
    ) -> bool {
        self.protocol.is_none_or(|p| p.number() == protocol)
            && self.src.contains(src)
            && self.dst.contains(dst)
            && self.sport.contains(sport)
            && self.dport.contains(dport)
    }

    /// Checks the pattern is self-consistent and returns its family.
    pub fn check(&self) -> Result<Family, String> {
        let family = self.src.family();
        if self.dst.family() != family {
            return Err(format!(
                "flow mixes families: source {} and destination {}",
                self.src, self.dst
            ));
        }
        let any_ports = self.sport.is_any() && self.dport.is_any();
        match self.protocol {
            Some(proto) if proto.family().is_some_and(|f| f != family) => Err(format!(
                "protocol {} cannot be used with {family:?}",
                proto.name()
            )),
            Some(proto) if !proto.has_ports() && !any_ports => {
                Err(format!("protocol {} has no ports", proto.name()))
            }
            None if !any_ports => Err("ports need a protocol with ports (tcp or udp)".into()),
            _ => Ok(family),
        }
    }
}

/// The hook a rule runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// Traffic routed through the router (LAN <-> WAN).
    Forward,
    /// Traffic to the router itself.
    Input,
    /// Traffic from the router itself.
    Output,
    /// The first packet of each new connection arriving on any interface,
    /// before routing: where `redirect` sends it to the router itself.
    /// Only `accept` (skip the later redirects), `redirect` and `count`.
    Prerouting,
}

impl Chain {
    pub const ALL: [Chain; 4] = [
        Chain::Forward,
        Chain::Input,
        Chain::Output,
        Chain::Prerouting,
    ];
    /// The filtering chains (every chain but `prerouting`).
    pub const FILTER: [Chain; 3] = [Chain::Forward, Chain::Input, Chain::Output];

    pub fn name(self) -> &'static str {
        match self {
            Chain::Forward => "forward",
            Chain::Input => "input",
            Chain::Output => "output",
            Chain::Prerouting => "prerouting",
        }
    }
}

/// Which side of the router a packet came in on; the agent knows its
/// interfaces (settings `lan_interfaces`, `wan_interfaces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceRole {
    Lan,
    Wan,
}

/// What happens to a packet a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
    /// Drop and tell the sender: TCP reset for TCP, ICMP unreachable otherwise.
    Reject,
    /// Only count.
    Count,
    /// Hand the packet to the router's classifier (the agent), which drops
    /// it if it recognises the traffic and then blocks the peer like
    /// `add_endpoints_to` says; the packet passes while no classifier runs.
    /// Needs `first_packets` and `add_endpoints_to`.
    Classify,
    /// Send a new connection to this port on the router itself (the address
    /// it arrived at). Only in `prerouting`; needs protocol tcp or udp.
    /// On the wire: `{"redirect": {"port": 53}}`.
    Redirect {
        port: u16,
    },
}

/// A rule: all present match fields must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable id; counters are reported under it.
    pub id: RuleId,
    pub chain: Chain,
    #[serde(rename = "match")]
    pub matches: Match,
    pub action: Action,
    /// Before the action, add both endpoints of the packet (source address,
    /// protocol, port and the same for the destination) to an endpoint set
    /// for a while: the kernel remembers the peers a signature found, with
    /// no program on the packet path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_endpoints_to: Option<AddEndpoints>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddEndpoints {
    pub set: SetName,
    /// 1 s to 30 days.
    pub timeout_secs: u32,
}

/// Bytes at a fixed offset of the transport payload (after the TCP or UDP
/// header), optionally under a mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadMatch {
    pub offset: u16,
    /// 1 to 16 bytes, hex.
    #[serde(with = "hex_bytes")]
    pub bytes: Vec<u8>,
    /// As long as `bytes`; only the bits set here are compared.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
    pub mask: Option<Vec<u8>>,
}

impl PayloadMatch {
    pub const MAX_BYTES: usize = 16;
    pub const MAX_END: usize = 1500;

    fn check(&self) -> Result<(), String> {
        if self.bytes.is_empty() || self.bytes.len() > Self::MAX_BYTES {
            return Err(format!(
                "a payload match has 1 to {} bytes",
                Self::MAX_BYTES
            ));
        }
        if self
            .mask
            .as_ref()
            .is_some_and(|m| m.len() != self.bytes.len())
        {
            return Err("a payload mask is as long as its bytes".into());
        }
        if usize::from(self.offset) + self.bytes.len() > Self::MAX_END {
            return Err(format!(
                "payload matches end within {} bytes",
                Self::MAX_END
            ));
        }
        Ok(())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::hex_bytes::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Match fields of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortRange>,
    /// The packet's flow (protocol, addresses, ports) is in this flow set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_in_set: Option<SetName>,
    /// The packet's source address is in this address set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_in_set: Option<SetName>,
    /// The packet's destination address is in this address set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_in_set: Option<SetName>,
    /// Either endpoint of the packet (address, protocol, port) is in this
    /// endpoint set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_in_set: Option<SetName>,
    /// Bytes at fixed offsets of the transport payload; all must match.
    /// Needs protocol tcp or udp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<PayloadMatch>,
    /// The UDP payload length lies in this range (bytes). Needs udp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<PortRange>,
    /// Only the first this many packets of a connection (both directions
    /// counted, 1 to 1000): signatures need not look at bulk transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_packets: Option<u16>,
    /// The packet came in on a LAN (or WAN) interface of the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_interface: Option<InterfaceRole>,
    /// Matches only before this instant (Unix seconds): the kernel stops
    /// matching on its own at that second (a pass that ends while the
    /// router is offline), and the agent drops the rule after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// Why a config is internally inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl DeviceConfig {
    /// Checks everything the type system cannot: unique names, references to
    /// existing sets of the right type, elements matching their set, rules
    /// that do not mix families. The agent refuses a config that fails this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.expires_at <= self.issued_at {
            return fail("expires_at is not after issued_at".into());
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
        }
        if let Some(dns) = &self.firewall.dns {
            check_dns(dns, &self.firewall.sets).map_err(ConfigError)?;
        }
        if let Some(portal) = &self.firewall.portal {
            check_portal(portal).map_err(ConfigError)?;
        }
        if let Some(wireguard) = &self.firewall.wireguard {
            check_wireguard(wireguard).map_err(ConfigError)?;
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
            let set = sets
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| format!("dns fills unknown set `{name}`"))?;
            if set.key != key {
                return Err(format!(
                    "dns fills set `{name}`, which is not a {key:?} set"
                ));
            }
            if set.elements.iter().any(|e| {
                !matches!(&e.value, ElementValue::Addr(p)
                    if p.net().prefix_len() == p.net().max_prefix_len())
            }) {
                return Err(format!(
                    "set `{name}` is filled by dns and may only hold single addresses"
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceConfig {
        serde_json::from_str(include_str!("../tests/vectors/config-sample.json")).unwrap()
    }

    #[test]
    fn sample_config_is_valid_and_round_trips() {
        let config = sample();
        config.validate().unwrap();
        let again: DeviceConfig =
            serde_json::from_slice(&serde_json::to_vec(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        let base = serde_json::to_value(sample()).unwrap();
        let pointers = [
            "",
            "/firewall",
            "/firewall/sets/0",
            "/firewall/rules/0",
            "/firewall/rules/0/match",
        ];
        for pointer in pointers {
            let mut doc = base.clone();
            doc.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("surprise".into(), 1.into());
            let err = serde_json::from_value::<DeviceConfig>(doc).unwrap_err();
            assert!(
                err.to_string().contains("unknown field"),
                "{pointer}: {err}"
            );
        }
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let mut c = sample();
        c.firewall.rules[0].matches.flow_in_set = Some(Name::parse("nope").unwrap());
        assert!(c.validate().unwrap_err().0.contains("unknown set"));

        let mut c = sample();
        c.firewall.rules.push(c.firewall.rules[0].clone());
        assert!(c.validate().unwrap_err().0.contains("twice"));

        let mut c = sample();
        c.firewall.sets[0].key = SetKey::Ipv6Flow;
        assert!(c.validate().unwrap_err().0.contains("wrong family"));

        let mut c = sample();
        c.firewall.rules[0].matches.dport = Some(PortRange::single(1));
        c.firewall.rules[0].matches.protocol = None;
        assert!(c.validate().unwrap_err().0.contains("ports need"));

        let mut c = sample();
        c.expires_at = c.issued_at;
        assert!(c.validate().is_err());
    }

    #[test]
    fn chains_dns_and_portal_are_checked() {
        let rule = |json: serde_json::Value| serde_json::from_value::<Rule>(json).unwrap();
        let with = |rules: Vec<Rule>, extra: serde_json::Value| {
            let mut c = sample();
            c.firewall.rules = rules;
            let mut doc = serde_json::to_value(&c).unwrap();
            for (k, v) in extra.as_object().unwrap() {
                doc["firewall"][k] = v.clone();
            }
            serde_json::from_value::<DeviceConfig>(doc)
                .unwrap()
                .validate()
        };
        let redirect = rule(serde_json::json!({"id": "dns", "chain": "prerouting",
            "match": {"protocol": "udp", "dport": "53", "in_interface": "lan"},
            "action": {"redirect": {"port": 53}}}));
        assert_eq!(with(vec![redirect.clone()], serde_json::json!({})), Ok(()));
        let mut misplaced = redirect.clone();
        misplaced.chain = Chain::Forward;
        assert!(with(vec![misplaced], serde_json::json!({}))
            .unwrap_err()
            .0
            .contains("only in prerouting"));
        let mut dropping = redirect.clone();
        dropping.action = Action::Drop;
        assert!(with(vec![dropping], serde_json::json!({})).is_err());
        let mut no_proto = redirect;
        no_proto.matches.protocol = None;
        no_proto.matches.dport = None;
        assert!(with(vec![no_proto], serde_json::json!({}))
            .unwrap_err()
            .0
            .contains("protocol"));

        let sets = serde_json::json!([
            {"name": "site_v4", "key": "ipv4-addr", "elements": [{"addr": "192.0.2.7"}]},
            {"name": "site_v6", "key": "ipv6-addr"}]);
        let fill = |v4: &str| {
            serde_json::json!({"sets": sets, "dns": {"max_ttl_secs": 30,
            "fill_sets": [{"domains": ["video.test"], "ipv4_set": v4, "ipv6_set": "site_v6"}],
            "local_answers": [{"domain": "use-application-dns.net"}]}})
        };
        assert_eq!(with(vec![], fill("site_v4")), Ok(()));
        assert!(with(vec![], fill("site_v6"))
            .unwrap_err()
            .0
            .contains("not a Ipv4Addr"));
        assert!(with(vec![], fill("nope"))
            .unwrap_err()
            .0
            .contains("unknown set"));
        let mut prefixed = fill("site_v4");
        prefixed["sets"][0]["elements"][0]["addr"] = "192.0.2.0/24".into();
        assert!(with(vec![], prefixed)
            .unwrap_err()
            .0
            .contains("single addresses"));
        let mut zero_ttl = fill("site_v4");
        zero_ttl["dns"]["max_ttl_secs"] = 0.into();
        assert!(with(vec![], zero_ttl).is_err());

        let portal = |url: &str| {
            serde_json::json!({"portal": {"port": 8042,
            "default_url": url, "sites": [{"domains": ["video.test"], "url": "https://p/1"}]}})
        };
        assert_eq!(with(vec![], portal("https://p/")), Ok(()));
        assert!(with(vec![], portal("https://p/\r\nX: y")).is_err());
    }

    #[test]
    fn flow_patterns_check_their_parts() {
        let p = |j: &str| serde_json::from_str::<FlowPattern>(j).unwrap().check();
        assert_eq!(
            p(r#"{"src":"0.0.0.0/0","dst":"192.0.2.1"}"#),
            Ok(Family::Ipv4)
        );
        assert!(p(r#"{"src":"::/0","dst":"192.0.2.1"}"#).is_err());
        assert!(p(r#"{"src":"::/0","dst":"::/0","dport":"80"}"#).is_err());
        assert!(p(r#"{"protocol":"icmp","src":"::/0","dst":"::/0"}"#).is_err());
        assert_eq!(
            p(r#"{"protocol":"tcp","src":"::/0","dst":"2001:db8::/32","dport":"80-90"}"#),
            Ok(Family::Ipv6)
        );
    }

    #[test]
    fn digest_depends_only_on_firewall_content() {
        let a = sample();
        let mut b = a.clone();
        b.version += 1;
        b.issued_at += 10;
        assert_eq!(a.firewall.digest(), b.firewall.digest());
        b.firewall.rules.pop();
        assert_ne!(a.firewall.digest(), b.firewall.digest());
    }
}
