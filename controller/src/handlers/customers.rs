//! `/api/v1/customers`: households, the routers they own and the passes
//! they have. Attaching or detaching a router recompiles it (its passes
//! come from its household).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db;
use crate::handlers::commit_recompiled;
use crate::handlers::purchases::PurchaseView;
use crate::handlers::{page, Page, PageParams};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::{parse_reference, DisplayName};

/// Most routers named when creating a household.
pub const MAX_DEVICES_AT_CREATION: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    /// Unique: 1 to 100 printable characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: String,
    /// The billing system's id of the customer (unique), used by its webhooks.
    #[schema(pattern = r"^[!-~]{1,200}$")]
    pub external_ref: Option<String>,
    /// Routers the household owns (none may belong to another household).
    #[serde(default)]
    pub devices: Vec<Uuid>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub id: Uuid,
    pub name: String,
    pub external_ref: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<db::customers::CustomerRow> for CustomerView {
    fn from(row: db::customers::CustomerRow) -> Self {
        CustomerView {
            id: row.id,
            name: row.name,
            external_ref: row.external_ref,
            created_at: row.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerDevice {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerDetail {
    #[serde(flatten)]
    pub customer: CustomerView,
    /// The household's routers, by name.
    pub devices: Vec<CustomerDevice>,
    /// Passes in force (running or queued after a running one), by site and start.
    pub passes: Vec<PurchaseView>,
}

async fn detail(
    db: &mut PgConnection,
    customer: db::customers::CustomerRow,
) -> ApiResult<CustomerDetail> {
    let now = Utc::now();
    let devices = db::devices::of_customer(&mut *db, customer.id).await?;
    let passes = db::purchases::in_force_of_customer(&mut *db, customer.id, now).await?;
    Ok(CustomerDetail {
        customer: customer.into(),
        devices: devices
            .into_iter()
            .map(|d| CustomerDevice {
                id: d.id,
                name: d.name,
            })
            .collect(),
        passes: passes
            .into_iter()
            .map(|p| PurchaseView::new(p, now))
            .collect(),
    })
}

fn unique_taken(e: sqlx::Error, name: &str, external_ref: Option<&str>) -> ApiError {
    if db::is_unique_violation_of(&e, db::customers::NAME_KEY) {
        ApiError::conflict("name_taken", format!("a customer named `{name}` exists"))
    } else if db::is_unique_violation_of(&e, db::customers::EXTERNAL_REF_KEY) {
        ApiError::conflict(
            "external_ref_taken",
            format!(
                "another customer has external_ref `{}`",
                external_ref.unwrap_or_default()
            ),
        )
    } else {
        e.into()
    }
}

/// Attaches a device to a household inside the caller's transaction (the
/// device row stays locked until the end of it). Returns whether it changed;
/// `missing` is the error for a device that does not exist.
async fn attach(
    tx: &mut PgConnection,
    customer: &db::customers::CustomerRow,
    device_id: Uuid,
    missing: impl FnOnce() -> ApiError,
) -> ApiResult<bool> {
    let household = db::devices::household_for_update(&mut *tx, device_id)
        .await?
        .ok_or_else(missing)?;
    match household.customer_id {
        Some(current) if current == customer.id => Ok(false),
        Some(other) => Err(ApiError::conflict(
            "device_has_customer",
            format!(
                "device `{}` ({device_id}) belongs to household `{}` ({other}); detach it there \
                 before attaching it to `{}`",
                household.device_name,
                household.customer_name.unwrap_or_default(),
                customer.name
            ),
        )),
        None => {
            db::devices::set_customer(&mut *tx, device_id, Some(customer.id)).await?;
            Ok(true)
        }
    }
}

#[utoipa::path(post, path = "/api/v1/customers", request_body = CreateCustomer, tag = "customers",
    responses((status = 201, body = CustomerDetail), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Creates a household, optionally with its routers.
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> ApiResult<(StatusCode, Json<CustomerDetail>)> {
    let name = DisplayName::parse(&body.name, "customer").map_err(ApiError::invalid)?;
    let external_ref = body
        .external_ref
        .as_deref()
        .map(|r| parse_reference(r, "external_ref"))
        .transpose()
        .map_err(ApiError::invalid)?;
    if body.devices.len() > MAX_DEVICES_AT_CREATION {
        return Err(ApiError::invalid(format!(
            "at most {MAX_DEVICES_AT_CREATION} devices at creation; attach more afterwards"
        )));
    }
    let mut devices = body.devices;
    devices.sort();
    devices.dedup();

    let mut tx = state.reconciler.begin_change().await?;
    let customer = db::customers::insert(
        &mut *tx,
        Uuid::new_v4(),
        name.as_str(),
        external_ref.as_deref(),
    )
    .await
    .map_err(|e| unique_taken(e, name.as_str(), external_ref.as_deref()))?;
    for &device in &devices {
        attach(&mut tx, &customer, device, || {
            ApiError::unknown("unknown_device", format!("no device {device}"))
        })
        .await?;
    }
    let view = detail(&mut tx, customer).await?;
    let created = Some(view.customer.id.to_string());
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&devices),
        StatusCode::CREATED,
        created,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/api/v1/customers", params(PageParams), tag = "customers",
    responses((status = 200, body = Page<CustomerView>), (status = 400, body = crate::http::error::ErrorBody)))]
/// Households by name.
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<CustomerView>>> {
    let limit = paging.limit()?;
    let rows = db::customers::list(&state.pool, paging.after()?.as_deref(), limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.name.clone(),
        CustomerView::from,
    )))
}

fn no_customer(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no customer {id}"))
}

#[utoipa::path(get, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path, description = "The household's id")),
    responses((status = 200, body = CustomerDetail), (status = 404, body = crate::http::error::ErrorBody)))]
/// A household with its routers and its passes in force.
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<CustomerDetail>> {
    let mut conn = state.pool.acquire().await?;
    let customer = db::customers::get(&mut *conn, id)
        .await?
        .ok_or_else(|| no_customer(id))?;
    Ok(Json(detail(&mut conn, customer).await?))
}

#[utoipa::path(put, path = "/api/v1/customers/{id}/devices/{device_id}", tag = "customers", params(("id" = Uuid, Path, description = "The household's id"), ("device_id" = Uuid, Path, description = "The router's id")),
    responses((status = 200, body = CustomerDetail), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Attaches a router to the household (nothing changes if it already is).
pub async fn attach_device(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath((id, device_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Json<CustomerDetail>> {
    let mut tx = state.reconciler.begin_change().await?;
    let customer = db::customers::lock(&mut *tx, id)
        .await?
        .ok_or_else(|| no_customer(id))?;
    let changed = attach(&mut tx, &customer, device_id, || {
        ApiError::NotFound(format!("no device {device_id}"))
    })
    .await?;
    let view = detail(&mut tx, customer).await?;
    let recompile: &[Uuid] = if changed { &[device_id] } else { &[] };
    commit_recompiled(&state, &audit, tx, Some(recompile), StatusCode::OK, None).await?;
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/customers/{id}/devices/{device_id}", tag = "customers", params(("id" = Uuid, Path, description = "The household's id"), ("device_id" = Uuid, Path, description = "The router's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Detaches a router from the household: it loses the household's passes.
/// A member of one of the household's VPNs leaves the VPN first.
pub async fn detach_device(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath((id, device_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let mut tx = state.reconciler.begin_change().await?;
    db::customers::get(&mut *tx, id)
        .await?
        .ok_or_else(|| no_customer(id))?;
    // The device's row lock orders this against a VPN admitting it (which
    // checks the household under the same lock).
    let household = db::devices::household_for_update(&mut *tx, device_id).await?;
    if let Some(vpn) = db::vpns::vpn_of_device(&mut *tx, device_id).await? {
        return Err(ApiError::conflict(
            "device_in_vpn",
            format!(
                "device `{}` ({device_id}) is a member of the household's VPN `{}` ({}); \
                 remove it from the VPN before detaching it",
                household.map(|h| h.device_name).unwrap_or_default(),
                vpn.name,
                vpn.id
            ),
        ));
    }
    if !db::devices::detach_from_customer(&mut *tx, device_id, id).await? {
        return Err(ApiError::NotFound(format!(
            "device {device_id} is not attached to customer {id}"
        )));
    }
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&[device_id]),
        StatusCode::NO_CONTENT,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path, description = "The household's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Deletes a household without passes in force (cancel them first) and
/// without VPNs (delete them first): its routers are detached, its ended
/// passes removed.
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.reconciler.begin_change().await?;
    let customer = db::customers::lock(&mut *tx, id)
        .await?
        .ok_or_else(|| no_customer(id))?;
    let passes = db::purchases::in_force_of_customer(&mut *tx, id, Utc::now()).await?;
    if !passes.is_empty() {
        return Err(ApiError::conflict(
            "active_passes",
            format!(
                "customer `{}` has {} passes in force; cancel them before deleting it",
                customer.name,
                passes.len()
            ),
        ));
    }
    let vpns = db::vpns::count_of_customer(&mut *tx, id).await?;
    if vpns > 0 {
        return Err(ApiError::conflict(
            "customer_has_vpns",
            format!(
                "customer `{}` has {vpns} VPNs; delete them before deleting it",
                customer.name
            ),
        ));
    }
    let devices = db::devices::ids_of_customer(&mut *tx, id).await?;
    db::customers::delete(&mut *tx, id).await?;
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&devices),
        StatusCode::NO_CONTENT,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
