//! `assignments`: a service revision applied to the devices a selector matches.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::model::Selector;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssignmentRow {
    pub id: Uuid,
    pub service_id: Uuid,
    pub revision: i32,
    pub selector: String,
    pub created_at: DateTime<Utc>,
}

/// An assignment joined with its service kind and revision spec: what the
/// compiler needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssignmentWithSpec {
    pub id: Uuid,
    pub selector: String,
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub spec: Json<serde_json::Value>,
}

const COLUMNS: &str = "id, service_id, revision, selector, created_at";

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    service_id: Uuid,
    revision: i32,
    selector: &str,
) -> Result<AssignmentRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO assignments (id, service_id, revision, selector) VALUES ($1, $2, $3, $4)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(service_id)
    .bind(revision)
    .bind(selector)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<AssignmentRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM assignments WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The assignment, its row locked until the transaction ends.
pub async fn get_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<AssignmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM assignments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn list(
    db: impl PgExecutor<'_>,
    service_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<AssignmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM assignments
         WHERE ($1::uuid IS NULL OR service_id = $1) AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    ))
    .bind(service_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Points an assignment at another revision of the same service.
pub async fn set_revision(
    db: impl PgExecutor<'_>,
    id: Uuid,
    revision: i32,
) -> Result<Option<AssignmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE assignments SET revision = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(revision)
    .fetch_optional(db)
    .await
}

pub async fn delete(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<AssignmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "DELETE FROM assignments WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Every assignment with its spec, in a stable order.
pub async fn all_with_specs(
    db: impl PgExecutor<'_>,
) -> Result<Vec<AssignmentWithSpec>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id, a.selector, a.created_at, s.kind, r.spec
         FROM assignments a
         JOIN services s ON s.id = a.service_id
         JOIN service_revisions r ON r.service_id = a.service_id AND r.revision = a.revision
         ORDER BY a.created_at, a.id",
    )
    .fetch_all(db)
    .await
}

/// The assignment of `service` on `selector`, however either was written
/// (same normal form).
pub async fn find(
    db: impl PgExecutor<'_>,
    service_id: Uuid,
    selector: &Selector,
) -> Result<Option<AssignmentRow>, sqlx::Error> {
    let wanted = selector.normal_form();
    Ok(of_service(db, service_id).await?.into_iter().find(|row| {
        Selector::parse(&row.selector).is_ok_and(|stored| stored.normal_form() == wanted)
    }))
}

/// Every assignment of `service`, oldest first.
pub async fn of_service(
    db: impl PgExecutor<'_>,
    service_id: Uuid,
) -> Result<Vec<AssignmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM assignments WHERE service_id = $1 ORDER BY created_at, id"
    ))
    .bind(service_id)
    .fetch_all(db)
    .await
}

/// An assignment as one router sees it: its service, and the active
/// rollout staging it with whether the router was released to it yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssignmentForDevice {
    pub assignment_id: Uuid,
    pub service_id: Uuid,
    pub service_name: String,
    pub kind: String,
    pub revision: i32,
    pub selector: String,
    pub rollout_id: Option<Uuid>,
    pub from_revision: Option<i32>,
    pub released: bool,
}

/// Every assignment, as `device` sees it (whether its selector matches the
/// router is the caller's to decide), by service name.
pub async fn as_seen_by(
    db: impl PgExecutor<'_>,
    device: Uuid,
) -> Result<Vec<AssignmentForDevice>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id AS assignment_id, a.service_id, s.name AS service_name, s.kind,
                a.revision, a.selector, r.id AS rollout_id, r.from_revision,
                coalesce(rd.state <> 'waiting', false) AS released
         FROM assignments a
         JOIN services s ON s.id = a.service_id
         LEFT JOIN rollouts r ON r.assignment_id = a.id AND r.state IN ('running', 'paused')
         LEFT JOIN rollout_devices rd ON rd.rollout_id = r.id AND rd.device_id = $1
         ORDER BY s.name, a.created_at, a.id",
    )
    .bind(device)
    .fetch_all(db)
    .await
}
