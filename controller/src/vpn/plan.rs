//! The distributed VPN: which routers of a customer's VPN connect to whom,
//! decided from the facts the routers report (pure, no I/O).

use serde::{Deserialize, Serialize};

/// How a VPN's sites connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// A full mesh among the sites inbound UDP reaches; the others through
    /// one of those (a hub); an ISP relay when none is reachable.
    Auto,
    /// Every site peers with every other (sites behind NAT reach only
    /// reachable ones).
    Mesh,
    /// Every site through the named hub, which must be a member.
    Hub,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Auto => "auto",
            Topology::Mesh => "mesh",
            Topology::Hub => "hub",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Topology::Auto),
            "mesh" => Some(Topology::Mesh),
            "hub" => Some(Topology::Hub),
            _ => None,
        }
    }
}

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use isdf_api::{Peer, Prefix, Tunnel, WgKey};
use uuid::Uuid;

/// The tunnel interface of a member router (a router is in one VPN).
pub const MEMBER_INTERFACE: &str = "isdfvpn";
/// Seconds between keepalives from a site behind NAT (keeps its mapping).
pub const NAT_KEEPALIVE_SECS: u16 = 25;

/// What the controller knows of a router's WireGuard side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteKeys {
    /// The key the router is told to use; its peers know it by this.
    pub active: WgKey,
    /// During a rotation, its other key, which peers also accept.
    pub alternate: Option<WgKey>,
    pub listen_port: u16,
    /// Where a controller probe reached it (inbound UDP works there).
    pub reachable: Option<IpAddr>,
}

/// A member of a VPN, as the compiler takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub device_id: Uuid,
    pub name: String,
    pub tunnel_address: Ipv4Addr,
    pub prefixes: Vec<Prefix>,
    /// None until the router reported its facts: it is left out of every
    /// other router's peers (and gets a tunnel without peers).
    pub keys: Option<SiteKeys>,
}

/// An ISP relay serving this VPN: its tunnel for the VPN listens on the
/// relay's port + `slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub device_id: Uuid,
    pub name: String,
    pub slot: u16,
    pub tunnel_address: Ipv4Addr,
    pub keys: SiteKeys,
}

/// One VPN with everything its routers' tunnels are compiled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpn {
    pub id: Uuid,
    pub topology: Topology,
    /// Set for `Topology::Hub`.
    pub hub: Option<Uuid>,
    pub sites: Vec<Site>,
    /// The relay assigned to it, if any (used only when `plan` says so).
    pub relay: Option<Relay>,
}

/// How a site is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = VpnRole)]
pub enum Role {
    /// Peers directly with every other mesh site (and with its spokes).
    Mesh,
    /// Reaches the VPN only through its hub.
    Spoke,
    /// Connects spokes (in hub topology, everyone).
    Hub,
    /// Reaches the VPN only through the ISP relay.
    RelayClient,
    /// Has not reported its facts yet; not connected.
    Waiting,
}

/// The control-plane decision for one VPN: who peers with whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    vpn: &'a Vpn,
    roles: BTreeMap<Uuid, Role>,
    /// The hub each spoke goes through.
    hubs: HashMap<Uuid, Uuid>,
    /// Spokes behind each hub.
    spokes: HashMap<Uuid, Vec<Uuid>>,
    uses_relay: bool,
    index: HashMap<Uuid, usize>,
}

/// What a decision needs the relay for: whether `plan` routes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayNeed {
    NotNeeded,
    Needed,
}

impl<'a> Plan<'a> {
    /// Decides the VPN's shape. Auto: a full mesh among the sites a probe
    /// reached; every other site goes through the reachable site with the
    /// lowest tunnel address (deterministic, so a recompile with the same
    /// facts gives the same configs); when no site is reachable and there
    /// are at least two, everyone goes through the relay.
    pub fn decide(vpn: &'a Vpn) -> Self {
        let ready: Vec<&Site> = vpn.sites.iter().filter(|s| s.keys.is_some()).collect();
        let mut plan = Plan {
            vpn,
            roles: vpn
                .sites
                .iter()
                .map(|s| (s.device_id, Role::Waiting))
                .collect(),
            hubs: HashMap::new(),
            spokes: HashMap::new(),
            uses_relay: false,
            index: vpn
                .sites
                .iter()
                .enumerate()
                .map(|(i, s)| (s.device_id, i))
                .collect(),
        };
        let reachable = |s: &Site| s.keys.as_ref().is_some_and(|k| k.reachable.is_some());
        match vpn.topology {
            Topology::Mesh => {
                for site in &ready {
                    plan.roles.insert(site.device_id, Role::Mesh);
                }
            }
            Topology::Hub => {
                let hub = vpn.hub.filter(|h| ready.iter().any(|s| s.device_id == *h));
                for site in &ready {
                    match hub {
                        Some(h) if h == site.device_id => {
                            plan.roles.insert(h, Role::Hub);
                        }
                        Some(h) => plan.attach_spoke(site.device_id, h),
                        None => {}
                    }
                }
            }
            Topology::Auto => {
                let hub = ready
                    .iter()
                    .filter(|s| reachable(s))
                    .min_by_key(|s| s.tunnel_address)
                    .map(|s| s.device_id);
                match hub {
                    Some(hub) => {
                        for site in &ready {
                            if reachable(site) {
                                plan.roles.insert(site.device_id, Role::Mesh);
                            } else {
                                plan.attach_spoke(site.device_id, hub);
                            }
                        }
                        if plan.spokes.contains_key(&hub) {
                            plan.roles.insert(hub, Role::Hub);
                        }
                    }
                    None if ready.len() >= 2 => {
                        plan.uses_relay = vpn
                            .relay
                            .as_ref()
                            .is_some_and(|r| r.keys.reachable.is_some());
                        if plan.uses_relay {
                            for site in &ready {
                                plan.roles.insert(site.device_id, Role::RelayClient);
                            }
                        } else {
                            // Nothing reachable and no relay: a mesh without
                            // endpoints, which connects as soon as a probe
                            // reaches anyone (then this is recompiled).
                            for site in &ready {
                                plan.roles.insert(site.device_id, Role::Mesh);
                            }
                        }
                    }
                    None => {
                        for site in &ready {
                            plan.roles.insert(site.device_id, Role::Mesh);
                        }
                    }
                }
            }
        }
        plan
    }

    /// Whether this VPN needs a relay it does not have (auto topology, at
    /// least two sites ready, none reachable).
    pub fn relay_need(&self) -> RelayNeed {
        let ready: Vec<&Site> = self.vpn.sites.iter().filter(|s| s.keys.is_some()).collect();
        let none_reachable = ready
            .iter()
            .all(|s| s.keys.as_ref().is_some_and(|k| k.reachable.is_none()));
        if self.vpn.topology == Topology::Auto && ready.len() >= 2 && none_reachable {
            RelayNeed::Needed
        } else {
            RelayNeed::NotNeeded
        }
    }

    pub fn uses_relay(&self) -> bool {
        self.uses_relay
    }

    fn attach_spoke(&mut self, spoke: Uuid, hub: Uuid) {
        self.roles.insert(spoke, Role::Spoke);
        self.hubs.insert(spoke, hub);
        self.spokes.entry(hub).or_default().push(spoke);
    }

    pub fn role(&self, device: Uuid) -> Option<Role> {
        self.roles.get(&device).copied()
    }

    pub fn roles(&self) -> &BTreeMap<Uuid, Role> {
        &self.roles
    }

    fn site(&self, device: Uuid) -> Option<&'a Site> {
        self.index.get(&device).map(|i| &self.vpn.sites[*i])
    }

    /// The tunnel of one router of this VPN (a member or its relay); None
    /// for a router that is neither.
    pub fn tunnel_for(&self, device: Uuid) -> Option<Tunnel> {
        if let Some(relay) = self.vpn.relay.as_ref().filter(|r| r.device_id == device) {
            return Some(self.relay_tunnel(relay));
        }
        let site = self.site(device)?;
        // Without facts there is no key to run a tunnel with.
        let keys = site.keys.as_ref()?;
        let me_reachable = keys.reachable.is_some();
        let role = self.roles[&device];
        let peers: Vec<Peer> = match role {
            Role::Waiting => vec![],
            Role::Mesh | Role::Hub => {
                // Every other connected mesh or hub site, each carrying its
                // spokes' prefixes too; and my own spokes.
                let mut peers: Vec<Peer> = self
                    .vpn
                    .sites
                    .iter()
                    .filter(|s| s.device_id != device)
                    .filter(|s| matches!(self.roles[&s.device_id], Role::Mesh | Role::Hub))
                    .map(|s| self.peer(s, me_reachable, self.spokes_of(s.device_id)))
                    .collect();
                peers.extend(
                    self.spokes_of(device)
                        .map(|spoke| self.peer(spoke, me_reachable, std::iter::empty())),
                );
                peers
            }
            Role::Spoke => {
                let hub = self.site(self.hubs[&device]).expect("hub is a site");
                let everyone_else = self.vpn.sites.iter().filter(|s| {
                    s.device_id != device
                        && s.device_id != hub.device_id
                        && self.roles[&s.device_id] != Role::Waiting
                });
                vec![self.peer(hub, me_reachable, everyone_else)]
            }
            Role::RelayClient => {
                let relay = self.vpn.relay.as_ref().expect("relay plans have a relay");
                let everyone_else =
                    self.vpn.sites.iter().filter(|s| {
                        s.device_id != device && self.roles[&s.device_id] != Role::Waiting
                    });
                let mut allowed = vec![Prefix::from_addr(relay.tunnel_address.into())];
                allowed.extend(site_prefixes(everyone_else));
                vec![Peer {
                    name: relay.name.clone(),
                    public_key: relay.keys.active,
                    alternate_public_key: relay.keys.alternate,
                    endpoint: relay
                        .keys
                        .reachable
                        .map(|ip| SocketAddr::new(ip, relay.listen_port())),
                    allowed_prefixes: allowed,
                    keepalive_secs: Some(NAT_KEEPALIVE_SECS),
                }]
            }
        };
        Some(Tunnel {
            interface: MEMBER_INTERFACE.to_owned(),
            listen_port: keys.listen_port,
            address: Prefix::from_addr(site.tunnel_address.into()),
            local_prefixes: site.prefixes.clone(),
            peers,
        })
    }

    fn spokes_of(&self, hub: Uuid) -> impl Iterator<Item = &'a Site> + '_ {
        self.spokes
            .get(&hub)
            .into_iter()
            .flatten()
            .filter_map(|id| self.site(*id))
    }

    /// `site` as a peer: its own prefixes and those of `behind` (sites
    /// reached through it).
    fn peer<'s>(
        &self,
        site: &Site,
        me_reachable: bool,
        behind: impl Iterator<Item = &'s Site>,
    ) -> Peer {
        let keys = site.keys.as_ref().expect("connected sites have keys");
        let mut allowed = site_prefixes(std::iter::once(site));
        allowed.extend(site_prefixes(behind));
        Peer {
            name: site.name.clone(),
            public_key: keys.active,
            alternate_public_key: keys.alternate,
            endpoint: keys
                .reachable
                .map(|ip| SocketAddr::new(ip, keys.listen_port)),
            allowed_prefixes: allowed,
            // Behind NAT, keep the mapping open towards peers that have an
            // endpoint (they cannot call in otherwise).
            keepalive_secs: (!me_reachable && keys.reachable.is_some())
                .then_some(NAT_KEEPALIVE_SECS),
        }
    }

    fn relay_tunnel(&self, relay: &Relay) -> Tunnel {
        let peers = if self.uses_relay {
            self.vpn
                .sites
                .iter()
                .filter(|s| self.roles[&s.device_id] == Role::RelayClient)
                .map(|s| self.peer(s, true, std::iter::empty()))
                .collect()
        } else {
            vec![]
        };
        Tunnel {
            interface: relay_interface(relay.slot),
            listen_port: relay.listen_port(),
            address: Prefix::from_addr(relay.tunnel_address.into()),
            local_prefixes: vec![],
            peers,
        }
    }
}

impl Relay {
    /// The port its tunnel for this VPN listens on.
    pub fn listen_port(&self) -> u16 {
        self.keys.listen_port.saturating_add(self.slot)
    }
}

/// The relay's interface for the VPN in `slot`.
pub fn relay_interface(slot: u16) -> String {
    format!("isdfrelay{slot}")
}

/// A site's tunnel address and LAN prefixes, for each site.
fn site_prefixes<'s>(sites: impl Iterator<Item = &'s Site>) -> Vec<Prefix> {
    sites
        .flat_map(|s| {
            std::iter::once(Prefix::from_addr(s.tunnel_address.into()))
                .chain(s.prefixes.iter().copied())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> WgKey {
        WgKey([n; 32])
    }

    /// Site `n`: LAN 10.n.0.0/24, tunnel address 100.64.0.n; reachable at
    /// 203.0.113.n when `reachable`.
    fn site(n: u8, reachable: bool) -> Site {
        Site {
            device_id: Uuid::from_u128(u128::from(n)),
            name: format!("site-{n}"),
            tunnel_address: Ipv4Addr::new(100, 64, 0, n),
            prefixes: vec![Prefix::parse(&format!("10.{n}.0.0/24")).unwrap()],
            keys: Some(SiteKeys {
                active: key(n),
                alternate: None,
                listen_port: 51820,
                reachable: reachable.then(|| IpAddr::V4(Ipv4Addr::new(203, 0, 113, n))),
            }),
        }
    }

    fn vpn(topology: Topology, sites: Vec<Site>) -> Vpn {
        Vpn {
            id: Uuid::nil(),
            topology,
            hub: None,
            sites,
            relay: None,
        }
    }

    fn validated(device: u8, tunnel: Tunnel) -> Tunnel {
        let config = isdf_api::DeviceConfig {
            device_id: "d".into(),
            version: 1,
            issued_at: 0,
            expires_at: 1,
            firewall: isdf_api::Firewall {
                wireguard: Some(isdf_api::Wireguard {
                    public_key: Some(key(device)),
                    key_generation: 1,
                    tunnels: vec![tunnel.clone()],
                }),
                ..Default::default()
            },
            agent_release: None,
        };
        config.validate().expect("compiled tunnels validate");
        tunnel
    }

    fn tunnel(plan: &Plan, n: u8) -> Tunnel {
        validated(n, plan.tunnel_for(Uuid::from_u128(u128::from(n))).unwrap())
    }

    fn peer_names(tunnel: &Tunnel) -> Vec<&str> {
        tunnel.peers.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn auto_meshes_reachable_sites_and_hangs_the_nated_one_on_a_hub() {
        let vpn = vpn(
            Topology::Auto,
            vec![site(1, true), site(2, true), site(3, false)],
        );
        let plan = Plan::decide(&vpn);
        assert_eq!(plan.role(Uuid::from_u128(1)), Some(Role::Hub));
        assert_eq!(plan.role(Uuid::from_u128(2)), Some(Role::Mesh));
        assert_eq!(plan.role(Uuid::from_u128(3)), Some(Role::Spoke));
        assert_eq!(plan.relay_need(), RelayNeed::NotNeeded);

        let hub = tunnel(&plan, 1);
        assert_eq!(peer_names(&hub), ["site-2", "site-3"]);
        assert_eq!(hub.peers[1].endpoint, None, "the NATed site calls in");
        let two = tunnel(&plan, 2);
        assert_eq!(peer_names(&two), ["site-1"]);
        let via_hub: Vec<String> = two.peers[0]
            .allowed_prefixes
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            via_hub,
            ["100.64.0.1", "10.1.0.0/24", "100.64.0.3", "10.3.0.0/24"],
            "site 2 reaches site 3 through the hub"
        );
        let three = tunnel(&plan, 3);
        assert_eq!(peer_names(&three), ["site-1"]);
        assert_eq!(three.peers[0].keepalive_secs, Some(NAT_KEEPALIVE_SECS));
        assert_eq!(
            three.peers[0].endpoint,
            Some("203.0.113.1:51820".parse().unwrap())
        );
        assert_eq!(three.peers[0].allowed_prefixes.len(), 4);
    }

    #[test]
    fn hub_topology_goes_through_the_named_hub_only() {
        let mut vpn = vpn(
            Topology::Hub,
            vec![site(1, true), site(2, true), site(3, true)],
        );
        vpn.hub = Some(Uuid::from_u128(2));
        let plan = Plan::decide(&vpn);
        assert_eq!(peer_names(&tunnel(&plan, 2)), ["site-1", "site-3"]);
        assert_eq!(peer_names(&tunnel(&plan, 1)), ["site-2"]);
        assert_eq!(peer_names(&tunnel(&plan, 3)), ["site-2"]);
    }

    #[test]
    fn sites_without_facts_wait_and_are_nobody_s_peer() {
        let mut waiting = site(3, true);
        waiting.keys = None;
        let vpn = vpn(Topology::Mesh, vec![site(1, true), site(2, false), waiting]);
        let plan = Plan::decide(&vpn);
        assert_eq!(plan.role(Uuid::from_u128(3)), Some(Role::Waiting));
        assert!(plan.tunnel_for(Uuid::from_u128(3)).is_none());
        assert_eq!(peer_names(&tunnel(&plan, 1)), ["site-2"]);
        assert!(plan.tunnel_for(Uuid::from_u128(9)).is_none());
    }

    #[test]
    fn nobody_reachable_goes_through_the_relay() {
        let mut vpn = vpn(Topology::Auto, vec![site(1, false), site(2, false)]);
        assert_eq!(Plan::decide(&vpn).relay_need(), RelayNeed::Needed);
        vpn.relay = Some(Relay {
            device_id: Uuid::from_u128(50),
            name: "relay".into(),
            slot: 3,
            tunnel_address: Ipv4Addr::new(100, 64, 255, 254),
            keys: SiteKeys {
                active: key(50),
                alternate: None,
                listen_port: 51820,
                reachable: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 50))),
            },
        });
        let plan = Plan::decide(&vpn);
        assert!(plan.uses_relay());
        let one = tunnel(&plan, 1);
        assert_eq!(peer_names(&one), ["relay"]);
        assert_eq!(
            one.peers[0].endpoint,
            Some("198.51.100.50:51823".parse().unwrap())
        );
        let relay = validated(50, plan.tunnel_for(Uuid::from_u128(50)).unwrap());
        assert_eq!(relay.interface, "isdfrelay3");
        assert_eq!(relay.listen_port, 51823);
        assert_eq!(peer_names(&relay), ["site-1", "site-2"]);
    }

    #[test]
    fn rotating_sites_are_known_by_both_keys() {
        let mut rotating = site(2, true);
        rotating.keys.as_mut().unwrap().alternate = Some(key(200));
        let vpn = vpn(Topology::Mesh, vec![site(1, true), rotating]);
        let plan = Plan::decide(&vpn);
        let one = tunnel(&plan, 1);
        assert_eq!(one.peers[0].public_key, key(2));
        assert_eq!(one.peers[0].alternate_public_key, Some(key(200)));
    }

    #[test]
    fn a_large_auto_vpn_is_deterministic() {
        let sites: Vec<Site> = (1..=250u8).map(|n| site(n, n % 3 != 0)).collect();
        let vpn = vpn(Topology::Auto, sites);
        let a = Plan::decide(&vpn);
        let b = Plan::decide(&vpn);
        for n in [1u8, 3, 250] {
            assert_eq!(tunnel(&a, n), tunnel(&b, n));
        }
    }
}
