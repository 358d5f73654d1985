//! Shared helpers: start a controller, call its APIs.

use isdf_controller::test_support::{TestController, TestControllerOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub struct Harness {
    pub controller: TestController,
    pub http: reqwest::Client,
    pub device_http: reqwest::Client,
    _data_dir: tempfile::TempDir,
}

pub struct Response {
    pub status: StatusCode,
    pub body: Value,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(isdf_controller::limits::Limits::default()).await
    }

    pub async fn start_with(limits: isdf_controller::limits::Limits) -> Self {
        // reqwest is built without a default TLS provider; plain clients need one too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = TestControllerOptions::new(data_dir.path());
        options.limits = limits;
        let controller = TestController::start(options)
            .await
            .expect("controller starts");

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut controller.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Harness {
            controller,
            http: reqwest::Client::new(),
            device_http: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .unwrap(),
            _data_dir: data_dir,
        }
    }

    /// An operator API call with the operator token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.controller.api_url))
            .bearer_auth(&self.controller.operator_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Response { status, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.call(Method::GET, path, None).await
    }

    /// Registers a device; returns (id, token).
    pub async fn device(&self, name: &str, labels: Value) -> (String, String) {
        let r = self
            .post("/api/v1/devices", json!({"name": name, "labels": labels}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (
            r.body["device"]["id"].as_str().unwrap().to_owned(),
            r.body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a flow-block service; returns its id.
    pub async fn flow_block(&self, name: &str, spec: Value) -> String {
        let r = self
            .post(
                "/api/v1/services",
                json!({"name": name, "kind": "flow-block", "spec": spec}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn assign(&self, service_id: &str, selector: &str) -> Response {
        self.post(
            "/api/v1/assignments",
            json!({"service_id": service_id, "selector": selector}),
        )
        .await
    }

    pub async fn config_version(&self, device_id: &str) -> i64 {
        let r = self
            .get(&format!("/api/v1/devices/{device_id}/config"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["version"].as_i64().unwrap()
    }

    /// A device-API poll: (status, ETag, body bytes).
    pub async fn poll(
        &self,
        token: &str,
        enforced: Option<u64>,
        wait: u64,
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        let mut request = self
            .device_http
            .get(format!(
                "{}{}?wait={wait}",
                self.controller.device_url,
                isdf_api::paths::DEVICE_CONFIG
            ))
            .bearer_auth(token);
        if let Some(v) = enforced {
            request = request.header("if-none-match", format!("\"{v}\""));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, etag, response.bytes().await.unwrap().to_vec())
    }
}

/// Asserts the stable error body and returns its code.
pub fn error_code(r: &Response) -> &str {
    assert!(
        r.status.is_client_error(),
        "expected a 4xx, got {} {}",
        r.status,
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.body
    );
    r.body["error"]["code"].as_str().expect("error.code")
}
