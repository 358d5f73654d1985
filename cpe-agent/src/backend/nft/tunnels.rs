//! The firewall side of the WireGuard tunnels: per tunnel the interval sets
//! `agent_wg<n>_{remote,vpn}_v{4,6}` and rules ahead of everything else. In
//! forward, from the tunnel only remote -> VPN and into it only VPN ->
//! remote, and only what arrives on the interface the kernel routes its
//! source to (strict reverse path: nothing from the WAN, whatever its
//! source claims, enters a tunnel); in forward and input, a remote source
//! arriving on any other interface is dropped; from the tunnel to the
//! router only echo requests and established/related. The tunnels
//! themselves (`wireguard/`) come up after these rules, so they never exist
//! unisolated. Pure.

use std::fmt::Write as _;

use isdf_api::wireguard::Tunnel;
use isdf_api::{Chain, Family, Firewall, Prefix};

use super::sets::{addr_type, prefix, Elements};

/// The config's tunnels (none without a tunnel side).
pub(super) fn tunnels(firewall: &Firewall) -> &[Tunnel] {
    firewall.wireguard.as_ref().map_or(&[], |w| &w.tunnels)
}

/// The agent's sets of tunnel `index`: `agent_wg<index>_remote_v4` (what
/// its peers may send from) and `_vpn_v4` (every prefix of the VPN), and
/// the same for IPv6.
pub(super) fn tunnel_set_name(index: usize, what: &str, v6: bool) -> String {
    format!("agent_wg{index}_{what}_{}", if v6 { "v6" } else { "v4" })
}

pub(super) fn plan_tunnel_sets(s: &mut String, tunnels: &[Tunnel], elements: Elements) {
    for (index, tunnel) in tunnels.iter().enumerate() {
        let remote: Vec<&Prefix> = tunnel
            .peers
            .iter()
            .flat_map(|p| &p.allowed_prefixes)
            .collect();
        let vpn: Vec<&Prefix> = tunnel.vpn_prefixes().collect();
        for (what, prefixes) in [("remote", &remote), ("vpn", &vpn)] {
            for (v6, family) in [(false, Family::Ipv4), (true, Family::Ipv6)] {
                let values: Vec<String> = prefixes
                    .iter()
                    .filter(|p| p.family() == family && elements == Elements::Include)
                    .map(|p| prefix(p))
                    .collect();
                let _ = writeln!(s, "\tset {} {{", tunnel_set_name(index, what, v6));
                let _ = writeln!(s, "\t\ttype {}; flags interval;", addr_type(family));
                if !values.is_empty() {
                    let _ = writeln!(s, "\t\telements = {{ {} }}", values.join(", "));
                }
                let _ = writeln!(s, "\t}}");
            }
        }
    }
}

/// The rules (comment, rule) that keep each tunnel to its VPN, ahead of
/// everything else in `chain`. Forward: from the tunnel only the peers'
/// prefixes to the VPN's, into it only the VPN's to the peers', and from
/// another interface only packets whose source the kernel routes back
/// through that interface: a LAN host's source is routed back out of the
/// LAN, a source forged on the WAN is not (the tunnel's table holds only
/// its peers' prefixes, so the lookup ends in `main`). Forward and
/// input: the peers' prefixes arrive through the tunnel only (no spoofing
/// from the WAN or another tunnel). Input from the tunnel: echo requests and
/// replies to the router's own connections only.
pub(super) fn tunnel_rules(chain: Chain, tunnels: &[Tunnel]) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    for (index, tunnel) in tunnels.iter().enumerate() {
        // Quoted: the config's names are `isdf` and a-z 0-9 - (api checks).
        let interface = format!("\"{}\"", tunnel.interface);
        let comment = |what: &str| format!("agent-wg{index}-{what}");
        for v6 in [false, true] {
            let ip = if v6 { "ip6" } else { "ip" };
            let remote = tunnel_set_name(index, "remote", v6);
            let vpn = tunnel_set_name(index, "vpn", v6);
            if chain == Chain::Forward {
                for (side, not_in) in [("saddr", &remote), ("daddr", &vpn)] {
                    rules.push((
                        comment("in"),
                        format!("iifname {interface} {ip} {side} != @{not_in} counter drop"),
                    ));
                }
                for (side, not_in) in [("saddr", &vpn), ("daddr", &remote)] {
                    rules.push((
                        comment("out"),
                        format!("oifname {interface} {ip} {side} != @{not_in} counter drop"),
                    ));
                }
            }
            if matches!(chain, Chain::Forward | Chain::Input) {
                rules.push((
                    comment("spoof"),
                    format!("iifname != {interface} {ip} saddr @{remote} counter drop"),
                ));
            }
        }
        if chain == Chain::Forward {
            // One rule for both families: `fib` reads either header.
            rules.push((
                comment("entry"),
                format!(
                    "oifname {interface} iifname != {interface} \
                     fib saddr . iif oif missing counter drop"
                ),
            ));
        }
        if chain == Chain::Input {
            let fresh = format!("iifname {interface} ct state new,invalid,untracked");
            for rest in [
                "meta l4proto != { icmp, ipv6-icmp }",
                "icmp type != echo-request",
                "icmpv6 type != echo-request",
            ] {
                rules.push((comment("local"), format!("{fresh} {rest} counter drop")));
            }
        }
    }
    rules
}
