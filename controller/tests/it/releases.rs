//! Agent releases through the operator API and the device API: a manifest
//! signed by the release key creates a release, the binary it names
//! completes it, and enrolled routers download it whole or in ranges (a cut
//! download resumes). A manifest signed by the config key, or a binary of
//! another digest or size, is refused with its stable code before anything
//! is written.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use isdf_api::release::{ReleaseManifest, RELEASE_PAYLOAD_TYPE};

use crate::support::Harness;

/// A binary of `len` bytes that is not all the same byte.
pub(crate) fn binary(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn manifest_for(bytes: &[u8], version: &str) -> ReleaseManifest {
    manifest_of(bytes, version, "x86_64-unknown-linux-musl")
}

pub(crate) fn manifest_of(bytes: &[u8], version: &str, target: &str) -> ReleaseManifest {
    ReleaseManifest {
        version: version.into(),
        target: target.into(),
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

pub(crate) fn sealed(manifest: &ReleaseManifest, key: &ed25519_dalek::SigningKey) -> Value {
    let envelope = isdf_api::seal(
        RELEASE_PAYLOAD_TYPE,
        &serde_json::to_vec(manifest).unwrap(),
        key,
    );
    serde_json::to_value(envelope).unwrap()
}

pub(crate) fn key(h: &Harness, file: &str) -> ed25519_dalek::SigningKey {
    isdf_controller::trust::roots::read_key(&h.controller.data_dir.join(file)).unwrap()
}

pub(crate) async fn put_binary(h: &Harness, id: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let response = h
        .http
        .put(format!(
            "{}/api/v1/agent-releases/{id}/binary",
            h.controller.api_url
        ))
        .bearer_auth(&h.controller.operator_token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_release_is_its_signed_manifest_and_the_binary_it_names() {
    let h = Harness::start().await;
    let release_key = key(&h, "release-key.pem");
    let config_key = key(&h, "signing-key.pem");
    let bytes = binary(300_000, 7);
    let manifest = manifest_for(&bytes, "0.5.0");

    // Signed by the config key: refused, nothing stored.
    let r = h
        .post(
            "/api/v1/agent-releases",
            json!({"manifest": sealed(&manifest, &config_key)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "release_not_signed_by_release_key");
    assert_eq!(h.get("/api/v1/agent-releases").await.body, json!([]));
    // A manifest naming a path-like version: refused.
    let mut unsafe_version = manifest.clone();
    unsafe_version.version = "1/../../x".into();
    let r = h
        .post(
            "/api/v1/agent-releases",
            json!({"manifest": sealed(&unsafe_version, &release_key)}),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "release_invalid", "{}", r.body);

    // Signed by the release key: created, waiting for its binary.
    let r = h
        .post(
            "/api/v1/agent-releases",
            json!({"manifest": sealed(&manifest, &release_key)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["uploaded"], false);
    assert_eq!(
        r.body["path"],
        format!("/device/v1/releases/{}", manifest.sha256)
    );
    let again = h
        .post(
            "/api/v1/agent-releases",
            json!({"manifest": sealed(&manifest, &release_key)}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["error"]["code"], "release_exists");

    // Another binary (one byte changed), or a cut one: refused, not stored.
    let mut tampered = bytes.clone();
    tampered[1000] ^= 0x40;
    let (status, body) = put_binary(&h, &id, tampered).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("release_digest_mismatch"))
    );
    let (status, body) = put_binary(&h, &id, bytes[..1000].to_vec()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("release_size_mismatch"))
    );
    assert_eq!(
        h.get(&format!("/api/v1/agent-releases/{id}")).await.body["uploaded"],
        false
    );

    // The binary itself: stored once, never replaced.
    let (status, body) = put_binary(&h, &id, bytes.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["uploaded"], true);
    let (status, body) = put_binary(&h, &id, bytes.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("release_uploaded"))
    );

    // A viewer reads, but cannot create.
    let viewer = h.token("release-viewer", "viewer").await;
    let refused = h
        .http
        .post(format!("{}/api/v1/agent-releases", h.controller.api_url))
        .bearer_auth(&viewer)
        .json(&json!({"manifest": sealed(&manifest_for(b"x", "0.6.0"), &release_key)}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // Every change is audited, the refused one too.
    let audit = h
        .get("/api/v1/audit?action=POST%20/api/v1/agent-releases")
        .await
        .body;
    assert!(audit["items"].as_array().unwrap().len() >= 3, "{audit}");
}

#[tokio::test]
async fn routers_download_a_release_whole_or_in_ranges() {
    let h = Harness::start().await;
    let release_key = key(&h, "release-key.pem");
    let bytes = binary(5 * 1024 * 1024 + 123, 3);
    let manifest = manifest_for(&bytes, "0.5.1");
    let r = h
        .post(
            "/api/v1/agent-releases",
            json!({"manifest": sealed(&manifest, &release_key)}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("{}/{}", isdf_api::paths::DEVICE_RELEASES, manifest.sha256);
    let (_, router) = h.device("downloader", json!({})).await;
    let get = |range: Option<String>| {
        let mut request = router.http.get(router.url(&path));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let content_range = response
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                status,
                content_range,
                response.bytes().await.unwrap().to_vec(),
            )
        }
    };
    // Not uploaded yet: not there.
    assert_eq!(get(None).await.0, StatusCode::NOT_FOUND);
    let (status, _) = put_binary(&h, &id, bytes.clone()).await;
    assert_eq!(status, StatusCode::OK);

    // Whole: 200, every byte.
    let (status, range, whole) = get(None).await;
    assert_eq!((status, range), (StatusCode::OK, None));
    assert!(whole == bytes, "the whole binary");
    // A download cut at 1,000,000 bytes resumes from there.
    let (status, range, first) = get(Some("bytes=0-999999".into())).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes 0-999999/{}", bytes.len()).as_str())
    );
    assert_eq!(first.len(), 1_000_000);
    let (status, range, rest) = get(Some("bytes=1000000-".into())).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes 1000000-{}/{}", bytes.len() - 1, bytes.len()).as_str())
    );
    assert!([first, rest].concat() == bytes, "the pieces are the binary");
    // The last 100 bytes.
    let (_, _, tail) = get(Some("bytes=-100".into())).await;
    assert!(tail[..] == bytes[bytes.len() - 100..]);
    // Beyond the end: 416 with the size; an unknown digest: 404.
    let (status, range, _) = get(Some(format!("bytes={}-", bytes.len()))).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes */{}", bytes.len()).as_str())
    );
    let unknown = router
        .http
        .get(router.url(&format!(
            "{}/{}",
            isdf_api::paths::DEVICE_RELEASES,
            "0".repeat(64)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // Without a router's certificate: refused.
    let anonymous = h
        .device_http
        .get(format!("{}{path}", h.controller.device_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
