//! `device_configs`: the latest compiled and signed config of each device.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConfigRow {
    pub device_id: Uuid,
    pub version: i64,
    pub digest: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub envelope: Vec<u8>,
    /// The agent version the config asks the router to run.
    pub agent_release_version: Option<String>,
    /// The agent version wanted but not delivered: no build for the
    /// router's target (or it reported none yet).
    pub agent_release_missing: Option<String>,
}

const COLUMNS: &str = "device_id, version, digest, issued_at, expires_at, envelope, \
                       agent_release_version, agent_release_missing";

pub async fn get(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Option<ConfigRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_configs WHERE device_id = $1"
    ))
    .bind(device_id)
    .fetch_optional(db)
    .await
}

/// Version and digest of the given devices' current configs, locked for update.
pub async fn versions_for_update(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, i64, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, version, digest, expires_at FROM device_configs
         WHERE device_id = ANY($1) FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

pub async fn upsert(db: impl PgExecutor<'_>, row: &ConfigRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO device_configs (device_id, version, digest, issued_at, expires_at, envelope,
             agent_release_version, agent_release_missing)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (device_id) DO UPDATE SET version = $2, digest = $3, issued_at = $4,
             expires_at = $5, envelope = $6, agent_release_version = $7,
             agent_release_missing = $8",
    )
    .bind(row.device_id)
    .bind(row.version)
    .bind(&row.digest)
    .bind(row.issued_at)
    .bind(row.expires_at)
    .bind(&row.envelope)
    .bind(&row.agent_release_version)
    .bind(&row.agent_release_missing)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<ConfigRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM device_configs"))
        .fetch_all(db)
        .await
}

/// Devices whose config expires before `before` (to be re-signed).
pub async fn expiring_before(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT device_id FROM device_configs WHERE expires_at < $1")
        .bind(before)
        .fetch_all(db)
        .await
}

/// The current config version of each of these devices that has one.
pub async fn versions(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, version FROM device_configs WHERE device_id = ANY($1)
         ORDER BY device_id",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Every device's config version (what a replica compares with what it
/// serves after it lost touch with the others).
pub async fn all_versions(db: impl PgExecutor<'_>) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT device_id, version FROM device_configs")
        .fetch_all(db)
        .await
}

/// The configs of these devices.
pub async fn of_devices(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<ConfigRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_configs WHERE device_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Devices whose config wants agent `version` but has no build of it for
/// their target.
pub async fn missing_release(
    db: impl PgExecutor<'_>,
    version: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT device_id FROM device_configs WHERE agent_release_missing = $1")
        .bind(version)
        .fetch_all(db)
        .await
}
