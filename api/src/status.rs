//! The status report an agent posts after every attempt to enforce a config.

use serde::{Deserialize, Serialize};

/// What happened to the last config the agent tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl Outcome {
    /// The outcome as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::RolledBack => "rolled_back",
            Outcome::Rejected => "rejected",
            Outcome::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuleCounter {
    pub rule_id: String,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub packets: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusReport {
    /// Strictly increasing per device; the controller ignores older reports.
    #[cfg_attr(feature = "openapi", schema(maximum = 9_223_372_036_854_775_807_i64))]
    pub sequence: u64,
    /// Version actually enforced in the kernel (None before the first config).
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub enforced_version: Option<u64>,
    /// [`crate::Firewall::digest`] of the enforced config.
    pub enforced_digest: Option<String>,
    pub outcome: Outcome,
    /// The version the outcome is about (e.g. the rejected one).
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
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
    /// Checks a report as the controller receives it, before it is stored:
    /// a sequence PostgreSQL can hold, and no NUL character in any text,
    /// which PostgreSQL stores neither in `jsonb` nor in `text` (the fuzz
    /// target `status_report` found it: such a report was a 500, sent again
    /// and again).
    pub fn check(&self) -> Result<(), String> {
        if self.sequence > i64::MAX as u64 {
            return Err("sequence is too large".into());
        }
        let texts = self
            .enforced_digest
            .iter()
            .chain(&self.errors)
            .chain(self.counters.iter().map(|c| &c.rule_id))
            .chain(self.tunnels.iter().map(|t| &t.interface))
            .chain([&self.backend, &self.agent_version]);
        for text in texts {
            if text.contains('\0') {
                return Err(format!("{text:?} holds a NUL character"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "sequence": 7, "enforced_version": 3, "enforced_digest": "ab", "outcome": "applied",
            "attempted_version": 3, "errors": ["nft: line 1"],
            "counters": [{"rule_id": "web", "packets": 1, "bytes": 60}],
            "backend": "nftables", "agent_version": "0.1.0"}))
        .unwrap()
    }

    #[test]
    fn a_report_postgresql_cannot_store_is_refused() {
        assert_eq!(report().check(), Ok(()));
        // Found by the fuzz target `status_report`: a NUL anywhere was a 500.
        let mut nul = report();
        nul.errors.push("nft: \0".into());
        assert!(nul.check().is_err());
        let mut nul = report();
        nul.counters[0].rule_id = "w\0".into();
        assert!(nul.check().is_err());
        let mut nul = report();
        nul.agent_version = "\0".into();
        assert!(nul.check().is_err());
        let mut big = report();
        big.sequence = i64::MAX as u64 + 1;
        assert!(big.check().is_err());
    }
}
