//! `devices`: registered routers, their labels and hashed device tokens.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::model::{Requirement, Selector};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: Uuid,
    pub name: String,
    pub labels: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    /// Expiry of the device's current client certificate (None: not enrolled).
    pub cert_not_after: Option<DateTime<Utc>>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<DeviceRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO devices (id, name, labels) VALUES ($1, $2, $3)
         RETURNING id, name, labels, created_at, cert_not_after",
    )
    .bind(id)
    .bind(name)
    .bind(Json(labels))
    .fetch_one(db)
    .await
}

/// Whether the device exists.
pub async fn exists(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<DeviceRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, labels, created_at, cert_not_after FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Locks a device's row until the transaction ends (serialises changes
/// per device); false when there is no such device.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query("SELECT id FROM devices WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(db)
        .await
        .map(|r| r.rows_affected() > 0)
}

pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Appends `selector` as SQL conditions on `labels` (same meaning as
/// [`Selector::matches`]; the integration tests check both agree).
fn push_selector(q: &mut QueryBuilder<'_, Postgres>, selector: &Selector) {
    for requirement in selector.requirements() {
        q.push(" AND ");
        match requirement.clone() {
            Requirement::Equals(k, v) => {
                q.push("(labels ->> ")
                    .push_bind(k)
                    .push(") = ")
                    .push_bind(v);
            }
            Requirement::NotEquals(k, v) => {
                q.push("(labels ->> ")
                    .push_bind(k)
                    .push(") IS DISTINCT FROM ")
                    .push_bind(v);
            }
            Requirement::In(k, vs) => {
                q.push("(labels ->> ")
                    .push_bind(k)
                    .push(") = ANY(")
                    .push_bind(vs)
                    .push(")");
            }
            Requirement::NotIn(k, vs) => {
                q.push("NOT coalesce((labels ->> ")
                    .push_bind(k)
                    .push(") = ANY(")
                    .push_bind(vs)
                    .push("), false)");
            }
            Requirement::Exists(k) => {
                q.push("labels ? ").push_bind(k);
            }
            Requirement::NotExists(k) => {
                q.push("NOT (labels ? ").push_bind(k).push(")");
            }
        }
    }
}

/// What a device list is narrowed to; every part is optional.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter<'a> {
    pub selector: Option<&'a Selector>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<&'a str>,
    /// `online`, `stale`, `never_reported` (see [`crate::db::fleet::state_sql`])
    /// or `failing`.
    pub state: Option<&'a str>,
}

/// A device with what its latest report says about it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceListRow {
    #[sqlx(flatten)]
    pub device: DeviceRow,
    pub state: String,
    pub failing: bool,
    pub last_report_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub enforced_version: Option<i64>,
    pub agent_version: Option<String>,
    pub agent_release_version: Option<String>,
    pub agent_release_missing: Option<String>,
}

/// Escapes `%`, `_` and `\` for a `LIKE` pattern.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One page of devices ordered by name, after the name `after`, with their
/// state.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &DeviceFilter<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceListRow>, sqlx::Error> {
    use crate::db::fleet::{state_sql, FAILING_SQL};
    let mut q = QueryBuilder::new(format!(
        "SELECT * FROM (SELECT d.id, d.name, d.labels, d.created_at, d.cert_not_after, \
         {state} AS state, {FAILING_SQL} AS failing, s.received_at AS last_report_at, \
         s.outcome, (s.report ->> 'enforced_version')::bigint AS enforced_version, \
         s.agent_version, c.agent_release_version, c.agent_release_missing \
         FROM devices d LEFT JOIN device_status s ON s.device_id = d.id \
         LEFT JOIN device_configs c ON c.device_id = d.id WHERE true",
        state = state_sql()
    ));
    if let Some(s) = filter.selector {
        push_selector(&mut q, s);
    }
    if let Some(text) = filter.name_contains {
        q.push(" AND d.name ILIKE ")
            .push_bind(format!("%{}%", like_escape(text)));
    }
    if let Some(after) = after {
        q.push(" AND d.name > ").push_bind(after.to_owned());
    }
    q.push(") listed");
    match filter.state {
        Some("failing") => {
            q.push(" WHERE failing");
        }
        Some(state) => {
            q.push(" WHERE state = ").push_bind(state.to_owned());
        }
        None => {}
    }
    q.push(" ORDER BY name LIMIT ").push_bind(limit);
    q.build_query_as().fetch_all(db).await
}

/// Ids of every device `selector` matches.
pub async fn matching_ids(
    db: impl PgExecutor<'_>,
    selector: &Selector,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut q = QueryBuilder::new("SELECT id FROM devices WHERE true");
    push_selector(&mut q, selector);
    q.build_query_scalar().fetch_all(db).await
}

/// Id and labels of the given devices (all devices when `ids` is None).
pub async fn labels_of(
    db: impl PgExecutor<'_>,
    ids: Option<&[Uuid]>,
) -> Result<Vec<(Uuid, Json<BTreeMap<String, String>>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, labels FROM devices WHERE $1::uuid[] IS NULL OR id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await
}

/// Every device id, to fill the config cache at start.
pub async fn all_ids(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM devices")
        .fetch_all(db)
        .await
}

/// A device's household: the customer it belongs to, if any, and its name.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceHousehold {
    pub device_id: Uuid,
    pub device_name: String,
    pub customer_id: Option<Uuid>,
    pub customer_name: Option<String>,
}

/// The device and its household, the device locked until the end of the
/// caller's transaction (attaching is decided on what this returns).
pub async fn household_for_update(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Option<DeviceHousehold>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id AS device_id, d.name AS device_name, d.customer_id, c.name AS customer_name
         FROM devices d LEFT JOIN customers c ON c.id = d.customer_id
         WHERE d.id = $1 FOR UPDATE OF d",
    )
    .bind(device_id)
    .fetch_optional(db)
    .await
}

/// The household of a device: None for an unknown device, Some(None) for
/// a device without one.
pub async fn customer_of(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Option<Option<Uuid>>, sqlx::Error> {
    sqlx::query_scalar("SELECT customer_id FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_optional(db)
        .await
}

/// Sets (or clears, with None) the household of a device.
pub async fn set_customer(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    customer_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET customer_id = $2 WHERE id = $1")
        .bind(device_id)
        .bind(customer_id)
        .execute(db)
        .await
        .map(drop)
}

/// Detaches a device from `customer_id`; false if it was not attached to it.
pub async fn detach_from_customer(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    customer_id: Uuid,
) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE devices SET customer_id = NULL WHERE id = $1 AND customer_id = $2")
            .bind(device_id)
            .bind(customer_id)
            .execute(db)
            .await?
            .rows_affected()
            == 1,
    )
}

/// The household's routers, by name.
pub async fn of_customer(
    db: impl PgExecutor<'_>,
    customer_id: Uuid,
) -> Result<Vec<DeviceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, labels, created_at, cert_not_after FROM devices
         WHERE customer_id = $1 ORDER BY name",
    )
    .bind(customer_id)
    .fetch_all(db)
    .await
}

/// Ids of the household's routers.
pub async fn ids_of_customer(
    db: impl PgExecutor<'_>,
    customer_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM devices WHERE customer_id = $1 ORDER BY id")
        .bind(customer_id)
        .fetch_all(db)
        .await
}

/// Renames and/or relabels a device (None keeps that part).
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: Option<&str>,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<Option<DeviceRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE devices SET name = coalesce($2, name), labels = coalesce($3, labels)
         WHERE id = $1 RETURNING id, name, labels, created_at, cert_not_after",
    )
    .bind(id)
    .bind(name)
    .bind(labels.map(Json))
    .fetch_optional(db)
    .await
}

/// How many devices `selector` matches.
pub async fn count_matching(
    db: impl PgExecutor<'_>,
    selector: &Selector,
) -> Result<i64, sqlx::Error> {
    let mut q = QueryBuilder::new("SELECT count(*) FROM devices WHERE true");
    push_selector(&mut q, selector);
    q.build_query_scalar().fetch_one(db).await
}

/// The first `limit` devices `selector` matches, by name: (id, name).
pub async fn sample_matching(
    db: impl PgExecutor<'_>,
    selector: &Selector,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let mut q = QueryBuilder::new("SELECT id, name FROM devices WHERE true");
    push_selector(&mut q, selector);
    q.push(" ORDER BY name LIMIT ").push_bind(limit);
    q.build_query_as().fetch_all(db).await
}

/// A device whose labels a bulk change altered: its id and how many labels
/// it has now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Relabelled {
    pub id: Uuid,
    pub label_count: i64,
}

/// Sets `set` and removes `remove` on every device `selector` matches, in
/// one statement; answers the devices whose labels changed.
pub async fn relabel(
    db: impl PgExecutor<'_>,
    selector: &Selector,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<Vec<Relabelled>, sqlx::Error> {
    let mut q = QueryBuilder::new("WITH changed AS (SELECT id, (labels - ");
    q.push_bind(remove.to_vec())
        .push("::text[]) || ")
        .push_bind(Json(set))
        .push("::jsonb AS labels FROM devices WHERE true");
    push_selector(&mut q, selector);
    q.push(
        ") UPDATE devices d SET labels = changed.labels FROM changed \
         WHERE d.id = changed.id AND d.labels IS DISTINCT FROM changed.labels \
         RETURNING d.id, (SELECT count(*) FROM jsonb_object_keys(changed.labels)) AS label_count",
    );
    q.build_query_as().fetch_all(db).await
}
