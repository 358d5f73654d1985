//! `/api/v1/devices/{id}/blocks` and `/events`: timed flow blocks on one
//! router (set by operators, or decided on the router and reported), and
//! the events routers report.
//!
//! Operator blocks are compiled into the router's signed config: the router
//! enforces them as kernel set elements with their own timeout, so they end
//! on time even when the agent or the controller is down.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::handlers::devices::find;
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::reconcile::{Compiled, Resign};
use crate::services::{BlockAction, FlowBlockSpec, FlowSpec};

/// Most operator blocks in force on one router (each is a kernel set element).
pub const MAX_ACTIVE_BLOCKS: i64 = 20_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBlocks {
    #[serde(default)]
    pub action: BlockAction,
    /// One or more flows (up to 10,000); absent fields mean "any". A flow
    /// naming no address is blocked for IPv4 and IPv6.
    pub flows: Vec<FlowSpec>,
    /// How long the blocks last: 1 s to 365 days.
    pub duration_secs: u64,
    /// Free text kept with the blocks (at most 200 characters).
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BlockView {
    pub id: Uuid,
    /// `operator` (through this API), `local` (a program on the router) or
    /// `detection` (the router's classifier).
    pub origin: String,
    /// The router's own id of a router-side block.
    pub router_block_id: Option<i64>,
    #[schema(value_type = Object)]
    pub flow: isdf_api::FlowPattern,
    pub action: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Seconds left at the time of the answer (milliseconds precision).
    pub remaining_secs: f64,
}

impl BlockView {
    fn new(row: db::blocks::BlockRow, now: DateTime<Utc>) -> Self {
        let remaining_ms = (row.expires_at - now).num_milliseconds().max(0);
        BlockView {
            id: row.id,
            origin: row.origin,
            router_block_id: row.router_block_id,
            flow: row.flow.0,
            action: row.action,
            reason: row.reason,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_at,
            remaining_secs: remaining_ms as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BlocksCreated {
    pub items: Vec<BlockView>,
    /// The router's config version that carries them.
    pub config_version: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/blocks", request_body = CreateBlocks, tag = "blocks", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 201, body = BlocksCreated), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn create(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateBlocks>,
) -> ApiResult<(StatusCode, Json<BlocksCreated>)> {
    find(&state, id).await?;
    isdf_api::events::check_reason(&body.reason).map_err(ApiError::invalid)?;
    let action = body.action;
    // The same checks as a flow-block service with a duration.
    let spec = FlowBlockSpec {
        action,
        flows: body.flows,
        duration_secs: Some(body.duration_secs),
    };
    spec.check().map_err(ApiError::invalid)?;
    let patterns: Vec<_> = spec
        .flows
        .iter()
        .flat_map(|flow| flow.patterns().unwrap_or_default())
        .collect();

    let now = Utc::now();
    let duration = i64::try_from(body.duration_secs).unwrap_or(i64::MAX);
    // Configs carry whole seconds: the end is the nearest one, so the end
    // shown here is exactly the one the router enforces.
    let end_ms = (now + chrono::Duration::seconds(duration)).timestamp_millis();
    let expires_at = DateTime::from_timestamp_millis((end_ms + 500).div_euclid(1000) * 1000)
        .ok_or_else(|| ApiError::invalid("duration_secs is out of range"))?;
    let action_name = match action {
        BlockAction::Drop => "drop",
        BlockAction::Reject => "reject",
    };
    let new: Vec<_> = patterns
        .iter()
        .map(|flow| db::blocks::NewBlock {
            origin: "operator",
            router_block_id: None,
            flow,
            action: action_name,
            reason: &body.reason,
            created_by: &operator.name,
            expires_at,
        })
        .collect();
    let mut tx = state.reconciler.begin_change().await?;
    // Serialise creations per device so two calls cannot both pass the cap.
    db::devices::lock(&mut *tx, id).await?;
    let active = db::blocks::count_active_operator_blocks(&mut *tx, id, now).await?;
    if active + new.len() as i64 > MAX_ACTIVE_BLOCKS {
        return Err(ApiError::conflict(
            "too_many_blocks",
            format!(
                "device {id} has {active} blocks in force; at most {MAX_ACTIVE_BLOCKS} are allowed"
            ),
        ));
    }
    let rows = db::blocks::insert_many(&mut tx, id, &new).await?;
    let compiled = state
        .reconciler
        .recompile_in(&mut tx, Some(&[id]), Resign::IfChanged)
        .await?;
    let config_version = db::configs::get(&mut *tx, id).await?.map(|c| c.version);
    audit.commit(tx, StatusCode::CREATED, None).await?;
    state.reconciler.publish(compiled);
    Ok((
        StatusCode::CREATED,
        Json(BlocksCreated {
            items: rows.into_iter().map(|r| BlockView::new(r, now)).collect(),
            config_version,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/blocks", tag = "blocks", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = Vec<BlockView>), (status = 404, body = crate::http::error::ErrorBody)))]
/// Blocks in force on the router (operator, local and detection), soonest to end first.
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Vec<BlockView>>> {
    find(&state, id).await?;
    let now = Utc::now();
    let rows = db::blocks::active(&state.pool, id, now).await?;
    Ok(Json(
        rows.into_iter().map(|r| BlockView::new(r, now)).collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}/blocks/{block_id}", tag = "blocks", params(("id" = Uuid, Path, description = "The router's id"), ("block_id" = Uuid, Path, description = "The block's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Ends an operator block early. Router-side blocks end on the router.
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath((id, block_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    find(&state, id).await?;
    let mut tx = state.reconciler.begin_change().await?;
    let block = db::blocks::get(&mut *tx, id, block_id)
        .await?
        .filter(|b| b.expires_at > Utc::now())
        .ok_or_else(|| ApiError::NotFound(format!("no block {block_id} in force on {id}")))?;
    if block.origin != "operator" {
        return Err(ApiError::conflict(
            "router_block",
            format!(
                "block {block_id} was decided on the router ({}); remove it there \
                 (`isdf-agent unblock {}`) or let it expire",
                block.origin,
                block.router_block_id.unwrap_or_default()
            ),
        ));
    }
    let compiled = if db::blocks::remove_operator_block(&mut *tx, id, block_id).await? {
        state
            .reconciler
            .recompile_in(&mut tx, Some(&[id]), Resign::IfChanged)
            .await?
    } else {
        Compiled::default()
    };
    audit.commit(tx, StatusCode::NO_CONTENT, None).await?;
    state.reconciler.publish(compiled);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Events per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Only events with a lower sequence (the `next_before` of the previous page).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub sequence: i64,
    pub received_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub event: isdf_api::events::DeviceEvent,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTotal {
    pub kind: String,
    pub origin: String,
    pub reason: String,
    pub count: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsView {
    /// Every event ever received from the router, by kind, origin and reason.
    pub totals: Vec<EventTotal>,
    /// The newest events first (the router keeps the last 1,000).
    pub items: Vec<EventView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/events", tag = "blocks", params(("id" = Uuid, Path, description = "The router's id"), EventParams),
    responses((status = 200, body = EventsView), (status = 404, body = crate::http::error::ErrorBody)))]
/// The router's reported events (local blocks, detections) and their totals.
pub async fn events(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> ApiResult<Json<EventsView>> {
    find(&state, id).await?;
    let limit = crate::handlers::PageParams {
        limit: params.limit,
        cursor: None,
    }
    .limit()?;
    let rows = db::events::recent(&state.pool, id, params.before, limit).await?;
    let totals = db::events::totals(&state.pool, id).await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.sequence))
        .flatten();
    Ok(Json(EventsView {
        totals: totals
            .into_iter()
            .map(|t| EventTotal {
                kind: t.kind,
                origin: t.origin,
                reason: t.reason,
                count: t.count,
            })
            .collect(),
        items: rows
            .into_iter()
            .map(|r| EventView {
                sequence: r.sequence,
                received_at: r.received_at,
                event: r.details.0,
            })
            .collect(),
        next_before,
    }))
}
