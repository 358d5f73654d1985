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
    /// The entry of a dry run: never stored, and the change it belongs to
    /// is rolled back where it would be appended.
    pub dry_run: bool,
    pub actor_id: Option<Uuid>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub status: u16,
    pub summary: serde_json::Value,
}

/// Appends an entry. NUL, which PostgreSQL cannot store in text, is
/// replaced in every field, so no request is unauditable for its text.
pub async fn append(db: impl PgExecutor<'_>, entry: &NewAuditEntry<'_>) -> Result<(), sqlx::Error> {
    let text = |s: &str| s.replace('\0', "\u{FFFD}");
    sqlx::query(
        "INSERT INTO audit_log (actor_id, actor, action, target, status, summary)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.actor_id)
    .bind(text(entry.actor))
    .bind(text(entry.action))
    .bind(entry.target.map(text))
    .bind(i32::from(entry.status))
    .bind(Json(without_nul(entry.summary.clone())))
    .execute(db)
    .await?;
    Ok(())
}

/// What an audit list is narrowed to; every part is optional.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// The operator's name, exactly.
    pub actor: Option<String>,
    /// The start of the action, e.g. `POST /api/v1/devices`.
    pub action_prefix: Option<String>,
    /// The id the entry is about, exactly.
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Newest first, before the entry `before` (an id) when given.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor_id, actor, action, target, status, summary FROM audit_log
         WHERE ($1::bigint IS NULL OR id < $1)
           AND ($3::text IS NULL OR actor = $3)
           AND ($4::text IS NULL OR starts_with(action, $4))
           AND ($5::text IS NULL OR target = $5)
           AND ($6::timestamptz IS NULL OR at >= $6)
           AND ($7::timestamptz IS NULL OR at < $7)
         ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .bind(filter.actor.as_deref())
    .bind(filter.action_prefix.as_deref())
    .bind(filter.target.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .fetch_all(db)
    .await
}

/// Replaces NUL in every string and key of a JSON value (PostgreSQL's jsonb
/// cannot hold it), so whatever a request carried can be recorded.
pub fn without_nul(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s
        }
    };
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_in_strings_and_keys() {
        let value = serde_json::json!({"a\u{0}": ["x\u{0}y", 1, {"b": "\u{0}"}]});
        assert_eq!(
            without_nul(value),
            serde_json::json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, {"b": "\u{FFFD}"}]})
        );
    }
}
