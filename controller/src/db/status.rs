//! `device_status` (latest report per device) and its bounded history.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use sqlx::PgExecutor;
use uuid::Uuid;

use isdf_api::{AgentCounters, StatusReport};

/// Reports kept per device in the history.
pub const HISTORY_PER_DEVICE: i64 = 100;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusRow {
    pub sequence: i64,
    pub received_at: DateTime<Utc>,
    pub report: Json<StatusReport>,
}

/// What storing a report found.
#[derive(Debug)]
pub enum Recorded {
    /// Its sequence is not above the stored one: nothing was stored.
    Stale,
    /// Stored; with the agent's counters, target triple and version of the
    /// report it replaced, if that one carried them.
    Accepted {
        previous_counters: Option<AgentCounters>,
        previous_target: Option<String>,
        previous_version: Option<String>,
    },
}

/// What `record` reads of the report it replaces: the agent's counters,
/// target triple and version.
type PreviousReport = (Option<Json<AgentCounters>>, Option<String>, Option<String>);

/// Stores a report if its sequence is above the stored one, returning the
/// agent counters it replaced (the row is locked first, so two reports of
/// one router never both count the same increase). Run inside a
/// transaction.
pub async fn record(
    tx: &mut PgConnection,
    device_id: Uuid,
    report: &StatusReport,
) -> Result<Recorded, sqlx::Error> {
    let sequence = i64::try_from(report.sequence).unwrap_or(i64::MAX);
    // A statement of its own: a row locked in a CTE and updated by the
    // same statement is gone from the CTE when RETURNING reads it.
    let previous: Option<PreviousReport> = sqlx::query_as(
        "SELECT report -> 'agent_counters', report ->> 'agent_target',
                    report ->> 'agent_version' FROM device_status
             WHERE device_id = $1 FOR UPDATE",
    )
    .bind(device_id)
    .fetch_optional(&mut *tx)
    .await?;
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
    if !accepted {
        return Ok(Recorded::Stale);
    }
    let (previous_counters, previous_target, previous_version) = previous.unwrap_or_default();
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
    Ok(Recorded::Accepted {
        previous_counters: previous_counters.map(|c| c.0),
        previous_target,
        previous_version,
    })
}

/// A text field of the agent's reports that the controller compiles by.
#[derive(Debug, Clone, Copy)]
pub enum ReportedText {
    /// The target triple it was built for (agent releases).
    AgentTarget,
    /// Its version (what config fields it reads).
    AgentVersion,
}

impl ReportedText {
    fn key(self) -> &'static str {
        match self {
            ReportedText::AgentTarget => "agent_target",
            ReportedText::AgentVersion => "agent_version",
        }
    }
}

/// `field` as each of `devices` (all when None) last reported it (devices
/// whose report has it).
pub async fn reported(
    db: impl PgExecutor<'_>,
    devices: Option<&[Uuid]>,
    field: ReportedText,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, report->>$2 FROM device_status
         WHERE report ? $2 AND ($1::uuid[] IS NULL OR device_id = ANY($1))",
    )
    .bind(devices)
    .bind(field.key())
    .fetch_all(db)
    .await
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
