//! Changing routers' names and labels: one router (`PATCH
//! /api/v1/devices/{id}`), or every router a selector matches in one
//! transaction (`POST /api/v1/devices/labels`), previewed with `GET
//! /api/v1/devices/matching`. A customer who changes plans or a router
//! moved to another region is a label change, never a re-enrollment: only
//! the routers whose labels changed are recompiled.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::handlers::devices::DeviceView;
use crate::handlers::{commit_recompiled_now_or_soon, RecompiledView};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::{parse_name, Labels, Selector};
use crate::reconcile::live::Topic;

/// Routers a bulk change notifies one by one on the live stream; past it,
/// the dashboards are told to reload.
const NOTIFY_EACH_UP_TO: usize = 100;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    /// A new unique name.
    pub name: Option<String>,
    /// The complete new set of labels (labels not listed are removed).
    pub labels: Option<Labels>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceUpdated {
    #[serde(flatten)]
    pub device: DeviceView,
    pub recompiled: RecompiledView,
}

fn parse_selector(text: &str) -> ApiResult<Selector> {
    Selector::parse(text).map_err(|e| ApiError::bad_request("invalid_selector", e))
}

fn name_taken(name: &str) -> impl Fn(sqlx::Error) -> ApiError + '_ {
    move |e| {
        if db::is_unique_violation(&e) {
            ApiError::conflict("name_taken", format!("a device named `{name}` exists"))
        } else {
            e.into()
        }
    }
}

/// Renames a router or replaces its labels; recompiles that router only.
#[utoipa::path(patch, path = "/api/v1/devices/{id}", request_body = UpdateDevice, tag = "devices",
    responses((status = 200, body = DeviceUpdated), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn update(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateDevice>,
) -> ApiResult<Json<DeviceUpdated>> {
    if body.name.is_none() && body.labels.is_none() {
        return Err(ApiError::invalid(
            "nothing to change: give `name` and/or `labels`",
        ));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| parse_name(n, "device"))
        .transpose()
        .map_err(ApiError::invalid)?;
    let mut tx = state.reconciler.begin_change().await?;
    let row = db::devices::update(
        &mut *tx,
        id,
        name.as_deref(),
        body.labels.as_ref().map(Labels::as_map),
    )
    .await
    .map_err(name_taken(name.as_deref().unwrap_or_default()))?
    .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))?;
    let recompiled =
        commit_recompiled_now_or_soon(&state, &audit, tx, &[id], StatusCode::OK, None).await?;
    state.live.notify(Topic::Device(id));
    Ok(Json(DeviceUpdated {
        device: row.into(),
        recompiled,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MatchingQuery {
    /// Label selector, e.g. `plan=gold,region in (eu,us)`; `*` for all.
    pub selector: String,
    /// How many matching routers to name (default 10, at most 100).
    pub sample: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Matching {
    /// The selector in its normal form.
    pub selector: String,
    /// How many routers it matches now.
    pub matched: i64,
    /// The first of them by name.
    pub sample: Vec<DeviceRef>,
}

/// How many routers a selector matches, and a few of them: the preview
/// of an assignment, a rollout or a bulk label change.
#[utoipa::path(get, path = "/api/v1/devices/matching", params(MatchingQuery), tag = "devices",
    responses((status = 200, body = Matching), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn matching(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MatchingQuery>,
) -> ApiResult<Json<Matching>> {
    let selector = parse_selector(&query.selector)?;
    let sample = match query.sample.unwrap_or(10) {
        n @ 0..=100 => i64::from(n),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "sample is at most 100",
            ))
        }
    };
    let matched = db::devices::count_matching(&state.pool, &selector).await?;
    let sample = db::devices::sample_matching(&state.pool, &selector, sample).await?;
    Ok(Json(Matching {
        selector: selector.normal_form(),
        matched,
        sample: sample
            .into_iter()
            .map(|(id, name)| DeviceRef { id, name })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Relabel {
    /// The routers to change, e.g. `plan=basic,region=north`; `*` for all.
    pub selector: String,
    /// Labels to set (added, or given a new value).
    #[serde(default)]
    pub set: Labels,
    /// Label keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Relabelled {
    /// The selector in its normal form.
    pub selector: String,
    /// Routers the selector matched.
    pub matched: i64,
    /// Routers whose labels changed (the others already had them).
    pub changed: usize,
    pub recompiled: RecompiledView,
}

/// Sets and removes labels on every router a selector matches, in one
/// transaction with one audit entry; recompiles the routers that changed.
#[utoipa::path(post, path = "/api/v1/devices/labels", request_body = Relabel, tag = "devices",
    responses((status = 200, body = Relabelled), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn relabel(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Relabel>,
) -> ApiResult<Json<Relabelled>> {
    let selector = parse_selector(&body.selector)?;
    let set = body.set.as_map();
    if set.is_empty() && body.remove.is_empty() {
        return Err(ApiError::invalid(
            "nothing to change: give `set` and/or `remove`",
        ));
    }
    if let Some(both) = body.remove.iter().find(|k| set.contains_key(*k)) {
        return Err(ApiError::invalid(format!(
            "label `{both}` is both set and removed"
        )));
    }
    // Keys to remove follow the rules of keys, so a typo is caught.
    for key in &body.remove {
        Labels::check_key(key).map_err(|e| ApiError::invalid(format!("remove: {e}")))?;
    }

    let mut tx = state.reconciler.begin_change().await?;
    let matched = db::devices::count_matching(&mut *tx, &selector).await?;
    let changed = db::devices::relabel(&mut *tx, &selector, set, &body.remove).await?;
    if let Some(over) = changed.iter().find(|d| d.label_count > Labels::MAX as i64) {
        return Err(ApiError::invalid(format!(
            "device {} would have {} labels; at most {}",
            over.id,
            over.label_count,
            Labels::MAX
        )));
    }
    let ids: Vec<Uuid> = changed.iter().map(|d| d.id).collect();
    let recompiled =
        commit_recompiled_now_or_soon(&state, &audit, tx, &ids, StatusCode::OK, None).await?;
    if ids.len() <= NOTIFY_EACH_UP_TO {
        for id in &ids {
            state.live.notify(Topic::Device(*id));
        }
    } else {
        state.live.notify(Topic::Everything);
    }
    Ok(Json(Relabelled {
        selector: selector.normal_form(),
        matched,
        changed: ids.len(),
        recompiled,
    }))
}
