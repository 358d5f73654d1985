//! What both planners take besides the config, pure: the router's
//! interfaces by role (settings `lan_interfaces` and `wan_interfaces`: what a
//! rule's `in_interface: lan|wan` stands for; a role with no interface is an
//! apply error, so one config fits routers whose interfaces are named
//! differently), the NFQUEUE numbers (`classify` rules', the name reader's,
//! the portal's) and the mark bits of flow names, the
//! anti-spoofing rules' id, the router's LAN prefixes as the kernel routes
//! them (`lan_prefixes`), and element timeouts computed from absolute
//! expiries.

use std::net::{Ipv4Addr, Ipv6Addr};

use isdf_api::{InterfaceRole, Prefix, Rule};

/// The NFQUEUE number `classify` rules queue to.
pub const CLASSIFY_QUEUE: u16 = 4242;

/// The NFQUEUE the first packets of the LAN's web flows go to, for the
/// name they carry (`flow_names`); bypassed while no agent listens.
pub const NAMES_QUEUE: u16 = CLASSIFY_QUEUE + 1;

/// The NFQUEUE `portal` rules send HTTP requests to, to be answered; not
/// bypassed: with no agent listening the request is dropped.
pub const PORTAL_QUEUE: u16 = CLASSIFY_QUEUE + 2;

/// The bits of a connection's mark (and of a packet's, from the name
/// reader's verdict to the rules) that say what name the flow carried:
/// `TAG_UNDECIDED` until the router decides, then `TAG_UNNAMED`,
/// `TAG_UNNAMED_ELSEWHERE`, `TAG_NAMED_ELSEWHERE` or a group's tag
/// (`group_tag`). Other bits are left as they are: other software on the
/// router may use them.
pub const NAME_TAG_MASK: u32 = 0x0fff_0000;
const NAME_TAG_SHIFT: u32 = 16;
/// Not decided yet: a web flow whose name the router has not read.
pub const TAG_UNDECIDED: u32 = 0;
/// The flow carries no name the router can read (or is no web flow), and
/// its server address was in a group's sets when it started: rules with
/// `flow_name: unnamed` judge it by its address.
pub const TAG_UNNAMED: u32 = 1 << NAME_TAG_SHIFT;
/// The flow named a site in no group.
pub const TAG_NAMED_ELSEWHERE: u32 = 2 << NAME_TAG_SHIFT;
/// The flow carries no name, and its server address was in no group's
/// sets when it started: no rule by name or address concerns it, and it
/// passes them all with one comparison (bulk traffic, most of a LAN's).
pub const TAG_UNNAMED_ELSEWHERE: u32 = 3 << NAME_TAG_SHIFT;

/// The tag of the `index`-th group of `flow_names` (validated: fewer than
/// `MAX_NAME_GROUPS`, so it fits the mask).
pub fn group_tag(index: usize) -> u32 {
    ((index as u32 + FIRST_GROUP) << NAME_TAG_SHIFT) & NAME_TAG_MASK
}

/// The tag value of the first group.
const FIRST_GROUP: u32 = 4;

/// The group index of a tag, None for the other values.
pub fn tag_group(tag: u32) -> Option<usize> {
    ((tag & NAME_TAG_MASK) >> NAME_TAG_SHIFT)
        .checked_sub(FIRST_GROUP)
        .map(|i| i as usize)
}

/// How many packets from the client a web flow may send before the router
/// decides its name: enough for a ClientHello split over several segments
/// or Initial packets. A flow still undecided then (no agent running) is
/// judged as unnamed, by its addresses.
pub const NAME_READ_PACKETS: u8 = 8;

/// Packet marks of `Queueing::Mark` (kernels without nft's queue): the name
/// reader's packets and the portal's requests, queued by iptables rules.
pub const NAME_QUEUE_MARK: u32 = 0x2000_0000;
pub const PORTAL_MARK: u32 = 0x1000_0000;

/// The comment, and so the counter's rule id, of the rules that drop the
/// router's own LAN sources arriving on another interface (both backends).
pub const ANTISPOOF_RULE_ID: &str = "agent-antispoof";

/// The comment of the rule that leads packets from outside the LAN to the
/// anti-spoofing rules, in a chain of their own (both backends).
pub const ANTISPOOF_JUMP_ID: &str = "agent-antispoof-check";

/// The router's interfaces by role: what `in_interface: lan` and
/// `in_interface: wan` stand for. The config names roles, never interfaces,
/// so one config fits routers whose interfaces are named differently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// Setting `lan_interfaces`.
    pub lan: Vec<String>,
    /// Setting `wan_interfaces`.
    pub wan: Vec<String>,
}

impl Interfaces {
    /// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
    pub const MAX_NAME_LEN: usize = 15;

    /// The interface names `rule` matches on (None: it matches any
    /// interface), or why the router cannot enforce it: no interface of that
    /// role is configured, or a configured name is not an interface name.
    /// A trailing `*` matches every name with that prefix (nft's wildcard).
    pub fn for_rule(&self, rule: &Rule) -> anyhow::Result<Option<&[String]>> {
        let Some(role) = rule.matches.in_interface else {
            return Ok(None);
        };
        let (names, setting, role_name) = match role {
            InterfaceRole::Lan => (&self.lan, "lan_interfaces", "lan"),
            InterfaceRole::Wan => (&self.wan, "wan_interfaces", "wan"),
        };
        if names.is_empty() {
            anyhow::bail!(
                "rule `{}` matches in_interface {role_name}, but the agent setting \
                 `{setting}` lists no interface",
                rule.id
            );
        }
        if let Some(bad) = names.iter().find(|n| !is_interface_name(n)) {
            anyhow::bail!(
                "the agent setting `{setting}` holds `{bad}`, which is not an interface name \
                 (1 to {} printable characters without quotes, `/`, `\\` or spaces)",
                Self::MAX_NAME_LEN
            );
        }
        Ok(Some(names))
    }
}

/// Whether `name` can be an interface name, and so is safe to place in a
/// script between double quotes or as one word.
fn is_interface_name(name: &str) -> bool {
    (1..=Interfaces::MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'/' | b'\''))
}

/// Remaining milliseconds of an element expiring at `expires_at` (Unix
/// seconds) at `now_ms`; None when it has no expiry; Some(0) when it has
/// already expired (leave it out).
pub fn remaining_ms(expires_at: Option<i64>, now_ms: i64) -> Option<u64> {
    expires_at.map(|e| u64::try_from(e.saturating_mul(1000).saturating_sub(now_ms)).unwrap_or(0))
}

/// Unix seconds of `now_ms`, to the nearest second, for kernels that count
/// timeouts in whole seconds.
pub fn nearest_second(now_ms: i64) -> i64 {
    now_ms.saturating_add(500).div_euclid(1000)
}

/// Remaining seconds of an element expiring at `expires_at`; None when it has
/// no expiry; Some(0) when it has already expired (leave it out).
pub fn remaining_secs(expires_at: Option<i64>, now: i64) -> Option<u64> {
    expires_at.map(|e| u64::try_from(e.saturating_sub(now)).unwrap_or(0))
}

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x0001;
/// `RTF_REJECT`, `RTF_ANYCAST` and `RTF_LOCAL` (`linux/ipv6_route.h`).
const RTF_NOT_A_LAN_ROUTE: u32 = 0x0200 | 0x0010_0000 | 0x8000_0000;

/// The router's own LAN prefixes: those routed out of an interface of
/// `lan`, connected or through a router on the LAN, IPv4 from `route_v4`
/// (the text of `/proc/net/route`: the `main` table) and IPv6 from
/// `route_v6` (that of `/proc/net/ipv6_route`: every table), sorted,
/// without duplicates. Left out: the default route (a LAN that routes
/// everything would make every source a LAN one), link-local and multicast
/// prefixes (they exist on every interface), and local, anycast and reject
/// routes. Lines that do not parse are skipped: a listing the kernel
/// changed must not stop the firewall from applying.
pub fn lan_prefixes(route_v4: &str, route_v6: &str, lan: &[String]) -> Vec<Prefix> {
    let on_lan = |name: &str| lan.iter().any(|l| l == name);
    let mut prefixes: Vec<Prefix> = route_v4
        .lines()
        .skip(1)
        .filter_map(|line| ipv4_route(line).filter(|(dev, _)| on_lan(dev)))
        .chain(
            route_v6
                .lines()
                .filter_map(|line| ipv6_route(line).filter(|(dev, _)| on_lan(dev))),
        )
        .map(|(_, prefix)| prefix)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// One line of `/proc/net/route`: `Iface Destination Gateway Flags RefCnt
/// Use Metric Mask ...`, addresses as the kernel's 32-bit words in hex
/// (native byte order).
fn ipv4_route(line: &str) -> Option<(&str, Prefix)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [dev, destination, _gateway, flags, _, _, _, mask, ..] = fields[..] else {
        return None;
    };
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let (destination, mask) = (Ipv4Addr::from(word(destination)?), word(mask)?);
    let len = u32::from_be_bytes(mask).leading_ones();
    let flags = u32::from_str_radix(flags, 16).ok()?;
    let usable = flags & RTF_UP != 0 && flags & RTF_NOT_A_LAN_ROUTE == 0;
    let link_local = destination.is_link_local() || destination.is_multicast();
    if !usable || len == 0 || link_local {
        return None;
    }
    Some((dev, Prefix::parse(&format!("{destination}/{len}")).ok()?))
}

/// One line of `/proc/net/ipv6_route`: `destination length source length
/// next-hop metric refcount use flags interface`, addresses in 32 hex
/// digits.
fn ipv6_route(line: &str) -> Option<(&str, Prefix)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [destination, len, _, _, _, _, _, _, flags, dev] = fields[..] else {
        return None;
    };
    let destination = Ipv6Addr::from(u128::from_str_radix(destination, 16).ok()?);
    let len = u8::from_str_radix(len, 16).ok()?;
    let flags = u32::from_str_radix(flags, 16).ok()?;
    let usable = flags & RTF_UP != 0 && flags & RTF_NOT_A_LAN_ROUTE == 0;
    let link_local = destination.is_unicast_link_local() || destination.is_multicast();
    if !usable || len == 0 || link_local {
        return None;
    }
    Some((dev, Prefix::parse(&format!("{destination}/{len}")).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/net/route` word for `addr`, as this machine's kernel prints it.
    fn word(addr: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(addr))
    }

    fn route_v4() -> String {
        let line = |dev: &str, dst: [u8; 4], flags: &str, mask: [u8; 4]| {
            format!(
                "{dev}\t{}\t00000000\t{flags}\t0\t0\t0\t{}\t0\t0\t0\n",
                word(dst),
                word(mask)
            )
        };
        [
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                .to_owned(),
            line("wan", [0, 0, 0, 0], "0003", [0, 0, 0, 0]),
            line("lan", [0, 0, 0, 0], "0003", [0, 0, 0, 0]),
            line("lan", [192, 0, 2, 0], "0001", [255, 255, 255, 0]),
            line("lan", [10, 0, 0, 0], "0003", [255, 0, 0, 0]),
            line("lan", [169, 254, 0, 0], "0001", [255, 255, 0, 0]),
            line("lan", [192, 0, 2, 128], "0201", [255, 255, 255, 128]),
            line("wlan0", [198, 18, 0, 0], "0001", [255, 254, 0, 0]),
            line("wan", [198, 51, 100, 0], "0001", [255, 255, 255, 0]),
            line("lan", [203, 0, 113, 0], "0000", [255, 255, 255, 0]),
        ]
        .concat()
    }

    /// Lines as `/proc/net/ipv6_route` shows them on a router with
    /// 2001:db8:1::1/64 on `lan` and a /48 behind a router on it.
    const ROUTE_V6: &str = "\
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001      lan
20010db8000500000000000000000000 30 00000000000000000000000000000000 00 20010db8000100000000000000000007 00000400 00000001 00000000 00000003      lan
20010db8000200000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001      wan
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001      lan
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000200000000000000000002 00000400 00000001 00000000 00000003      lan
20010db8000100000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001      lan
20010db8000100000000000000000000 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80100001      lan
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001      lan
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo
garbage
";

    #[test]
    fn the_lan_prefixes_are_the_routes_out_of_lan_interfaces() {
        let lan = ["lan".to_owned(), "wlan0".to_owned()];
        let prefixes: Vec<String> = lan_prefixes(&route_v4(), ROUTE_V6, &lan)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            prefixes,
            [
                "10.0.0.0/8",
                "192.0.2.0/24",
                "198.18.0.0/15",
                "2001:db8:1::/64",
                "2001:db8:5::/48"
            ]
        );
        assert!(lan_prefixes(&route_v4(), ROUTE_V6, &[]).is_empty());
        assert!(lan_prefixes("", "", &lan).is_empty());
    }
}
