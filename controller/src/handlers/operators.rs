//! `/api/v1/operator-tokens` (admin only) and `/api/v1/audit`.

use axum::extract::State;
use axum::http::StatusCode;
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
use crate::model::{parse_name, Role};
use crate::trust::tokens::{hash_token, new_token, OPERATOR_TOKEN_PREFIX};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorToken {
    /// Who or what holds the token, e.g. `alice` or `billing-sync`.
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OperatorTokenView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<db::operators::OperatorRow> for OperatorTokenView {
    fn from(row: db::operators::OperatorRow) -> Self {
        OperatorTokenView {
            id: row.id,
            name: row.name,
            role: row.role,
            created_at: row.created_at,
            created_by: row.created_by,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OperatorTokenCreated {
    #[serde(flatten)]
    pub token_info: OperatorTokenView,
    /// The bearer token. Shown once; only its hash is stored.
    pub token: String,
}

/// Creates a token with `role` for `name`; shared by the API and the CLI.
pub async fn create_token(
    db: impl sqlx::PgExecutor<'_>,
    name: &str,
    role: Role,
    created_by: &str,
) -> anyhow::Result<(db::operators::OperatorRow, String)> {
    let token = new_token(OPERATOR_TOKEN_PREFIX);
    let row = db::operators::insert(
        db,
        Uuid::new_v4(),
        name,
        role.as_str(),
        &hash_token(&token),
        created_by,
    )
    .await?;
    Ok((row, token))
}

#[utoipa::path(post, path = "/api/v1/operator-tokens", request_body = CreateOperatorToken, tag = "operators",
    responses((status = 201, body = OperatorTokenCreated), (status = 403, body = crate::http::error::ErrorBody)))]
pub async fn create(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateOperatorToken>,
) -> ApiResult<(StatusCode, Json<OperatorTokenCreated>)> {
    let name = parse_name(&body.name, "token").map_err(ApiError::invalid)?;
    let mut tx = state.pool.begin().await?;
    let (row, token) = create_token(&mut *tx, &name, body.role, &operator.name).await?;
    audit
        .commit(tx, StatusCode::CREATED, Some(row.id.to_string()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(OperatorTokenCreated {
            token_info: row.into(),
            token,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/operator-tokens", params(PageParams), tag = "operators",
    responses((status = 200, body = Page<OperatorTokenView>), (status = 403, body = crate::http::error::ErrorBody)))]
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<OperatorTokenView>>> {
    let limit = paging.limit()?;
    let after = paging.after_parsed::<Uuid>()?;
    let rows = db::operators::list(&state.pool, after, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.id.to_string(),
        OperatorTokenView::from,
    )))
}

#[utoipa::path(delete, path = "/api/v1/operator-tokens/{id}", tag = "operators",
    responses((status = 200, body = OperatorTokenView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn revoke(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<OperatorTokenView>> {
    let mut tx = state.pool.begin().await?;
    let row = db::operators::revoke(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no active operator token {id}")))?;
    audit.commit(tx, StatusCode::OK, None).await?;
    Ok(Json(row.into()))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntryView {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub status: i32,
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
}

impl From<db::audit::AuditRow> for AuditEntryView {
    fn from(row: db::audit::AuditRow) -> Self {
        AuditEntryView {
            id: row.id,
            at: row.at,
            actor_id: row.actor_id,
            actor: row.actor,
            action: row.action,
            target: row.target,
            status: row.status,
            summary: row.summary.0,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this operator's entries (its name, exactly; `controller` for
    /// the controller's own steps).
    pub actor: Option<String>,
    /// Only actions starting with this, e.g. `POST /api/v1/devices`.
    pub action: Option<String>,
    /// Only entries about this id.
    pub target: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl AuditQuery {
    /// The filter part, checked.
    pub fn filter(&self) -> ApiResult<db::audit::AuditFilter> {
        let text = |name: &str, value: &Option<String>| -> ApiResult<Option<String>> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) if v.len() > 200 => Err(ApiError::bad_request(
                    "invalid_query",
                    format!("{name} is longer than 200 characters"),
                )),
                Some(v) => Ok(Some(v.replace('\0', "\u{FFFD}"))),
            }
        };
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "since must be before until",
                ));
            }
        }
        Ok(db::audit::AuditFilter {
            actor: text("actor", &self.actor)?,
            action_prefix: text("action", &self.action)?,
            target: text("target", &self.target)?,
            since: self.since,
            until: self.until,
        })
    }
}

/// The audit log, newest first, narrowed by actor, action, target and time.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), tag = "operators",
    responses((status = 200, body = Page<AuditEntryView>), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn audit(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntryView>>> {
    let filter = query.filter()?;
    let paging = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let before = paging.after_parsed::<i64>()?;
    let rows = db::audit::list(&state.pool, &filter, before, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.id.to_string(),
        AuditEntryView::from,
    )))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub name: String,
    /// `viewer`, `operator` or `admin`: the dashboard hides what the role
    /// cannot do (the API refuses it anyway).
    pub role: String,
}

/// The operator the credentials (bearer token or dashboard session) stand for.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "operators",
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::http::error::ErrorBody)))]
pub async fn whoami(operator: Operator) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: operator.name,
        role: operator.role.as_str().to_owned(),
    })
}
