//! The defences of the second security pass (issue 15): CPU-heavy requests
//! off the async workers, unauthenticated refusals tallied and limited,
//! every change committed with its audit entry or not at all, NUL refused
//! with a stable code everywhere, and JSON error bodies even for what no
//! handler answers.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{error_code, Harness, Response};

/// Rows of a table.
async fn rows(h: &Harness, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&h.controller.state.pool)
        .await
        .unwrap()
}

/// Audit entries of one actor: (action, status, summary).
async fn audit_of(h: &Harness, actor: &str) -> Vec<(String, i32, Value)> {
    sqlx::query_as::<_, (String, i32, sqlx::types::Json<Value>)>(
        "SELECT action, status, summary FROM audit_log WHERE actor = $1 ORDER BY id",
    )
    .bind(actor)
    .fetch_all(&h.controller.state.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(action, status, summary)| (action, status, summary.0))
    .collect()
}

async fn execute(h: &Harness, sql: &str) {
    sqlx::query(sql)
        .execute(&h.controller.state.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A raw call on the operator listener: (status, headers, body).
async fn raw(request: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: the body is not JSON: {text:?}"));
    (status, headers, body)
}

fn flows(first_port: u32) -> Value {
    let flows: Vec<Value> = (0..10_000)
        .map(|i| json!({"protocol": "tcp", "dport": first_port + i}))
        .collect();
    json!({ "flows": flows })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_diff_runs_off_the_async_workers_while_other_requests_answer() {
    let h = Harness::start().await;
    let (_, device) = h.device("r1", json!({})).await;
    // Two revisions at the documented limit (10,000 flows), every flow changed.
    let service = h.flow_block("big", flows(1)).await;
    let revision = h
        .post(
            &format!("/api/v1/services/{service}/revisions"),
            json!({"spec": flows(20_001)}),
        )
        .await;
    assert_eq!(revision.status, StatusCode::CREATED, "{}", revision.body);

    let path = format!("/api/v1/services/{service}/revisions/1/diff/2");
    let diffs: Vec<_> = (0..4)
        .map(|_| {
            let request = h
                .http
                .get(format!("{}{path}", h.controller.api_url))
                .bearer_auth(&h.controller.operator_token);
            tokio::spawn(async move { raw(request).await })
        })
        .collect();
    // Wait (bounded) until a diff is being computed.
    let work = h.controller.state.cpu_work.clone();
    let started = Instant::now();
    while !work.busy() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no diff started computing in the CPU work slots within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The operator API and the device API answer while it computes.
    let whoami = h.get("/api/v1/whoami").await;
    assert_eq!(whoami.status, StatusCode::OK, "{}", whoami.body);
    let ping = device
        .http
        .get(device.url(isdf_api::paths::DEVICE_PING))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    assert!(
        work.busy() || diffs.iter().any(|d| !d.is_finished()),
        "the other requests were answered only after every diff"
    );
    for diff in diffs {
        let (status, _, body) = diff.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let unified = body["unified"].as_str().unwrap();
        assert!(unified.starts_with("--- revision 1\n+++ revision 2\n"));
        assert!(
            unified.contains("-      \"dport\": 1,\n"),
            "old flows shown"
        );
        assert!(
            unified.contains("+      \"dport\": 20001,\n"),
            "new flows shown"
        );
    }
}

#[tokio::test]
async fn unauthenticated_refusals_are_tallied_and_limited_not_logged_one_by_one() {
    let h = Harness::start().await;
    // Bad operator tokens from one address: refused, and counted against
    // that address's budget of 20 refusals (then about one a second).
    let mut bad_token = Vec::new();
    for _ in 0..15 {
        let r = h
            .http
            .get(format!("{}/api/v1/whoami", h.controller.api_url))
            .bearer_auth("isdf_op_not-a-token")
            .send()
            .await
            .unwrap();
        bad_token.push(r.status());
    }
    assert_eq!(bad_token, [StatusCode::UNAUTHORIZED; 15]);

    // Unsigned billing webhooks from the same address use up the rest.
    let webhook = format!("{}/webhooks/v1/billing", h.controller.api_url);
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let (status, headers, body) = raw(h
            .http
            .post(&webhook)
            .header("content-type", "application/json")
            .header("Isdf-Signature", "t=1,v1=00")
            .body("{}"))
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "rate_limited");
            assert!(headers.contains_key("retry-after"));
        } else {
            assert_eq!(body["error"]["code"], "bad_signature", "{status} {body}");
        }
        statuses.push(status);
    }
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    // The burst, then about one a second: the loop may take a few seconds.
    assert!((5..40).contains(&refused), "{refused} refusals of 60");
    // Valid credentials from that address still get through.
    assert_eq!(h.get("/api/v1/whoami").await.status, StatusCode::OK);

    // The tallies are written every 10 s (and now): one row per source and
    // reason each time, whatever the number of calls. A slow run may have
    // seen one periodic write besides ours.
    let state = &h.controller.state;
    state.refusals.flush(&state.pool).await.unwrap();
    let refused_in = |rows: &[(String, i32, Value)]| -> u64 {
        rows.iter()
            .map(|(_, _, s)| s["refused"].as_u64().unwrap())
            .sum()
    };
    let webhook_rows = audit_of(&h, "billing-webhook").await;
    assert!((1..=3).contains(&webhook_rows.len()), "{webhook_rows:?}");
    assert_eq!(refused_in(&webhook_rows), refused as u64);
    for (action, status, summary) in &webhook_rows {
        assert_eq!(action, "POST /webhooks/v1/billing");
        assert_eq!(*status, 401);
        assert_eq!(summary["code"], "bad_signature");
        assert_eq!(summary["source"], "127.0.0.1");
        assert!(summary.get("request").is_none(), "no unsigned bytes kept");
    }
    let token_rows = audit_of(&h, "unauthenticated").await;
    assert!((1..=3).contains(&token_rows.len()), "{token_rows:?}");
    assert_eq!(refused_in(&token_rows), 15);
    assert!(token_rows
        .iter()
        .all(|(action, status, _)| action == "GET /api/v1/whoami" && *status == 401));
    assert_eq!(state.refusals.flush(&state.pool).await.unwrap(), 0);
}

#[tokio::test]
async fn a_change_whose_recompile_fails_answers_500_and_stores_nothing() {
    let h = Harness::start().await;
    h.device("r1", json!({"env": "prod"})).await;
    let service = h
        .flow_block("svc", json!({"flows": [{"protocol": "tcp", "dport": 1}]}))
        .await;
    let audited_before = rows(&h, "audit_log").await;
    // The configs of this change cannot be stored.
    execute(
        &h,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
    )
    .await;
    execute(
        &h,
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON device_configs
         FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    .await;
    let r = h.assign(&service, "env=prod").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "internal");
    assert_eq!(rows(&h, "assignments").await, 0);
    // Its audit entry went with it: only the refusal is recorded.
    let entries: Vec<(String, i32)> =
        sqlx::query_as("SELECT action, status FROM audit_log ORDER BY id OFFSET $1")
            .bind(audited_before)
            .fetch_all(&h.controller.state.pool)
            .await
            .unwrap();
    assert_eq!(entries, [("POST /api/v1/assignments".to_owned(), 500)]);
    execute(&h, "DROP TRIGGER refuse ON device_configs").await;

    // A selector beyond the limits: 400 before anything is written.
    let huge = (0..40_000)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let r = h.assign(&service, &huge).await;
    assert_eq!(error_code(&r), "invalid_selector");
    let many = (0..65)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        error_code(&h.assign(&service, &many).await),
        "invalid_selector"
    );
    assert_eq!(rows(&h, "assignments").await, 0);
    assert_eq!(
        h.assign(&service, "env=prod").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_change_whose_audit_entry_cannot_be_written_is_refused_and_stores_nothing() {
    let h = Harness::start().await;
    execute(
        &h,
        "CREATE FUNCTION refuse_services() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN
              IF NEW.action = 'POST /api/v1/services' AND NEW.status < 300 THEN
                RAISE EXCEPTION 'refused by the test';
              END IF;
              RETURN NEW;
            END $$",
    )
    .await;
    execute(
        &h,
        "CREATE TRIGGER refuse_services BEFORE INSERT ON audit_log
         FOR EACH ROW EXECUTE FUNCTION refuse_services()",
    )
    .await;
    let spec = json!({"name": "svc", "kind": "flow-block",
        "spec": {"flows": [{"protocol": "tcp", "dport": 1}]}});
    let r = h.post("/api/v1/services", spec.clone()).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(rows(&h, "services").await, 0);
    execute(&h, "DROP TRIGGER refuse_services ON audit_log").await;
    let r = h.post("/api/v1/services", spec).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(rows(&h, "services").await, 1);

    // A body with NUL is refused, and the refusal is in the log (with the
    // NUL replaced).
    let r = h
        .post(
            "/api/v1/customers",
            json!({"name": "Smith\u{0}family", "external_ref": "c\u{0}1"}),
        )
        .await;
    assert_eq!(error_code(&r), "nul_character");
    let (summary,): (sqlx::types::Json<Value>,) = sqlx::query_as(
        "SELECT summary FROM audit_log WHERE action = 'POST /api/v1/customers' AND status = 400",
    )
    .fetch_one(&h.controller.state.pool)
    .await
    .expect("the refused request is audited");
    assert_eq!(summary.0["name"], "Smith\u{FFFD}family");
    assert_eq!(rows(&h, "customers").await, 0);
}

#[tokio::test]
async fn nul_characters_are_refused_with_400_everywhere() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let expect_nul = |r: &Response, what: &str| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.body);
        assert_eq!(
            r.body["error"]["code"], "nul_character",
            "{what}: {}",
            r.body
        );
    };
    expect_nul(&h.get("/api/v1/devices?q=a%00b").await, "q");
    expect_nul(&h.get("/api/v1/devices?selector=a%00").await, "selector");
    let cursor = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a\0b")
    };
    expect_nul(
        &h.get(&format!("/api/v1/devices?cursor={cursor}")).await,
        "cursor",
    );
    expect_nul(&h.get("/api/v1/devices/a%00b").await, "path");
    let block = json!({"action": "drop", "duration_secs": 60, "reason": "x\u{0}y",
        "flows": [{"protocol": "tcp", "dport": 1}]});
    expect_nul(
        &h.post(&format!("/api/v1/devices/{id}/blocks"), block).await,
        "block reason",
    );
    assert_eq!(rows(&h, "flow_blocks").await, 0);

    // The device API: a report or an event holding NUL.
    let report = |errors: Value, agent_version: &str| {
        json!({"sequence": 1, "enforced_version": null, "enforced_digest": null,
            "outcome": "applied", "attempted_version": null, "errors": errors,
            "counters": [], "backend": "nftables", "agent_version": agent_version})
    };
    for (what, body) in [
        ("errors", report(json!(["bad\u{0}"]), "1.0")),
        ("agent_version", report(json!([]), "1.\u{0}")),
    ] {
        let r = device
            .http
            .post(device.url(isdf_api::paths::DEVICE_STATUS))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"]["code"], "nul_character", "{what}");
    }
    let now = chrono::Utc::now().timestamp_millis();
    let event = json!({"events": [{"sequence": 1, "at_ms": now, "kind": "block",
        "block": {"id": 1, "origin": "local",
            "flow": {"protocol": "tcp", "dport": 6881},
            "expires_at_ms": now + 60_000, "reason": "zeek\u{0}"}}]});
    let r = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_EVENTS))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "nul_character");
    assert_eq!(rows(&h, "device_status").await, 0);
}

#[tokio::test]
async fn every_error_answer_has_the_json_error_body() {
    let h = Harness::start().await;
    let (_, device) = h.device("r1", json!({})).await;
    let api = &h.controller.api_url;
    // A body over the operator API's limit (4 MiB).
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let (status, _, body) = raw(h
        .http
        .post(format!("{api}/api/v1/services"))
        .bearer_auth(&h.controller.operator_token)
        .header("content-type", "application/json")
        .body(big))
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Over the webhook's limit (64 KiB), before any signature check.
    let (status, _, body) = raw(h
        .http
        .post(format!("{api}/webhooks/v1/billing"))
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024]))
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
    // A method the route does not have, on each listener.
    let (status, headers, body) = raw(h
        .http
        .request(Method::DELETE, format!("{api}/api/v1/whoami"))
        .bearer_auth(&h.controller.operator_token))
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert!(headers.contains_key("allow"), "{headers:?}");
    let (status, _, body) = raw(device.http.delete(device.url(isdf_api::paths::DEVICE_PING))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, _, body) = raw(h.device_http.get(format!(
        "{}{}",
        h.controller.enrollment_url,
        isdf_api::paths::ENROLL
    )))
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // Unknown routes were JSON already; they stay so.
    let r = h.call(Method::GET, "/api/v1/nothing-here", None).await;
    assert_eq!(error_code(&r), "not_found");
}
