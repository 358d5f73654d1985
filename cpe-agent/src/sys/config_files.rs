//! Reading the agent's own files: its config and its enrollment token. Kept
//! apart from `settings.rs`, which only parses, so the settings the pure
//! planners read stay pure.

use std::path::Path;

use anyhow::{bail, Context};

use super::settings::Settings;

/// The agent config at `path`.
pub fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent config {}", path.display()))?;
    Settings::parse(&text).with_context(|| format!("agent config {}", path.display()))
}

/// The enrollment token from `enrollment_token_file`, if that is set.
pub fn enrollment_token(settings: &Settings) -> Option<anyhow::Result<String>> {
    let path = settings.enrollment_token_file.as_ref()?;
    Some(read_token(path))
}

/// Reads a token file (surrounding white space removed).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading enrollment token {}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("enrollment token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}
