//! Statements on the cluster rather than on a table: the embedded default's
//! database, the tests' databases cloned from a migrated template, and the
//! readiness probe's round trip.
//! Database names are ours (never from a request): they are quoted, not bound,
//! because PostgreSQL takes no parameters in these statements.

use sqlx::PgConnection;

/// A change to the cluster's databases.
#[derive(Debug, Clone, Copy)]
pub enum DatabaseChange<'a> {
    Create(&'a str),
    CreateFromTemplate { name: &'a str, template: &'a str },
    DropIfExists(&'a str),
    Rename { from: &'a str, to: &'a str },
}

impl DatabaseChange<'_> {
    fn sql(&self) -> String {
        match self {
            DatabaseChange::Create(name) => format!("CREATE DATABASE \"{name}\""),
            DatabaseChange::CreateFromTemplate { name, template } => {
                format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"")
            }
            DatabaseChange::DropIfExists(name) => format!("DROP DATABASE IF EXISTS \"{name}\""),
            DatabaseChange::Rename { from, to } => {
                format!("ALTER DATABASE \"{from}\" RENAME TO \"{to}\"")
            }
        }
    }
}

impl std::fmt::Display for DatabaseChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sql())
    }
}

pub async fn exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

pub async fn apply(conn: &mut PgConnection, change: DatabaseChange<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(&change.sql()).execute(conn).await.map(drop)
}

/// Whether `e` says another session is using a database the statement
/// needs alone (cloning or renaming a template).
pub fn is_busy(e: &sqlx::Error) -> bool {
    e.to_string().contains("being accessed by other users")
}

/// One round trip to the database (`SELECT 1`): readiness.
pub async fn ping(db: impl sqlx::PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(db).await.map(drop)
}
