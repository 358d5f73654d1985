//! Which certificate a device may use: a replaced router loses access the
//! moment its successor enrolls, a renewed certificate replaces the old one
//! once it is first used, and devices enrolled before certificates were
//! recorded are pinned at their next issue.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{report_status, DeviceHandle, Harness, Response};

/// A device-API call: (status, the error code if any).
async fn call(device: &DeviceHandle, path: &str, body: Option<Value>) -> (StatusCode, String) {
    let request = match body {
        Some(body) => device.http.post(device.url(path)).json(&body),
        None => device.http.get(device.url(path)),
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn poll(device: &DeviceHandle) -> (StatusCode, String) {
    call(device, isdf_api::paths::DEVICE_CONFIG, None).await
}

fn superseded(outcome: (StatusCode, String), what: &str) {
    assert_eq!(
        outcome,
        (
            StatusCode::UNAUTHORIZED,
            "certificate_superseded".to_owned()
        ),
        "{what}"
    );
}

/// Renews over mutual TLS with `device`'s certificate: a handle for the new one.
async fn renew(h: &Harness, device: &DeviceHandle) -> DeviceHandle {
    let (key_pem, csr) = h.csr();
    let r = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_RENEW))
        .json(&json!({ "csr_pem": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    h.handle(r.json().await.unwrap(), key_pem)
}

fn stored_sequence(r: &Response) -> i64 {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["sequence"].as_i64().unwrap()
}

#[tokio::test]
async fn a_replaced_router_is_refused_once_its_successor_enrolls() {
    let h = Harness::start().await;
    let (id, old) = h.device("r1", json!({})).await;
    assert_eq!(poll(&old).await.0, StatusCode::OK);
    assert_eq!(
        report_status(&old, 1, "applied", Some(1), "old").await,
        StatusCode::NO_CONTENT
    );

    // The router is replaced: a new token for the device, a new router enrolls.
    let r = h
        .post(&format!("/api/v1/devices/{id}/enrollment-token"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let new = h
        .enroll(r.body["enrollment_token"].as_str().unwrap())
        .await
        .map_err(|r| r.body)
        .unwrap();
    assert_eq!(new.certificate.device_id, id);

    // The old router's certificate is refused at once, on the connection it
    // already holds too: no config, no status, no renewal.
    superseded(poll(&old).await, "config");
    assert_eq!(
        report_status(&old, 2, "applied", Some(1), "old").await,
        StatusCode::UNAUTHORIZED
    );
    let status = h.get(&format!("/api/v1/devices/{id}/status")).await;
    assert_eq!(
        stored_sequence(&status),
        1,
        "the old router's report was not stored"
    );
    assert_eq!(status.body["report"]["agent_version"], "old");
    let (_, csr) = h.csr();
    superseded(
        call(
            &old,
            isdf_api::paths::DEVICE_RENEW,
            Some(json!({ "csr_pem": csr })),
        )
        .await,
        "renewal",
    );
    superseded(call(&old, isdf_api::paths::DEVICE_PING, None).await, "ping");

    // The new router works.
    assert_eq!(poll(&new).await.0, StatusCode::OK);
    assert_eq!(
        report_status(&new, 5, "applied", Some(1), "new").await,
        StatusCode::NO_CONTENT
    );
    let status = h.get(&format!("/api/v1/devices/{id}/status")).await;
    assert_eq!(stored_sequence(&status), 5);
    assert_eq!(status.body["report"]["agent_version"], "new");
    superseded(poll(&old).await, "still refused");
}

#[tokio::test]
async fn a_renewed_certificate_replaces_the_old_one_once_it_is_used() {
    let h = Harness::start().await;
    let (_, first) = h.device("r1", json!({})).await;
    let second = renew(&h, &first).await;

    // Until the router uses its new certificate, the old one keeps working
    // (the answer may have been lost on the way).
    assert_eq!(poll(&first).await.0, StatusCode::OK);
    assert_eq!(
        report_status(&first, 1, "applied", Some(1), "x").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(poll(&first).await.0, StatusCode::OK);

    // The first use of the new one retires the old one.
    assert_eq!(poll(&second).await.0, StatusCode::OK);
    superseded(
        poll(&first).await,
        "the old certificate after the new one was used",
    );
    assert_eq!(
        report_status(&first, 2, "applied", Some(1), "x").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        report_status(&second, 3, "applied", Some(1), "x").await,
        StatusCode::NO_CONTENT
    );

    // A renewal whose answer was lost, then another one: the lost
    // certificate is refused once the next is issued, the one in use works
    // until the newest is used.
    let lost = renew(&h, &second).await;
    let third = renew(&h, &second).await;
    superseded(
        poll(&lost).await,
        "a certificate renewed over before its first use",
    );
    assert_eq!(poll(&second).await.0, StatusCode::OK);
    assert_eq!(poll(&third).await.0, StatusCode::OK);
    superseded(poll(&second).await, "the previous certificate");
    assert_eq!(poll(&third).await.0, StatusCode::OK);
}

/// A client certificate for `device` signed with the controller CA's key,
/// as an older controller issued it (not recorded anywhere).
fn unrecorded_certificate(h: &Harness, device: &str) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(h.controller.data_dir.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "iSDF controller CA");
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "iSDF");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(20);
    (
        params.signed_by(&key, &ca, &ca_key).unwrap().pem(),
        key.serialize_pem(),
    )
}

#[tokio::test]
async fn devices_enrolled_before_certificates_were_recorded_are_pinned_at_their_next_issue() {
    let h = Harness::start().await;
    let (id, enrolled) = h.device("r1", json!({})).await;
    // Before this schema, no certificate was recorded: forget this device's.
    let pool = sqlx::PgPool::connect(&h.controller.database_url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM device_certificates WHERE device_id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (old_cert, old_key) = unrecorded_certificate(&h, &id);
    let h = h.restart().await;
    let enrolled = h.handle(enrolled.certificate, enrolled.key_pem);
    let mut old_certificate = enrolled.certificate.clone();
    old_certificate.certificate_pem = old_cert;
    let old = h.handle(old_certificate, old_key);

    // Any certificate of our CA naming the device is accepted, as before...
    assert_eq!(poll(&enrolled).await.0, StatusCode::OK);
    assert_eq!(poll(&old).await.0, StatusCode::OK);

    // ...until the device gets its next certificate: then only the one that
    // renewed (until the new one is used) and the new one.
    let renewed = renew(&h, &enrolled).await;
    superseded(
        poll(&old).await,
        "an unrecorded certificate after the first issue",
    );
    assert_eq!(poll(&enrolled).await.0, StatusCode::OK);
    assert_eq!(poll(&renewed).await.0, StatusCode::OK);
    superseded(
        poll(&enrolled).await,
        "the renewing certificate after the new one was used",
    );
}

/// The fingerprint the device API knows `device`'s certificate by.
fn fingerprint(device: &DeviceHandle) -> [u8; 32] {
    let der = rustls_pemfile::certs(&mut device.certificate.certificate_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    isdf_controller::trust::pki::fingerprint_of(&der)
}

/// Waits (bounded) until `replica` no longer accepts `device`'s certificate
/// from its cache: it was told of the change.
async fn wait_until_told(
    replica: &isdf_controller::test_support::TestController,
    id: &str,
    device: &DeviceHandle,
) {
    use isdf_controller::reconcile::config_cache::CertificateStanding;
    let (id, fingerprint) = (id.parse().unwrap(), fingerprint(device));
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let standing = replica.state.cache.certificate_standing(id, &fingerprint);
        if standing == Some(CertificateStanding::Unknown) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{standing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the other replica was not told");
}

#[tokio::test]
async fn another_replica_follows_re_enrollments_and_renewals() {
    let h = Harness::start().await;
    let (id, old) = h.device("r1", json!({})).await;
    // A second replica over the same database and keys.
    let mut options =
        isdf_controller::test_support::TestControllerOptions::new(&h.controller.data_dir);
    options.database_url = Some(h.controller.database_url.clone());
    let replica = isdf_controller::test_support::TestController::start(options)
        .await
        .unwrap();
    let old_there = old.at(&replica.device_url);
    assert_eq!(poll(&old_there).await.0, StatusCode::OK);

    // Re-enrolled through the first replica: the second is told, and
    // refuses the old router too.
    let r = h
        .post(&format!("/api/v1/devices/{id}/enrollment-token"), json!({}))
        .await;
    let new = h
        .enroll(r.body["enrollment_token"].as_str().unwrap())
        .await
        .map_err(|r| r.body)
        .unwrap();
    wait_until_told(&replica, &id, &old).await;
    superseded(
        poll(&old_there).await,
        "the old router at the other replica",
    );
    let new_there = new.at(&replica.device_url);
    assert_eq!(poll(&new_there).await.0, StatusCode::OK);

    // Renewed through the second replica, the new certificate first used
    // at the first: the second is told the previous one is retired.
    let renewed = renew(&h, &new_there).await;
    assert_eq!(poll(&renewed).await.0, StatusCode::OK);
    superseded(
        poll(&new).await,
        "the previous certificate at the first replica",
    );
    wait_until_told(&replica, &id, &new).await;
    superseded(
        poll(&new_there).await,
        "the previous certificate at the other replica",
    );
    replica.stop().await.unwrap();
}
