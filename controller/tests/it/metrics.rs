//! `/metrics` as Prometheus reads it: every listener's requests by route
//! template and status, refusals by their stable code, status reports by
//! outcome, recompiles, the fleet by state and agent version; behind a
//! token (a viewer's is enough); no series names a router.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{report_status, Harness};

/// One series of a scrape: its name, labels and value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (what `/metrics` answers).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The sum of the series named `name` whose labels include `labels`, or
/// None when there is none.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[tokio::test]
async fn metrics_count_requests_refusals_reports_and_the_fleet_without_naming_routers() {
    let h = Harness::start().await;
    // Without a token: refused with the stable body, like every read.
    let (status, _, body) = h.get_text("/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let (id, router) = h.device("metrics-1", json!({"model": "x"})).await;
    let version = h.config_version(&id).await as u64;
    let status_path = isdf_api::paths::DEVICE_STATUS;
    assert_eq!(
        report_status(&router, 1, "applied", Some(version), "0.9.1").await,
        StatusCode::NO_CONTENT
    );
    // The same sequence again: refused as stale.
    assert_eq!(
        report_status(&router, 1, "applied", Some(version), "0.9.1").await,
        StatusCode::CONFLICT
    );
    let refused = h.enroll("not-a-token").await.err().expect("refused");
    let enroll_code = crate::support::error_code(&refused).to_owned();
    assert_eq!(
        h.get(&format!("/api/v1/devices/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get("/api/v1/no-such-route").await.status,
        StatusCode::NOT_FOUND
    );

    let viewer = h.token("prometheus", "viewer").await;
    let (status, content_type, text) = h.get_text("/metrics", Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = parse(&text);
    let get = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);

    // Requests by listener, route template, method and status.
    assert_eq!(
        get(
            "isdf_http_requests_total",
            &[
                ("listener", "device"),
                ("route", status_path),
                ("method", "POST"),
                ("code", "204")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get(
            "isdf_http_requests_total",
            &[
                ("listener", "operator"),
                ("route", "/api/v1/devices/{id}"),
                ("method", "GET"),
                ("code", "200")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "isdf_http_requests_total",
            &[("route", "unmatched"), ("code", "404")]
        ),
        Some(1.0)
    );
    // Refusals by their stable code, on every listener.
    assert_eq!(
        get(
            "isdf_http_errors_total",
            &[
                ("listener", "device"),
                ("route", status_path),
                ("error", "stale_sequence")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "isdf_http_errors_total",
            &[("listener", "enrollment"), ("error", &enroll_code)]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get(
            "isdf_http_errors_total",
            &[("listener", "operator"), ("error", "unauthorized")]
        ),
        Some(1.0)
    );
    // Latency, by route.
    assert!(get(
        "isdf_http_request_duration_seconds_count",
        &[("listener", "device"), ("route", status_path)]
    )
    .is_some_and(|n| n >= 2.0));
    assert!(text.contains(&format!(
        "isdf_http_request_duration_seconds_bucket{{listener=\"device\",route=\"{status_path}\",le=\"+Inf\"}}"
    )));
    // Reports, recompiles, the fleet.
    assert_eq!(
        get("isdf_status_reports_total", &[("outcome", "applied")]),
        Some(1.0)
    );
    assert!(get("isdf_configs_compiled_total", &[]).is_some_and(|n| n >= 1.0));
    assert!(get("isdf_configs_signed_total", &[]).is_some_and(|n| n >= 1.0));
    assert!(get("isdf_recompile_duration_seconds_count", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(get("isdf_routers", &[("state", "online")]), Some(1.0));
    assert_eq!(get("isdf_routers", &[("state", "stale")]), Some(0.0));
    assert_eq!(get("isdf_routers_failing", &[]), Some(0.0));
    assert_eq!(
        get("isdf_routers_by_agent_version", &[("version", "0.9.1")]),
        Some(1.0)
    );
    assert_eq!(get("isdf_config_cache_routers", &[]), Some(1.0));
    assert!(get("isdf_database_pool_max_connections", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(get("isdf_leader", &[]), Some(1.0));
    for state in ["running", "paused", "completed", "aborted"] {
        assert_eq!(
            get("isdf_rollouts", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    // No series is per router.
    assert!(!text.contains(&id), "a router's id in the metrics:\n{text}");
}
