//! `isdf-controller`: command line entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use isdf_controller::embedded_pg::EmbeddedPostgres;
use isdf_controller::{Application, Settings};

#[derive(Parser)]
#[command(name = "isdf-controller", version, about = "iSDF controller")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Serve,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Keys, certificates and (without a database URL) the private PostgreSQL cluster.
    #[arg(
        global = true,
        long,
        env = "ISDF_DATA_DIR",
        default_value = ".isdf-data"
    )]
    data_dir: PathBuf,
    /// PostgreSQL URL; without it a private cluster is started in the data directory.
    #[arg(global = true, long, env = "ISDF_DATABASE_URL")]
    database_url: Option<String>,
    /// Operator API and dashboard (plain HTTP; keep it on loopback or behind TLS).
    #[arg(
        global = true,
        long,
        env = "ISDF_API_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    api_listen: SocketAddr,
    /// Device API (HTTPS).
    #[arg(
        global = true,
        long,
        env = "ISDF_DEVICE_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    device_listen: SocketAddr,
    /// Device API URL given to agents, e.g. https://controller.example.net:8443.
    #[arg(global = true, long, env = "ISDF_DEVICE_PUBLIC_URL")]
    device_public_url: Option<String>,
    /// Extra DNS names or IP addresses for the device API certificate.
    #[arg(
        global = true,
        long = "device-tls-name",
        env = "ISDF_DEVICE_TLS_NAMES",
        value_delimiter = ','
    )]
    device_tls_names: Vec<String>,
    /// Lifetime of signed configs, in hours (re-issued at half-life).
    #[arg(
        global = true,
        long,
        env = "ISDF_CONFIG_LIFETIME_HOURS",
        default_value_t = 168
    )]
    config_lifetime_hours: u64,
    /// Longest long-poll wait, in seconds.
    #[arg(
        global = true,
        long,
        env = "ISDF_MAX_POLL_WAIT_SECS",
        default_value_t = 60
    )]
    max_poll_wait_secs: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve) | None => cli.serve,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data directory")?;
    // Kept alive until the end of this function: dropping it stops the cluster.
    let mut embedded = None;
    let database_url = match args.database_url {
        Some(url) => url,
        None => {
            let pg = tokio::task::block_in_place(|| EmbeddedPostgres::start(&data_dir))?;
            create_database_if_missing(&pg).await?;
            tracing::info!(dir = %data_dir.join("postgres").display(), "started private PostgreSQL");
            let url = pg.database_url();
            embedded = Some(pg);
            url
        }
    };
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = nix::unistd::gethostname() {
        names.extend(host.into_string().ok());
    }
    names.extend(args.device_tls_names);
    if !args.device_listen.ip().is_unspecified() {
        names.push(args.device_listen.ip().to_string());
    }
    names.dedup();
    let settings = Settings {
        data_dir: data_dir.clone(),
        database_url,
        api_listen: args.api_listen,
        device_listen: args.device_listen,
        device_public_url: args.device_public_url,
        device_tls_names: names,
        config_lifetime: Duration::from_secs(args.config_lifetime_hours.max(1) * 3600),
        max_poll_wait: Duration::from_secs(args.max_poll_wait_secs),
    };
    let app = Application::build(settings).await?;
    println!("iSDF controller is running.");
    println!(
        "  Operator API:  http://{}/api/v1  (OpenAPI: http://{}/api/v1/openapi.json)",
        app.api_addr, app.api_addr
    );
    println!("  Dashboard:     http://{}/  (the web dashboard arrives with the rollouts work; the API is complete)", app.api_addr);
    println!("  Device API:    {}", app.device_api_url);
    println!("  Controller CA: {}", data_dir.join("ca.pem").display());
    match &app.initial_operator_token {
        Some(token) => println!("  Operator token (shown once, keep it): {token}"),
        None => println!("  Operator token: created on first start (already shown then)"),
    }
    app.run(shutdown_signal()).await?;
    if let Some(mut pg) = embedded {
        tokio::task::block_in_place(|| pg.stop())?;
        tracing::info!("stopped private PostgreSQL");
    }
    Ok(())
}

async fn create_database_if_missing(pg: &EmbeddedPostgres) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg.maintenance_url())
        .await
        .context("connecting to the private PostgreSQL")?;
    let name = EmbeddedPostgres::database_name();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
