//! `/api/v1/exports/*.csv`: the device list and the audit log as CSV, with
//! the same filters as their lists and no paging. Streamed a page of
//! [`EXPORT_PAGE`] rows at a time, so an export of 100,000 routers holds
//! one page in memory and starts at once.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::db;
use crate::handlers::devices::DeviceSelection;
use crate::handlers::operators::AuditQuery;
use crate::http::auth::Operator;
use crate::http::error::{ApiQuery, ApiResult};
use crate::http::state::AppState;

/// Rows read from the database per step of an export.
const EXPORT_PAGE: i64 = 1000;

const DEVICE_COLUMNS: [&str; 10] = [
    "id",
    "name",
    "labels",
    "state",
    "failing",
    "last_report_at",
    "outcome",
    "enforced_version",
    "agent_version",
    "created_at",
];

const AUDIT_COLUMNS: [&str; 7] = ["id", "at", "actor", "action", "target", "status", "summary"];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceExportQuery {
    /// Label selector, e.g. `env=prod,region in (eu,us)`.
    pub selector: Option<String>,
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// `online`, `stale`, `failing` or `never_reported`.
    pub state: Option<String>,
}

/// CSV lines of `rows` (and of the header first when given).
fn csv_chunk<const N: usize>(
    header: Option<[&str; N]>,
    rows: impl IntoIterator<Item = [String; N]>,
) -> Result<Bytes, std::io::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    if let Some(header) = header {
        out.write_record(header)?;
    }
    for row in rows {
        out.write_record(row.iter().map(|field| spreadsheet_safe(field).into_owned()))?;
    }
    out.into_inner()
        .map(Bytes::from)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A field a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab
/// or carriage return first) gets a leading `'`, as OWASP advises for CSV
/// exports: a device named `-1+1` or an audited request body must not
/// become a formula on the operator's machine.
fn spreadsheet_safe(field: &str) -> std::borrow::Cow<'_, str> {
    match field.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{field}").into(),
        _ => field.into(),
    }
}

fn optional<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn device_row(row: db::devices::DeviceListRow) -> [String; 10] {
    let labels = row
        .device
        .labels
        .0
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    [
        row.device.id.to_string(),
        row.device.name,
        labels,
        row.state,
        row.failing.to_string(),
        optional(row.last_report_at.map(|t| t.to_rfc3339())),
        optional(row.outcome),
        optional(row.enforced_version),
        optional(row.agent_version),
        row.device.created_at.to_rfc3339(),
    ]
}

fn audit_row(row: db::audit::AuditRow) -> [String; 7] {
    [
        row.id.to_string(),
        row.at.to_rfc3339(),
        row.actor,
        row.action,
        optional(row.target),
        row.status.to_string(),
        if row.summary.0.is_null() {
            String::new()
        } else {
            row.summary.0.to_string()
        },
    ]
}

fn csv_response(file_name: &str, body: Body) -> Response {
    (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Where an export stands: the next page starts after `cursor`; `None`
/// once it is done.
struct Step<C> {
    cursor: Option<C>,
    first: bool,
}

/// The device list as CSV, by name, with the list's filters.
#[utoipa::path(get, path = "/api/v1/exports/devices.csv", params(DeviceExportQuery), tag = "devices",
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn devices(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeviceExportQuery>,
) -> ApiResult<Response> {
    let selection = DeviceSelection::parse(
        query.selector.as_deref(),
        query.q.as_deref(),
        query.state.as_deref(),
    )?;
    let pool = state.pool.clone();
    let start = Some(Step::<String> {
        cursor: None,
        first: true,
    });
    let pages = futures_util::stream::unfold(
        (start, selection, pool),
        |(step, selection, pool)| async move {
            let step = step?;
            let rows = match db::devices::list(
                &pool,
                &selection.filter(),
                step.cursor.as_deref(),
                EXPORT_PAGE,
            )
            .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "device export stopped");
                    return Some((Err(std::io::Error::other(e)), (None, selection, pool)));
                }
            };
            let next = (rows.len() as i64 == EXPORT_PAGE).then(|| Step {
                cursor: rows.last().map(|r| r.device.name.clone()),
                first: false,
            });
            let chunk = csv_chunk(
                step.first.then_some(DEVICE_COLUMNS),
                rows.into_iter().map(device_row),
            );
            Some((chunk, (next, selection, pool)))
        },
    );
    Ok(csv_response("devices.csv", Body::from_stream(pages)))
}

/// The audit log as CSV, newest first, with the audit list's filters.
#[utoipa::path(get, path = "/api/v1/exports/audit.csv", params(AuditQuery), tag = "operators",
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn audit(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let filter = query.filter()?;
    let pool = state.pool.clone();
    let start = Some(Step::<i64> {
        cursor: None,
        first: true,
    });
    let pages =
        futures_util::stream::unfold((start, filter, pool), |(step, filter, pool)| async move {
            let step = step?;
            let rows = match db::audit::list(&pool, &filter, step.cursor, EXPORT_PAGE).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "audit export stopped");
                    return Some((Err(std::io::Error::other(e)), (None, filter, pool)));
                }
            };
            let next = (rows.len() as i64 == EXPORT_PAGE).then(|| Step {
                cursor: rows.last().map(|r| r.id),
                first: false,
            });
            let chunk = csv_chunk(
                step.first.then_some(AUDIT_COLUMNS),
                rows.into_iter().map(audit_row),
            );
            Some((chunk, (next, filter, pool)))
        });
    Ok(csv_response("audit.csv", Body::from_stream(pages)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_defuses_formulas() {
        let chunk = csv_chunk(
            Some(["a", "b", "c"]),
            [[
                "plain".to_owned(),
                "x=1,y=\"2\"".to_owned(),
                "=HYPERLINK(\"http://evil\")".to_owned(),
            ]],
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&chunk).unwrap(),
            "a,b,c\nplain,\"x=1,y=\"\"2\"\"\",\"'=HYPERLINK(\"\"http://evil\"\")\"\n"
        );
        assert_eq!(spreadsheet_safe("-1+1"), "'-1+1");
        assert_eq!(spreadsheet_safe("home-1"), "home-1");
    }
}
