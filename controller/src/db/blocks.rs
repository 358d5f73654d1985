//! `flow_blocks`: timed blocks on one router, set by operators (compiled into
//! the router's config) or reported by the router (local and detection).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use isdf_api::FlowPattern;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BlockRow {
    pub id: Uuid,
    pub device_id: Uuid,
    pub origin: String,
    pub router_block_id: Option<i64>,
    pub flow: Json<FlowPattern>,
    pub action: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, device_id, origin, router_block_id, flow, action, reason, created_by, created_at, expires_at";

/// A block to store.
pub struct NewBlock<'a> {
    pub origin: &'a str,
    pub router_block_id: Option<i64>,
    pub flow: &'a FlowPattern,
    pub action: &'a str,
    pub reason: &'a str,
    pub created_by: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// Inserts one block; `on_conflict` is appended to the statement.
async fn insert(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    block: &NewBlock<'_>,
    on_conflict: &str,
) -> Result<BlockRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO flow_blocks (id, device_id, origin, router_block_id, flow, action, reason,
             created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) {on_conflict} RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(device_id)
    .bind(block.origin)
    .bind(block.router_block_id)
    .bind(Json(block.flow))
    .bind(block.action)
    .bind(block.reason)
    .bind(block.created_by)
    .bind(block.expires_at)
    .fetch_one(db)
    .await
}

/// Inserts operator blocks for `device_id`, all in the caller's transaction.
pub async fn insert_many(
    tx: &mut PgConnection,
    device_id: Uuid,
    blocks: &[NewBlock<'_>],
) -> Result<Vec<BlockRow>, sqlx::Error> {
    let mut rows = Vec::with_capacity(blocks.len());
    for block in blocks {
        rows.push(insert(&mut *tx, device_id, block, "").await?);
    }
    Ok(rows)
}

/// Stores a block the router reported. The router's latest word on one of
/// its block ids wins: an extension, or an id reused after a state wipe.
pub async fn upsert_router_block(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    block: &NewBlock<'_>,
) -> Result<(), sqlx::Error> {
    insert(
        db,
        device_id,
        block,
        "ON CONFLICT (device_id, router_block_id) WHERE router_block_id IS NOT NULL DO UPDATE
         SET origin = EXCLUDED.origin, flow = EXCLUDED.flow, reason = EXCLUDED.reason,
             expires_at = EXCLUDED.expires_at, removed_at = NULL",
    )
    .await
    .map(drop)
}

/// Marks a router-side block removed (the router ended it early).
pub async fn remove_router_block(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    router_block_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE flow_blocks SET removed_at = now()
         WHERE device_id = $1 AND router_block_id = $2 AND removed_at IS NULL",
    )
    .bind(device_id)
    .bind(router_block_id)
    .execute(db)
    .await
    .map(drop)
}

/// Blocks of a device still in force at `now`, soonest to end first.
pub async fn active(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<BlockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM flow_blocks
         WHERE device_id = $1 AND removed_at IS NULL AND expires_at > $2
         ORDER BY expires_at, id"
    ))
    .bind(device_id)
    .bind(now)
    .fetch_all(db)
    .await
}

/// Operator blocks in force at `now` for `devices` (every device when None):
/// what the compiler needs.
pub async fn active_operator_blocks(
    db: impl PgExecutor<'_>,
    devices: Option<&[Uuid]>,
    now: DateTime<Utc>,
) -> Result<Vec<BlockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM flow_blocks
         WHERE origin = 'operator' AND removed_at IS NULL AND expires_at > $2
           AND ($1::uuid[] IS NULL OR device_id = ANY($1))"
    ))
    .bind(devices)
    .bind(now)
    .fetch_all(db)
    .await
}

/// How many operator blocks of a device are in force.
pub async fn count_active_operator_blocks(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM flow_blocks
         WHERE device_id = $1 AND origin = 'operator' AND removed_at IS NULL AND expires_at > $2",
    )
    .bind(device_id)
    .bind(now)
    .fetch_one(db)
    .await
}

pub async fn get(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    id: Uuid,
) -> Result<Option<BlockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM flow_blocks WHERE device_id = $1 AND id = $2 AND removed_at IS NULL"
    ))
    .bind(device_id)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Ends an operator block early; returns whether one was in force.
pub async fn remove_operator_block(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE flow_blocks SET removed_at = now()
         WHERE device_id = $1 AND id = $2 AND origin = 'operator' AND removed_at IS NULL",
    )
    .bind(device_id)
    .bind(id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}
