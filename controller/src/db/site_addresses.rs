//! `site_addresses`: what the controller resolved for each pay-per-site
//! catalog site's names, kept while seen within a window. Addresses travel
//! as text (the sqlx build has no network types).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Records that `site` resolved to `addresses` at `now`, and forgets the
/// addresses not seen since `forget_before`. Returns whether the site's
/// addresses changed (one added or forgotten). Run in a transaction.
pub async fn record(
    tx: &mut sqlx::PgConnection,
    site: i64,
    addresses: &[IpAddr],
    now: DateTime<Utc>,
    forget_before: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let added = sqlx::query(
        "INSERT INTO site_addresses (site_id, address, first_seen, last_seen)
         SELECT $1, a::inet, $3, $3 FROM unnest($2::text[]) a
         ON CONFLICT (site_id, address) DO UPDATE SET last_seen = EXCLUDED.last_seen
         RETURNING (xmax = 0) AS inserted",
    )
    .bind(site)
    .bind(addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .any(|row| sqlx::Row::get::<bool, _>(row, "inserted"));
    let forgotten = sqlx::query("DELETE FROM site_addresses WHERE site_id = $1 AND last_seen < $2")
        .bind(site)
        .bind(forget_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(added || forgotten > 0)
}

/// The known addresses of these sites: (site, address), ordered.
pub async fn of_sites(
    db: impl PgExecutor<'_>,
    sites: &[i64],
) -> Result<Vec<(i64, IpAddr)>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT site_id, host(address) FROM site_addresses WHERE site_id = ANY($1)
         ORDER BY site_id, address",
    )
    .bind(sites)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(site, address)| Some((site, address.parse().ok()?)))
        .collect())
}

/// Every site with its catalog and domains: what the resolver goes through.
pub async fn sites_to_resolve(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(i64, String, Vec<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, catalog, domains FROM sites ORDER BY id")
        .fetch_all(db)
        .await
}
