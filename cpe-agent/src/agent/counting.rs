//! What the agent counts about itself since it started: sent in every
//! status report (`StatusReport::agent_counters`, no connection of its own)
//! and, when `metrics_textfile` is set, written for node-exporter's textfile
//! collector (OpenWrt's prometheus-node-exporter-lua reads
//! `/var/prometheus/*.prom`) for operators who scrape routers directly.
//!
//! Blocked packets and bytes come from the kernel's counters of the config's
//! drop and reject rules. A replaced ruleset counts from zero again, and a
//! rule that is gone takes its counts with it, so the agent keeps what each
//! rule counted before: a rule found lower than at the last look, or gone,
//! restarted, and its last counts are carried. The kernel is looked at for
//! every report and just before every apply, so little is lost between.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use isdf_api::{Action, AgentCounters, Firewall, Outcome, RuleCounter, StatusReport};

/// The agent's counters and what it needs to keep blocked counts monotonic.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) counters: AgentCounters,
    /// The ids of the enforced ruleset's drop and reject rules.
    blocking: BTreeSet<String>,
    /// Each blocking rule's (packets, bytes) at the last look.
    last_seen: BTreeMap<String, (u64, u64)>,
    /// What rules counted before their counters restarted or they went.
    carried: (u64, u64),
}

impl Tally {
    pub(super) fn new(started_at: i64) -> Self {
        Tally {
            counters: AgentCounters {
                started_at,
                ..AgentCounters::default()
            },
            ..Tally::default()
        }
    }

    /// Counts one more config outcome.
    pub(super) fn outcome(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Applied => &mut self.counters.configs_applied,
            Outcome::RolledBack => &mut self.counters.configs_rolled_back,
            Outcome::Rejected => &mut self.counters.configs_rejected,
            Outcome::Stale => return,
        };
        *counter = counter.saturating_add(1);
    }

    /// Whether the enforced ruleset has rules whose counts are blocked
    /// traffic (else reading the kernel's counters before an apply is
    /// pointless).
    pub(super) fn counts_blocks(&self) -> bool {
        !self.blocking.is_empty()
    }

    /// `firewall` (the whole ruleset, the router's own blocks merged in)
    /// replaced the kernel's ruleset, whose counters start from zero: what
    /// was seen last is carried (the caller looked just before).
    pub(super) fn replaced(&mut self, firewall: &Firewall) {
        for (packets, bytes) in std::mem::take(&mut self.last_seen).into_values() {
            self.carried.0 = self.carried.0.saturating_add(packets);
            self.carried.1 = self.carried.1.saturating_add(bytes);
        }
        self.blocking = firewall
            .rules
            .iter()
            .filter(|rule| matches!(rule.action, Action::Drop | Action::Reject))
            .map(|rule| rule.id.as_str().to_owned())
            .collect();
    }

    /// Takes the kernel's counters of the blocking rules into the blocked
    /// totals. A rule found lower than at the last look, or gone, restarted
    /// without `replaced` (a ruleset restored by hand, say): its last
    /// counts are carried.
    pub(super) fn observe_blocked(&mut self, counters: &[RuleCounter]) {
        let now: BTreeMap<String, (u64, u64)> = counters
            .iter()
            .filter(|c| self.blocking.contains(&c.rule_id))
            .map(|c| (c.rule_id.clone(), (c.packets, c.bytes)))
            .collect();
        for (rule, &(packets, bytes)) in &self.last_seen {
            let restarted = now.get(rule).is_none_or(|&(p, b)| p < packets || b < bytes);
            if restarted {
                self.carried.0 = self.carried.0.saturating_add(packets);
                self.carried.1 = self.carried.1.saturating_add(bytes);
            }
        }
        let (packets, bytes) = now.values().fold(self.carried, |(p, b), &(rp, rb)| {
            (p.saturating_add(rp), b.saturating_add(rb))
        });
        self.counters.blocked_packets = packets;
        self.counters.blocked_bytes = bytes;
        self.last_seen = now;
    }
}

/// The node-exporter textfile of a report: the agent's counters, its rule
/// counters by rule, and what it enforces, in the Prometheus text format
/// (`promtool check metrics` accepts it; the agent's own e2e test runs it).
/// Per router, so labelled by rule; the controller's metrics never are.
pub(crate) fn textfile(report: &StatusReport, config_expires_at: Option<i64>) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: u64| vec![(String::new(), value.to_string())];
    family(
        "isdf_agent_info",
        "gauge",
        "The agent's version and firewall backend (always 1).",
        &[(
            format!(
                "{{version=\"{}\",backend=\"{}\"}}",
                escape(&report.agent_version),
                escape(&report.backend)
            ),
            "1".into(),
        )],
    );
    let outcomes = [
        Outcome::Applied,
        Outcome::RolledBack,
        Outcome::Rejected,
        Outcome::Stale,
    ];
    family(
        "isdf_agent_last_outcome",
        "gauge",
        "1 for the outcome of the last config attempt, 0 for the others.",
        &outcomes
            .map(|o| {
                let value = u8::from(o == report.outcome);
                (format!("{{outcome=\"{}\"}}", o.as_str()), value.to_string())
            })
            .into_iter()
            .collect::<Vec<_>>(),
    );
    if let Some(version) = report.enforced_version {
        family(
            "isdf_agent_enforced_config_version",
            "gauge",
            "The version of the config the kernel enforces.",
            &one(version),
        );
    }
    if let Some(expires_at) = config_expires_at {
        family(
            "isdf_agent_config_expiry_timestamp_seconds",
            "gauge",
            "When the enforced config expires unless a newer one comes.",
            &[(String::new(), expires_at.to_string())],
        );
    }
    family(
        "isdf_agent_tunnels",
        "gauge",
        "WireGuard tunnels the router runs.",
        &one(report.tunnels.len() as u64),
    );
    if let Some(c) = &report.agent_counters {
        family(
            "isdf_agent_start_time_seconds",
            "gauge",
            "When the agent started, Unix seconds.",
            &[(String::new(), c.started_at.to_string())],
        );
        let counters: [(&str, &str, u64); 9] = [
            (
                "configs_applied",
                "Configs applied and checked in the kernel.",
                c.configs_applied,
            ),
            (
                "polls_failed",
                "Long polls of the controller that failed.",
                c.polls_failed,
            ),
            (
                "reports_failed",
                "Status reports the controller did not take.",
                c.reports_failed,
            ),
            (
                "router_events_delivered",
                "Router events the controller stored.",
                c.events_delivered,
            ),
            (
                "detections",
                "Flows the classifier recognised.",
                c.detections,
            ),
            (
                "blocked_packets",
                "Packets the config's drop and reject rules stopped.",
                c.blocked_packets,
            ),
            (
                "blocked_bytes",
                "Bytes the config's drop and reject rules stopped.",
                c.blocked_bytes,
            ),
            (
                "configs_rolled_back",
                "Configs that failed to apply and were rolled back.",
                c.configs_rolled_back,
            ),
            (
                "configs_rejected",
                "Configs refused before anything was applied.",
                c.configs_rejected,
            ),
        ];
        for (name, help, value) in counters {
            family(
                &format!("isdf_agent_{name}_total"),
                "counter",
                help,
                &one(value),
            );
        }
    }
    for (name, help, value) in [
        (
            "packets",
            "Packets each config rule matched (from zero when a ruleset replaces it).",
            (|c: &RuleCounter| c.packets) as fn(&RuleCounter) -> u64,
        ),
        (
            "bytes",
            "Bytes each config rule matched (from zero when a ruleset replaces it).",
            |c: &RuleCounter| c.bytes,
        ),
    ] {
        let samples: Vec<_> = report
            .counters
            .iter()
            .map(|c| {
                (
                    format!("{{rule=\"{}\"}}", escape(&c.rule_id)),
                    value(c).to_string(),
                )
            })
            .collect();
        family(
            &format!("isdf_agent_rule_{name}_total"),
            "counter",
            help,
            &samples,
        );
    }
    out
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall() -> Firewall {
        serde_json::from_value(serde_json::json!({"rules": [
            {"id": "drop-a", "chain": "forward", "match": {}, "action": "drop"},
            {"id": "reject-b", "chain": "forward", "match": {}, "action": "reject"},
            {"id": "count-c", "chain": "forward", "match": {}, "action": "count"}]}))
        .unwrap()
    }

    fn counter(rule_id: &str, packets: u64) -> RuleCounter {
        RuleCounter {
            rule_id: rule_id.into(),
            packets,
            bytes: packets * 100,
        }
    }

    #[test]
    fn blocked_totals_only_grow_across_replaced_rulesets() {
        let mut tally = Tally::new(1);
        assert!(!tally.counts_blocks());
        tally.replaced(&firewall());
        assert!(tally.counts_blocks());
        tally.observe_blocked(&[
            counter("drop-a", 5),
            counter("reject-b", 2),
            counter("count-c", 50),
        ]);
        assert_eq!(
            (tally.counters.blocked_packets, tally.counters.blocked_bytes),
            (7, 700),
            "count rules are not blocks"
        );
        tally.observe_blocked(&[counter("drop-a", 8), counter("reject-b", 2)]);
        assert_eq!(tally.counters.blocked_packets, 10);
        // Replaced by the agent: what was seen is carried even if the new
        // ruleset counts past it before the next look.
        tally.replaced(&firewall());
        tally.observe_blocked(&[counter("drop-a", 9), counter("reject-b", 3)]);
        assert_eq!(tally.counters.blocked_packets, 22, "10 carried, 12 new");
        // Restarted behind the agent's back: drop-a lower, reject-b gone.
        tally.observe_blocked(&[counter("drop-a", 1)]);
        assert_eq!(tally.counters.blocked_packets, 23, "22 carried, 1 new");
        tally.observe_blocked(&[counter("drop-a", 4), counter("reject-b", 1)]);
        assert_eq!(tally.counters.blocked_packets, 27);
        assert_eq!(tally.counters.blocked_bytes, 2700);
    }

    #[test]
    fn outcomes_are_counted_by_kind() {
        let mut tally = Tally::new(1);
        for outcome in [
            Outcome::Applied,
            Outcome::Applied,
            Outcome::RolledBack,
            Outcome::Rejected,
            Outcome::Stale,
        ] {
            tally.outcome(outcome);
        }
        let c = &tally.counters;
        assert_eq!(
            (c.configs_applied, c.configs_rolled_back, c.configs_rejected),
            (2, 1, 1)
        );
    }

    #[test]
    fn the_textfile_holds_every_counter_and_escapes_labels() {
        let report = StatusReport {
            sequence: 3,
            enforced_version: Some(4),
            enforced_digest: None,
            outcome: Outcome::Applied,
            attempted_version: Some(4),
            errors: vec![],
            counters: vec![counter("drop-a", 5), counter("we\"ird\\", 1)],
            tunnels: vec![],
            backend: "nftables".into(),
            agent_version: "0.1.0".into(),
            agent_target: None,
            agent_counters: Some(AgentCounters {
                started_at: 1_700_000_000,
                blocked_packets: 5,
                ..AgentCounters::default()
            }),
        };
        let text = textfile(&report, Some(1_700_086_400));
        insta::assert_snapshot!(text);
    }
}
