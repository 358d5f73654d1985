//! What the controller tells Prometheus: `GET /metrics` on the operator
//! listener (any operator token, as every read), in the Prometheus text
//! format (0.0.4), names after the Prometheus conventions (`isdf_` prefix,
//! base units, `_total` counters).
//!
//! One [`Metrics`] per controller, held by the handlers' state: a registry
//! value, not a process global, so every controller a test starts keeps its
//! own. Labels are typed and bounded: listeners, route templates (never a
//! path with an id in it), methods, status codes and the error codes the
//! code defines; nothing per router. What is counted where it happens is
//! here and in `http.rs` (every request of every listener); what is a
//! state of the fleet (routers by health and agent version, rollouts) is
//! read from the database at scrape time, at most every
//! [`fleet::REFRESH`] (`fleet.rs`).

pub mod fleet;
pub mod http;
pub mod routers;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Seconds: from a millisecond to a minute (a long poll waits up to 30 s).
pub(super) const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

/// Seconds: a recompile of one router takes about a millisecond, of a whole
/// fleet minutes.
const RECOMPILE_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: &'static str,
    pub route: &'static str,
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: &'static str,
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub listener: &'static str,
    pub route: &'static str,
    /// The stable error code of the answer (`bad_signature`, ...).
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `block` or `unblock`.
    pub kind: &'static str,
    /// `detection` (the router's classifier) or `local` (a program on it).
    pub origin: &'static str,
    /// A detection's rule (`mse_handshake`, `utp_syn`, ...); `local` blocks
    /// carry free text, counted as `other`.
    pub rule: &'static str,
}

/// Detection rules counted one by one; past this many (a router reporting
/// made-up rules) the rest count as `other`.
pub const MAX_RULES: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// Answers and latencies by route (`http.rs`).
    pub routes: Arc<http::RouteTable>,
    pub errors: Family<ErrorLabels, Counter>,
    pub database_errors: Family<ListenerLabels, Counter>,
    pub status_reports: Family<OutcomeLabels, Counter>,
    pub router_events: Family<EventLabels, Counter>,
    /// The detection rules seen, as label values (at most [`MAX_RULES`]).
    rules: std::sync::Mutex<Vec<&'static str>>,
    pub configs_compiled: Counter,
    pub configs_signed: Counter,
    pub recompile_seconds: Histogram,
    /// The leader's lookups of the pay-per-site catalog's names, by result
    /// (`answered`, `failed`).
    pub site_lookups: Family<ResultLabels, Counter>,
    /// Scrape-time values (`fleet.rs`).
    pub fleet: fleet::FleetGauges,
    /// The routers' own counters, summed (`routers.rs`).
    pub routers: routers::RouterCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("isdf");
        let routes = Arc::new(http::RouteTable::default());
        registry.register_collector(Box::new(routes.clone()));
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "http_errors",
            "Error answers by listener, route and stable error code: refusals of the \
             device API and of enrollment among them",
            errors.clone(),
        );
        let database_errors = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "database_errors",
            "Requests that failed on a database error",
            database_errors.clone(),
        );
        let status_reports = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "status_reports",
            "Status reports stored, by the outcome the router reported",
            status_reports.clone(),
        );
        let router_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "router_events",
            "Events routers reported (blocks their classifier or local programs made and \
             ended), by kind, origin and detection rule: BitTorrent detections among them",
            router_events.clone(),
        );
        let configs_compiled = Counter::default();
        registry.register(
            "configs_compiled",
            "Router configs compiled (a recompile of N routers counts N)",
            configs_compiled.clone(),
        );
        let configs_signed = Counter::default();
        registry.register(
            "configs_signed",
            "Router configs signed: the compiled ones that changed or were re-issued (a dry run signs too)",
            configs_signed.clone(),
        );
        let recompile_seconds = Histogram::new(RECOMPILE_BUCKETS);
        registry.register_with_unit(
            "recompile_duration",
            "Time one recompile took, from loading its inputs to storing the signed configs",
            Unit::Seconds,
            recompile_seconds.clone(),
        );
        let site_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "site_lookups",
            "The leader's lookups of the pay-per-site catalog's names (whose answers routers \
             gate from their start), by result: answered (addresses, or none) or failed",
            site_lookups.clone(),
        );
        let fleet = fleet::FleetGauges::register(&mut registry);
        let routers = routers::RouterCounters::register(&mut registry);
        Metrics {
            site_lookups,
            routers,
            registry,
            routes,
            errors,
            database_errors,
            status_reports,
            router_events,
            rules: std::sync::Mutex::default(),
            configs_compiled,
            configs_signed,
            recompile_seconds,
            fleet,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Counts one event a router reported: its kind and origin, and a
    /// detection's rule (a short identifier; the first [`MAX_RULES`] seen
    /// are kept as label values, the rest and anything else are `other`).
    pub fn router_event(&self, kind: &'static str, origin: &'static str, rule: &str) {
        let rule = if origin == "detection" {
            self.rule_label(rule)
        } else {
            "other"
        };
        self.router_events
            .get_or_create(&EventLabels { kind, origin, rule })
            .inc();
    }

    fn rule_label(&self, rule: &str) -> &'static str {
        let identifier = (1..=32).contains(&rule.len())
            && rule
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !identifier {
            return "other";
        }
        let mut rules = self.rules.lock().expect("lock");
        if let Some(known) = rules.iter().find(|r| **r == rule) {
            return known;
        }
        if rules.len() >= MAX_RULES {
            return "other";
        }
        // Leaked once per rule, at most MAX_RULES per controller.
        let leaked: &'static str = Box::leak(rule.into());
        rules.push(leaked);
        leaked
    }

    /// Counts one recompile of `compiled` routers, `signed` of them stored
    /// anew, that took `took`.
    pub fn recompiled(&self, compiled: usize, signed: usize, took: Duration) {
        self.configs_compiled.inc_by(compiled as u64);
        self.configs_signed.inc_by(signed as u64);
        self.recompile_seconds.observe(took.as_secs_f64());
    }
}

/// A gauge's value from a count.
pub(crate) fn gauge_value(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

/// Sets `family` to exactly `values`: series no longer in it are removed,
/// so a state that emptied reads 0 only where it is listed.
pub(crate) fn set_family<S>(family: &Family<S, Gauge>, values: &[(S, i64)])
where
    S: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    family.clear();
    for (labels, value) in values {
        family.get_or_create(labels).set(*value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_rules_are_bounded_identifiers_and_the_rest_is_other() {
        let metrics = Metrics::new();
        assert_eq!(metrics.rule_label("mse_handshake"), "mse_handshake");
        assert_eq!(metrics.rule_label("mse_handshake"), "mse_handshake");
        for bad in ["", "Upper", "with space", "a-b", &"x".repeat(33)] {
            assert_eq!(metrics.rule_label(bad), "other", "{bad:?}");
        }
        for i in 1..MAX_RULES {
            assert_eq!(
                metrics.rule_label(&format!("rule_{i}")),
                format!("rule_{i}")
            );
        }
        assert_eq!(metrics.rule_label("one_too_many"), "other");
        assert_eq!(
            metrics.rule_label("rule_1"),
            "rule_1",
            "known rules still count"
        );
        metrics.router_event("block", "local", "zeek: scan");
        assert!(metrics.encode().contains(
            "isdf_router_events_total{kind=\"block\",origin=\"local\",rule=\"other\"} 1"
        ));
    }
}
