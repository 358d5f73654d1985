//! `isdfctl releases`: agent releases. `sign` makes a release manifest
//! offline with the release key (no controller involved: the key need not
//! be on any server); `upload` creates the release from that manifest and
//! uploads its binary; `list` shows them.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use isdf_api::release::{ReleaseManifest, RELEASE_PAYLOAD_TYPE};

use super::show_array;
use crate::cli::output;
use crate::cli::{CliError, Context};

const RELEASES: &str = "/api/v1/agent-releases";

pub const COLUMNS: &[output::Column] = &[
    ("ID", "/id"),
    ("VERSION", "/version"),
    ("TARGET", "/target"),
    ("SIZE", "/size"),
    ("UPLOADED", "/uploaded"),
    ("SHA256", "/sha256"),
];

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Sign a release manifest for a binary with the release key (offline:
    /// no controller is called). Prints the manifest envelope, or writes it
    /// to --out.
    Sign {
        /// The release key (PKCS#8 PEM; `release-key.pem` of the controller's
        /// first start, moved offline).
        #[arg(long)]
        key: PathBuf,
        /// The agent binary.
        #[arg(long)]
        binary: PathBuf,
        /// The version the binary reports (`isdf-agent --version`).
        #[arg(long)]
        agent_version: String,
        /// Its Rust target triple, e.g. `mips-unknown-linux-musl`.
        #[arg(long)]
        target: String,
        /// Write the manifest envelope here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create a release from a signed manifest and upload its binary.
    Upload {
        /// The manifest envelope `releases sign` wrote.
        #[arg(long)]
        manifest: PathBuf,
        /// The binary it names.
        #[arg(long)]
        binary: PathBuf,
    },
    /// The releases, newest first.
    List,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("reading {}: {e}", path.display())))
}

pub(super) fn releases(context: &Context, command: ReleaseCommand) -> Result<u8, CliError> {
    match command {
        ReleaseCommand::Sign {
            key,
            binary,
            agent_version,
            target,
            out,
        } => {
            let key = crate::trust::roots::read_key(&key)
                .map_err(|e| CliError::Usage(format!("{e:#}")))?;
            let bytes = read(&binary)?;
            let manifest = ReleaseManifest {
                version: agent_version,
                target,
                sha256: hex::encode(Sha256::digest(&bytes)),
                size: bytes.len() as u64,
            };
            manifest
                .check()
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let payload = serde_json::to_vec(&manifest).expect("a manifest serialises");
            let envelope = isdf_api::seal(RELEASE_PAYLOAD_TYPE, &payload, &key).to_json();
            match out {
                Some(path) => std::fs::write(&path, &envelope)
                    .map_err(|e| CliError::Usage(format!("writing {}: {e}", path.display())))?,
                None => println!("{}", String::from_utf8_lossy(&envelope)),
            }
            Ok(0)
        }
        ReleaseCommand::Upload { manifest, binary } => {
            let envelope: serde_json::Value = serde_json::from_slice(&read(&manifest)?)
                .map_err(|e| CliError::Usage(format!("{}: {e}", manifest.display())))?;
            let bytes = read(&binary)?;
            let client = &context.client;
            let created =
                client.send(Method::POST, RELEASES, Some(&json!({"manifest": envelope})))?;
            let id = created["id"].as_str().unwrap_or_default().to_owned();
            let uploaded = client.upload(&format!("{RELEASES}/{id}/binary"), bytes)?;
            output::print_document(context.format, &uploaded)?;
            Ok(0)
        }
        ReleaseCommand::List => show_array(context, RELEASES, &[], COLUMNS),
    }
}
