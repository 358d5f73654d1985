//! `/api/v1/sites`: the pay-per-site catalogs. Within one catalog no two
//! sites' domains overlap, checked under the catalog's lock so two writers
//! cannot both pass. Every change recompiles every router (any household
//! may buy any site).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db;
use crate::handlers::commit_recompiled;
use crate::handlers::{page, Page};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::services::pay_per_site::catalog::{
    first_overlap, parse_catalog, Pass, SiteInput, SiteSpec,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SiteView {
    pub id: i64,
    pub catalog: String,
    pub name: String,
    pub domains: Vec<String>,
    pub currency: String,
    /// Sorted by duration; prices in minor units of `currency`.
    pub passes: Vec<Pass>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<db::catalog::SiteRow> for SiteView {
    fn from(row: db::catalog::SiteRow) -> Self {
        SiteView {
            id: row.id,
            catalog: row.catalog,
            name: row.name,
            domains: row.domains,
            currency: row.currency,
            passes: row.passes.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn parse(input: &SiteInput) -> ApiResult<SiteSpec> {
    SiteSpec::parse(input).map_err(ApiError::invalid)
}

fn no_site(id: i64) -> ApiError {
    ApiError::NotFound(format!("no site {id}"))
}

/// Takes the catalog's lock, then refuses a spec whose domains overlap
/// another site's of the catalog (`id`: the site being replaced).
async fn lock_and_check(tx: &mut PgConnection, spec: &SiteSpec, id: Option<i64>) -> ApiResult<()> {
    db::locks::catalog(&mut *tx, spec.catalog()).await?;
    let others = db::catalog::sites_of_catalogs(&mut *tx, &[spec.catalog().to_owned()]).await?;
    for other in others.iter().filter(|s| Some(s.id) != id) {
        let theirs = other.domain_patterns();
        if let Some((ours, theirs)) = first_overlap(spec.domains(), &theirs) {
            return Err(ApiError::conflict(
                "overlapping_site",
                format!(
                    "domain `{ours}` of site `{}` overlaps domain `{theirs}` of site `{}` \
                     (id {}) in catalog `{}`; a name may belong to one site per catalog",
                    spec.name(),
                    other.name,
                    other.id,
                    spec.catalog()
                ),
            ));
        }
    }
    Ok(())
}

fn name_taken(e: sqlx::Error, spec: &SiteSpec) -> ApiError {
    if db::is_unique_violation_of(&e, db::catalog::NAME_KEY) {
        ApiError::conflict(
            "name_taken",
            format!(
                "catalog `{}` has a site named `{}`",
                spec.catalog(),
                spec.name()
            ),
        )
    } else {
        e.into()
    }
}

#[utoipa::path(post, path = "/api/v1/sites", request_body = SiteInput, tag = "catalog",
    responses((status = 201, body = SiteView), (status = 400, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Adds a site to a catalog.
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SiteInput>,
) -> ApiResult<(StatusCode, Json<SiteView>)> {
    let spec = parse(&body)?;
    let mut tx = state.reconciler.begin_change().await?;
    lock_and_check(&mut tx, &spec, None).await?;
    let row = db::catalog::insert(&mut *tx, &spec)
        .await
        .map_err(|e| name_taken(e, &spec))?;
    let created = Some(row.id.to_string());
    commit_recompiled(&state, &audit, tx, None, StatusCode::CREATED, created).await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListSites {
    /// Only this catalog's sites.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub catalog: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/sites", params(ListSites), tag = "catalog",
    responses((status = 200, body = Page<SiteView>), (status = 400, body = crate::http::error::ErrorBody)))]
/// Sites by id, of one catalog or all.
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListSites>,
) -> ApiResult<Json<Page<SiteView>>> {
    let catalog = query
        .catalog
        .as_deref()
        .map(parse_catalog)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e))?;
    let paging = crate::handlers::PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let after = paging.after_parsed::<i64>()?;
    let rows = db::catalog::list(&state.pool, catalog.as_deref(), after, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.id.to_string(),
        SiteView::from,
    )))
}

#[utoipa::path(get, path = "/api/v1/sites/{id}", tag = "catalog", params(("id" = i64, Path, description = "The site's id")),
    responses((status = 200, body = SiteView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<SiteView>> {
    let row = db::catalog::get(&state.pool, id)
        .await?
        .ok_or_else(|| no_site(id))?;
    Ok(Json(row.into()))
}

#[utoipa::path(put, path = "/api/v1/sites/{id}", request_body = SiteInput, tag = "catalog", params(("id" = i64, Path, description = "The site's id")),
    responses((status = 200, body = SiteView), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Replaces a site's description (it may move to another catalog). Passes
/// already bought keep their duration and price.
pub async fn update(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<SiteInput>,
) -> ApiResult<Json<SiteView>> {
    let spec = parse(&body)?;
    let mut tx = state.reconciler.begin_change().await?;
    db::catalog::get_for_update(&mut *tx, id)
        .await?
        .ok_or_else(|| no_site(id))?;
    lock_and_check(&mut tx, &spec, Some(id)).await?;
    let row = db::catalog::update(&mut *tx, id, &spec)
        .await
        .map_err(|e| name_taken(e, &spec))?
        .ok_or_else(|| no_site(id))?;
    commit_recompiled(&state, &audit, tx, None, StatusCode::OK, None).await?;
    Ok(Json(row.into()))
}

#[utoipa::path(delete, path = "/api/v1/sites/{id}", tag = "catalog", params(("id" = i64, Path, description = "The site's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Removes a site without passes in force (cancel them first); its ended
/// passes go with it.
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let mut tx = state.reconciler.begin_change().await?;
    let site = db::catalog::get_for_update(&mut *tx, id)
        .await?
        .ok_or_else(|| no_site(id))?;
    let (passes, last_end) = db::purchases::in_force_of_site(&mut *tx, id, Utc::now()).await?;
    if passes > 0 {
        return Err(ApiError::conflict(
            "active_passes",
            format!(
                "site `{}` has {passes} passes in force (the last ends at {}); cancel them \
                 before removing the site",
                site.name,
                last_end.map_or_else(String::new, |t| t.to_rfc3339())
            ),
        ));
    }
    db::catalog::delete(&mut *tx, id).await?;
    commit_recompiled(&state, &audit, tx, None, StatusCode::NO_CONTENT, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
