//! The device API (its own HTTPS listener): long-poll config pull and status
//! reports. The poll path touches no database and signs nothing.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::db;
use crate::http::auth::Device;
use crate::http::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::http::proxy_protocol::ClientAddr;
use crate::http::state::AppState;
use crate::reconcile::config_cache::ServedConfig;
use crate::vpn::keys::{FactsError, KeyKeeper};
use crate::vpn::probes::probe_targets;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// Seconds to wait for a newer config before answering 304 (capped by the server).
    #[param(maximum = 18_446_744_073_709_551_615_u64)]
    pub wait: Option<u64>,
}

pub const ENVELOPE_CONTENT_TYPE: &str = "application/vnd.isdf.envelope+json";

/// The version in `If-None-Match` (`"12"`, `12` or `W/"12"`); 0 when absent.
fn enforced_version(headers: &HeaderMap) -> ApiResult<u64> {
    let Some(value) = headers.get(IF_NONE_MATCH) else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_header", "If-None-Match must be a config version")
        })
}

#[utoipa::path(get, path = "/device/v1/config", params(PollParams), tag = "device",
    responses((status = 200, content_type = "application/vnd.isdf.envelope+json", body = Object, description = "A newer signed config (DSSE envelope); `ETag` is its version", headers(("etag" = String, description = "The config's version, quoted"))), (status = 304, description = "No newer config within the wait"), (status = 401, body = crate::http::error::ErrorBody, description = "`device_unknown` (deleted) or `certificate_superseded` (the device enrolled again, or renewed and used its new certificate)")))]
pub async fn poll_config(
    Device(id): Device,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<PollParams>,
) -> ApiResult<Response> {
    let enforced = enforced_version(&headers)?;
    let wait = state
        .device_gate
        .poll_wait(Duration::from_secs(params.wait.unwrap_or(0)));
    let pace = state.device_gate.next_poll_delay();
    let has_newer = || state.cache.version(id).is_some_and(|v| v > enforced);
    if has_newer() {
        return Ok(paced(newer_config(&state, id, enforced).await?, pace));
    }
    // A poll without wait answers at once: no timer, no channel. This is the
    // hot path of a fleet checking in, so it stays a hash and two lookups.
    if wait.is_zero() {
        return Ok(paced(not_modified(enforced), pace));
    }
    let _slot = state.device_gate.begin_poll(id)?;
    let mut changes = state.cache.subscribe(id).ok_or(ApiError::Unauthorized)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Look after subscribing, so a publish in between is not missed.
        if has_newer() {
            return Ok(paced(newer_config(&state, id, enforced).await?, pace));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out, or the device was deleted while waiting.
            Ok(Err(_)) | Err(_) => return Ok(paced(not_modified(enforced), pace)),
        }
    }
}

/// The device's config newer than `enforced`: held here, or read from the
/// database (503 while the database cannot be reached: the router polls
/// again).
async fn newer_config(state: &AppState, id: uuid::Uuid, enforced: u64) -> ApiResult<Response> {
    let served = state.reconciler.served_config(id).await.map_err(|e| {
        tracing::warn!(device = %id, error = ?e, "reading a config for a poll");
        ApiError::Unavailable {
            code: "config_unavailable",
            message: "the config cannot be read now; poll again".into(),
        }
    })?;
    Ok(match served {
        Some(config) if config.version > enforced => envelope_response(&config),
        _ => not_modified(enforced),
    })
}

fn envelope_response(config: &ServedConfig) -> Response {
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, ENVELOPE_CONTENT_TYPE.to_owned()),
            (ETAG, format!("\"{}\"", config.version)),
        ],
        config.envelope.clone(),
    )
        .into_response()
}

/// Header telling the agent how many seconds to wait before its next poll.
pub const POLL_AFTER_HEADER: &str = "isdf-poll-after";

/// Adds the server-chosen delay before the next poll (none when zero).
fn paced(mut response: Response, delay: Duration) -> Response {
    if !delay.is_zero() {
        response
            .headers_mut()
            .insert(POLL_AFTER_HEADER, delay.as_secs().into());
    }
    response
}

fn not_modified(enforced: u64) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(ETAG, format!("\"{enforced}\""))],
    )
        .into_response()
}

#[utoipa::path(post, path = "/device/v1/status", tag = "device",
    request_body = isdf_api::StatusReport,
    responses((status = 204, description = "Stored"), (status = 401, body = crate::http::error::ErrorBody, description = "`device_unknown` or `certificate_superseded`: nothing is stored"), (status = 409, body = crate::http::error::ErrorBody, description = "Sequence not above the last one (replay or reorder)")))]
pub async fn report_status(
    Device(id): Device,
    State(state): State<AppState>,
    ApiJson(report): ApiJson<isdf_api::StatusReport>,
) -> ApiResult<StatusCode> {
    report.check().map_err(ApiError::invalid)?;
    let mut tx = state.pool.begin().await?;
    let db::status::Recorded::Accepted {
        previous_counters,
        previous_target,
        previous_version,
    } = db::status::record(&mut tx, id, &report).await?
    else {
        return Err(ApiError::conflict(
            "stale_sequence",
            format!(
                "sequence {} is not above the last accepted report",
                report.sequence
            ),
        ));
    };
    let heard = db::bus::Message::Status {
        device: id,
        enforced: report.enforced_version,
    };
    db::bus::send(&mut tx, state.reconciler.replica, &heard).await?;
    // An agent release is compiled for the target the router reports, and
    // pay-per-site for what its agent version reads: a new target or
    // version (its first report, another build) is compiled again.
    let new_target = report.agent_target.is_some() && report.agent_target != previous_target;
    let new_version = previous_version.as_deref() != Some(report.agent_version.as_str());
    let recompile = new_target || new_version;
    if recompile {
        state.reconciler.recompile_soon_in(&mut tx, &[id]).await?;
    }
    tx.commit().await?;
    if recompile {
        state.reconciler.poke();
    }
    state
        .metrics
        .status_reports
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: report.outcome.as_str(),
        })
        .inc();
    if let Some(counters) = &report.agent_counters {
        state
            .metrics
            .routers
            .add(counters, previous_counters.as_ref());
    }
    state.rollouts.nudge();
    state.live.notify(crate::reconcile::live::Topic::Device(id));
    if let Some(version) = report.enforced_version {
        state.cache.report_enforced(id, version);
        let keys = KeyKeeper {
            reconciler: &state.reconciler,
        };
        // The report is stored; a rotation that cannot advance now advances
        // with the next report or after its wait.
        if let Err(e) = keys.enforced(id, version).await {
            tracing::warn!(device = %id, error = ?e, "advancing key rotations");
        }
    }
    tracing::info!(device = %id, outcome = ?report.outcome, version = ?report.enforced_version, "status report");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/device/v1/events", tag = "device",
    request_body = isdf_api::events::EventBatch,
    responses((status = 200, body = EventsStored, description = "How many events were new"), (status = 400, body = crate::http::error::ErrorBody)))]
/// Events the router reports on its own (local blocks, detections). Each
/// event is stored once per sequence number, so a resent batch changes
/// nothing; router-side blocks appear in the device's block list.
pub async fn report_events(
    Device(id): Device,
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<isdf_api::events::EventBatch>,
) -> ApiResult<Json<EventsStored>> {
    use isdf_api::events::EventKind;
    batch.check().map_err(ApiError::invalid)?;
    let mut tx = state.pool.begin().await?;
    let mut stored = 0;
    let mut counted = Vec::new();
    for event in &batch.events {
        let at = chrono::DateTime::from_timestamp_millis(event.at_ms)
            .ok_or_else(|| ApiError::invalid("at_ms is out of range"))?;
        if !db::events::record(&mut tx, id, event, at).await? {
            continue;
        }
        stored += 1;
        counted.push(event);
        let block = &event.block;
        let router_block_id = block.id as i64;
        match event.kind {
            EventKind::Block => {
                let expires_at = chrono::DateTime::from_timestamp_millis(block.expires_at_ms)
                    .ok_or_else(|| ApiError::invalid("expires_at_ms is out of range"))?;
                let new = db::blocks::NewBlock {
                    origin: block.origin.as_str(),
                    router_block_id: Some(router_block_id),
                    flow: &block.flow,
                    action: "drop",
                    reason: &block.reason,
                    created_by: "router",
                    expires_at,
                };
                db::blocks::upsert_router_block(&mut *tx, id, &new).await?;
            }
            EventKind::Unblock => {
                db::blocks::remove_router_block(&mut *tx, id, router_block_id).await?
            }
        }
    }
    db::events::trim(&mut tx, id).await?;
    tx.commit().await?;
    for event in counted {
        state.metrics.router_event(
            event.kind.as_str(),
            event.block.origin.as_str(),
            event.block.total_reason(),
        );
    }
    if stored > 0 {
        tracing::info!(device = %id, stored, "router events");
    }
    Ok(Json(EventsStored { stored }))
}

/// The answer to an event batch.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventsStored {
    /// Events of the batch not stored before (a resent one counts 0).
    pub stored: u32,
}

#[utoipa::path(get, path = "/device/v1/roots", tag = "device",
    responses((status = 200, body = Vec<Object>, description = "The signed root documents, oldest first")))]
/// The root chain (oldest first): agents walk it from the newest root they
/// hold when a config is signed by a key they do not know yet.
pub async fn roots(_device: Device, State(state): State<AppState>) -> Json<Vec<serde_json::Value>> {
    Json(
        state
            .agent_bootstrap
            .roots
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect(),
    )
}

#[utoipa::path(get, path = "/device/v1/ping", tag = "device",
    responses((status = 200, body = Pong, description = "`{\"ok\": true}`")))]
/// Reachability check the agent makes after applying a config.
pub async fn ping(_device: Device) -> Json<Pong> {
    Json(Pong { ok: true })
}

/// The answer to a ping.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Pong {
    /// Always true.
    pub ok: bool,
}

#[utoipa::path(post, path = "/device/v1/wireguard/probe", tag = "device",
    request_body = isdf_api::ProbeRequest,
    responses((status = 200, body = isdf_api::ProbeAnswer, description = "Where probes were sent"), (status = 400, body = crate::http::error::ErrorBody)))]
/// Sends one UDP datagram with its own nonce to the router's probe port at
/// the address this request came from and at each WAN address it names.
/// The router reports the nonce it received in its facts.
pub async fn probe(
    Device(id): Device,
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    ApiJson(request): ApiJson<isdf_api::ProbeRequest>,
) -> ApiResult<Json<isdf_api::ProbeAnswer>> {
    if request.port == 0 {
        return Err(ApiError::invalid("port is 0"));
    }
    let observed = peer.ip().to_canonical();
    let targets = probe_targets(observed, &request.wan_addresses, request.port);
    let sent_to = state.probes.send(id, &targets).await?;
    Ok(Json(isdf_api::ProbeAnswer { sent_to }))
}

#[utoipa::path(put, path = "/device/v1/wireguard/facts", tag = "device",
    request_body = isdf_api::WireguardFacts,
    responses((status = 204, description = "Stored"), (status = 400, body = crate::http::error::ErrorBody)))]
/// The router's WireGuard facts: the key it uses (and one made for a
/// rotation), its port, WAN addresses, and the nonce of a probe it
/// received. Routers sharing a VPN with it are recompiled when this
/// changes their configs.
pub async fn wireguard_facts(
    Device(id): Device,
    State(state): State<AppState>,
    ApiJson(facts): ApiJson<isdf_api::WireguardFacts>,
) -> ApiResult<StatusCode> {
    let reachable = facts
        .probe_nonce
        .as_deref()
        .and_then(|nonce| state.probes.redeem(id, nonce))
        .map(|to| to.ip());
    let keys = KeyKeeper {
        reconciler: &state.reconciler,
    };
    match keys.record(id, &facts, reachable).await {
        Ok(_) => {
            tracing::info!(device = %id, key = %facts.public_key, reachable = ?reachable, "WireGuard facts");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(FactsError::Invalid(message)) => Err(ApiError::invalid(message)),
        Err(FactsError::Internal(e)) => Err(e.into()),
    }
}
