//! `isdf-controller`: the command line. `serve` starts the controller (with
//! the embedded default when no database URL is given: a private
//! PostgreSQL, supervised and restarted when it dies, a dev CA and signing
//! key, and the first operator token,
//! printed with the dashboard's URL); `root rotate`, `signing-key` and
//! `token` are the offline operations on the data directory and database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use isdf_controller::db;
use isdf_controller::db::embedded_pg::EmbeddedPostgres;
use isdf_controller::model::Role;
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
    /// Manage operator API tokens directly in the database (works while the
    /// controller runs, and when the API is unreachable).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Root documents: which keys may sign configs. Works offline on a copy
    /// of the data directory's `roots/` and the key files.
    #[command(subcommand)]
    Root(RootCommand),
    /// Config-signing keys.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
}

#[derive(Subcommand)]
enum RootCommand {
    /// Sign the next root: certify `--signing-key`s (and drop any not listed).
    Rotate {
        /// The current root key (PKCS#8 PEM).
        #[arg(long)]
        root_key: PathBuf,
        /// A new root key to hand over to (PKCS#8 PEM); default: keep the current one.
        #[arg(long)]
        new_root_key: Option<PathBuf>,
        /// Public keys (hex) trusted to sign configs under the new root.
        #[arg(long = "signing-key", required = true)]
        signing_keys: Vec<String>,
        /// After removing a compromised key: accept config versions from here again.
        #[arg(long)]
        config_version_floor: Option<u64>,
        /// Public keys (hex) trusted to sign agent releases under the new
        /// root; default: the current root's. Never a signing key.
        #[arg(long = "release-key")]
        release_keys: Vec<String>,
    },
    /// Show the verified chain.
    Show,
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Create a new key file and print its public key (hex).
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: uuid::Uuid },
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
    /// Serve the operator API over HTTPS with the controller CA's certificate
    /// (required when it listens beyond loopback).
    #[arg(global = true, long, env = "ISDF_API_TLS")]
    api_tls: bool,
    /// Browsers reach the dashboard through a TLS proxy: mark its session
    /// cookie `Secure` (implied by --api-tls).
    #[arg(global = true, long, env = "ISDF_DASHBOARD_BEHIND_TLS")]
    dashboard_behind_tls: bool,
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
    /// Enrollment listener (HTTPS, server-authenticated; routers without a certificate).
    #[arg(
        global = true,
        long,
        env = "ISDF_ENROLLMENT_LISTEN",
        default_value = "0.0.0.0:8444"
    )]
    enrollment_listen: SocketAddr,
    /// Enrollment URL given to agents, e.g. https://controller.example.net:8444.
    #[arg(global = true, long, env = "ISDF_ENROLLMENT_PUBLIC_URL")]
    enrollment_public_url: Option<String>,
    /// Customer-facing pay-per-site portal (plain HTTP: put a TLS proxy in
    /// front of it and give its URL with --portal-public-url).
    #[arg(
        global = true,
        long,
        env = "ISDF_PORTAL_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    portal_listen: SocketAddr,
    /// Portal URL routers send customers to, e.g. https://pay.isp.example.
    #[arg(global = true, long, env = "ISDF_PORTAL_PUBLIC_URL")]
    portal_public_url: Option<String>,
    /// Lifetime of device certificates in days (agents renew at two thirds).
    #[arg(
        global = true,
        long,
        env = "ISDF_DEVICE_CERT_LIFETIME_DAYS",
        default_value_t = 30
    )]
    device_cert_lifetime_days: u64,
    /// Days the fleet's minute samples (the dashboard's charts over time)
    /// are kept; 1 to 3650.
    #[arg(
        global = true,
        long,
        env = "ISDF_FLEET_HISTORY_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3650)
    )]
    fleet_history_days: u64,
    /// The DNS server (IP:port) the controller asks for the pay-per-site
    /// catalog's names, so routers gate the sites' addresses from their
    /// start; default: the system's resolvers (/etc/resolv.conf).
    #[arg(global = true, long, env = "ISDF_SITE_RESOLVER")]
    site_resolver: Option<std::net::SocketAddr>,
    /// Seconds between two resolutions of the catalog's names; 0 turns
    /// them off (routers then learn sites' addresses from their own
    /// resolver only).
    #[arg(
        global = true,
        long,
        env = "ISDF_SITE_RESOLVE_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    site_resolve_secs: u64,
    /// Seconds a resolved address no longer seen stays gated (CDNs rotate
    /// through pools); 60 to 2592000.
    #[arg(
        global = true,
        long,
        env = "ISDF_SITE_ADDRESS_KEEP_SECS",
        default_value_t = 86_400,
        value_parser = clap::value_parser!(u64).range(60..=2_592_000)
    )]
    site_address_keep_secs: u64,
    /// Extra DNS names or IP addresses for the device API certificate.
    #[arg(
        global = true,
        long = "device-tls-name",
        env = "ISDF_DEVICE_TLS_NAMES",
        value_delimiter = ','
    )]
    device_tls_names: Vec<String>,
    /// Load balancers (addresses or networks, e.g. 10.0.0.0/24) in front of
    /// the device and enrollment listeners that open each connection with
    /// a PROXY protocol v2 header (HAProxy `send-proxy-v2`): routers'
    /// addresses are then read from it. Connections from these addresses
    /// without the header are closed.
    #[arg(
        global = true,
        long = "proxy-protocol-from",
        env = "ISDF_PROXY_PROTOCOL_FROM",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Lifetime of signed configs, in hours (re-issued at half-life).
    #[arg(
        global = true,
        long,
        env = "ISDF_CONFIG_LIFETIME_HOURS",
        default_value_t = 168
    )]
    config_lifetime_hours: u64,
    /// Bytes of signed configs a replica holds in memory, in MiB; routers
    /// whose config is not held get it from the database.
    #[arg(
        global = true,
        long,
        env = "ISDF_CONFIG_CACHE_MIB",
        default_value_t = 256
    )]
    config_cache_mib: usize,
    /// Longest long-poll wait, in seconds.
    #[arg(
        global = true,
        long,
        env = "ISDF_MAX_POLL_WAIT_SECS",
        default_value_t = 60
    )]
    max_poll_wait_secs: u64,
    /// Seconds an agent waits before its next poll (jittered by up to half).
    #[arg(global = true, long, env = "ISDF_POLL_DELAY_SECS", default_value_t = 0)]
    poll_delay_secs: u64,
    /// Sustained device API requests per second per device.
    #[arg(global = true, long, env = "ISDF_DEVICE_RATE", default_value_t = 2.0)]
    device_rate: f64,
    /// Device API requests a device may burst above its rate.
    #[arg(global = true, long, env = "ISDF_DEVICE_BURST", default_value_t = 20)]
    device_burst: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Some(Command::Serve) | None => runtime.block_on(serve(cli.serve)),
        Some(Command::Token(command)) => runtime.block_on(token(cli.serve, command)),
        Some(Command::Root(command)) => root(&cli.serve, command),
        Some(Command::SigningKey(SigningKeyCommand::Generate { out })) => {
            let key = isdf_controller::trust::roots::generate_key(&out)?;
            println!("{}", isdf_controller::trust::roots::public_hex(&key));
            Ok(())
        }
    }
}

fn resolve_data_dir(args: &ServeArgs) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    args.data_dir
        .canonicalize()
        .context("resolving the data directory")
}

/// The configured database, or the embedded cluster (started if it is not
/// running; owned, and so stopped at the end, only if started here).
async fn database(args: &ServeArgs) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if let Some(url) = &args.database_url {
        return Ok((url.clone(), None));
    }
    let data_dir = resolve_data_dir(args)?;
    let pg = tokio::task::block_in_place(|| EmbeddedPostgres::start(&data_dir))?;
    pg.create_database_if_missing().await?;
    Ok((pg.database_url(), Some(pg)))
}

fn root(args: &ServeArgs, command: RootCommand) -> anyhow::Result<()> {
    use isdf_controller::trust::roots::{read_key, RootChain};
    let data_dir = resolve_data_dir(args)?;
    match command {
        RootCommand::Rotate {
            root_key,
            new_root_key,
            signing_keys,
            config_version_floor,
            release_keys,
        } => {
            for key in signing_keys.iter().chain(&release_keys) {
                isdf_api::TrustedKeys::parse_public_key(key).map_err(anyhow::Error::msg)?;
            }
            let current = read_key(&root_key)?;
            let handover = new_root_key.as_deref().map(read_key).transpose()?;
            let certified = isdf_controller::trust::roots::NextRoot {
                signing_keys,
                config_version_floor,
                release_keys: (!release_keys.is_empty()).then_some(release_keys),
            };
            let next = RootChain::rotate(&data_dir, &current, handover.as_ref(), certified)?;
            println!(
                "signed root {}; restart the controller with a certified signing key",
                next.version
            );
        }
        RootCommand::Show => {
            let chain = RootChain::load(&data_dir)?;
            println!("{}", serde_json::to_string_pretty(&chain.latest)?);
        }
    }
    Ok(())
}

fn cli_actor() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "unknown".to_owned(), |u| u.name);
    format!("cli:{user}")
}

async fn token(args: ServeArgs, command: TokenCommand) -> anyhow::Result<()> {
    let (url, mut embedded) = database(&args).await?;
    let pool = isdf_controller::app::connect(&url).await?;
    db::migrate(&pool).await?;
    let actor = cli_actor();
    let audit = |action: &'static str, target: String, summary: serde_json::Value| {
        let (pool, actor) = (pool.clone(), actor.clone());
        async move {
            let entry = db::audit::NewAuditEntry {
                dry_run: false,
                actor_id: None,
                actor: &actor,
                action,
                target: Some(&target),
                status: 200,
                summary,
            };
            db::audit::append(&pool, &entry)
                .await
                .context("writing the audit log")
        }
    };
    match command {
        TokenCommand::Create { name, role } => {
            let name =
                isdf_controller::model::parse_name(&name, "token").map_err(anyhow::Error::msg)?;
            let (row, token) =
                isdf_controller::handlers::operators::create_token(&pool, &name, role, &actor)
                    .await?;
            audit(
                "token.create",
                row.id.to_string(),
                serde_json::json!({"name": name, "role": role.as_str()}),
            )
            .await?;
            println!("{token}");
            eprintln!(
                "created {} token `{name}` ({}); the token above is shown once",
                role.as_str(),
                row.id
            );
        }
        TokenCommand::List => {
            for row in db::operators::list(&pool, None, i64::MAX).await? {
                let state = row
                    .revoked_at
                    .map_or_else(|| "active".to_owned(), |t| format!("revoked {t}"));
                println!(
                    "{}  {:<8}  {:<24}  created {} by {}  {state}",
                    row.id,
                    row.role,
                    row.name,
                    row.created_at,
                    row.created_by.unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let row = db::operators::revoke(&pool, id)
                .await?
                .with_context(|| format!("no active operator token {id}"))?;
            audit(
                "token.revoke",
                id.to_string(),
                serde_json::json!({"name": row.name}),
            )
            .await?;
            eprintln!("revoked `{}` ({id})", row.name);
        }
    }
    pool.close().await;
    if let Some(pg) = embedded.as_mut() {
        tokio::task::block_in_place(|| pg.stop())?;
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = resolve_data_dir(&args)?;
    let (database_url, embedded) = database(&args).await?;
    // Kept until the end of this function: the cluster is restarted when it
    // dies meanwhile, and stopped when the supervisor goes.
    let supervisor = embedded.map(|mut pg| {
        // Also a cluster a crashed run left behind: this run stops it on exit.
        pg.adopt();
        tracing::info!(dir = %data_dir.join("postgres").display(), "private PostgreSQL is up");
        pg.supervise()
    });
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
    // Routers check the certificate against the host they were told to
    // use: the public URLs' hosts belong in it without a flag of their own.
    for (flag, url) in [
        ("--device-public-url", &args.device_public_url),
        ("--enrollment-public-url", &args.enrollment_public_url),
    ] {
        if let Some(url) = url {
            names.push(public_url_host(flag, url)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(name.clone()));
    let settings = Settings {
        data_dir: data_dir.clone(),
        database_url,
        api_listen: args.api_listen,
        api_tls: args.api_tls,
        device_listen: args.device_listen,
        device_public_url: args.device_public_url.clone(),
        device_tls_names: names.clone(),
        enrollment_listen: args.enrollment_listen,
        enrollment_public_url: args.enrollment_public_url.clone(),
        device_cert_lifetime: Duration::from_secs(
            args.device_cert_lifetime_days.max(1) * 24 * 3600,
        ),
        config_lifetime: Duration::from_secs(args.config_lifetime_hours.max(1) * 3600),
        config_cache_bytes: args.config_cache_mib.saturating_mul(1 << 20),
        portal_listen: args.portal_listen,
        portal_public_url: args.portal_public_url,
        dashboard_behind_tls: args.dashboard_behind_tls,
        proxy_protocol_from: args.proxy_protocol_from,
        recompile_batching: Default::default(),
        fleet_history_retention: Duration::from_secs(args.fleet_history_days * 24 * 3600),
        site_resolution: isdf_controller::cluster::site_resolution::SiteResolution {
            resolver: args.site_resolver,
            every: Duration::from_secs(args.site_resolve_secs),
            keep_for: Duration::from_secs(args.site_address_keep_secs),
        },
        limits: isdf_controller::http::limits::Limits {
            max_poll_wait: Duration::from_secs(args.max_poll_wait_secs),
            poll_delay: Duration::from_secs(args.poll_delay_secs),
            device_requests_per_sec: args.device_rate,
            device_burst: args.device_burst,
            ..Default::default()
        },
    };
    let app = Application::build(settings).await?;
    println!("iSDF controller is running.");
    println!(
        "  Operator API:  {url}/api/v1  (OpenAPI: {url}/api/v1/openapi.json)",
        url = app.api_url
    );
    println!(
        "  Dashboard:     {}/ui/  (log in with an operator token)",
        app.api_url
    );
    // The two URLs routers are given (in every agent config the API
    // answers): each on a line of its own, which scripts read as is.
    println!("  Device API:    {}", app.device_api_url);
    println!("  Enrollment:    {}", app.enrollment_url);
    println!(
        "  TLS names:     {}  (in both listeners' certificate)",
        names.join(", ")
    );
    if args.device_public_url.is_some() && args.enrollment_public_url.is_some() {
        println!(
            "  Routers:       are given the two URLs above (listening on {} and {})",
            app.device_addr, app.enrollment_addr
        );
    } else {
        println!(
            "  Routers:       are given the two URLs above, made from this machine's host name \
             or listening address;"
        );
        println!(
            "                 routers on a network need an address that reaches it: start with"
        );
        println!(
            "                   --device-public-url https://ADDRESS:{} --enrollment-public-url \
             https://ADDRESS:{}",
            app.device_addr.port(),
            app.enrollment_addr.port()
        );
        println!("                 (ADDRESS joins the TLS names; --device-tls-name adds others)");
    }
    println!(
        "  Portal:        {}  (customers pay for gated sites here; listening on {})",
        app.portal_url, app.portal_addr
    );
    println!(
        "  Controller CA: {}",
        data_dir
            .join(isdf_controller::trust::pki::CA_CERT_FILE)
            .display()
    );
    println!(
        "  Billing webhook: {}{}  (HMAC key: {})",
        app.api_url,
        isdf_controller::handlers::billing::PATH,
        app.billing_webhook_key_path.display()
    );
    match &app.initial_operator_token {
        Some(token) => println!("  Operator token (shown once, keep it): {token}"),
        None => println!(
            "  Operator token: created on first start (already shown then; make another with \
             `isdf-controller token create --name NAME --role admin`)"
        ),
    }
    println!(
        "  Next:          register a router: POST {}/api/v1/devices answers its enrollment \
         token, CA and agent config (README: \"Connect a real router\")",
        app.api_url
    );
    app.run(shutdown_signal()).await?;
    if let Some(supervisor) = supervisor {
        supervisor.stop().await?;
        tracing::info!("stopped private PostgreSQL");
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

/// The host of a public URL routers are given (`flag` names it in the
/// error): an `https://` URL, since agents refuse anything else.
fn public_url_host(flag: &str, url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{flag} {url:?}"))?;
    if parsed.scheme() != "https" {
        anyhow::bail!("{flag} must be an https:// URL (agents refuse others), not {url:?}");
    }
    match parsed.host_str() {
        // An IPv6 address comes in its brackets.
        Some(host) if !host.is_empty() => Ok(host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()),
        _ => anyhow::bail!("{flag} {url:?} names no host"),
    }
}

/// A network (`10.0.0.0/24`) or a single address (`10.0.0.5`).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a network (10.0.0.0/24)"))
}

#[cfg(test)]
mod tests {
    use super::public_url_host;

    #[test]
    fn public_urls_give_their_host_to_the_certificate() {
        for (url, host) in [
            (
                "https://controller.example.net:8443",
                "controller.example.net",
            ),
            ("https://192.0.2.10:8444/", "192.0.2.10"),
            ("https://[2001:db8::10]:8443", "2001:db8::10"),
        ] {
            assert_eq!(public_url_host("--device-public-url", url).unwrap(), host);
        }
        for bad in ["http://192.0.2.10:8443", "192.0.2.10:8443", "https://"] {
            let err = public_url_host("--device-public-url", bad).unwrap_err();
            assert!(
                format!("{err:#}").contains("--device-public-url"),
                "{err:#}"
            );
        }
    }
}
