//! `/api/v1/purchases`: passes operators sell or grant, the list of passes,
//! and cancelling (refunding) one. Writes go through `crate::shop::purchases`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::handlers::{page, Page, PageParams};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::services::pay_per_site::catalog::Currency;
use crate::shop::purchases::{NewPurchase, PurchaseSource, RecordedPurchase};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurchaseView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub site_id: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// What was paid, in minor units of `currency`.
    pub price: i64,
    pub currency: String,
    pub source: PurchaseSource,
    pub payment_id: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Neither cancelled nor ended at the time of the answer.
    pub in_force: bool,
}

impl PurchaseView {
    pub fn new(row: db::purchases::PurchaseRow, now: DateTime<Utc>) -> Self {
        let in_force = row.in_force(now);
        PurchaseView {
            id: row.id,
            customer_id: row.customer_id,
            site_id: row.site_id,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            price: row.price,
            currency: row.currency,
            // The table's CHECK allows only the three sources.
            source: PurchaseSource::parse(&row.source).unwrap_or(PurchaseSource::Operator),
            payment_id: row.payment_id,
            cancelled_at: row.cancelled_at,
            created_at: row.created_at,
            in_force,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceVersion {
    pub device_id: Uuid,
    pub version: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurchaseRecorded {
    #[serde(flatten)]
    pub purchase: PurchaseView,
    /// Each of the household's routers and its config version after the recompile.
    pub device_versions: Vec<DeviceVersion>,
}

impl From<RecordedPurchase> for PurchaseRecorded {
    fn from(recorded: RecordedPurchase) -> Self {
        PurchaseRecorded {
            purchase: PurchaseView::new(recorded.purchase, Utc::now()),
            device_versions: recorded
                .device_versions
                .into_iter()
                .map(|(device_id, version)| DeviceVersion { device_id, version })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePurchase {
    pub customer_id: Uuid,
    pub site_id: i64,
    /// The duration of one of the site's passes; its catalog price is charged.
    pub duration_secs: i64,
}

#[utoipa::path(post, path = "/api/v1/purchases", request_body = CreatePurchase, tag = "purchases",
    responses((status = 201, body = PurchaseRecorded), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody)))]
/// Sells or grants a pass at its catalog price. A pass for a site the
/// household already has starts when its access ends.
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreatePurchase>,
) -> ApiResult<(StatusCode, Json<PurchaseRecorded>)> {
    let site = db::catalog::get(&state.pool, body.site_id)
        .await?
        .ok_or_else(|| ApiError::unknown("unknown_site", format!("no site {}", body.site_id)))?;
    let currency = Currency::parse(&site.currency).map_err(anyhow::Error::msg)?;
    let mut tx = state.reconciler.begin_change().await?;
    let staged = crate::shop::purchases::record_in(
        &mut tx,
        &state.pool,
        &state.reconciler,
        NewPurchase {
            customer_id: body.customer_id,
            site_id: body.site_id,
            duration_secs: body.duration_secs,
            source: PurchaseSource::Operator,
            payment_id: None,
            price: None,
            currency,
        },
    )
    .await?;
    let id = staged.purchase.id.to_string();
    audit.commit(tx, StatusCode::CREATED, Some(id)).await?;
    let recorded = staged.published(&state.reconciler);
    Ok((StatusCode::CREATED, Json(recorded.into())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListPurchases {
    pub customer_id: Option<Uuid>,
    pub site_id: Option<i64>,
    /// `true`: only passes in force (running or queued); `false`: only ended
    /// or cancelled ones.
    pub active: Option<bool>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/purchases", params(ListPurchases), tag = "purchases",
    responses((status = 200, body = Page<PurchaseView>), (status = 400, body = crate::http::error::ErrorBody)))]
/// Purchases, newest first.
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListPurchases>,
) -> ApiResult<Json<Page<PurchaseView>>> {
    let paging = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let after = paging
        .after()?
        .map(|cursor| {
            cursor
                .split_once('|')
                .and_then(|(at, id)| {
                    Some((
                        DateTime::parse_from_rfc3339(at).ok()?.to_utc(),
                        id.parse::<Uuid>().ok()?,
                    ))
                })
                .ok_or_else(|| ApiError::bad_request("invalid_query", "invalid cursor"))
        })
        .transpose()?;
    let now = Utc::now();
    let filter = db::purchases::PurchaseFilter {
        customer_id: query.customer_id,
        site_id: query.site_id,
        in_force: query.active,
        now,
    };
    let rows = db::purchases::list(&state.pool, &filter, after, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| {
            format!(
                "{}|{}",
                r.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                r.id
            )
        },
        |r| PurchaseView::new(r, now),
    )))
}

#[utoipa::path(delete, path = "/api/v1/purchases/{id}", tag = "purchases", params(("id" = Uuid, Path, description = "The purchase's id")),
    responses((status = 200, body = PurchaseRecorded), (status = 404, body = crate::http::error::ErrorBody)))]
/// Cancels (refunds) a pass in force: it ends now, and the household's
/// passes queued after it for the same site move forward.
pub async fn cancel(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<PurchaseRecorded>> {
    let mut tx = state.reconciler.begin_change().await?;
    let staged = crate::shop::purchases::cancel_in(&mut tx, &state.reconciler, id).await?;
    audit.commit(tx, StatusCode::OK, None).await?;
    let cancelled = staged.published(&state.reconciler);
    Ok(Json(cancelled.into()))
}
