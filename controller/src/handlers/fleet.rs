//! `/api/v1/fleet/overview`: how the fleet is doing, in one query; and
//! `/api/v1/fleet/history`: how it went, from the leader's minute samples.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db;
use crate::db::fleet::Bucket;
use crate::db::fleet_history::FleetSample;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiQuery, ApiResult};
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
    /// Agent versions an `agent-release` wants that some routers' targets
    /// have no build of, with how many routers wait for one.
    pub release_missing: Vec<Bucket>,
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
        release_missing: row.release_missing.0,
        online_window_secs: db::fleet::ONLINE_WINDOW.as_secs(),
        generated_at: row.generated_at,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Start of the window (RFC 3339); default 24 hours before `until`.
    pub since: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339); default now.
    pub until: Option<DateTime<Utc>>,
    /// Most samples answered: the window is cut in steps of whole minutes,
    /// one sample per step (default 360).
    #[param(minimum = 10, maximum = 1440)]
    pub points: Option<u32>,
}

/// Longest window asked for at once.
pub const MAX_HISTORY_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

/// The window a history query asks for: where it starts and ends, and the
/// step between samples.
#[derive(Debug, PartialEq, Eq)]
pub struct HistoryWindow {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub step_secs: i64,
}

impl HistoryQuery {
    /// The window, checked, with `now` as the default end.
    pub fn window(&self, now: DateTime<Utc>) -> Result<HistoryWindow, String> {
        let until = self.until.unwrap_or(now);
        let since = self.since.unwrap_or(until - chrono::Duration::hours(24));
        let points = self.points.unwrap_or(360);
        if !(10..=1440).contains(&points) {
            return Err("points must be 10 to 1440".into());
        }
        if since >= until {
            return Err("since must be before until".into());
        }
        let secs = (until - since).num_seconds();
        if secs > MAX_HISTORY_WINDOW.as_secs() as i64 {
            return Err(format!(
                "the window is longer than {} days",
                MAX_HISTORY_WINDOW.as_secs() / 86_400
            ));
        }
        let minutes = (secs + i64::from(points) * 60 - 1) / (i64::from(points) * 60);
        Ok(HistoryWindow {
            since,
            until,
            step_secs: minutes.max(1) * 60,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetHistory {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Seconds between samples: at most one per step (the last of it).
    pub step_secs: i64,
    /// How long samples are kept (`--fleet-history-days`).
    pub retention_secs: u64,
    /// Oldest first; a step with no sample (no leader then, or before the
    /// history began) has none.
    pub samples: Vec<FleetSample>,
}

/// The fleet over time: routers online, stale, failing and never reported,
/// and by agent version, sampled once a minute by the leader.
#[utoipa::path(get, path = "/api/v1/fleet/history", params(HistoryQuery), tag = "fleet",
    responses((status = 200, body = FleetHistory), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn history(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<FleetHistory>> {
    let window = query
        .window(Utc::now())
        .map_err(|e| ApiError::bad_request("invalid_query", e))?;
    let samples =
        db::fleet_history::samples(&state.pool, window.since, window.until, window.step_secs)
            .await?;
    Ok(Json(FleetHistory {
        since: window.since,
        until: window.until,
        step_secs: window.step_secs,
        retention_secs: state.fleet_history_retention.as_secs(),
        samples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn query(since: Option<&str>, until: Option<&str>, points: Option<u32>) -> HistoryQuery {
        HistoryQuery {
            since: since.map(at),
            until: until.map(at),
            points,
        }
    }

    #[test]
    fn a_window_is_cut_in_whole_minutes_to_at_most_the_points_asked() {
        let now = at("2026-12-06T12:00:00Z");
        let day = query(None, None, None).window(now).unwrap();
        assert_eq!((day.since, day.until), (at("2026-12-05T12:00:00Z"), now));
        assert_eq!(day.step_secs, 240, "24 h in 360 points: 4 minutes");
        let hour = query(Some("2026-12-06T11:00:00Z"), None, Some(1440))
            .window(now)
            .unwrap();
        assert_eq!(hour.step_secs, 60, "never below a minute");
        let odd = query(Some("2026-12-06T11:00:00Z"), None, Some(28))
            .window(now)
            .unwrap();
        assert_eq!(odd.step_secs, 180, "60 minutes in 28 points: 3 minutes");
        let odd = query(Some("2026-12-06T11:00:00Z"), None, Some(50))
            .window(now)
            .unwrap();
        assert_eq!(
            odd.step_secs, 120,
            "60 minutes in 50 points: rounded up to 2 minutes"
        );
    }

    #[test]
    fn a_bad_window_is_refused() {
        let now = at("2026-12-06T12:00:00Z");
        let reversed = query(
            Some("2026-12-06T12:00:00Z"),
            Some("2026-12-06T11:00:00Z"),
            None,
        );
        assert_eq!(
            reversed.window(now).unwrap_err(),
            "since must be before until"
        );
        let long = query(Some("2025-01-01T00:00:00Z"), None, None);
        assert!(long
            .window(now)
            .unwrap_err()
            .contains("longer than 400 days"));
        assert!(query(None, None, Some(5000)).window(now).is_err());
    }
}
