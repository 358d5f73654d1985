//! The controller process: `Application::build(settings)` connects and
//! migrates the database, loads keys and certificates, binds the four
//! listeners (operator API, device API, enrollment, customer portal) and
//! returns their real addresses (so tests run the real server on port 0),
//! fills the config cache and catches up on compilation; `run` serves until
//! shutdown. Its background loops re-sign configs nearing expiry, recompile
//! (every 15 s) the routers whose passes ended (the kernel closed the site
//! on time already; this only tidies their configs), drive the rollouts,
//! switch stalled key rotations and follow other replicas' changes to device
//! certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::http::auth::DeviceIdentityAcceptor;
use crate::http::limits::{DeviceGate, EnrollmentGate, Limits};
use crate::http::proxy_protocol::{ProxyProtocolAcceptor, TrustedProxies};
use crate::reconcile::config_cache::ConfigCache;

use crate::db;
use crate::http::routes;
use crate::http::state::{AgentBootstrap, AppState};
use crate::reconcile::signer::{ConfigSigner, FileSigner};
use crate::reconcile::Reconciler;
use crate::trust::pki::Pki;

/// The key that signs the portal's links (32 bytes, hex, mode 0600).
pub const PORTAL_KEY_FILE: &str = "portal.key";

/// The files of the data directory that replicas must share byte for byte:
/// a lone controller makes each on its first start, but replicas that each
/// made their own would not trust one another's certificates, configs,
/// portal links or webhook signatures. Replicas get them from a secret
/// store instead (`deploy/kubernetes/` mounts exactly these), with the root
/// documents ([`crate::trust::roots::ROOTS_DIR`]).
pub const SHARED_KEY_FILES: [&str; 5] = [
    crate::trust::pki::CA_KEY_FILE,
    crate::trust::pki::CA_CERT_FILE,
    crate::reconcile::signer::SIGNING_KEY_FILE,
    PORTAL_KEY_FILE,
    crate::shop::billing_webhook::KEY_FILE,
];

/// How long connections may finish after the shutdown signal before they
/// are closed: short, since long polls end at once and agents simply poll
/// again (another replica, behind a load balancer).
pub const GRACEFUL_SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub api_listen: SocketAddr,
    /// Serve the operator API over HTTPS (the controller CA's certificate).
    /// Required when it listens beyond loopback: bearer tokens must not
    /// cross a network in clear.
    pub api_tls: bool,
    pub device_listen: SocketAddr,
    /// The device API URL agents are told to use; derived from the bound address if None.
    pub device_public_url: Option<String>,
    /// Names and addresses in the device listener's certificate.
    pub device_tls_names: Vec<String>,
    /// The enrollment listener (server-authenticated TLS, own port).
    pub enrollment_listen: SocketAddr,
    /// The enrollment URL agents are told to use; derived if None.
    pub enrollment_public_url: Option<String>,
    pub config_lifetime: Duration,
    /// Bytes of signed configs held in memory (the rest are read from the
    /// database when a router asks).
    pub config_cache_bytes: usize,
    /// Lifetime of device certificates (agents renew at two thirds).
    pub device_cert_lifetime: Duration,
    pub limits: Limits,
    /// The customer-facing portal (plain HTTP; put a TLS proxy in front
    /// beyond a lab).
    pub portal_listen: SocketAddr,
    /// The portal URL routers send customers to; derived if None.
    pub portal_public_url: Option<String>,
    /// A TLS proxy serves the operator API and dashboard to browsers: mark
    /// the session cookie `Secure` (it is when `api_tls` is set anyway).
    pub dashboard_behind_tls: bool,
    /// Load balancers whose connections to the device and enrollment
    /// listeners open with a PROXY protocol v2 header naming the router.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// How many routers one transaction compiles.
    pub recompile_batching: crate::reconcile::soon::Batching,
    /// How long the fleet's minute samples are kept (the dashboard's
    /// charts over time).
    pub fleet_history_retention: Duration,
    /// How the leader resolves the pay-per-site catalog's names.
    pub site_resolution: crate::cluster::site_resolution::SiteResolution,
}

pub struct Application {
    pub api_addr: SocketAddr,
    /// `http://` or `https://` and the bound address.
    pub api_url: String,
    pub device_addr: SocketAddr,
    pub device_api_url: String,
    pub enrollment_addr: SocketAddr,
    pub enrollment_url: String,
    pub portal_addr: SocketAddr,
    pub portal_url: String,
    pub state: AppState,
    /// Printed once: the first operator token, when none existed.
    pub initial_operator_token: Option<String>,
    pub ca_pem: String,
    pub signing_public_key_hex: String,
    /// Where the billing webhook's shared secret is (hex, 0600).
    pub billing_webhook_key_path: PathBuf,
    api_listener: std::net::TcpListener,
    api_tls: Option<Arc<rustls::ServerConfig>>,
    device_listener: std::net::TcpListener,
    enrollment_listener: std::net::TcpListener,
    portal_listener: std::net::TcpListener,
    device_tls: Arc<rustls::ServerConfig>,
    enrollment_tls: Arc<rustls::ServerConfig>,
    site_resolution: crate::cluster::site_resolution::SiteResolution,
    /// The dashboard topics for the other replicas (`cluster::forward_live`).
    live_outbox: tokio::sync::mpsc::Receiver<crate::db::bus::LiveTopic>,
    trusted_proxies: TrustedProxies,
}

pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to PostgreSQL")
}

/// Creates an admin token if no token is active; returns it (shown once).
/// Replicas starting together on an empty database make one between them:
/// the check and the insert happen under one lock.
pub async fn bootstrap_operator_token(pool: &PgPool) -> anyhow::Result<Option<String>> {
    let mut tx = pool.begin().await.context("starting the first token")?;
    db::locks::first_operator_token(&mut tx)
        .await
        .context("taking the first token's lock")?;
    if db::operators::count_active(&mut *tx)
        .await
        .context("counting operator tokens")?
        > 0
    {
        return Ok(None);
    }
    let (_, token) = crate::handlers::operators::create_token(
        &mut *tx,
        "initial-admin",
        crate::model::Role::Admin,
        "first start",
    )
    .await
    .context("storing the initial operator token")?;
    tx.commit()
        .await
        .context("committing the initial operator token")?;
    Ok(Some(token))
}

/// Connections a listener queues before it accepts them (the kernel caps
/// it at `net.core.somaxconn`, 4096 by default). The standard library's
/// 128 overflows when a replica dies and tens of thousands of routers
/// reconnect to the others within a second: their SYNs are dropped and
/// retried seconds later.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("creating a listening socket")?;
    // As the standard library's bind: a restart may bind while connections
    // of the previous process linger in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .context("SO_REUSEADDR on a listening socket")?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("listening on {addr}"))?
        .into_std()
        .context("the listener")?;
    Ok(listener)
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
        let pool = connect(&settings.database_url).await?;
        db::migrate(&pool).await?;

        let signer: Arc<dyn ConfigSigner> = Arc::new(FileSigner::load_or_create(
            &settings
                .data_dir
                .join(crate::reconcile::signer::SIGNING_KEY_FILE),
        )?);
        let pki = Pki::load_or_create(&settings.data_dir, &settings.device_tls_names)?;
        let billing_webhook_key_path = settings
            .data_dir
            .join(crate::shop::billing_webhook::KEY_FILE);
        let billing_webhook_key =
            crate::shop::billing_webhook::WebhookKey::load_or_create(&billing_webhook_key_path)?;
        let device_tls = pki.device_server_config()?;
        let enrollment_tls = pki.enrollment_server_config()?;

        if !settings.api_tls && !settings.api_listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve the operator API over plain HTTP on {}: operator tokens would \
                 cross the network in clear; add --api-tls or listen on loopback",
                settings.api_listen
            );
        }
        let api_listener = bind(settings.api_listen)?;
        let device_listener = bind(settings.device_listen)?;
        let api_addr = api_listener.local_addr()?;
        let device_addr = device_listener.local_addr()?;
        let device_api_url = settings
            .device_public_url
            .clone()
            .unwrap_or_else(|| default_https_url(device_addr));
        let enrollment_listener = bind(settings.enrollment_listen)?;
        let enrollment_addr = enrollment_listener.local_addr()?;
        let enrollment_url = settings
            .enrollment_public_url
            .clone()
            .unwrap_or_else(|| default_https_url(enrollment_addr));

        let portal_listener = bind(settings.portal_listen)?;
        let portal_addr = portal_listener.local_addr()?;
        let portal_url = settings
            .portal_public_url
            .clone()
            .unwrap_or_else(|| default_url("http", portal_addr));
        let portal_links = crate::services::pay_per_site::PortalLinks::new(
            &portal_url,
            crate::trust::key_files::load_or_create_secret(
                &settings.data_dir.join(PORTAL_KEY_FILE),
            )?,
        );

        let replica = crate::db::bus::ReplicaId::random();
        tracing::info!(%replica, "replica");
        let (live, live_outbox) = crate::reconcile::live::LiveUpdates::shared();
        let live = Arc::new(live);
        let cache = Arc::new(ConfigCache::new(live.clone(), settings.config_cache_bytes));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let reconciler = Arc::new(Reconciler {
            pool: pool.clone(),
            signer: signer.clone(),
            cache: cache.clone(),
            config_lifetime: settings.config_lifetime,
            portal_links: portal_links.clone(),
            replica,
            pending: tokio::sync::Notify::new(),
            batching: settings.recompile_batching,
            pending_chunk: settings.recompile_batching.chunk.into(),
            metrics: metrics.clone(),
        });
        reconciler.load_cache().await?;
        crate::trust::device_certificates::load_all(&pool, &cache)
            .await
            .context("loading device certificates")?;
        cache.mark_loaded();
        // Catch up on anything a previous run left uncompiled, and re-sign
        // what is about to expire.
        reconciler
            .recompile(None, crate::reconcile::Resign::IfChanged)
            .await?;
        reconciler.refresh_expiring().await?;

        let signing_public_key_hex = hex::encode(signer.public_key().as_bytes());
        let roots = crate::trust::roots::RootChain::load_or_create(
            &settings.data_dir,
            &signing_public_key_hex,
        )?;
        let resigned = reconciler.resign_other_keys().await?;
        if resigned.changed > 0 {
            tracing::info!(
                devices = resigned.changed,
                "re-signed configs with the current signing key"
            );
        }
        let rollouts = Arc::new(crate::rollout::driver::Rollouts::new(
            pool.clone(),
            reconciler.clone(),
            live.clone(),
        ));
        let state = AppState {
            pool: pool.clone(),
            cache,
            reconciler,
            rollouts,
            agent_bootstrap: Arc::new(AgentBootstrap {
                device_api_url: device_api_url.clone(),
                enrollment_url: enrollment_url.clone(),
                ca_pem: pki.ca_pem.clone(),
                signing_public_key_hex: signing_public_key_hex.clone(),
                roots: roots.envelopes.clone(),
                release_keys: roots
                    .latest
                    .release_keys()
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("the newest root's release keys")?,
            }),
            device_gate: Arc::new(DeviceGate::new(settings.limits.clone())),
            enrollment_gate: Arc::new(EnrollmentGate::default()),
            device_cert_lifetime: settings.device_cert_lifetime,
            pki: Arc::new(pki),
            portal: Arc::new(crate::http::state::Portal {
                links: portal_links,
                payments: Arc::new(crate::shop::payment::TestPaymentProvider),
                // Bursts of 5, then one a minute.
                charges: crate::http::limits::RateLimiter::new(1.0 / 60.0, 5),
            }),
            billing_webhook_key: Arc::new(billing_webhook_key),
            probes: Arc::default(),
            live,
            refusals: Arc::default(),
            metrics,
            cpu_work: Arc::default(),
            dashboard: Arc::new(crate::http::sessions::Dashboard::new(
                settings.api_tls || settings.dashboard_behind_tls,
            )),
            readiness: Arc::default(),
            leadership: Arc::default(),
            fleet_history_retention: settings.fleet_history_retention,
        };
        let initial_operator_token = bootstrap_operator_token(&pool).await?;
        Ok(Application {
            api_addr,
            api_url: format!(
                "{}://{api_addr}",
                if settings.api_tls { "https" } else { "http" }
            ),
            device_addr,
            device_api_url,
            initial_operator_token,
            ca_pem: state.pki.ca_pem.clone(),
            enrollment_addr,
            enrollment_url,
            portal_addr,
            portal_url,
            state,
            signing_public_key_hex,
            billing_webhook_key_path,
            api_listener,
            api_tls: settings.api_tls.then_some(enrollment_tls.clone()),
            device_listener,
            enrollment_listener,
            portal_listener,
            device_tls,
            enrollment_tls,
            live_outbox,
            trusted_proxies: TrustedProxies::new(settings.proxy_protocol_from.clone()),
            site_resolution: settings.site_resolution.clone(),
        })
    }

    /// Serves both listeners until `shutdown` resolves, then drains.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let handle = axum_server::Handle::new();
        let limits = self.state.device_gate.limits().clone();
        let tls_acceptor = |config| {
            axum_server::tls_rustls::RustlsAcceptor::new(RustlsConfig::from_config(config))
                .handshake_timeout(limits.tls_handshake_timeout)
        };
        // Routers' connections through a TCP load balancer name the router
        // in a PROXY header (read before TLS).
        let header_timeout = limits.tls_handshake_timeout;
        let mut device_server = axum_server::from_tcp(self.device_listener)
            .acceptor(ProxyProtocolAcceptor::new(
                DeviceIdentityAcceptor::new(tls_acceptor(self.device_tls)),
                self.trusted_proxies.clone(),
                header_timeout,
            ))
            .handle(handle.clone());
        limit_headers(device_server.http_builder(), &limits);
        let device_server = device_server.serve(
            routes::device_router(self.state.clone())
                .into_make_service_with_connect_info::<SocketAddr>(),
        );
        // With the client's address: dashboard logins are limited per address.
        let operator_app = routes::operator_router(self.state.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let api_server: std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
        > = match self.api_tls {
            Some(config) => {
                let mut server = axum_server::from_tcp(self.api_listener)
                    .acceptor(tls_acceptor(config))
                    .handle(handle.clone());
                limit_headers(server.http_builder(), &limits);
                Box::pin(server.serve(operator_app))
            }
            None => {
                let mut server = axum_server::from_tcp(self.api_listener).handle(handle.clone());
                limit_headers(server.http_builder(), &limits);
                Box::pin(server.serve(operator_app))
            }
        };
        let mut enrollment_server = axum_server::from_tcp(self.enrollment_listener)
            .acceptor(ProxyProtocolAcceptor::new(
                tls_acceptor(self.enrollment_tls),
                self.trusted_proxies,
                header_timeout,
            ))
            .handle(handle.clone());
        limit_headers(enrollment_server.http_builder(), &limits);
        let enrollment_server = enrollment_server.serve(
            routes::enrollment_router(self.state.clone())
                .into_make_service_with_connect_info::<SocketAddr>(),
        );
        let mut portal_server = axum_server::from_tcp(self.portal_listener).handle(handle.clone());
        limit_headers(portal_server.http_builder(), &limits);
        let portal_server =
            portal_server.serve(routes::portal_router(self.state.clone()).into_make_service());
        let background = {
            let (reconciler, rollouts) =
                (self.state.reconciler.clone(), self.state.rollouts.clone());
            let (pool, retention) = (self.state.pool.clone(), self.state.fleet_history_retention);
            let site_resolution = self.site_resolution.clone();
            tokio::spawn(crate::cluster::leader::lead(
                self.state.pool.clone(),
                self.state.leadership.clone(),
                move || {
                    vec![
                        tokio::spawn(refresh_loop(reconciler.clone())),
                        tokio::spawn(rollouts.clone().run()),
                        tokio::spawn(crate::cluster::history::sample_loop(
                            pool.clone(),
                            retention,
                        )),
                        tokio::spawn(crate::cluster::site_resolution::resolve_loop(
                            reconciler.clone(),
                            site_resolution.clone(),
                        )),
                    ]
                },
            ))
        };
        let refusal_tallies = tokio::spawn(crate::http::audit::flush_refusals_loop(
            self.state.refusals.clone(),
            self.state.pool.clone(),
        ));
        let follower = tokio::spawn(
            crate::cluster::Follower {
                pool: self.state.pool.clone(),
                replica: self.state.reconciler.replica,
                cache: self.state.cache.clone(),
                live: self.state.live.clone(),
                rollouts: self.state.rollouts.clone(),
            }
            .run(),
        );
        let recompile_soon = tokio::spawn(crate::reconcile::soon::recompile_soon_loop(
            self.state.reconciler.clone(),
        ));
        let live_forwarder = tokio::spawn(crate::cluster::forward_live(
            self.state.pool.clone(),
            self.state.reconciler.replica,
            self.live_outbox,
        ));
        let stopper = tokio::spawn(async move {
            shutdown.await;
            // Long polls end at once; the agent simply polls again later.
            handle.graceful_shutdown(Some(GRACEFUL_SHUTDOWN_DRAIN));
        });
        let (device_result, api_result, enrollment_result, portal_result) =
            tokio::join!(device_server, api_server, enrollment_server, portal_server);
        background.abort();
        refusal_tallies.abort();
        follower.abort();
        recompile_soon.abort();
        live_forwarder.abort();
        stopper.abort();
        // What was refused since the last flush is written before leaving.
        if let Err(e) = self.state.refusals.flush(&self.state.pool).await {
            tracing::warn!(error = ?e, "refusal tallies lost at shutdown");
        }
        self.state.pool.close().await;
        device_result.context("device API server")?;
        api_result.context("operator API server")?;
        enrollment_result.context("enrollment server")?;
        portal_result.context("portal server")?;
        Ok(())
    }
}

/// HTTP/1 only (what agents and operators use), with a deadline for the
/// request headers so a slow client cannot hold a connection open for free.
fn limit_headers(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &Limits,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
}

/// The device API URL when none is configured: the bound address, or the
/// host name when bound to every address (`0.0.0.0` is no URL for a router).
fn default_https_url(addr: SocketAddr) -> String {
    default_url("https", addr)
}

fn default_url(scheme: &str, addr: SocketAddr) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|_| addr.ip().is_unspecified());
    match host {
        Some(host) => format!("{scheme}://{host}:{}", addr.port()),
        None => format!("{scheme}://{addr}"),
    }
}

/// Re-signs configs nearing expiry, and recompiles the routers whose passes
/// ended (the kernel closed the site at the end already; this takes the
/// ended rules out of their configs).
async fn refresh_loop(reconciler: Arc<Reconciler>) {
    const EXPIRY_EVERY: u32 = 40;
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    let mut passes_checked = chrono::Utc::now();
    for round in 0u32.. {
        tick.tick().await;
        let now = chrono::Utc::now();
        if let Err(e) = reconciler.recompile_ended_passes(passes_checked, now).await {
            tracing::warn!(error = ?e, "recompiling routers whose passes ended");
        } else {
            passes_checked = now;
        }
        let keys = crate::vpn::keys::KeyKeeper {
            reconciler: &reconciler,
        };
        if let Err(e) = keys.switch_stalled().await {
            tracing::warn!(error = ?e, "switching stalled key rotations");
        }
        if let Err(e) = reconciler.recompile_vpns_wanting_relay().await {
            tracing::warn!(error = ?e, "giving VPNs a relay");
        }
        if round % EXPIRY_EVERY == 0 {
            if let Err(e) = reconciler.refresh_expiring().await {
                tracing::warn!(error = ?e, "refreshing expiring configs");
            }
        }
    }
}
