//! Getting and keeping this router's identity: enrollment with a single-use
//! token, and renewal of the certificate before it expires.
//!
//! The key pair is generated on the router (`csr.rs`) and **the private key
//! never leaves the router**: the controller sees only a certificate signing
//! request, and chooses the identity itself (the names in the request are
//! ignored).
//!
//! Nothing is persisted before the answer checked out: the certificate fits
//! the new key, the CA and the signing keys parse, the URL is HTTPS.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use isdf_api::enrollment::{DeviceCertificate, EnrollRequest};
use isdf_api::paths;

use super::client::{self, Client, ControllerError};
use super::csr::new_key_and_request;
use crate::sys::config_files::read_token;
use crate::sys::settings::Settings;
use crate::sys::state::{Identity, StateDir};

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

/// Whether the controller refuses this router's identity for good: the
/// device was deleted, or this certificate was replaced (the device enrolled
/// again, so another router now holds it, or it renewed and used the new
/// certificate). Only enrolling again with a new token helps.
pub fn is_identity_refused(error: &anyhow::Error) -> bool {
    error.downcast_ref::<ControllerError>().is_some_and(|e| {
        matches!(
            e.code.as_deref(),
            Some("device_unknown" | "certificate_superseded")
        )
    })
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
        Some("certificate_superseded") => {
            "the controller replaced this router's certificate (the device was enrolled again, \
             so another router now holds it): only enrolling again with a new token restores \
             access"
        }
        _ => return error.into(),
    };
    anyhow::Error::new(error).context(hint)
}

/// Checks what an answer says before anything is persisted or used: a
/// usable device id, a validity, an HTTPS device API URL, and the keys
/// configs will be checked with: named, or those of its root 1, which must
/// open (the fuzz target `enrollment_answer` found an answer whose root did
/// not, persisted, after which the agent could no longer start).
/// No I/O: the fuzz target runs it as is.
pub fn check_answer(settings: &Settings, answer: &DeviceCertificate) -> anyhow::Result<()> {
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
    settings.config_trust(answer, &[])?;
    Ok(())
}

/// Checks an answer before anything is persisted or used.
fn check(settings: &Settings, identity: &Identity) -> anyhow::Result<()> {
    check_answer(settings, &identity.certificate)?;
    // Builds the mutual-TLS client the agent will use: the CA must parse and
    // the certificate must be for the key generated here.
    Client::new(
        settings.device_api_url(&identity.certificate),
        identity.certificate.ca_pem.as_bytes(),
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

/// An HTTPS client for the enrollment listener: it trusts only `ca_pem`
/// and presents no certificate (the router has none yet); it connects from
/// `source` when given.
pub fn enrollment_client(ca_pem: &[u8], source: Option<IpAddr>) -> anyhow::Result<reqwest::Client> {
    client::https_client(client::tls_builder(ca_pem)?.with_no_client_auth(), source)
}

/// Asks `{enrollment_url}/enroll/v1` over `http` for a certificate of a key
/// pair made here: the answer, not yet checked ([`check_answer`]), and the
/// new private key (PEM). A refusal is a [`ControllerError`] with its code.
/// Nothing is persisted.
pub async fn request_certificate(
    http: &reqwest::Client,
    enrollment_url: &str,
    token: &str,
) -> anyhow::Result<(DeviceCertificate, String)> {
    let fresh = new_key_and_request()?;
    let response = http
        .post(format!(
            "{}{}",
            enrollment_url.trim_end_matches('/'),
            paths::ENROLL
        ))
        .json(&EnrollRequest {
            token: token.to_owned(),
            csr_pem: fresh.csr_pem,
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("reaching the enrollment service at {enrollment_url}"))?;
    let certificate = client::read_device_certificate(response).await?;
    Ok((certificate, fresh.key_pem))
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
    let http = enrollment_client(&ca, None)?;
    let (certificate, key_pem) = request_certificate(&http, url, token)
        .await
        .map_err(|e| match e.downcast::<ControllerError>() {
            Ok(e) => explain(e),
            Err(e) => e,
        })
        .context("enrolling")?;
    let identity = accept(settings, certificate, key_pem)?;
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

    /// Found by the fuzz target `enrollment_answer`: an answer whose root 1
    /// does not open was persisted, after which the agent could not start.
    #[test]
    fn an_answer_whose_root_does_not_open_is_refused() {
        let ca = TestCa::new("controller CA");
        let settings = Settings::parse("state_dir = \"/var/lib/isdf-agent\"\n").unwrap();
        let mut answer = ca
            .identity(DEVICE, "https://controller.example.net:8443")
            .certificate;
        check_answer(&settings, &answer).unwrap();
        answer.roots = vec!["{\"payloadType\":\"\n\"}".into()];
        let err = check_answer(&settings, &answer).unwrap_err();
        assert!(format!("{err:#}").contains("root 1"), "{err:#}");
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
        assert!(is_identity_refused(&err), "{err:#}");
        assert!(format!("{err:#}").contains("enroll it again"), "{err:#}");
        assert_eq!(persisted(&settings).as_ref(), Some(&identity));

        controller.behaviour.lock().unwrap().renew_error =
            Some((StatusCode::UNAUTHORIZED, "certificate_superseded"));
        let err = renew(&client, &settings, &identity).await.unwrap_err();
        assert!(
            is_identity_refused(&err) && !is_device_unknown(&err),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains("another router"), "{err:#}");
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
