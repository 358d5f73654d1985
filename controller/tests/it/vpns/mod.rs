//! Site-to-site VPNs through the operator API: members with stable tunnel
//! addresses, relays, and every refusal leaving the database unchanged.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{error_code, Harness, Response};

mod members;
mod refusals;

/// Rows in `table` (straight from the database: "nothing was stored").
async fn rows(h: &Harness, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&h.controller.state.pool)
        .await
        .unwrap()
}

/// Rows of `vpns` and `vpn_members`.
async fn vpn_rows(h: &Harness) -> (i64, i64) {
    (rows(h, "vpns").await, rows(h, "vpn_members").await)
}

async fn customer(h: &Harness, name: &str, devices: &[&str]) -> String {
    let r = h
        .post(
            "/api/v1/customers",
            json!({"name": name, "devices": devices}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

/// Registers routers with these names; returns their ids in order.
async fn routers(h: &Harness, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        ids.push(h.register(name, json!({})).await.0);
    }
    ids
}

async fn create(h: &Harness, body: Value) -> Response {
    h.post("/api/v1/vpns", body).await
}

async fn put_member(h: &Harness, vpn: &str, device: &str, prefixes: Value) -> Response {
    h.call(
        Method::PUT,
        &format!("/api/v1/vpns/{vpn}/members/{device}"),
        Some(json!({"prefixes": prefixes})),
    )
    .await
}

/// (name, tunnel address, prefixes) of each member, by address.
fn members(view: &Value) -> Vec<(String, String, Vec<String>)> {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["tunnel_address"].as_str().unwrap().to_owned(),
                m["prefixes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

fn member(name: &str, address: &str, prefixes: &[&str]) -> (String, String, Vec<String>) {
    (
        name.to_owned(),
        address.to_owned(),
        prefixes.iter().map(|p| p.to_string()).collect(),
    )
}

/// Asserts a refusal: status, stable code, and returns the message.
fn refused(r: &Response, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(error_code(r), code, "{}", r.body);
    r.body["error"]["message"].as_str().unwrap().to_owned()
}
