//! Site-to-site tunnels: the WireGuard part of a [`crate::Firewall`], and the
//! facts a router reports about itself so the controller can decide who
//! connects to whom.
//!
//! Private keys never leave the router: it makes its key pairs itself and
//! reports only public halves. The controller names, per tunnel, the peers,
//! their endpoints and the prefixes each may send from (WireGuard's
//! cryptokey routing); the agent adds routes for those prefixes and firewall
//! rules so a tunnel carries only traffic between the VPN's own prefixes.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::net::Prefix;

/// A Curve25519 public key, base64 as WireGuard writes it (44 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

impl WgKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("`{text}` is not a base64 WireGuard key"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("`{text}` is not 32 bytes (a WireGuard key)"))?;
        Ok(WgKey(bytes))
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl Serialize for WgKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WgKey::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The router's tunnels, in the signed config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wireguard {
    /// Which of the router's key pairs its tunnels use (the public half).
    /// None until the router has reported a key: it then makes one, reports
    /// it and runs no tunnel yet. A key the router does not hold is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<WgKey>,
    /// The router makes a new key pair when this is above the generation of
    /// the newest key it holds (a rotation), reports its public half as
    /// `next_public_key`, and switches to it once `public_key` names it.
    pub key_generation: u32,
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
}

/// One WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// Interface name: `isdf` followed by up to 11 of a-z 0-9 `-`.
    pub interface: String,
    pub listen_port: u16,
    /// The router's own address inside the VPN (a host prefix).
    pub address: Prefix,
    /// The router's LAN prefixes this VPN carries (empty on a relay).
    #[serde(default)]
    pub local_prefixes: Vec<Prefix>,
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// A peer of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// For people reading configs and status: the peer's device name.
    pub name: String,
    pub public_key: WgKey,
    /// The peer's other key while it rotates: configured beside
    /// `public_key`; `allowed_prefixes` go to whichever of the two completed
    /// the latest handshake (to `public_key` until one has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate_public_key: Option<WgKey>,
    /// Where to send to; None for a peer behind NAT (it calls in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// Prefixes routed to this peer and accepted from it.
    pub allowed_prefixes: Vec<Prefix>,
    /// Keep a NAT mapping open towards this peer (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_secs: Option<u16>,
}

impl Tunnel {
    pub const MAX_PEERS: usize = 4096;
    /// Local prefixes of a router.
    pub const MAX_PREFIXES: usize = 256;
    /// Allowed prefixes of one peer (a hub carries every site behind it).
    pub const MAX_PEER_PREFIXES: usize = 16_384;

    /// Every prefix of the VPN as seen from this router: its own address and
    /// LAN prefixes and what its peers may send from.
    pub fn vpn_prefixes(&self) -> impl Iterator<Item = &Prefix> {
        std::iter::once(&self.address)
            .chain(&self.local_prefixes)
            .chain(self.peers.iter().flat_map(|p| &p.allowed_prefixes))
    }
}

pub(crate) fn check_wireguard(wg: &Wireguard) -> Result<(), String> {
    if !wg.tunnels.is_empty() && wg.public_key.is_none() {
        return Err("tunnels need the router's public_key".into());
    }
    let mut interfaces = HashSet::new();
    let mut ports = HashSet::new();
    for tunnel in &wg.tunnels {
        check_interface_name(&tunnel.interface)?;
        if !interfaces.insert(tunnel.interface.as_str()) {
            return Err(format!("tunnel `{}` is defined twice", tunnel.interface));
        }
        if tunnel.listen_port == 0 || !ports.insert(tunnel.listen_port) {
            return Err(format!(
                "tunnel `{}`: listen port {} is zero or used twice",
                tunnel.interface, tunnel.listen_port
            ));
        }
        check_tunnel(tunnel, wg.public_key)
            .map_err(|m| format!("tunnel `{}`: {m}", tunnel.interface))?;
    }
    Ok(())
}

fn check_interface_name(name: &str) -> Result<(), String> {
    let rest = name.strip_prefix("isdf").unwrap_or("");
    let ok = name.starts_with("isdf")
        && rest.len() <= 11
        && rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a tunnel interface name (`isdf` and up to 11 of a-z 0-9 -)"
        ))
    }
}

fn check_tunnel(tunnel: &Tunnel, own_key: Option<WgKey>) -> Result<(), String> {
    let host_len = match tunnel.address.net().addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    if tunnel.address.net().prefix_len() != host_len {
        return Err(format!("address {} is not a host address", tunnel.address));
    }
    if tunnel.peers.len() > Tunnel::MAX_PEERS {
        return Err(format!("more than {} peers", Tunnel::MAX_PEERS));
    }
    if tunnel.local_prefixes.len() > Tunnel::MAX_PREFIXES {
        return Err(format!("more than {} local prefixes", Tunnel::MAX_PREFIXES));
    }
    let mut keys = HashSet::new();
    keys.extend(own_key);
    for peer in &tunnel.peers {
        if peer.name.is_empty() || peer.name.len() > 64 || peer.name.chars().any(char::is_control) {
            return Err("a peer name is 1 to 64 printable characters".into());
        }
        for key in std::iter::once(peer.public_key).chain(peer.alternate_public_key) {
            if !keys.insert(key) {
                return Err(format!(
                    "peer `{}`: key {key} is used twice (or is the router's own)",
                    peer.name
                ));
            }
        }
        if peer.allowed_prefixes.is_empty()
            || peer.allowed_prefixes.len() > Tunnel::MAX_PEER_PREFIXES
        {
            return Err(format!(
                "peer `{}` has 1 to {} allowed prefixes",
                peer.name,
                Tunnel::MAX_PEER_PREFIXES
            ));
        }
        if peer.keepalive_secs == Some(0) {
            return Err(format!(
                "peer `{}`: keepalive_secs is at least 1",
                peer.name
            ));
        }
    }
    // Cryptokey routing: one prefix belongs to one peer, and never to the
    // router's own side.
    let mut owners: Vec<(&Prefix, &str)> = tunnel
        .local_prefixes
        .iter()
        .chain(std::iter::once(&tunnel.address))
        .map(|p| (p, "this router"))
        .collect();
    owners.extend(tunnel.peers.iter().flat_map(|peer| {
        peer.allowed_prefixes
            .iter()
            .map(|p| (p, peer.name.as_str()))
    }));
    if let Some((a, b)) = first_overlap(&owners) {
        return Err(format!(
            "prefix {} ({}) overlaps {} ({})",
            a.0, a.1, b.0, b.1
        ));
    }
    Ok(())
}

/// A prefix and who it belongs to.
pub type OwnedPrefix<'a, T> = (&'a Prefix, T);

/// The first two prefixes (of different owners) that overlap, sorting by
/// start address so a long list is checked in n log n.
pub fn first_overlap<'a, T: Copy>(
    items: &[OwnedPrefix<'a, T>],
) -> Option<(OwnedPrefix<'a, T>, OwnedPrefix<'a, T>)> {
    let mut sorted: Vec<(&Prefix, T)> = items.to_vec();
    sorted.sort_by_key(|(p, _)| (p.family(), p.net().network(), p.net().prefix_len()));
    // Keep the prefix that reaches furthest so far: a later one overlaps
    // something exactly when it starts inside it.
    let mut widest: Option<(&Prefix, T)> = None;
    for &(prefix, owner) in &sorted {
        if let Some((w, w_owner)) = widest {
            if w.family() == prefix.family() && w.net().contains(&prefix.net().network()) {
                return Some(((w, w_owner), (prefix, owner)));
            }
        }
        let reaches_further = widest.is_none_or(|(w, _)| {
            w.family() != prefix.family() || prefix.net().broadcast() > w.net().broadcast()
        });
        if reaches_further {
            widest = Some((prefix, owner));
        }
    }
    None
}

/// What a router reports about its tunnel side (`PUT` [`crate::paths::DEVICE_WIREGUARD_FACTS`]).
/// Sent when it changes and again every few minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireguardFacts {
    /// The key the router's tunnels use now.
    pub public_key: WgKey,
    /// A key made for a rotation and not used yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<WgKey>,
    /// Generation of the newest key the router holds.
    #[cfg_attr(feature = "openapi", schema(maximum = 4_294_967_295_u64))]
    pub key_generation: u32,
    /// The port its (first) tunnel listens on; relays use the ports after it.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub listen_port: u16,
    /// Addresses on its WAN interfaces (the controller also sees the
    /// address the report came from).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, max_items = 16))]
    pub wan_addresses: Vec<IpAddr>,
    /// The nonce of a controller probe the router received on its probe
    /// port: proof that inbound UDP reaches it at the address the probe was
    /// sent to. None: no probe arrived (behind NAT or filtered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_nonce: Option<String>,
}

impl WireguardFacts {
    /// Most WAN addresses a router reports.
    pub const MAX_WAN_ADDRESSES: usize = 16;

    /// Checks facts as the controller receives them, before they are stored.
    pub fn check(&self) -> Result<(), String> {
        if self.listen_port == 0 {
            return Err("listen_port is 0".into());
        }
        if self.wan_addresses.len() > Self::MAX_WAN_ADDRESSES {
            return Err(format!("at most {} WAN addresses", Self::MAX_WAN_ADDRESSES));
        }
        if self.next_public_key == Some(self.public_key) {
            return Err("next_public_key is the key in use".into());
        }
        Ok(())
    }
}

/// Asks the controller to send UDP probes to the router (`POST`
/// [`crate::paths::DEVICE_WIREGUARD_PROBE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProbeRequest {
    /// The UDP port the router listens for the probe on.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub port: u16,
    /// Addresses to probe besides the one the request came from.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub wan_addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProbeAnswer {
    /// Where probes were sent; each carries its own nonce.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub sent_to: Vec<SocketAddr>,
}

/// A probe datagram is this prefix followed by the nonce (32 hex digits).
pub const PROBE_PREFIX: &[u8] = b"ISDF-PROBE ";

/// What the agent sees of one tunnel, in its status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelStatus {
    pub interface: String,
    pub public_key: WgKey,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerStatus {
    pub public_key: WgKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub endpoint: Option<SocketAddr>,
    /// Unix seconds of the latest completed handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_handshake: Option<i64>,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub rx_bytes: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        Prefix::parse(text).unwrap()
    }

    #[test]
    fn overlaps_are_found_with_both_owners() {
        let items = [
            (&p("10.0.1.0/24"), "a"),
            (&p("10.0.0.0/16"), "b"),
            (&p("2001:db8::/64"), "c"),
        ];
        let ((x, xo), (y, yo)) = first_overlap(&items).unwrap();
        assert_eq!((x.to_string(), xo), ("10.0.0.0/16".into(), "b"));
        assert_eq!((y.to_string(), yo), ("10.0.1.0/24".into(), "a"));
        let nested = [
            (&p("10.0.0.0/24"), 1),
            (&p("10.0.1.0/24"), 2),
            (&p("10.0.0.0/8"), 3),
        ];
        assert!(first_overlap(&nested).is_some());
        let disjoint = [
            (&p("10.0.0.0/24"), 1),
            (&p("10.0.1.0/24"), 2),
            (&p("::/0"), 3),
        ];
        assert!(first_overlap(&disjoint).is_none());
    }

    #[test]
    fn keys_round_trip_in_wireguard_base64() {
        let text = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let key = WgKey::parse(text).unwrap();
        assert_eq!(key.to_string(), text);
        assert!(WgKey::parse("AAAA").is_err());
    }
}
