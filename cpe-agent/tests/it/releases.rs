//! The agent's download of an agent release from the real controller: the
//! router enrolls, the operator uploads a release signed with the release
//! key, and the agent's client fetches it over mutual TLS into its state
//! directory, resuming a cut download from the byte it stopped at.

use isdf_agent::controller::client::Client;
use isdf_api::release::{ReleaseManifest, RELEASE_PAYLOAD_TYPE};
use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::json;
use serde_json::Value;
use sha2::Digest;

use crate::harness::Operator;

#[tokio::test]
async fn the_agent_downloads_a_release_and_resumes_a_cut_download() {
    // reqwest is built without a default TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let controller =
        TestController::start(TestControllerOptions::new(&work.path().join("controller")))
            .await
            .expect("controller starts");
    let operator = Operator::new(&controller.api_url, &controller.operator_token);
    let created = operator
        .post("/api/v1/devices", json!({"name": "upgrading-router"}))
        .await;
    let agent_dir = work.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(
        agent_dir.join("ca.pem"),
        created["ca_pem"].as_str().unwrap(),
    )
    .unwrap();
    let settings = isdf_agent::sys::settings::Settings::parse(&format!(
        "enrollment_url = {:?}\nca_cert = {:?}\nstate_dir = {:?}\n",
        controller.enrollment_url,
        agent_dir.join("ca.pem"),
        agent_dir.join("state"),
    ))
    .unwrap();
    let identity = isdf_agent::controller::enrollment::enroll(
        &settings,
        created["enrollment_token"].as_str().unwrap(),
    )
    .await
    .expect("the router enrolls");
    let client = Client::new(
        settings.device_api_url(&identity.certificate),
        identity.certificate.ca_pem.as_bytes(),
        &identity,
    )
    .unwrap();

    // A 3 MB release, signed offline with the release key and uploaded.
    let binary: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    let release = publish_release(&controller, &operator, "9.0.0", &binary).await;
    let path = release["path"].as_str().unwrap();

    let size = binary.len() as u64;
    // Whole.
    let whole = agent_dir.join("whole.partial");
    client
        .download_release(path, &whole, size)
        .await
        .expect("downloaded");
    assert!(std::fs::read(&whole).unwrap() == binary);
    // Cut at 1,234,567 bytes (as a power cut would leave it): resumed.
    let cut = agent_dir.join("cut.partial");
    std::fs::write(&cut, &binary[..1_234_567]).unwrap();
    client
        .download_release(path, &cut, size)
        .await
        .expect("resumed");
    assert!(
        std::fs::read(&cut).unwrap() == binary,
        "resumed from the cut"
    );
    // Complete already: nothing asked.
    client
        .download_release(path, &cut, size)
        .await
        .expect("nothing to do");
    // Longer than the manifest (someone else's file): started afresh.
    let long = agent_dir.join("long.partial");
    std::fs::write(&long, vec![0u8; binary.len() + 10]).unwrap();
    client
        .download_release(path, &long, size)
        .await
        .expect("started afresh");
    assert!(std::fs::read(&long).unwrap() == binary);
    // A size below the real one: refused, never more than asked is kept.
    let short = agent_dir.join("short.partial");
    let refused = client
        .download_release(path, &short, 1000)
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("longer than its manifest"),
        "{refused:#}"
    );
    assert!(std::fs::metadata(&short).map_or(0, |m| m.len()) <= 1000);
    // An unknown release: the controller's 404, with its code.
    let missing = client
        .download_release(
            &isdf_api::release::release_path(&"0".repeat(64)),
            &agent_dir.join("x"),
            10,
        )
        .await
        .unwrap_err();
    assert!(format!("{missing:#}").contains("not_found"), "{missing:#}");
}

/// Signs a release of `binary` as agent `version` for this agent's target
/// with the controller's release key (offline, as `isdfctl releases sign`
/// does), creates it and uploads the binary; returns the release.
pub(crate) async fn publish_release(
    controller: &TestController,
    operator: &Operator,
    version: &str,
    binary: &[u8],
) -> Value {
    let manifest = ReleaseManifest {
        version: version.into(),
        target: isdf_agent::AGENT_TARGET.into(),
        sha256: sha2::Sha256::digest(binary)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        size: binary.len() as u64,
    };
    let release_key =
        isdf_controller::trust::roots::read_key(&controller.data_dir.join("release-key.pem"))
            .unwrap();
    let envelope = isdf_api::seal(
        RELEASE_PAYLOAD_TYPE,
        &serde_json::to_vec(&manifest).unwrap(),
        &release_key,
    );
    let release = operator
        .post("/api/v1/agent-releases", json!({"manifest": envelope}))
        .await;
    let uploaded = operator
        .http
        .put(format!(
            "{}/api/v1/agent-releases/{}/binary",
            controller.api_url,
            release["id"].as_str().unwrap()
        ))
        .bearer_auth(&controller.operator_token)
        .header("content-type", "application/octet-stream")
        .body(binary.to_vec())
        .send()
        .await
        .unwrap();
    assert!(
        uploaded.status().is_success(),
        "{}",
        uploaded.text().await.unwrap()
    );
    release
}
