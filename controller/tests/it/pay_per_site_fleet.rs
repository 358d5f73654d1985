//! Benchmark (ignored in the suite; `scripts/bench-pay-per-site` runs it):
//! a purchase's propagation to 1,000 simulated routers long-polling one
//! controller, from the purchase call to the household's router having
//! fetched its new config. Each simulated router is a real mutual-TLS
//! client with its own certificate holding one long poll open.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::support::Harness;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls forever; publishes every version it fetches.
async fn router_loop(http: reqwest::Client, url: String, fetched: watch::Sender<u64>) {
    let mut enforced = 0u64;
    loop {
        let mut request = http.get(format!("{url}?wait=50"));
        if enforced > 0 {
            request = request.header("if-none-match", format!("\"{enforced}\""));
        }
        let Ok(response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if response.status() == StatusCode::OK {
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse().ok());
            let _ = response.bytes().await;
            if let Some(version) = etag {
                enforced = version;
                fetched.send_replace(version);
            }
        } else {
            let _ = response.bytes().await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-pay-per-site"]
async fn purchases_reach_long_polling_routers() {
    let routers = env_or("ISDF_BENCH_ROUTERS", 1000);
    let purchases = env_or("ISDF_BENCH_PURCHASES", 200);
    let h = Harness::start_with(isdf_controller::http::limits::Limits {
        device_requests_per_sec: 100.0,
        device_burst: 100,
        ..Default::default()
    })
    .await;
    let site = h
        .post(
            "/api/v1/sites",
            json!({"catalog": "main", "name": "Video", "domains": ["video.test"],
                   "currency": "EUR", "passes": [{"duration_secs": 3600, "price": 150}]}),
        )
        .await;
    assert_eq!(site.status, StatusCode::CREATED, "{}", site.body);
    let site_id = site.body["id"].as_i64().unwrap();
    let service = h
        .post(
            "/api/v1/services",
            json!({"name": "pps", "kind": "pay-per-site", "spec": {"catalog": "main"}}),
        )
        .await;
    assert_eq!(service.status, StatusCode::CREATED, "{}", service.body);
    h.assign(service.body["id"].as_str().unwrap(), "*").await;

    let setup = Instant::now();
    let state = h.controller.state.clone();
    let mut fleet: Vec<(String, watch::Receiver<u64>)> = Vec::with_capacity(routers);
    for i in 0..routers {
        let (device, _token) = h.register(&format!("router-{i}"), json!({})).await;
        let (key_pem, csr) = h.csr();
        let id = device.parse().unwrap();
        let cert = state
            .pki
            .issue_device_certificate(&csr, id, Duration::from_secs(3600))
            .unwrap();
        let customer = h
            .post(
                "/api/v1/customers",
                json!({"name": format!("household-{i}"), "devices": [device]}),
            )
            .await;
        assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
        let (tx, rx) = watch::channel(0);
        tokio::spawn(router_loop(
            h.client_with_certificate(&cert.pem, &key_pem),
            format!(
                "{}{}",
                h.controller.device_url,
                isdf_api::paths::DEVICE_CONFIG
            ),
            tx,
        ));
        fleet.push((customer.body["id"].as_str().unwrap().to_owned(), rx));
    }
    for (_, fetched) in &mut fleet {
        tokio::time::timeout(Duration::from_secs(120), fetched.wait_for(|v| *v > 0))
            .await
            .expect("every router fetches its first config")
            .unwrap();
    }
    eprintln!(
        "{routers} routers registered, certified and polling in {:?}",
        setup.elapsed()
    );

    let mut latencies = Vec::with_capacity(purchases);
    for k in 0..purchases {
        // Spread over the fleet (a stride coprime with the size).
        let r = (k * 7919) % routers;
        let (customer, fetched) = &mut fleet[r];
        let before = *fetched.borrow();
        let started = Instant::now();
        let bought = h
            .post(
                "/api/v1/purchases",
                json!({"customer_id": customer, "site_id": site_id, "duration_secs": 3600}),
            )
            .await;
        assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);
        tokio::time::timeout(Duration::from_secs(30), fetched.wait_for(|v| *v > before))
            .await
            .expect("the router fetches its new config")
            .unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let report: Value = json!({
        "routers": routers,
        "purchases": purchases,
        "p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "max_ms": latencies.last().unwrap().as_secs_f64() * 1e3,
    });
    println!("PPS_FLEET {report}");
}
