//! `/api/v1/services`: service definitions and their immutable revisions.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::handlers::{page, Page, PageParams};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::parse_name;
use crate::services::{ServiceKind, ServiceSpec};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    pub name: String,
    /// The service kind: `flow-block`, `bittorrent-block` or `pay-per-site`
    /// (the same field as `type` in `isdfctl apply` files).
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    /// The former name of `type`, still accepted.
    #[schema(deprecated)]
    pub kind: Option<String>,
    /// The first revision's spec, whose shape depends on `type`.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

impl CreateService {
    /// The kind asked for, and a warning when it came as `kind`.
    fn service_type(&self) -> ApiResult<(&str, Option<String>)> {
        match (&self.service_type, &self.kind) {
            (Some(t), None) => Ok((t, None)),
            (None, Some(k)) => Ok((
                k,
                Some("`kind` is deprecated: name the service kind `type`".to_owned()),
            )),
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "give the service kind once, as `type` (`kind` is its deprecated name)",
            )),
            (None, None) => Err(ApiError::invalid(
                "missing field `type` (the service kind, e.g. `flow-block`)",
            )),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub id: Uuid,
    pub name: String,
    /// The service kind (`flow-block`, ...).
    #[serde(rename = "type")]
    pub service_type: String,
    /// The same as `type`, under its former name.
    #[schema(deprecated)]
    pub kind: String,
    pub latest_revision: i32,
    pub created_at: DateTime<Utc>,
    /// Hidden from the list by default; no new revisions or assignments.
    pub archived: bool,
    /// What the caller should change in its request (deprecated fields).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl From<db::services::ServiceRow> for ServiceView {
    fn from(row: db::services::ServiceRow) -> Self {
        ServiceView {
            id: row.id,
            name: row.name,
            service_type: row.kind.clone(),
            kind: row.kind,
            latest_revision: row.latest_revision,
            created_at: row.created_at,
            archived: row.archived,
            warnings: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevisionView {
    pub service_id: Uuid,
    pub revision: i32,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl From<db::services::RevisionRow> for RevisionView {
    fn from(row: db::services::RevisionRow) -> Self {
        RevisionView {
            service_id: row.service_id,
            revision: row.revision,
            spec: row.spec.0,
            created_at: row.created_at,
        }
    }
}

fn parse_kind(kind: &str) -> ApiResult<ServiceKind> {
    ServiceKind::parse(kind).ok_or_else(|| {
        let known: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError::bad_request(
            "unknown_kind",
            format!("unknown service type `{kind}`; known: {}", known.join(", ")),
        )
    })
}

fn check_spec(kind: ServiceKind, spec: &serde_json::Value) -> ApiResult<()> {
    ServiceSpec::parse(kind, spec).map(drop).map_err(|e| {
        ApiError::bad_request(
            "invalid_spec",
            format!("invalid {} spec: {e}", kind.as_str()),
        )
    })
}

#[utoipa::path(post, path = "/api/v1/services", request_body = CreateService, tag = "services",
    responses((status = 201, body = ServiceView), (status = 400, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateService>,
) -> ApiResult<(StatusCode, HeaderMap, Json<ServiceView>)> {
    let name = parse_name(&body.name, "service").map_err(ApiError::invalid)?;
    let (service_type, deprecation) = body.service_type()?;
    let kind = parse_kind(service_type)?;
    check_spec(kind, &body.spec)?;
    let mut tx = state.pool.begin().await?;
    let row = db::services::insert(&mut tx, Uuid::new_v4(), &name, kind.as_str(), &body.spec)
        .await
        .map_err(|e| {
            if db::is_unique_violation(&e) {
                ApiError::conflict("name_taken", format!("a service named `{name}` exists"))
            } else {
                e.into()
            }
        })?;
    audit
        .commit(tx, StatusCode::CREATED, Some(row.id.to_string()))
        .await?;
    let mut headers = HeaderMap::new();
    let mut view = ServiceView::from(row);
    if let Some(warning) = deprecation {
        headers.insert("deprecation", HeaderValue::from_static("true"));
        view.warnings.push(warning);
    }
    Ok((StatusCode::CREATED, headers, Json(view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListServices {
    /// Include archived services (default false).
    #[serde(default)]
    pub archived: bool,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/services", params(ListServices), tag = "services",
    responses((status = 200, body = Page<ServiceView>)))]
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListServices>,
) -> ApiResult<Json<Page<ServiceView>>> {
    let paging = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let rows = db::services::list(
        &state.pool,
        query.archived,
        paging.after()?.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.name.clone(),
        ServiceView::from,
    )))
}

pub(crate) async fn find(state: &AppState, id: Uuid) -> ApiResult<db::services::ServiceRow> {
    db::services::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no service {id}")))
}

#[utoipa::path(get, path = "/api/v1/services/{id}", tag = "services",
    responses((status = 200, body = ServiceView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ServiceView>> {
    Ok(Json(find(&state, id).await?.into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateService {
    /// Archive (true) or bring back (false) the service.
    pub archived: bool,
}

/// Archives or unarchives a service. Only a service nothing assigns can be
/// archived (409 `service_assigned` names the assignments); an archived
/// one is hidden from the list and takes no new revisions or assignments.
#[utoipa::path(patch, path = "/api/v1/services/{id}", request_body = UpdateService, tag = "services",
    responses((status = 200, body = ServiceView), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn update(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateService>,
) -> ApiResult<Json<ServiceView>> {
    // Under the recompile lock, as assignments are made.
    let mut tx = state.reconciler.begin_change().await?;
    if body.archived {
        refuse_if_assigned(&mut tx, id, "archive").await?;
    }
    let row = db::services::set_archived(&mut tx, id, body.archived)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no service {id}")))?;
    audit.commit(tx, StatusCode::OK, None).await?;
    Ok(Json(row.into()))
}

/// 404 when there is no such service; 409 `service_assigned`, naming the
/// assignments, when anything assigns it.
async fn refuse_if_assigned(tx: &mut sqlx::PgConnection, id: Uuid, doing: &str) -> ApiResult<()> {
    let service = db::services::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no service {id}")))?;
    let assignments = db::assignments::of_service(&mut *tx, id).await?;
    if assignments.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = assignments
        .iter()
        .map(|a| format!("{} on `{}`", a.id, a.selector))
        .collect();
    Err(ApiError::conflict(
        "service_assigned",
        format!(
            "cannot {doing} service `{}`: it is assigned ({}); delete those assignments first",
            service.name,
            named.join(", ")
        ),
    ))
}

/// Deletes a service nothing assigns, with its revisions (the audit log
/// keeps what was done with it). 409 names the assignments that use it.
#[utoipa::path(delete, path = "/api/v1/services/{id}", tag = "services",
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    // Under the recompile lock, as assignments are made: none can appear
    // between the check and the delete.
    let mut tx = state.reconciler.begin_change().await?;
    refuse_if_assigned(&mut tx, id, "delete").await?;
    db::services::delete(&mut *tx, id).await?;
    audit.commit(tx, StatusCode::NO_CONTENT, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRevision {
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

#[utoipa::path(post, path = "/api/v1/services/{id}/revisions", request_body = CreateRevision, tag = "services",
    responses((status = 201, body = RevisionView), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn create_revision(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateRevision>,
) -> ApiResult<(StatusCode, Json<RevisionView>)> {
    let service = find(&state, id).await?;
    if service.archived {
        return Err(ApiError::conflict(
            "service_archived",
            format!(
                "service `{}` is archived; unarchive it before adding revisions",
                service.name
            ),
        ));
    }
    check_spec(parse_kind(&service.kind)?, &body.spec)?;
    let mut tx = state.pool.begin().await?;
    let row = db::services::insert_revision(&mut tx, id, &body.spec)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no service {id}")))?;
    audit.commit(tx, StatusCode::CREATED, None).await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[utoipa::path(get, path = "/api/v1/services/{id}/revisions", params(PageParams), tag = "services",
    responses((status = 200, body = Page<RevisionView>), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list_revisions(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(paging): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<RevisionView>>> {
    find(&state, id).await?;
    let limit = paging.limit()?;
    let after = paging.after_parsed::<i32>()?;
    let rows = db::services::list_revisions(&state.pool, id, after, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.revision.to_string(),
        RevisionView::from,
    )))
}

#[utoipa::path(get, path = "/api/v1/services/{id}/revisions/{revision}", tag = "services",
    responses((status = 200, body = RevisionView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get_revision(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath((id, revision)): ApiPath<(Uuid, i32)>,
) -> ApiResult<Json<RevisionView>> {
    db::services::get_revision(&state.pool, id, revision)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no revision {revision} of service {id}")))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevisionDiff {
    pub from: i32,
    pub to: i32,
    /// A unified diff (3 lines of context) of the two specs as pretty JSON;
    /// empty when they are equal.
    pub unified: String,
    /// The diff was cut at [`MAX_DIFF_BYTES`] (at a line's end).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Longest unified diff answered, in bytes.
pub const MAX_DIFF_BYTES: usize = 4 * 1024 * 1024;
/// Time a diff may take: past it, the diff is still correct but coarser
/// (changed runs are shown as larger blocks).
pub const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The difference between two revisions of a service. Computed off the
/// async workers, a bounded number at a time, within [`DIFF_DEADLINE`].
#[utoipa::path(get, path = "/api/v1/services/{id}/revisions/{revision}/diff/{other}", tag = "services",
    responses((status = 200, body = RevisionDiff), (status = 404, body = crate::http::error::ErrorBody),
        (status = 429, body = crate::http::error::ErrorBody)))]
pub async fn diff_revisions(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath((id, from, to)): ApiPath<(Uuid, i32, i32)>,
) -> ApiResult<Json<RevisionDiff>> {
    let load = |revision: i32| {
        let pool = state.pool.clone();
        async move {
            db::services::get_revision(&pool, id, revision)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("no revision {revision} of service {id}"))
                })
        }
    };
    let (old, new) = (load(from).await?, load(to).await?);
    let diff = state
        .cpu_work
        .run(move || {
            let deadline = std::time::Instant::now() + DIFF_DEADLINE;
            unified_diff(&old.spec.0, &new.spec.0, from, to, deadline)
        })
        .await?;
    let (unified, truncated) = cut_at_line(diff, MAX_DIFF_BYTES);
    Ok(Json(RevisionDiff {
        from,
        to,
        unified,
        truncated,
    }))
}

/// A unified diff of two JSON documents, pretty-printed (object keys are
/// sorted by serde_json, so equal documents give no diff). Past `deadline`
/// the diff stays correct but is coarser.
pub fn unified_diff(
    old: &serde_json::Value,
    new: &serde_json::Value,
    from: i32,
    to: i32,
    deadline: std::time::Instant,
) -> String {
    let pretty = |v: &serde_json::Value| {
        let mut text = serde_json::to_string_pretty(v).expect("a JSON value prints");
        text.push('\n');
        text
    };
    let (old, new) = (pretty(old), pretty(new));
    similar::TextDiff::configure()
        .deadline(deadline)
        .diff_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("revision {from}"), &format!("revision {to}"))
        .to_string()
}

/// `text` cut after the last whole line that fits in `max` bytes; whether
/// it was cut.
fn cut_at_line(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let end = text[..max].rfind('\n').map_or(0, |i| i + 1);
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_changed_lines_with_context() {
        let a = serde_json::json!({"flows": [{"port": 1}], "name": "x"});
        let b = serde_json::json!({"flows": [{"port": 2}], "name": "x"});
        let diff = unified_diff(&a, &b, 1, 2, far());
        assert!(
            diff.starts_with("--- revision 1\n+++ revision 2\n"),
            "{diff}"
        );
        assert!(diff.contains("-      \"port\": 1\n"), "{diff}");
        assert!(diff.contains("+      \"port\": 2\n"), "{diff}");
        assert_eq!(unified_diff(&a, &a, 1, 1, far()), "");
    }

    fn far() -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_secs(3600)
    }

    #[test]
    fn a_diff_past_its_deadline_is_coarser_but_still_a_diff() {
        let flows = |port: u32| {
            (0..3000)
                .map(|i| serde_json::json!({"port": i * 7 % 1000 + port, "proto": "tcp"}))
                .collect::<Vec<_>>()
        };
        let (a, b) = (serde_json::json!(flows(0)), serde_json::json!(flows(1)));
        let expired = std::time::Instant::now();
        let diff = unified_diff(&a, &b, 1, 2, expired);
        assert!(diff.starts_with("--- revision 1\n+++ revision 2\n"));
        assert!(diff.contains("-    \"port\": 0,\n"), "old lines shown");
        assert!(diff.contains("+    \"port\": 1,\n"), "new lines shown");
    }

    #[test]
    fn long_diffs_are_cut_at_a_line() {
        let text = "a\nbb\nccc\n".to_owned();
        assert_eq!(cut_at_line(text.clone(), 100), (text.clone(), false));
        assert_eq!(cut_at_line(text.clone(), 6), ("a\nbb\n".to_owned(), true));
        assert_eq!(cut_at_line(text, 1), (String::new(), true));
    }
}
