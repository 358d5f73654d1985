//! What operators say about VPNs, parsed rather than validated: a VPN's
//! address pool, a site's LAN prefixes, and the tunnel addresses handed out
//! from the pool. Pure; the handlers in `handlers/vpns.rs` check what needs
//! the database (ownership, overlaps with other members) under the VPN's lock.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use isdf_api::Prefix;

/// The pool when a VPN is created without one: the shared address space of
/// RFC 6598, unlikely to clash with a household's LAN.
pub const DEFAULT_ADDRESS_POOL: &str = "100.64.0.0/16";

/// Shortest and longest pool prefix: a /30 holds one member.
pub const POOL_PREFIX_LENGTHS: std::ops::RangeInclusive<u8> = 8..=30;

/// The IPv4 prefix a VPN's tunnel addresses come from. Members get the
/// lowest free address above the network address; the broadcast address is
/// never used and the highest usable one is kept for a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool(Ipv4Net);

impl AddressPool {
    pub fn parse(text: &str) -> Result<Self, String> {
        let prefix = Prefix::parse(text).map_err(|e| format!("address_pool: {e}"))?;
        let IpNet::V4(net) = prefix.net() else {
            return Err(format!("address_pool `{text}` must be IPv4"));
        };
        if !POOL_PREFIX_LENGTHS.contains(&net.prefix_len()) {
            return Err(format!(
                "address_pool `{text}` must be a /{} to /{} (a /30 holds one member)",
                POOL_PREFIX_LENGTHS.start(),
                POOL_PREFIX_LENGTHS.end()
            ));
        }
        Ok(AddressPool(net))
    }

    pub fn default_pool() -> Self {
        AddressPool::parse(DEFAULT_ADDRESS_POOL).expect("the default pool parses")
    }

    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// Whether `prefix` shares any address with the pool.
    pub fn overlaps(&self, prefix: &Prefix) -> bool {
        match prefix.net() {
            IpNet::V4(p) => p.contains(&self.0.network()) || self.0.contains(&p.network()),
            IpNet::V6(_) => false,
        }
    }

    /// The address kept for the VPN's relay (the highest usable one).
    pub fn relay_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.broadcast()) - 1)
    }

    /// How many members the pool holds.
    pub fn capacity(&self) -> u32 {
        // Network, broadcast and the relay's address are never a member's.
        (1u32 << (32 - self.0.prefix_len())) - 3
    }

    /// The lowest address of the pool a member may get that is not in
    /// `taken` (sorted ascending), or None when the pool is full.
    pub fn lowest_free(&self, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let first = u32::from(self.0.network()) + 1;
        let last = u32::from(self.relay_address()) - 1;
        let mut candidate = first;
        for &address in taken {
            let address = u32::from(address);
            if address == candidate {
                candidate += 1;
            } else if address > candidate {
                break;
            }
        }
        (candidate <= last).then(|| Ipv4Addr::from(candidate))
    }
}

impl fmt::Display for AddressPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The LAN prefixes one site exports into its VPN: 1 to
/// [`LanPrefixes::MAX`], each without host bits, none the whole address
/// space. (Overlaps with other sites and with the pool need the VPN, so the
/// handler checks them.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanPrefixes(Vec<Prefix>);

/// Why a site's prefixes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// `invalid_prefix`: malformed, host bits set, a default route, or none.
    Invalid(String),
    /// `too_many_prefixes`.
    Count(String),
}

impl LanPrefixes {
    /// As many as a tunnel's `local_prefixes` may hold.
    pub const MAX: usize = isdf_api::wireguard::Tunnel::MAX_PREFIXES;

    /// Parses `texts`; `site` names the router in messages.
    pub fn parse(texts: &[String], site: &str) -> Result<Self, PrefixError> {
        if texts.is_empty() {
            return Err(PrefixError::Invalid(format!(
                "`{site}` has no prefixes; a site exports 1 to {}",
                Self::MAX
            )));
        }
        if texts.len() > Self::MAX {
            return Err(PrefixError::Count(format!(
                "`{site}` has {} prefixes; a site exports 1 to {}",
                texts.len(),
                Self::MAX
            )));
        }
        let mut prefixes = Vec::with_capacity(texts.len());
        for text in texts {
            let prefix =
                Prefix::parse(text).map_err(|e| PrefixError::Invalid(format!("`{site}`: {e}")))?;
            if prefix.is_any() {
                return Err(PrefixError::Invalid(format!(
                    "`{site}`: {prefix} is every address; a site exports its LAN prefixes"
                )));
            }
            prefixes.push(prefix);
        }
        prefixes.sort();
        Ok(LanPrefixes(prefixes))
    }

    /// Prefixes stored by this module (parsed when written); one that no
    /// longer parses is skipped with a warning.
    pub fn from_stored(texts: &[String]) -> Self {
        LanPrefixes(
            texts
                .iter()
                .filter_map(|t| {
                    Prefix::parse(t)
                        .inspect_err(|e| tracing::warn!(error = %e, "skipping stored prefix"))
                        .ok()
                })
                .collect(),
        )
    }

    pub fn as_slice(&self) -> &[Prefix] {
        &self.0
    }

    /// As PostgreSQL `cidr` text (host prefixes with their `/32`).
    pub fn to_cidr_texts(&self) -> Vec<String> {
        self.0.iter().map(|p| p.net().to_string()).collect()
    }

    /// As the API writes them.
    pub fn to_texts(&self) -> Vec<String> {
        self.0.iter().map(Prefix::to_string).collect()
    }
}

/// Parses a tunnel address as stored (`inet` text, with or without `/32`).
pub fn parse_tunnel_address(text: &str) -> Option<Ipv4Addr> {
    match Prefix::parse(text).ok()?.net().addr() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(text: &str) -> AddressPool {
        AddressPool::parse(text).unwrap()
    }

    fn a(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn pools_are_ipv4_from_slash_8_to_slash_30_without_host_bits() {
        assert_eq!(pool("100.64.0.0/16"), AddressPool::default_pool());
        assert!(AddressPool::parse("10.0.0.0/7").is_err());
        assert!(AddressPool::parse("10.0.0.0/31").is_err());
        assert!(AddressPool::parse("10.0.0.1/24").is_err());
        assert!(AddressPool::parse("fd00::/64").is_err());
        assert!(AddressPool::parse("10.0.0.1").is_err());
        assert!(AddressPool::parse("nonsense").is_err());
    }

    #[test]
    fn members_get_the_lowest_free_address_below_the_relay() {
        let p = pool("10.9.0.0/29");
        assert_eq!(p.capacity(), 5);
        assert_eq!(p.relay_address(), a("10.9.0.6"));
        assert_eq!(p.lowest_free(&[]), Some(a("10.9.0.1")));
        assert_eq!(
            p.lowest_free(&[a("10.9.0.1"), a("10.9.0.3")]),
            Some(a("10.9.0.2"))
        );
        let full: Vec<_> = (1..=5).map(|i| a(&format!("10.9.0.{i}"))).collect();
        assert_eq!(p.lowest_free(&full), None);
        assert_eq!(p.lowest_free(&full[..4]), Some(a("10.9.0.5")));

        let one = pool("10.9.0.0/30");
        assert_eq!(one.capacity(), 1);
        assert_eq!(one.lowest_free(&[]), Some(a("10.9.0.1")));
        assert_eq!(one.lowest_free(&[a("10.9.0.1")]), None);
    }

    #[test]
    fn pool_overlap_covers_both_directions() {
        let p = pool("100.64.0.0/16");
        let prefix = |t: &str| Prefix::parse(t).unwrap();
        assert!(p.overlaps(&prefix("100.64.3.0/24")));
        assert!(p.overlaps(&prefix("100.0.0.0/8")));
        assert!(!p.overlaps(&prefix("100.65.0.0/16")));
        assert!(!p.overlaps(&prefix("fd00::/64")));
    }

    #[test]
    fn lan_prefixes_refuse_host_bits_default_routes_and_bad_counts() {
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = LanPrefixes::parse(&texts(&["10.2.0.0/16", "10.1.0.0/16", "fd00:1::/64"]), "a")
            .unwrap();
        assert_eq!(ok.to_texts(), ["10.1.0.0/16", "10.2.0.0/16", "fd00:1::/64"]);
        assert!(matches!(
            LanPrefixes::parse(&texts(&["10.1.0.1/16"]), "a"),
            Err(PrefixError::Invalid(m)) if m.contains("host bits")
        ));
        assert!(matches!(
            LanPrefixes::parse(&texts(&["0.0.0.0/0"]), "a"),
            Err(PrefixError::Invalid(_))
        ));
        assert!(matches!(
            LanPrefixes::parse(&[], "a"),
            Err(PrefixError::Invalid(_))
        ));
        let many: Vec<String> = (0..=LanPrefixes::MAX)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        assert!(matches!(
            LanPrefixes::parse(&many, "a"),
            Err(PrefixError::Count(_))
        ));
        assert_eq!(
            LanPrefixes::from_stored(&texts(&["192.0.2.1/32"])).to_texts(),
            ["192.0.2.1"]
        );
        assert_eq!(parse_tunnel_address("100.64.0.1/32"), Some(a("100.64.0.1")));
    }
}
