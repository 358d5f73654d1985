//! The customer-facing portal, on its own listener: the page of a gated
//! site with its passes, paying through the payment provider, and waiting
//! until the household's router enforces the pass before sending the
//! browser on to the site.
//!
//! Every URL carries the controller's signature over the router (and site)
//! it names (`pay_per_site::PortalLinks`): the links come from the router's
//! signed config, so a LAN host can reach the pages of its own router only.
//! Answers are HTML pages (JSON for the wait), never the operator API's
//! error bodies.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use uuid::Uuid;

use crate::db;
use crate::http::state::AppState;
use crate::shop::payment::{ChargeRequest, PaymentError};
use crate::shop::portal_page::{self, PassOffer, SitePage, WaitPage};
use crate::shop::purchases::{self, NewPurchase, PurchaseError, PurchaseSource};

/// Longest wait of one `open` request; the page asks again.
const OPEN_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Deserialize)]
pub struct Signed {
    sig: String,
}

#[derive(Debug, Deserialize)]
pub struct AfterPurchase {
    sig: String,
    /// The router config version that carries the pass.
    version: u64,
}

#[derive(Debug, Deserialize)]
pub struct BuyForm {
    duration_secs: i64,
    /// From the rendered page: a resubmitted form is one payment.
    nonce: String,
}

/// Why a portal page cannot be shown; an HTML page with the status.
#[derive(Debug)]
pub enum PortalError {
    BadLink,
    NotFound(String),
    NoHousehold,
    Declined(String),
    Unavailable(String),
    BadRequest(String),
    TooMany(u64),
    Internal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for PortalError {
    fn from(e: E) -> Self {
        PortalError::Internal(e.into())
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PortalError::BadLink => (
                StatusCode::FORBIDDEN,
                "This link is not valid",
                "Open the site again from your home network to get a fresh link.".to_owned(),
            ),
            PortalError::NotFound(what) => (StatusCode::NOT_FOUND, "Not found", what),
            PortalError::NoHousehold => (
                StatusCode::CONFLICT,
                "Your router is not linked to an account",
                "Passes belong to a household; please contact your provider.".to_owned(),
            ),
            PortalError::Declined(why) => (StatusCode::PAYMENT_REQUIRED, "Payment declined", why),
            PortalError::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Payments are unavailable",
                format!("Nothing was charged. Please try again in a moment. ({why})"),
            ),
            PortalError::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", why),
            PortalError::TooMany(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many payments",
                format!("Nothing was charged. Please try again in {secs} s."),
            ),
            PortalError::Internal(e) => {
                tracing::error!(error = ?e, "portal");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Nothing was charged twice; please try again.".to_owned(),
                )
            }
        };
        (status, Html(portal_page::message_page(title, &message))).into_response()
    }
}

type PortalResult<T> = Result<T, PortalError>;

fn check_link(state: &AppState, device: Uuid, site: Option<i64>, sig: &str) -> PortalResult<()> {
    if state.portal.links.verify(&device.to_string(), site, sig) {
        Ok(())
    } else {
        Err(PortalError::BadLink)
    }
}

/// The household of a device, which pays and holds the passes.
async fn household(state: &AppState, device: Uuid) -> PortalResult<Uuid> {
    db::devices::customer_of(&state.pool, device)
        .await?
        .ok_or_else(|| PortalError::NotFound("This router is no longer registered.".into()))?
        .ok_or(PortalError::NoHousehold)
}

async fn site(state: &AppState, site: i64) -> PortalResult<db::catalog::SiteRow> {
    db::catalog::get(&state.pool, site)
        .await?
        .ok_or_else(|| PortalError::NotFound("This site is no longer sold.".into()))
}

/// Where the browser goes once the site is open.
fn site_url(site: &db::catalog::SiteRow) -> String {
    let domain = site.domain_patterns();
    let name = domain.first().map_or("", |d| d.domain());
    format!("http://{name}/")
}

/// `GET /p/{device}`: every gated site of the router, from its config.
pub async fn device_page(
    State(state): State<AppState>,
    Path(device): Path<Uuid>,
    Query(link): Query<Signed>,
) -> PortalResult<Html<String>> {
    check_link(&state, device, None, &link.sig)?;
    household(&state, device).await?;
    let row = db::configs::get(&state.pool, device)
        .await?
        .ok_or_else(|| PortalError::NotFound("Your router has no services yet.".into()))?;
    let envelope: isdf_api::Envelope = serde_json::from_slice(&row.envelope)?;
    let config: isdf_api::DeviceConfig = serde_json::from_slice(&envelope.payload_bytes()?)?;
    let sites: Vec<(String, String)> = config
        .firewall
        .portal
        .map(|p| p.sites)
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let domain = s.domains.first().map_or("", |d| d.domain()).to_owned();
            (domain, s.url)
        })
        .collect();
    Ok(Html(portal_page::device_page(&sites)))
}

/// `GET /p/{device}/{site}`: the site, its passes and prices.
pub async fn site_page(
    State(state): State<AppState>,
    Path((device, site_id)): Path<(Uuid, i64)>,
    Query(link): Query<Signed>,
) -> PortalResult<Html<String>> {
    check_link(&state, device, Some(site_id), &link.sig)?;
    let customer = household(&state, device).await?;
    let site = site(&state, site_id).await?;
    let current_pass_ends =
        db::purchases::access_end(&state.pool, customer, site_id, chrono::Utc::now())
            .await?
            .map(|end| end.timestamp());
    let passes: Vec<PassOffer> = site
        .passes
        .0
        .iter()
        .map(|p| PassOffer {
            duration_secs: p.duration_secs(),
            price: p.price(),
        })
        .collect();
    let domains = site.domain_patterns();
    let buy_action = format!("/p/{device}/{site_id}/buy?sig={}", link.sig);
    Ok(Html(portal_page::site_page(&SitePage {
        site_name: &site.name,
        domain: domains.first().map_or("", |d| d.domain()),
        currency: &site.currency,
        passes: &passes,
        buy_action: &buy_action,
        current_pass_ends,
        provider: state.portal.payments.name(),
        form_nonce: &Uuid::new_v4().simple().to_string(),
    })))
}

/// `POST /p/{device}/{site}/buy`: charge, record the pass, recompile the
/// household's routers, then show the wait page.
pub async fn buy(
    State(state): State<AppState>,
    Path((device, site_id)): Path<(Uuid, i64)>,
    Query(link): Query<Signed>,
    Form(form): Form<BuyForm>,
) -> PortalResult<Redirect> {
    check_link(&state, device, Some(site_id), &link.sig)?;
    if form.nonce.is_empty()
        || form.nonce.len() > 64
        || !form.nonce.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(PortalError::BadRequest(
            "The form is damaged; open the page again.".into(),
        ));
    }
    let customer = household(&state, device).await?;
    state
        .portal
        .charges
        .admit(device)
        .map_err(PortalError::TooMany)?;
    let site = site(&state, site_id).await?;
    let pass = site.pass(form.duration_secs).ok_or_else(|| {
        PortalError::BadRequest("This pass is no longer sold; open the page again.".into())
    })?;
    let payment = state
        .portal
        .payments
        .charge(ChargeRequest {
            customer_id: customer,
            site_id,
            description: format!(
                "{} for {}",
                portal_page::duration(pass.duration_secs()),
                site.name
            ),
            amount: pass.price(),
            currency: site.currency.clone(),
            idempotency_key: format!("{device}-{site_id}-{}", form.nonce),
        })
        .await
        .map_err(|e| match e {
            PaymentError::Declined(why) => PortalError::Declined(why),
            PaymentError::Unavailable(why) => PortalError::Unavailable(why),
        })?;
    let currency = crate::services::pay_per_site::catalog::Currency::parse(&site.currency)
        .map_err(anyhow::Error::msg)?;
    let recorded = purchases::record(
        &state.pool,
        &state.reconciler,
        NewPurchase {
            customer_id: customer,
            site_id,
            duration_secs: pass.duration_secs(),
            source: PurchaseSource::Portal,
            payment_id: Some(payment.payment_id),
            price: Some(pass.price()),
            currency,
        },
    )
    .await;
    let version = match recorded {
        Ok(r) => r
            .device_versions
            .iter()
            .find(|(id, _)| *id == device)
            .map(|(_, v)| *v),
        // A resubmitted form: the pass is recorded already; wait for it.
        Err(PurchaseError::DuplicatePayment { .. }) => None,
        Err(e) => return Err(PortalError::Internal(e.into())),
    };
    let version = match version {
        Some(v) => u64::try_from(v).unwrap_or(0),
        None => state.cache.version(device).unwrap_or(0),
    };
    Ok(Redirect::to(&format!(
        "/p/{device}/{site_id}/wait?sig={}&version={version}",
        link.sig
    )))
}

/// `GET /p/{device}/{site}/wait`: "opening..." until the router confirms.
pub async fn wait_page(
    State(state): State<AppState>,
    Path((device, site_id)): Path<(Uuid, i64)>,
    Query(after): Query<AfterPurchase>,
) -> PortalResult<Html<String>> {
    check_link(&state, device, Some(site_id), &after.sig)?;
    let site = site(&state, site_id).await?;
    let open_url = format!(
        "/p/{device}/{site_id}/open?sig={}&version={}",
        after.sig, after.version
    );
    Ok(Html(portal_page::wait_page(&WaitPage {
        site_name: &site.name,
        site_url: &site_url(&site),
        open_url: &open_url,
    })))
}

/// `GET /p/{device}/{site}/open`: waits (up to 20 s) until the router
/// reports enforcing the config version that carries the pass.
pub async fn open(
    State(state): State<AppState>,
    Path((device, site_id)): Path<(Uuid, i64)>,
    Query(after): Query<AfterPurchase>,
) -> PortalResult<Json<serde_json::Value>> {
    check_link(&state, device, Some(site_id), &after.sig)?;
    let site = site(&state, site_id).await?;
    let open = state
        .cache
        .wait_enforced(device, after.version, OPEN_WAIT)
        .await;
    Ok(Json(
        serde_json::json!({ "open": open, "url": site_url(&site) }),
    ))
}
