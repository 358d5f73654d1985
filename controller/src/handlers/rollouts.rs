//! `/api/v1/rollouts`: an assignment change rolled out wave by wave (see
//! `rollout.rs` for the decisions and `rollout_driver.rs` for the steps).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::db::rollouts::RolloutRow;
use crate::handlers::device_labels::DeviceRef;
use crate::handlers::{Page, PageParams};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::Selector;
use crate::rollout::driver::{wave_counts, Target};
use crate::rollout::plan::{Canary, Counts, Policy, WavePlan};

/// How the canary is chosen: routers matching a label selector, or a share.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum CanaryInput {
    Selector(String),
    Percent(f64),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    /// Roll a new revision out to this assignment's routers...
    pub assignment_id: Option<Uuid>,
    /// ...or a new assignment of this service...
    pub service_id: Option<Uuid>,
    /// ...to the routers this selector matches.
    pub selector: Option<String>,
    /// The revision to roll out; the service's latest when absent.
    pub revision: Option<i32>,
    /// `{"selector": "canary=true"}` or `{"percent": 5}`; 10% when absent.
    #[schema(value_type = Option<Object>)]
    pub canary: Option<CanaryInput>,
    /// Cumulative percentages after the canary, increasing, the last 100
    /// (default `[100]`).
    pub waves: Option<Vec<f64>>,
    pub min_applied_share: Option<f64>,
    pub max_failed_share: Option<f64>,
    pub soak_secs: Option<u32>,
    pub offline_timeout_secs: Option<u32>,
    /// Start even if a wave (the canary above all) matches no router: an
    /// empty wave passes after its soak time unseen (default false: 409
    /// `empty_wave`).
    #[serde(default)]
    pub allow_empty_waves: bool,
}

impl StartRollout {
    fn target(&self) -> ApiResult<Target> {
        match (self.assignment_id, self.service_id, &self.selector) {
            (Some(assignment), None, None) => Ok(Target::Existing(assignment)),
            (None, Some(service_id), Some(selector)) => Ok(Target::New {
                service_id,
                selector: Selector::parse(selector)
                    .map_err(|e| ApiError::bad_request("invalid_selector", e))?,
            }),
            _ => Err(ApiError::bad_request(
                "invalid_rollout",
                "give either `assignment_id`, or `service_id` and `selector`",
            )),
        }
    }

    fn plan(&self) -> ApiResult<WavePlan> {
        let canary = match &self.canary {
            None => Canary::Percent(10.0),
            Some(CanaryInput::Percent(p)) => Canary::Percent(*p),
            Some(CanaryInput::Selector(s)) => Canary::Selector(
                Selector::parse(s).map_err(|e| ApiError::bad_request("invalid_selector", e))?,
            ),
        };
        let defaults = Policy::default();
        let policy = Policy {
            min_applied_share: self.min_applied_share.unwrap_or(defaults.min_applied_share),
            max_failed_share: self.max_failed_share.unwrap_or(defaults.max_failed_share),
            soak_secs: self.soak_secs.unwrap_or(defaults.soak_secs),
            offline_timeout_secs: self
                .offline_timeout_secs
                .unwrap_or(defaults.offline_timeout_secs),
        };
        WavePlan::new(
            canary,
            self.waves.clone().unwrap_or_else(|| vec![100.0]),
            policy,
        )
        .map_err(|e| ApiError::bad_request("invalid_rollout", e))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WaveView {
    pub index: i32,
    pub label: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub released_at: Option<DateTime<Utc>>,
    pub healthy_since: Option<DateTime<Utc>>,
    pub passed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub id: Uuid,
    pub assignment_id: Uuid,
    pub service_id: Uuid,
    pub service_name: String,
    pub selector: String,
    /// None: the rollout adds a new assignment.
    pub from_revision: Option<i32>,
    pub to_revision: i32,
    /// running, paused, completed or aborted.
    pub state: String,
    pub pause_reason: Option<String>,
    /// Index of the newest released wave.
    pub current_wave: i32,
    pub policy: Policy,
    pub waves: Vec<WaveView>,
    pub totals: Counts,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Once it ended: `completed`, `completed_with_offline` (some routers
    /// had not reported the change: see `offline_devices`) or `aborted`.
    pub outcome: Option<String>,
    /// The routers of a completed rollout that were offline when it ended
    /// (they get the change when they come back), the first 1,000 by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline_devices: Vec<DeviceRef>,
}

/// Offline routers a rollout view lists.
const MAX_OFFLINE_LISTED: i64 = 1000;

async fn view(state: &AppState, row: RolloutRow) -> ApiResult<RolloutView> {
    let counts = wave_counts(&state.pool, row.id).await?;
    let waves: Vec<WaveView> = db::rollouts::waves(&state.pool, row.id)
        .await?
        .into_iter()
        .map(|w| WaveView {
            index: w.wave,
            label: w.label,
            counts: counts.get(&w.wave).copied().unwrap_or_default(),
            released_at: w.released_at,
            healthy_since: w.healthy_since,
            passed_at: w.passed_at,
        })
        .collect();
    let totals: Counts = counts.values().copied().sum();
    let offline_devices = if row.state == "completed" && totals.offline > 0 {
        db::rollouts::devices_in_state(&state.pool, row.id, "offline", MAX_OFFLINE_LISTED)
            .await?
            .into_iter()
            .map(|(id, name)| DeviceRef { id, name })
            .collect()
    } else {
        Vec::new()
    };
    let outcome = match row.state.as_str() {
        "completed" if totals.offline > 0 => Some("completed_with_offline".to_owned()),
        "completed" | "aborted" => Some(row.state.clone()),
        _ => None,
    };
    Ok(RolloutView {
        outcome,
        offline_devices,
        id: row.id,
        assignment_id: row.assignment_id,
        service_id: row.service_id,
        service_name: row.service_name,
        selector: row.selector,
        from_revision: row.from_revision,
        to_revision: row.to_revision,
        state: row.state,
        pause_reason: row.pause_reason,
        current_wave: row.current_wave,
        policy: row.policy.0,
        waves,
        totals,
        created_by: row.created_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    })
}

async fn view_of(state: &AppState, id: Uuid) -> ApiResult<Json<RolloutView>> {
    let row = db::rollouts::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))?;
    Ok(Json(view(state, row).await?))
}

#[utoipa::path(post, path = "/api/v1/rollouts", request_body = StartRollout, tag = "rollouts",
    responses((status = 201, body = RolloutView), (status = 400, body = crate::http::error::ErrorBody),
              (status = 409, body = crate::http::error::ErrorBody)))]
/// Starts a rollout: the assignment changes now, its routers get the new
/// revision wave by wave, the canary first.
pub async fn create(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<StartRollout>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    let target = body.target()?;
    let plan = body.plan()?;
    if let Some(service_id) = body.service_id {
        if let Some(service) = db::services::get(&state.pool, service_id).await? {
            crate::handlers::assignments::refuse_if_archived(&service)?;
        }
    }
    let entry = audit.entry(StatusCode::CREATED, None, audit.summary().clone());
    let id = state
        .rollouts
        .start(
            target,
            body.revision,
            &plan,
            body.allow_empty_waves,
            &operator.name,
            &entry,
        )
        .await
        .map_err(|e| match ApiError::from(e) {
            ApiError::DryRun { target, .. } => ApiError::DryRun {
                status: StatusCode::CREATED,
                target,
            },
            other => other,
        })?;
    audit.committed();
    Ok((StatusCode::CREATED, view_of(&state, id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListRollouts {
    /// running, paused, completed or aborted.
    pub state: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/rollouts", params(ListRollouts), tag = "rollouts",
    responses((status = 200, body = Page<RolloutView>)))]
/// Rollouts, newest first.
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListRollouts>,
) -> ApiResult<Json<Page<RolloutView>>> {
    if let Some(s) = query.state.as_deref() {
        if !["running", "paused", "completed", "aborted"].contains(&s) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown state `{s}`"),
            ));
        }
    }
    let paging = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let after = paging
        .after()?
        .map(|c| {
            c.split_once('|')
                .and_then(|(at, id)| {
                    Some((
                        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
                        id.parse::<Uuid>().ok()?,
                    ))
                })
                .ok_or_else(|| ApiError::bad_request("invalid_query", "invalid cursor"))
        })
        .transpose()?;
    let rows = db::rollouts::list(&state.pool, query.state.as_deref(), after, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|last| {
            crate::handlers::encode_cursor(&format!(
                "{}|{}",
                last.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                last.id
            ))
        });
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(view(&state, row).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    responses((status = 200, body = RolloutView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<RolloutView>> {
    view_of(&state, id).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutEvent {
    pub at: DateTime<Utc>,
    /// created, wave_released, wave_passed, paused, resumed, breach, aborted, completed.
    pub kind: String,
    pub wave: Option<i32>,
    /// An operator's name, or `controller` for automatic steps.
    pub actor: String,
    pub detail: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

async fn exists(state: &AppState, id: Uuid) -> ApiResult<()> {
    db::rollouts::get(&state.pool, id)
        .await?
        .map(drop)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{id}/history", tag = "rollouts",
    responses((status = 200, body = Items<RolloutEvent>), (status = 404, body = crate::http::error::ErrorBody)))]
/// What happened, oldest first.
pub async fn history(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Items<RolloutEvent>>> {
    exists(&state, id).await?;
    let items = db::rollouts::events(&state.pool, id)
        .await?
        .into_iter()
        .map(|e| RolloutEvent {
            at: e.at,
            kind: e.kind,
            wave: e.wave,
            actor: e.actor,
            detail: e.detail,
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProgressSample {
    pub at: DateTime<Utc>,
    pub wave: i32,
    pub pending: i32,
    pub applied: i32,
    pub failed: i32,
    pub offline: i32,
}

#[utoipa::path(get, path = "/api/v1/rollouts/{id}/samples", tag = "rollouts",
    responses((status = 200, body = Items<ProgressSample>), (status = 404, body = crate::http::error::ErrorBody)))]
/// Each released wave's counts over time (a sample whenever they changed).
pub async fn samples(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Items<ProgressSample>>> {
    exists(&state, id).await?;
    let items = db::rollouts::samples(&state.pool, id)
        .await?
        .into_iter()
        .map(|s| ProgressSample {
            at: s.at,
            wave: s.wave,
            pending: s.pending,
            applied: s.applied,
            failed: s.failed,
            offline: s.offline,
        })
        .collect();
    Ok(Json(Items { items }))
}

#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "rollouts",
    responses((status = 200, body = RolloutView), (status = 409, body = crate::http::error::ErrorBody)))]
/// Stops releasing waves; released routers keep the new revision.
pub async fn pause(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<RolloutView>> {
    let target = id.to_string();
    let entry = audit.entry(StatusCode::OK, Some(&target), audit.summary().clone());
    state.rollouts.pause(id, &operator.name, &entry).await?;
    audit.committed();
    view_of(&state, id).await
}

#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "rollouts",
    responses((status = 200, body = RolloutView), (status = 409, body = crate::http::error::ErrorBody)))]
/// Goes on; the current wave's failures so far are accepted.
pub async fn resume(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<RolloutView>> {
    let target = id.to_string();
    let entry = audit.entry(StatusCode::OK, Some(&target), audit.summary().clone());
    state.rollouts.resume(id, &operator.name, &entry).await?;
    audit.committed();
    view_of(&state, id).await
}

#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", tag = "rollouts",
    responses((status = 200, body = RolloutView), (status = 409, body = crate::http::error::ErrorBody)))]
/// Every router returns to the previous revision.
pub async fn abort(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<RolloutView>> {
    let target = id.to_string();
    let entry = audit.entry(StatusCode::OK, Some(&target), audit.summary().clone());
    state.rollouts.abort(id, &operator.name, &entry).await?;
    audit.committed();
    view_of(&state, id).await
}
