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
//! replica's, or one that died between commit and pass). A pass compiles
//! [`Batching::chunk`] routers per transaction, so many marks (a rollout aborted on
//! 50,000 routers) never hold the recompile lock for long: other changes
//! go in between chunks.
//!
//! Changes that touch a few routers compile them in their own transaction
//! and many later ([`Reconciler::recompile_now_or_soon_in`]), so an
//! operator's call answers within a second at any fleet size.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{Compiled, RecompileSummary, Reconciler, Resign};
use crate::db;

/// How long a pass waits after its first poke, gathering the burst.
pub const WINDOW: Duration = Duration::from_millis(100);
/// A pass runs at least this often.
pub const SWEEP: Duration = Duration::from_secs(2);
/// What [`Reconciler::recompile_now_or_soon_in`] did.
pub struct NowOrSoon {
    /// Compiled in the caller's transaction (publish once committed).
    pub now: Compiled,
    /// Marked for the pass.
    pub soon: usize,
}

/// How many routers one transaction compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most routers a change compiles in its own transaction; beyond,
    /// they are marked for the pass.
    pub at_once: usize,
    /// Routers compiled per transaction of a pass, or of a rollout step
    /// compiling a large wave.
    pub chunk: usize,
}

impl Default for Batching {
    /// About a quarter and half a second of compiling and signing on one
    /// core: operators' calls answer within a second at any fleet size.
    fn default() -> Self {
        Batching {
            at_once: 1000,
            chunk: 2000,
        }
    }
}

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

    /// Recompiles `devices` in the caller's transaction when they are at
    /// most [`Batching::at_once`], else marks them for the pass. Call
    /// [`Reconciler::poke`] after the commit either way.
    pub async fn recompile_now_or_soon_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        devices: &[Uuid],
    ) -> anyhow::Result<NowOrSoon> {
        if devices.len() <= self.batching.at_once {
            let now = self
                .recompile_in(tx, Some(devices), Resign::IfChanged)
                .await?;
            return Ok(NowOrSoon { now, soon: 0 });
        }
        self.recompile_soon_in(tx, devices).await?;
        Ok(NowOrSoon {
            now: Compiled::default(),
            soon: devices.len(),
        })
    }

    /// Tells this replica's pass that routers were marked.
    pub fn poke(&self) {
        self.pending.notify_one();
    }

    /// Recompiles every marked router once, [`Batching::chunk`] per
    /// transaction.
    pub async fn recompile_pending(&self) -> anyhow::Result<RecompileSummary> {
        let mut total = RecompileSummary::default();
        loop {
            let mut tx = self.begin_change().await?;
            let devices = db::pending_recompiles::take(&mut *tx, self.batching.chunk as i64)
                .await
                .context("taking the marked routers")?;
            if devices.is_empty() {
                return Ok(total);
            }
            let compiled = self
                .recompile_in(&mut tx, Some(&devices), Resign::IfChanged)
                .await?;
            tx.commit()
                .await
                .context("committing the marked routers' configs")?;
            total.add(self.publish(compiled));
        }
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
