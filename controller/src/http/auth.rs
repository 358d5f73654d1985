//! Authentication and authorisation for both listeners, and the audit of
//! operator actions.
//!
//! Every operator route sits behind [`authorize_and_audit`]: it resolves the
//! bearer token (or the dashboard's session cookie, see [`crate::http::sessions`];
//! a cookie-authenticated change must carry the session's CSRF token) to an
//! operator, checks the role the route and method need,
//! and appends every mutating call (and every refused one) to the audit log
//! with who, what, when, the target and a summary of the change. Handlers
//! then take the [`Operator`] it stored in the request.

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::db;
use crate::db::audit::NewAuditEntry;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::model::Role;
use crate::reconcile::config_cache::{CertificateFingerprint, CertificateStanding};
use crate::trust::tokens::{bearer, hash_token};

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Put there by `authorize_and_audit`; absent only if a route was
        // registered outside it, which must fail closed.
        parts
            .extensions
            .get::<Operator>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The role a call needs.
fn required_role(method: &Method, route: &str) -> Role {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    match (route.starts_with("/api/v1/operator-tokens"), reads) {
        (true, _) => Role::Admin,
        (false, true) => Role::Viewer,
        (false, false) => Role::Operator,
    }
}

/// The operator the request's bearer token stands for, else the one its
/// dashboard session cookie stands for (with the session, whose CSRF token
/// changes must carry).
async fn authenticate(
    state: &AppState,
    parts: &Parts,
) -> Result<(Operator, Option<crate::http::sessions::Session>), ApiError> {
    let Some(token) = bearer(parts.headers.get(AUTHORIZATION)) else {
        let session = crate::http::sessions::find(&state.pool, &parts.headers)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let operator = Operator {
            id: session.token_id,
            name: session.name.clone(),
            role: session.role,
        };
        return Ok((operator, Some(session)));
    };
    let row = db::operators::find_active(&state.pool, &hash_token(token))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let role =
        Role::parse(&row.role).ok_or_else(|| anyhow::anyhow!("stored role `{}`", row.role))?;
    Ok((
        Operator {
            id: row.id,
            name: row.name,
            role,
        },
        None,
    ))
}

/// Largest part of a request body kept as the audit summary.
const SUMMARY_BYTES: usize = 2048;

/// A summary of a request body: the JSON itself when small, else its start.
pub(crate) fn summarize(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        return serde_json::Value::Null;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) if body.len() <= SUMMARY_BYTES => value,
        _ => {
            let cut = String::from_utf8_lossy(&body[..body.len().min(SUMMARY_BYTES)]).into_owned();
            serde_json::json!({"truncated": cut, "bytes": body.len()})
        }
    }
}

/// The id a call acted on: the path's id, or the id of what it created.
fn target(path: &str, response_body: &[u8]) -> Option<String> {
    let from_path = path
        .trim_start_matches("/api/v1/")
        .split('/')
        .nth(1)
        .map(str::to_owned);
    from_path.or_else(|| {
        let created: serde_json::Value = serde_json::from_slice(response_body).ok()?;
        // Ids are uuids, or numbers (sites).
        created["id"]
            .as_str()
            .or_else(|| created["device"]["id"].as_str())
            .map(str::to_owned)
            .or_else(|| created["id"].as_i64().map(|id| id.to_string()))
    })
}

/// Middleware for every operator route (see the module doc).
pub async fn authorize_and_audit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let (operator, session) = match authenticate(&state, &parts).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(path = %parts.uri.path(), "operator call without valid credentials");
            return e.into_response();
        }
    };
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path().to_owned(), |m| m.as_str().to_owned());
    let action = format!("{} {route}", parts.method);
    let mutating = !matches!(parts.method, Method::GET | Method::HEAD);
    let needed = required_role(&parts.method, &route);

    // A browser's cookie rides along on any request to us, so a change made
    // with one must also prove it comes from the dashboard's page.
    if mutating
        && session
            .as_ref()
            .is_some_and(|s| !s.csrf_matches(&parts.headers))
    {
        record(
            &state,
            &operator,
            &action,
            Some(parts.uri.path().to_owned()),
            403,
            serde_json::Value::Null,
        )
        .await;
        return ApiError::Refused {
            code: "csrf",
            message: format!(
                "a change made with a dashboard session needs the `{}` header of that session",
                crate::http::sessions::CSRF_HEADER
            ),
        }
        .into_response();
    }

    if operator.role < needed {
        let refusal = ApiError::Forbidden(format!(
            "`{}` is a {} token; {action} needs {}",
            operator.name,
            operator.role.as_str(),
            needed.as_str()
        ));
        if mutating || needed == Role::Admin {
            record(
                &state,
                &operator,
                &action,
                Some(parts.uri.path().to_owned()),
                403,
                serde_json::Value::Null,
            )
            .await;
        }
        return refusal.into_response();
    }
    parts.extensions.insert(operator.clone());
    if !mutating {
        return next.run(Request::from_parts(parts, body)).await;
    }

    // Bodies are already capped by the route's limit; keep a copy for the summary.
    let bytes = match to_bytes(body, crate::http::limits::OPERATOR_BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let summary = summarize(&bytes);
    let path = parts.uri.path().to_owned();
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    let (response_parts, response_body) = response.into_parts();
    let response_bytes = to_bytes(response_body, usize::MAX)
        .await
        .unwrap_or_default();
    let target = target(&path, &response_bytes);
    record(&state, &operator, &action, target, status.as_u16(), summary).await;
    Response::from_parts(response_parts, Body::from(response_bytes))
}

async fn record(
    state: &AppState,
    operator: &Operator,
    action: &str,
    target: Option<String>,
    status: u16,
    summary: serde_json::Value,
) {
    let entry = NewAuditEntry {
        actor_id: Some(operator.id),
        actor: &operator.name,
        action,
        target: target.as_deref(),
        status,
        summary,
    };
    match db::audit::append(&state.pool, &entry).await {
        Ok(()) => state.live.notify(crate::reconcile::live::Topic::Audit),
        // The change itself is committed; losing its audit entry must at
        // least be loud.
        Err(e) => {
            tracing::error!(error = %e, actor = %operator.name, action, "could not append to the audit log")
        }
    }
}

/// The TLS client certificate of the connection, put on every request by
/// [`DeviceIdentityAcceptor`]: the device id it names (None: no usable
/// certificate) and its SHA-256 fingerprint.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerDevice {
    pub device: Option<Uuid>,
    pub fingerprint: Option<CertificateFingerprint>,
}

/// The device making a device-API call. Its identity comes from its client
/// certificate only (verified against our CA during the handshake), never
/// from the request, and only the certificates the device may still use
/// are admitted (see [`crate::trust::device_certificates`]). No database
/// query on the hot path: known devices and their certificates live in the
/// cache.
#[derive(Debug, Clone, Copy)]
pub struct Device(pub Uuid);

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<PeerDevice>()
            .copied()
            .unwrap_or_default();
        let (Some(device), Some(fingerprint)) = (peer.device, peer.fingerprint) else {
            return Err(ApiError::Unauthorized);
        };
        let Some(standing) = state.cache.certificate_standing(device, &fingerprint) else {
            return Err(ApiError::Denied {
                code: "device_unknown",
                message: "this device was deleted or revoked; enroll again with a new token".into(),
            });
        };
        // Limited per identity: routers share addresses behind CGNAT.
        state.device_gate.admit(device)?;
        if standing != CertificateStanding::Accepted
            && !crate::trust::device_certificates::admit(
                &state.pool,
                &state.cache,
                device,
                fingerprint,
            )
            .await?
        {
            return Err(ApiError::Denied {
                code: "certificate_superseded",
                message: "this certificate was replaced (the device enrolled again, or renewed \
                          and used its new certificate); only enrolling again with a new token \
                          restores access"
                    .into(),
            });
        }
        Ok(Device(device))
    }
}

/// The fingerprint of the client certificate a device-API call presents
/// (for renewal, which keeps it usable until its successor is used).
#[derive(Debug, Clone, Copy)]
pub struct PresentedCertificate(pub CertificateFingerprint);

impl<S: Send + Sync> FromRequestParts<S> for PresentedCertificate {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<PeerDevice>()
            .and_then(|p| p.fingerprint)
            .map(PresentedCertificate)
            .ok_or(ApiError::Unauthorized)
    }
}

/// Accepts TLS connections on the device listener and tags the connection's
/// requests with the device id of its (already verified) client certificate.
#[derive(Clone)]
pub struct DeviceIdentityAcceptor {
    tls: axum_server::tls_rustls::RustlsAcceptor,
}

impl DeviceIdentityAcceptor {
    pub fn new(tls: axum_server::tls_rustls::RustlsAcceptor) -> Self {
        DeviceIdentityAcceptor { tls }
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for DeviceIdentityAcceptor
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = tokio_rustls::server::TlsStream<I>;
    type Service = tower_http::add_extension::AddExtension<S, PeerDevice>;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send,
        >,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let (stream, service) = tls.accept(stream, service).await?;
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first());
            let peer = PeerDevice {
                device: certificate.and_then(crate::trust::pki::device_id_of),
                fingerprint: certificate.map(crate::trust::pki::fingerprint_of),
            };
            Ok((
                stream,
                tower_http::add_extension::AddExtension::new(service, peer),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_needed_per_route() {
        assert_eq!(required_role(&Method::GET, "/api/v1/devices"), Role::Viewer);
        assert_eq!(
            required_role(&Method::POST, "/api/v1/devices"),
            Role::Operator
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/assignments/{id}"),
            Role::Operator
        );
        assert_eq!(
            required_role(&Method::GET, "/api/v1/operator-tokens"),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/operator-tokens"),
            Role::Admin
        );
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn targets_come_from_the_path_or_the_created_object() {
        assert_eq!(target("/api/v1/devices/abc", b""), Some("abc".into()));
        assert_eq!(
            target("/api/v1/devices/abc/config", b""),
            Some("abc".into())
        );
        assert_eq!(
            target("/api/v1/services", br#"{"id":"s1"}"#),
            Some("s1".into())
        );
        assert_eq!(
            target("/api/v1/devices", br#"{"device":{"id":"d1"},"token":"x"}"#),
            Some("d1".into())
        );
        assert_eq!(target("/api/v1/sites", br#"{"id":7}"#), Some("7".into()));
        assert_eq!(target("/api/v1/devices", b"not json"), None);
    }

    #[test]
    fn summaries_keep_small_json_and_cut_the_rest() {
        assert_eq!(
            summarize(br#"{"name":"a"}"#),
            serde_json::json!({"name": "a"})
        );
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(5000));
        let s = summarize(big.as_bytes());
        assert_eq!(s["bytes"], big.len());
        assert_eq!(s["truncated"].as_str().unwrap().len(), SUMMARY_BYTES);
        assert_eq!(summarize(b""), serde_json::Value::Null);
    }
}
