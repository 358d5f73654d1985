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
    /// The Rust target triple the agent was built for (absent from agents
    /// older than releases): only releases for it are given to the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_target: Option<String>,
    /// What the agent counted since it started (absent from agents older
    /// than these counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_counters: Option<AgentCounters>,
}

/// What the agent counted since it started: counters only, which never go
/// down while it runs; a new `started_at` says they restarted from zero.
/// Fields it does not know are ignored and missing ones are 0, so an agent
/// that counts more (or less) is still understood: unlike the report
/// around it, this part is open to additions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentCounters {
    /// When the agent process started, Unix seconds by the router's clock.
    pub started_at: i64,
    /// Long polls of the controller that failed (network, TLS, HTTP).
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub polls_failed: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub configs_applied: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub configs_rolled_back: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub configs_rejected: u64,
    /// Status reports the controller did not take (this one not counted).
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub reports_failed: u64,
    /// Router events (blocks decided on the router) the controller stored.
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub events_delivered: u64,
    /// Flows the router's classifier recognised (e.g. BitTorrent).
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub detections: u64,
    /// Packets and bytes the config's drop and reject rules stopped, over
    /// every ruleset enforced since the start (a replaced ruleset counts
    /// from zero in the kernel; the agent carries the earlier counts).
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub blocked_packets: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 18_446_744_073_709_551_615_u64))]
    pub blocked_bytes: u64,
}

impl AgentCounters {
    /// How much each counter grew since `previous` (the same agent's last
    /// stored counters): all of it after a restart (another `started_at`)
    /// or when there is nothing before; a counter found lower than before
    /// restarted too.
    pub fn increase_since(&self, previous: Option<&AgentCounters>) -> AgentCounters {
        let same_run = previous.filter(|p| p.started_at == self.started_at);
        let grew = |now: u64, before: fn(&AgentCounters) -> u64| match same_run {
            Some(p) if now >= before(p) => now - before(p),
            _ => now,
        };
        AgentCounters {
            started_at: self.started_at,
            polls_failed: grew(self.polls_failed, |c| c.polls_failed),
            configs_applied: grew(self.configs_applied, |c| c.configs_applied),
            configs_rolled_back: grew(self.configs_rolled_back, |c| c.configs_rolled_back),
            configs_rejected: grew(self.configs_rejected, |c| c.configs_rejected),
            reports_failed: grew(self.reports_failed, |c| c.reports_failed),
            events_delivered: grew(self.events_delivered, |c| c.events_delivered),
            detections: grew(self.detections, |c| c.detections),
            blocked_packets: grew(self.blocked_packets, |c| c.blocked_packets),
            blocked_bytes: grew(self.blocked_bytes, |c| c.blocked_bytes),
        }
    }
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
            .chain(self.agent_target.iter())
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

    #[test]
    fn agent_counters_are_open_to_additions_and_default_to_zero() {
        let mut json = serde_json::to_value(report()).unwrap();
        assert!(json.get("agent_counters").is_none(), "absent when none");
        json["agent_counters"] =
            serde_json::json!({"started_at": 5, "blocked_packets": 9, "counted_later": 1});
        let parsed: StatusReport = serde_json::from_value(json).unwrap();
        let counters = parsed.agent_counters.unwrap();
        assert_eq!(
            (
                counters.started_at,
                counters.blocked_packets,
                counters.polls_failed
            ),
            (5, 9, 0)
        );
    }

    #[test]
    fn the_increase_of_agent_counters_survives_restarts() {
        let at = |started_at, blocked_packets, polls_failed| AgentCounters {
            started_at,
            blocked_packets,
            polls_failed,
            ..AgentCounters::default()
        };
        // Nothing before: all of it.
        assert_eq!(at(10, 7, 1).increase_since(None), at(10, 7, 1));
        // The same run: the difference.
        assert_eq!(
            at(10, 9, 1).increase_since(Some(&at(10, 7, 1))),
            at(10, 2, 0)
        );
        // Restarted (another start): all of it, even below the last value.
        assert_eq!(
            at(20, 3, 0).increase_since(Some(&at(10, 9, 1))),
            at(20, 3, 0)
        );
        // Lower within the same run: counted as restarted, never negative.
        assert_eq!(
            at(10, 4, 1).increase_since(Some(&at(10, 9, 1))),
            at(10, 4, 0)
        );
    }
}
