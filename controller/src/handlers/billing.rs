//! `POST /webhooks/v1/billing`: the billing system reports a payment for a
//! pass. Outside the operator-token middleware: authenticated by an HMAC
//! over the timestamp and the raw body (`crate::shop::billing_webhook`), made
//! idempotent by the payment id, and audited here (actor `billing-webhook`),
//! whether accepted or refused.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use crate::db;
use crate::db::audit::NewAuditEntry;
use crate::handlers::purchases::PurchaseRecorded;
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;
use crate::model::parse_reference;
use crate::services::pay_per_site::catalog::Currency;
use crate::shop::billing_webhook::SIGNATURE_HEADER;
use crate::shop::purchases::{NewPurchase, PurchaseSource};

/// The route, on the operator listener.
pub const PATH: &str = "/webhooks/v1/billing";
/// The audit log's actor for webhook calls.
pub const ACTOR: &str = "billing-webhook";

/// A payment for a pass, as the billing system reports it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingPayment {
    /// The payment's id at the billing system or payment provider: each is
    /// recorded once.
    pub payment_id: String,
    /// The household, by our id...
    pub customer_id: Option<Uuid>,
    /// ...or by the billing system's id (`external_ref`); exactly one of the two.
    pub customer_external_ref: Option<String>,
    pub site_id: i64,
    /// The duration of one of the site's passes.
    pub duration_secs: i64,
    /// What was paid, in minor units of `currency` (more than zero).
    pub amount: i64,
    /// Must be the site's currency.
    pub currency: String,
}

#[utoipa::path(post, path = "/webhooks/v1/billing", request_body = BillingPayment, tag = "purchases",
    security(()),
    params(("Isdf-Signature" = String, Header,
        description = "`t=<unix secs>,v1=<hex HMAC-SHA256(key, \"<t>.<raw body>\")>`; the key is `<data-dir>/billing-webhook.key`")),
    responses((status = 201, body = PurchaseRecorded), (status = 400, body = crate::http::error::ErrorBody),
        (status = 401, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Records a payment reported by the billing system (signed like Stripe's
/// webhooks). A payment id seen before is refused with `duplicate_payment`
/// naming the purchase already recorded.
pub async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    let verified = state
        .billing_webhook_key
        .verify(signature, &body, Utc::now().timestamp());
    let result = match &verified {
        Ok(()) => record(&state, &body).await,
        Err(e) => {
            tracing::warn!(reason = %e, "billing webhook with a bad signature");
            Err(ApiError::Denied {
                code: "bad_signature",
                message: format!("{e}"),
            })
        }
    };
    // Only a signed body is kept: unauthenticated bytes never reach the log.
    let request = match verified {
        Ok(()) => crate::http::auth::summarize(&body),
        Err(_) => serde_json::json!({"unsigned_bytes": body.len()}),
    };
    let (status, target, summary) = match &result {
        Ok((status, Json(recorded))) => (*status, Some(recorded.purchase.id.to_string()), request),
        Err(e) => {
            let (status, code) = e.status_and_code();
            let payment_id = verified
                .is_ok()
                .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .flatten()
                .and_then(|v| v["payment_id"].as_str().map(str::to_owned));
            (
                status,
                payment_id,
                serde_json::json!({"request": request, "error": {"code": code, "message": e.to_string()}}),
            )
        }
    };
    let action = format!("POST {PATH}");
    let entry = NewAuditEntry {
        actor_id: None,
        actor: ACTOR,
        action: &action,
        target: target.as_deref(),
        status: status.as_u16(),
        summary,
    };
    if let Err(e) = db::audit::append(&state.pool, &entry).await {
        tracing::error!(error = %e, "could not append the billing webhook to the audit log");
    }
    result.into_response()
}

async fn record(state: &AppState, body: &[u8]) -> ApiResult<(StatusCode, Json<PurchaseRecorded>)> {
    let payment: BillingPayment = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request("invalid_body", e.to_string())
        } else {
            ApiError::bad_request("malformed_json", e.to_string())
        }
    })?;
    let payment_id =
        parse_reference(&payment.payment_id, "payment_id").map_err(ApiError::invalid)?;
    let currency = Currency::parse(&payment.currency).map_err(ApiError::invalid)?;
    if payment.amount <= 0 {
        return Err(ApiError::invalid(format!(
            "amount {} must be more than zero (minor units)",
            payment.amount
        )));
    }
    let customer_id = match (
        payment.customer_id,
        payment.customer_external_ref.as_deref(),
    ) {
        (Some(id), None) => id,
        (None, Some(external_ref)) => {
            db::customers::by_external_ref(&state.pool, external_ref)
                .await?
                .ok_or_else(|| {
                    ApiError::unknown(
                        "unknown_customer",
                        format!("no customer with external_ref `{external_ref}`"),
                    )
                })?
                .id
        }
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of customer_id and customer_external_ref",
            ))
        }
    };
    let recorded = crate::shop::purchases::record(
        &state.pool,
        &state.reconciler,
        NewPurchase {
            customer_id,
            site_id: payment.site_id,
            duration_secs: payment.duration_secs,
            source: PurchaseSource::Webhook,
            payment_id: Some(payment_id),
            price: Some(payment.amount),
            currency,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(recorded.into())))
}
