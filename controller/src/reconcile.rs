//! Recompiling: runs the pure compiler for the devices a change touches,
//! signs the configs whose content changed, stores them and publishes them.
//!
//! A device's version increases only when its compiled content (the firewall
//! digest) changes, or when its signed config nears expiry and is re-issued.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::compiler::{compile_firewall, CompiledAssignment, DeviceBlock};
use crate::config_cache::{ConfigCache, ServedConfig};
use crate::db;
use crate::domain::{BlockAction, Labels, Selector, ServiceKind, ServiceSpec};
use crate::pay_per_site::{CatalogSite, Catalogs, DeviceShop};
use crate::rollout::Staged;
use crate::signer::ConfigSigner;
use crate::vpn;

/// Serialises recompiles across controller replicas (pg advisory lock key).
const RECOMPILE_LOCK: i64 = 0x1a5d_c0de;

pub struct Reconciler {
    pub pool: PgPool,
    pub signer: Arc<dyn ConfigSigner>,
    pub cache: Arc<ConfigCache>,
    pub config_lifetime: Duration,
    /// Links to the portal compiled into `pay-per-site` configs.
    pub portal_links: crate::pay_per_site::PortalLinks,
}

/// What a recompile did: how many devices it compiled and how many got a new version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecompileSummary {
    pub compiled: usize,
    pub changed: usize,
}

/// Configs a recompile stored in a transaction not yet committed.
#[must_use = "configs are served only once published"]
#[derive(Default)]
pub struct Compiled {
    compiled: usize,
    stored: Vec<db::configs::ConfigRow>,
}

/// Why content is re-signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resign {
    /// Only when the compiled content changed.
    IfChanged,
    /// Also when the signed config expires before this instant.
    IfExpiringBefore(DateTime<Utc>),
    /// Always (the signing key changed).
    Always,
}

/// A stored spec of a stored kind (validated when stored).
fn parse_spec(kind: &str, spec: &serde_json::Value) -> Result<ServiceSpec, String> {
    ServiceKind::parse(kind)
        .ok_or_else(|| format!("unknown kind {kind}"))
        .and_then(|kind| ServiceSpec::parse(kind, spec))
}

/// What the active rollouts stage: each staged assignment's previous form
/// (same selector and start, the previous revision's spec) and the routers
/// of `devices` already released to the new one.
async fn load_staged(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    devices: Option<&[Uuid]>,
    assignments: &[CompiledAssignment],
) -> anyhow::Result<Staged> {
    let mut staged = Staged::default();
    let rows = db::rollouts::staged(&mut **tx)
        .await
        .context("loading staged assignments")?;
    if rows.is_empty() {
        return Ok(staged);
    }
    for row in rows {
        let Some(current) = assignments.iter().find(|a| a.id == row.assignment_id) else {
            continue;
        };
        let previous = match &row.previous_spec {
            None => None,
            Some(spec) => match parse_spec(&row.kind, &spec.0) {
                Ok(spec) => Some(CompiledAssignment {
                    spec,
                    ..current.clone()
                }),
                Err(e) => {
                    tracing::warn!(assignment = %row.assignment_id, error = %e, "previous revision does not parse; treating it as absent");
                    None
                }
            },
        };
        staged.previous.insert(row.assignment_id, previous);
    }
    for (device, assignment) in db::rollouts::released_pairs(&mut **tx, devices)
        .await
        .context("loading released routers")?
    {
        staged
            .released
            .entry(device)
            .or_default()
            .insert(assignment);
    }
    Ok(staged)
}

pub fn parse_assignments(
    rows: Vec<db::assignments::AssignmentWithSpec>,
) -> Vec<CompiledAssignment> {
    rows.into_iter()
        .filter_map(|row| {
            // Selectors and specs were validated when stored; a row that no
            // longer parses (a newer controller's kind) is skipped, not fatal.
            let parsed = parse_spec(&row.kind, &row.spec.0)
                .and_then(|spec| Ok((spec, Selector::parse(&row.selector)?)));
            match parsed {
                Ok((spec, selector)) => Some(CompiledAssignment {
                    id: row.id,
                    selector,
                    created_at: row.created_at.timestamp(),
                    spec,
                }),
                Err(e) => {
                    tracing::warn!(assignment = %row.id, error = %e, "skipping assignment");
                    None
                }
            }
        })
        .collect()
}

/// An operator block row as the compiler takes it. The wire carries whole
/// seconds: the end is rounded to the nearest one (within half a second of
/// what was asked).
fn device_block(row: &db::blocks::BlockRow) -> DeviceBlock {
    DeviceBlock {
        action: if row.action == "reject" {
            BlockAction::Reject
        } else {
            BlockAction::Drop
        },
        pattern: row.flow.0.clone(),
        expires_at: (row.expires_at.timestamp_millis() + 500).div_euclid(1000),
    }
}

/// The VPNs a recompile's routers are in (as members or relays), and each
/// such router's own key settings.
struct Vpns {
    vpns: Vec<vpn::Vpn>,
    /// Router -> (key it is told to use, generation asked of it).
    own: HashMap<Uuid, (Option<isdf_api::WgKey>, u32)>,
    /// Routers the relay decisions added to the recompile.
    extra_targets: Vec<Uuid>,
}

impl Vpns {
    /// Each router's `Wireguard`: None for routers in no VPN and not a relay.
    fn compile(&self) -> HashMap<Uuid, isdf_api::Wireguard> {
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
            let plan = vpn::Plan::decide(vpn);
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
) -> Option<vpn::SiteKeys> {
    Some(vpn::SiteKeys {
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
pub(crate) fn site_of(m: &db::wireguard::MemberRow) -> anyhow::Result<vpn::Site> {
    Ok(vpn::Site {
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
pub(crate) fn relay_of(slot: &db::wireguard::RelaySlotRow, pool: &str) -> Option<vpn::Relay> {
    Some(vpn::Relay {
        device_id: slot.relay_device_id,
        name: slot.name.clone(),
        slot: u16::try_from(slot.slot).ok()?,
        tunnel_address: relay_address(pool)?,
        keys: parse_keys(
            slot.active_public_key.as_deref(),
            slot.alternate_public_key.as_deref(),
            slot.listen_port,
            slot.reachable_address.as_deref(),
        )?,
    })
}

/// The highest usable address of a pool: a relay's address in that VPN.
fn relay_address(pool: &str) -> Option<std::net::Ipv4Addr> {
    let net: ipnet::Ipv4Net = pool.parse().ok()?;
    Some(std::net::Ipv4Addr::from(
        u32::from(net.broadcast()).checked_sub(1)?,
    ))
}

/// What `pay-per-site` compiles from: the sites of the assigned catalogs and
/// each device's passes (site id -> end, Unix seconds).
struct Shops {
    catalogs: Catalogs,
    passes: HashMap<Uuid, BTreeMap<i64, i64>>,
    no_passes: BTreeMap<i64, i64>,
}

impl Reconciler {
    /// Loads the VPNs `devices` are in (members or relays) with everything
    /// their tunnels are compiled from, giving a relay to an auto VPN that
    /// needs one and taking it from one that no longer does (the relay is
    /// then recompiled too).
    async fn load_vpns(
        &self,
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
        let mut members: HashMap<Uuid, Vec<vpn::Site>> = HashMap::new();
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
            let mut vpn = vpn::Vpn {
                id: row.id,
                topology: vpn::Topology::parse(&row.topology).context("topology")?,
                hub: row.hub_device_id,
                sites: members.remove(&row.id).unwrap_or_default(),
                relay: slots.get(&row.id).and_then(relay_of),
            };
            let need = vpn::Plan::decide(&vpn).relay_need();
            let has_slot = slots.contains_key(&row.id);
            if need == vpn::RelayNeed::Needed && !has_slot {
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
            } else if need == vpn::RelayNeed::NotNeeded && has_slot {
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

    /// Loads the catalogs `assignments` name and the passes of `devices`
    /// (nothing when no `pay-per-site` is assigned).
    async fn load_shops(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        devices: Option<&[Uuid]>,
        assignments: impl Iterator<Item = &CompiledAssignment>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Shops> {
        let mut names: Vec<String> = assignments
            .filter_map(|a| match &a.spec {
                ServiceSpec::PayPerSite(spec) => Some(spec.catalog.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        let mut shops = Shops {
            catalogs: Catalogs::new(),
            passes: HashMap::new(),
            no_passes: BTreeMap::new(),
        };
        if names.is_empty() {
            return Ok(shops);
        }
        for row in db::catalog::sites_of_catalogs(&mut **tx, &names)
            .await
            .context("loading catalogs")?
        {
            shops
                .catalogs
                .entry(row.catalog.clone())
                .or_default()
                .push(CatalogSite {
                    id: row.id,
                    domains: row.domain_patterns(),
                });
        }
        for (device, site, ends_at) in db::purchases::active_for_devices(&mut **tx, devices, now)
            .await
            .context("loading passes")?
        {
            shops
                .passes
                .entry(device)
                .or_default()
                .insert(site, ends_at.timestamp());
        }
        Ok(shops)
    }

    /// Recompiles `devices` (every device when None).
    #[tracing::instrument(skip(self, devices), fields(devices = devices.map_or(-1, |d| d.len() as i64)))]
    pub async fn recompile(
        &self,
        devices: Option<&[Uuid]>,
        resign: Resign,
    ) -> anyhow::Result<RecompileSummary> {
        if devices.is_some_and(|d| d.is_empty()) {
            return Ok(RecompileSummary::default());
        }
        let mut tx = self.pool.begin().await.context("starting recompile")?;
        let compiled = self.recompile_in(&mut tx, devices, resign).await?;
        tx.commit().await.context("committing recompile")?;
        Ok(self.publish(compiled))
    }

    /// Recompiles `devices` inside the caller's transaction (which then
    /// holds the recompile lock): the new configs are stored with whatever
    /// else it writes, and served once it commits and hands them to
    /// [`Reconciler::publish`].
    pub async fn recompile_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        devices: Option<&[Uuid]>,
        resign: Resign,
    ) -> anyhow::Result<Compiled> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(RECOMPILE_LOCK)
            .execute(&mut **tx)
            .await
            .context("taking the recompile lock")?;
        let vpns = self.load_vpns(tx, devices).await?;
        let widened: Option<Vec<Uuid>> = devices.map(|d| {
            let mut all = d.to_vec();
            all.extend(vpns.extra_targets.iter().filter(|r| !d.contains(r)));
            all
        });
        let devices = widened.as_deref();
        let wireguard = vpns.compile();
        let targets = db::devices::labels_of(&mut **tx, devices)
            .await
            .context("loading device labels")?;
        let assignments = parse_assignments(
            db::assignments::all_with_specs(&mut **tx)
                .await
                .context("loading assignments")?,
        );
        let staged = load_staged(tx, devices, &assignments).await?;
        let ids: Vec<Uuid> = targets.iter().map(|(id, _)| *id).collect();
        let now = Utc::now();
        let mut device_blocks: HashMap<Uuid, Vec<DeviceBlock>> = HashMap::new();
        for row in db::blocks::active_operator_blocks(&mut **tx, devices, now)
            .await
            .context("loading device blocks")?
        {
            device_blocks
                .entry(row.device_id)
                .or_default()
                .push(device_block(&row));
        }
        let shops = self
            .load_shops(
                tx,
                devices,
                assignments.iter().chain(staged.previous_forms()),
                now,
            )
            .await?;
        let existing: HashMap<Uuid, (i64, String, DateTime<Utc>)> =
            db::configs::versions_for_update(&mut **tx, &ids)
                .await
                .context("loading current versions")?
                .into_iter()
                .map(|(id, v, d, e)| (id, (v, d, e)))
                .collect();

        let lifetime = chrono::Duration::from_std(self.config_lifetime).context("lifetime")?;
        let mut published = Vec::new();
        for (id, labels) in &targets {
            let labels = Labels::parse(labels.0.clone()).unwrap_or_default();
            let blocks = device_blocks.get(id).map_or(&[][..], Vec::as_slice);
            let device_id = id.to_string();
            let shop = DeviceShop {
                device_id: &device_id,
                catalogs: &shops.catalogs,
                passes: shops.passes.get(id).unwrap_or(&shops.no_passes),
                portal: &self.portal_links,
            };
            let mut firewall = compile_firewall(
                &labels,
                staged.in_force(*id, &assignments),
                blocks,
                Some(&shop),
                now.timestamp(),
            );
            firewall.wireguard = wireguard.get(id).cloned();
            let digest = firewall.digest();
            let previous = existing.get(id);
            let unchanged = previous.is_some_and(|(_, d, expires)| {
                *d == digest
                    && match resign {
                        Resign::IfChanged => true,
                        Resign::IfExpiringBefore(t) => *expires >= t,
                        Resign::Always => false,
                    }
            });
            if unchanged {
                continue;
            }
            let version = previous.map_or(1, |(v, _, _)| v + 1);
            let config = isdf_api::DeviceConfig {
                device_id: id.to_string(),
                version: u64::try_from(version).context("version")?,
                issued_at: now.timestamp(),
                expires_at: (now + lifetime).timestamp(),
                firewall,
            };
            let payload = serde_json::to_vec(&config).context("serialising config")?;
            let envelope = self
                .signer
                .sign(isdf_api::CONFIG_PAYLOAD_TYPE, &payload)
                .context("signing config")?
                .to_json();
            let row = db::configs::ConfigRow {
                device_id: *id,
                version,
                digest,
                issued_at: now,
                expires_at: now + lifetime,
                envelope,
            };
            db::configs::upsert(&mut **tx, &row)
                .await
                .context("storing config")?;
            published.push(row);
        }
        Ok(Compiled {
            compiled: targets.len(),
            stored: published,
        })
    }

    /// Serves configs stored by [`Reconciler::recompile_in`] once their
    /// transaction committed.
    pub fn publish(&self, compiled: Compiled) -> RecompileSummary {
        let summary = RecompileSummary {
            compiled: compiled.compiled,
            changed: compiled.stored.len(),
        };
        for row in compiled.stored {
            self.cache.publish(
                row.device_id,
                ServedConfig {
                    version: row.version as u64,
                    envelope: row.envelope.into(),
                },
            );
        }
        tracing::debug!(?summary, "recompiled");
        summary
    }

    /// Recompiles the devices `selector` matches now.
    pub async fn recompile_selected(
        &self,
        selector: &Selector,
    ) -> anyhow::Result<RecompileSummary> {
        let ids = db::devices::matching_ids(&self.pool, selector)
            .await
            .context("selecting devices")?;
        self.recompile(Some(&ids), Resign::IfChanged).await
    }

    /// Re-issues configs that pass half their lifetime, so a router whose
    /// services do not change never sees its config expire.
    pub async fn refresh_expiring(&self) -> anyhow::Result<RecompileSummary> {
        let half = chrono::Duration::from_std(self.config_lifetime / 2).context("lifetime")?;
        let threshold = Utc::now() + half;
        let ids = db::configs::expiring_before(&self.pool, threshold)
            .await
            .context("finding expiring configs")?;
        self.recompile(Some(&ids), Resign::IfExpiringBefore(threshold))
            .await
    }

    /// Recompiles the routers whose household had a pass end in `(after,
    /// until]`: the ended `until` rules leave their configs.
    pub async fn recompile_ended_passes(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<RecompileSummary> {
        let ids = db::purchases::devices_with_passes_ended(&self.pool, after, until)
            .await
            .context("finding routers whose passes ended")?;
        self.recompile(Some(&ids), Resign::IfChanged).await
    }

    /// Recompiles the members of auto VPNs that need a relay and have none
    /// (a relay became reachable since), which gives them one.
    pub async fn recompile_vpns_wanting_relay(&self) -> anyhow::Result<RecompileSummary> {
        let ids = db::wireguard::members_of_vpns_wanting_relay(&self.pool)
            .await
            .context("finding VPNs that need a relay")?;
        self.recompile(Some(&ids), Resign::IfChanged).await
    }

    /// Re-signs every config signed by another key than the current one:
    /// after a signing-key rotation, routers get configs they can verify
    /// against the new root (with a new version).
    pub async fn resign_other_keys(&self) -> anyhow::Result<RecompileSummary> {
        let current = self.signer.key_id().0;
        let stale: Vec<Uuid> = db::configs::all(&self.pool)
            .await
            .context("loading configs")?
            .into_iter()
            .filter(|row| {
                serde_json::from_slice::<isdf_api::Envelope>(&row.envelope)
                    .map_or(true, |e| e.signatures.iter().all(|s| s.keyid != current))
            })
            .map(|row| row.device_id)
            .collect();
        self.recompile(Some(&stale), Resign::Always).await
    }

    /// Fills the cache from the database at start.
    pub async fn load_cache(&self) -> anyhow::Result<()> {
        for id in db::devices::all_ids(&self.pool)
            .await
            .context("loading devices")?
        {
            self.cache.add_device(id);
        }
        for row in db::configs::all(&self.pool)
            .await
            .context("loading configs")?
        {
            self.cache.publish(
                row.device_id,
                ServedConfig {
                    version: row.version as u64,
                    envelope: row.envelope.into(),
                },
            );
        }
        Ok(())
    }
}
