//! `device_events` (bounded per device) and `device_event_totals`.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use isdf_api::events::DeviceEvent;

/// Events kept per device; totals keep counting past it.
pub const EVENTS_PER_DEVICE: i64 = 1000;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub sequence: i64,
    pub received_at: DateTime<Utc>,
    pub details: Json<DeviceEvent>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TotalRow {
    pub kind: String,
    pub origin: String,
    pub reason: String,
    pub count: i64,
}

/// Stores an event unless its sequence is already stored; returns whether it
/// is new (only new events count in the totals).
pub async fn record(
    tx: &mut PgConnection,
    device_id: Uuid,
    event: &DeviceEvent,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let sequence = i64::try_from(event.sequence).unwrap_or(i64::MAX);
    let kind = event.kind.as_str();
    let origin = event.block.origin.as_str();
    let inserted = sqlx::query(
        "INSERT INTO device_events (device_id, sequence, kind, origin, at, details)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(device_id)
    .bind(sequence)
    .bind(kind)
    .bind(origin)
    .bind(at)
    .bind(Json(event))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        sqlx::query(
            "INSERT INTO device_event_totals (device_id, kind, origin, reason, count)
             VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (device_id, kind, origin, reason)
             DO UPDATE SET count = device_event_totals.count + 1",
        )
        .bind(device_id)
        .bind(kind)
        .bind(origin)
        .bind(event.block.total_reason())
        .execute(&mut *tx)
        .await?;
    }
    Ok(inserted)
}

/// Keeps the newest `EVENTS_PER_DEVICE` events of a device.
pub async fn trim(tx: &mut PgConnection, device_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM device_events WHERE device_id = $1 AND sequence < (
             SELECT min(sequence) FROM (SELECT sequence FROM device_events WHERE device_id = $1
                 ORDER BY sequence DESC LIMIT $2) newest)",
    )
    .bind(device_id)
    .bind(EVENTS_PER_DEVICE)
    .execute(&mut *tx)
    .await
    .map(drop)
}

/// Newest first, below `before` (a sequence) when given.
pub async fn recent(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sequence, received_at, details FROM device_events
         WHERE device_id = $1 AND ($2::bigint IS NULL OR sequence < $2)
         ORDER BY sequence DESC LIMIT $3",
    )
    .bind(device_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn totals(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Vec<TotalRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, origin, reason, count FROM device_event_totals WHERE device_id = $1
         ORDER BY kind, origin, reason",
    )
    .bind(device_id)
    .fetch_all(db)
    .await
}
