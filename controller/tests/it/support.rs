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
        Self::start_with(isdf_controller::http::limits::Limits::default()).await
    }

    pub async fn start_with(limits: isdf_controller::http::limits::Limits) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = TestControllerOptions::new(data_dir.path());
        options.limits = limits;
        Self::start_from(options, data_dir).await
    }

    /// A controller joining replicas already running on `database_url`
    /// and `data_dir` (their keys).
    pub async fn joining(database_url: &str, data_dir: tempfile::TempDir) -> Self {
        let mut options = TestControllerOptions::new(data_dir.path());
        options.database_url = Some(database_url.to_owned());
        Self::start_from(options, data_dir).await
    }

    /// A controller whose transactions compile at most `batching`'s routers
    /// (the large-fleet paths, with a few routers).
    pub async fn batching(batching: isdf_controller::reconcile::soon::Batching) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = TestControllerOptions::new(data_dir.path());
        options.recompile_batching = batching;
        Self::start_from(options, data_dir).await
    }

    pub async fn start_from(options: TestControllerOptions, data_dir: tempfile::TempDir) -> Self {
        // reqwest is built without a default TLS provider; plain clients need one too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let controller = TestController::start(options)
            .await
            .expect("controller starts");

        let tls = trusting_the_ca(&controller.ca_pem).with_no_client_auth();
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

    /// Stops the controller and starts it again on the same database and
    /// data directory (its listeners get new ports: make device handles
    /// again with [`Harness::handle`]).
    pub async fn restart(self) -> Self {
        let Harness {
            controller,
            http,
            device_http,
            _data_dir,
        } = self;
        let database_url = controller.database_url.clone();
        controller.stop().await.expect("controller stops");
        let mut options = TestControllerOptions::new(_data_dir.path());
        options.database_url = Some(database_url);
        let controller = TestController::start(options)
            .await
            .expect("controller restarts");
        Harness {
            controller,
            http,
            device_http,
            _data_dir,
        }
    }

    /// Another replica on this controller's database and data directory
    /// (its keys, and the portal URL configs name), as
    /// `isdf-controller serve` processes share them: any request may go to
    /// either.
    pub async fn replica(&self) -> TestController {
        let mut options = TestControllerOptions::new(self._data_dir.path());
        options.database_url = Some(self.controller.database_url.clone());
        options.portal_public_url = Some(self.controller.portal_url.clone());
        TestController::start(options)
            .await
            .expect("another replica starts")
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

    /// A GET on the operator listener with `token` (none: anonymous): the
    /// status, `Content-Type` and body as text.
    pub async fn get_text(&self, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
        let mut request = self.http.get(format!("{}{path}", self.controller.api_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    /// A `flow-block` service with two revisions (192.0.2.1, then
    /// 198.51.100.7), assigned everywhere at revision 1: what a rollout to
    /// revision 2 starts from. Returns (service, assignment).
    pub async fn assigned_blocklist(&self) -> (String, String) {
        let service = self
            .flow_block("blocklist", json!({"flows": [{"dst": "192.0.2.1/32"}]}))
            .await;
        let r = self
            .post(
                &format!("/api/v1/services/{service}/revisions"),
                json!({"spec": {"flows": [{"dst": "198.51.100.7/32"}]}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self
            .post(
                "/api/v1/assignments",
                json!({"service_id": service, "revision": 1, "selector": "*"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (service, r.body["id"].as_str().unwrap().to_owned())
    }

    /// Creates an operator token of `role` (`viewer`, `operator`, `admin`).
    pub async fn token(&self, name: &str, role: &str) -> String {
        let created = self
            .post(
                "/api/v1/operator-tokens",
                json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["role"], role);
        created.body["token"].as_str().unwrap().to_owned()
    }

    /// Registers a device; returns its id and enrollment token.
    pub async fn register(&self, name: &str, labels: Value) -> (String, String) {
        let r = self
            .post("/api/v1/devices", json!({"name": name, "labels": labels}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (
            r.body["device"]["id"].as_str().unwrap().to_owned(),
            r.body["enrollment_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Registers and enrolls a device; returns its id and a client holding
    /// its certificate.
    pub async fn device(&self, name: &str, labels: Value) -> (String, DeviceHandle) {
        let (id, token) = self.register(name, labels).await;
        let handle = self
            .enroll(&token)
            .await
            .unwrap_or_else(|r| panic!("enrollment: {} {}", r.status, r.body));
        assert_eq!(handle.certificate.device_id, id);
        (id, handle)
    }

    /// A certificate signing request for a fresh key: (key PEM, CSR PEM).
    pub fn csr(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        (key.serialize_pem(), csr)
    }

    /// Registers and enrolls a device from another loopback address
    /// (127.0.0.0/8): enrollment admits 10 at once per address, so a test
    /// with a bigger fleet spreads its routers over a few.
    pub async fn device_from(
        &self,
        source: std::net::Ipv4Addr,
        name: &str,
        labels: Value,
    ) -> (String, DeviceHandle) {
        assert!(source.is_loopback(), "{source} is not a loopback address");
        let (id, token) = self.register(name, labels).await;
        let tls = trusting_the_ca(&self.controller.ca_pem).with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .local_address(std::net::IpAddr::V4(source))
            .build()
            .unwrap();
        let handle = self
            .enroll_with(&client, &token)
            .await
            .unwrap_or_else(|r| panic!("enrollment: {} {}", r.status, r.body));
        assert_eq!(handle.certificate.device_id, id);
        (id, handle)
    }

    /// Enrolls with `token` and a fresh key made here: a handle, or the refusal.
    pub async fn enroll(&self, token: &str) -> Result<DeviceHandle, Response> {
        self.enroll_with(&self.device_http, token).await
    }

    async fn enroll_with(
        &self,
        client: &reqwest::Client,
        token: &str,
    ) -> Result<DeviceHandle, Response> {
        let (key_pem, csr) = self.csr();
        let response = client
            .post(format!(
                "{}{}",
                self.controller.enrollment_url,
                isdf_api::paths::ENROLL
            ))
            .json(&json!({"token": token, "csr_pem": csr}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if !status.is_success() {
            return Err(Response { status, body });
        }
        let certificate: isdf_api::enrollment::DeviceCertificate =
            serde_json::from_value(body).unwrap();
        Ok(self.handle(certificate, key_pem))
    }

    /// A device handle for a certificate and its key.
    pub fn handle(
        &self,
        certificate: isdf_api::enrollment::DeviceCertificate,
        key_pem: String,
    ) -> DeviceHandle {
        DeviceHandle {
            http: self.client_with_certificate(&certificate.certificate_pem, &key_pem),
            certificate,
            key_pem,
            base: self.controller.device_url.clone(),
        }
    }

    /// An HTTPS client trusting the controller CA and presenting this certificate.
    pub fn client_with_certificate(&self, cert_pem: &str, key_pem: &str) -> reqwest::Client {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let tls = trusting_the_ca(&self.controller.ca_pem)
            .with_client_auth_cert(certs, key)
            .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
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
        device: &DeviceHandle,
        enforced: Option<u64>,
        wait: u64,
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        let mut request = device
            .http
            .get(device.url(&format!("{}?wait={wait}", isdf_api::paths::DEVICE_CONFIG)));
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

/// An enrolled device: its certificate, key and a client presenting them.
pub struct DeviceHandle {
    pub http: reqwest::Client,
    pub certificate: isdf_api::enrollment::DeviceCertificate,
    pub key_pem: String,
    base: String,
}

impl DeviceHandle {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The same device talking to another replica's device API.
    pub fn at(&self, base: &str) -> DeviceHandle {
        DeviceHandle {
            http: self.http.clone(),
            certificate: self.certificate.clone(),
            key_pem: self.key_pem.clone(),
            base: base.to_owned(),
        }
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

/// A TLS client configuration trusting only the controller CA.
pub fn trusting_the_ca(
    ca_pem: &str,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
}

/// Posts a status report for `device` (over mutual TLS, as an agent does).
pub async fn report_status(
    device: &DeviceHandle,
    sequence: u64,
    outcome: &str,
    enforced_version: Option<u64>,
    agent_version: &str,
) -> StatusCode {
    device
        .http
        .post(device.url(isdf_api::paths::DEVICE_STATUS))
        .json(&json!({
            "sequence": sequence,
            "enforced_version": enforced_version,
            "enforced_digest": null,
            "outcome": outcome,
            "attempted_version": enforced_version,
            "errors": [],
            "counters": [{"rule_id": "r1", "packets": 10 * sequence, "bytes": 1000 * sequence}],
            "backend": "nftables",
            "agent_version": agent_version,
        }))
        .send()
        .await
        .unwrap()
        .status()
}

/// Where `name` is on the PATH, if it is.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
