//! Limits on the listeners: per-device rate and long-poll bounds (keyed on
//! the device, not the address), header and TLS handshake deadlines, body
//! caps, and the server-chosen poll pacing.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use isdf_controller::http::limits::Limits;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::Harness;

#[tokio::test]
async fn a_device_is_rate_limited_by_identity_not_address() {
    let h = Harness::start_with(Limits {
        device_requests_per_sec: 0.01,
        device_burst: 5,
        ..Limits::default()
    })
    .await;
    let (_, noisy) = h.device("noisy", json!({})).await;
    let (_, quiet) = h.device("quiet", json!({})).await;
    for _ in 0..5 {
        assert_eq!(h.poll(&noisy, Some(1), 0).await.0, StatusCode::NOT_MODIFIED);
    }
    let limited = noisy
        .http
        .get(noisy.url(isdf_api::paths::DEVICE_CONFIG))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Same address, other router: unaffected.
    assert_eq!(h.poll(&quiet, Some(1), 0).await.0, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn concurrent_long_polls_per_device_are_bounded() {
    let h = Harness::start_with(Limits {
        max_polls_per_device: 2,
        ..Limits::default()
    })
    .await;
    let (_, device) = h.device("r1", json!({})).await;
    let url = device.url(&format!("{}?wait=10", isdf_api::paths::DEVICE_CONFIG));
    let hold = |client: reqwest::Client, url: String| {
        tokio::spawn(async move {
            client
                .get(url)
                .header("if-none-match", "\"1\"")
                .send()
                .await
        })
    };
    let held: Vec<_> = (0..2)
        .map(|_| hold(device.http.clone(), url.clone()))
        .collect();
    // Once both polls hold their slot, a third is refused at once.
    let started = Instant::now();
    let refused = loop {
        let third = device
            .http
            .get(&url)
            .header("if-none-match", "\"1\"")
            .send()
            .await
            .unwrap();
        if third.status() == StatusCode::TOO_MANY_REQUESTS {
            break third;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the third poll was never refused"
        );
    };
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_polls");
    for poll in held {
        poll.abort();
    }
}

#[tokio::test]
async fn slow_headers_and_stalled_handshakes_are_cut_off() {
    let h = Harness::start_with(Limits {
        header_read_timeout: Duration::from_secs(1),
        tls_handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let api = h
        .controller
        .api_url
        .trim_start_matches("http://")
        .to_owned();
    let device = h
        .controller
        .device_url
        .trim_start_matches("https://")
        .to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        let closed_within = |addr: &str, send: &[u8]| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(send).unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 512];
            // The server either closes or answers 408; it never waits for us.
            let _ = stream.read(&mut buf);
            started.elapsed()
        };
        (
            closed_within(&api, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
            closed_within(&device, b""),
        )
    })
    .await
    .unwrap();
    assert!(
        outcome.0 < Duration::from_secs(5),
        "slow headers held the connection {:?}",
        outcome.0
    );
    assert!(
        outcome.1 < Duration::from_secs(5),
        "a stalled handshake held the connection {:?}",
        outcome.1
    );
}

#[tokio::test]
async fn device_bodies_are_capped() {
    let h = Harness::start().await;
    let (_, device) = h.device("r1", json!({})).await;
    let big = format!(
        "{{\"sequence\":1,\"errors\":[\"{}\"]}}",
        "x".repeat(isdf_controller::http::limits::DEVICE_BODY_LIMIT)
    );
    let r = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_STATUS))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_server_paces_polls_with_jitter() {
    let h = Harness::start_with(Limits {
        poll_delay: Duration::from_secs(10),
        ..Limits::default()
    })
    .await;
    let (_, device) = h.device("r1", json!({})).await;
    let mut delays = Vec::new();
    for _ in 0..10 {
        let r = device
            .http
            .get(device.url(isdf_api::paths::DEVICE_CONFIG))
            .header("if-none-match", "\"1\"")
            .send()
            .await
            .unwrap();
        delays.push(
            r.headers()["isdf-poll-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert!(delays.iter().all(|d| (10..=15).contains(d)), "{delays:?}");
}
