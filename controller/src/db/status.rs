//! `device_status` (latest report per device) and its bounded history.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use sqlx::PgExecutor;
use uuid::Uuid;

use isdf_api::StatusReport;

/// Reports kept per device in the history.
pub const HISTORY_PER_DEVICE: i64 = 100;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusRow {
    pub sequence: i64,
    pub received_at: DateTime<Utc>,
    pub report: Json<StatusReport>,
}

/// Stores a report if its sequence is above the stored one; returns whether
/// it was accepted. Run inside a transaction.
pub async fn record(
    tx: &mut PgConnection,
    device_id: Uuid,
    report: &StatusReport,
) -> Result<bool, sqlx::Error> {
    let sequence = i64::try_from(report.sequence).unwrap_or(i64::MAX);
    let accepted = sqlx::query(
        "INSERT INTO device_status (device_id, sequence, report) VALUES ($1, $2, $3)
         ON CONFLICT (device_id) DO UPDATE SET sequence = $2, report = $3, received_at = now()
         WHERE device_status.sequence < EXCLUDED.sequence",
    )
    .bind(device_id)
    .bind(sequence)
    .bind(Json(report))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if accepted {
        sqlx::query(
            "INSERT INTO device_status_history (device_id, sequence, report) VALUES ($1, $2, $3)",
        )
        .bind(device_id)
        .bind(sequence)
        .bind(Json(report))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM device_status_history WHERE device_id = $1 AND sequence <= $2 - $3
               AND sequence < (SELECT min(sequence) FROM (SELECT sequence FROM device_status_history
                   WHERE device_id = $1 ORDER BY sequence DESC LIMIT $3) newest)",
        )
        .bind(device_id)
        .bind(sequence)
        .bind(HISTORY_PER_DEVICE)
        .execute(&mut *tx)
        .await?;
    }
    Ok(accepted)
}

/// The version each device last reported enforcing (devices that
/// reported one).
pub async fn enforced_versions(db: impl PgExecutor<'_>) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, (report->>'enforced_version')::bigint FROM device_status
         WHERE jsonb_typeof(report->'enforced_version') = 'number'",
    )
    .fetch_all(db)
    .await
}

pub async fn latest(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Option<StatusRow>, sqlx::Error> {
    sqlx::query_as("SELECT sequence, received_at, report FROM device_status WHERE device_id = $1")
        .bind(device_id)
        .fetch_optional(db)
        .await
}

pub async fn history(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    limit: i64,
) -> Result<Vec<StatusRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sequence, received_at, report FROM device_status_history
         WHERE device_id = $1 ORDER BY sequence DESC LIMIT $2",
    )
    .bind(device_id)
    .bind(limit)
    .fetch_all(db)
    .await
}
