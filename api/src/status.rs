//! The status report an agent posts after every attempt to enforce a config.

use serde::{Deserialize, Serialize};

/// What happened to the last config the agent tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The config is enforced and the kernel state was checked.
    Applied,
    /// Applying failed; the previous ruleset was restored.
    RolledBack,
    /// The envelope was refused before anything was applied.
    Rejected,
    /// The enforced config has expired and no newer one could be fetched;
    /// it stays enforced (losing the controller never opens the firewall).
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCounter {
    pub rule_id: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// Strictly increasing per device; the controller ignores older reports.
    pub sequence: u64,
    /// Version actually enforced in the kernel (None before the first config).
    pub enforced_version: Option<u64>,
    /// [`crate::Firewall::digest`] of the enforced config.
    pub enforced_digest: Option<String>,
    pub outcome: Outcome,
    /// The version the outcome is about (e.g. the rejected one).
    pub attempted_version: Option<u64>,
    /// Stable codes and messages, e.g. `bad_signature: ...`.
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub counters: Vec<RuleCounter>,
    /// The tunnels the router runs, as the kernel (or wireguard-go) reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnels: Vec<crate::wireguard::TunnelStatus>,
    /// Firewall backend in use (`nftables` or `iptables`).
    pub backend: String,
    pub agent_version: String,
}

impl StatusReport {
    /// Checks a report as the controller receives it, before it is stored.
    pub fn check(&self) -> Result<(), String> {
        if self.sequence > i64::MAX as u64 {
            return Err("sequence is too large".into());
        }
        Ok(())
    }
}
