//! `enrollment_tokens`: single-use, expiring, stored hashed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentTokenRow {
    pub id: Uuid,
    pub device_id: Option<Uuid>,
    pub labels: Json<BTreeMap<String, String>>,
    pub name_prefix: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, device_id, labels, name_prefix, expires_at, used_at, created_at";

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    token_hash: &[u8],
    device_id: Option<Uuid>,
    labels: &BTreeMap<String, String>,
    name_prefix: &str,
    expires_at: DateTime<Utc>,
    created_by: &str,
) -> Result<EnrollmentTokenRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO enrollment_tokens (id, token_hash, device_id, labels, name_prefix, expires_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(token_hash)
    .bind(device_id)
    .bind(Json(labels))
    .bind(name_prefix)
    .bind(expires_at)
    .bind(created_by)
    .fetch_one(db)
    .await
}

/// The token with this hash, locked until the transaction ends, so two
/// enrollments racing with one token cannot both use it.
pub async fn lock_by_hash(
    tx: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<EnrollmentTokenRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM enrollment_tokens WHERE token_hash = $1 FOR UPDATE"
    ))
    .bind(token_hash)
    .fetch_optional(&mut *tx)
    .await
}

pub async fn mark_used(tx: &mut PgConnection, id: Uuid, device: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE enrollment_tokens SET used_at = now(), used_by = $2 WHERE id = $1")
        .bind(id)
        .bind(device)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records the certificate a device now holds.
pub async fn record_certificate(
    db: impl PgExecutor<'_>,
    device: Uuid,
    serial: &str,
    not_after: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET cert_serial = $2, cert_not_after = $3 WHERE id = $1")
        .bind(device)
        .bind(serial)
        .bind(not_after)
        .execute(db)
        .await?;
    Ok(())
}
