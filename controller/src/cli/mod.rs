//! `isdfctl`, the operator CLI: every operator API call as a command, `get`
//! with table/JSON/YAML output, declarative `apply -f`, and `rollout status
//! --watch`.
//!
//! It talks to the controller only through the REST API under `/api/v1`
//! (**the CLI reads no database and no controller file**); it shares the
//! crate for the API's parsers (selectors, LAN prefixes, site specs), so
//! `apply` compares a file with the server in the server's own normal form.

pub mod apply;
pub mod client;
pub mod commands;
pub mod output;
pub mod resources;
pub mod rollout;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use self::client::{Client, Token};
use self::output::Format;

/// The operator CLI of iSDF.
#[derive(Debug, Parser)]
#[command(
    name = "isdfctl",
    version,
    about = "iSDF operator CLI: every operator API call, `get`, `apply -f`, `rollout status --watch`",
    propagate_version = true
)]
pub struct Cli {
    /// URL of the controller's operator API (printed by the controller at start).
    #[arg(
        long,
        env = "ISDF_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Global options"
    )]
    pub server: String,
    /// Operator token (`isdf_op_...`), sent as a bearer token; the controller
    /// prints the first one at its first start, admins make more with
    /// `isdfctl operator-tokens create`.
    #[arg(
        long,
        env = "ISDF_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub token: Option<String>,
    /// A file holding the operator token (wins over --token and ISDF_TOKEN).
    #[arg(
        long,
        env = "ISDF_TOKEN_FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for an HTTPS operator API (only these
    /// are trusted).
    #[arg(
        long,
        env = "ISDF_CA_FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub ca_file: Option<PathBuf>,
    /// Output format: tables for people, the API's documents for programs.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "table",
        global = true,
        help_heading = "Global options"
    )]
    pub output: Format,
    #[command(subcommand)]
    pub command: commands::Command,
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The API's stable error body.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The controller could not be reached or answered garbage.
    Network {
        url: String,
        message: String,
    },
    /// Bad arguments or input file (exit code 2).
    Usage(String),
    Other(String),
    /// An error and what to do about it (printed as `hint: ...` lines).
    Hinted {
        error: Box<CliError>,
        hint: String,
    },
    /// An error at a place: `FILE, document N (line L) Kind/name`.
    At {
        place: String,
        error: Box<CliError>,
    },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Hinted { error, .. } | CliError::At { error, .. } => error.exit_code(),
            _ => 1,
        }
    }

    /// The API error code, if it is one (through a hint).
    pub fn code(&self) -> Option<&str> {
        match self {
            CliError::Api { code, .. } => Some(code),
            CliError::Hinted { error, .. } | CliError::At { error, .. } => error.code(),
            _ => None,
        }
    }

    /// The same error with a hint of what to do.
    pub fn hint(self, hint: impl Into<String>) -> Self {
        CliError::Hinted {
            error: Box::new(self),
            hint: hint.into(),
        }
    }

    /// An API-style error made here (`not_found`, `ambiguous`...).
    pub fn api(code: &str, message: impl Into<String>) -> Self {
        CliError::Api {
            status: 0,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Api { code, message, .. } => write!(f, "{code}: {message}"),
            CliError::Network { url, message } => write!(f, "{url}: {message}"),
            CliError::Usage(message) | CliError::Other(message) => f.write_str(message),
            CliError::At { place, error } => write!(f, "{place}: {error}"),
            CliError::Hinted { error, hint } => {
                write!(f, "{error}")?;
                for line in hint.lines() {
                    write!(f, "\nhint: {line}")?;
                }
                Ok(())
            }
        }
    }
}

/// What a command hands to its handler.
pub struct Context {
    pub client: Client,
    pub format: Format,
}

/// The binary's entry point: parses the arguments (exit code 2 on a usage
/// error), runs the command, prints `error: ...` on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs a parsed command line; the exit code on success (0, or a rollout's
/// state for `rollout status --watch`).
pub fn run(cli: Cli) -> Result<u8, CliError> {
    let token = match &cli.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(CliError::Usage(format!(
                    "--token-file {} is empty; it should hold an operator token (isdf_op_...)",
                    path.display()
                )));
            }
            Some(Token {
                secret: token.to_owned(),
                source: format!("--token-file {}", path.display()),
            })
        }
        None => cli.token.clone().filter(|t| !t.trim().is_empty()).map(|t| {
            // clap does not say whether the flag or the variable gave it.
            let from_env = std::env::var("ISDF_TOKEN").is_ok_and(|e| e == t);
            Token {
                secret: t.trim().to_owned(),
                source: if from_env { "ISDF_TOKEN" } else { "--token" }.to_owned(),
            }
        }),
    };
    let ca = cli
        .ca_file
        .as_ref()
        .map(|path| {
            std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", path.display())))
        })
        .transpose()?;
    let context = Context {
        client: Client::new(&cli.server, token, ca.as_deref())?,
        format: cli.output,
    };
    commands::dispatch(&context, cli.command)
}
