//! What the routers counted themselves, summed over the fleet: each status
//! report carries the agent's counters since it started
//! (`isdf_api::AgentCounters`); the replica that stores a report adds how
//! much they grew since the router's previous report (all of them after a
//! restart). Each replica counts the reports it stored, so the fleet's rate
//! is `sum(rate(...))` over replicas, without a scan of the routers' rows.

use isdf_api::AgentCounters;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// The fleet's sums of the agents' own counters.
#[derive(Clone, Default)]
pub struct RouterCounters {
    blocked_packets: Counter,
    blocked_bytes: Counter,
    detections: Counter,
    polls_failed: Counter,
    reports_failed: Counter,
    agent_starts: Counter,
}

impl RouterCounters {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let counters = RouterCounters::default();
        let families: [(&str, &str, &Counter); 6] = [
            (
                "router_blocked_packets",
                "Packets the routers' drop and reject rules stopped (from their reports)",
                &counters.blocked_packets,
            ),
            (
                "router_blocked_bytes",
                "Bytes the routers' drop and reject rules stopped (from their reports)",
                &counters.blocked_bytes,
            ),
            (
                "router_detections",
                "Flows the routers' classifiers recognised (from their reports)",
                &counters.detections,
            ),
            (
                "router_polls_failed",
                "Long polls the routers saw fail (from their reports)",
                &counters.polls_failed,
            ),
            (
                "router_reports_failed",
                "Status reports the routers could not deliver (from their later reports)",
                &counters.reports_failed,
            ),
            (
                "router_agent_starts",
                "Agent starts the routers reported (a report with a new start time)",
                &counters.agent_starts,
            ),
        ];
        for (name, help, counter) in families {
            registry.register(name, help, counter.clone());
        }
        counters
    }

    /// Adds what one router's counters grew by since its previous stored
    /// report (`previous`: its counters there, if it carried any).
    pub fn add(&self, now: &AgentCounters, previous: Option<&AgentCounters>) {
        let grew = now.increase_since(previous);
        self.blocked_packets.inc_by(grew.blocked_packets);
        self.blocked_bytes.inc_by(grew.blocked_bytes);
        self.detections.inc_by(grew.detections);
        self.polls_failed.inc_by(grew.polls_failed);
        self.reports_failed.inc_by(grew.reports_failed);
        if previous.is_none_or(|p| p.started_at != now.started_at) {
            self.agent_starts.inc();
        }
    }
}
