//! `sites`: the pay-per-site catalogs. A site's domains never overlap another
//! site's in the same catalog; writers check that under `db::locks::catalog`.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;

use isdf_api::DomainPattern;

use crate::services::pay_per_site::catalog::{Pass, SiteSpec};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SiteRow {
    pub id: i64,
    pub catalog: String,
    pub name: String,
    /// [`DomainPattern`]s as written (see [`SiteRow::domain_patterns`]).
    pub domains: Vec<String>,
    pub currency: String,
    /// Sorted by duration.
    pub passes: Json<Vec<Pass>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SiteRow {
    /// The stored domains, parsed (they were parsed when stored; one that no
    /// longer parses is skipped with a warning, not fatal).
    pub fn domain_patterns(&self) -> Vec<DomainPattern> {
        self.domains
            .iter()
            .filter_map(|d| {
                DomainPattern::parse(d)
                    .inspect_err(|e| tracing::warn!(site = self.id, error = %e, "skipping domain"))
                    .ok()
            })
            .collect()
    }

    /// The pass of this duration, if the site sells one.
    pub fn pass(&self, duration_secs: i64) -> Option<Pass> {
        self.passes
            .0
            .iter()
            .find(|p| p.duration_secs() == duration_secs)
            .copied()
    }
}

const COLUMNS: &str = "id, catalog, name, domains, currency, passes, created_at, updated_at";

/// Constraint name of the per-catalog unique site name.
pub const NAME_KEY: &str = "sites_catalog_name_key";

pub async fn insert(db: impl PgExecutor<'_>, spec: &SiteSpec) -> Result<SiteRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO sites (catalog, name, domains, currency, passes) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    ))
    .bind(spec.catalog())
    .bind(spec.name().as_str())
    .bind(domain_strings(spec))
    .bind(spec.currency().as_str())
    .bind(Json(spec.passes()))
    .fetch_one(db)
    .await
}

/// Replaces a site's description; None when there is no such site.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: i64,
    spec: &SiteSpec,
) -> Result<Option<SiteRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE sites SET catalog = $2, name = $3, domains = $4, currency = $5, passes = $6,
             updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(spec.catalog())
    .bind(spec.name().as_str())
    .bind(domain_strings(spec))
    .bind(spec.currency().as_str())
    .bind(Json(spec.passes()))
    .fetch_optional(db)
    .await
}

fn domain_strings(spec: &SiteSpec) -> Vec<&str> {
    spec.domains().iter().map(DomainPattern::as_str).collect()
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Option<SiteRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM sites WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The site, locked against deletion and changes until the end of the
/// caller's transaction (`FOR SHARE`: purchases of one site do not wait for
/// each other).
pub async fn get_for_share(
    db: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<SiteRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sites WHERE id = $1 FOR SHARE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The site, locked for a change or deletion.
pub async fn get_for_update(
    db: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<SiteRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sites WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// One page of sites ordered by id, after the id `after`, of one catalog or all.
pub async fn list(
    db: impl PgExecutor<'_>,
    catalog: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<SiteRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sites
         WHERE ($1::text IS NULL OR catalog = $1) AND ($2::bigint IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    ))
    .bind(catalog)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Every site of these catalogs, ordered by id: what the compiler needs.
pub async fn sites_of_catalogs(
    db: impl PgExecutor<'_>,
    catalogs: &[String],
) -> Result<Vec<SiteRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sites WHERE catalog = ANY($1) ORDER BY id"
    ))
    .bind(catalogs)
    .fetch_all(db)
    .await
}

pub async fn delete(db: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM sites WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
