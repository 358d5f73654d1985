//! `audit_log`: the append-only record of operator actions (the table's
//! triggers refuse updates, deletes and truncation).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub status: i32,
    pub summary: Json<serde_json::Value>,
}

/// One entry to append.
#[derive(Debug, Clone)]
pub struct NewAuditEntry<'a> {
    pub actor_id: Option<Uuid>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub status: u16,
    pub summary: serde_json::Value,
}

pub async fn append(db: impl PgExecutor<'_>, entry: &NewAuditEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor_id, actor, action, target, status, summary)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.actor_id)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.target)
    .bind(i32::from(entry.status))
    .bind(Json(&entry.summary))
    .execute(db)
    .await?;
    Ok(())
}

/// Newest first, before the entry `before` (an id) when given.
pub async fn list(
    db: impl PgExecutor<'_>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor_id, actor, action, target, status, summary FROM audit_log
         WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}
