//! Enrollment and the certificate-authenticated device API, tested as an
//! attacker would try them.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{error_code, Harness};

fn common_name(cert_pem: &str) -> String {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        cert.subject_alternative_name().unwrap().is_none(),
        "no names from the CSR"
    );
    cn
}

#[tokio::test]
async fn enrollment_issues_a_certificate_naming_the_device_only() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    assert_eq!(common_name(&device.certificate.certificate_pem), id);
    assert_eq!(device.certificate.ca_pem, h.controller.ca_pem);
    assert_eq!(
        device.certificate.signing_public_keys,
        std::slice::from_ref(&h.controller.signing_public_key_hex)
    );
    assert!(device.certificate.not_after > device.certificate.not_before);
    assert_eq!(h.poll(&device, None, 0).await.0, StatusCode::OK);
    // The root chain comes with the certificate and from the device API.
    let root =
        isdf_api::root::RootDocument::open_first(device.certificate.roots[0].as_bytes()).unwrap();
    assert_eq!(
        root.signing_keys,
        std::slice::from_ref(&h.controller.signing_public_key_hex)
    );
    let served: Vec<serde_json::Value> = device
        .http
        .get(device.url(isdf_api::paths::DEVICE_ROOTS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served.len(), 1);
    let view = h.get(&format!("/api/v1/devices/{id}")).await;
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(view.body["certificate_expires_at"].clone()).unwrap();
    assert_eq!(expires.timestamp(), device.certificate.not_after);
    let audit = h.get("/api/v1/audit").await;
    assert_eq!(audit.body["items"][0]["action"], "device.enroll");
    assert_eq!(audit.body["items"][0]["target"], id.as_str());
}

#[tokio::test]
async fn an_enrollment_token_works_once_and_not_after_it_expires() {
    let h = Harness::start().await;
    let (_, token) = h.register("r1", json!({})).await;
    h.enroll(&token).await.map_err(|r| r.body).unwrap();
    let reused = h.enroll(&token).await.err().unwrap();
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&reused), "token_used");
    let unknown = h.enroll("isdf_enr_guessed").await.err().unwrap();
    assert_eq!(error_code(&unknown), "token_unknown");

    let (_, stale) = h.register("r2", json!({})).await;
    let pool = sqlx::PgPool::connect(&h.controller.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE enrollment_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .execute(&pool)
        .await
        .unwrap();
    let expired = h.enroll(&stale).await.err().unwrap();
    assert_eq!(error_code(&expired), "token_expired");
}

#[tokio::test]
async fn a_bad_csr_is_refused_and_leaves_the_token_usable() {
    let h = Harness::start().await;
    let (_, token) = h.register("r1", json!({})).await;
    let r = h
        .device_http
        .post(format!("{}{}", h.controller.enrollment_url, isdf_api::paths::ENROLL))
        .json(&json!({"token": token, "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_csr");
    h.enroll(&token).await.map_err(|r| r.body).unwrap();
}

#[tokio::test]
async fn batch_tokens_create_labelled_devices_on_enrollment() {
    let h = Harness::start().await;
    let batch = h
        .post(
            "/api/v1/enrollment-tokens",
            json!({"count": 3, "labels": {"batch": "2026-11"}, "name_prefix": "cpe"}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
    let tokens: Vec<String> = serde_json::from_value(batch.body["tokens"].clone()).unwrap();
    assert_eq!(tokens.len(), 3);
    for token in &tokens {
        let device = h.enroll(token).await.map_err(|r| r.body).unwrap();
        assert_eq!(
            h.poll(&device, None, 0).await.0,
            StatusCode::OK,
            "a config was compiled for the new device"
        );
    }
    let listed = h.get("/api/v1/devices?selector=batch%3D2026-11").await;
    let names: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| n.starts_with("cpe-")), "{names:?}");
    for bad in [
        json!({"count": 0}),
        json!({"count": 1001}),
        json!({"expires_in_secs": 5}),
    ] {
        let r = h.post("/api/v1/enrollment-tokens", bad).await;
        assert_eq!(error_code(&r), "invalid_request");
    }
}

/// A batch answers what its routers need beside their tokens (the CA to
/// pin and the agent config, as registering one device does), and a prefix
/// that ends in a separator is not given a second one.
#[tokio::test]
async fn a_batch_comes_with_the_ca_and_agent_config_and_names_its_devices_once_separated() {
    let h = Harness::start().await;
    let one = h
        .post("/api/v1/devices", json!({"name": "single", "labels": {}}))
        .await;
    assert_eq!(one.status, StatusCode::CREATED, "{}", one.body);
    let mut names = Vec::new();
    for prefix in ["home-", "lab.", "cpe_", "plain"] {
        let batch = h
            .post(
                "/api/v1/enrollment-tokens",
                json!({"count": 1, "labels": {"batch": "b1"}, "name_prefix": prefix}),
            )
            .await;
        assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
        assert_eq!(batch.body["ca_pem"], h.controller.ca_pem.as_str());
        assert_eq!(batch.body["ca_pem"], one.body["ca_pem"]);
        assert_eq!(batch.body["agent_config"], one.body["agent_config"]);
        let config = batch.body["agent_config"].as_str().unwrap();
        assert!(
            config.contains(&format!(
                "enrollment_url = \"{}\"",
                h.controller.enrollment_url
            )) && config.contains(&format!("controller_url = \"{}\"", h.controller.device_url)),
            "{config}"
        );
        let device = h
            .enroll(batch.body["tokens"][0].as_str().unwrap())
            .await
            .map_err(|r| r.body)
            .unwrap();
        let view = h
            .get(&format!("/api/v1/devices/{}", device.certificate.device_id))
            .await;
        names.push(view.body["name"].as_str().unwrap().to_owned());
    }
    let digits = |name: &str, prefix: &str| {
        let rest = name.strip_prefix(prefix).unwrap_or_default();
        rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit())
    };
    assert!(digits(&names[0], "home-"), "{names:?}");
    assert!(digits(&names[1], "lab."), "{names:?}");
    assert!(digits(&names[2], "cpe_"), "{names:?}");
    assert!(digits(&names[3], "plain-"), "{names:?}");
    // The longest prefix still makes a valid device name; a longer one is
    // refused rather than making names no other call would accept.
    let longest = "p".repeat(51);
    let r = h
        .post("/api/v1/enrollment-tokens", json!({"name_prefix": longest}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .post(
            "/api/v1/enrollment-tokens",
            json!({"name_prefix": format!("{longest}p")}),
        )
        .await;
    assert_eq!(error_code(&r), "invalid_request");
}

#[tokio::test]
async fn renewal_over_mutual_tls_keeps_the_identity() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let (key_pem, csr) = h.csr();
    let renewed = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_RENEW))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), StatusCode::OK);
    let certificate: isdf_api::enrollment::DeviceCertificate = renewed.json().await.unwrap();
    assert_eq!(certificate.device_id, id);
    assert_ne!(
        certificate.certificate_pem,
        device.certificate.certificate_pem
    );
    let fresh = h.handle(certificate, key_pem);
    assert_eq!(h.poll(&fresh, None, 0).await.0, StatusCode::OK);
    // The old key cannot ask for a certificate naming another device.
    assert_eq!(common_name(&fresh.certificate.certificate_pem), id);
    assert!(!device.key_pem.is_empty());
}

/// A certificate signed by `issuer` (its key and parameters) for `cn`.
fn certificate_for(
    cn: &str,
    issuer: &rcgen::Certificate,
    issuer_key: &rcgen::KeyPair,
    days: std::ops::Range<i64>,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.start);
    params.not_after = now + time::Duration::days(days.end);
    let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn ca(key: &rcgen::KeyPair) -> rcgen::Certificate {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "iSDF controller CA");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "iSDF");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    params.self_signed(key).unwrap()
}

#[tokio::test]
async fn certificates_from_another_ca_expired_ones_and_none_are_refused() {
    let h = Harness::start().await;
    let (id, _) = h.device("r1", json!({})).await;
    // Another CA with the same name as ours, naming a real device.
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let (cert, key) = certificate_for(&id, &ca(&rogue_key), &rogue_key, -1..30);
    let forged = h.client_with_certificate(&cert, &key);
    // Our own CA's key, but a certificate that expired yesterday.
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(h.controller.data_dir.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let (cert, key) = certificate_for(&id, &ca(&ca_key), &ca_key, -30..-1);
    let expired = h.client_with_certificate(&cert, &key);
    let url = format!(
        "{}{}",
        h.controller.device_url,
        isdf_api::paths::DEVICE_CONFIG
    );
    for (what, client) in [("another CA", &forged), ("expired", &expired)] {
        let outcome = client.get(&url).send().await;
        assert!(
            outcome.is_err(),
            "{what}: the handshake must fail, got {:?}",
            outcome.map(|r| r.status())
        );
    }
    // A certificate from our CA that does not name a device is refused too,
    // and so is a client without a certificate (the handshake admits it
    // for a load balancer's health check; no device route does).
    let (cert, key) = certificate_for("not-a-device", &ca(&ca_key), &ca_key, -1..30);
    let nameless = h.client_with_certificate(&cert, &key);
    for (what, client) in [("no device", &nameless), ("no certificate", &h.device_http)] {
        for path in [
            isdf_api::paths::DEVICE_CONFIG,
            isdf_api::paths::DEVICE_STATUS,
            isdf_api::paths::DEVICE_RENEW,
            isdf_api::paths::DEVICE_EVENTS,
            isdf_api::paths::DEVICE_PING,
            isdf_api::paths::DEVICE_ROOTS,
            isdf_api::paths::DEVICE_WIREGUARD_PROBE,
            isdf_api::paths::DEVICE_WIREGUARD_FACTS,
        ] {
            let url = format!("{}{path}", h.controller.device_url);
            let method = if [
                isdf_api::paths::DEVICE_CONFIG,
                isdf_api::paths::DEVICE_PING,
                isdf_api::paths::DEVICE_ROOTS,
            ]
            .contains(&path)
            {
                Method::GET
            } else if path == isdf_api::paths::DEVICE_WIREGUARD_FACTS {
                Method::PUT
            } else {
                Method::POST
            };
            let r = client
                .request(method, &url)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}: {path}");
        }
    }
}

#[tokio::test]
async fn a_device_reads_only_its_own_config_and_reports_only_its_own_status() {
    let h = Harness::start().await;
    let (a_id, a) = h.device("a", json!({})).await;
    let (b_id, _) = h.device("b", json!({})).await;
    let (_, _, body) = h.poll(&a, None, 0).await;
    let envelope: isdf_api::Envelope = serde_json::from_slice(&body).unwrap();
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope.payload)
        .unwrap();
    let config: isdf_api::DeviceConfig = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        config.device_id, a_id,
        "the identity comes from the certificate"
    );
    // There is no field to name another device: a report lands on the sender.
    let report = json!({"sequence": 1, "enforced_version": 1, "enforced_digest": null, "outcome": "applied",
        "attempted_version": 1, "errors": [], "counters": [], "backend": "nftables", "agent_version": "x",
        "device_id": b_id});
    let refused = a
        .http
        .post(a.url(isdf_api::paths::DEVICE_STATUS))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "unknown fields such as device_id are refused"
    );
    let mut report = report;
    report.as_object_mut().unwrap().remove("device_id");
    let accepted = a
        .http
        .post(a.url(isdf_api::paths::DEVICE_STATUS))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        h.get(&format!("/api/v1/devices/{a_id}/status"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        error_code(&h.get(&format!("/api/v1/devices/{b_id}/status")).await),
        "not_found"
    );
}

#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_address() {
    let h = Harness::start().await;
    let mut codes = Vec::new();
    for i in 0..15 {
        let r = h.enroll(&format!("isdf_enr_guess{i}")).await.err().unwrap();
        codes.push(r.body["error"]["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "token_unknown").count(),
        10,
        "{codes:?}"
    );
    assert_eq!(codes.last().unwrap(), "rate_limited");
}

#[tokio::test]
async fn an_operator_can_issue_a_new_token_for_an_existing_device() {
    let h = Harness::start().await;
    let (id, first) = h.device("r1", json!({})).await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/v1/devices/{id}/enrollment-token"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // The replacement router gets what the first one got: the CA to pin
    // and an agent config, beside its token.
    assert!(r.body["ca_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let agent_config = r.body["agent_config"].as_str().unwrap();
    assert!(
        agent_config.contains(&format!("controller_url = \"{}\"", h.controller.device_url)),
        "{agent_config}"
    );
    let second = h
        .enroll(r.body["enrollment_token"].as_str().unwrap())
        .await
        .map_err(|r| r.body)
        .unwrap();
    assert_eq!(second.certificate.device_id, id);
    assert_eq!(h.poll(&second, None, 0).await.0, StatusCode::OK);
    assert_eq!(
        h.poll(&first, None, 0).await.0,
        StatusCode::UNAUTHORIZED,
        "the replaced router's certificate is revoked by the new enrollment"
    );
}
