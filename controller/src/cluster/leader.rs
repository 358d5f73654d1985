//! One replica at a time runs the background loops: the one holding the
//! leader's advisory lock, a session lock on a connection of its own. The
//! lock lives exactly as long as that connection: when the replica dies,
//! is stopped or loses the database, PostgreSQL releases it and another
//! replica, trying every [`RETRY`], takes it. The leader checks its
//! connection every [`CHECK`] and stops its loops as soon as the check
//! fails, so two replicas overlap for at most a few seconds; the loops are
//! safe to overlap (the rollout driver takes a lock per pass, recompiles
//! take the recompile lock), leadership only keeps N replicas from doing
//! the same work N times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;

use crate::db;

/// How often a replica that does not lead tries to.
pub const RETRY: Duration = Duration::from_secs(1);
/// How often the leader checks the connection that holds its lock.
pub const CHECK: Duration = Duration::from_secs(1);
/// A check that takes longer has failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether this replica leads now (shown by `/readyz`'s body and the logs).
#[derive(Debug, Default)]
pub struct Leadership(AtomicBool);

impl Leadership {
    pub fn is_leading(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, leading: bool) {
        self.0.store(leading, Ordering::Release);
    }
}

/// Campaigns for the leader's lock and, while holding it, runs the loops
/// `start` spawns; they are aborted when the lock is lost. Runs until
/// aborted (dropping the connection gives the lock up).
pub async fn lead<F>(pool: PgPool, leadership: Arc<Leadership>, start: F)
where
    F: Fn() -> Vec<JoinHandle<()>>,
{
    let mut candidate: Option<PgConnection> = None;
    loop {
        let mut conn = match candidate.take() {
            Some(conn) => conn,
            // A connection of its own, outside the pool: the lock must not
            // pass to whichever task uses the connection next.
            None => match pool.acquire().await {
                Ok(conn) => conn.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "connecting to campaign for leadership");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        match db::locks::try_leader(&mut conn).await {
            Ok(true) => {
                leadership.set(true);
                tracing::info!("leading: the background loops run on this replica");
                let loops = AbortOnDrop(start());
                while still_held(&mut conn).await {
                    tokio::time::sleep(CHECK).await;
                }
                drop(loops);
                leadership.set(false);
                tracing::warn!("lost the leader's connection: the background loops stop here");
            }
            Ok(false) => {
                candidate = Some(conn);
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "campaigning for leadership");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The leader's loops: aborted when leadership is lost, and when the
/// campaign itself is aborted (the replica stopping).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Whether the connection holding the lock still answers.
async fn still_held(conn: &mut PgConnection) -> bool {
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, conn.ping()).await,
        Ok(Ok(()))
    )
}
