//! What the tunnels should look like, decided without touching the system:
//! the `wg syncconf` file of a tunnel (`render_conf`, a rotating peer as two
//! peers), the policy rules the tunnels need (`wanted_rules`), and which of a
//! rotating peer's keys holds its prefixes (`choose_holder`). Pure and
//! snapshot-tested; `interfaces.rs` makes the system match.
//!
//! Each tunnel gets a routing table of its own (`wireguard_table_base` plus
//! its index) holding its peers' prefixes, and `ip rule`s sending traffic
//! from the router's exported prefixes, from its tunnel address and from the
//! tunnel into that table. Linux goes on to the next rule when a table has
//! no route, so the LAN's other traffic is unaffected, and a relay can carry
//! several customers' VPNs whose prefixes overlap.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use isdf_api::wireguard::{Tunnel, WgKey};
use isdf_api::Prefix;

/// The priority of the agent's `ip rule`s (below the `main` table's 32766,
/// above fw4's and mwan3's marks, which use lower numbers).
pub const RULE_PRIORITY: u32 = 5180;

/// Which of a rotating peer's keys holds its allowed prefixes: the one with
/// the newer handshake (Unix seconds, 0 for none). Handshakes count whole
/// seconds, so on a tie the key whose handshake changed since the `before`
/// look wins; otherwise the holder stays.
pub fn choose_holder(
    holder: WgKey,
    primary: WgKey,
    alternate: WgKey,
    before: &BTreeMap<WgKey, i64>,
    now: &BTreeMap<WgKey, i64>,
) -> WgKey {
    let at = |m: &BTreeMap<WgKey, i64>, k| m.get(&k).copied().unwrap_or(0);
    let (p, a) = (at(now, primary), at(now, alternate));
    if a > p {
        return alternate;
    }
    if p > a {
        return primary;
    }
    let p_new = p != at(before, primary);
    let a_new = a != at(before, alternate);
    match (p_new, a_new) {
        (false, true) if a > 0 => alternate,
        (true, false) => primary,
        _ => holder,
    }
}

/// The `wg setconf` file of `tunnel` with `private_key`. A rotating peer is
/// two peers; its prefixes go to the key `holder` names (by default the
/// primary key).
pub fn render_conf(
    tunnel: &Tunnel,
    private_key: &str,
    holder: impl Fn(WgKey) -> Option<WgKey>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[Interface]\nPrivateKey = {private_key}\nListenPort = {}",
        tunnel.listen_port
    );
    for peer in &tunnel.peers {
        let holds = holder(peer.public_key).unwrap_or(peer.public_key);
        for key in std::iter::once(peer.public_key).chain(peer.alternate_public_key) {
            let _ = writeln!(s, "\n[Peer]\n# {}\nPublicKey = {key}", peer.name);
            if key == holds {
                let _ = writeln!(s, "AllowedIPs = {}", join(&peer.allowed_prefixes));
            }
            if let Some(endpoint) = peer.endpoint {
                let _ = writeln!(s, "Endpoint = {endpoint}");
            }
            if let Some(secs) = peer.keepalive_secs {
                let _ = writeln!(s, "PersistentKeepalive = {secs}");
            }
        }
    }
    s
}

fn join(prefixes: &[Prefix]) -> String {
    let texts: Vec<String> = prefixes.iter().map(Prefix::to_string).collect();
    texts.join(", ")
}

/// The policy rules all `tunnels` need, per family (`false`: IPv4), as `ip
/// rule` arguments after the priority: `from <prefix> table T` and `iif
/// <interface> table T`.
pub fn wanted_rules(tunnels: &[Tunnel], table_base: u32) -> BTreeSet<(bool, String)> {
    let mut rules = BTreeSet::new();
    for (index, tunnel) in tunnels.iter().enumerate() {
        let table = table_base + index as u32;
        for prefix in std::iter::once(&tunnel.address).chain(&tunnel.local_prefixes) {
            // With its length always: `ip -j rule show` lists it so.
            let (network, len) = (prefix.net().network(), prefix.net().prefix_len());
            rules.insert((is_v6(prefix), format!("from {network}/{len} table {table}")));
        }
        for v6 in [false, true] {
            rules.insert((v6, format!("iif {} table {table}", tunnel.interface)));
        }
    }
    rules
}

pub(super) fn is_v6(prefix: &Prefix) -> bool {
    prefix.net().addr().is_ipv6()
}

#[cfg(test)]
mod tests {
    use super::*;
    use isdf_api::wireguard::Peer;

    fn key(n: u8) -> WgKey {
        WgKey([n; 32])
    }

    fn p(text: &str) -> Prefix {
        Prefix::parse(text).unwrap()
    }

    #[test]
    fn prefixes_follow_the_newer_handshake() {
        let (p_, a) = (key(1), key(2));
        let hs = |pairs: &[(WgKey, i64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        let none = hs(&[]);
        assert_eq!(
            choose_holder(p_, p_, a, &none, &none),
            p_,
            "no handshake yet"
        );
        assert_eq!(choose_holder(p_, p_, a, &none, &hs(&[(p_, 100)])), p_);
        assert_eq!(
            choose_holder(p_, p_, a, &none, &hs(&[(p_, 100), (a, 101)])),
            a
        );
        assert_eq!(
            choose_holder(a, p_, a, &none, &hs(&[(p_, 102), (a, 101)])),
            p_
        );
        // Same second: the one that just changed wins, else nothing moves.
        let before = hs(&[(p_, 100)]);
        let now = hs(&[(p_, 100), (a, 100)]);
        assert_eq!(choose_holder(p_, p_, a, &before, &now), a);
        assert_eq!(choose_holder(a, p_, a, &now, &now), a);
        assert_eq!(choose_holder(p_, p_, a, &now, &now), p_);
        let before = hs(&[(p_, 99), (a, 100)]);
        assert_eq!(choose_holder(a, p_, a, &before, &now), p_);
    }

    fn tunnel() -> Tunnel {
        Tunnel {
            interface: "isdf0".into(),
            listen_port: 51820,
            address: p("10.99.0.1/32"),
            local_prefixes: vec![p("10.1.0.0/24"), p("2001:db8:1::/64")],
            peers: vec![
                Peer {
                    name: "b".into(),
                    public_key: key(2),
                    alternate_public_key: Some(key(3)),
                    endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                    allowed_prefixes: vec![p("10.2.0.0/24"), p("10.99.0.2/32")],
                    keepalive_secs: Some(25),
                },
                Peer {
                    name: "c".into(),
                    public_key: key(4),
                    alternate_public_key: None,
                    endpoint: None,
                    allowed_prefixes: vec![p("10.3.0.0/24")],
                    keepalive_secs: None,
                },
            ],
        }
    }

    #[test]
    fn the_wg_config_has_both_keys_of_a_rotating_peer() {
        let t = tunnel();
        insta::assert_snapshot!(render_conf(&t, "PRIVATE", |_| None));
        let moved = render_conf(&t, "PRIVATE", |k| (k == key(2)).then_some(key(3)));
        let b_new = moved.split("[Peer]").nth(2).unwrap();
        assert!(
            b_new.contains(&key(3).to_string())
                && b_new.contains("AllowedIPs = 10.2.0.0/24, 10.99.0.2"),
            "{moved}"
        );
        let b_old = moved.split("[Peer]").nth(1).unwrap();
        assert!(!b_old.contains("AllowedIPs"), "{moved}");
    }

    #[test]
    fn rules_cover_exported_prefixes_the_address_and_the_interface() {
        let rules: Vec<_> = wanted_rules(&[tunnel()], 51820).into_iter().collect();
        insta::assert_debug_snapshot!(rules);
    }
}
