//! Agent configuration: a TOML file (written by the OpenWrt init script from
//! UCI, or by hand) plus command-line overrides.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::backend::BackendChoice;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Device API base URL, e.g. `https://controller.example.net:8443`.
    pub controller_url: String,
    /// This router's device id.
    pub device_id: String,
    /// File holding the per-device token.
    pub device_token_file: PathBuf,
    /// The controller CA (PEM): the only root this agent trusts.
    pub ca_cert: PathBuf,
    /// Ed25519 public keys (hex or base64) whose config signatures are accepted.
    pub signing_public_keys: Vec<String>,
    pub state_dir: PathBuf,
    #[serde(default = "default_backend")]
    pub backend: BackendChoice,
    /// How long one long poll waits for a change.
    #[serde(default = "default_poll_wait")]
    pub poll_wait_secs: u64,
    /// Upper bound of the retry backoff after errors.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// After applying, check the controller is still reachable, else roll back.
    #[serde(default = "default_true")]
    pub wan_check: bool,
    /// Seconds between status heartbeats when nothing changes.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

fn default_backend() -> BackendChoice {
    BackendChoice::Auto
}
fn default_poll_wait() -> u64 {
    30
}
fn default_max_backoff() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_heartbeat() -> u64 {
    300
}

impl Settings {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading agent config {}", path.display()))?;
        let settings: Settings = toml::from_str(&text)
            .with_context(|| format!("parsing agent config {}", path.display()))?;
        if settings.signing_public_keys.is_empty() {
            anyhow::bail!(
                "{}: signing_public_keys is empty; the agent would trust nothing",
                path.display()
            );
        }
        Ok(settings)
    }

    pub fn device_token(&self) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(&self.device_token_file).with_context(|| {
            format!("reading device token {}", self.device_token_file.display())
        })?;
        Ok(token.trim().to_owned())
    }

    pub fn trusted_keys(&self) -> anyhow::Result<isdf_api::TrustedKeys> {
        let keys = self
            .signing_public_keys
            .iter()
            .map(|k| isdf_api::TrustedKeys::parse_public_key(k).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("signing_public_keys")?;
        Ok(isdf_api::TrustedKeys::new(keys))
    }
}
