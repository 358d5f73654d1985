//! Timed flow blocks on one router and the events routers report.

use isdf_api::{open_device_config, ElementValue, OpenPolicy, TrustedKeys};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{error_code, DeviceHandle, Harness};

async fn signed_config(h: &Harness, device: &DeviceHandle, id: &str) -> isdf_api::DeviceConfig {
    let (status, _, body) = h.poll(device, None, 0).await;
    assert_eq!(status, StatusCode::OK);
    let keys =
        TrustedKeys::new([
            TrustedKeys::parse_public_key(&h.controller.signing_public_key_hex).unwrap(),
        ]);
    let policy = OpenPolicy {
        device_id: id,
        enforced_version: None,
        now: None,
    };
    open_device_config(&body, &keys, &policy).unwrap()
}

#[tokio::test]
async fn operator_blocks_reach_the_router_config_with_their_end_and_can_end_early() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let (_, other) = h.device("r2", json!({})).await;
    let before = h.config_version(&id).await;
    let asked_at = chrono::Utc::now();
    let created = h
        .post(
            &format!("/api/v1/devices/{id}/blocks"),
            json!({
                "flows": [
                    {"protocol": "tcp", "src": "192.0.2.2", "sport": 40000, "dst": "198.51.100.2", "dport": 22},
                    {"protocol": "udp", "dst": "2001:db8:2::2", "dport": "5000-5010"},
                    {"protocol": "tcp", "dport": 6881}
                ],
                "duration_secs": 90,
                "reason": "scanner"
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let items = created.body["items"].as_array().unwrap();
    // The flow naming no address is blocked for both families.
    assert_eq!(items.len(), 4);
    assert!(created.body["config_version"].as_i64().unwrap() > before);
    for item in items {
        assert_eq!(item["origin"], "operator");
        assert_eq!(item["reason"], "scanner");
        let remaining = item["remaining_secs"].as_f64().unwrap();
        assert!((89.0..=90.5).contains(&remaining), "{remaining}");
    }

    let config = signed_config(&h, &device, &id).await;
    let expected_end = (asked_at + chrono::Duration::seconds(90)).timestamp();
    let elements: Vec<_> = config
        .firewall
        .sets
        .iter()
        .flat_map(|s| &s.elements)
        .collect();
    assert_eq!(elements.len(), 4);
    for e in &elements {
        let end = e.expires_at.unwrap();
        assert!((end - expected_end).abs() <= 1, "{end} vs {expected_end}");
        assert!(matches!(e.value, ElementValue::Flow(_)));
    }
    // Another router's config is untouched.
    assert_eq!(h.config_version(&other.certificate.device_id).await, 1);

    let listed = h.get(&format!("/api/v1/devices/{id}/blocks")).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 4);

    let first = items[0]["id"].as_str().unwrap();
    let removed = h
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{id}/blocks/{first}"),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let listed = h.get(&format!("/api/v1/devices/{id}/blocks")).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 3);
    let config = signed_config(&h, &device, &id).await;
    let count: usize = config.firewall.sets.iter().map(|s| s.elements.len()).sum();
    assert_eq!(count, 3);
    let again = h
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{id}/blocks/{first}"),
            None,
        )
        .await;
    assert_eq!(error_code(&again), "not_found");
}

#[tokio::test]
async fn bad_block_requests_are_refused_and_store_nothing() {
    let h = Harness::start().await;
    let (id, _) = h.register("r1", json!({})).await;
    let path = format!("/api/v1/devices/{id}/blocks");
    let flow = json!([{"protocol": "tcp", "dport": 22}]);
    let cases = [
        (
            json!({"flows": flow, "duration_secs": 0}),
            "invalid_request",
        ),
        (
            json!({"flows": flow, "duration_secs": 400 * 86400}),
            "invalid_request",
        ),
        (json!({"flows": flow}), "invalid_body"),
        (json!({"flows": [], "duration_secs": 5}), "invalid_request"),
        (
            json!({"flows": [{"protocol": "icmp", "dport": 1}], "duration_secs": 5}),
            "invalid_request",
        ),
        (
            json!({"flows": [{"src": "192.0.2.1", "dst": "2001:db8::1"}], "duration_secs": 5}),
            "invalid_request",
        ),
        (
            json!({"flows": [{"dst": "300.1.1.1"}], "duration_secs": 5}),
            "invalid_body",
        ),
        (
            json!({"flows": flow, "duration_secs": 5, "color": "red"}),
            "invalid_body",
        ),
        (
            json!({"flows": flow, "duration_secs": 5, "reason": "x".repeat(201)}),
            "invalid_request",
        ),
        // PostgreSQL cannot store a NUL (a 500 before; see the router's
        // events): refused with every other NUL in a body.
        (
            json!({"flows": flow, "duration_secs": 5, "reason": "ssh\u{0}"}),
            "nul_character",
        ),
        // A reason is one line of text.
        (
            json!({"flows": flow, "duration_secs": 5, "reason": "two\nlines"}),
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let r = h.post(&path, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_eq!(error_code(&r), code, "{body}: {}", r.body);
    }
    let unknown = h
        .post(
            &format!("/api/v1/devices/{}/blocks", uuid::Uuid::new_v4()),
            json!({"flows": flow, "duration_secs": 5}),
        )
        .await;
    assert_eq!(error_code(&unknown), "not_found");
    let listed = h.get(&path).await;
    assert_eq!(listed.body, json!([]));
    assert_eq!(h.config_version(&id).await, 1);
}

fn event(sequence: u64, kind: &str, block_id: u64, origin: &str) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp_millis();
    json!({
        "sequence": sequence,
        "at_ms": now,
        "kind": kind,
        "block": {
            "id": block_id,
            "origin": origin,
            "flow": {"protocol": "tcp", "src": "192.0.2.2", "sport": 51000, "dst": "198.51.100.2", "dport": 6881},
            "expires_at_ms": now + 60_000,
            "reason": if origin == "local" { "zeek: scan" } else { "tcp_handshake" }
        }
    })
}

async fn post_events(
    device: &DeviceHandle,
    events: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let r = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_EVENTS))
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test]
async fn router_events_are_stored_once_and_their_blocks_are_listed() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let batch = json!([
        event(1, "block", 7, "local"),
        event(2, "block", 8, "detection"),
        event(3, "block", 9, "detection"),
        event(4, "unblock", 9, "detection"),
    ]);
    let (status, body) = post_events(&device, batch.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 4);
    // A resent batch (the answer was lost) changes nothing.
    let (_, body) = post_events(&device, batch).await;
    assert_eq!(body["stored"], 0);
    // The router extends block 7: its latest end wins.
    let mut extended = event(5, "block", 7, "local");
    extended["block"]["expires_at_ms"] = json!(chrono::Utc::now().timestamp_millis() + 600_000);
    assert_eq!(post_events(&device, json!([extended])).await.1["stored"], 1);

    let blocks = h.get(&format!("/api/v1/devices/{id}/blocks")).await;
    let origins: Vec<_> = blocks
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["origin"].as_str().unwrap().to_owned(),
                b["router_block_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(origins.len(), 2, "{}", blocks.body);
    assert!(origins.contains(&("local".into(), 7)));
    assert!(origins.contains(&("detection".into(), 8)));

    let events = h.get(&format!("/api/v1/devices/{id}/events?limit=3")).await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.body);
    let seqs: Vec<_> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![5, 4, 3]);
    assert_eq!(events.body["next_before"], 3);
    let totals = &events.body["totals"];
    assert!(totals.as_array().unwrap().contains(
        &json!({"kind": "block", "origin": "detection", "reason": "tcp_handshake", "count": 2})
    ));
    let local_block = blocks
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["origin"] == "local")
        .unwrap();
    assert!(
        local_block["remaining_secs"].as_f64().unwrap() > 500.0,
        "{local_block}"
    );

    // The operator cannot end a router-side block from the API.
    let local = blocks
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["origin"] == "local")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = h
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{id}/blocks/{local}"),
            None,
        )
        .await;
    assert_eq!(error_code(&refused), "router_block");

    // A malformed event is refused as a whole.
    let mut bad = event(7, "block", 10, "local");
    bad["block"]["flow"] =
        json!({"protocol": "icmp", "src": "192.0.2.2", "dst": "198.51.100.2", "dport": 1});
    let (status, body) = post_events(&device, json!([event(6, "block", 11, "local"), bad])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let events = h.get(&format!("/api/v1/devices/{id}/events")).await;
    assert_eq!(events.body["items"].as_array().unwrap().len(), 5);
}

/// Found by the fuzz target `events`: PostgreSQL stores no NUL character,
/// so a reason holding one was a 500, and the router's outbox stuck on it.
#[tokio::test]
async fn an_event_postgresql_cannot_store_is_refused_with_a_400() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let mut nul = event(1, "block", 1, "local");
    nul["block"]["reason"] = json!("zeek\u{0}");
    let (status, body) = post_events(&device, json!([nul])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "nul_character", "{body}");
    let mut control = event(2, "block", 2, "local");
    control["block"]["reason"] = json!("zeek\u{1b}[31m");
    let (status, body) = post_events(&device, json!([control])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let (status, body) = post_events(&device, json!([event(2, "block", 2, "local")])).await;
    assert_eq!(
        (status, &body["stored"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let events = h.get(&format!("/api/v1/devices/{id}/events")).await;
    assert_eq!(events.body["items"].as_array().unwrap().len(), 1);
}
