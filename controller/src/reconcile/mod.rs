//! Recompiling: runs the pure compiler for the devices a change touches,
//! signs the configs whose content changed, stores them and publishes them.
//!
//! A device's version increases only when its compiled content (the firewall
//! digest, and the agent release asked for) changes, or when its signed
//! config nears expiry and is re-issued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::model::Labels;
use crate::services::pay_per_site::{reads_flow_names, DeviceShop, PortalLinks};
use crate::services::{agent_release, compile_firewall, DeviceBlock};
use config_cache::{ConfigCache, ServedConfig};
use signer::ConfigSigner;

pub mod config_cache;
pub mod inputs;
pub mod live;
pub mod signer;
pub mod soon;

pub use inputs::parse_assignments;

pub struct Reconciler {
    pub pool: PgPool,
    pub signer: Arc<dyn ConfigSigner>,
    pub cache: Arc<ConfigCache>,
    pub config_lifetime: Duration,
    /// Links to the portal compiled into `pay-per-site` configs.
    pub portal_links: PortalLinks,
    /// This replica, as the replicas' bus names it: the configs a recompile
    /// stores are announced to the others at its commit.
    pub replica: db::bus::ReplicaId,
    /// Woken when routers were marked to recompile soon (`soon.rs`).
    pub pending: tokio::sync::Notify,
    /// How many routers one transaction compiles (`soon.rs`).
    pub batching: soon::Batching,
    /// The size of the pass's next chunk, learned from the last ones
    /// (`soon::next_chunk`).
    pub pending_chunk: std::sync::atomic::AtomicUsize,
    /// Counts what recompiles compile and sign (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What a recompile did: how many devices it compiled and how many got a new version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecompileSummary {
    pub compiled: usize,
    pub changed: usize,
}

impl RecompileSummary {
    pub fn add(&mut self, other: RecompileSummary) {
        self.compiled += other.compiled;
        self.changed += other.changed;
    }
}

/// Configs a recompile stored in a transaction not yet committed.
#[must_use = "configs are served only once published"]
#[derive(Default)]
pub struct Compiled {
    compiled: usize,
    stored: Vec<db::configs::ConfigRow>,
}

impl Compiled {
    /// Whether no router was compiled.
    pub fn is_empty(&self) -> bool {
        self.compiled == 0
    }
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

impl Reconciler {
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

    /// Begins the transaction of a change that will recompile routers, with
    /// the recompile lock taken first. Taking it before any row lock is what
    /// keeps changes and recompiles from deadlocking: a recompile storing a
    /// config takes a key-share lock on its device's row, which a change
    /// holding that row `FOR UPDATE` would block while waiting for the
    /// recompile lock itself.
    pub async fn begin_change(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await.context("starting a change")?;
        db::locks::recompile(&mut tx)
            .await
            .context("taking the recompile lock")?;
        Ok(tx)
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
        db::locks::recompile(tx)
            .await
            .context("taking the recompile lock")?;
        let started = std::time::Instant::now();
        let vpns = crate::vpn::inputs::load(tx, devices).await?;
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
        let staged = inputs::load_staged(tx, devices, &assignments).await?;
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
                .push(inputs::device_block(&row));
        }
        let shops = inputs::load_shops(
            tx,
            devices,
            assignments.iter().chain(staged.previous_forms()),
            now,
        )
        .await?;
        let releases = inputs::load_releases(
            tx,
            devices,
            assignments.iter().chain(staged.previous_forms()),
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
        // Compiling and signing is CPU work: done off the async workers, so
        // a fleet-wide recompile never delays the device API.
        let published = cpu_bound(|| {
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
                    reads_names: reads_flow_names(shops.agent_versions.get(id).map(String::as_str)),
                };
                let in_force = staged.in_force(*id, &assignments);
                let mut firewall = compile_firewall(
                    &labels,
                    in_force.clone(),
                    blocks,
                    Some(&shop),
                    now.timestamp(),
                );
                firewall.wireguard = wireguard.get(id).cloned();
                let release = agent_release::plan(
                    agent_release::wanted(&labels, in_force),
                    releases.targets.get(id).map(String::as_str),
                    &releases.builds,
                );
                let digest = firewall.digest() + &release.digest_part();
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
                let agent_release_version = release.delivered_version().map(str::to_owned);
                let agent_release_missing = release.missing_version().map(str::to_owned);
                let config = isdf_api::DeviceConfig {
                    device_id: id.to_string(),
                    version: u64::try_from(version).context("version")?,
                    issued_at: now.timestamp(),
                    expires_at: (now + lifetime).timestamp(),
                    firewall,
                    agent_release: release.into_release(),
                };
                let payload = serde_json::to_vec(&config).context("serialising config")?;
                let envelope = self
                    .signer
                    .sign(isdf_api::CONFIG_PAYLOAD_TYPE, &payload)
                    .context("signing config")?
                    .to_json();
                published.push(db::configs::ConfigRow {
                    device_id: *id,
                    version,
                    digest,
                    issued_at: now,
                    expires_at: now + lifetime,
                    envelope,
                    agent_release_version,
                    agent_release_missing,
                });
            }
            anyhow::Ok(published)
        })?;
        for row in &published {
            db::configs::upsert(&mut **tx, row)
                .await
                .context("storing config")?;
        }
        let versions = published
            .iter()
            .map(|r| (r.device_id, r.version as u64))
            .collect();
        db::bus::send(tx, self.replica, &db::bus::Message::Configs(versions))
            .await
            .context("announcing the new configs to the other replicas")?;
        // Counted before the commit: a recompile rolled back did the work.
        self.metrics
            .recompiled(targets.len(), published.len(), started.elapsed());
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

    /// Fills the cache from the database at start: every device and its
    /// config version (envelopes are read when a router asks for one).
    pub async fn load_cache(&self) -> anyhow::Result<()> {
        for id in db::devices::all_ids(&self.pool)
            .await
            .context("loading devices")?
        {
            self.cache.add_device(id);
        }
        for (device, version) in db::configs::all_versions(&self.pool)
            .await
            .context("loading config versions")?
        {
            self.cache.announce(device, version as u64);
        }
        Ok(())
    }

    /// The device's latest config: held in the cache, or read from the
    /// database (and then held). None when it has none (or is gone).
    pub async fn served_config(&self, device: Uuid) -> anyhow::Result<Option<Arc<ServedConfig>>> {
        if let Some(held) = self
            .cache
            .current(device)
            .filter(|c| Some(c.version) == self.cache.version(device))
        {
            return Ok(Some(held));
        }
        let Some(row) = db::configs::get(&self.pool, device)
            .await
            .context("reading a config")?
        else {
            return Ok(None);
        };
        let config = ServedConfig {
            version: row.version as u64,
            envelope: row.envelope.into(),
        };
        self.cache.publish_heard(device, config);
        Ok(self.cache.current(device))
    }
}

/// Runs CPU-bound work without stalling the async workers: on the
/// multi-threaded runtime this worker's other tasks move to another thread
/// meanwhile (`block_in_place`); elsewhere (a single-threaded test runtime)
/// it simply runs.
fn cpu_bound<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
