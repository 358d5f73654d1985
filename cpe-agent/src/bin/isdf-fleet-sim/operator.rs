//! The operator API calls the scenarios make (batch enrollment tokens, a
//! timed block on one router, a service assigned to the whole simulated
//! fleet, rollouts, the pages an operator reads), spread over the API URLs
//! given, as an operator's calls may reach any replica.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

/// The largest batch `POST /api/v1/enrollment-tokens` makes.
const TOKENS_PER_CALL: usize = 1000;

pub struct Operator {
    /// Replaced by `forget_connections`; each call takes a clone (a
    /// handle on the same pool).
    http: Mutex<reqwest::Client>,
    tls: rustls::ClientConfig,
    urls: Vec<String>,
    token: String,
    next: AtomicUsize,
}

impl Operator {
    /// A client of the operator API at `urls` (HTTP, or HTTPS trusting only
    /// `ca_pem`) with the bearer `token`.
    pub fn new(urls: Vec<String>, ca_pem: &[u8], token: String) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots
                .add(cert.context("parsing the controller CA")?)
                .context("adding the controller CA")?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Operator {
            http: Mutex::new(http_client(tls.clone())?),
            tls,
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            token,
            next: AtomicUsize::new(0),
        })
    }

    /// Drops the connections kept open to the API URLs: after a replica was
    /// killed, a call must not go out on a connection to it that only
    /// fails once the request is sent (and might then not be safe to send
    /// again), but find it refusing connections, as a new client would.
    pub fn forget_connections(&self) -> anyhow::Result<()> {
        let fresh = http_client(self.tls.clone())?;
        *self.http.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// One call, to the next API URL in turn; the JSON answer (Null when
    /// empty), or an error with the answer's text.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call_with_query(method, path, &[], body).await
    }

    /// One call with query parameters (encoded here). A URL that refuses
    /// the connection (a replica gone) is passed over for the next one, at
    /// most once each: nothing reached it, so nothing is sent twice.
    async fn call_with_query(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut tries_left = self.urls.len();
        let response = loop {
            let base = &self.urls[self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()];
            let http = self.http.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut request = http
                .request(method.clone(), format!("{base}{path}"))
                .query(query)
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            tries_left -= 1;
            match request.send().await {
                Ok(response) => break response,
                Err(e) if e.is_connect() && tries_left > 0 => continue,
                Err(e) => return Err(e).with_context(|| format!("{method} {base}{path}")),
            }
        };
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// `count` single-use enrollment tokens whose devices get `labels`.
    pub async fn enrollment_tokens(
        &self,
        count: usize,
        labels: &Value,
    ) -> anyhow::Result<Vec<String>> {
        let mut tokens = Vec::with_capacity(count);
        while tokens.len() < count {
            let batch = (count - tokens.len()).min(TOKENS_PER_CALL);
            let answer = self
                .call(
                    Method::POST,
                    "/api/v1/enrollment-tokens",
                    Some(json!({"count": batch, "labels": labels, "name_prefix": "sim"})),
                )
                .await?;
            let batch: Vec<String> = serde_json::from_value(answer["tokens"].clone())
                .context("reading the enrollment tokens")?;
            tokens.extend(batch);
        }
        Ok(tokens)
    }

    /// A timed block on one router (the `n`th change of the run, so each
    /// is a new flow); the config version that carries it.
    pub async fn block(&self, device_id: &str, n: usize) -> anyhow::Result<Option<u64>> {
        let answer = self
            .call(
                Method::POST,
                &format!("/api/v1/devices/{device_id}/blocks"),
                Some(json!({
                    "duration_secs": 3600,
                    "reason": "fleet-sim",
                    "flows": [{"protocol": "tcp",
                               "dst": format!("198.51.100.{}", n % 254 + 1),
                               "dport": n % 60_000 + 1}],
                })),
            )
            .await?;
        Ok(answer["config_version"].as_u64())
    }

    /// A `flow-block` service dropping TCP to 203.0.113.0/24 port `dport`
    /// (each scenario its own port, so each service is a different change);
    /// its id.
    pub async fn flow_block_service(&self, name: &str, dport: u16) -> anyhow::Result<String> {
        let answer = self
            .call(
                Method::POST,
                "/api/v1/services",
                Some(json!({"name": name, "kind": "flow-block", "spec": {
                    "action": "drop",
                    "flows": [{"protocol": "tcp", "dst": "203.0.113.0/24", "dport": dport}],
                }})),
            )
            .await?;
        id(&answer)
    }

    /// Assigns `service` to the devices `selector` matches; the assignment's id.
    pub async fn assign(&self, service: &str, selector: &str) -> anyhow::Result<String> {
        let answer = self
            .call(
                Method::POST,
                "/api/v1/assignments",
                Some(json!({"service_id": service, "selector": selector})),
            )
            .await?;
        id(&answer)
    }

    pub async fn unassign(&self, assignment: &str) -> anyhow::Result<()> {
        self.call(
            Method::DELETE,
            &format!("/api/v1/assignments/{assignment}"),
            None,
        )
        .await
        .map(drop)
    }

    /// Starts a rollout (`POST /api/v1/rollouts`); the rollout as answered.
    pub async fn start_rollout(&self, request: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, "/api/v1/rollouts", Some(request))
            .await
    }

    /// A rollout's state and waves.
    pub async fn rollout(&self, id: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await
    }

    /// `POST /api/v1/rollouts/{id}/{action}` (pause, resume, abort); the
    /// rollout as answered.
    pub async fn rollout_action(&self, id: &str, action: &str) -> anyhow::Result<Value> {
        self.call(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/{action}"),
            None,
        )
        .await
    }

    /// A page an operator reads: `GET path?query`.
    pub async fn page(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        self.call_with_query(Method::GET, path, query, None).await
    }
}

fn http_client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the operator API client")
}

fn id(answer: &Value) -> anyhow::Result<String> {
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {answer}"))
}
