//! What a recompile needs of the VPNs its routers are in: every member's
//! facts and the relay, planned once per VPN, and each router's own key
//! settings. Loading an `auto` VPN also gives it a relay when no site is
//! reachable (and takes it back when one is): the relay then joins the
//! recompile.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use sqlx::PgConnection;
use uuid::Uuid;

use super::addresses::AddressPool;
use super::plan::{Plan, Relay, RelayNeed, Role, Site, SiteKeys, Topology, Vpn};
use crate::db;

/// The VPNs a recompile's routers are in (as members or relays), and each
/// such router's own key settings.
pub struct Vpns {
    pub vpns: Vec<Vpn>,
    /// Router -> (key it is told to use, generation asked of it).
    pub own: HashMap<Uuid, (Option<isdf_api::WgKey>, u32)>,
    /// Routers the relay decisions added to the recompile.
    pub extra_targets: Vec<Uuid>,
}

impl Vpns {
    /// Each router's `Wireguard`: None for routers in no VPN and not a relay.
    pub fn compile(&self) -> HashMap<Uuid, isdf_api::Wireguard> {
        let mut out: HashMap<Uuid, isdf_api::Wireguard> = self
            .own
            .iter()
            .map(|(id, (key, generation))| {
                let wireguard = isdf_api::Wireguard {
                    public_key: *key,
                    key_generation: *generation,
                    tunnels: vec![],
                };
                (*id, wireguard)
            })
            .collect();
        for vpn in &self.vpns {
            let plan = Plan::decide(vpn);
            let routers = vpn
                .sites
                .iter()
                .map(|s| s.device_id)
                .chain(vpn.relay.as_ref().map(|r| r.device_id));
            for router in routers {
                let Some(wireguard) = out.get_mut(&router) else {
                    continue; // not being recompiled
                };
                if wireguard.public_key.is_none() {
                    continue; // no key yet: it reports one first
                }
                if let Some(tunnel) = plan.tunnel_for(router) {
                    wireguard.tunnels.push(tunnel);
                }
            }
        }
        for wireguard in out.values_mut() {
            wireguard
                .tunnels
                .sort_by(|a, b| a.interface.cmp(&b.interface));
        }
        out
    }
}

fn parse_keys(
    active: Option<&str>,
    alternate: Option<&str>,
    listen_port: Option<i32>,
    reachable: Option<&str>,
) -> Option<SiteKeys> {
    Some(SiteKeys {
        active: isdf_api::WgKey::parse(active?).ok()?,
        alternate: alternate.and_then(|k| isdf_api::WgKey::parse(k).ok()),
        listen_port: u16::try_from(listen_port?).ok()?,
        reachable: reachable.and_then(|a| a.parse().ok()),
    })
}

/// A router's own key settings as stored: the key it is told to use (None
/// before its first facts) and the generation asked of it (1 by default).
fn own_side(
    (id, key, generation): (Uuid, Option<String>, Option<i32>),
) -> (Uuid, (Option<isdf_api::WgKey>, u32)) {
    let key = key.and_then(|k| isdf_api::WgKey::parse(&k).ok());
    let generation = generation.map_or(1, |g| u32::try_from(g).unwrap_or(1));
    (id, (key, generation))
}

/// A member row as the VPN compiler takes it.
fn site_of(m: &db::wireguard::MemberRow) -> anyhow::Result<Site> {
    Ok(Site {
        device_id: m.device_id,
        name: m.name.clone(),
        tunnel_address: m.tunnel_address.parse().context("tunnel address")?,
        prefixes: m
            .prefixes
            .iter()
            .filter_map(|p| isdf_api::Prefix::parse(p).ok())
            .collect(),
        keys: parse_keys(
            m.active_public_key.as_deref(),
            m.alternate_public_key.as_deref(),
            m.listen_port,
            m.reachable_address.as_deref(),
        ),
    })
}

/// A relay slot row as the VPN compiler takes it (None while the relay has
/// reported no facts).
fn relay_of(slot: &db::wireguard::RelaySlotRow, pool: &str) -> Option<Relay> {
    Some(Relay {
        device_id: slot.relay_device_id,
        name: slot.name.clone(),
        slot: u16::try_from(slot.slot).ok()?,
        tunnel_address: AddressPool::parse(pool).ok()?.relay_address(),
        keys: parse_keys(
            slot.active_public_key.as_deref(),
            slot.alternate_public_key.as_deref(),
            slot.listen_port,
            slot.reachable_address.as_deref(),
        )?,
    })
}

/// Loads the VPNs `devices` are in (members or relays) with everything
/// their tunnels are compiled from, giving a relay to an auto VPN that
/// needs one and taking it from one that no longer does (the relay is
/// then recompiled too).
pub async fn load(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    devices: Option<&[Uuid]>,
) -> anyhow::Result<Vpns> {
    let own = db::wireguard::own_sides(&mut **tx, devices)
        .await
        .context("loading routers' key settings")?
        .into_iter()
        .map(own_side)
        .collect();
    let ids = db::wireguard::vpns_of_devices(&mut **tx, devices)
        .await
        .context("finding VPNs")?;
    let mut out = Vpns {
        vpns: vec![],
        own,
        extra_targets: vec![],
    };
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = db::wireguard::vpns(&mut **tx, &ids)
        .await
        .context("loading VPNs")?;
    let mut members: HashMap<Uuid, Vec<Site>> = HashMap::new();
    for m in db::wireguard::members_of(&mut **tx, &ids)
        .await
        .context("loading VPN members")?
    {
        let site = site_of(&m)?;
        members.entry(m.vpn_id).or_default().push(site);
    }
    let mut slots: HashMap<Uuid, db::wireguard::RelaySlotRow> =
        db::wireguard::relay_slots_of(&mut **tx, &ids)
            .await
            .context("loading relay slots")?
            .into_iter()
            .map(|r| (r.vpn_id, r))
            .collect();
    for row in rows {
        let relay_of = |slot: &db::wireguard::RelaySlotRow| relay_of(slot, &row.address_pool);
        let mut vpn = Vpn {
            id: row.id,
            topology: Topology::parse(&row.topology).context("topology")?,
            hub: row.hub_device_id,
            sites: members.remove(&row.id).unwrap_or_default(),
            relay: slots.get(&row.id).and_then(relay_of),
        };
        let need = Plan::decide(&vpn).relay_need();
        let has_slot = slots.contains_key(&row.id);
        if need == RelayNeed::Needed && !has_slot {
            if let Some((relay, _)) = db::wireguard::assign_relay(&mut **tx, row.id)
                .await
                .context("assigning a relay")?
            {
                for slot in db::wireguard::relay_slots_of(&mut **tx, &[row.id])
                    .await
                    .context("loading the new relay slot")?
                {
                    vpn.relay = relay_of(&slot);
                    slots.insert(row.id, slot);
                }
                out.extra_targets.push(relay);
            }
        } else if need == RelayNeed::NotNeeded && has_slot {
            db::wireguard::release_relay(&mut **tx, row.id)
                .await
                .context("releasing the relay")?;
            if let Some(slot) = slots.remove(&row.id) {
                out.extra_targets.push(slot.relay_device_id);
            }
            vpn.relay = None;
        }
        out.vpns.push(vpn);
    }
    if !out.extra_targets.is_empty() {
        // The relays' own key settings, when they were not targets.
        for row in db::wireguard::own_sides(&mut **tx, Some(&out.extra_targets))
            .await
            .context("loading relays' key settings")?
        {
            let (id, side) = own_side(row);
            out.own.insert(id, side);
        }
    }
    Ok(out)
}

/// Each member's role in the controller's current plan for one VPN (the
/// VPN view shows it).
pub async fn roles(
    conn: &mut PgConnection,
    vpn: &db::vpns::VpnRow,
) -> anyhow::Result<BTreeMap<Uuid, Role>> {
    let sites = db::wireguard::members_of(&mut *conn, &[vpn.id])
        .await?
        .iter()
        .map(site_of)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let relay = db::wireguard::relay_slots_of(&mut *conn, &[vpn.id])
        .await?
        .first()
        .and_then(|slot| relay_of(slot, &vpn.address_pool));
    let planned = Vpn {
        id: vpn.id,
        topology: Topology::parse(&vpn.topology)
            .ok_or_else(|| anyhow::anyhow!("stored topology `{}`", vpn.topology))?,
        hub: vpn.hub_device_id,
        sites,
        relay,
    };
    Ok(Plan::decide(&planned).roles().clone())
}
