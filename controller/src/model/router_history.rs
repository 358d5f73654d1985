//! A router's history as its page charts it: each stored report's outcome,
//! and between two reports how fast its counters grew (per second): the
//! agent's blocked packets and bytes and failed polls, and each rule's
//! packets and bytes. Pure: reports in, intervals out.
//!
//! A counter found lower than in the report before restarted (the agent
//! restarted, or a ruleset replaced the kernel's counters): what it holds
//! now was counted within the interval, so that is its increase
//! (`AgentCounters::increase_since` for the agent's own).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use isdf_api::{Outcome, StatusReport};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReportPoint {
    pub at: DateTime<Utc>,
    pub sequence: i64,
    pub outcome: Outcome,
    pub enforced_version: Option<u64>,
}

/// How fast counters grew between two consecutive reports.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RateInterval {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// From the agent's counters; None when either report has none (an
    /// agent older than them).
    pub blocked_packets_per_second: Option<f64>,
    pub blocked_bytes_per_second: Option<f64>,
    /// Failed polls within the interval (a count, not a rate).
    pub polls_failed: Option<u64>,
    /// Each rule of the later report, by id.
    pub rules: BTreeMap<String, RuleRate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RuleRate {
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RouterHistory {
    /// Oldest first.
    pub reports: Vec<ReportPoint>,
    /// Between each two consecutive reports, oldest first.
    pub intervals: Vec<RateInterval>,
}

/// The history of `reports` (received at, report), in any order.
pub fn history(reports: &[(DateTime<Utc>, i64, &StatusReport)]) -> RouterHistory {
    let mut ordered: Vec<_> = reports.to_vec();
    ordered.sort_by_key(|(at, sequence, _)| (*sequence, *at));
    let points = ordered
        .iter()
        .map(|(at, sequence, report)| ReportPoint {
            at: *at,
            sequence: *sequence,
            outcome: report.outcome,
            enforced_version: report.enforced_version,
        })
        .collect();
    let intervals = ordered
        .windows(2)
        .filter_map(|pair| interval(pair[0], pair[1]))
        .collect();
    RouterHistory {
        reports: points,
        intervals,
    }
}

fn interval(
    (from, _, before): (DateTime<Utc>, i64, &StatusReport),
    (to, _, after): (DateTime<Utc>, i64, &StatusReport),
) -> Option<RateInterval> {
    let secs = (to - from).num_milliseconds() as f64 / 1000.0;
    if secs <= 0.0 {
        return None;
    }
    let per_second = |n: u64| n as f64 / secs;
    let agent = after
        .agent_counters
        .as_ref()
        .zip(before.agent_counters.as_ref())
        .map(|(now, then)| now.increase_since(Some(then)));
    let earlier: BTreeMap<&str, (u64, u64)> = before
        .counters
        .iter()
        .map(|c| (c.rule_id.as_str(), (c.packets, c.bytes)))
        .collect();
    let rules = after
        .counters
        .iter()
        .map(|c| {
            let (packets, bytes) = match earlier.get(c.rule_id.as_str()) {
                Some(&(p, b)) if c.packets >= p && c.bytes >= b => (c.packets - p, c.bytes - b),
                _ => (c.packets, c.bytes),
            };
            let rate = RuleRate {
                packets_per_second: per_second(packets),
                bytes_per_second: per_second(bytes),
            };
            (c.rule_id.clone(), rate)
        })
        .collect();
    Some(RateInterval {
        from,
        to,
        blocked_packets_per_second: agent.as_ref().map(|a| per_second(a.blocked_packets)),
        blocked_bytes_per_second: agent.as_ref().map(|a| per_second(a.blocked_bytes)),
        polls_failed: agent.as_ref().map(|a| a.polls_failed),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use isdf_api::{AgentCounters, RuleCounter};

    fn report(outcome: Outcome, started_at: i64, blocked: u64, rule_packets: u64) -> StatusReport {
        StatusReport {
            sequence: 0,
            enforced_version: Some(1),
            enforced_digest: None,
            outcome,
            attempted_version: Some(1),
            errors: vec![],
            counters: vec![RuleCounter {
                rule_id: "drop".into(),
                packets: rule_packets,
                bytes: rule_packets * 60,
            }],
            tunnels: vec![],
            backend: "nftables".into(),
            agent_version: "t".into(),
            agent_target: None,
            agent_counters: Some(AgentCounters {
                started_at,
                blocked_packets: blocked,
                blocked_bytes: blocked * 60,
                ..AgentCounters::default()
            }),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn counters_become_rates_between_reports_across_restarts() {
        let reports = [
            report(Outcome::Applied, 1, 100, 100),
            report(Outcome::Applied, 1, 400, 400),
            // Restarted: 50 since the start, all within the interval.
            report(Outcome::RolledBack, 2, 50, 50),
            // The same second again: no interval.
            report(Outcome::Applied, 2, 60, 60),
        ];
        let input: Vec<_> = [(at(0), 1), (at(100), 2), (at(110), 3), (at(110), 4)]
            .into_iter()
            .zip(&reports)
            .map(|((at, seq), r)| (at, seq, r))
            .rev()
            .collect();
        let h = history(&input);
        assert_eq!(h.reports.len(), 4);
        assert_eq!(h.reports[0].sequence, 1, "oldest first");
        assert_eq!(h.reports[2].outcome, Outcome::RolledBack);
        assert_eq!(h.intervals.len(), 2, "no interval of zero seconds");
        let first = &h.intervals[0];
        assert_eq!((first.from, first.to), (at(0), at(100)));
        assert_eq!(first.blocked_packets_per_second, Some(3.0));
        assert_eq!(first.rules["drop"].packets_per_second, 3.0);
        assert_eq!(first.rules["drop"].bytes_per_second, 180.0);
        let restarted = &h.intervals[1];
        assert_eq!(restarted.blocked_packets_per_second, Some(5.0));
        assert_eq!(restarted.rules["drop"].packets_per_second, 5.0);
    }

    #[test]
    fn an_older_agent_has_rule_rates_but_no_agent_rates() {
        let mut old = report(Outcome::Applied, 1, 0, 10);
        old.agent_counters = None;
        let new = report(Outcome::Applied, 1, 40, 30);
        let h = history(&[(at(0), 1, &old), (at(10), 2, &new)]);
        assert_eq!(h.intervals[0].blocked_packets_per_second, None);
        assert_eq!(h.intervals[0].polls_failed, None);
        assert_eq!(h.intervals[0].rules["drop"].packets_per_second, 2.0);
    }
}
