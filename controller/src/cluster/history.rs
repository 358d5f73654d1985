//! The leader samples the fleet once a minute into `fleet_samples` (the
//! overview's counts and agent versions) and prunes what is older than the
//! retention: the fleet page's charts over time. A replica that takes over
//! goes on where the last one stopped; a minute without a leader is a gap
//! in the charts, not a made-up point.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use sqlx::PgPool;

use crate::db;
use crate::db::fleet::Bucket;

/// How long samples are kept unless `--fleet-history-days` says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// One sample a minute.
pub const EVERY: Duration = Duration::from_secs(60);

/// Samples at once (a new leader's first minute is not lost), then at the
/// start of every minute. Runs until aborted (the leader's loops are).
pub async fn sample_loop(pool: PgPool, retention: Duration) {
    loop {
        let now = Utc::now();
        if let Err(e) = sample(&pool, now, retention).await {
            tracing::warn!(error = ?e, "sampling the fleet's history");
        }
        tokio::time::sleep(until_next_minute(now)).await;
    }
}

/// Stores the fleet's counts of now under the minute of `at`, and deletes
/// what is older than `retention` before `at`. Returns whether a sample was
/// stored (not when one of that minute exists).
pub async fn sample(pool: &PgPool, at: DateTime<Utc>, retention: Duration) -> anyhow::Result<bool> {
    use anyhow::Context;
    let overview = db::fleet::overview(pool)
        .await
        .context("counting the fleet")?;
    let versions = crate::metrics::fleet::bounded_versions(
        overview
            .by_agent_version
            .0
            .into_iter()
            .map(|b| (b.value, b.count))
            .collect(),
    )
    .into_iter()
    .map(|(value, count)| Bucket { value, count })
    .collect::<Vec<_>>();
    let stored = db::fleet_history::record(pool, at, &overview.totals.0, &versions)
        .await
        .context("storing the fleet's sample")?;
    let horizon = at - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    db::fleet_history::prune(pool, horizon)
        .await
        .context("pruning the fleet's history")?;
    Ok(stored)
}

/// From `now` to the start of the next minute (a second late, so the
/// sample lands inside that minute whatever the rounding).
fn until_next_minute(now: DateTime<Utc>) -> Duration {
    let minute = chrono::Duration::from_std(EVERY).expect("a minute");
    let next = now.duration_trunc(minute).unwrap_or(now) + minute;
    (next - now).to_std().unwrap_or(EVERY) + Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_sample_is_early_in_the_next_minute() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            until_next_minute(at("2026-12-06T10:00:00Z")),
            Duration::from_secs(61)
        );
        assert_eq!(
            until_next_minute(at("2026-12-06T10:00:59.5Z")),
            Duration::from_millis(1500)
        );
        assert_eq!(
            until_next_minute(at("2026-12-06T10:00:30Z")),
            Duration::from_secs(31)
        );
    }
}
