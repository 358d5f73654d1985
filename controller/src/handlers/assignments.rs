//! `/api/v1/assignments`: a service revision applied to the devices a label
//! selector matches. Every change recompiles only the devices it touches.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::handlers::{commit_recompiled_now_or_soon, page, Page, RecompiledView};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::Selector;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAssignment {
    pub service_id: Uuid,
    /// Revision to apply; the latest when absent.
    pub revision: Option<i32>,
    /// Label selector of the target devices, e.g. `env=prod`; `*` for all.
    pub selector: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAssignment {
    /// Revision of the same service to apply instead.
    pub revision: i32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssignmentView {
    pub id: Uuid,
    pub service_id: Uuid,
    pub revision: i32,
    pub selector: String,
    pub created_at: DateTime<Utc>,
    /// Devices recompiled by this call, and how many got a new config version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recompiled: Option<RecompiledView>,
    /// Routers the selector matches now (answers of changes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<usize>,
    /// What the operator should look at, e.g. a selector that matches no
    /// router (accepted: routers may get the labels later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AssignmentView {
    fn new(row: db::assignments::AssignmentRow, recompiled: Option<RecompiledView>) -> Self {
        AssignmentView {
            id: row.id,
            service_id: row.service_id,
            revision: row.revision,
            selector: row.selector,
            created_at: row.created_at,
            recompiled,
            matched: None,
            warnings: Vec::new(),
        }
    }

    /// The answer of a change: what it recompiled, and how many routers
    /// the selector matches (with a warning when none).
    fn changed(row: db::assignments::AssignmentRow, recompiled: Recompiled) -> Self {
        let warnings = if recompiled.matched == 0 {
            vec![format!("selector `{}` matches no router", row.selector)]
        } else {
            Vec::new()
        };
        AssignmentView {
            matched: Some(recompiled.matched),
            warnings,
            ..AssignmentView::new(row, Some(recompiled.view))
        }
    }
}

/// What a change of an assignment recompiled, and the routers it matches.
struct Recompiled {
    view: RecompiledView,
    matched: usize,
}

fn parse_selector(text: &str) -> ApiResult<Selector> {
    Selector::parse(text).map_err(|e| ApiError::bad_request("invalid_selector", e))
}

async fn check_revision(
    tx: &mut sqlx::PgConnection,
    service_id: Uuid,
    revision: i32,
) -> ApiResult<()> {
    db::services::get_revision(tx, service_id, revision)
        .await?
        .map(drop)
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_revision",
                format!("service {service_id} has no revision {revision}"),
            )
        })
}

/// Refuses to assign an archived service.
pub(crate) fn refuse_if_archived(service: &db::services::ServiceRow) -> ApiResult<()> {
    if service.archived {
        return Err(ApiError::conflict(
            "service_archived",
            format!(
                "service `{}` is archived; unarchive it first (PATCH /api/v1/services/{} {{\"archived\": false}})",
                service.name, service.id
            ),
        ));
    }
    Ok(())
}

/// Refuses a direct change to an assignment a rollout is staging.
async fn refuse_if_staged(tx: &mut sqlx::PgConnection, id: Uuid) -> ApiResult<()> {
    match db::rollouts::active_for_assignment(tx, id).await? {
        Some(rollout) => Err(ApiError::conflict(
            "rollout_in_progress",
            format!("assignment {id} is being rolled out by rollout {rollout}; pause and abort it, or let it finish"),
        )),
        None => Ok(()),
    }
}

/// Recompiles the devices an assignment's selector matches in `tx`, then
/// commits the change with its audit entry and publishes the configs.
async fn commit_and_recompile(
    state: &AppState,
    audit: &AuditTrail,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    status: StatusCode,
    row: &db::assignments::AssignmentRow,
) -> ApiResult<Recompiled> {
    let devices = db::devices::matching_ids(&mut *tx, &parse_selector(&row.selector)?).await?;
    let view =
        commit_recompiled_now_or_soon(state, audit, tx, &devices, status, Some(row.id.to_string()))
            .await?;
    Ok(Recompiled {
        view,
        matched: devices.len(),
    })
}

#[utoipa::path(post, path = "/api/v1/assignments", request_body = CreateAssignment, tag = "assignments",
    responses((status = 201, body = AssignmentView), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateAssignment>,
) -> ApiResult<(StatusCode, Json<AssignmentView>)> {
    let selector = parse_selector(&body.selector)?;
    let mut tx = state.reconciler.begin_change().await?;
    let service = db::services::get(&mut *tx, body.service_id)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request("unknown_service", format!("no service {}", body.service_id))
        })?;
    refuse_if_archived(&service)?;
    if let Some(existing) = db::assignments::find(&mut *tx, service.id, &selector).await? {
        return Err(ApiError::conflict(
            "assignment_exists",
            format!(
                "service `{}` is already assigned on `{}` (assignment {}, revision {}); change its revision instead (PATCH /api/v1/assignments/{}) or start a rollout of it",
                service.name, existing.selector, existing.id, existing.revision, existing.id
            ),
        ));
    }
    let revision = body.revision.unwrap_or(service.latest_revision);
    check_revision(&mut tx, service.id, revision).await?;
    let row = db::assignments::insert(
        &mut *tx,
        Uuid::new_v4(),
        service.id,
        revision,
        selector.as_str(),
    )
    .await?;
    let recompiled = commit_and_recompile(&state, &audit, tx, StatusCode::CREATED, &row).await?;
    Ok((
        StatusCode::CREATED,
        Json(AssignmentView::changed(row, recompiled)),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListAssignments {
    pub service_id: Option<Uuid>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/assignments", params(ListAssignments), tag = "assignments",
    responses((status = 200, body = Page<AssignmentView>)))]
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListAssignments>,
) -> ApiResult<Json<Page<AssignmentView>>> {
    let paging = crate::handlers::PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let after = paging.after_parsed::<Uuid>()?;
    let rows = db::assignments::list(&state.pool, query.service_id, after, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.id.to_string(),
        |r| AssignmentView::new(r, None),
    )))
}

#[utoipa::path(get, path = "/api/v1/assignments/{id}", tag = "assignments",
    responses((status = 200, body = AssignmentView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<AssignmentView>> {
    db::assignments::get(&state.pool, id)
        .await?
        .map(|r| Json(AssignmentView::new(r, None)))
        .ok_or_else(|| ApiError::NotFound(format!("no assignment {id}")))
}

#[utoipa::path(patch, path = "/api/v1/assignments/{id}", request_body = UpdateAssignment, tag = "assignments",
    responses((status = 200, body = AssignmentView), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn update(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateAssignment>,
) -> ApiResult<Json<AssignmentView>> {
    let mut tx = state.reconciler.begin_change().await?;
    let current = db::assignments::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no assignment {id}")))?;
    refuse_if_staged(&mut tx, id).await?;
    check_revision(&mut tx, current.service_id, body.revision).await?;
    let row = db::assignments::set_revision(&mut *tx, id, body.revision)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no assignment {id}")))?;
    let recompiled = commit_and_recompile(&state, &audit, tx, StatusCode::OK, &row).await?;
    Ok(Json(AssignmentView::changed(row, recompiled)))
}

#[utoipa::path(delete, path = "/api/v1/assignments/{id}", tag = "assignments",
    responses((status = 200, body = AssignmentView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<AssignmentView>> {
    let mut tx = state.reconciler.begin_change().await?;
    refuse_if_staged(&mut tx, id).await?;
    let row = db::assignments::delete(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no assignment {id}")))?;
    let recompiled = commit_and_recompile(&state, &audit, tx, StatusCode::OK, &row).await?;
    Ok(Json(AssignmentView::changed(row, recompiled)))
}
