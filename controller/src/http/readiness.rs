//! Whether this replica can serve: its database answers and its cache was
//! filled from it. Load balancers and orchestrators ask often and anyone
//! reaching a listener may ask (the device listener admits a health check
//! without a client certificate), so one check is shared by every caller
//! within [`REUSE_FOR`]: at most one `SELECT 1` a second, each bounded by
//! [`DATABASE_TIMEOUT`] whatever the pool does.
//!
//! Liveness (`/healthz`) is deliberately not this: it says only that the
//! process answers. A database outage makes every replica unready at once;
//! were liveness tied to it, an orchestrator would restart them all, which
//! cannot bring the database back and drops every router's long poll.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::db;
use crate::reconcile::config_cache::ConfigCache;

/// How long one check's answer is given to later callers.
pub const REUSE_FOR: Duration = Duration::from_secs(1);
/// The longest a check waits for the database (a connection and `SELECT 1`).
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The last check and when it was made.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Ok when ready, else why not. Callers arriving during a check wait
    /// for it and share its answer.
    pub async fn check(&self, pool: &PgPool, cache: &ConfigCache) -> Result<(), String> {
        self.check_at(Instant::now(), pool, cache).await
    }

    /// [`Readiness::check`] at `now`.
    async fn check_at(
        &self,
        now: Instant,
        pool: &PgPool,
        cache: &ConfigCache,
    ) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if now.saturating_duration_since(*at) < REUSE_FOR {
                return answer.clone();
            }
        }
        let answer = Self::check_now(pool, cache).await;
        *last = Some((now, answer.clone()));
        answer
    }

    async fn check_now(pool: &PgPool, cache: &ConfigCache) -> Result<(), String> {
        if !cache.is_loaded() {
            return Err("the config cache is not loaded yet".into());
        }
        match tokio::time::timeout(DATABASE_TIMEOUT, db::databases::ping(pool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the database is not reachable: {e}")),
            Err(_) => Err(format!(
                "the database did not answer within {} s",
                DATABASE_TIMEOUT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_answer_serves_every_caller_for_a_second() {
        // Nothing listens there: every real check fails on the database.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@localhost/none?host=/nonexistent")
            .unwrap();
        let cache = ConfigCache::default();
        let readiness = Readiness::default();
        let start = Instant::now();
        let first = readiness.check_at(start, &pool, &cache).await.unwrap_err();
        assert!(first.contains("cache"), "{first}");
        cache.mark_loaded();
        // Within the second: the same answer, nothing asked again.
        let shared = start + REUSE_FOR - Duration::from_millis(1);
        assert_eq!(readiness.check_at(shared, &pool, &cache).await, Err(first));
        // After it: checked again, now down to the database.
        let again = readiness
            .check_at(start + REUSE_FOR, &pool, &cache)
            .await
            .unwrap_err();
        assert!(again.contains("database"), "{again}");
    }
}
