//! `/api/v1/devices`: pre-registration, listing, reading and deleting routers,
//! and each router's compiled config and latest status.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::handlers::enrollment;
use crate::handlers::{page, Page, PageParams};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::{parse_name, Labels, Selector};
use crate::reconcile::live::Topic;
use crate::reconcile::Resign;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// Unique name, 1-64 of `A-Za-z0-9._-`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Lifetime of the enrollment token returned (default 7 days).
    #[schema(minimum = 60, maximum = 7_776_000)]
    pub enrollment_token_expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub id: Uuid,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// When the device's client certificate expires; absent until it enrolls.
    pub certificate_expires_at: Option<DateTime<Utc>>,
    /// What its latest status report says (in lists only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<DeviceHealth>,
}

/// A router's state as the dashboard shows it, from its latest report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceHealth {
    /// `online` (reported within the online window, 10 minutes),
    /// `stale` (not since, or its config expired) or `never_reported`.
    pub state: String,
    /// The last outcome was `rolled_back` or `rejected`.
    pub failing: bool,
    pub last_report_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub enforced_version: Option<i64>,
    pub agent_version: Option<String>,
    /// The agent version its config asks it to run (an `agent-release`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wanted_agent_version: Option<String>,
    /// An agent version an `agent-release` wants that has no build for
    /// the target triple the router reports (or it reported none yet):
    /// it keeps its agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_release_missing: Option<String>,
}

impl From<db::devices::DeviceListRow> for DeviceView {
    fn from(row: db::devices::DeviceListRow) -> Self {
        DeviceView {
            health: Some(DeviceHealth {
                state: row.state,
                failing: row.failing,
                last_report_at: row.last_report_at,
                outcome: row.outcome,
                enforced_version: row.enforced_version,
                agent_version: row.agent_version,
                wanted_agent_version: row.agent_release_version,
                agent_release_missing: row.agent_release_missing,
            }),
            ..row.device.into()
        }
    }
}

impl From<db::devices::DeviceRow> for DeviceView {
    fn from(row: db::devices::DeviceRow) -> Self {
        DeviceView {
            id: row.id,
            name: row.name,
            labels: row.labels.0,
            created_at: row.created_at,
            certificate_expires_at: row.cert_not_after,
            health: None,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceCreated {
    pub device: DeviceView,
    /// A single-use enrollment token bound to this device. Shown once; only
    /// its hash is stored. The router trades it for its client certificate.
    pub enrollment_token: String,
    pub enrollment_token_expires_at: DateTime<Utc>,
    /// A ready agent config file (TOML).
    pub agent_config: String,
    /// The controller CA the agent must pin (PEM).
    pub ca_pem: String,
}

#[utoipa::path(post, path = "/api/v1/devices", request_body = CreateDevice, tag = "devices",
    responses((status = 201, body = DeviceCreated), (status = 400, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn create(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateDevice>,
) -> ApiResult<(StatusCode, Json<DeviceCreated>)> {
    let name = parse_name(&body.name, "device").map_err(ApiError::invalid)?;
    let ttl = enrollment::token_ttl(body.enrollment_token_expires_in_secs)?;
    let id = Uuid::new_v4();
    let mut tx = state.reconciler.begin_change().await?;
    let row = db::devices::insert(&mut *tx, id, &name, body.labels.as_map())
        .await
        .map_err(|e| {
            if db::is_unique_violation(&e) {
                ApiError::conflict("name_taken", format!("a device named `{name}` exists"))
            } else {
                e.into()
            }
        })?;
    let compiled = state
        .reconciler
        .recompile_in(&mut tx, Some(&[id]), Resign::IfChanged)
        .await?;
    let (enrollment_token, expires_at) =
        enrollment::create_device_token(&mut tx, id, ttl, &operator.name).await?;
    audit
        .commit(tx, StatusCode::CREATED, Some(id.to_string()))
        .await?;
    state.cache.add_device(id);
    state.reconciler.publish(compiled);
    state.live.notify(Topic::Device(id));
    Ok((
        StatusCode::CREATED,
        Json(DeviceCreated {
            agent_config: state.agent_bootstrap.agent_toml(),
            ca_pem: state.agent_bootstrap.ca_pem.clone(),
            device: row.into(),
            enrollment_token,
            enrollment_token_expires_at: expires_at,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Seconds until the token expires (60 s to 90 days; default 7 days).
    #[schema(minimum = 60, maximum = 7_776_000)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnrollmentTokenCreated {
    pub enrollment_token: String,
    pub expires_at: DateTime<Utc>,
    /// A ready agent config file (TOML), for the replacement router.
    pub agent_config: String,
    /// The controller CA the agent must pin (PEM).
    pub ca_pem: String,
}

/// A new enrollment token for an existing device: for a replaced router, or
/// one that missed its certificate renewal. Enrolling with it revokes every
/// earlier certificate of the device.
#[utoipa::path(post, path = "/api/v1/devices/{id}/enrollment-token", request_body = CreateEnrollmentToken, tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 201, body = EnrollmentTokenCreated), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn create_enrollment_token(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateEnrollmentToken>,
) -> ApiResult<(StatusCode, Json<EnrollmentTokenCreated>)> {
    let ttl = enrollment::token_ttl(body.expires_in_secs)?;
    let mut tx = state.pool.begin().await?;
    db::devices::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))?;
    let (enrollment_token, expires_at) =
        enrollment::create_device_token(&mut tx, id, ttl, &operator.name).await?;
    audit.commit(tx, StatusCode::CREATED, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated {
            enrollment_token,
            expires_at,
            agent_config: state.agent_bootstrap.agent_toml(),
            ca_pem: state.agent_bootstrap.ca_pem.clone(),
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListDevices {
    /// Label selector, e.g. `env=prod,region in (eu,us)`.
    pub selector: Option<String>,
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// `online`, `stale`, `failing` or `never_reported`.
    pub state: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The values of the device list's `state` filter.
pub const DEVICE_STATES: [&str; 4] = ["online", "stale", "failing", "never_reported"];

/// A device list's filters, parsed: what the list and the CSV export take.
pub struct DeviceSelection {
    selector: Option<Selector>,
    name_contains: Option<String>,
    state: Option<String>,
}

impl DeviceSelection {
    pub fn parse(selector: Option<&str>, q: Option<&str>, state: Option<&str>) -> ApiResult<Self> {
        let selector = selector
            .map(Selector::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("invalid_selector", e))?;
        if let Some(wanted) = state {
            if !DEVICE_STATES.contains(&wanted) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("state must be one of {}", DEVICE_STATES.join(", ")),
                ));
            }
        }
        let name_contains = q.map(str::trim).filter(|q| !q.is_empty());
        if name_contains.is_some_and(|q| q.len() > 64) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "q is longer than a device name (64)",
            ));
        }
        Ok(DeviceSelection {
            selector,
            name_contains: name_contains.map(str::to_owned),
            state: state.map(str::to_owned),
        })
    }

    pub fn filter(&self) -> db::devices::DeviceFilter<'_> {
        db::devices::DeviceFilter {
            selector: self.selector.as_ref(),
            name_contains: self.name_contains.as_deref(),
            state: self.state.as_deref(),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/devices", params(ListDevices), tag = "devices",
    responses((status = 200, body = Page<DeviceView>), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListDevices>,
) -> ApiResult<Json<Page<DeviceView>>> {
    let selection = DeviceSelection::parse(
        query.selector.as_deref(),
        query.q.as_deref(),
        query.state.as_deref(),
    )?;
    let paging = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let rows = db::devices::list(
        &state.pool,
        &selection.filter(),
        paging.after()?.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.device.name.clone(),
        DeviceView::from,
    )))
}

pub(crate) async fn find(state: &AppState, id: Uuid) -> ApiResult<db::devices::DeviceRow> {
    db::devices::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = DeviceView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(find(&state, id).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Deletes a router that is neither a VPN member nor a relay.
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.pool.begin().await?;
    // Locked so no VPN admits it or makes it a relay meanwhile.
    let device = db::devices::household_for_update(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))?;
    if let Some(vpn) = db::vpns::vpn_of_device(&mut *tx, id).await? {
        return Err(ApiError::conflict(
            "device_in_vpn",
            format!(
                "device `{}` is a member of VPN `{}` ({}); remove it from the VPN first",
                device.device_name, vpn.name, vpn.id
            ),
        ));
    }
    if db::vpns::get_relay(&mut *tx, id).await?.is_some() {
        return Err(ApiError::conflict(
            "device_is_relay",
            format!(
                "device `{}` is a VPN relay; remove it from the relays first",
                device.device_name
            ),
        ));
    }
    db::devices::delete(&mut *tx, id).await?;
    let removed = db::bus::Message::Removed(vec![id]);
    db::bus::send(&mut tx, state.reconciler.replica, &removed).await?;
    audit.commit(tx, StatusCode::NO_CONTENT, None).await?;
    state.cache.remove_device(id);
    state.live.notify(Topic::Device(id));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompiledConfigView {
    pub version: i64,
    /// SHA-256 of the firewall content (the agent reports the same
    /// digest), followed by `+release:<sha256>` when the config asks for an
    /// agent release (or `+release-missing:<version>:<target>` when it
    /// wants one the router's target has no build of): what decides
    /// whether a recompile made a new version.
    pub digest: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The signed document, decoded.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// The exact envelope served to the device.
    #[schema(value_type = Object)]
    pub envelope: serde_json::Value,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/config", tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = CompiledConfigView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn config(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<CompiledConfigView>> {
    find(&state, id).await?;
    let row = db::configs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {id} has no compiled config yet")))?;
    let envelope: isdf_api::Envelope = serde_json::from_slice(&row.envelope)
        .map_err(|e| anyhow::anyhow!("stored envelope: {e}"))?;
    let payload = envelope
        .payload_bytes()
        .map_err(|e| anyhow::anyhow!("stored payload: {e}"))?;
    Ok(Json(CompiledConfigView {
        version: row.version,
        digest: row.digest,
        issued_at: row.issued_at,
        expires_at: row.expires_at,
        config: serde_json::from_slice(&payload)
            .map_err(|e| anyhow::anyhow!("stored config: {e}"))?,
        envelope: serde_json::to_value(&envelope).map_err(|e| anyhow::anyhow!("{e}"))?,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusView {
    pub sequence: i64,
    pub received_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub report: isdf_api::StatusReport,
}

impl From<db::status::StatusRow> for StatusView {
    fn from(row: db::status::StatusRow) -> Self {
        StatusView {
            sequence: row.sequence,
            received_at: row.received_at,
            report: row.report.0,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/status", tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = StatusView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn status(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<StatusView>> {
    find(&state, id).await?;
    let row = db::status::latest(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {id} has not reported yet")))?;
    Ok(Json(row.into()))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/status/history", tag = "devices", params(("id" = Uuid, Path, description = "The router's id"), PageParams),
    responses((status = 200, body = Vec<StatusView>), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn status_history(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(paging): ApiQuery<PageParams>,
) -> ApiResult<Json<Vec<StatusView>>> {
    find(&state, id).await?;
    let rows = db::status::history(&state.pool, id, paging.limit()?).await?;
    Ok(Json(rows.into_iter().map(StatusView::from).collect()))
}

/// A router's history from its last 100 reports: each one's outcome, and
/// between two reports how fast its counters grew (blocked packets and
/// bytes, failed polls, each rule's packets and bytes).
#[utoipa::path(get, path = "/api/v1/devices/{id}/history", tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = crate::model::router_history::RouterHistory), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn history(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<crate::model::router_history::RouterHistory>> {
    find(&state, id).await?;
    let rows = db::status::history(&state.pool, id, db::status::HISTORY_PER_DEVICE).await?;
    let reports: Vec<_> = rows
        .iter()
        .map(|r| (r.received_at, r.sequence, &r.report.0))
        .collect();
    Ok(Json(crate::model::router_history::history(&reports)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceInForce {
    pub assignment_id: Uuid,
    pub service_id: Uuid,
    pub service_name: String,
    /// The service kind (`flow-block`, ...).
    #[serde(rename = "type")]
    pub service_type: String,
    /// The revision this router compiles now (a rollout that has not
    /// reached it yet leaves it on the previous one).
    pub revision: i32,
    pub selector: String,
    /// The active rollout staging this assignment, if any.
    pub rollout_id: Option<Uuid>,
    /// The revision the rollout brings (when it differs from `revision`,
    /// the router's wave is not released yet).
    pub rollout_to_revision: Option<i32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServicesInForce {
    pub items: Vec<ServiceInForce>,
}

/// The services a router runs: the assignments whose selector matches its
/// labels, each with the revision in force on this router.
#[utoipa::path(get, path = "/api/v1/devices/{id}/services", tag = "devices", params(("id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = ServicesInForce), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn services(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ServicesInForce>> {
    let device = find(&state, id).await?;
    let labels = Labels::parse(device.labels.0)
        .map_err(|e| anyhow::anyhow!("stored labels of {id}: {e}"))?;
    let rows = db::assignments::as_seen_by(&state.pool, id).await?;
    let items = rows
        .into_iter()
        .filter(|row| Selector::parse(&row.selector).is_ok_and(|s| s.matches(&labels)))
        .filter_map(|row| {
            let revision = match (row.rollout_id, row.released) {
                (Some(_), false) => row.from_revision?,
                _ => row.revision,
            };
            Some(ServiceInForce {
                assignment_id: row.assignment_id,
                service_id: row.service_id,
                service_name: row.service_name,
                service_type: row.kind,
                revision,
                selector: row.selector,
                rollout_id: row.rollout_id,
                rollout_to_revision: row.rollout_id.map(|_| row.revision),
            })
        })
        .collect();
    Ok(Json(ServicesInForce { items }))
}
