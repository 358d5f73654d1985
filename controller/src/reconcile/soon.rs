//! Recompiles that may wait a moment: a change whose effect on other
//! routers need not be in force when its answer is (the peers of a router
//! joining a VPN: the joining router's own config is compiled at once)
//! marks them in `pending_recompiles`, in its own transaction. A pass
//! [`WINDOW`] after the first mark compiles every marked router once, so a
//! burst of joins (a 1,000-site mesh brought up one site at a time) signs
//! each member's config once per window, not once per join.
//!
//! Every replica runs the pass ([`recompile_soon_loop`]); marks are taken
//! under the recompile lock, so each is compiled by one of them. A pass
//! also runs every [`SWEEP`], for marks whose poke was lost (another
//! replica's, or one that died between commit and pass).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{RecompileSummary, Reconciler, Resign};
use crate::db;

/// How long a pass waits after its first poke, gathering the burst.
pub const WINDOW: Duration = Duration::from_millis(100);
/// A pass runs at least this often.
pub const SWEEP: Duration = Duration::from_secs(2);

impl Reconciler {
    /// Marks `devices` to be recompiled within a moment, in the caller's
    /// transaction; call [`Reconciler::poke`] once it committed.
    pub async fn recompile_soon_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        devices: &[Uuid],
    ) -> anyhow::Result<()> {
        if devices.is_empty() {
            return Ok(());
        }
        db::pending_recompiles::add(&mut **tx, devices)
            .await
            .context("marking routers to recompile")
    }

    /// Tells this replica's pass that routers were marked.
    pub fn poke(&self) {
        self.pending.notify_one();
    }

    /// Recompiles every marked router once, in one transaction.
    pub async fn recompile_pending(&self) -> anyhow::Result<RecompileSummary> {
        let mut tx = self.begin_change().await?;
        let devices = db::pending_recompiles::take_all(&mut *tx)
            .await
            .context("taking the marked routers")?;
        if devices.is_empty() {
            return Ok(RecompileSummary::default());
        }
        let compiled = self
            .recompile_in(&mut tx, Some(&devices), Resign::IfChanged)
            .await?;
        tx.commit()
            .await
            .context("committing the marked routers' configs")?;
        Ok(self.publish(compiled))
    }
}

/// The pass: after a poke (and [`WINDOW`]) or every [`SWEEP`]. Runs until
/// aborted.
pub async fn recompile_soon_loop(reconciler: Arc<Reconciler>) {
    loop {
        tokio::select! {
            () = reconciler.pending.notified() => tokio::time::sleep(WINDOW).await,
            () = tokio::time::sleep(SWEEP) => {}
        }
        match reconciler.recompile_pending().await {
            Ok(summary) if summary.compiled > 0 => {
                tracing::debug!(?summary, "recompiled the marked routers");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "recompiling the marked routers"),
        }
    }
}
