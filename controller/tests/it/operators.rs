//! Operator roles, token management (API and CLI) and the audit log.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{error_code, Harness};

/// Calls the operator API with an arbitrary token.
async fn call_as(
    h: &Harness,
    token: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> crate::support::Response {
    let mut request = h
        .http
        .request(method, format!("{}{path}", h.controller.api_url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    crate::support::Response {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    }
}

#[tokio::test]
async fn roles_limit_what_a_token_can_do() {
    let h = Harness::start().await;
    let viewer = h.token("watcher", "viewer").await;
    let operator = h.token("noc", "operator").await;

    let read = call_as(&h, &viewer, Method::GET, "/api/v1/devices", None).await;
    assert_eq!(read.status, StatusCode::OK);
    let change = call_as(
        &h,
        &viewer,
        Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "r1"})),
    )
    .await;
    assert_eq!(change.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&change), "forbidden");
    assert!(change.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("viewer"));
    assert_eq!(
        h.get("/api/v1/devices").await.body["items"],
        json!([]),
        "nothing was created"
    );

    let created = call_as(
        &h,
        &operator,
        Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "r1"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    for (method, path) in [
        (Method::GET, "/api/v1/operator-tokens"),
        (Method::POST, "/api/v1/operator-tokens"),
    ] {
        let refused = call_as(
            &h,
            &operator,
            method,
            path,
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once() {
    let h = Harness::start().await;
    let created = h
        .post(
            "/api/v1/operator-tokens",
            json!({"name": "temp", "role": "operator"}),
        )
        .await;
    let (id, token) = (
        created.body["id"].as_str().unwrap().to_owned(),
        created.body["token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        call_as(&h, &token, Method::GET, "/api/v1/devices", None)
            .await
            .status,
        StatusCode::OK
    );
    let revoked = h
        .call(
            Method::DELETE,
            &format!("/api/v1/operator-tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    let refused = call_as(&h, &token, Method::GET, "/api/v1/devices", None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&refused), "unauthorized");
    let again = h
        .call(
            Method::DELETE,
            &format!("/api/v1/operator-tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(error_code(&again), "not_found");
    let listed = h.get("/api/v1/operator-tokens").await;
    assert!(
        listed.body.to_string().contains("temp") && !listed.body.to_string().contains(&token),
        "no secrets listed"
    );
}

#[tokio::test]
async fn mutating_calls_and_refusals_are_audited() {
    let h = Harness::start().await;
    let viewer = h.token("watcher", "viewer").await;
    let (device, _) = h.register("r1", json!({"env": "prod"})).await;
    let service = h
        .flow_block(
            "block",
            json!({"flows": [{"protocol": "tcp", "dport": 9000}]}),
        )
        .await;
    h.assign(&service, "env=prod").await;
    h.get("/api/v1/devices").await;
    call_as(
        &h,
        &viewer,
        Method::DELETE,
        &format!("/api/v1/devices/{device}"),
        None,
    )
    .await;

    let audit = h.get("/api/v1/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
    let entries = audit.body["items"].as_array().unwrap();
    let summary: Vec<(String, String, i64)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("watcher".into(), "DELETE /api/v1/devices/{id}".into(), 403),
            (
                "initial-admin".into(),
                "POST /api/v1/assignments".into(),
                201
            ),
            ("initial-admin".into(), "POST /api/v1/services".into(), 201),
            ("initial-admin".into(), "POST /api/v1/devices".into(), 201),
            (
                "initial-admin".into(),
                "POST /api/v1/operator-tokens".into(),
                201
            ),
        ]
        .map(|(a, b, c): (String, String, i64)| (a, b, c)),
        "newest first, reads not recorded"
    );
    assert_eq!(entries[3]["target"], device.as_str());
    assert_eq!(
        entries[3]["summary"],
        json!({"name": "r1", "labels": {"env": "prod"}})
    );
    assert_eq!(entries[2]["target"], service.as_str());
    assert!(
        entries
            .iter()
            .all(|e| !e.to_string().contains("isdf_op_") && !e.to_string().contains("isdf_dev_")),
        "no secrets in the audit log"
    );

    // Append-only, even for the database owner.
    let pool = sqlx::PgPool::connect(&h.controller.database_url)
        .await
        .unwrap();
    for sql in [
        "DELETE FROM audit_log",
        "UPDATE audit_log SET actor = 'x'",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_tokens_and_audits_it() {
    let h = Harness::start().await;
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_isdf-controller"))
            .args(args)
            .args(["--database-url", &h.controller.database_url])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let token = cli(&["token", "create", "--name", "ops-alice", "--role", "viewer"])
        .trim()
        .to_owned();
    assert!(token.starts_with("isdf_op_"));
    assert_eq!(
        call_as(&h, &token, Method::GET, "/api/v1/devices", None)
            .await
            .status,
        StatusCode::OK
    );
    let listing = cli(&["token", "list"]);
    let line = listing
        .lines()
        .find(|l| l.contains("ops-alice"))
        .expect("listed");
    assert!(line.contains("viewer") && line.contains("active") && !listing.contains(&token));
    let id = line.split_whitespace().next().unwrap();
    cli(&["token", "revoke", id]);
    assert_eq!(
        call_as(&h, &token, Method::GET, "/api/v1/devices", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let audit = h.get("/api/v1/audit").await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[..2], ["token.revoke", "token.create"]);
    assert!(audit.body["items"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("cli:"));
}
