//! Getting and keeping this router's identity: enrollment with a single-use
//! token, and renewal of the certificate before it expires.
//!
//! The key pair is generated here and **the private key never leaves the
//! router**: the controller sees only a certificate signing request, and
//! chooses the identity itself (the names in the request are ignored).
//! Nothing is persisted before the answer checked out: the certificate fits
//! the new key, the CA and the signing keys parse, the URL is HTTPS.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use isdf_api::enrollment::{DeviceCertificate, EnrollRequest};
use isdf_api::paths;

use super::client::{self, Client, ControllerError};
use crate::sys::settings::{read_token, Settings};
use crate::sys::state::{Identity, StateDir};

/// A key pair made on the router, and a request for a certificate of it.
pub struct KeyAndRequest {
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// PKCS#10 certificate signing request, PEM.
    pub csr_pem: String,
}

/// Generates an ECDSA P-256 key pair and a signing request for it.
pub fn new_key_and_request() -> anyhow::Result<KeyAndRequest> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    let rng = ring::rand::SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow!("generating the device key"))?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow!("loading the new device key"))?;

    // PKCS#10 (RFC 2986), DER. The subject is the one the agent sent since
    // it made requests with rcgen; the controller ignores names anyway.
    let subject = der(
        SEQUENCE,
        &der(
            SET,
            &der(
                SEQUENCE,
                &[
                    OID_COMMON_NAME,
                    &der(UTF8_STRING, b"rcgen self signed cert"),
                ]
                .concat(),
            ),
        ),
    );
    let public_key = der(
        SEQUENCE,
        &[
            ALGORITHM_EC_P256,
            &der(BIT_STRING, &[&[0], key.public_key().as_ref()].concat()),
        ]
        .concat(),
    );
    let info = der(
        SEQUENCE,
        &[VERSION_1, &subject, &public_key, NO_ATTRIBUTES].concat(),
    );
    let signature = key
        .sign(&rng, &info)
        .map_err(|_| anyhow!("signing the certificate signing request"))?;
    let csr = der(
        SEQUENCE,
        &[
            &info,
            ALGORITHM_ECDSA_SHA256,
            &der(BIT_STRING, &[&[0], signature.as_ref()].concat()),
        ]
        .concat(),
    );
    Ok(KeyAndRequest {
        key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        csr_pem: pem("CERTIFICATE REQUEST", &csr),
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const BIT_STRING: u8 = 0x03;
const UTF8_STRING: u8 = 0x0c;
/// INTEGER 0: PKCS#10 version 1.
const VERSION_1: &[u8] = &[0x02, 0x01, 0x00];
/// OID 2.5.4.3 (id-at-commonName).
const OID_COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
/// `[0]`, an empty set of attributes.
const NO_ATTRIBUTES: &[u8] = &[0xa0, 0x00];
/// AlgorithmIdentifier: id-ecPublicKey with the named curve prime256v1.
const ALGORITHM_EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// AlgorithmIdentifier: ecdsa-with-SHA256, no parameters.
const ALGORITHM_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// PEM (RFC 7468): base64 in lines of 64 characters, LF line endings.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = base64.as_str();
    while !rest.is_empty() {
        // Base64 is ASCII: any byte offset is a character boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A wait after a refusal no retry can fix by itself (a used token, a
/// deleted device): long enough not to load the controller, short enough
/// that a new token dropped in place is picked up soon.
pub const PERMANENT_FAILURE_RETRY: Duration = Duration::from_secs(300);

/// Whether the controller refused for a reason that retrying the same
/// request will not change (a 4xx other than rate limiting).
pub fn is_permanent(error: &anyhow::Error) -> bool {
    error.downcast_ref::<ControllerError>().is_some_and(|e| {
        e.status.is_client_error() && e.status != reqwest::StatusCode::TOO_MANY_REQUESTS
    })
}

/// Whether the controller said it no longer knows this device.
pub fn is_device_unknown(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ControllerError>()
        .is_some_and(|e| e.code.as_deref() == Some("device_unknown"))
}

/// Puts what an operator should do in front of the controller's error codes.
fn explain(error: ControllerError) -> anyhow::Error {
    let hint = match error.code.as_deref() {
        Some("token_unknown") => {
            "the controller does not know this enrollment token: check it was copied whole \
             and belongs to this controller"
        }
        Some("token_used") => {
            "this enrollment token was already used: ask the operator for a new one"
        }
        Some("token_expired") => {
            "this enrollment token has expired: ask the operator for a new one"
        }
        Some("invalid_csr") => "the controller refused the certificate signing request",
        Some("rate_limited") => "too many enrollment attempts: wait and try again",
        Some("device_unknown") => {
            "the controller no longer knows this device (it was deleted): enroll it again \
             with a new token"
        }
        _ => return error.into(),
    };
    anyhow::Error::new(error).context(hint)
}

/// Checks an answer before anything is persisted or used.
fn check(settings: &Settings, identity: &Identity) -> anyhow::Result<()> {
    let answer = &identity.certificate;
    if answer.device_id.is_empty() || answer.device_id.chars().any(char::is_control) {
        bail!(
            "the controller sent an unusable device id {:?}",
            answer.device_id
        );
    }
    if answer.not_after <= answer.not_before {
        bail!("the controller sent a certificate with an empty validity");
    }
    if settings.controller_url.is_none() {
        // Not HTTPS, or a host name this agent cannot look up (not ASCII).
        crate::sys::settings::require_https("the device API URL", &answer.device_api_url)
            .context("the controller sent an unusable device API URL")?;
    }
    settings.trusted_keys(&identity.certificate)?;
    // Builds the mutual-TLS client the agent will use: the CA must parse and
    // the certificate must be for the key generated here.
    Client::new(
        settings.device_api_url(&identity.certificate),
        answer.ca_pem.as_bytes(),
        identity,
    )
    .context("the certificate answer does not fit the device key")?;
    Ok(())
}

fn accept(
    settings: &Settings,
    certificate: DeviceCertificate,
    key_pem: String,
) -> anyhow::Result<Identity> {
    let identity = Identity {
        certificate,
        key_pem,
    };
    check(settings, &identity)?;
    StateDir::open(&settings.state_dir)?
        .save_identity(&identity)
        .context("persisting the device identity")?;
    Ok(identity)
}

/// Enrolls with `token`: a new key pair, its request sent to
/// `{enrollment_url}/enroll/v1` over TLS that trusts only `ca_cert`; the
/// answer is checked and persisted in the state directory.
pub async fn enroll(settings: &Settings, token: &str) -> anyhow::Result<Identity> {
    let Some(url) = settings.enrollment_url.as_deref() else {
        bail!("enrollment_url is not set: the agent does not know where to enroll");
    };
    let Some(ca_path) = settings.ca_cert.as_deref() else {
        bail!("ca_cert is not set: the controller CA file that came with the token is needed to enroll");
    };
    let ca = std::fs::read(ca_path)
        .with_context(|| format!("reading the controller CA {}", ca_path.display()))?;
    let http = client::https_client(client::tls_builder(&ca)?.with_no_client_auth())?;
    let fresh = new_key_and_request()?;
    let response = http
        .post(format!("{}{}", url.trim_end_matches('/'), paths::ENROLL))
        .json(&EnrollRequest {
            token: token.to_owned(),
            csr_pem: fresh.csr_pem,
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("reaching the enrollment service at {url}"))?;
    let certificate = client::read_device_certificate(response)
        .await
        .map_err(|e| match e.downcast::<ControllerError>() {
            Ok(e) => explain(e),
            Err(e) => e,
        })
        .context("enrolling")?;
    let identity = accept(settings, certificate, fresh.key_pem)?;
    tracing::info!(
        device = identity.device_id(),
        not_after = identity.certificate.not_after,
        "enrolled"
    );
    Ok(identity)
}

/// Enrolls with the token in `token_file` until it works: a controller that
/// is not reachable yet (a router booting before its uplink) is retried with
/// backoff, a refused token every few minutes, reading the file again each
/// time so a new token is picked up. Returns an error only for settings that
/// no retry can fix.
pub async fn enroll_with_token_file(
    settings: &Settings,
    token_file: &Path,
) -> anyhow::Result<Identity> {
    if settings.enrollment_url.is_none() || settings.ca_cert.is_none() {
        bail!("enrollment_token_file is set but enrollment_url or ca_cert is not: cannot enroll");
    }
    let max = Duration::from_secs(settings.max_backoff_secs);
    let mut failures: u32 = 0;
    loop {
        let result = match read_token(token_file) {
            Ok(token) => enroll(settings, &token).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(identity) => return Ok(identity),
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = if is_permanent(&e) {
                    PERMANENT_FAILURE_RETRY
                } else {
                    crate::sys::time::backoff(failures, max)
                };
                tracing::error!(error = %format!("{e:#}"), retry_in = ?delay, "enrollment failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Renews the certificate of `current` over the mutual-TLS `client`: a new
/// key pair, its request to `/device/v1/renew`; the answer is checked (same
/// device) and persisted, replacing key and certificate together.
pub async fn renew(
    client: &Client,
    settings: &Settings,
    current: &Identity,
) -> anyhow::Result<Identity> {
    let fresh = new_key_and_request()?;
    let certificate = client
        .renew(&fresh.csr_pem)
        .await
        .map_err(|e| match e.downcast::<ControllerError>() {
            Ok(e) => explain(e),
            Err(e) => e,
        })
        .context("renewing the device certificate")?;
    if certificate.device_id != current.device_id() {
        bail!(
            "the renewed certificate is for device {:?}, not {:?}; keeping the current one",
            certificate.device_id,
            current.device_id()
        );
    }
    accept(settings, certificate, fresh.key_pem)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use axum::http::StatusCode;

    use super::*;
    use crate::test_pki::{FakeController, TestCa};

    const DEVICE: &str = "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50";

    fn settings(dir: &Path, controller: &FakeController, ca_pem: &str) -> Settings {
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        Settings::parse(&format!(
            "enrollment_url = {:?}\nca_cert = {:?}\nstate_dir = {:?}\ncontrol_socket = {:?}\n\
             backend = \"nftables\"\nmax_backoff_secs = 1\nwan_check = false\n",
            controller.enrollment_url,
            dir.join("ca.pem"),
            dir.join("state"),
            dir.join("agent.sock"),
        ))
        .expect("test settings parse")
    }

    fn persisted(settings: &Settings) -> Option<Identity> {
        StateDir::open(&settings.state_dir)
            .unwrap()
            .identity()
            .unwrap()
    }

    #[test]
    fn the_request_is_a_pem_csr_for_the_key_that_is_kept() {
        let fresh = new_key_and_request().unwrap();
        assert!(fresh
            .csr_pem
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        // Parsing also checks the request's signature, made with the key.
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&fresh.csr_pem).unwrap();
        let key = rcgen::KeyPair::from_pem(&fresh.key_pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(csr.public_key.der_bytes(), key.public_key_raw());
        assert_eq!(csr.public_key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
        let other = new_key_and_request().unwrap();
        assert_ne!(other.key_pem, fresh.key_pem, "a new key every time");
    }

    /// The header length and total length of the first DER element of `der`.
    fn measure(der: &[u8]) -> (usize, usize) {
        match der[1] {
            l if l < 0x80 => (2, 2 + usize::from(l)),
            l => {
                let n = usize::from(l & 0x7f);
                let len = der[2..2 + n]
                    .iter()
                    .fold(0, |acc, &b| acc << 8 | usize::from(b));
                (2 + n, 2 + n + len)
            }
        }
    }

    /// Splits the first DER element off `der`.
    fn element(der: &[u8]) -> (&[u8], &[u8]) {
        der.split_at(measure(der).1)
    }

    /// The request info and the signature algorithm of a DER request.
    fn signed_part(csr: &[u8]) -> (&[u8], &[u8]) {
        let (header, total) = measure(csr);
        let (info, rest) = element(&csr[header..total]);
        (info, element(rest).0)
    }

    fn pem_contents(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn the_request_is_the_one_rcgen_made_for_the_same_key() {
        let fresh = new_key_and_request().unwrap();
        let key = rcgen::KeyPair::from_pem(&fresh.key_pem).unwrap();
        assert_eq!(key.serialize_pem(), fresh.key_pem);
        let theirs = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        assert!(theirs.pem().unwrap().lines().all(|l| l.len() <= 64));
        // The signatures differ (ECDSA draws a nonce); what they sign and
        // how they say they signed it are the same bytes.
        let ours = pem_contents(&fresh.csr_pem);
        assert_eq!(signed_part(&ours), signed_part(theirs.der()));
        assert_eq!(element(&ours).1, b"", "nothing after the request");
    }

    #[test]
    fn long_der_lengths_use_the_long_form() {
        assert_eq!(der(0x04, &[7; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(der(0x04, &[7; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(der(0x04, &[7; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
    }

    #[tokio::test]
    async fn enrollment_persists_an_identity_that_authenticates_and_renews() {
        let dir = tempfile::tempdir().unwrap();
        let controller = FakeController::start(DEVICE, &["good-token"]).await;
        let settings = settings(dir.path(), &controller, &controller.ca_pem());

        let identity = enroll(&settings, "good-token").await.unwrap();
        assert_eq!(identity.device_id(), DEVICE);
        assert_eq!(identity.certificate.device_api_url, controller.device_url);
        assert_eq!(persisted(&settings).as_ref(), Some(&identity));
        let mode = std::fs::metadata(settings.state_dir.join(crate::sys::state::IDENTITY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // The device listener requires a client certificate from the CA.
        let client = Client::new(
            settings.device_api_url(&identity.certificate),
            identity.certificate.ca_pem.as_bytes(),
            &identity,
        )
        .unwrap();
        client.ping().await.unwrap();
        // A certificate from another CA is refused there, so the ping above
        // proves the client presented the enrolled certificate.
        let stranger = TestCa::new("another CA").identity(DEVICE, &controller.device_url);
        let impostor = Client::new(
            &controller.device_url,
            identity.certificate.ca_pem.as_bytes(),
            &stranger,
        )
        .unwrap();
        assert!(impostor.ping().await.is_err());

        let renewed = renew(&client, &settings, &identity).await.unwrap();
        assert_eq!(renewed.device_id(), DEVICE);
        assert_ne!(renewed.key_pem, identity.key_pem, "renewal rotates the key");
        assert_eq!(persisted(&settings).as_ref(), Some(&renewed));
        let client = Client::new(
            settings.device_api_url(&renewed.certificate),
            renewed.certificate.ca_pem.as_bytes(),
            &renewed,
        )
        .unwrap();
        client.ping().await.unwrap();
        assert_eq!(controller.behaviour.lock().unwrap().renewals, 1);
    }

    #[tokio::test]
    async fn enrollment_trusts_only_the_configured_ca() {
        let dir = tempfile::tempdir().unwrap();
        let controller = FakeController::start(DEVICE, &["good-token"]).await;
        let stranger = TestCa::new("another CA");
        let settings = settings(dir.path(), &controller, &stranger.pem());
        let err = enroll(&settings, "good-token").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("reaching the enrollment service"),
            "{err:#}"
        );
        assert_eq!(controller.behaviour.lock().unwrap().enrollments, 0);
        assert_eq!(persisted(&settings), None);
    }

    #[tokio::test]
    async fn refusals_name_their_code_and_persist_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let controller = FakeController::start(DEVICE, &["good-token"]).await;
        let settings = settings(dir.path(), &controller, &controller.ca_pem());

        let err = enroll(&settings, "typo").await.unwrap_err();
        assert!(format!("{err:#}").contains("token_unknown"), "{err:#}");
        assert!(is_permanent(&err));

        for (status, code, permanent, hint) in [
            (StatusCode::UNAUTHORIZED, "token_used", true, "new one"),
            (StatusCode::UNAUTHORIZED, "token_expired", true, "new one"),
            (
                StatusCode::BAD_REQUEST,
                "invalid_csr",
                true,
                "signing request",
            ),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited", false, "wait"),
        ] {
            controller.behaviour.lock().unwrap().enroll_error = Some((status, code));
            let err = enroll(&settings, "good-token").await.unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(code) && text.contains(hint), "{text}");
            assert_eq!(is_permanent(&err), permanent, "{code}");
        }
        assert_eq!(persisted(&settings), None);
    }

    #[tokio::test]
    async fn a_renewal_for_another_device_or_a_deleted_one_keeps_the_current_identity() {
        let dir = tempfile::tempdir().unwrap();
        let controller = FakeController::start(DEVICE, &["good-token"]).await;
        let settings = settings(dir.path(), &controller, &controller.ca_pem());
        let identity = enroll(&settings, "good-token").await.unwrap();
        let client = Client::new(
            settings.device_api_url(&identity.certificate),
            identity.certificate.ca_pem.as_bytes(),
            &identity,
        )
        .unwrap();

        controller.behaviour.lock().unwrap().renewed_device_id = "someone-else".into();
        let err = renew(&client, &settings, &identity).await.unwrap_err();
        assert!(format!("{err:#}").contains("someone-else"), "{err:#}");

        controller.behaviour.lock().unwrap().renew_error =
            Some((StatusCode::UNAUTHORIZED, "device_unknown"));
        let err = renew(&client, &settings, &identity).await.unwrap_err();
        assert!(is_device_unknown(&err), "{err:#}");
        assert!(format!("{err:#}").contains("enroll it again"), "{err:#}");
        assert_eq!(persisted(&settings).as_ref(), Some(&identity));
    }

    #[tokio::test]
    async fn enrolling_needs_the_url_and_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let controller = FakeController::start(DEVICE, &["good-token"]).await;
        let mut settings = settings(dir.path(), &controller, &controller.ca_pem());
        settings.ca_cert = None;
        let err = enroll(&settings, "good-token").await.unwrap_err();
        assert!(err.to_string().contains("ca_cert"), "{err:#}");
        settings.enrollment_url = None;
        let err = enroll(&settings, "good-token").await.unwrap_err();
        assert!(err.to_string().contains("enrollment_url"), "{err:#}");
    }
}
