//! Support for tests (this crate's and the agent's end-to-end tests): a fresh
//! database per test, cloned from a migrated template, and the real
//! controller started on port 0. Not used by the controller itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

use crate::db;
use crate::db::databases::DatabaseChange;
use crate::{Application, Settings};

/// Names the PostgreSQL maintenance URL the tests create their databases in.
pub const TEST_DATABASE_ENV: &str = "ISDF_TEST_DATABASE_URL";

fn maintenance_url() -> anyhow::Result<String> {
    std::env::var(TEST_DATABASE_ENV).with_context(|| {
        format!(
            "{TEST_DATABASE_ENV} is not set: these tests need a real PostgreSQL. \
             Run them with scripts/test, which starts one, or set {TEST_DATABASE_ENV} \
             to a maintenance database URL (e.g. postgres://postgres@localhost/postgres)"
        )
    })
}

/// Replaces the database name in a `postgres://` URL.
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let base = head.rsplit_once('/').map_or(head, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// The template's name changes whenever a migration does.
fn template_name() -> String {
    let mut hasher = Sha256::new();
    for migration in db::MIGRATOR.iter() {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&migration.checksum);
    }
    format!("isdf_template_{}", &hex::encode(hasher.finalize())[..12])
}

/// Creates a new database for one test from the migrated template (made once
/// per schema, under an advisory lock, shared by parallel test processes).
pub async fn create_test_database() -> anyhow::Result<String> {
    let admin_url = maintenance_url()?;
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("connecting to {TEST_DATABASE_ENV}"))?;
    let template = template_name();
    db::locks::test_template(&mut admin).await?;
    if !db::databases::exists(&mut admin, &template).await? {
        let building = format!("{template}_building");
        db::databases::apply(&mut admin, DatabaseChange::DropIfExists(&building)).await?;
        db::databases::apply(&mut admin, DatabaseChange::Create(&building)).await?;
        // One connection, closed explicitly: a pool may keep a session on the
        // template open, and a template with sessions cannot be renamed or cloned.
        let mut conn = PgConnection::connect(&with_database(&admin_url, &building)).await?;
        db::MIGRATOR
            .run(&mut conn)
            .await
            .context("migrating the template")?;
        conn.close().await?;
        run_while_busy(
            &mut admin,
            DatabaseChange::Rename {
                from: &building,
                to: &template,
            },
        )
        .await?;
    }
    db::locks::release_test_template(&mut admin).await?;
    let name = format!("isdf_test_{}", uuid::Uuid::new_v4().simple());
    // Cloning fails while another session is connected to the template
    // (briefly possible while it is being built).
    run_while_busy(
        &mut admin,
        DatabaseChange::CreateFromTemplate {
            name: &name,
            template: &template,
        },
    )
    .await?;
    Ok(with_database(&admin_url, &name))
}

/// Applies `change`, retrying a few times while PostgreSQL says the database
/// is being accessed by other users.
async fn run_while_busy(
    admin: &mut PgConnection,
    change: DatabaseChange<'_>,
) -> anyhow::Result<()> {
    // PostgreSQL itself waits up to 5 s for other sessions each time.
    for _ in 0..10 {
        match db::databases::apply(&mut *admin, change).await {
            Ok(()) => return Ok(()),
            Err(e) if db::databases::is_busy(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("running `{change}`")),
        }
    }
    bail!("`{change}`: the database stayed busy")
}

/// A running controller for tests.
pub struct TestController {
    pub api_url: String,
    pub device_url: String,
    pub enrollment_url: String,
    /// The customer-facing portal (plain HTTP), as routers' configs name it.
    pub portal_url: String,
    /// Where the portal listens (its URL may be a proxy's in front).
    pub portal_addr: std::net::SocketAddr,
    pub operator_token: String,
    pub ca_pem: String,
    pub signing_public_key_hex: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub state: crate::http::state::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Options for [`TestController::start`].
pub struct TestControllerOptions {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub device_listen: std::net::SocketAddr,
    pub device_tls_names: Vec<String>,
    pub limits: crate::http::limits::Limits,
    pub device_cert_lifetime: Duration,
    /// How long a signed config is valid (an hour; the agent's outage tests
    /// use seconds).
    pub config_lifetime: Duration,
    pub api_tls: bool,
    /// Bytes of signed configs held in memory.
    pub config_cache_bytes: usize,
    /// The portal's URL as routers' configs name it (replicas share one).
    pub portal_public_url: Option<String>,
    /// Load balancers that send a PROXY header (the HAProxy test's).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// How many routers one transaction compiles (small, to exercise the
    /// large-fleet paths with a few routers).
    pub recompile_batching: crate::reconcile::soon::Batching,
    /// The leader's resolution of the pay-per-site catalog's names: off
    /// unless a test turns it on with a resolver it runs (tests never ask
    /// the machine's resolvers).
    pub site_resolution: crate::cluster::site_resolution::SiteResolution,
    /// Refusals of callers without credentials admitted per source before
    /// 429 (a second, at once); None: the controller's own budget. The
    /// contract test probes every operation without credentials.
    pub refusal_budget: Option<(f64, u32)>,
}

impl TestControllerOptions {
    pub fn new(data_dir: &Path) -> Self {
        TestControllerOptions {
            data_dir: data_dir.to_owned(),
            database_url: None,
            device_listen: "127.0.0.1:0".parse().expect("literal"),
            device_tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            limits: crate::http::limits::Limits::default(),
            device_cert_lifetime: Duration::from_secs(30 * 24 * 3600),
            config_lifetime: Duration::from_secs(3600),
            api_tls: false,
            portal_public_url: None,
            proxy_protocol_from: Vec::new(),
            recompile_batching: Default::default(),
            site_resolution: crate::cluster::site_resolution::SiteResolution {
                every: std::time::Duration::ZERO,
                ..Default::default()
            },
            refusal_budget: None,
            config_cache_bytes: crate::reconcile::config_cache::DEFAULT_ENVELOPE_BUDGET,
        }
    }
}

impl TestController {
    /// Starts the real controller (both listeners, TLS) on the current runtime.
    pub async fn start(options: TestControllerOptions) -> anyhow::Result<Self> {
        // What the controller logs goes to the test's output (shown when a
        // test fails): warnings and errors, or what RUST_LOG asks for.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let database_url = match options.database_url {
            Some(url) => url,
            None => create_test_database().await?,
        };
        let settings = Settings {
            data_dir: options.data_dir.clone(),
            database_url: database_url.clone(),
            api_listen: "127.0.0.1:0".parse()?,
            api_tls: options.api_tls,
            device_listen: options.device_listen,
            device_public_url: None,
            device_tls_names: options.device_tls_names,
            // The enrollment listener shares the device listener's address.
            enrollment_listen: std::net::SocketAddr::new(options.device_listen.ip(), 0),
            enrollment_public_url: None,
            device_cert_lifetime: options.device_cert_lifetime,
            config_lifetime: options.config_lifetime,
            config_cache_bytes: options.config_cache_bytes,
            limits: options.limits,
            // The portal too: LAN hosts reach it where they reach the controller.
            portal_listen: std::net::SocketAddr::new(options.device_listen.ip(), 0),
            portal_public_url: options.portal_public_url,
            dashboard_behind_tls: false,
            proxy_protocol_from: options.proxy_protocol_from,
            recompile_batching: options.recompile_batching,
            fleet_history_retention: crate::cluster::history::DEFAULT_RETENTION,
            site_resolution: options.site_resolution,
        };
        let mut app = Application::build(settings).await?;
        if let Some((per_sec, burst)) = options.refusal_budget {
            app.state.refusals =
                std::sync::Arc::new(crate::http::audit::Refusals::new(per_sec, burst));
        }
        let operator_token = match app.initial_operator_token.clone() {
            Some(t) => t,
            None => {
                // A restart on the same database: make a fresh token for the test.
                let (_, token) = crate::handlers::operators::create_token(
                    &app.state.pool,
                    "test",
                    crate::model::Role::Admin,
                    "test",
                )
                .await?;
                token
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = TestController {
            api_url: app.api_url.clone(),
            device_url: app.device_api_url.clone(),
            enrollment_url: app.enrollment_url.clone(),
            portal_url: app.portal_url.clone(),
            portal_addr: app.portal_addr,
            operator_token,
            ca_pem: app.ca_pem.clone(),
            signing_public_key_hex: app.signing_public_key_hex.clone(),
            data_dir: options.data_dir,
            database_url,
            state: app.state.clone(),
            stop: Some(stop),
            task: None,
        };
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Ok(TestController {
            task: Some(task),
            ..controller
        })
    }

    /// Stops both listeners and waits until they are closed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("controller task")??;
        }
        Ok(())
    }
}
