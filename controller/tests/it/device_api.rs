//! The device API: long poll, 304s, identity from the client certificate,
//! status sequence.

use std::time::{Duration, Instant};

use isdf_api::{open_device_config, OpenPolicy, Outcome, StatusReport, TrustedKeys};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{error_code, DeviceHandle, Harness};

fn trusted(h: &Harness) -> TrustedKeys {
    TrustedKeys::new([TrustedKeys::parse_public_key(&h.controller.signing_public_key_hex).unwrap()])
}

#[tokio::test]
async fn a_registered_device_gets_a_signed_config_bound_to_it() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let (status, etag, body) = h.poll(&device, None, 0).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag.as_deref(), Some("\"1\""));
    let policy = OpenPolicy {
        device_id: &id,
        enforced_version: None,
        now: Some(chrono::Utc::now().timestamp()),
    };
    let config = open_device_config(&body, &trusted(&h), &policy).unwrap();
    assert_eq!(config.version, 1);
    assert!(config.firewall.rules.is_empty());
    assert!(config.expires_at > config.issued_at);

    let (status, _, _) = h.poll(&device, Some(1), 0).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_change_is_compiled() {
    let h = Harness::start().await;
    let (_, device) = h.device("r1", json!({"env": "prod"})).await;
    let service = h
        .flow_block("b", json!({"flows": [{"protocol": "tcp", "dport": 9000}]}))
        .await;

    let poller = {
        let client = device.http.clone();
        let url = device.url(&format!("{}?wait=20", isdf_api::paths::DEVICE_CONFIG));
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .get(url)
                .header("if-none-match", "\"1\"")
                .send()
                .await
                .unwrap();
            (r.status(), started.elapsed())
        })
    };
    // Let the poll reach the server before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let assigned = h.assign(&service, "env=prod").await;
    assert_eq!(assigned.status, StatusCode::CREATED);
    let (status, elapsed) = poller.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // Far below the 20 s wait: woken by the change, not by the timeout.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test]
async fn a_poll_without_change_waits_then_answers_304() {
    let h = Harness::start().await;
    let (_, device) = h.device("r1", json!({})).await;
    let started = Instant::now();
    let (status, _, body) = h.poll(&device, Some(1), 1).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    // The server takes off up to a fifth of the wait, to spread reconnections.
    assert!(started.elapsed() >= Duration::from_millis(750));
}

#[tokio::test]
async fn a_deleted_device_is_refused_on_its_next_request() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    assert_eq!(h.poll(&device, None, 0).await.0, StatusCode::OK);
    let deleted = h
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let refused = device
        .http
        .get(device.url(isdf_api::paths::DEVICE_CONFIG))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "device_unknown");
}

fn report(sequence: u64) -> StatusReport {
    StatusReport {
        sequence,
        enforced_version: Some(1),
        enforced_digest: Some("abc".into()),
        outcome: Outcome::Applied,
        attempted_version: Some(1),
        errors: vec![],
        counters: vec![],
        tunnels: vec![],
        backend: "nftables".into(),
        agent_version: "test".into(),
        agent_target: None,
        agent_counters: None,
    }
}

async fn post_status(device: &DeviceHandle, body: serde_json::Value) -> reqwest::Response {
    device
        .http
        .post(device.url(isdf_api::paths::DEVICE_STATUS))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn status_reports_are_stored_and_replays_refused() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let none = h.get(&format!("/api/v1/devices/{id}/status")).await;
    assert_eq!(error_code(&none), "not_found");

    assert_eq!(
        post_status(&device, serde_json::to_value(report(5)).unwrap())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    for stale in [5, 4] {
        let r = post_status(&device, serde_json::to_value(report(stale)).unwrap()).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "stale_sequence");
    }
    let mut unknown = serde_json::to_value(report(6)).unwrap();
    unknown["extra"] = json!(1);
    assert_eq!(
        post_status(&device, unknown).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post_status(&device, serde_json::to_value(report(7)).unwrap())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let latest = h.get(&format!("/api/v1/devices/{id}/status")).await;
    assert_eq!(latest.body["sequence"], 7);
    assert_eq!(latest.body["report"]["outcome"], "applied");
    let history = h.get(&format!("/api/v1/devices/{id}/status/history")).await;
    assert_eq!(history.body.as_array().unwrap().len(), 2);
}

/// Found by the fuzz target `status_report`: PostgreSQL stores no NUL
/// character (`jsonb` refuses `\u0000`), so a report holding one was a 500,
/// and the agent sent it again and again.
#[tokio::test]
async fn a_report_postgresql_cannot_store_is_refused_with_a_400() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let mut nul = report(1);
    nul.errors = vec!["nft: \0".into()];
    let r = post_status(&device, serde_json::to_value(&nul).unwrap()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "nul_character", "{body}");
    let r = post_status(&device, serde_json::to_value(report(2)).unwrap()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let latest = h.get(&format!("/api/v1/devices/{id}/status")).await;
    assert_eq!(latest.body["sequence"], 2);
}
