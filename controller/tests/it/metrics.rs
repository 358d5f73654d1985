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

/// The routers' own counters, summed over the fleet by increase: a report
/// adds what grew since that router's previous one, all of it after the
/// agent restarted, nothing for a report that was refused as stale.
#[tokio::test]
async fn router_counters_are_summed_by_their_increase_across_restarts() {
    let h = Harness::start().await;
    let token = h.token("counting-viewer", "viewer").await;
    let (first_id, first) = h.device("counting-1", json!({})).await;
    let (_, second) = h.device("counting-2", json!({})).await;
    let report = |sequence: u64, started_at: i64, blocked: u64, polls_failed: u64| {
        json!({
            "sequence": sequence, "enforced_version": null, "enforced_digest": null,
            "outcome": "applied", "attempted_version": null, "errors": [], "counters": [],
            "backend": "nftables", "agent_version": "t",
            "agent_counters": {"started_at": started_at, "blocked_packets": blocked,
                               "blocked_bytes": blocked * 100, "polls_failed": polls_failed,
                               "a_counter_of_a_newer_agent": 1}})
    };
    let post = |device: &crate::support::DeviceHandle, body: Value| {
        let request = device
            .http
            .post(device.url(isdf_api::paths::DEVICE_STATUS))
            .json(&body);
        async move { request.send().await.unwrap().status() }
    };
    let scrape = || async {
        let (status, _, text) = h.get_text("/metrics", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        let samples = parse(&text);
        let read =
            |name: &str| value(&samples, name, &[]).unwrap_or_else(|| panic!("{name} is exported"));
        (
            read("isdf_router_blocked_packets_total"),
            read("isdf_router_blocked_bytes_total"),
            read("isdf_router_polls_failed_total"),
            read("isdf_router_agent_starts_total"),
        )
    };
    assert_eq!(scrape().await, (0.0, 0.0, 0.0, 0.0));
    assert_eq!(
        post(&first, report(1, 100, 40, 1)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        post(&second, report(1, 200, 5, 0)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        scrape().await,
        (45.0, 4500.0, 1.0, 2.0),
        "all of a first report"
    );
    assert_eq!(
        post(&first, report(2, 100, 50, 1)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        scrape().await,
        (55.0, 5500.0, 1.0, 2.0),
        "only the increase"
    );
    // A stale report is refused and adds nothing.
    assert_eq!(
        post(&first, report(2, 100, 90, 9)).await,
        StatusCode::CONFLICT
    );
    assert_eq!(scrape().await, (55.0, 5500.0, 1.0, 2.0));
    // The agent restarted: its counters start from zero, all of it counts.
    assert_eq!(
        post(&first, report(3, 300, 3, 0)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(scrape().await, (58.0, 5800.0, 1.0, 3.0));
    // An older agent sends no counters: nothing is added, and its next
    // report with counters counts from nothing.
    assert_eq!(
        report_status(&second, 2, "applied", None, "old").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(scrape().await, (58.0, 5800.0, 1.0, 3.0));
    // The stored report keeps the counters (the router's page reads them).
    let stored = h.get(&format!("/api/v1/devices/{first_id}/status")).await;
    assert_eq!(
        stored.body["report"]["agent_counters"]["blocked_packets"],
        3
    );
}
