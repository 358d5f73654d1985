//! Test support: a throwaway CA, device identities it issued, and a fake
//! controller with an enrollment listener (server-auth TLS) and a device
//! listener (mutual TLS), so enrollment and renewal are tested over real TLS
//! without the controller crate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use isdf_api::enrollment::{DeviceCertificate, EnrollRequest, RenewRequest};
use isdf_api::paths;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

use crate::controller::csr::new_key_and_request;
use crate::sys::state::Identity;
use crate::sys::time::unix_now;

/// The public key (hex) of the Ed25519 key `[7; 32]` the agent tests sign with.
pub const SIGNING_KEY_HEX: &str =
    "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";

pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a client certificate for `device_id` to the key of `csr_pem`,
    /// ignoring the names in the request, as the controller does.
    pub fn sign_request(&self, csr_pem: &str, device_id: &str) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params = params;
        csr.signed_by(&self.cert, &self.key).unwrap().pem()
    }

    /// The answer the controller gives for a certificate of `device_id`.
    pub fn answer(
        &self,
        csr_pem: &str,
        device_id: &str,
        device_api_url: &str,
    ) -> DeviceCertificate {
        let now = unix_now();
        DeviceCertificate {
            device_id: device_id.into(),
            certificate_pem: self.sign_request(csr_pem, device_id),
            ca_pem: self.pem(),
            signing_public_keys: vec![SIGNING_KEY_HEX.into()],
            device_api_url: device_api_url.into(),
            roots: Vec::new(),
            not_before: now - 10,
            not_after: now + 3600,
        }
    }

    /// A complete identity for `device_id`, as enrollment leaves it.
    pub fn identity(&self, device_id: &str, device_api_url: &str) -> Identity {
        let fresh = new_key_and_request().unwrap();
        Identity {
            certificate: self.answer(&fresh.csr_pem, device_id, device_api_url),
            key_pem: fresh.key_pem,
        }
    }

    /// A server certificate for 127.0.0.1; with `client_auth`, client
    /// certificates from this CA are required.
    pub fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.cert.der().clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Arc::new(
            builder
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap(),
        )
    }
}

/// What the fake controller does and saw.
pub struct Behaviour {
    /// The device id enrollment gives.
    pub device_id: String,
    /// The device id renewal answers with (a broken controller may differ).
    pub renewed_device_id: String,
    /// Tokens that enroll; any other gets `token_unknown`.
    pub good_tokens: Vec<String>,
    /// Error answers (status, code) given instead of a certificate.
    pub enroll_error: Option<(StatusCode, &'static str)>,
    pub renew_error: Option<(StatusCode, &'static str)>,
    pub enrollments: usize,
    pub renewals: usize,
}

#[derive(Clone)]
struct Shared {
    ca: Arc<TestCa>,
    device_url: String,
    behaviour: Arc<Mutex<Behaviour>>,
}

fn error(status: StatusCode, code: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": format!("fake {code}")}});
    (status, Json(body)).into_response()
}

async fn enroll(State(shared): State<Shared>, Json(request): Json<EnrollRequest>) -> Response {
    let mut b = shared.behaviour.lock().unwrap();
    if let Some((status, code)) = b.enroll_error {
        return error(status, code);
    }
    if !b.good_tokens.contains(&request.token) {
        return error(StatusCode::UNAUTHORIZED, "token_unknown");
    }
    b.good_tokens.retain(|t| *t != request.token);
    b.enrollments += 1;
    Json(
        shared
            .ca
            .answer(&request.csr_pem, &b.device_id, &shared.device_url),
    )
    .into_response()
}

async fn renew(State(shared): State<Shared>, Json(request): Json<RenewRequest>) -> Response {
    let mut b = shared.behaviour.lock().unwrap();
    if let Some((status, code)) = b.renew_error {
        return error(status, code);
    }
    b.renewals += 1;
    Json(
        shared
            .ca
            .answer(&request.csr_pem, &b.renewed_device_id, &shared.device_url),
    )
    .into_response()
}

pub struct FakeController {
    pub ca: Arc<TestCa>,
    pub enrollment_url: String,
    pub device_url: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    handles: Vec<axum_server::Handle>,
}

impl FakeController {
    pub async fn start(device_id: &str, good_tokens: &[&str]) -> Self {
        let ca = Arc::new(TestCa::new("fake controller CA"));
        let enroll_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let device_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = |l: &std::net::TcpListener| {
            let addr: SocketAddr = l.local_addr().unwrap();
            format!("https://{addr}")
        };
        let shared = Shared {
            ca: ca.clone(),
            device_url: url(&device_listener),
            behaviour: Arc::new(Mutex::new(Behaviour {
                device_id: device_id.into(),
                renewed_device_id: device_id.into(),
                good_tokens: good_tokens.iter().map(|t| t.to_string()).collect(),
                enroll_error: None,
                renew_error: None,
                enrollments: 0,
                renewals: 0,
            })),
        };
        let enrollment_url = url(&enroll_listener);
        let enroll_router = Router::new()
            .route(paths::ENROLL, post(enroll))
            .with_state(shared.clone());
        let device_router = Router::new()
            .route(paths::DEVICE_RENEW, post(renew))
            .route(paths::DEVICE_PING, get(|| async { "ok" }))
            .with_state(shared.clone());
        let mut handles = Vec::new();
        for (listener, router, client_auth) in [
            (enroll_listener, enroll_router, false),
            (device_listener, device_router, true),
        ] {
            listener.set_nonblocking(true).unwrap();
            let handle = axum_server::Handle::new();
            let tls =
                axum_server::tls_rustls::RustlsConfig::from_config(ca.server_config(client_auth));
            let server = axum_server::from_tcp_rustls(listener, tls)
                .handle(handle.clone())
                .serve(router.into_make_service());
            tokio::spawn(server);
            handles.push(handle);
        }
        FakeController {
            ca,
            enrollment_url,
            device_url: shared.device_url,
            behaviour: shared.behaviour,
            handles,
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.shutdown();
        }
    }
}
