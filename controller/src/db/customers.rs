//! `customers`: households. A household owns routers (`devices.customer_id`)
//! and buys passes (`purchases`).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub name: String,
    /// The billing system's id of the customer.
    pub external_ref: Option<String>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, external_ref, created_at";

/// Constraint names, to tell which unique value was taken.
pub const NAME_KEY: &str = "customers_name_key";
pub const EXTERNAL_REF_KEY: &str = "customers_external_ref_key";

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
    external_ref: Option<&str>,
) -> Result<CustomerRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO customers (id, name, external_ref) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(name)
    .bind(external_ref)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM customers WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The customer, locked until the end of the caller's transaction: changes
/// to one household's passes happen one at a time.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM customers WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn by_external_ref(
    db: impl PgExecutor<'_>,
    external_ref: &str,
) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM customers WHERE external_ref = $1"
    ))
    .bind(external_ref)
    .fetch_optional(db)
    .await
}

/// One page of customers ordered by name, after the name `after`.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM customers WHERE $1::text IS NULL OR name > $1
         ORDER BY name LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Deletes a customer: its routers are detached, its purchases go with it.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM customers WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
