//! `isdf-agent`: command line entry point.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use isdf_agent::agent::{Agent, Stopped};
use isdf_agent::backend;
use isdf_agent::control::{self, Request};
use isdf_agent::controller::enrollment;
use isdf_agent::sys::config_files::{load_settings, read_token};
use isdf_agent::sys::settings::{BackendChoice, Settings};
use isdf_agent::sys::state::StateDir;

#[derive(Parser)]
#[command(name = "isdf-agent", version = isdf_agent::AGENT_VERSION, about = "iSDF router agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the last good config, then follow the controller. Enrolls
    /// first if there is no identity yet and `enrollment_token_file` is set.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides `state_dir` of the config file.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Overrides `backend` of the config file.
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
    /// Obtain this router's certificate with an enrollment token, store it in
    /// the state directory and print the device id.
    Enroll {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        token: TokenSource,
        /// Overrides `state_dir` of the config file.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Block a flow on this router for a while (for detectors: Zeek,
    /// Suricata, scripts). Each field is a value or `any`; addresses may be
    /// prefixes, ports ranges (`5000-5010`).
    Block {
        /// tcp, udp, icmp, icmpv6 or any.
        protocol: String,
        src: String,
        sport: String,
        dst: String,
        dport: String,
        /// How long: 1500ms, 30s, 5m, 2h, 1d (1 s to 30 days).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Kept with the block and shown to the operator.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// End a block made with `block` before its time.
    Unblock {
        id: u64,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Hand the router back: end the agent's resolver, remove its tunnels
    /// and firewall rules. Stop the agent first; stopping it alone leaves
    /// the router enforcing its config. The state directory stays.
    Uninstall {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides `state_dir` of the config file.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// List the blocks this router decided itself (local and detections).
    Blocks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[derive(Args)]
struct SocketArgs {
    /// The agent's control socket; default: the one of the agent's config
    /// file (`control_socket`, else `control.sock` in its `state_dir`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The config file the agent runs with (on OpenWrt, when this one does
    /// not exist, the one its init script writes).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Overrides `state_dir` of the config file, as given to `run`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Where `run` and the other commands read the settings by default.
const DEFAULT_CONFIG: &str = "/etc/isdf/agent.toml";
/// The config file OpenWrt's init script generates from UCI.
const OPENWRT_CONFIG: &str = "/var/etc/isdf-agent.toml";

impl SocketArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.socket {
            return Ok(path.clone());
        }
        let config = if !self.config.exists() && self.config == Path::new(DEFAULT_CONFIG) {
            Path::new(OPENWRT_CONFIG)
        } else {
            &self.config
        };
        if !config.exists() {
            bail!(
                "no agent config at {}: name the agent's with --config FILE, or its socket \
                 with --socket PATH",
                self.config.display()
            );
        }
        Ok(load(config, self.state_dir.clone())?.control_socket_path())
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TokenSource {
    /// The enrollment token (visible to other local users in the process
    /// list: prefer --token-file).
    #[arg(long)]
    token: Option<String>,
    /// A file holding the enrollment token.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn load(config: &Path, state_dir: Option<PathBuf>) -> anyhow::Result<Settings> {
    let mut settings = load_settings(config)?;
    if let Some(dir) = state_dir {
        settings.state_dir = dir;
    }
    Ok(settings)
}

fn main() -> anyhow::Result<()> {
    // A plain level from RUST_LOG (error, warn, info, debug, trace): per-module
    // filters would pull a regex engine into a binary meant for small flash.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    // Logs go to stderr: `enroll` prints only the device id on stdout.
    isdf_agent::sys::logging::init(level);
    match Cli::parse().command {
        Command::Run {
            config,
            state_dir,
            backend,
        } => {
            let mut settings = load(&config, state_dir)?;
            if let Some(choice) = backend {
                settings.backend = choice;
            }
            run(settings, &config)
        }
        Command::Enroll {
            config,
            token,
            state_dir,
        } => {
            let settings = load(&config, state_dir)?;
            let token = match (token.token, token.token_file) {
                (Some(token), _) => token,
                (None, Some(file)) => read_token(&file)?,
                (None, None) => unreachable!("clap requires one of --token and --token-file"),
            };
            if let Some(old) = StateDir::open(&settings.state_dir)?
                .identity()
                .ok()
                .flatten()
            {
                tracing::warn!(
                    device = old.device_id(),
                    "replacing the existing identity; restart a running agent to use the new one"
                );
            }
            let identity = runtime()?.block_on(enrollment::enroll(&settings, &token))?;
            println!("{}", identity.device_id());
            Ok(())
        }
        Command::Block {
            protocol,
            src,
            sport,
            dst,
            dport,
            duration,
            reason,
            socket,
        } => {
            let flow = control::parse_flow(&protocol, &src, &sport, &dst, &dport)
                .map_err(anyhow::Error::msg)?;
            let duration_ms = isdf_agent::router_blocks::parse_duration_ms(&duration)
                .map_err(anyhow::Error::msg)?;
            let request = Request::Block {
                flow,
                duration_ms,
                reason,
            };
            print_blocks(&ask(&socket, &request)?, false)
        }
        Command::Unblock { id, socket } => {
            ask(&socket, &Request::Unblock { id })?;
            println!("unblocked {id}");
            Ok(())
        }
        Command::Blocks { json, socket } => print_blocks(&ask(&socket, &Request::List {})?, json),
        Command::Uninstall { config, state_dir } => {
            let settings = load(&config, state_dir)?;
            isdf_agent::agent::uninstall(&settings)?;
            println!(
                "removed the agent's resolver, tunnels and rules; its state stays in {}",
                settings.state_dir.display()
            );
            Ok(())
        }
    }
}

/// Sends a request to the running agent; a refusal becomes the error.
fn ask(socket: &SocketArgs, request: &Request) -> anyhow::Result<control::Response> {
    let response = control::call(&socket.path()?, request)?;
    match &response.error {
        Some(e) => bail!("{}: {}", e.code, e.message),
        None => Ok(response),
    }
}

fn print_blocks(response: &control::Response, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&response.blocks)?);
        return Ok(());
    }
    for b in &response.blocks {
        let f = &b.flow;
        let left = (b.expires_at_ms - response.now_ms).max(0) as f64 / 1000.0;
        println!(
            "{:>6}  {:<9} {} {}:{} -> {}:{}  {left:.1}s left  {}",
            b.id,
            b.origin.as_str(),
            f.protocol.map_or("any", |p| p.name()),
            f.src,
            f.sport,
            f.dst,
            f.dport,
            b.reason
        );
    }
    Ok(())
}

fn run(settings: Settings, config: &Path) -> anyhow::Result<()> {
    let interfaces = backend::Interfaces {
        lan: settings.lan_interfaces.clone(),
        wan: settings.wan_interfaces.clone(),
    };
    let backend = backend::select(settings.backend, interfaces)?;
    let runtime = runtime()?;
    // Without an identity there is no device id to check the last good
    // config against, so there is nothing to restore before enrolling.
    let identity = match StateDir::open(&settings.state_dir)?.identity()? {
        Some(identity) => identity,
        None => match settings.enrollment_token_file.clone() {
            Some(file) => {
                tracing::info!(token_file = %file.display(), "no identity yet: enrolling");
                runtime.block_on(enrollment::enroll_with_token_file(&settings, &file))?
            }
            None => bail!(
                "this router is not enrolled (no identity in {}): run `isdf-agent enroll \
                 --config {} --token-file FILE` with the enrollment token from the operator, \
                 or set enrollment_token_file to enroll at start",
                settings.state_dir.display(),
                config.display()
            ),
        },
    };
    tracing::info!(
        backend = backend.name(),
        device = identity.device_id(),
        "starting"
    );
    let mut agent = Agent::new(settings, identity, backend)?;
    if let Err(e) = agent.restore_last_good() {
        // Keep whatever the kernel holds; the controller will send a
        // fresh config. Nothing is removed.
        tracing::error!(error = ?e, "could not re-enforce the last good config");
    }
    let stopped = runtime.block_on(agent.run(shutdown_signal()));
    // Fail-static: the rules, the sets and the managed dnsmasq keep
    // working; the next agent adopts them (`uninstall` takes them away).
    drop(agent);
    match stopped {
        Stopped::Shutdown => {
            tracing::info!("stopped; the firewall and the resolver stay as they are")
        }
        Stopped::ForUpgrade => tracing::info!(
            "exiting for the upgrade: the supervisor starts isdf-agent-launch, which runs the \
             new agent; the firewall and the resolver stay as they are"
        ),
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
}
