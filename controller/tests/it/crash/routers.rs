//! Simulated routers: each enrolls for real (its own key, a CSR, a token,
//! from its own loopback address, since enrollment is rate limited per
//! address) and then talks to the device API with its client certificate,
//! as an agent does: it polls its config, reports what it enforces and its
//! WireGuard facts.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use super::world::{Api, CallError};
use crate::support::trusting_the_ca;

pub struct Router {
    pub id: Uuid,
    http: reqwest::Client,
    /// Sequence of its last status report.
    sequence: u64,
    /// The config version it enforces (0: none yet).
    pub enforced: u64,
}

/// The loopback address router `n` of a test enrolls from (`net`: the
/// test's own second octet).
pub fn source_address(net: u8, n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (n / 250) as u8, (n % 250) as u8 + 1)
}

impl Router {
    /// Enrolls with `token` from `source`; Err without an answer or on a refusal.
    pub async fn enroll(
        api: &Api,
        ca_pem: &str,
        token: &str,
        source: Ipv4Addr,
    ) -> Result<Router, CallError> {
        let key = rcgen::KeyPair::generate().expect("a key");
        let csr = rcgen::CertificateParams::new(vec!["router.example".to_owned()])
            .expect("CSR parameters")
            .serialize_request(&key)
            .expect("CSR")
            .pem()
            .expect("CSR PEM");
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(trusting_the_ca(ca_pem).with_no_client_auth())
            .local_address(IpAddr::V4(source))
            .build()
            .expect("enrollment client");
        let response = client
            .post(format!(
                "{}{}",
                api.listening.enrollment,
                isdf_api::paths::ENROLL
            ))
            .json(&json!({"token": token, "csr_pem": csr}))
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        if !status.is_success() {
            return Err(CallError::Status(status, body));
        }
        let certificate: isdf_api::enrollment::DeviceCertificate =
            serde_json::from_value(body).expect("a device certificate");
        let certs = rustls_pemfile::certs(&mut certificate.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key_pem = key.serialize_pem();
        let private = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("key PEM")
            .expect("a key");
        let tls = trusting_the_ca(ca_pem)
            .with_client_auth_cert(certs, private)
            .expect("client certificate");
        Ok(Router {
            id: certificate.device_id.parse().expect("a device id"),
            http: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("device client"),
            sequence: 0,
            enforced: 0,
        })
    }

    /// The config the device API serves it now: (version, envelope bytes).
    pub async fn served(&self, api: &Api) -> Result<(u64, Vec<u8>), CallError> {
        let response = self
            .http
            .get(format!(
                "{}{}",
                api.listening.device,
                isdf_api::paths::DEVICE_CONFIG
            ))
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        if status != reqwest::StatusCode::OK {
            return Err(CallError::Status(
                status,
                Value::String(String::from_utf8_lossy(&body).into_owned()),
            ));
        }
        let version = etag
            .and_then(|v| v.parse().ok())
            .expect("a config answer has its version as ETag");
        Ok((version, body.to_vec()))
    }

    /// Polls once (no wait) and, given a newer config, enforces it and
    /// reports it applied. Ok(true) when it took a new version.
    pub async fn poll_and_apply(&mut self, api: &Api) -> Result<bool, CallError> {
        let response = self
            .http
            .get(format!(
                "{}{}",
                api.listening.device,
                isdf_api::paths::DEVICE_CONFIG
            ))
            .header("if-none-match", format!("\"{}\"", self.enforced))
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        match response.status() {
            reqwest::StatusCode::NOT_MODIFIED => Ok(false),
            reqwest::StatusCode::OK => {
                let version: u64 = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim_matches('"').parse().ok())
                    .expect("a config answer has its version as ETag");
                self.report_applied(api, version).await?;
                Ok(true)
            }
            status => Err(CallError::Status(status, Value::Null)),
        }
    }

    /// Reports `version` applied (and enforced from now on).
    async fn report_applied(&mut self, api: &Api, version: u64) -> Result<(), CallError> {
        self.sequence += 1;
        let response = self
            .http
            .post(format!(
                "{}{}",
                api.listening.device,
                isdf_api::paths::DEVICE_STATUS
            ))
            .json(&json!({
                "sequence": self.sequence,
                "enforced_version": version,
                "enforced_digest": null,
                "outcome": "applied",
                "attempted_version": version,
                "backend": "nftables",
                "agent_version": "crash-test",
            }))
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        match response.status() {
            reqwest::StatusCode::NO_CONTENT => {
                self.enforced = version;
                Ok(())
            }
            status => Err(CallError::Status(status, Value::Null)),
        }
    }

    /// Reports its WireGuard facts: this public key on port 51820.
    pub async fn report_facts(&self, api: &Api, public_key: &str) -> Result<(), CallError> {
        let response = self
            .http
            .put(format!(
                "{}{}",
                api.listening.device,
                isdf_api::paths::DEVICE_WIREGUARD_FACTS
            ))
            .json(&json!({"public_key": public_key, "key_generation": 1, "listen_port": 51820}))
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        match response.status() {
            reqwest::StatusCode::NO_CONTENT => Ok(()),
            status => Err(CallError::Status(
                status,
                response.json().await.unwrap_or(Value::Null),
            )),
        }
    }
}

/// Creates `count` enrollment tokens with `labels` and enrolls a router
/// with each (a few at once), from addresses `127.<net>.x.y`.
pub async fn enroll_fleet(
    api: &Api,
    ca_pem: &str,
    count: usize,
    labels: Value,
    net: u8,
) -> Vec<Router> {
    let batch = api
        .must(
            reqwest::Method::POST,
            "/api/v1/enrollment-tokens",
            Some(json!({"count": count, "labels": labels})),
        )
        .await;
    let tokens: Vec<String> = batch["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("a token").to_owned())
        .collect();
    stream::iter(tokens.iter().enumerate())
        .map(|(n, token)| async move {
            Router::enroll(api, ca_pem, token, source_address(net, n))
                .await
                .unwrap_or_else(|e| panic!("enrolling router {n}: {e:?}"))
        })
        .buffered(6)
        .collect()
        .await
}
