//! `GET /metrics`: the controller's metrics for Prometheus (text format
//! 0.0.4), behind an operator token like every read (a `viewer` token is
//! enough: give Prometheus one, `authorization.credentials_file`).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::http::state::AppState;
use crate::metrics::fleet::Instantaneous;
use crate::metrics::ListenerLabels;

#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "The Prometheus text format (0.0.4); names and meanings in docs/operations.md")))]
/// The controller's metrics, the fleet's state read at most every 10 s.
pub async fn serve(State(state): State<AppState>) -> Response {
    let now = Instantaneous {
        long_polls: state.device_gate.all_polls_held(),
        cached_routers: state.cache.device_count(),
        cached_envelope_bytes: state.cache.envelope_bytes(),
        leading: state.leadership.is_leading(),
    };
    if let Err(e) = state.metrics.fleet.refresh(&state.pool, now).await {
        // The process's own metrics still answer; the fleet's keep their
        // last values until the database answers again.
        tracing::warn!(error = ?e, "reading the fleet's state for /metrics");
        state
            .metrics
            .database_errors
            .get_or_create(&ListenerLabels {
                listener: "operator",
            })
            .inc();
    }
    (
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}
