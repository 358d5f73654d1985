//! Recording and cancelling passes: the one place that writes `purchases`,
//! used by the operator API, the billing webhook and the customer portal.
//!
//! A household's passes for one site are contiguous: a new pass starts when
//! the household's access to the site ends (or now), and cancelling a pass
//! moves the passes queued after it forward by its unused time. Changes to
//! one household's passes are serialised on its `customers` row, so two
//! purchases at once still queue one after the other. The household's
//! routers are recompiled in the same transaction (`record_in`, `cancel_in`:
//! the caller commits, with its audit entry, then publishes), so a pass is
//! stored with the configs that enforce it or not at all, and ends on the
//! router by its own element timeout.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::db;
use crate::db::purchases::PurchaseRow;
use crate::model::parse_reference;
use crate::reconcile::{Compiled, Reconciler, Resign};
use crate::services::pay_per_site::catalog::Currency;

/// Who recorded a purchase.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PurchaseSource {
    /// An operator sold or granted it through the operator API.
    Operator,
    /// The billing system reported a payment.
    Webhook,
    /// The household paid in the customer portal.
    Portal,
}

impl PurchaseSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseSource::Operator => "operator",
            PurchaseSource::Webhook => "webhook",
            PurchaseSource::Portal => "portal",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "operator" => Some(PurchaseSource::Operator),
            "webhook" => Some(PurchaseSource::Webhook),
            "portal" => Some(PurchaseSource::Portal),
            _ => None,
        }
    }
}

/// A pass to record.
#[derive(Debug, Clone)]
pub struct NewPurchase {
    pub customer_id: Uuid,
    pub site_id: i64,
    /// Must be the duration of one of the site's passes.
    pub duration_secs: i64,
    pub source: PurchaseSource,
    /// The payment's id at the billing system or payment provider; a payment
    /// id is recorded once (1 to 200 printable ASCII characters).
    pub payment_id: Option<String>,
    /// What was paid in minor units (more than zero); None: the catalog price.
    pub price: Option<i64>,
    /// Must be the site's currency.
    pub currency: Currency,
}

/// A recorded (or cancelled) pass and the config version of each of the
/// household's routers after the recompile.
#[derive(Debug, Clone)]
pub struct RecordedPurchase {
    pub purchase: PurchaseRow,
    pub device_versions: Vec<(Uuid, i64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PurchaseError {
    #[error("no customer {0}")]
    UnknownCustomer(Uuid),
    #[error("no site {0}")]
    UnknownSite(i64),
    #[error("site {site_id} sells no pass of {duration_secs} s; its passes last {available:?} s")]
    UnknownPass {
        site_id: i64,
        duration_secs: i64,
        available: Vec<i64>,
    },
    #[error("site {site_id} is sold in {site_currency}, not {given}")]
    CurrencyMismatch {
        site_id: i64,
        site_currency: String,
        given: String,
    },
    #[error("price {0} must be more than zero (minor units)")]
    InvalidPrice(i64),
    #[error("{0}")]
    InvalidPaymentId(String),
    /// The payment was already recorded: nothing was stored this time.
    #[error("payment `{payment_id}` is already recorded as purchase {purchase_id}")]
    DuplicatePayment {
        payment_id: String,
        purchase_id: Uuid,
    },
    #[error("no purchase {0} in force")]
    NotInForce(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Recompiling the household's routers failed: nothing was stored.
    #[error("recompiling the household's routers for purchase {} failed; nothing was stored", purchase.id)]
    Recompile {
        purchase: Box<PurchaseRow>,
        #[source]
        source: anyhow::Error,
    },
}

/// Configs carry whole seconds: starts and ends are whole seconds, so the
/// end shown is the one the router enforces and stacked passes meet exactly.
/// Rounded down, so a pass bought now has started now (not up to half a
/// second later).
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// A purchase stored in a transaction not yet committed, with the
/// household's recompiled configs to publish once it is.
#[must_use = "the purchase is stored only once its transaction commits"]
pub struct StagedPurchase {
    pub purchase: PurchaseRow,
    device_versions: Vec<(Uuid, i64)>,
    compiled: Compiled,
}

impl StagedPurchase {
    /// Publishes the configs of a committed purchase.
    pub fn published(self, reconciler: &Reconciler) -> RecordedPurchase {
        reconciler.publish(self.compiled);
        RecordedPurchase {
            purchase: self.purchase,
            device_versions: self.device_versions,
        }
    }
}

/// Records a pass and recompiles the household's routers in one transaction.
pub async fn record(
    pool: &PgPool,
    reconciler: &Reconciler,
    new: NewPurchase,
) -> Result<RecordedPurchase, PurchaseError> {
    let mut tx = pool.begin().await?;
    // First, as every change that recompiles (see `Reconciler::begin_change`).
    db::locks::recompile(&mut tx).await?;
    let staged = record_in(&mut tx, pool, reconciler, new).await?;
    tx.commit().await?;
    Ok(staged.published(reconciler))
}

/// Records a pass and recompiles the household's routers in `tx`, which
/// the caller commits.
#[tracing::instrument(skip(tx, pool, reconciler), fields(customer = %new.customer_id, site = new.site_id))]
pub async fn record_in(
    tx: &mut Transaction<'_, Postgres>,
    pool: &PgPool,
    reconciler: &Reconciler,
    new: NewPurchase,
) -> Result<StagedPurchase, PurchaseError> {
    if let Some(payment_id) = &new.payment_id {
        parse_reference(payment_id, "payment_id").map_err(PurchaseError::InvalidPaymentId)?;
        // A friendlier answer for a replay (even if the catalog changed
        // since); the unique constraint below is what guarantees it.
        if let Some(existing) = db::purchases::by_payment_id(&mut **tx, payment_id).await? {
            return Err(duplicate(payment_id, &existing));
        }
    }
    if let Some(price) = new.price.filter(|p| *p <= 0) {
        return Err(PurchaseError::InvalidPrice(price));
    }
    let now = whole_second(Utc::now());
    db::customers::lock(&mut **tx, new.customer_id)
        .await?
        .ok_or(PurchaseError::UnknownCustomer(new.customer_id))?;
    let site = db::catalog::get_for_share(&mut **tx, new.site_id)
        .await?
        .ok_or(PurchaseError::UnknownSite(new.site_id))?;
    if site.currency != new.currency.as_str() {
        return Err(PurchaseError::CurrencyMismatch {
            site_id: site.id,
            site_currency: site.currency,
            given: new.currency.as_str().to_owned(),
        });
    }
    let pass = site
        .pass(new.duration_secs)
        .ok_or_else(|| PurchaseError::UnknownPass {
            site_id: site.id,
            duration_secs: new.duration_secs,
            available: site.passes.0.iter().map(|p| p.duration_secs()).collect(),
        })?;
    let starts_at = db::purchases::access_end(&mut **tx, new.customer_id, site.id, now)
        .await?
        .map_or(now, |end| end.max(now));
    let row = db::purchases::NewPurchaseRow {
        id: Uuid::new_v4(),
        customer_id: new.customer_id,
        site_id: site.id,
        starts_at,
        ends_at: starts_at + chrono::Duration::seconds(pass.duration_secs()),
        price: new.price.unwrap_or(pass.price()),
        currency: &site.currency,
        source: new.source.as_str(),
        payment_id: new.payment_id.as_deref(),
    };
    let purchase = match db::purchases::insert(&mut **tx, &row).await {
        Ok(purchase) => purchase,
        Err(e) if db::is_unique_violation_of(&e, db::purchases::PAYMENT_ID_KEY) => {
            // The same payment committed meanwhile (`tx` is aborted and
            // stores nothing): report it.
            let payment_id = new.payment_id.as_deref().unwrap_or_default();
            let existing = db::purchases::by_payment_id(pool, payment_id)
                .await?
                .ok_or(e)?;
            return Err(duplicate(payment_id, &existing));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(purchase = %purchase.id, ends_at = %purchase.ends_at, source = %purchase.source, "pass recorded");
    recompile_household(tx, reconciler, purchase).await
}

fn duplicate(payment_id: &str, existing: &PurchaseRow) -> PurchaseError {
    PurchaseError::DuplicatePayment {
        payment_id: payment_id.to_owned(),
        purchase_id: existing.id,
    }
}

/// Cancels (refunds) a pass in force: it ends now (a queued one never
/// starts), and the household's passes queued after it move forward by its
/// unused time. The household's routers are recompiled in `tx`, which the
/// caller commits.
#[tracing::instrument(skip(tx, reconciler))]
pub async fn cancel_in(
    tx: &mut Transaction<'_, Postgres>,
    reconciler: &Reconciler,
    purchase_id: Uuid,
) -> Result<StagedPurchase, PurchaseError> {
    let now = whole_second(Utc::now());
    let not_in_force = || PurchaseError::NotInForce(purchase_id);
    let customer_id = db::purchases::get(&mut **tx, purchase_id)
        .await?
        .ok_or_else(not_in_force)?
        .customer_id;
    // The household first, then the pass: the order `record` takes them in.
    db::customers::lock(&mut **tx, customer_id)
        .await?
        .ok_or_else(not_in_force)?;
    let pass = db::purchases::get_for_update(&mut **tx, purchase_id)
        .await?
        .filter(|p| p.in_force(now))
        .ok_or_else(not_in_force)?;
    let unused = pass.ends_at - pass.starts_at.max(now);
    let cancelled = db::purchases::cancel(&mut **tx, purchase_id, now).await?;
    db::purchases::move_earlier(&mut **tx, customer_id, pass.site_id, pass.ends_at, unused).await?;
    tracing::info!(purchase = %purchase_id, "pass cancelled");
    recompile_household(tx, reconciler, cancelled).await
}

/// Recompiles the routers of the purchase's household in `tx`.
async fn recompile_household(
    tx: &mut Transaction<'_, Postgres>,
    reconciler: &Reconciler,
    purchase: PurchaseRow,
) -> Result<StagedPurchase, PurchaseError> {
    let result = async {
        let devices = db::devices::ids_of_customer(&mut **tx, purchase.customer_id).await?;
        if devices.is_empty() {
            return Ok((Compiled::default(), Vec::new()));
        }
        let compiled = reconciler
            .recompile_in(tx, Some(&devices), Resign::IfChanged)
            .await?;
        // Read in `tx`: the versions it just stored.
        let versions = db::configs::versions(&mut **tx, &devices).await?;
        anyhow::Ok((compiled, versions))
    }
    .await;
    match result {
        Ok((compiled, device_versions)) => Ok(StagedPurchase {
            purchase,
            device_versions,
            compiled,
        }),
        Err(source) => Err(PurchaseError::Recompile {
            purchase: Box::new(purchase),
            source,
        }),
    }
}
