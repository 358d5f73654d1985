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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Recompiles every marked router once, a chunk per transaction: at
    /// most [`Batching::chunk`] routers, fewer when their configs are heavy
    /// (see [`next_chunk`]).
    pub async fn recompile_pending(&self) -> anyhow::Result<RecompileSummary> {
        let mut total = RecompileSummary::default();
        loop {
            let size = self.pending_chunk.load(Ordering::Relaxed);
            let started = Instant::now();
            let mut tx = self.begin_change().await?;
            let devices = db::pending_recompiles::take(&mut *tx, size as i64)
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
            let next = next_chunk(size, devices.len(), started.elapsed(), self.batching.chunk);
            self.pending_chunk.store(next, Ordering::Relaxed);
        }
    }
}

/// How long a chunk of the pass should hold the recompile lock: what a
/// change arriving meanwhile (a VPN join, a block) waits at most, roughly.
pub const CHUNK_TIME: Duration = Duration::from_millis(200);

/// The next chunk's size after `taken` routers (of `size` asked) took
/// `took`: scaled towards [`CHUNK_TIME`], at most halved or doubled at a
/// time, between 1 and `max`. Members of a large mesh VPN carry hundreds of
/// peers each, and a chunk of them takes seconds; a fleet's simple configs
/// take a fraction of a millisecond each.
pub fn next_chunk(size: usize, taken: usize, took: Duration, max: usize) -> usize {
    if taken < size && took <= CHUNK_TIME {
        // A short chunk because few were marked says nothing of their cost.
        return size;
    }
    let ratio = CHUNK_TIME.as_secs_f64() / took.as_secs_f64().max(1e-6);
    let scaled = (size as f64 * ratio.clamp(0.5, 2.0)).round() as usize;
    scaled.clamp(1, max.max(1))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn chunks_shrink_when_heavy_and_grow_back_when_light() {
        // A chunk of mesh members that took 2 s: halved (at most).
        assert_eq!(next_chunk(2000, 2000, 2000 * MS, 2000), 1000);
        // Twice the target: halved; half of it: doubled, up to the maximum.
        assert_eq!(next_chunk(100, 100, 400 * MS, 2000), 50);
        assert_eq!(next_chunk(100, 100, 100 * MS, 2000), 200);
        assert_eq!(next_chunk(1500, 1500, 10 * MS, 2000), 2000);
        // Never below one router.
        assert_eq!(next_chunk(1, 1, 5000 * MS, 2000), 1);
        // Near the target: about the same.
        assert_eq!(next_chunk(100, 100, 210 * MS, 2000), 95);
    }

    #[test]
    fn a_short_cheap_chunk_keeps_the_size() {
        assert_eq!(next_chunk(500, 3, MS, 2000), 500);
        // Short but slow still teaches: three routers took a second.
        assert_eq!(next_chunk(500, 3, 1000 * MS, 2000), 250);
    }
}
