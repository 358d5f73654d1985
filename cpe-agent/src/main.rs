//! `isdf-agent`: command line entry point.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use isdf_agent::agent::Agent;
use isdf_agent::backend::{self, BackendChoice};
use isdf_agent::settings::Settings;

#[derive(Parser)]
#[command(name = "isdf-agent", version, about = "iSDF router agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the last good config, then follow the controller.
    Run {
        #[arg(long, default_value = "/etc/isdf/agent.toml")]
        config: PathBuf,
        /// Overrides `state_dir` of the config file.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Overrides `backend` of the config file.
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
}

fn main() -> anyhow::Result<()> {
    // A plain level from RUST_LOG (error, warn, info, debug, trace): per-module
    // filters would pull a regex engine into a binary meant for small flash.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt().with_max_level(level).init();
    match Cli::parse().command {
        Command::Run {
            config,
            state_dir,
            backend,
        } => {
            let mut settings = Settings::load(&config)?;
            if let Some(dir) = state_dir {
                settings.state_dir = dir;
            }
            if let Some(choice) = backend {
                settings.backend = choice;
            }
            let backend = backend::select(settings.backend)?;
            tracing::info!(backend = backend.name(), device = %settings.device_id, "starting");
            let mut agent = Agent::new(settings, backend)?;
            if let Err(e) = agent.restore_last_good() {
                // Keep whatever the kernel holds; the controller will send a
                // fresh config. Nothing is removed.
                tracing::error!(error = ?e, "could not re-enforce the last good config");
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(agent.run(shutdown_signal()));
            tracing::info!("stopped; the firewall stays as it is");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
