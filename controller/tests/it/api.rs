//! The operator API: happy paths, pagination, and bad input (4xx, stable
//! error body, nothing stored).

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{error_code, Harness};

#[tokio::test]
async fn devices_are_registered_listed_by_label_and_deleted() {
    let h = Harness::start().await;
    let (a, _) = h
        .register("a", json!({"env": "prod", "region": "eu"}))
        .await;
    h.register("b", json!({"env": "lab"})).await;
    h.register("c", json!({"env": "prod", "region": "us"}))
        .await;

    let all = h.get("/api/v1/devices").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 3);

    let prod = h
        .get("/api/v1/devices?selector=env%3Dprod,region%20in%20(eu)")
        .await;
    let names: Vec<_> = prod.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("a")]);

    let got = h.get(&format!("/api/v1/devices/{a}")).await;
    assert_eq!(got.body["labels"], json!({"env": "prod", "region": "eu"}));

    let deleted = h
        .call(Method::DELETE, &format!("/api/v1/devices/{a}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = h.get(&format!("/api/v1/devices/{a}")).await;
    assert_eq!(error_code(&gone), "not_found");
}

#[tokio::test]
async fn lists_are_paginated_with_cursors() {
    let h = Harness::start().await;
    for i in 0..7 {
        h.register(&format!("d{i}"), json!({})).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/devices?limit=3&cursor={c}"),
            None => "/api/v1/devices?limit=3".to_owned(),
        };
        let page = h.get(&path).await;
        for d in page.body["items"].as_array().unwrap() {
            seen.push(d["name"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("d{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn services_have_immutable_numbered_revisions() {
    let h = Harness::start().await;
    let id = h
        .flow_block(
            "block",
            json!({"flows": [{"protocol": "tcp", "dport": 9000}]}),
        )
        .await;
    let r2 = h
        .post(
            &format!("/api/v1/services/{id}/revisions"),
            json!({"spec": {"flows": [{"protocol": "tcp", "dport": 9001}]}}),
        )
        .await;
    assert_eq!(r2.status, StatusCode::CREATED);
    assert_eq!(r2.body["revision"], 2);
    let one = h.get(&format!("/api/v1/services/{id}/revisions/1")).await;
    assert_eq!(one.body["spec"]["flows"][0]["dport"], 9000);
    let service = h.get(&format!("/api/v1/services/{id}")).await;
    assert_eq!(service.body["latest_revision"], 2);
    let list = h.get(&format!("/api/v1/services/{id}/revisions")).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 2);
}

async fn count(h: &Harness, path: &str) -> usize {
    h.get(path).await.body["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let h = Harness::start().await;
    let service = h
        .flow_block("ok", json!({"flows": [{"protocol": "tcp", "dport": 1}]}))
        .await;

    let raw = |path: &str, body: &str, content_type: &str| {
        let request = h
            .http
            .post(format!("{}{path}", h.controller.api_url))
            .bearer_auth(&h.controller.operator_token)
            .header("content-type", content_type.to_owned())
            .body(body.to_owned());
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            crate::support::Response {
                status,
                body: r.json().await.unwrap(),
            }
        }
    };
    let cases = [
        (raw("/api/v1/devices", "{\"name\": ", "application/json").await, "malformed_json"),
        (raw("/api/v1/devices", "{\"name\":\"x\"}", "text/plain").await, "unsupported_media_type"),
        (h.post("/api/v1/devices", json!({"name": "x", "colour": "red"})).await, "invalid_body"),
        (h.post("/api/v1/devices", json!({"name": "bad name!"})).await, "invalid_request"),
        (h.post("/api/v1/devices", json!({"name": "x", "labels": {"k": "v v"}})).await, "invalid_body"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "teleport", "spec": {}})).await, "unknown_kind"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": [{"dst": "10.0.0.1/8"}]}})).await, "invalid_spec"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": [{"dst": "300.1.1.1"}]}})).await, "invalid_spec"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": [{"protocol": "tcp", "dport": 70000}]}})).await, "invalid_spec"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": [{"dport": "80"}]}})).await, "invalid_spec"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": [{"protocol": "tcp", "dport": "9-1"}]}})).await, "invalid_spec"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": []}})).await, "invalid_spec"),
        (h.post("/api/v1/services", json!({"name": "s", "kind": "flow-block", "spec": {"flows": [{}], "duration_secs": 0}})).await, "invalid_spec"),
        (h.post("/api/v1/assignments", json!({"service_id": service, "selector": "env in (a"})).await, "invalid_selector"),
        (h.post("/api/v1/assignments", json!({"service_id": service, "selector": ""})).await, "invalid_selector"),
        (h.post("/api/v1/assignments", json!({"service_id": service, "selector": "*", "revision": 9})).await, "unknown_revision"),
        (h.post("/api/v1/assignments", json!({"service_id": uuid::Uuid::new_v4(), "selector": "*"})).await, "unknown_service"),
        (h.get("/api/v1/devices?selector=a%3D%3D%3D").await, "invalid_selector"),
        (h.get("/api/v1/devices?limit=0").await, "invalid_query"),
        (h.get("/api/v1/devices/not-a-uuid").await, "invalid_path"),
    ];
    for (i, (response, code)) in cases.iter().enumerate() {
        assert_eq!(error_code(response), *code, "case {i}: {}", response.body);
    }
    let oversized = "x".repeat(isdf_controller::http::limits::OPERATOR_BODY_LIMIT + 1);
    let big = raw(
        "/api/v1/devices",
        &format!("{{\"name\":\"{oversized}\"}}"),
        "application/json",
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&big), "payload_too_large");

    assert_eq!(count(&h, "/api/v1/devices").await, 0);
    assert_eq!(count(&h, "/api/v1/services").await, 1);
    assert_eq!(count(&h, "/api/v1/assignments").await, 0);

    h.register("dup", json!({})).await;
    let again = h.post("/api/v1/devices", json!({"name": "dup"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(error_code(&again), "name_taken");
    assert_eq!(count(&h, "/api/v1/devices").await, 1);
}

#[tokio::test]
async fn every_operator_call_needs_a_valid_token() {
    let h = Harness::start().await;
    for token in [None, Some("isdf_op_wrong")] {
        let mut request = h
            .http
            .get(format!("{}/api/v1/devices", h.controller.api_url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

#[tokio::test]
async fn openapi_document_lists_the_routes() {
    let h = Harness::start().await;
    let doc = h.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = doc.body["paths"].as_object().unwrap();
    for p in [
        "/api/v1/devices",
        "/api/v1/services/{id}/revisions",
        "/api/v1/assignments/{id}",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    // The device API is described in the device listener's document.
    let device = h.get("/api/v1/openapi/device.json").await;
    assert!(device.body["paths"]
        .as_object()
        .unwrap()
        .contains_key("/device/v1/config"));
    // Health needs no credentials (load balancers have none).
    for p in ["/healthz", "/readyz"] {
        assert_eq!(
            paths[p]["get"]["security"],
            serde_json::json!([]),
            "{p}: {}",
            paths[p]
        );
    }
}

#[tokio::test]
async fn the_operator_api_is_served_over_tls_on_request_and_never_in_clear_off_loopback() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut options = isdf_controller::test_support::TestControllerOptions::new(dir.path());
    options.api_tls = true;
    let controller = isdf_controller::test_support::TestController::start(options)
        .await
        .unwrap();
    assert!(
        controller.api_url.starts_with("https://"),
        "{}",
        controller.api_url
    );
    let tls = crate::support::trusting_the_ca(&controller.ca_pem).with_no_client_auth();
    let https = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let listed = https
        .get(format!("{}/api/v1/devices", controller.api_url))
        .bearer_auth(&controller.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let database_url = controller.database_url.clone();
    controller.stop().await.unwrap();

    let settings = isdf_controller::Settings {
        data_dir: dir.path().to_owned(),
        database_url,
        api_listen: "0.0.0.0:0".parse().unwrap(),
        api_tls: false,
        device_listen: "127.0.0.1:0".parse().unwrap(),
        device_public_url: None,
        device_tls_names: vec!["localhost".into()],
        enrollment_listen: "127.0.0.1:0".parse().unwrap(),
        enrollment_public_url: None,
        config_lifetime: std::time::Duration::from_secs(3600),
        config_cache_bytes: 1 << 20,
        device_cert_lifetime: std::time::Duration::from_secs(3600),
        limits: Default::default(),
        portal_listen: "127.0.0.1:0".parse().unwrap(),
        portal_public_url: None,
        dashboard_behind_tls: false,
        proxy_protocol_from: Vec::new(),
        recompile_batching: Default::default(),
        fleet_history_retention: isdf_controller::cluster::history::DEFAULT_RETENTION,
        site_resolution: isdf_controller::cluster::site_resolution::SiteResolution {
            every: std::time::Duration::ZERO,
            ..Default::default()
        },
    };
    let refused = isdf_controller::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(format!("{refused:#}").contains("plain HTTP"), "{refused:#}");
}
