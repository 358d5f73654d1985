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
    // The router reports blocks it made: two detections (one with a rule
    // that is no identifier) and a local program's.
    let now = chrono::Utc::now().timestamp_millis();
    let block = |sequence: u64, origin: &str, reason: &str| {
        json!({"sequence": sequence, "kind": "block", "at_ms": now, "block": {
            "id": sequence, "origin": origin, "reason": reason, "expires_at_ms": now + 60_000,
            "flow": {"protocol": "tcp", "src": "192.0.2.2", "sport": 51000, "dst": "198.51.100.2", "dport": 6881}}})
    };
    let r = router
        .http
        .post(router.url(isdf_api::paths::DEVICE_EVENTS))
        .json(&json!({"events": [
            block(1, "detection", "mse_handshake i1=300 r1=200"),
            block(2, "detection", "Not A Rule!"),
            block(3, "local", "zeek: scan"),
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A pass is sold.
    let site = h
        .post(
            "/api/v1/sites",
            json!({"name": "Stream+", "domains": ["stream.example"], "currency": "EUR",
                   "passes": [{"duration_secs": 3600, "price": 199}]}),
        )
        .await;
    assert_eq!(site.status, StatusCode::CREATED, "{}", site.body);
    let customer = h
        .post(
            "/api/v1/customers",
            json!({"name": "household", "devices": [id]}),
        )
        .await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let bought = h
        .post(
            "/api/v1/purchases",
            json!({"customer_id": customer.body["id"], "site_id": site.body["id"], "duration_secs": 3600}),
        )
        .await;
    assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);

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
    // What routers reported, and what was sold.
    let events = |origin: &str, rule: &str| {
        get(
            "isdf_router_events_total",
            &[("kind", "block"), ("origin", origin), ("rule", rule)],
        )
    };
    assert_eq!(events("detection", "mse_handshake"), Some(1.0), "{text}");
    assert_eq!(events("detection", "other"), Some(1.0));
    assert_eq!(events("local", "other"), Some(1.0));
    assert_eq!(get("isdf_pay_per_site_passes_active", &[]), Some(1.0));
    assert_eq!(
        get("isdf_pay_per_site_purchases", &[("source", "operator")]),
        Some(1.0)
    );
    assert_eq!(
        get("isdf_pay_per_site_purchases", &[("source", "portal")]),
        Some(0.0)
    );
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
