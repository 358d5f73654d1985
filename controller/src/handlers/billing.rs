//! `POST /webhooks/v1/billing`: the billing system reports a payment for a
//! pass. Outside the operator-token middleware: authenticated by an HMAC
//! over the timestamp and the raw body (`crate::shop::billing_webhook`), made
//! idempotent by the payment id, and audited here (actor `billing-webhook`):
//! a signed call, accepted or refused, has its own entry; unsigned calls are
//! tallied per source and rate limited.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use crate::db;
use crate::db::audit::NewAuditEntry;
use crate::handlers::purchases::PurchaseRecorded;
use crate::http::audit::{source_address, summarize};
use crate::http::error::{refuse_nul_escapes, ApiError, ApiResult};
use crate::http::limits::WEBHOOK_BODY_LIMIT;
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
/// naming the purchase already recorded. A call without a valid signature
/// is only counted (see `crate::http::audit::Refusals`), and a source
/// refused too often is answered 429 before its signature is checked.
pub async fn webhook(State(state): State<AppState>, request: Request) -> Response {
    let source = source_address(request.extensions());
    if let Err(e) = state.refusals.admit(source) {
        return e.into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, WEBHOOK_BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let signature = parts
        .headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    let action = format!("POST {PATH}");
    if let Err(e) = state
        .billing_webhook_key
        .verify(signature, &body, Utc::now().timestamp())
    {
        tracing::warn!(reason = %e, "billing webhook with a bad signature");
        let refusal = ApiError::Denied {
            code: "bad_signature",
            message: format!("{e}"),
        };
        state
            .refusals
            .note(source, ACTOR, action, &refusal, Utc::now());
        return refusal.into_response();
    }
    // Signed: every call gets its own entry, an accepted one in the
    // transaction of the purchase.
    let request = summarize(&body);
    match record(&state, &body, &action, &request).await {
        Ok(recorded) => recorded.into_response(),
        Err(e) => {
            let (status, code) = e.status_and_code();
            let payment_id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["payment_id"].as_str().map(str::to_owned))
                .map(|id| id.replace('\0', "\u{FFFD}"));
            let entry = NewAuditEntry {
                dry_run: false,
                actor_id: None,
                actor: ACTOR,
                action: &action,
                target: payment_id.as_deref(),
                status: status.as_u16(),
                summary: serde_json::json!({"request": request, "error": {"code": code, "message": e.to_string()}}),
            };
            if let Err(e) = db::audit::append(&state.pool, &entry).await {
                tracing::error!(error = %e, "could not append a refused billing webhook to the audit log");
            }
            e.into_response()
        }
    }
}

async fn record(
    state: &AppState,
    body: &[u8],
    action: &str,
    request: &serde_json::Value,
) -> ApiResult<(StatusCode, Json<PurchaseRecorded>)> {
    refuse_nul_escapes(body)?;
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
    let mut tx = state.reconciler.begin_change().await?;
    let staged = crate::shop::purchases::record_in(
        &mut tx,
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
    let purchase_id = staged.purchase.id.to_string();
    let entry = NewAuditEntry {
        dry_run: false,
        actor_id: None,
        actor: ACTOR,
        action,
        target: Some(&purchase_id),
        status: StatusCode::CREATED.as_u16(),
        summary: request.clone(),
    };
    db::audit::append(&mut *tx, &entry)
        .await
        .map_err(|e| anyhow::Error::new(e).context("appending the audit entry of a payment"))?;
    tx.commit().await?;
    state.live.notify(crate::reconcile::live::Topic::Audit);
    Ok((
        StatusCode::CREATED,
        Json(staged.published(&state.reconciler).into()),
    ))
}
