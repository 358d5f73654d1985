//! `services` and their immutable `service_revisions`.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServiceRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub latest_revision: i32,
    pub archived: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevisionRow {
    pub service_id: Uuid,
    pub revision: i32,
    pub spec: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

const SERVICE_COLUMNS: &str =
    "s.id, s.name, s.kind, s.created_at, s.archived_at IS NOT NULL AS archived,
    (SELECT max(revision) FROM service_revisions r WHERE r.service_id = s.id) AS latest_revision";

/// Creates a service with its first revision. Run inside a transaction.
pub async fn insert(
    tx: &mut PgConnection,
    id: Uuid,
    name: &str,
    kind: &str,
    spec: &serde_json::Value,
) -> Result<ServiceRow, sqlx::Error> {
    sqlx::query("INSERT INTO services (id, name, kind) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(kind)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO service_revisions (service_id, revision, spec) VALUES ($1, 1, $2)")
        .bind(id)
        .bind(Json(spec))
        .execute(&mut *tx)
        .await?;
    Ok(get(&mut *tx, id).await?.expect("just inserted"))
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ServiceRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SERVICE_COLUMNS} FROM services s WHERE s.id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// One page of services by name; archived ones only with `archived`.
pub async fn list(
    db: impl PgExecutor<'_>,
    archived: bool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ServiceRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SERVICE_COLUMNS} FROM services s
         WHERE ($1::text IS NULL OR s.name > $1) AND ($3 OR s.archived_at IS NULL)
         ORDER BY s.name LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .bind(archived)
    .fetch_all(db)
    .await
}

/// Appends a revision; the service row is locked so concurrent appends get
/// consecutive numbers. Run inside a transaction.
pub async fn insert_revision(
    tx: &mut PgConnection,
    service_id: Uuid,
    spec: &serde_json::Value,
) -> Result<Option<RevisionRow>, sqlx::Error> {
    let locked: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM services WHERE id = $1 FOR UPDATE")
            .bind(service_id)
            .fetch_optional(&mut *tx)
            .await?;
    if locked.is_none() {
        return Ok(None);
    }
    sqlx::query_as(
        "INSERT INTO service_revisions (service_id, revision, spec)
         SELECT $1, coalesce(max(revision), 0) + 1, $2 FROM service_revisions WHERE service_id = $1
         RETURNING service_id, revision, spec, created_at",
    )
    .bind(service_id)
    .bind(Json(spec))
    .fetch_one(&mut *tx)
    .await
    .map(Some)
}

pub async fn get_revision(
    db: impl PgExecutor<'_>,
    service_id: Uuid,
    revision: i32,
) -> Result<Option<RevisionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT service_id, revision, spec, created_at FROM service_revisions
         WHERE service_id = $1 AND revision = $2",
    )
    .bind(service_id)
    .bind(revision)
    .fetch_optional(db)
    .await
}

pub async fn list_revisions(
    db: impl PgExecutor<'_>,
    service_id: Uuid,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<RevisionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT service_id, revision, spec, created_at FROM service_revisions
         WHERE service_id = $1 AND ($2::int IS NULL OR revision > $2) ORDER BY revision LIMIT $3",
    )
    .bind(service_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Archives (`true`) or unarchives a service; None when there is none.
pub async fn set_archived(
    tx: &mut PgConnection,
    id: Uuid,
    archived: bool,
) -> Result<Option<ServiceRow>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE services SET archived_at = CASE WHEN $2 THEN coalesce(archived_at, now()) END
         WHERE id = $1",
    )
    .bind(id)
    .bind(archived)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    get(&mut *tx, id).await
}

/// The service, its row locked until the transaction ends.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query("SELECT id FROM services WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(db)
        .await
        .map(|r| r.rows_affected() > 0)
}

/// Deletes a service with its revisions and its finished rollouts' history.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM services WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
