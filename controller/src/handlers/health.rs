//! `/healthz` and `/readyz`, on every listener (a load balancer checks
//! the very port it sends traffic to: deploy/haproxy/): liveness says the process and its runtime answer, and never
//! depends on the database; readiness says this replica can serve (see
//! [`crate::http::readiness`]).

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: &'static str,
    /// Whether this replica runs the background loops (rollouts,
    /// re-signing, pass expiry) now: one replica at a time does.
    pub leader: bool,
}

/// Liveness: answered by the runtime itself, so it fails only when the
/// process is gone or wedged. A database outage does not fail it: restarting
/// the controller would not bring the database back.
#[utoipa::path(get, path = "/healthz", tag = "health", security(),
    responses((status = 200, description = "`ok`: the process answers")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers (`SELECT 1` within 2 s) and the config
/// cache is loaded; else 503 `not_ready` with the reason.
#[utoipa::path(get, path = "/readyz", tag = "health", security(),
    responses((status = 200, body = Ready), (status = 503, body = crate::http::error::ErrorBody, description = "`not_ready`, with the reason")))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Ready>> {
    state
        .readiness
        .check(&state.pool, &state.cache)
        .await
        .map_err(|message| ApiError::Unavailable {
            code: "not_ready",
            message,
        })?;
    Ok(Json(Ready {
        status: "ready",
        leader: state.leadership.is_leading(),
    }))
}
