//! `/api/v1/fleet/overview`: how the fleet is doing, in one query.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db;
use crate::db::fleet::Bucket;
use crate::http::auth::Operator;
use crate::http::error::ApiResult;
use crate::http::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetOverview {
    pub devices: i64,
    /// Reported within the online window (10 minutes: two agent heartbeats).
    pub online: i64,
    /// Reported before, but not within the window, or its config expired.
    pub stale: i64,
    /// Last outcome `rolled_back` or `rejected` (online or stale).
    pub failing: i64,
    pub never_reported: i64,
    /// Agent versions of the routers that reported, most common first.
    pub by_agent_version: Vec<Bucket>,
    /// The `model` label (`unknown` when absent), most common first.
    pub by_model: Vec<Bucket>,
    /// The online window in seconds.
    pub online_window_secs: u64,
    pub generated_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/api/v1/fleet/overview", tag = "fleet",
    responses((status = 200, body = FleetOverview)))]
pub async fn overview(
    _operator: Operator,
    State(state): State<AppState>,
) -> ApiResult<Json<FleetOverview>> {
    let row = db::fleet::overview(&state.pool).await?;
    let totals = row.totals.0;
    Ok(Json(FleetOverview {
        devices: totals.devices,
        online: totals.online,
        stale: totals.stale,
        failing: totals.failing,
        never_reported: totals.never_reported,
        by_agent_version: row.by_agent_version.0,
        by_model: row.by_model.0,
        online_window_secs: db::fleet::ONLINE_WINDOW.as_secs(),
        generated_at: row.generated_at,
    }))
}
