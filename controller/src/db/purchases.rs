//! `purchases`: passes households bought (or operators granted). A pass is
//! in force from `starts_at` to `ends_at` unless cancelled. A household's
//! passes for one site are kept contiguous (see `crate::shop::purchases`), so the
//! end of its access is the latest end among passes not ended.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PurchaseRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub site_id: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// What was paid, in minor units of `currency`.
    pub price: i64,
    pub currency: String,
    /// `operator`, `webhook` or `portal`.
    pub source: String,
    pub payment_id: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl PurchaseRow {
    /// Whether the pass gives access at `now`, or will without a gap.
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.cancelled_at.is_none() && self.ends_at > now
    }
}

const COLUMNS: &str = "id, customer_id, site_id, starts_at, ends_at, price, currency, source, \
                       payment_id, cancelled_at, created_at";

/// Constraint name of the unique payment id.
pub const PAYMENT_ID_KEY: &str = "purchases_payment_id_key";

/// A purchase to store.
pub struct NewPurchaseRow<'a> {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub site_id: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: i64,
    pub currency: &'a str,
    pub source: &'a str,
    pub payment_id: Option<&'a str>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    new: &NewPurchaseRow<'_>,
) -> Result<PurchaseRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO purchases (id, customer_id, site_id, starts_at, ends_at, price, currency,
             source, payment_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.customer_id)
    .bind(new.site_id)
    .bind(new.starts_at)
    .bind(new.ends_at)
    .bind(new.price)
    .bind(new.currency)
    .bind(new.source)
    .bind(new.payment_id)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<PurchaseRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM purchases WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn get_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<PurchaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM purchases WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn by_payment_id(
    db: impl PgExecutor<'_>,
    payment_id: &str,
) -> Result<Option<PurchaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM purchases WHERE payment_id = $1"
    ))
    .bind(payment_id)
    .fetch_optional(db)
    .await
}

/// When the household's access to the site ends (the latest end of its
/// passes in force at `now`), if it has any.
pub async fn access_end(
    db: impl PgExecutor<'_>,
    customer_id: Uuid,
    site_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(ends_at) FROM purchases
         WHERE customer_id = $1 AND site_id = $2 AND cancelled_at IS NULL AND ends_at > $3",
    )
    .bind(customer_id)
    .bind(site_id)
    .bind(now)
    .fetch_one(db)
    .await
}

/// Marks a pass cancelled at `now`; returns it.
pub async fn cancel(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<PurchaseRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE purchases SET cancelled_at = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(now)
    .fetch_one(db)
    .await
}

/// Moves the household's passes for the site that start at or after `from`
/// earlier by `by` (a cancelled pass's unused time), keeping them contiguous.
pub async fn move_earlier(
    db: impl PgExecutor<'_>,
    customer_id: Uuid,
    site_id: i64,
    from: DateTime<Utc>,
    by: chrono::Duration,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE purchases SET starts_at = starts_at - $4, ends_at = ends_at - $4
         WHERE customer_id = $1 AND site_id = $2 AND cancelled_at IS NULL AND starts_at >= $3",
    )
    .bind(customer_id)
    .bind(site_id)
    .bind(from)
    .bind(by)
    .execute(db)
    .await?
    .rows_affected())
}

/// Passes of the customer in force at `now` (running or queued), by site and start.
pub async fn in_force_of_customer(
    db: impl PgExecutor<'_>,
    customer_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<PurchaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM purchases
         WHERE customer_id = $1 AND cancelled_at IS NULL AND ends_at > $2
         ORDER BY site_id, starts_at"
    ))
    .bind(customer_id)
    .bind(now)
    .fetch_all(db)
    .await
}

/// How many passes of the site are in force at `now`, and the latest end.
pub async fn in_force_of_site(
    db: impl PgExecutor<'_>,
    site_id: i64,
    now: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), max(ends_at) FROM purchases
         WHERE site_id = $1 AND cancelled_at IS NULL AND ends_at > $2",
    )
    .bind(site_id)
    .bind(now)
    .fetch_one(db)
    .await
}

/// Filters of [`list`].
#[derive(Debug, Default, Clone)]
pub struct PurchaseFilter {
    pub customer_id: Option<Uuid>,
    pub site_id: Option<i64>,
    /// Some(true): in force at `now`; Some(false): ended or cancelled.
    pub in_force: Option<bool>,
    pub now: DateTime<Utc>,
}

/// One page of purchases, newest first, after `(created_at, id)`.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &PurchaseFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<PurchaseRow>, sqlx::Error> {
    let mut q: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM purchases WHERE true"));
    if let Some(customer_id) = filter.customer_id {
        q.push(" AND customer_id = ").push_bind(customer_id);
    }
    if let Some(site_id) = filter.site_id {
        q.push(" AND site_id = ").push_bind(site_id);
    }
    match filter.in_force {
        Some(true) => {
            q.push(" AND cancelled_at IS NULL AND ends_at > ")
                .push_bind(filter.now);
        }
        Some(false) => {
            q.push(" AND (cancelled_at IS NOT NULL OR ends_at <= ")
                .push_bind(filter.now)
                .push(")");
        }
        None => {}
    }
    if let Some((created_at, id)) = after {
        q.push(" AND (created_at, id) < (")
            .push_bind(created_at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    q.build_query_as().fetch_all(db).await
}

/// Routers whose household had a pass end in `(after, until]`: their
/// configs still carry it (the kernel already stopped matching it).
pub async fn devices_with_passes_ended(
    db: impl PgExecutor<'_>,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT d.id FROM devices d JOIN purchases p ON p.customer_id = d.customer_id
         WHERE p.ends_at > $1 AND p.ends_at <= $2 ORDER BY d.id",
    )
    .bind(after)
    .bind(until)
    .fetch_all(db)
    .await
}

/// For each router (of `devices`, or every router when None) and each site
/// its household has a pass for: when that access ends. Cancelled and ended
/// passes are left out; a household's passes for one site are contiguous, so
/// a queued pass extends the running one. What the compiler needs.
pub async fn active_for_devices(
    db: impl PgExecutor<'_>,
    devices: Option<&[Uuid]>,
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, i64, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, p.site_id, max(p.ends_at)
         FROM devices d JOIN purchases p ON p.customer_id = d.customer_id
         WHERE p.cancelled_at IS NULL AND p.ends_at > $2
           AND ($1::uuid[] IS NULL OR d.id = ANY($1))
         GROUP BY d.id, p.site_id
         HAVING min(p.starts_at) <= $2
         ORDER BY d.id, p.site_id",
    )
    .bind(devices)
    .bind(now)
    .fetch_all(db)
    .await
}
