//! `operator_tokens`: hashed bearer tokens of operators, with roles.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperatorRow {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, role, created_at, created_by, revoked_at";

pub async fn count_active(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM operator_tokens WHERE revoked_at IS NULL")
        .fetch_one(db)
        .await
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
    role: &str,
    token_hash: &[u8],
    created_by: &str,
) -> Result<OperatorRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO operator_tokens (id, name, role, token_hash, created_by) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(name)
    .bind(role)
    .bind(token_hash)
    .bind(created_by)
    .fetch_one(db)
    .await
}

/// The operator whose active token hashes to `token_hash`.
pub async fn find_active(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<OperatorRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM operator_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
    ))
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<OperatorRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM operator_tokens WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Revokes a token; returns it, or None when there is no such active token.
pub async fn revoke(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<OperatorRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE operator_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}
