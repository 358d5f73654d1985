//! `pending_recompiles`: routers to recompile within a moment (see
//! `reconcile::soon`).

use sqlx::PgExecutor;
use uuid::Uuid;

/// Marks `devices` for the next pass (a device already marked stays so).
pub async fn add(db: impl PgExecutor<'_>, devices: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pending_recompiles (device_id) SELECT unnest($1::uuid[])
         ON CONFLICT (device_id) DO NOTHING",
    )
    .bind(devices)
    .execute(db)
    .await
    .map(drop)
}

/// Takes up to `limit` marked devices, the oldest marks first (call it
/// under the recompile lock, in the transaction that recompiles them).
pub async fn take(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM pending_recompiles WHERE device_id IN (
             SELECT device_id FROM pending_recompiles ORDER BY since LIMIT $1)
         RETURNING device_id",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many routers wait.
pub async fn count(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM pending_recompiles")
        .fetch_one(db)
        .await
}
