//! A rogue device API: holds a certificate from the controller's CA (as a
//! compromised or impersonating server would; it asks no client certificate) and serves whatever envelopes
//! the test queues, recording the status reports the agent sends back. It
//! also serves one release binary at any release path (cut short once, if
//! asked), recording the `Range` of each request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use isdf_api::StatusReport;
use tokio::sync::mpsc;

#[derive(Clone)]
struct Shared {
    queue: Arc<Mutex<VecDeque<Vec<u8>>>>,
    /// The root chain served at /device/v1/roots (envelopes as JSON text).
    roots: Arc<Mutex<Vec<String>>>,
    reports: mpsc::UnboundedSender<StatusReport>,
    release: Arc<Mutex<ServedRelease>>,
}

/// The release binary served at every release path.
#[derive(Default)]
pub struct ServedRelease {
    pub bytes: Vec<u8>,
    /// Cut the next whole-binary answer after this many bytes.
    pub cut_next_at: Option<usize>,
    /// The `Range` header of each request (None: the whole binary).
    pub ranges: Vec<Option<String>>,
}

pub struct RogueController {
    queue: Arc<Mutex<VecDeque<Vec<u8>>>>,
    roots: Arc<Mutex<Vec<String>>>,
    pub release: Arc<Mutex<ServedRelease>>,
    pub reports: mpsc::UnboundedReceiver<StatusReport>,
    handle: axum_server::Handle,
}

async fn serve_config(State(shared): State<Shared>) -> Response {
    let next = shared.queue.lock().unwrap().pop_front();
    match next {
        Some(envelope) => (StatusCode::OK, envelope).into_response(),
        None => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            StatusCode::NOT_MODIFIED.into_response()
        }
    }
}

async fn serve_roots(State(shared): State<Shared>) -> Json<Vec<serde_json::Value>> {
    let roots = shared.roots.lock().unwrap().clone();
    Json(
        roots
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect(),
    )
}

async fn serve_release(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut release = shared.release.lock().unwrap();
    release.ranges.push(range.clone());
    let size = release.bytes.len();
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    match from {
        Some(from) if from < size => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {from}-{}/{size}", size - 1),
            )],
            release.bytes[from..].to_vec(),
        )
            .into_response(),
        Some(_) => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        None => match release.cut_next_at.take() {
            // The first part, then the connection fails mid-body.
            Some(cut) => {
                let first = release.bytes[..cut].to_vec();
                // The first part, a moment for it to be sent, then the error.
                let parts = futures_util::stream::unfold(Some(first), |first| async move {
                    match first {
                        Some(bytes) => Some((Ok::<_, std::io::Error>(bytes), None)),
                        None => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Some((Err(std::io::Error::other("cut halfway")), None))
                        }
                    }
                });
                (
                    [(header::CONTENT_LENGTH, size.to_string())],
                    axum::body::Body::from_stream(parts),
                )
                    .into_response()
            }
            None => release.bytes.clone().into_response(),
        },
    }
}

async fn take_report(State(shared): State<Shared>, Json(report): Json<StatusReport>) -> StatusCode {
    let _ = shared.reports.send(report);
    StatusCode::NO_CONTENT
}

impl RogueController {
    pub async fn start(addr: SocketAddr, controller_data_dir: &Path) -> Self {
        let pki = isdf_controller::trust::pki::Pki::load_or_create(
            controller_data_dir,
            &[addr.ip().to_string()],
        )
        .expect("certificate from the controller CA");
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            queue: Arc::default(),
            roots: Arc::default(),
            reports: tx,
            release: Arc::default(),
        };
        let router = Router::new()
            .route(isdf_api::paths::DEVICE_CONFIG, get(serve_config))
            .route(isdf_api::paths::DEVICE_STATUS, post(take_report))
            .route(isdf_api::paths::DEVICE_PING, get(|| async { "ok" }))
            .route(isdf_api::paths::DEVICE_ROOTS, get(serve_roots))
            .route(
                &format!("{}/{{sha256}}", isdf_api::paths::DEVICE_RELEASES),
                get(serve_release),
            )
            .with_state(shared.clone());
        let listener = std::net::TcpListener::bind(addr).expect("binding the rogue server");
        listener.set_nonblocking(true).unwrap();
        let handle = axum_server::Handle::new();
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(
            pki.enrollment_server_config().unwrap(),
        );
        let server = axum_server::from_tcp_rustls(listener, tls)
            .handle(handle.clone())
            .serve(router.into_make_service());
        tokio::spawn(server);
        RogueController {
            queue: shared.queue,
            roots: shared.roots,
            release: shared.release,
            reports: rx,
            handle,
        }
    }

    /// Serves this root chain from now on.
    pub fn serve_roots(&self, roots: Vec<String>) {
        *self.roots.lock().unwrap() = roots;
    }

    pub fn serve_next(&self, envelope: Vec<u8>) {
        self.queue.lock().unwrap().push_back(envelope);
    }

    /// The next status report, waiting at most `timeout`.
    pub async fn next_report(&mut self, timeout: Duration) -> Option<StatusReport> {
        tokio::time::timeout(timeout, self.reports.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn stop(self) {
        self.handle.shutdown();
    }
}
