//! The fleet's history (the leader's minute samples, `/api/v1/fleet/history`)
//! and a router's own (`/api/v1/devices/{id}/history`): what the dashboard's
//! charts over time read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{report_status, Harness};

#[tokio::test]
async fn the_leader_samples_the_fleet_each_minute_and_the_history_answers_steps() {
    let h = Harness::start().await;
    // The leader samples as soon as it leads: the history is never empty
    // for long (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = h.get("/api/v1/fleet/history").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if !r.body["samples"].as_array().unwrap().is_empty() {
            assert_eq!(r.body["retention_secs"], 30 * 24 * 3600);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Routers come, one reports and one fails; samples of past minutes
    // are taken as the leader would have.
    let (_, online) = h.device("history-1", json!({})).await;
    let (_, failing) = h.device("history-2", json!({})).await;
    h.device("history-3", json!({})).await;
    assert_eq!(
        report_status(&online, 1, "applied", None, "0.9.1").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        report_status(&failing, 1, "rolled_back", None, "0.9.2").await,
        StatusCode::NO_CONTENT
    );
    let pool = &h.controller.state.pool;
    let retention = Duration::from_secs(3 * 3600);
    let base: DateTime<Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
    let minute = |n: i64| base + chrono::Duration::minutes(n);
    for n in 0..120 {
        let at = minute(n) + chrono::Duration::seconds(7);
        assert!(
            isdf_controller::cluster::history::sample(pool, at, retention)
                .await
                .unwrap()
        );
    }
    // A second sample of a minute (two leaders for a moment) is dropped.
    assert!(
        !isdf_controller::cluster::history::sample(pool, minute(5), retention)
            .await
            .unwrap()
    );

    let window = |since: DateTime<Utc>, until: DateTime<Utc>, points: u32| {
        format!(
            "/api/v1/fleet/history?since={}&until={}&points={points}",
            since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .replace('+', "%2B"),
            until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .replace('+', "%2B"),
        )
    };
    let r = h.get(&window(minute(0), minute(120), 1440)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["step_secs"], 60);
    let samples = r.body["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 120, "one a minute");
    let first = &samples[0];
    assert_eq!(
        first["at"], "2026-01-01T10:00:00Z",
        "truncated to its minute"
    );
    assert_eq!(
        (
            &first["devices"],
            &first["online"],
            &first["failing"],
            &first["never_reported"]
        ),
        (&json!(3), &json!(2), &json!(1), &json!(1))
    );
    let versions: Vec<&str> = first["by_agent_version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["value"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.9.1", "0.9.2"]);
    // Ten points over two hours: one per 12 minutes, the last of each.
    let r = h.get(&window(minute(0), minute(120), 10)).await;
    assert_eq!(r.body["step_secs"], 720);
    let at: Vec<&str> = r.body["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["at"].as_str().unwrap())
        .collect();
    assert_eq!(at.len(), 10, "never more than the points asked");
    assert_eq!(
        at[0], "2026-01-01T10:11:00Z",
        "the last sample of the first step"
    );
    assert!(at.windows(2).all(|w| w[0] < w[1]), "oldest first: {at:?}");

    // Taking a sample prunes what is past the retention.
    assert!(
        isdf_controller::cluster::history::sample(pool, minute(240), retention)
            .await
            .unwrap()
    );
    let r = h.get(&window(minute(0), minute(241), 1440)).await;
    let left: Vec<&str> = r.body["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["at"].as_str().unwrap())
        .collect();
    assert_eq!(
        left.first(),
        Some(&"2026-01-01T11:00:00Z"),
        "three hours kept: {left:?}"
    );

    // Bad windows: a stable 400, nothing else.
    for (query, message) in [
        (
            "since=2026-01-01T12:00:00Z&until=2026-01-01T11:00:00Z",
            "since must be before until",
        ),
        ("points=5", "points must be 10 to 1440"),
        ("since=2020-01-01T00:00:00Z", "longer than 400 days"),
        ("since=yesterday", ""),
        ("step=60", ""),
    ] {
        let r = h.get(&format!("/api/v1/fleet/history?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert_eq!(
            r.body["error"]["code"], "invalid_query",
            "{query}: {}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{query}: {}",
            r.body
        );
    }
    let anonymous = h.get_text("/api/v1/fleet/history", None).await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_routers_history_has_its_outcomes_and_its_counters_as_rates() {
    let h = Harness::start().await;
    let (id, router) = h.device("history-rates", json!({})).await;
    let post = |body: Value| {
        let request = router
            .http
            .post(router.url(isdf_api::paths::DEVICE_STATUS))
            .json(&body);
        async move { request.send().await.unwrap().status() }
    };
    let report = |sequence: u64, outcome: &str, blocked: u64, rule: u64| {
        json!({"sequence": sequence, "enforced_version": 1, "enforced_digest": null,
               "outcome": outcome, "attempted_version": 1, "errors": [],
               "counters": [{"rule_id": "web", "packets": rule, "bytes": rule * 100}],
               "backend": "nftables", "agent_version": "t",
               "agent_counters": {"started_at": 1, "blocked_packets": blocked}})
    };
    let none = h.get(&format!("/api/v1/devices/{id}/history")).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.body, json!({"reports": [], "intervals": []}));
    for (sequence, outcome, blocked, rule) in [
        (1, "applied", 0, 0),
        (2, "rolled_back", 500, 10),
        (3, "applied", 900, 30),
    ] {
        assert_eq!(
            post(report(sequence, outcome, blocked, rule)).await,
            StatusCode::NO_CONTENT
        );
        // The interval needs time between reports; received_at is the
        // controller's clock.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = h.get(&format!("/api/v1/devices/{id}/history")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let outcomes: Vec<&str> = r.body["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["applied", "rolled_back", "applied"]);
    let intervals = r.body["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 2);
    for (interval, (blocked, rule)) in intervals.iter().zip([(500.0, 10.0), (400.0, 20.0)]) {
        let secs = (interval["to"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
            - interval["from"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap())
        .num_milliseconds() as f64
            / 1000.0;
        let rate = interval["blocked_packets_per_second"].as_f64().unwrap();
        assert!((rate * secs - blocked).abs() < 1e-6 * blocked, "{interval}");
        let rule_rate = interval["rules"]["web"]["packets_per_second"]
            .as_f64()
            .unwrap();
        assert!((rule_rate * secs - rule).abs() < 1e-6 * rule, "{interval}");
    }
    let missing = h
        .get(&format!("/api/v1/devices/{}/history", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
