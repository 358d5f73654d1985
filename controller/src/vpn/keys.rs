//! What routers report of their WireGuard side (stored with the probe
//! address their nonce proved, see `probes.rs`), and the key decisions the
//! controller takes from it: `next_facts` (pure) is the rotation state
//! machine, `KeyKeeper` stores facts, recompiles the routers sharing a VPN
//! with the reporter when their configs change and moves rotations on.
//!
//! Key rotation, with an overlap so traffic never waits for a handshake
//! with an unknown key: (1) the router reports a new key as
//! `next_public_key`; its peers are told to accept it besides the current
//! one (*announced*). (2) Once every peer enforces that (or after
//! [`ROTATION_WAIT`]), the router is told to use it and peers prefer it,
//! still accepting the old one (*switching*). (3) When the router reports
//! the new key in use, the old one leaves every peer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use isdf_api::WireguardFacts;
use sqlx::types::Json;
use uuid::Uuid;

use crate::db;
use crate::db::wireguard::FactsRow;
use crate::reconcile::{Compiled, RecompileSummary, Reconciler, Resign};

/// An announced rotation goes ahead after this even if some peers (offline
/// ones) never confirmed; they learn the new key with their next config.
pub const ROTATION_WAIT: Duration = Duration::from_secs(30);

const ANNOUNCED: &str = "announced";
const SWITCHING: &str = "switching";

/// Why facts were refused.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The new facts row from what the router reported (`old` is what was
/// stored) and the probe address its nonce proved. Pure: the rotation
/// state machine lives here.
pub fn next_facts(
    device: Uuid,
    old: Option<&FactsRow>,
    facts: &WireguardFacts,
    reachable: Option<IpAddr>,
) -> FactsRow {
    let reported = facts.public_key.to_string();
    let next = facts.next_public_key.map(|k| k.to_string());
    let generation = i32::try_from(facts.key_generation).unwrap_or(i32::MAX);
    let mut row = match old {
        Some(old) => old.clone(),
        None => FactsRow {
            device_id: device,
            public_key: reported.clone(),
            next_public_key: None,
            key_generation: generation,
            listen_port: 0,
            wan_addresses: vec![],
            reachable_address: None,
            requested_generation: generation.max(1),
            active_public_key: reported.clone(),
            alternate_public_key: None,
            rotation_stage: None,
            rotation_waits_for: None,
            updated_at: chrono::Utc::now(),
        },
    };
    row.public_key = reported.clone();
    row.next_public_key = next.clone();
    row.key_generation = generation;
    row.listen_port = i32::from(facts.listen_port);
    row.wan_addresses = facts.wan_addresses.iter().map(IpAddr::to_string).collect();
    row.reachable_address = reachable.map(|a| a.to_string());
    match row.rotation_stage.as_deref() {
        None => match next {
            Some(next) if next != row.active_public_key => {
                row.rotation_stage = Some(ANNOUNCED.into());
                row.alternate_public_key = Some(next);
                row.rotation_waits_for = None;
            }
            _ if reported != row.active_public_key => {
                // The router uses a key we did not tell it about (its state
                // was wiped): its peers must learn it.
                row.active_public_key = reported;
                row.alternate_public_key = None;
            }
            _ => {}
        },
        Some(ANNOUNCED) => {
            // A newer key replaced the announced one: announce that instead.
            if let Some(next) = next.filter(|n| Some(n) != row.alternate_public_key.as_ref()) {
                row.alternate_public_key = Some(next);
                row.rotation_waits_for = None;
            }
        }
        Some(_) => {
            if reported == row.active_public_key && next.is_none() {
                row.rotation_stage = None;
                row.alternate_public_key = None;
                row.rotation_waits_for = None;
            }
        }
    }
    row
}

/// Whether the change from `old` to `new` changes any router's config.
fn changes_configs(old: Option<&FactsRow>, new: &FactsRow) -> bool {
    old.is_none_or(|old| {
        (
            &old.active_public_key,
            &old.alternate_public_key,
            &old.reachable_address,
            old.listen_port,
            old.requested_generation,
        ) != (
            &new.active_public_key,
            &new.alternate_public_key,
            &new.reachable_address,
            new.listen_port,
            new.requested_generation,
        )
    })
}

/// The key rotation side of the controller.
pub struct KeyKeeper<'a> {
    pub reconciler: &'a Reconciler,
}

impl KeyKeeper<'_> {
    /// Stores what a router reported (`reachable`: where a probe it
    /// redeemed went) and recompiles the routers that share a VPN with it
    /// when their configs change.
    pub async fn record(
        &self,
        device: Uuid,
        facts: &WireguardFacts,
        reachable: Option<IpAddr>,
    ) -> Result<RecompileSummary, FactsError> {
        facts.check().map_err(FactsError::Invalid)?;
        let pool = &self.reconciler.pool;
        let mut tx = pool.begin().await.context("starting facts")?;
        let old = db::wireguard::lock(&mut *tx, device)
            .await
            .context("loading facts")?;
        let new = next_facts(device, old.as_ref(), facts, reachable);
        db::wireguard::upsert(&mut *tx, &new)
            .await
            .context("storing facts")?;
        tx.commit().await.context("committing facts")?;
        let announced =
            new.rotation_stage.as_deref() == Some(ANNOUNCED) && new.rotation_waits_for.is_none();
        let mut summary = RecompileSummary::default();
        if changes_configs(old.as_ref(), &new) {
            summary = self.recompile_around(device).await?;
            let reachable_now = new.reachable_address.is_some()
                && old.is_none_or(|o| o.reachable_address.is_none());
            if reachable_now
                && db::wireguard::is_relay(&self.reconciler.pool, device)
                    .await
                    .context("is it a relay")?
            {
                // VPNs nothing reaches may wait for this relay.
                self.reconciler.recompile_vpns_wanting_relay().await?;
            }
        }
        if announced {
            self.wait_for_peers(device).await?;
        }
        Ok(summary)
    }

    /// Asks the router for a new key, in the caller's transaction; the
    /// rotation proceeds from its report. The configs to publish once `tx`
    /// commits come back with the new generation (None: nothing to ask).
    pub async fn request_rotation_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        device: Uuid,
    ) -> anyhow::Result<(Option<i32>, Compiled)> {
        let generation = db::wireguard::request_rotation(&mut **tx, device)
            .await
            .context("requesting a rotation")?;
        let compiled = match generation {
            Some(_) => {
                self.reconciler
                    .recompile_in(tx, Some(&[device]), Resign::IfChanged)
                    .await?
            }
            None => Compiled::default(),
        };
        Ok((generation, compiled))
    }

    async fn recompile_around(&self, device: Uuid) -> anyhow::Result<RecompileSummary> {
        let group = db::wireguard::devices_sharing_vpns_with(&self.reconciler.pool, device)
            .await
            .context("finding the routers that share a VPN")?;
        self.reconciler
            .recompile(Some(&group), Resign::IfChanged)
            .await
    }

    /// After announcing: note which config version each other router must
    /// enforce before `device` switches (the ones already enforcing it are
    /// not waited for); switch at once when nobody is left.
    async fn wait_for_peers(&self, device: Uuid) -> anyhow::Result<()> {
        let pool = &self.reconciler.pool;
        let group: Vec<Uuid> = db::wireguard::devices_sharing_vpns_with(pool, device)
            .await
            .context("finding peers")?
            .into_iter()
            .filter(|d| *d != device)
            .collect();
        let waits: BTreeMap<Uuid, i64> = db::wireguard::config_versions(pool, &group)
            .await
            .context("loading peer versions")?
            .into_iter()
            .filter(|(peer, version)| {
                self.reconciler.cache.enforced(*peer) < u64::try_from(*version).unwrap_or(0)
            })
            .collect();
        let mut tx = pool.begin().await.context("starting rotation")?;
        let Some(mut row) = db::wireguard::lock(&mut *tx, device)
            .await
            .context("loading facts")?
        else {
            return Ok(());
        };
        if row.rotation_stage.as_deref() != Some(ANNOUNCED) {
            return Ok(());
        }
        let nobody = waits.is_empty();
        let peers: Vec<Uuid> = waits.keys().copied().collect();
        row.rotation_waits_for = Some(Json(waits));
        db::wireguard::upsert(&mut *tx, &row)
            .await
            .context("storing rotation")?;
        tx.commit().await.context("committing rotation")?;
        if nobody {
            return self.switch(device).await;
        }
        // A peer whose report came between reading the versions above and
        // this commit found no waits to clear (its `enforced` looked before
        // they were stored): clear them for it now, from the cache its
        // report updated before looking. Later reports see the stored waits.
        for peer in peers {
            let version = self.reconciler.cache.enforced(peer);
            if version > 0 {
                self.enforced(peer, version).await?;
            }
        }
        Ok(())
    }

    /// A router reported enforcing `version`: rotations that waited for it
    /// may switch now.
    pub async fn enforced(&self, device: Uuid, version: u64) -> anyhow::Result<()> {
        let waiting = db::wireguard::rotations_waiting_on(&self.reconciler.pool, device)
            .await
            .context("finding rotations")?;
        for (rotating, needed) in waiting {
            if version < u64::try_from(needed).unwrap_or(u64::MAX) {
                continue;
            }
            let mut tx = self.reconciler.pool.begin().await.context("starting")?;
            let Some(mut row) = db::wireguard::lock(&mut *tx, rotating)
                .await
                .context("loading facts")?
            else {
                continue;
            };
            let Some(Json(waits)) = row.rotation_waits_for.as_mut() else {
                continue;
            };
            waits.remove(&device);
            let done = waits.is_empty();
            db::wireguard::upsert(&mut *tx, &row)
                .await
                .context("storing rotation")?;
            tx.commit().await.context("committing")?;
            if done {
                self.switch(rotating).await?;
            }
        }
        Ok(())
    }

    /// Rotations announced longer than [`ROTATION_WAIT`] ago switch now.
    pub async fn switch_stalled(&self) -> anyhow::Result<usize> {
        let before =
            chrono::Utc::now() - chrono::Duration::from_std(ROTATION_WAIT).context("wait")?;
        let stalled = db::wireguard::rotations_announced_before(&self.reconciler.pool, before)
            .await
            .context("finding stalled rotations")?;
        for device in &stalled {
            self.switch(*device).await?;
        }
        Ok(stalled.len())
    }

    /// Tells the router to use its announced key; peers prefer the new key
    /// and still accept the old one until the router reports the switch.
    async fn switch(&self, device: Uuid) -> anyhow::Result<()> {
        let mut tx = self
            .reconciler
            .pool
            .begin()
            .await
            .context("starting switch")?;
        let Some(mut row) = db::wireguard::lock(&mut *tx, device)
            .await
            .context("loading facts")?
        else {
            return Ok(());
        };
        let Some(next) = row.alternate_public_key.clone() else {
            return Ok(());
        };
        if row.rotation_stage.as_deref() != Some(ANNOUNCED) {
            return Ok(());
        }
        row.alternate_public_key = Some(std::mem::replace(&mut row.active_public_key, next));
        row.rotation_stage = Some(SWITCHING.into());
        row.rotation_waits_for = None;
        db::wireguard::upsert(&mut *tx, &row)
            .await
            .context("storing switch")?;
        tx.commit().await.context("committing switch")?;
        tracing::info!(%device, key = %row.active_public_key, "WireGuard key switch");
        self.recompile_around(device).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isdf_api::WgKey;

    fn facts(using: u8, next: Option<u8>, generation: u32) -> WireguardFacts {
        WireguardFacts {
            public_key: WgKey([using; 32]),
            next_public_key: next.map(|n| WgKey([n; 32])),
            key_generation: generation,
            listen_port: 51820,
            wan_addresses: vec![],
            probe_nonce: None,
        }
    }

    fn k(n: u8) -> String {
        WgKey([n; 32]).to_string()
    }

    #[test]
    fn a_rotation_announces_then_switches_then_forgets_the_old_key() {
        let device = Uuid::from_u128(7);
        let first = next_facts(device, None, &facts(1, None, 1), None);
        assert_eq!(first.active_public_key, k(1));
        assert_eq!(first.rotation_stage, None);
        // The router made key 2 for generation 2: peers learn it.
        let announced = next_facts(device, Some(&first), &facts(1, Some(2), 2), None);
        assert_eq!(announced.rotation_stage.as_deref(), Some(ANNOUNCED));
        assert_eq!(announced.active_public_key, k(1));
        assert_eq!(announced.alternate_public_key, Some(k(2)));
        assert!(changes_configs(Some(&first), &announced));
        // (The switch itself is the controller's decision, in `switch`.)
        let mut switching = announced.clone();
        switching.active_public_key = k(2);
        switching.alternate_public_key = Some(k(1));
        switching.rotation_stage = Some(SWITCHING.into());
        // Still using the old key: nothing changes.
        let waiting = next_facts(device, Some(&switching), &facts(1, Some(2), 2), None);
        assert_eq!(waiting.rotation_stage.as_deref(), Some(SWITCHING));
        assert!(!changes_configs(Some(&switching), &waiting));
        // Using the new one: the old key leaves.
        let done = next_facts(device, Some(&switching), &facts(2, None, 2), None);
        assert_eq!(done.rotation_stage, None);
        assert_eq!(done.active_public_key, k(2));
        assert_eq!(done.alternate_public_key, None);
    }

    #[test]
    fn a_router_that_lost_its_key_is_known_by_its_new_one() {
        let device = Uuid::from_u128(7);
        let first = next_facts(device, None, &facts(1, None, 1), None);
        let wiped = next_facts(device, Some(&first), &facts(9, None, 1), None);
        assert_eq!(wiped.active_public_key, k(9));
        assert!(changes_configs(Some(&first), &wiped));
    }
}
