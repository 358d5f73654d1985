//! What a recompile compiles from, loaded in its transaction: the
//! assignments with their parsed specs, what active rollouts stage, the
//! operator blocks on each router, what `pay-per-site` needs (the
//! assigned catalogs and each router's passes) and what `agent-release`
//! needs (the wanted versions' builds and the routers' targets). The VPNs'
//! part is `crate::vpn::inputs`.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db;
use crate::model::Selector;
use crate::rollout::plan::Staged;
use crate::services::agent_release::{Build, Builds};
use crate::services::pay_per_site::{CatalogSite, Catalogs};
use crate::services::{BlockAction, CompiledAssignment, DeviceBlock, ServiceKind, ServiceSpec};

/// A stored spec of a stored kind (validated when stored).
fn parse_spec(kind: &str, spec: &serde_json::Value) -> Result<ServiceSpec, String> {
    ServiceKind::parse(kind)
        .ok_or_else(|| format!("unknown kind {kind}"))
        .and_then(|kind| ServiceSpec::parse(kind, spec))
}

/// What the active rollouts stage: each staged assignment's previous form
/// (same selector and start, the previous revision's spec) and the routers
/// of `devices` already released to the new one.
pub(super) async fn load_staged(
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
pub(super) fn device_block(row: &db::blocks::BlockRow) -> DeviceBlock {
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

/// What `pay-per-site` compiles from: the sites of the assigned catalogs and
/// each device's passes (site id -> end, Unix seconds).
pub(super) struct Shops {
    pub(super) catalogs: Catalogs,
    pub(super) passes: HashMap<Uuid, BTreeMap<i64, i64>>,
    pub(super) no_passes: BTreeMap<i64, i64>,
    /// The agent version each router last reported: routers whose agent is
    /// older than flow names get the gate by address alone.
    pub(super) agent_versions: HashMap<Uuid, String>,
}

/// Loads the catalogs `assignments` name and the passes of `devices`
/// (nothing when no `pay-per-site` is assigned).
pub(super) async fn load_shops(
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
        agent_versions: HashMap::new(),
    };
    if names.is_empty() {
        return Ok(shops);
    }
    let sites = db::catalog::sites_of_catalogs(&mut **tx, &names)
        .await
        .context("loading catalogs")?;
    let ids: Vec<i64> = sites.iter().map(|s| s.id).collect();
    let mut addresses: HashMap<i64, Vec<std::net::IpAddr>> = HashMap::new();
    for (site, address) in db::site_addresses::of_sites(&mut **tx, &ids)
        .await
        .context("loading the sites' resolved addresses")?
    {
        addresses.entry(site).or_default().push(address);
    }
    for row in sites {
        shops
            .catalogs
            .entry(row.catalog.clone())
            .or_default()
            .push(CatalogSite {
                id: row.id,
                domains: row.domain_patterns(),
                addresses: addresses.remove(&row.id).unwrap_or_default(),
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
    shops.agent_versions =
        db::status::reported(&mut **tx, devices, db::status::ReportedText::AgentVersion)
            .await
            .context("loading the routers' agent versions")?
            .into_iter()
            .collect();
    Ok(shops)
}

/// What `agent-release` compiles from: the uploaded builds of the versions
/// assigned and the target triple each router reported.
#[derive(Default)]
pub(super) struct Releases {
    pub(super) builds: Builds,
    pub(super) targets: HashMap<Uuid, String>,
}

/// Loads the builds of the versions `assignments` name and the targets of
/// `devices` (nothing when no `agent-release` is assigned).
pub(super) async fn load_releases(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    devices: Option<&[Uuid]>,
    assignments: impl Iterator<Item = &CompiledAssignment>,
) -> anyhow::Result<Releases> {
    let mut versions: Vec<String> = assignments
        .filter_map(|a| match &a.spec {
            ServiceSpec::AgentRelease(spec) => Some(spec.version.clone()),
            _ => None,
        })
        .collect();
    versions.sort();
    versions.dedup();
    let mut releases = Releases::default();
    if versions.is_empty() {
        return Ok(releases);
    }
    for row in db::releases::uploaded_of_versions(&mut **tx, &versions)
        .await
        .context("loading agent releases")?
    {
        releases.builds.entry(row.version).or_default().push(Build {
            target: row.target,
            sha256: row.sha256,
            manifest: row.manifest.0,
        });
    }
    releases.targets =
        db::status::reported(&mut **tx, devices, db::status::ReportedText::AgentTarget)
            .await
            .context("loading the routers' targets")?
            .into_iter()
            .collect();
    Ok(releases)
}
