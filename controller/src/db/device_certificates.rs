//! `device_certificates`: every client certificate issued to a device (by
//! SHA-256 fingerprint), which of them are revoked, and the device's
//! certificate generation; the notification channel replicas follow.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The channel told of every change to a device's certificates (payload:
/// the device id).
pub const CHANNEL: &str = "isdf_device_certificates";

/// A certificate to record.
#[derive(Debug, Clone, Copy)]
pub struct NewCertificate<'a> {
    pub device_id: Uuid,
    pub fingerprint: &'a [u8; 32],
    /// `enrollment`, `renewal` or `unrecorded`.
    pub issued_by: &'a str,
    pub serial: Option<&'a str>,
    pub not_after: Option<DateTime<Utc>>,
}

/// Bumps the device's certificate generation, locking its row until the
/// transaction ends; None when there is no such device.
pub async fn bump_generation(
    tx: &mut PgConnection,
    device_id: Uuid,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE devices SET cert_generation = cert_generation + 1 WHERE id = $1
         RETURNING cert_generation",
    )
    .bind(device_id)
    .fetch_optional(&mut *tx)
    .await
}

pub async fn insert(db: impl PgExecutor<'_>, new: &NewCertificate<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO device_certificates (device_id, fingerprint, issued_by, serial, not_after)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new.device_id)
    .bind(&new.fingerprint[..])
    .bind(new.issued_by)
    .bind(new.serial)
    .bind(new.not_after)
    .execute(db)
    .await
    .map(drop)
}

/// Revokes every certificate of the device still accepted but those in
/// `keep`; how many were revoked.
pub async fn revoke_others(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    keep: &[&[u8; 32]],
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let keep: Vec<&[u8]> = keep.iter().map(|k| &k[..]).collect();
    Ok(sqlx::query(
        "UPDATE device_certificates SET revoked_at = now(), revoked_reason = $3
         WHERE device_id = $1 AND revoked_at IS NULL AND NOT (fingerprint = ANY($2))",
    )
    .bind(device_id)
    .bind(keep)
    .bind(reason)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes the device's revoked certificates that expired (they fail the
/// TLS handshake anyway), so the table stays a few rows per device.
pub async fn trim(db: impl PgExecutor<'_>, device_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM device_certificates WHERE device_id = $1 AND revoked_at IS NOT NULL
         AND (not_after IS NULL OR not_after < now())",
    )
    .bind(device_id)
    .execute(db)
    .await
    .map(drop)
}

/// Tells every replica (on commit) that the device's certificates changed.
pub async fn notify(db: impl PgExecutor<'_>, device_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(device_id.to_string())
        .execute(db)
        .await
        .map(drop)
}

/// One recorded certificate of a device.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CertificateRow {
    pub device_id: Uuid,
    pub generation: i64,
    pub fingerprint: Vec<u8>,
    pub revoked: bool,
}

const ROWS: &str = "SELECT d.id AS device_id, d.cert_generation AS generation, c.fingerprint,
    c.revoked_at IS NOT NULL AS revoked
    FROM devices d JOIN device_certificates c ON c.device_id = d.id";

/// The device's generation (None: no such device) and its recorded
/// certificates, newest first.
pub async fn of_device(
    db: &mut PgConnection,
    device_id: Uuid,
) -> Result<Option<(i64, Vec<CertificateRow>)>, sqlx::Error> {
    let Some(generation) =
        sqlx::query_scalar::<_, i64>("SELECT cert_generation FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&mut *db)
            .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query_as(&format!("{ROWS} WHERE d.id = $1 ORDER BY c.id DESC"))
        .bind(device_id)
        .fetch_all(&mut *db)
        .await?;
    Ok(Some((generation, rows)))
}

/// Every device's recorded certificates, by device, newest first (devices
/// without any are not listed).
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<CertificateRow>, sqlx::Error> {
    sqlx::query_as(&format!("{ROWS} ORDER BY d.id, c.id DESC"))
        .fetch_all(db)
        .await
}
