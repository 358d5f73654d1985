//! A router's WireGuard side as the controller knows it, and key rotation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db;
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiPath, ApiResult};
use crate::http::state::AppState;
use crate::vpn::keys::KeyKeeper;

/// What a router reported of its WireGuard side and the controller's key
/// decisions for it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WireguardView {
    pub device_id: Uuid,
    /// The key the router reported using.
    pub public_key: String,
    /// A key it made for a rotation and does not use yet.
    pub next_public_key: Option<String>,
    pub key_generation: i32,
    /// The generation asked of it (above `key_generation`: a rotation was asked for).
    pub requested_generation: i32,
    /// The key it is told to use; peers know it by this.
    pub active_public_key: String,
    /// During a rotation, the other key its peers accept.
    pub alternate_public_key: Option<String>,
    /// `announced` (peers learn the next key), `switching` (it is told to
    /// use it), or none.
    pub rotation_stage: Option<String>,
    pub listen_port: i32,
    pub wan_addresses: Vec<String>,
    /// Where a controller probe reached it; none: behind NAT or filtered.
    pub reachable_address: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<db::wireguard::FactsRow> for WireguardView {
    fn from(row: db::wireguard::FactsRow) -> Self {
        WireguardView {
            device_id: row.device_id,
            public_key: row.public_key,
            next_public_key: row.next_public_key,
            key_generation: row.key_generation,
            requested_generation: row.requested_generation,
            active_public_key: row.active_public_key,
            alternate_public_key: row.alternate_public_key,
            rotation_stage: row.rotation_stage,
            listen_port: row.listen_port,
            wan_addresses: row.wan_addresses,
            reachable_address: row.reachable_address,
            updated_at: row.updated_at,
        }
    }
}

fn no_facts(id: Uuid) -> ApiError {
    ApiError::conflict(
        "no_wireguard_facts",
        format!("device {id} has not reported a WireGuard key (it does when it joins a VPN)"),
    )
}

async fn known_device(state: &AppState, id: Uuid) -> ApiResult<()> {
    if state.cache.contains(id) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no device {id}")))
    }
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/wireguard", tag = "vpns", operation_id = "wireguard_get", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = WireguardView), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// The router's WireGuard facts and key state.
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<WireguardView>> {
    known_device(&state, id).await?;
    let row = db::wireguard::get(&state.pool, id)
        .await?
        .ok_or_else(|| no_facts(id))?;
    Ok(Json(row.into()))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/wireguard/rotate", tag = "vpns", operation_id = "wireguard_rotate", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 202, body = WireguardView), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Rotates the router's WireGuard key: the router makes a new key pair and
/// reports its public half; its peers learn it while still accepting the
/// old one; the router switches; the old key leaves the peers. Answers
/// once the request is in the router's config.
pub async fn rotate(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<(StatusCode, Json<WireguardView>)> {
    known_device(&state, id).await?;
    let row = db::wireguard::get(&state.pool, id)
        .await?
        .ok_or_else(|| no_facts(id))?;
    if row.rotation_stage.is_some() || row.requested_generation > row.key_generation {
        return Err(ApiError::conflict(
            "rotation_in_progress",
            format!("device {id} is rotating its key already"),
        ));
    }
    let keys = KeyKeeper {
        reconciler: &state.reconciler,
    };
    let mut tx = state.reconciler.begin_change().await?;
    let (_, compiled) = keys.request_rotation_in(&mut tx, id).await?;
    let row = db::wireguard::get(&mut *tx, id)
        .await?
        .ok_or_else(|| no_facts(id))?;
    audit.commit(tx, StatusCode::ACCEPTED, None).await?;
    state.reconciler.publish(compiled);
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}
