//! `fleet_samples`: the fleet's counts once a minute, for the dashboard's
//! charts over time (`cluster::history` writes them, the fleet page reads
//! them through `/api/v1/fleet/history`).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;

use super::fleet::{Bucket, Totals};

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FleetSample {
    /// The minute the counts were taken in.
    #[sqlx(rename = "sampled_at")]
    pub at: DateTime<Utc>,
    pub devices: i32,
    pub online: i32,
    pub stale: i32,
    pub failing: i32,
    pub never_reported: i32,
    /// The 20 most common agent versions, the rest as `other`.
    #[schema(value_type = Vec<Bucket>)]
    pub by_agent_version: Json<Vec<Bucket>>,
}

/// Stores the counts of the minute `at` falls in; a second sample of the
/// same minute (two leaders overlapping for a moment) is dropped. Returns
/// whether this one was stored.
pub async fn record(
    db: impl PgExecutor<'_>,
    at: DateTime<Utc>,
    totals: &Totals,
    by_agent_version: &[Bucket],
) -> Result<bool, sqlx::Error> {
    let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(sqlx::query(
        "INSERT INTO fleet_samples
             (sampled_at, devices, online, stale, failing, never_reported, by_agent_version)
         VALUES (date_trunc('minute', $1::timestamptz), $2, $3, $4, $5, $6, $7)
         ON CONFLICT (sampled_at) DO NOTHING",
    )
    .bind(at)
    .bind(count(totals.devices))
    .bind(count(totals.online))
    .bind(count(totals.stale))
    .bind(count(totals.failing))
    .bind(count(totals.never_reported))
    .bind(Json(by_agent_version))
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Deletes the samples taken before `before`; returns how many.
pub async fn prune(db: impl PgExecutor<'_>, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM fleet_samples WHERE sampled_at < $1")
            .bind(before)
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// The samples in `[since, until)`, at most one per `step_secs` (the last
/// of each step: counts of a moment, not averages), oldest first.
pub async fn samples(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step_secs: i64,
) -> Result<Vec<FleetSample>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM (
             SELECT DISTINCT ON (date_bin(make_interval(secs => $3), sampled_at, $1))
                    sampled_at, devices, online, stale, failing, never_reported, by_agent_version
             FROM fleet_samples WHERE sampled_at >= $1 AND sampled_at < $2
             ORDER BY date_bin(make_interval(secs => $3), sampled_at, $1), sampled_at DESC) steps
         ORDER BY sampled_at",
    )
    .bind(since)
    .bind(until)
    .bind(step_secs as f64)
    .fetch_all(db)
    .await
}
