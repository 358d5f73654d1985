//! `operator_sessions`: dashboard sessions, stored as hashes of their ids.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A live session and the operator token it stands for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub csrf: String,
    pub token_id: Uuid,
    pub name: String,
    pub role: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    id_hash: &[u8],
    token_id: Uuid,
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operator_sessions (id_hash, token_id, csrf, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id_hash)
    .bind(token_id)
    .bind(csrf)
    .bind(expires_at)
    .execute(db)
    .await
    .map(drop)
}

/// The session whose id hashes to `id_hash`, if it has not expired and its
/// token is not revoked.
pub async fn find_active(
    db: impl PgExecutor<'_>,
    id_hash: &[u8],
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.csrf, s.token_id, t.name, t.role, s.expires_at
         FROM operator_sessions s JOIN operator_tokens t ON t.id = s.token_id
         WHERE s.id_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
    )
    .bind(id_hash)
    .fetch_optional(db)
    .await
}

pub async fn delete(db: impl PgExecutor<'_>, id_hash: &[u8]) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM operator_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(db)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Removes expired sessions (run at each login, so the table stays small).
pub async fn delete_expired(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM operator_sessions WHERE expires_at <= now()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}
