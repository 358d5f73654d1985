//! `operator_tokens`: hashed bearer tokens of operators.

use sqlx::PgExecutor;
use uuid::Uuid;

pub async fn count_active(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM operator_tokens WHERE revoked_at IS NULL")
        .fetch_one(db)
        .await
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
    token_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO operator_tokens (id, name, token_hash) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(token_hash)
        .execute(db)
        .await?;
    Ok(())
}

/// The operator whose active token hashes to `token_hash`.
pub async fn find_active(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name FROM operator_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}
