//! LAN hosts seen running BitTorrent get a closer look at their new TCP
//! flows for a while: the classifier is shown more of each flow's first
//! packets (`WATCH_PACKETS` instead of the config's budget), so an
//! encrypted handshake that took more packets than usual (a split message,
//! extra acknowledgements, a slow peer) is still followed to its end. The
//! classifier's rules stay exactly as strict: only what it sees grows.
//!
//! Like the router's blocks, this lives beside the config: the agent adds
//! its own sets and rules (`agent_bt_watch_*`) in front of the config's
//! rules when the config classifies TCP, each host with its end as a kernel
//! timeout. The list is kept in memory only: after a restart hosts are
//! watched again from their next detection.

use std::collections::BTreeMap;
use std::net::IpAddr;

use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, Match, Prefix, Protocol, Rule, Set, SetElement,
    SetKey, SetName,
};

/// How long a host stays watched after its latest detection.
pub const WATCH_MS: i64 = 10 * 60 * 1000;
/// Hosts watched at once; the one whose watch ends first makes room.
pub const MAX_WATCHED: usize = 256;
/// First packets of a watched host's TCP flows shown to the classifier.
pub const WATCH_PACKETS: u16 = 24;

#[derive(Debug, Default)]
pub struct WatchedHosts {
    /// Host -> end of its watch (Unix milliseconds).
    hosts: BTreeMap<IpAddr, i64>,
}

impl WatchedHosts {
    /// Watches `host` for `WATCH_MS` from `now_ms`; returns whether that is
    /// news (a host not watched before, so the ruleset must change).
    pub fn watch(&mut self, host: IpAddr, now_ms: i64) -> bool {
        self.hosts.retain(|_, end| *end > now_ms);
        if self.hosts.len() >= MAX_WATCHED && !self.hosts.contains_key(&host) {
            let first_to_end = self
                .hosts
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(h, _)| *h);
            if let Some(first) = first_to_end {
                self.hosts.remove(&first);
            }
        }
        self.hosts.insert(host, now_ms + WATCH_MS).is_none()
    }

    pub fn watched(&self, now_ms: i64) -> impl Iterator<Item = IpAddr> + '_ {
        self.hosts
            .iter()
            .filter(move |(_, end)| **end > now_ms)
            .map(|(host, _)| *host)
    }

    /// `firewall` with the watch in front of its rules, when it classifies
    /// TCP: per family, a set of the watched hosts and two rules queueing
    /// their TCP flows' first `WATCH_PACKETS` packets (from them and to
    /// them) as the config's classify rule does.
    pub fn merged_into(&self, firewall: &mut Firewall, now_ms: i64) {
        let mut rules = Vec::new();
        for (family, key, suffix) in [
            (Family::Ipv4, SetKey::Ipv4Addr, "v4"),
            (Family::Ipv6, SetKey::Ipv6Addr, "v6"),
        ] {
            let Some(classify) = firewall.rules.iter().find(|r| {
                r.action == Action::Classify
                    && r.matches.protocol == Some(Protocol::Tcp)
                    && r.matches.family == Some(family)
            }) else {
                continue;
            };
            let name = SetName::parse(&format!("agent_bt_watch_{suffix}")).expect("fixed name");
            let elements = self
                .hosts
                .iter()
                .filter(|(host, end)| {
                    **end > now_ms && Prefix::from_addr(**host).family() == family
                })
                .map(|(host, end)| SetElement {
                    value: ElementValue::Addr(Prefix::from_addr(*host)),
                    expires_at: Some((end + 999).div_euclid(1000)),
                })
                .collect();
            for (side, matches) in [
                (
                    "from",
                    Match {
                        src_in_set: Some(name.clone()),
                        ..classify.matches.clone()
                    },
                ),
                (
                    "to",
                    Match {
                        dst_in_set: Some(name.clone()),
                        ..classify.matches.clone()
                    },
                ),
            ] {
                rules.push(Rule {
                    id: SetName::parse(&format!("agent-bt-watch-{side}-{suffix}"))
                        .expect("fixed name"),
                    chain: Chain::Forward,
                    matches: Match {
                        first_packets: Some(WATCH_PACKETS),
                        ..matches
                    },
                    action: Action::Classify,
                    add_endpoints_to: classify.add_endpoints_to.clone(),
                });
            }
            firewall.sets.push(Set {
                name,
                key,
                elements,
            });
        }
        rules.append(&mut firewall.rules);
        firewall.rules = rules;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifying() -> Firewall {
        let spec = serde_json::json!({
            "sets": [{"name": "bt_v4", "key": "ipv4-endpoint"}],
            "rules": [{"id": "bt-classify-tcp-v4", "chain": "forward", "action": "classify",
                       "match": {"family": "ipv4", "protocol": "tcp", "first_packets": 12},
                       "add_endpoints_to": {"set": "bt_v4", "timeout_secs": 600}}]
        });
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn watched_hosts_get_more_packets_classified_for_ten_minutes() {
        let mut watched = WatchedHosts::default();
        let host: IpAddr = "192.168.1.10".parse().unwrap();
        assert!(watched.watch(host, 1_000));
        assert!(!watched.watch(host, 2_000), "watched already: renewed");
        let mut firewall = classifying();
        watched.merged_into(&mut firewall, 3_000);
        let ids: Vec<_> = firewall.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "agent-bt-watch-from-v4",
                "agent-bt-watch-to-v4",
                "bt-classify-tcp-v4"
            ]
        );
        assert_eq!(firewall.rules[0].matches.first_packets, Some(WATCH_PACKETS));
        assert_eq!(firewall.rules[0].matches.protocol, Some(Protocol::Tcp));
        assert_eq!(
            firewall.rules[0].add_endpoints_to,
            firewall.rules[2].add_endpoints_to
        );
        let set = firewall
            .sets
            .iter()
            .find(|s| s.name.as_str() == "agent_bt_watch_v4")
            .unwrap();
        assert_eq!(set.elements.len(), 1);
        assert_eq!(
            set.elements[0].expires_at,
            Some((2_000 + WATCH_MS + 999) / 1000)
        );
        assert_eq!(
            watched.watched(2_000 + WATCH_MS).count(),
            0,
            "the watch ends"
        );
        // No TCP classify rule, no watch.
        let mut plain = Firewall::default();
        watched.merged_into(&mut plain, 3_000);
        assert!(plain.rules.is_empty() && plain.sets.is_empty());
    }

    #[test]
    fn the_watch_list_is_bounded() {
        let mut watched = WatchedHosts::default();
        for i in 0..(MAX_WATCHED as u32 + 10) {
            watched.watch(
                IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                i64::from(i),
            );
        }
        assert_eq!(watched.watched(0).count(), MAX_WATCHED);
        // The first to end made room.
        assert!(watched
            .watched(0)
            .all(|h| h != IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000))));
    }
}
