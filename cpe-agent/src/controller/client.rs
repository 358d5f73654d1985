//! The device API client: HTTPS with the controller CA pinned as the only
//! root and the router's certificate as its credential (mutual TLS);
//! long-poll config pull with the body capped before it is read in full,
//! status reports, events, renewal, and the tunnel facts and probe requests.
//! It honours the server's poll pacing (`isdf-poll-after`, at most an hour).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use isdf_api::enrollment::{DeviceCertificate, RenewRequest};
use isdf_api::{paths, StatusReport, MAX_ENVELOPE_BYTES};
use reqwest::header::IF_NONE_MATCH;
use reqwest::StatusCode;

use crate::sys::state::Identity;

/// Longest one release download may take (a few MB over a slow uplink);
/// a cut one resumes where it stopped.
const RELEASE_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Header in which the controller asks for a pause before the next poll.
const POLL_AFTER_HEADER: &str = "isdf-poll-after";
/// The longest pause the agent accepts from a server.
const MAX_POLL_PACE: Duration = Duration::from_secs(3600);
/// The most the agent reads of a certificate answer: two certificates and a
/// few keys take a few kilobytes.
pub(crate) const MAX_CERTIFICATE_ANSWER_BYTES: usize = 64 * 1024;
/// The most the agent reads of an error answer.
const MAX_ERROR_BYTES: usize = 4096;

/// Cheap to clone: the connection pool is shared.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// The answer to a poll.
pub enum Poll {
    /// A newer envelope (raw bytes, not yet verified), and the version the
    /// server claims for it in its ETag (unverified: a polling hint only).
    Newer {
        envelope: Vec<u8>,
        version_hint: Option<u64>,
    },
    NotModified,
    /// The server sent a body above [`MAX_ENVELOPE_BYTES`]; it was not read in full.
    TooLarge {
        size: u64,
        version_hint: Option<u64>,
    },
}

/// An error answer from the controller, with the stable code of its JSON
/// body (`{"error": {"code", "message"}}`) when it had one.
#[derive(Debug)]
pub struct ControllerError {
    pub status: StatusCode,
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ControllerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(
                f,
                "controller answered {}: {code}: {}",
                self.status, self.message
            ),
            None => write!(f, "controller answered {}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for ControllerError {}

impl ControllerError {
    /// Reads (a capped amount of) an error answer.
    pub(crate) async fn read(response: reqwest::Response) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            error: Detail,
        }
        #[derive(serde::Deserialize)]
        struct Detail {
            code: String,
            #[serde(default)]
            message: String,
        }
        let status = response.status();
        let bytes = read_capped(response, MAX_ERROR_BYTES)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        match serde_json::from_slice::<Body>(&bytes) {
            Ok(body) => ControllerError {
                status,
                code: Some(body.error.code),
                message: body.error.message,
            },
            Err(_) => ControllerError {
                status,
                code: None,
                message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            },
        }
    }
}

/// Reads a body of at most `limit` bytes; None when it is larger (the rest
/// is not read).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> anyhow::Result<Option<Vec<u8>>> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading the answer")? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Reads a `DeviceCertificate` answer (enrollment or renewal).
pub(crate) async fn read_device_certificate(
    response: reqwest::Response,
) -> anyhow::Result<DeviceCertificate> {
    if !response.status().is_success() {
        return Err(ControllerError::read(response).await.into());
    }
    let body = read_capped(response, MAX_CERTIFICATE_ANSWER_BYTES)
        .await?
        .context("the certificate answer is too large")?;
    serde_json::from_slice(&body).context("parsing the certificate answer")
}

/// TLS that trusts only the certificates of `ca_pem`, ring as the crypto
/// provider (no system roots, no second crypto library).
pub(crate) fn tls_builder(
    ca_pem: &[u8],
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(cert.context("parsing the controller CA")?)
            .context("adding the controller CA")?;
    }
    if roots.is_empty() {
        bail!("the controller CA holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        key_provider: &EcdsaKeys,
        ..rustls::crypto::ring::default_provider()
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots))
}

/// Loads only ECDSA private keys, the kind `enrollment` generates. The
/// default loader also takes RSA and Ed25519 keys, which links ring's RSA
/// signing into a binary that never uses it.
#[derive(Debug)]
struct EcdsaKeys;

impl rustls::crypto::KeyProvider for EcdsaKeys {
    fn load_private_key(
        &self,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_ecdsa_type(&key)
    }
}

/// An HTTPS-only client over `tls`, connecting from `source` when given
/// (the fleet simulator spreads its routers over loopback addresses; the
/// agent lets the kernel choose).
pub(crate) fn https_client(
    tls: rustls::ClientConfig,
    source: Option<IpAddr>,
) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .local_address(source)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .context("building the HTTPS client")
}

impl Client {
    /// A client of the device API at `base` that trusts only `ca_pem` and
    /// authenticates with the certificate and key of `identity`. Fails when
    /// the key does not belong to the certificate.
    pub fn new(base: &str, ca_pem: &[u8], identity: &Identity) -> anyhow::Result<Self> {
        Self::from_source(base, ca_pem, identity, None)
    }

    /// [`Client::new`], connecting from the local address `source` when
    /// given.
    pub fn from_source(
        base: &str,
        ca_pem: &[u8],
        identity: &Identity,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Self> {
        let chain = rustls_pemfile::certs(&mut identity.certificate.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the device certificate")?;
        if chain.is_empty() {
            bail!("the device certificate PEM holds no certificate");
        }
        let key = rustls_pemfile::private_key(&mut identity.key_pem.as_bytes())
            .context("parsing the device key")?
            .context("the device key PEM holds no private key")?;
        let tls = tls_builder(ca_pem)?
            .with_client_auth_cert(chain, key)
            .context("the device key does not fit the device certificate")?;
        Ok(Client {
            http: https_client(tls, source)?,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// Long-polls for a config newer than `enforced`, waiting up to `wait`.
    /// Also returns how long the server asks the agent to wait before the
    /// next poll (its `isdf-poll-after` header; zero when absent).
    pub async fn poll(
        &self,
        enforced: Option<u64>,
        wait: Duration,
    ) -> anyhow::Result<(Poll, Duration)> {
        let mut pace = Duration::ZERO;
        let poll = self.poll_once(enforced, wait, &mut pace).await?;
        Ok((poll, pace))
    }

    async fn poll_once(
        &self,
        enforced: Option<u64>,
        wait: Duration,
        pace: &mut Duration,
    ) -> anyhow::Result<Poll> {
        let mut request = self
            .http
            .get(format!(
                "{}{}?wait={}",
                self.base,
                paths::DEVICE_CONFIG,
                wait.as_secs()
            ))
            .timeout(wait + Duration::from_secs(20));
        if let Some(v) = enforced {
            request = request.header(IF_NONE_MATCH, format!("\"{v}\""));
        }
        let mut response = request.send().await.context("polling the controller")?;
        *pace = response
            .headers()
            .get(POLL_AFTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::ZERO, |s| {
                Duration::from_secs(s).min(MAX_POLL_PACE)
            });

        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Poll::NotModified),
            StatusCode::OK => {
                let version_hint = response
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim_matches('"').parse().ok());
                // Cap the body before reading it all: a hostile or broken
                // server cannot make the router buffer more than the limit.
                let limit = MAX_ENVELOPE_BYTES as u64;
                if let Some(size) = response.content_length().filter(|l| *l > limit) {
                    return Ok(Poll::TooLarge { size, version_hint });
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.context("reading the config body")? {
                    if body.len() + chunk.len() > MAX_ENVELOPE_BYTES {
                        let size = (body.len() + chunk.len()) as u64;
                        return Ok(Poll::TooLarge { size, version_hint });
                    }

                    body.extend_from_slice(&chunk);
                }
                Ok(Poll::Newer {
                    envelope: body,
                    version_hint,
                })
            }
            _ => Err(ControllerError::read(response).await.into()),
        }
    }

    pub async fn report(&self, report: &StatusReport) -> anyhow::Result<()> {
        self.post_json(paths::DEVICE_STATUS, report, "status report")
            .await
    }

    /// Delivers router events; a resent batch is harmless.
    pub async fn report_events(&self, batch: &isdf_api::events::EventBatch) -> anyhow::Result<()> {
        self.post_json(paths::DEVICE_EVENTS, batch, "router events")
            .await
    }

    /// Reports the router's tunnel facts (`PUT`; the controller answers 204).
    pub async fn put_wireguard_facts(
        &self,
        facts: &isdf_api::wireguard::WireguardFacts,
    ) -> anyhow::Result<()> {
        let request = self
            .http
            .put(format!("{}{}", self.base, paths::DEVICE_WIREGUARD_FACTS));
        self.send_json(request, facts, "WireGuard facts")
            .await
            .map(drop)
    }

    /// Asks the controller to send UDP probes to the router.
    pub async fn request_probe(
        &self,
        probe: &isdf_api::wireguard::ProbeRequest,
    ) -> anyhow::Result<isdf_api::wireguard::ProbeAnswer> {
        let request = self
            .http
            .post(format!("{}{}", self.base, paths::DEVICE_WIREGUARD_PROBE));
        let response = self.send_json(request, probe, "probe request").await?;
        let body = read_capped(response, MAX_ERROR_BYTES)
            .await?
            .context("the probe answer is too large")?;
        serde_json::from_slice(&body).context("reading the probe answer")
    }

    async fn post_json(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        what: &str,
    ) -> anyhow::Result<()> {
        let request = self.http.post(format!("{}{path}", self.base));
        self.send_json(request, body, what).await.map(drop)
    }

    async fn send_json(
        &self,
        request: reqwest::RequestBuilder,
        body: &impl serde::Serialize,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request
            .json(body)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .with_context(|| format!("sending {what}"))?;
        if !response.status().is_success() {
            let e = ControllerError::read(response).await;
            return Err(anyhow::Error::new(e).context(format!("{what} refused")));
        }
        Ok(response)
    }

    /// Whether the controller answers an authenticated request right now.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}{}", self.base, paths::DEVICE_PING))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .context("reaching the controller")?;
        if !response.status().is_success() {
            bail!("controller answered {}", response.status());
        }
        Ok(())
    }

    /// Asks for a certificate for the key pair of `csr_pem`, authenticated
    /// by the current certificate.
    /// The controller's root chain (envelopes as JSON text, oldest first).
    pub async fn roots(&self) -> anyhow::Result<Vec<String>> {
        let response = self
            .http
            .get(format!("{}{}", self.base, paths::DEVICE_ROOTS))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .context("fetching the root chain")?;
        if !response.status().is_success() {
            anyhow::bail!(
                "controller answered {} for the root chain",
                response.status()
            );
        }
        let chain: Vec<serde_json::Value> =
            response.json().await.context("reading the root chain")?;
        Ok(chain.iter().map(|v| v.to_string()).collect())
    }

    /// Downloads the release binary at `path` (a device API path) into
    /// `partial`, resuming from what it already holds (`Range`), until it
    /// holds `size` bytes; never more. A file longer than `size` is started
    /// afresh, and so is a server that ignores the range. The bytes are not
    /// checked here: the caller checks them against the signed manifest.
    pub async fn download_release(
        &self,
        path: &str,
        partial: &std::path::Path,
        size: u64,
    ) -> anyhow::Result<()> {
        let held = std::fs::metadata(partial).map_or(0, |m| m.len());
        let mut have = if held > size { 0 } else { held };
        let mut restart = held > size;
        if have == size && !restart {
            return Ok(());
        }
        let mut request = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(RELEASE_DOWNLOAD_TIMEOUT);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut response = request.send().await.context("downloading the release")?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let starts = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if starts != Some(have) {
                    bail!("the release answer starts at {starts:?}, not at byte {have}");
                }
            }
            StatusCode::OK => {
                // The whole binary: whatever the file held goes.
                restart = true;
                have = 0;
            }
            _ => return Err(ControllerError::read(response).await.into()),
        }
        while let Some(chunk) = response.chunk().await.context("reading the release")? {
            if have + chunk.len() as u64 > size {
                bail!("the release is longer than its manifest's {size} bytes");
            }
            crate::sys::atomic_write::append_to_download(partial, &chunk, restart)?;
            restart = false;
            have += chunk.len() as u64;
        }
        if have != size {
            bail!("the download ended at byte {have} of {size}; it resumes from there");
        }
        Ok(())
    }

    pub async fn renew(&self, csr_pem: &str) -> anyhow::Result<DeviceCertificate> {
        let response = self
            .http
            .post(format!("{}{}", self.base, paths::DEVICE_RENEW))
            .json(&RenewRequest {
                csr_pem: csr_pem.to_owned(),
            })
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("reaching the controller to renew")?;
        read_device_certificate(response).await
    }
}
