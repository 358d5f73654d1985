//! Pay-per-site: households, the site catalog, passes sold by operators and
//! reported by the billing webhook.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{error_code, Harness, Response};

mod agent_versions;
mod households_and_sites;
mod passes;
mod resolution;
mod webhook;

/// Rows in `table` (straight from the database: "nothing was stored").
async fn rows(h: &Harness, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&h.controller.state.pool)
        .await
        .unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .to_utc()
}

fn stream_site() -> Value {
    json!({
        "name": "Stream+",
        "domains": ["stream.example", "*.streamcdn.example"],
        "currency": "EUR",
        "passes": [{"duration_secs": 3600, "price": 199}, {"duration_secs": 86400, "price": 499}]
    })
}

async fn site(h: &Harness, body: Value) -> i64 {
    let r = h.post("/api/v1/sites", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_i64().unwrap()
}

/// The site `video.example` in catalog `main`, gated on every router;
/// returns the site's id.
async fn video_gated_everywhere(h: &Harness) -> i64 {
    let id = site(
        h,
        json!({"name": "Video", "domains": ["video.example"], "currency": "EUR",
               "passes": [{"duration_secs": 3600, "price": 150}]}),
    )
    .await;
    let service = h
        .post(
            "/api/v1/services",
            json!({"name": "pps", "kind": "pay-per-site", "spec": {"catalog": "main"}}),
        )
        .await;
    h.assign(service.body["id"].as_str().unwrap(), "*").await;
    id
}

async fn customer(h: &Harness, name: &str, external_ref: Option<&str>, devices: &[&str]) -> String {
    let r = h
        .post(
            "/api/v1/customers",
            json!({"name": name, "external_ref": external_ref, "devices": devices}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn put_site(h: &Harness, id: i64, body: Value) -> Response {
    h.call(Method::PUT, &format!("/api/v1/sites/{id}"), Some(body))
        .await
}

async fn buy(h: &Harness, customer_id: &str, site_id: i64, duration_secs: i64) -> Response {
    h.post(
        "/api/v1/purchases",
        json!({"customer_id": customer_id, "site_id": site_id, "duration_secs": duration_secs}),
    )
    .await
}

/// The billing system's side: `t=<secs>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`,
/// computed here independently of the controller's code.
fn signature(key_hex: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hex::decode(key_hex.trim()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

fn webhook_key(h: &Harness) -> String {
    let path = h.controller.data_dir.join("billing-webhook.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::read_to_string(path).unwrap()
}

async fn webhook(h: &Harness, body: &Value, header: Option<String>) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut request = h
        .http
        .post(format!("{}/webhooks/v1/billing", h.controller.api_url))
        .header("content-type", "application/json")
        .body(bytes);
    if let Some(header) = header {
        request = request.header("Isdf-Signature", header);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    Response {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn signed_webhook(h: &Harness, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let header = signature(&webhook_key(h), Utc::now().timestamp(), &bytes);
    webhook(h, body, Some(header)).await
}

fn payment(payment_id: &str, site_id: i64) -> Value {
    json!({
        "payment_id": payment_id,
        "customer_external_ref": "cus_42",
        "site_id": site_id,
        "duration_secs": 3600,
        "amount": 150,
        "currency": "EUR"
    })
}

async fn webhook_audit(h: &Harness) -> Vec<(i32, Option<String>, Value)> {
    sqlx::query_as::<_, (i32, Option<String>, sqlx::types::Json<Value>)>(
        "SELECT status, target, summary FROM audit_log WHERE actor = 'billing-webhook' ORDER BY id",
    )
    .fetch_all(&h.controller.state.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(status, target, summary)| (status, target, summary.0))
    .collect()
}
