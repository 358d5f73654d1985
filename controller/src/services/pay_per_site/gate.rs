//! The `pay-per-site` service as primitives (pure): the gate in front of a
//! catalog's sites and the passes that open it.
//!
//! A site is gated first by the name its flows carry, then by its addresses.
//! Every site of the device's catalog is a group of `flow_names`: the
//! router reads the name in the first packets of each LAN web flow (TLS
//! server name, HTTP Host, the QUIC Initial's server name), whatever
//! address it goes to and however the client resolved it (a hard-coded
//! address, DNS over HTTPS to any resolver). A flow named for the site is
//! gated; a flow named for another site is not, even to an address the site
//! shares (a CDN): no collateral. Flows that carry no readable name (other
//! ports, Encrypted Client Hello, no SNI) are judged by the site's address
//! sets, which the router's resolver fills from the answers for the site's
//! domains, which hold from the start what the controller resolved for
//! them itself, and which the named flows teach their server addresses.
//!
//! Gated: HTTP is answered with a 302 to the portal (naming router and site
//! with a link only the controller can sign), HTTPS is reset, QUIC is
//! dropped so browsers fall back, everything else is rejected. A
//! household's pass adds `accept` rules in front that hold `until` the pass
//! ends, so the kernel closes the site on time by itself, online or not.
//! Bypass is closed: LAN DNS to any resolver is redirected to the router's,
//! DNS over TLS/QUIC is refused, known DNS-over-HTTPS resolvers are blocked
//! and their names (and the browsers' canary domain) answer NXDOMAIN.

use std::collections::BTreeMap;
use std::net::IpAddr;

use isdf_api::{
    Action, Chain, DnsPolicy, DnsSetFill, DomainPattern, ElementValue, Family, Firewall, FlowName,
    FlowNames, InterfaceRole, LocalAnswer, Match, NameGroup, PortRange, PortalRedirect, PortalSite,
    Prefix, Protocol, Rule, Set, SetElement, SetKey, SetName,
};

use super::links::PortalLinks;
use super::PayPerSiteSpec;

/// The port on the router where redirected HTTP requests arrive (the
/// agent's portal responder).
pub const ROUTER_PORTAL_PORT: u16 = 8042;
const DNS_PORT: u16 = 53;

/// A site of a catalog, as the compiler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSite {
    pub id: i64,
    pub domains: Vec<DomainPattern>,
    /// What the controller resolved for its names (`cluster/site_resolution.rs`):
    /// gated from the router's start, before any LAN host asks its resolver.
    pub addresses: Vec<IpAddr>,
}

/// Sites by catalog name, each list sorted by id.
pub type Catalogs = BTreeMap<String, Vec<CatalogSite>>;

/// What the compiler knows of one device for `pay-per-site`: its catalogs,
/// its household's passes (site id -> end, Unix seconds) and the portal.
pub struct DeviceShop<'a> {
    pub device_id: &'a str,
    pub catalogs: &'a Catalogs,
    pub passes: &'a BTreeMap<i64, i64>,
    pub portal: &'a PortalLinks,
    /// Whether the router's agent reads flow names (`reads_flow_names`);
    /// an older one gets the gate by address alone, which it can parse.
    pub reads_names: bool,
}

/// The first agent version that reads flow names (`flow_names`,
/// `flow_name`, `portal` rules).
pub const FLOW_NAMES_SINCE: &str = "0.2.0";

/// Whether an agent reporting `version` reads flow names: every agent but
/// one that reported an older release (an agent refuses a config with
/// fields it does not know, and would then never take another, not even
/// the release that upgrades it). A router that never reported gets names;
/// if its agent refuses them, its report of the refusal names its version
/// and it is compiled again.
pub fn reads_flow_names(version: Option<&str>) -> bool {
    version.is_none_or(|v| {
        isdf_api::release::check_version(v).is_err()
            || isdf_api::release::compare_versions(v, FLOW_NAMES_SINCE).is_ge()
    })
}

/// Well-known DNS-over-HTTPS resolvers (their addresses are blocked on port
/// 443) and the hostnames browsers use to reach them (NXDOMAIN). Operators
/// add more in the spec.
const DOH_ADDRESSES: &[&str] = &[
    // Cloudflare
    "1.1.1.1",
    "1.0.0.1",
    "1.1.1.2",
    "1.0.0.2",
    "1.1.1.3",
    "1.0.0.3",
    "2606:4700:4700::1111",
    "2606:4700:4700::1001",
    "2606:4700:4700::1112",
    "2606:4700:4700::1002",
    // Google
    "8.8.8.8",
    "8.8.4.4",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
    // Quad9
    "9.9.9.9",
    "149.112.112.112",
    "2620:fe::fe",
    "2620:fe::9",
    // OpenDNS
    "208.67.222.222",
    "208.67.220.220",
    "2620:119:35::35",
    "2620:119:53::53",
    // AdGuard
    "94.140.14.14",
    "94.140.15.15",
    "2a10:50c0::ad1:ff",
    "2a10:50c0::ad2:ff",
    // NextDNS
    "45.90.28.0",
    "45.90.30.0",
    // CleanBrowsing
    "185.228.168.168",
    "185.228.169.168",
];

const DOH_HOSTNAMES: &[&str] = &[
    "dns.google",
    "cloudflare-dns.com",
    "one.one.one.one",
    "dns.quad9.net",
    "doh.opendns.com",
    "dns.adguard-dns.com",
    "dns.adguard.com",
    "dns.nextdns.io",
    "doh.cleanbrowsing.org",
    "doh.dns.sb",
];

/// Answered NXDOMAIN so browsers turn their own DNS over HTTPS off
/// (Firefox's canary domain) and Apple's Private Relay stays off.
const CANARY_DOMAINS: &[&str] = &[
    "use-application-dns.net",
    "mask.icloud.com",
    "mask-h2.icloud.com",
];

fn name(text: &str) -> SetName {
    SetName::parse(text).expect("pay-per-site names have a fixed shape")
}

fn suffix(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "v4",
        Family::Ipv6 => "v6",
    }
}

fn addr_key(family: Family) -> SetKey {
    match family {
        Family::Ipv4 => SetKey::Ipv4Addr,
        Family::Ipv6 => SetKey::Ipv6Addr,
    }
}

const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// A rule from the LAN side of the router.
fn lan_rule(id: &str, chain: Chain, matches: Match, action: Action) -> Rule {
    Rule {
        id: name(id),
        chain,
        matches: Match {
            in_interface: Some(InterfaceRole::Lan),
            ..matches
        },
        action,
        add_endpoints_to: None,
    }
}

fn port_match(protocol: Protocol, port: u16) -> Match {
    Match {
        protocol: Some(protocol),
        dport: Some(PortRange::single(port)),
        ..Match::default()
    }
}

/// Adds the `pay-per-site` primitives of `spec` for the device of `shop` as
/// of `now` (Unix seconds): passes ended by then are left out.
pub fn add_to(firewall: &mut Firewall, spec: &PayPerSiteSpec, shop: &DeviceShop<'_>, now: i64) {
    let sites = shop
        .catalogs
        .get(&spec.catalog)
        .map_or(&[][..], Vec::as_slice);

    // DNS to any resolver goes to the router's.
    for (protocol, id) in [
        (Protocol::Udp, "pps-dns-udp"),
        (Protocol::Tcp, "pps-dns-tcp"),
    ] {
        firewall.rules.push(lan_rule(
            id,
            Chain::Prerouting,
            port_match(protocol, DNS_PORT),
            Action::Redirect { port: DNS_PORT },
        ));
    }
    // DNS over TLS and over QUIC.
    firewall.rules.push(lan_rule(
        "pps-dot",
        Chain::Forward,
        port_match(Protocol::Tcp, 853),
        Action::Reject,
    ));
    firewall.rules.push(lan_rule(
        "pps-doq",
        Chain::Forward,
        port_match(Protocol::Udp, 853),
        Action::Drop,
    ));
    // DNS over HTTPS to known resolvers.
    let doh: Vec<IpAddr> = DOH_ADDRESSES
        .iter()
        .map(|a| a.parse().expect("valid built-in address"))
        .chain(spec.extra_doh_addresses.iter().copied())
        .collect();
    for family in FAMILIES {
        let set = name(&format!("pps_doh_{}", suffix(family)));
        let mut elements: Vec<IpAddr> = doh
            .iter()
            .copied()
            .filter(|a| Prefix::from_addr(*a).family() == family)
            .collect();
        elements.sort();
        elements.dedup();
        firewall.sets.push(Set {
            name: set.clone(),
            key: addr_key(family),
            elements: elements
                .into_iter()
                .map(|a| SetElement {
                    value: ElementValue::Addr(Prefix::from_addr(a)),
                    expires_at: None,
                })
                .collect(),
        });
        for (protocol, action, what) in [
            (Protocol::Tcp, Action::Reject, "doh"),
            (Protocol::Udp, Action::Drop, "doh3"),
        ] {
            firewall.rules.push(lan_rule(
                &format!("pps-{what}-{}", suffix(family)),
                Chain::Forward,
                Match {
                    dst_in_set: Some(set.clone()),
                    ..port_match(protocol, 443)
                },
                action,
            ));
        }
    }

    let mut fill_sets = Vec::new();
    let mut portal_sites = Vec::new();
    let mut groups = Vec::new();
    // Every site's rules by name, then every site's by address: a flow has
    // one name, so neither order changes what a packet meets, and the
    // router reaches each run with one lookup of the flow's name.
    let (mut by_name, mut by_address) = (Vec::new(), Vec::new());
    for site in sites {
        let pass_ends = shop.passes.get(&site.id).copied().filter(|end| *end > now);
        let set_of = |family| name(&format!("pps{}_{}", site.id, suffix(family)));
        for family in FAMILIES {
            // The controller's own answers are the config's elements (the
            // agent marks them so); the router's resolver, and the flows
            // named for the site, add their own.
            firewall.sets.push(Set {
                name: set_of(family),
                key: addr_key(family),
                elements: site
                    .addresses
                    .iter()
                    .map(|a| Prefix::from_addr(*a))
                    .filter(|p| p.family() == family)
                    .map(|p| SetElement {
                        value: ElementValue::Addr(p),
                        expires_at: None,
                    })
                    .collect(),
            });
        }
        fill_sets.push(DnsSetFill {
            domains: site.domains.clone(),
            ipv4_set: set_of(Family::Ipv4),
            ipv6_set: set_of(Family::Ipv6),
        });
        groups.push(NameGroup {
            id: name(&format!("pps{}", site.id)),
            domains: site.domains.clone(),
            ipv4_set: set_of(Family::Ipv4),
            ipv6_set: set_of(Family::Ipv6),
        });
        portal_sites.push(PortalSite {
            domains: site.domains.clone(),
            url: shop.portal.site_url(shop.device_id, site.id),
        });
        if !shop.reads_names {
            add_address_gate(firewall, site.id, pass_ends);
            continue;
        }
        // Flows named for the site, then those to its addresses that carry
        // no name; each the same four rules.
        let named = Match {
            flow_name: Some(FlowName::Group(name(&format!("pps{}", site.id)))),
            ..Match::default()
        };
        let unnamed = |family| Match {
            flow_name: Some(FlowName::Unnamed),
            dst_in_set: Some(set_of(family)),
            ..Match::default()
        };
        let by = [
            (named, String::new()),
            (unnamed(Family::Ipv4), "-v4".to_owned()),
            (unnamed(Family::Ipv6), "-v6".to_owned()),
        ];
        for (to_site, family) in by {
            let rules = if family.is_empty() {
                &mut by_name
            } else {
                &mut by_address
            };
            let id = |what: &str| {
                let kind = if family.is_empty() { "-named" } else { "" };
                format!("pps{}{kind}-{what}{family}", site.id)
            };
            let with = |protocol, port| Match {
                protocol: Some(protocol),
                dport: Some(PortRange::single(port)),
                ..to_site.clone()
            };
            if let Some(end) = pass_ends {
                let until = Match {
                    until: Some(end),
                    ..to_site.clone()
                };
                rules.push(lan_rule(&id("pass"), Chain::Forward, until, Action::Accept));
            }
            let gate = [
                ("portal", with(Protocol::Tcp, 80), Action::Portal),
                ("quic", with(Protocol::Udp, 443), Action::Drop),
                ("gate", to_site.clone(), Action::Reject),
            ];
            for (what, matches, action) in gate {
                rules.push(lan_rule(&id(what), Chain::Forward, matches, action));
            }
        }
    }
    firewall.rules.extend(by_name);
    firewall.rules.extend(by_address);

    let mut nxdomain: Vec<DomainPattern> = DOH_HOSTNAMES
        .iter()
        .chain(CANARY_DOMAINS)
        .map(|d| DomainPattern::parse(d).expect("valid built-in domain"))
        .chain(spec.extra_doh_hostnames.iter().cloned())
        .collect();
    nxdomain.sort();
    nxdomain.dedup();
    firewall.dns = Some(DnsPolicy {
        max_ttl_secs: Some(spec.max_ttl_secs),
        fill_sets,
        local_answers: nxdomain
            .into_iter()
            .map(|domain| LocalAnswer {
                domain,
                addresses: Vec::new(),
            })
            .collect(),
    });
    if shop.reads_names {
        firewall.flow_names = Some(FlowNames {
            groups,
            learn_secs: spec.max_ttl_secs,
        });
    }
    firewall.portal = Some(PortalRedirect {
        port: ROUTER_PORTAL_PORT,
        default_url: shop.portal.device_url(shop.device_id),
        sites: portal_sites,
    });
}

/// The gate by address alone, for agents older than flow names
/// (`FLOW_NAMES_SINCE`): new HTTP connections to the site's addresses are
/// redirected to the router's portal responder, the rest as by name.
fn add_address_gate(firewall: &mut Firewall, site: i64, pass_ends: Option<i64>) {
    for family in FAMILIES {
        let set = name(&format!("pps{site}_{}", suffix(family)));
        let to_site = Match {
            dst_in_set: Some(set.clone()),
            ..Match::default()
        };
        let http = Match {
            dst_in_set: Some(set.clone()),
            ..port_match(Protocol::Tcp, 80)
        };
        let id = |what: &str| format!("pps{site}-{what}-{}", suffix(family));
        if let Some(end) = pass_ends {
            let until = |m: Match| Match {
                until: Some(end),
                ..m
            };
            firewall.rules.push(lan_rule(
                &id("open"),
                Chain::Prerouting,
                until(http.clone()),
                Action::Accept,
            ));
            firewall.rules.push(lan_rule(
                &id("pass"),
                Chain::Forward,
                until(to_site.clone()),
                Action::Accept,
            ));
        }
        let redirect = Action::Redirect {
            port: ROUTER_PORTAL_PORT,
        };
        firewall
            .rules
            .push(lan_rule(&id("portal"), Chain::Prerouting, http, redirect));
        let quic = Match {
            dst_in_set: Some(set),
            ..port_match(Protocol::Udp, 443)
        };
        firewall
            .rules
            .push(lan_rule(&id("quic"), Chain::Forward, quic, Action::Drop));
        firewall.rules.push(lan_rule(
            &id("gate"),
            Chain::Forward,
            to_site,
            Action::Reject,
        ));
    }
}
