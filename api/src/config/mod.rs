//! The `DeviceConfig` document: one router's complete desired state, built
//! from a small set of data-plane primitives (typed sets and rules).
//!
//! The agent knows these primitives, never services: the controller compiles
//! every service into them, so a new service needs no new firmware.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dns::{DnsPolicy, PortalRedirect};
pub use crate::name::{Name, RuleId, SetName};
use crate::net::{Family, PortRange, Prefix, Protocol};
use crate::wireguard::Wireguard;

mod names;
mod validate;

pub use names::{FlowName, FlowNames, NameGroup, MAX_LEARN_SECS, MAX_NAME_GROUPS};
pub use validate::{MAX_DNS_TTL_SECS, MAX_UNTIL, RESERVED_PREFIX};

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
    /// The agent release the router should run; None: whatever runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_release: Option<crate::release::AgentRelease>,
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
    /// The portal URLs the router answers gated HTTP requests with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<PortalRedirect>,
    /// Site-to-site tunnels; None: the router runs none and makes no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Wireguard>,
    /// How the router's classifier (the `classify` rules) judges; None:
    /// with every rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierPolicy>,
    /// The names the router reads from the LAN's web flows, for rules'
    /// `flow_name`; None: it reads none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_names: Option<FlowNames>,
}

/// Which of the classifier's rules run. Its signatures (messages of the
/// protocol, and peers they reveal) always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierPolicy {
    /// Whether heuristic rules run: those that judge by statistics (the
    /// shape of an encrypted handshake) and so can misfire.
    pub heuristics: bool,
}

impl Firewall {
    /// Whether the classifier's heuristic rules run (the default).
    pub fn classifier_heuristics(&self) -> bool {
        self.classifier.is_none_or(|c| c.heuristics)
    }
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Answer the HTTP request with a `302 Found` to the portal URL of the
    /// site its Host names (the firewall's `portal`), sent by the router as
    /// if from the server, and drop it. While no agent runs the packet is
    /// dropped. Only in `forward`, on tcp from the LAN.
    Portal,
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
    /// Before the action, add the packet's endpoints (address, protocol,
    /// port) to an endpoint set for a while: the kernel remembers the peers
    /// a signature found, with no program on the packet path. Both
    /// endpoints for UDP; for TCP the connection's responder only (the
    /// listening side; the initiator's port is ephemeral).
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
    /// The name the flow carried (read by the router from its first
    /// packets, see `FlowNames`). Only on forward rules from the LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_name: Option<FlowName>,
}

/// Why a config is internally inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests;
