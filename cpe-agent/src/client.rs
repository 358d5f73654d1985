//! The device API client: HTTPS with the controller CA pinned as the only
//! root, long-poll config pull with a body cap, status reports.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use isdf_api::{paths, StatusReport, MAX_ENVELOPE_BYTES};
use reqwest::header::{AUTHORIZATION, IF_NONE_MATCH};
use reqwest::StatusCode;

/// Header in which the controller asks for a pause before the next poll.
const POLL_AFTER_HEADER: &str = "isdf-poll-after";
/// The longest pause the agent accepts from a server.
const MAX_POLL_PACE: Duration = Duration::from_secs(3600);

pub struct Client {
    http: reqwest::Client,
    base: String,
    authorization: String,
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

impl Client {
    pub fn new(base: &str, ca_pem: &[u8], token: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots
                .add(cert.context("parsing the controller CA")?)
                .context("adding the controller CA")?;
        }
        if roots.is_empty() {
            bail!("the controller CA file holds no certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .context("building the HTTPS client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {token}"),
        })
    }

    /// Long-polls for a config newer than `enforced`, waiting up to `wait`.
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
            .header(AUTHORIZATION, &self.authorization)
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
            status => {
                let text = response.text().await.unwrap_or_default();
                bail!(
                    "controller answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                )
            }
        }
    }

    pub async fn report(&self, report: &StatusReport) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}{}", self.base, paths::DEVICE_STATUS))
            .header(AUTHORIZATION, &self.authorization)
            .json(report)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .context("posting status")?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            bail!(
                "status report refused ({status}): {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(())
    }

    /// Whether the controller answers an authenticated request right now.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}{}", self.base, paths::DEVICE_PING))
            .header(AUTHORIZATION, &self.authorization)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .context("reaching the controller")?;
        if !response.status().is_success() {
            bail!("controller answered {}", response.status());
        }
        Ok(())
    }
}
