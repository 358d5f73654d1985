//! Reading what the system holds: `ip -j` listings of rules, routes and
//! addresses, `wg show` dumps and handshakes, and the controller's probe
//! datagram. Pure parsing, so every format is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use isdf_api::wireguard::{PeerStatus, WgKey};
use isdf_api::Prefix;

use super::plan::RULE_PRIORITY;

/// The agent's rules in an `ip -j rule show` listing, in `wanted_rules`'
/// form.
pub(super) fn listed_rules(json: &serde_json::Value, v6: bool) -> BTreeSet<(bool, String)> {
    let rules = json.as_array().into_iter().flatten();
    rules
        .filter(|r| r["priority"].as_u64() == Some(u64::from(RULE_PRIORITY)))
        .filter_map(|r| {
            let table = r["table"].as_str()?;
            // `iif` rules list their source as "all".
            let src = r["src"].as_str().filter(|s| *s != "all");
            let selector = match (src, r["iif"].as_str()) {
                // A host prefix is listed without its length.
                (Some(src), _) => {
                    let len = r["srclen"].as_u64().unwrap_or(if v6 { 128 } else { 32 });
                    format!("from {src}/{len}")
                }
                (None, Some(iif)) => format!("iif {iif}"),
                _ => return None,
            };
            Some((v6, format!("{selector} table {table}")))
        })
        .collect()
}

/// The destinations of an `ip -j route show table T` listing.
pub(super) fn listed_routes(json: &serde_json::Value) -> Vec<String> {
    let routes = json.as_array().into_iter().flatten();
    routes
        .filter_map(|r| r["dst"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Whether a listed route destination (`10.0.0.1`, `10.0.0.0/24`) is `prefix`.
pub(super) fn same_prefix(listed: &str, prefix: &Prefix) -> bool {
    match listed.parse::<IpAddr>() {
        Ok(addr) => {
            prefix.net().addr() == addr
                && prefix.net().prefix_len() == prefix.net().max_prefix_len()
        }
        Err(_) => Prefix::parse(listed).is_ok_and(|p| p == *prefix),
    }
}

/// The global addresses of an `ip -j addr show` listing (link-local ones
/// left out).
pub fn listed_addresses(json: &serde_json::Value) -> Vec<(IpAddr, u8)> {
    let infos = json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link["addr_info"].as_array())
        .flatten();
    infos
        .filter(|a| a["scope"] != "link" && a["scope"] != "host")
        .filter_map(|a| {
            let addr = a["local"].as_str()?.parse().ok()?;
            let len = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
            Some((addr, len))
        })
        .collect()
}

/// The nonce of a probe datagram (`PROBE_PREFIX` and 32 hex digits).
pub fn probe_nonce(datagram: &[u8]) -> Option<String> {
    let nonce = datagram.strip_prefix(isdf_api::wireguard::PROBE_PREFIX)?;
    let nonce = std::str::from_utf8(nonce).ok()?.trim_end();
    (nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit())).then(|| nonce.to_owned())
}

/// Peers of a `wg show <if> dump` listing (the interface line skipped).
pub fn parse_dump(dump: &str) -> Vec<PeerStatus> {
    dump.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 8 {
                return None;
            }
            Some(PeerStatus {
                public_key: WgKey::parse(f[0]).ok()?,
                endpoint: f[2].parse().ok(),
                latest_handshake: f[4].parse().ok().filter(|&t: &i64| t > 0),
                rx_bytes: f[5].parse().unwrap_or(0),
                tx_bytes: f[6].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// `wg show <if> latest-handshakes`, by key.
pub(super) fn parse_handshakes(text: &str) -> BTreeMap<WgKey, i64> {
    text.lines()
        .filter_map(|line| {
            let (key, at) = line.split_once('\t')?;
            Some((WgKey::parse(key).ok()?, at.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> WgKey {
        WgKey([n; 32])
    }

    fn p(text: &str) -> Prefix {
        Prefix::parse(text).unwrap()
    }

    #[test]
    fn listings_parse() {
        let rules: serde_json::Value = serde_json::from_str(
            r#"[{"priority":0,"src":"all","table":"local"},
                {"priority":5180,"src":"10.1.0.0","srclen":24,"table":"51820"},
                {"priority":5180,"src":"all","iif":"isdf0","table":"51820"},
                {"priority":32766,"src":"all","table":"main"}]"#,
        )
        .unwrap();
        let listed: Vec<_> = listed_rules(&rules, false).into_iter().collect();
        assert_eq!(
            listed,
            [
                (false, "from 10.1.0.0/24 table 51820".to_owned()),
                (false, "iif isdf0 table 51820".to_owned())
            ]
        );
        let routes: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"10.2.0.0/24","dev":"isdf0"},{"dst":"10.99.0.2","dev":"isdf0"}]"#,
        )
        .unwrap();
        let dsts = listed_routes(&routes);
        assert!(same_prefix(&dsts[0], &p("10.2.0.0/24")));
        assert!(same_prefix(&dsts[1], &p("10.99.0.2/32")));
        assert!(!same_prefix(&dsts[1], &p("10.99.0.0/24")));
        let addrs: serde_json::Value = serde_json::from_str(
            r#"[{"ifname":"wan","addr_info":[{"family":"inet","local":"198.51.100.1","prefixlen":24,"scope":"global"},
                {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
                {"family":"inet6","local":"2001:db8::1","prefixlen":64,"scope":"global"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            listed_addresses(&addrs),
            [
                ("198.51.100.1".parse().unwrap(), 24),
                ("2001:db8::1".parse().unwrap(), 64)
            ]
        );
    }

    #[test]
    fn probe_datagrams_and_dumps_parse() {
        let nonce = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            probe_nonce(format!("ISDF-PROBE {nonce}").as_bytes()).as_deref(),
            Some(nonce)
        );
        assert_eq!(probe_nonce(b"ISDF-PROBE 123"), None);
        assert_eq!(probe_nonce(format!("OTHER {nonce}").as_bytes()), None);
        let dump = format!(
            "PRIV\t{}\t51820\toff\n{}\t(none)\t192.0.2.2:51820\t10.2.0.0/24\t1700000000\t100\t200\t25\n{}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n",
            key(1), key(2), key(3)
        );
        let peers = parse_dump(&dump);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(
            (
                peers[0].latest_handshake,
                peers[0].rx_bytes,
                peers[0].tx_bytes
            ),
            (Some(1_700_000_000), 100, 200)
        );
        assert_eq!((peers[1].endpoint, peers[1].latest_handshake), (None, None));
        let hs = parse_handshakes(&format!("{}\t5\n{}\t0\n", key(2), key(3)));
        assert_eq!(hs.get(&key(2)), Some(&5));
    }
}
