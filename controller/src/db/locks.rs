//! PostgreSQL advisory locks: every key in one place, so two uses never
//! share one by accident. Transaction-scoped locks end with their
//! transaction (commit, rollback or a dropped connection), so a replica that
//! dies never leaves one held.

use sqlx::PgConnection;

/// Serialises recompiles across controller replicas.
const RECOMPILE: i64 = 0x1a5d_c0de;
/// One replica at a time drives the rollouts.
const ROLLOUT_DRIVER: i64 = 0x6973_6466_726f_6c6c; // "isdfroll"
/// One replica at a time runs the background loops (`cluster::leader`).
const LEADER: i64 = 0x6973_6466_6c65_6164; // "isdflead"
/// Replicas starting on an empty database: one makes the first token.
const FIRST_OPERATOR_TOKEN: i64 = 0x6973_6466_746f_6b31; // "isdftok1"
/// Test processes building the migrated template database.
const TEST_TEMPLATE: i64 = 7242;

/// Takes the lock of one pay-per-site catalog until `tx` ends: checking for
/// overlapping domains and writing happen under it, so two writers cannot
/// both pass the check. (An advisory lock, because the rows that would
/// conflict may not exist yet.) Its key is a 64-bit hash of the catalog's
/// name; the fixed keys above sit among 2^64, so a collision costs at
/// worst a wait.
pub async fn catalog(tx: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('isdf-catalog:' || $1, 0))")
        .bind(name)
        .execute(tx)
        .await
        .map(drop)
}

/// Waits for the recompile lock, held until `tx` ends.
pub async fn recompile(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(RECOMPILE)
        .execute(tx)
        .await
        .map(drop)
}

/// Takes the rollout driver's lock until `tx` ends, if no other replica
/// holds it; false when one does.
pub async fn try_rollout_driver(tx: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(ROLLOUT_DRIVER)
        .fetch_one(tx)
        .await
}

/// Takes the first operator token's lock until `tx` ends.
pub async fn first_operator_token(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(FIRST_OPERATOR_TOKEN)
        .execute(tx)
        .await
        .map(drop)
}

/// Takes the leader's lock for as long as `conn` lives (a session lock:
/// it ends when the connection does, whatever happens to the process), if
/// no other replica holds it; false when one does.
pub async fn try_leader(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER)
        .fetch_one(conn)
        .await
}

/// Waits for the test template's session lock (released by
/// [`release_test_template`] or when the connection closes).
pub async fn test_template(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEST_TEMPLATE)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn release_test_template(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEST_TEMPLATE)
        .execute(conn)
        .await
        .map(drop)
}
