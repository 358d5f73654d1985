//! SQL, one module per table (plus `locks.rs` for advisory locks and
//! `databases.rs` for statements on the cluster): every SQL statement of the
//! controller is here. Functions take an executor (pool, connection or
//! transaction) and return `sqlx::Error`; callers add context.
//! `embedded_pg.rs` runs the private PostgreSQL of the embedded default.
//!
//! Queries are checked at run time rather than with `query!`: the offline
//! `.sqlx` data would have to be regenerated against a live database on every
//! schema change, and every query here is exercised by the integration tests
//! against a real PostgreSQL.

pub mod assignments;
pub mod audit;
pub mod blocks;
pub mod bus;
pub mod catalog;
pub mod configs;
pub mod customers;
pub mod databases;
pub mod device_certificates;
pub mod devices;
pub mod embedded_pg;
pub mod enrollment;
pub mod events;
pub mod fleet;
pub mod fleet_history;
pub mod locks;
pub mod operators;
pub mod pending_recompiles;
pub mod purchases;
pub mod releases;
pub mod rollouts;
pub mod services;
pub mod sessions;
pub mod site_addresses;
pub mod status;
pub mod vpns;
pub mod wireguard;

/// Whether `e` is a unique-constraint violation (SQLSTATE 23505).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}

/// Whether `e` is a violation of the unique constraint `constraint`.
pub fn is_unique_violation_of(e: &sqlx::Error, constraint: &str) -> bool {
    is_unique_violation(e)
        && e.as_database_error()
            .and_then(|d| d.constraint())
            .is_some_and(|c| c == constraint)
}

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies the migrations (expand-then-contract: each release's migrations
/// must work with the previous release's code still running).
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    use anyhow::Context;
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}
