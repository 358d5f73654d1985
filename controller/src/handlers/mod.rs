//! HTTP handlers, one module per resource. Handlers are thin: parse, call
//! `db/` and the services (`reconcile`, `rollout::driver`, `vpn`, `shop`),
//! commit the change with its audit entry (`commit_recompiled` when it
//! recompiles routers), shape the response. Lists are paged by keyset (`page`, `Page`,
//! `PageParams` here), never by offset.

pub mod assignments;
pub mod billing;
pub mod blocks;
pub mod customers;
pub mod dashboard;
pub mod device_api;
pub mod device_labels;
pub mod devices;
pub mod enrollment;
pub mod exports;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod operators;
pub mod portal;
pub mod purchases;
pub mod releases;
pub mod rollouts;
pub mod services;
pub mod sites;
pub mod stream;
pub mod vpns;
pub mod wireguard;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::http::audit::AuditTrail;
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;
use crate::reconcile::{RecompileSummary, Resign};

/// Recompiles `devices` (every device when None) in `tx`, commits it with the request's audit entry
/// and publishes the new configs: a change, the configs that enforce it and
/// its audit entry are stored together or not at all.
pub async fn commit_recompiled(
    state: &AppState,
    audit: &AuditTrail,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    devices: Option<&[uuid::Uuid]>,
    status: axum::http::StatusCode,
    target: Option<String>,
) -> ApiResult<RecompileSummary> {
    let compiled = if devices.is_some_and(|d| d.is_empty()) {
        crate::reconcile::Compiled::default()
    } else {
        state
            .reconciler
            .recompile_in(&mut tx, devices, Resign::IfChanged)
            .await?
    };
    audit.commit(tx, status, target).await?;
    Ok(state.reconciler.publish(compiled))
}

/// Like [`commit_recompiled`] for a change whose effect on `later` may
/// wait a moment (`reconcile::soon`): `now` is compiled in the change's
/// transaction, the others of `later` are marked and compiled within a
/// moment, with the other changes of the same burst.
pub async fn commit_recompiled_soon(
    state: &AppState,
    audit: &AuditTrail,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    now: &[uuid::Uuid],
    later: &[uuid::Uuid],
    status: axum::http::StatusCode,
) -> ApiResult<RecompileSummary> {
    let compiled = state
        .reconciler
        .recompile_in(&mut tx, Some(now), Resign::IfChanged)
        .await?;
    let later: Vec<uuid::Uuid> = later.iter().filter(|d| !now.contains(d)).copied().collect();
    state.reconciler.recompile_soon_in(&mut tx, &later).await?;
    audit.commit(tx, status, None).await?;
    state.reconciler.poke();
    Ok(state.reconciler.publish(compiled))
}

/// What a change recompiled.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecompiledView {
    /// Routers compiled before the answer...
    pub devices: usize,
    /// ...of which this many got a new config.
    pub changed: usize,
    /// Routers beyond what one change compiles at once (1,000), compiled
    /// within moments of the answer, a chunk at a time.
    pub pending: usize,
}

/// Recompiles `devices` in `tx` when they are few, else marks them for the
/// pass that compiles them within moments (`reconcile::soon`); commits the
/// change with the request's audit entry and publishes what was compiled.
pub async fn commit_recompiled_now_or_soon(
    state: &AppState,
    audit: &AuditTrail,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    devices: &[uuid::Uuid],
    status: axum::http::StatusCode,
    target: Option<String>,
) -> ApiResult<RecompiledView> {
    let selected = state
        .reconciler
        .recompile_now_or_soon_in(&mut tx, devices)
        .await?;
    audit.commit(tx, status, target).await?;
    let summary = state.reconciler.publish(selected.now);
    state.reconciler.poke();
    Ok(RecompiledView {
        devices: summary.compiled,
        changed: summary.changed,
        pending: selected.soon,
    })
}

/// One page of a list, with the cursor of the next page if there is one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Common list parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

impl PageParams {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit.unwrap_or(DEFAULT_PAGE) {
            l @ 1..=MAX_PAGE => Ok(i64::from(l)),
            l => Err(ApiError::bad_request(
                "invalid_query",
                format!("limit {l} is outside 1..={MAX_PAGE}"),
            )),
        }
    }

    /// The decoded cursor: the sort key of the last item of the previous page.
    pub fn after(&self) -> Result<Option<String>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                let key = URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::bad_request("invalid_query", "invalid cursor"))?;
                if key.contains('\0') {
                    return Err(crate::http::error::nul_refused("the cursor"));
                }
                Ok(key)
            })
            .transpose()
    }

    /// The decoded cursor parsed as the list's sort key (an id, a number).
    pub fn after_parsed<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        self.after()?
            .map(|a| {
                a.parse::<T>()
                    .map_err(|_| ApiError::bad_request("invalid_query", "invalid cursor"))
            })
            .transpose()
    }
}

/// The opaque cursor of a sort key.
pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Builds a page from one extra-long fetch: `rows` was fetched with `limit`
/// items; a full page gets a cursor made from the last item's sort key.
pub fn page<R, T>(
    rows: Vec<R>,
    limit: i64,
    key: impl Fn(&R) -> String,
    view: impl Fn(R) -> T,
) -> Page<T> {
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| encode_cursor(&key(r))))
        .flatten();
    Page {
        items: rows.into_iter().map(view).collect(),
        next_cursor,
    }
}
