//! Network value types that parse, not validate: a value of these types is
//! always well formed (prefix with no host bits set, port range in order).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Address family of a prefix, set or rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The prefix that matches every address of this family.
    pub fn any(self) -> Prefix {
        match self {
            Family::Ipv4 => Prefix(IpNet::from_str("0.0.0.0/0").expect("literal")),
            Family::Ipv6 => Prefix(IpNet::from_str("::/0").expect("literal")),
        }
    }
}

/// An IPv4 or IPv6 prefix such as `192.0.2.0/24`, `2001:db8::/32` or a bare
/// address (a host prefix). Host bits must be zero: `10.0.0.1/8` is refused
/// because it is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(IpNet);

impl Prefix {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let net = if text.contains('/') {
            IpNet::from_str(text).map_err(|_| format!("`{text}` is not an IP prefix"))?
        } else {
            let addr =
                IpAddr::from_str(text).map_err(|_| format!("`{text}` is not an IP address"))?;
            IpNet::from(addr)
        };
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        Ok(Prefix(net))
    }

    /// The host prefix of one address (/32 or /128).
    pub fn from_addr(addr: IpAddr) -> Self {
        Prefix(IpNet::from(addr))
    }

    pub fn family(&self) -> Family {
        match self.0 {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }

    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn is_any(&self) -> bool {
        self.0.prefix_len() == 0
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Prefix::parse(s)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Prefix::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range, written `9000` or `9000-9010`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first > last {
            return Err(format!("port range {first}-{last} is reversed"));
        }
        Ok(PortRange { first, last })
    }

    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn is_any(&self) -> bool {
        *self == Self::ANY
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number (0-65535)"))
        };
        match text.split_once('-') {
            Some((a, b)) => PortRange::new(port(a)?, port(b)?),
            None => Ok(PortRange::single(port(text)?)),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept `9000` as a JSON number as well as `"9000"` / `"9000-9010"`.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => u16::try_from(n)
                .map(PortRange::single)
                .map_err(|_| serde::de::Error::custom(format!("port {n} is above 65535"))),
            Raw::Text(t) => PortRange::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Transport protocols a rule or flow pattern can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    /// Whether the protocol has port numbers.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }

    /// The family a protocol is tied to, if any (ICMP is IPv4 only).
    pub fn family(self) -> Option<Family> {
        match self {
            Protocol::Icmp => Some(Family::Ipv4),
            Protocol::Icmpv6 => Some(Family::Ipv6),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_print() {
        assert_eq!(Prefix::parse("192.0.2.7").unwrap().to_string(), "192.0.2.7");
        assert_eq!(
            Prefix::parse("192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            Prefix::parse("2001:db8::/32").unwrap().family(),
            Family::Ipv6
        );
        assert!(Prefix::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("host bits"));
        assert!(Prefix::parse("300.1.1.1").is_err());
        assert!(Prefix::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(PortRange::parse("9000").unwrap(), PortRange::single(9000));
        assert_eq!(PortRange::parse("1-2").unwrap().to_string(), "1-2");
        assert!(PortRange::parse("2-1").is_err());
        assert!(PortRange::parse("70000").is_err());
        assert!(PortRange::parse("x").is_err());
        let from_number: PortRange = serde_json::from_str("443").unwrap();
        assert_eq!(from_number, PortRange::single(443));
        assert!(serde_json::from_str::<PortRange>("70000").is_err());
    }

    proptest::proptest! {
        #[test]
        fn prefix_display_round_trips(a: u32, len in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc();
            let p = Prefix::parse(&net.to_string()).unwrap();
            proptest::prop_assert_eq!(Prefix::parse(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn port_range_round_trips(a: u16, b: u16) {
            let (first, last) = if a <= b { (a, b) } else { (b, a) };
            let r = PortRange::new(first, last).unwrap();
            proptest::prop_assert_eq!(PortRange::parse(&r.to_string()).unwrap(), r);
        }
    }
}
