//! `agent_releases`: agent builds by version and target, their signed
//! manifests and, once uploaded and checked, their bytes. Ranges of the
//! bytes are read with `substring` on the out-of-line, uncompressed column,
//! so a router resuming a download costs what it asks for.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

use isdf_api::envelope::Envelope;

/// Constraint names, to tell which unique value was taken.
pub const VERSION_TARGET_KEY: &str = "agent_releases_version_target_key";
pub const SHA256_KEY: &str = "agent_releases_sha256_key";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReleaseRow {
    pub id: Uuid,
    pub version: String,
    pub target: String,
    pub sha256: String,
    pub size: i64,
    pub manifest: Json<Envelope>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// None until the binary is uploaded (and matched the manifest).
    pub uploaded_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, version, target, sha256, size, manifest, created_at, created_by, uploaded_at";

pub struct NewRelease<'a> {
    pub id: Uuid,
    pub manifest: &'a isdf_api::release::ReleaseManifest,
    pub envelope: &'a Envelope,
    pub created_by: &'a str,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    new: &NewRelease<'_>,
) -> Result<ReleaseRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO agent_releases (id, version, target, sha256, size, manifest, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(new.id)
    .bind(&new.manifest.version)
    .bind(&new.manifest.target)
    .bind(&new.manifest.sha256)
    .bind(i64::try_from(new.manifest.size).unwrap_or(i64::MAX))
    .bind(Json(new.envelope))
    .bind(new.created_by)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ReleaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_releases WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Every release, newest first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<ReleaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_releases ORDER BY created_at DESC, version DESC, target"
    ))
    .fetch_all(db)
    .await
}

/// Stores the binary of a release that has none yet (checked against its
/// manifest by the caller); returns whether it was stored.
pub async fn store_content(
    db: impl PgExecutor<'_>,
    id: Uuid,
    content: &[u8],
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE agent_releases SET content = $2, uploaded_at = now()
         WHERE id = $1 AND content IS NULL",
    )
    .bind(id)
    .bind(content)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// The uploaded releases of `versions` (what the compiler picks from for
/// each router's target).
pub async fn uploaded_of_versions(
    db: impl PgExecutor<'_>,
    versions: &[String],
) -> Result<Vec<ReleaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_releases WHERE version = ANY($1) AND content IS NOT NULL
         ORDER BY version, target"
    ))
    .bind(versions)
    .fetch_all(db)
    .await
}

/// `length` bytes of an uploaded release's binary from `offset` (0-based),
/// and its whole size; None when there is no uploaded release with that
/// digest.
pub async fn read_range(
    db: impl PgExecutor<'_>,
    sha256: &str,
    offset: i64,
    length: i64,
) -> Result<Option<(Vec<u8>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT substring(content FROM $2::int + 1 FOR $3::int), size FROM agent_releases
         WHERE sha256 = $1 AND content IS NOT NULL",
    )
    .bind(sha256)
    .bind(offset)
    .bind(length)
    .fetch_optional(db)
    .await
}

/// The size of an uploaded release, by digest.
pub async fn uploaded_size(
    db: impl PgExecutor<'_>,
    sha256: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT size FROM agent_releases WHERE sha256 = $1 AND content IS NOT NULL")
        .bind(sha256)
        .fetch_optional(db)
        .await
}
