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
use serde_json::Value;
use uuid::Uuid;

use crate::db;
use crate::db::audit::NewAuditEntry;
use crate::http::audit::{summarize, AuditTrail};
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

/// The audit log's actor for calls without valid credentials.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Middleware for every operator route (see the module doc).
pub async fn authorize_and_audit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path().to_owned(), |m| m.as_str().to_owned());
    let action = format!("{} {route}", parts.method);
    let (operator, session) = match authenticate(&state, &parts).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(path = %parts.uri.path(), "operator call without valid credentials");
            if !matches!(e, ApiError::Unauthorized) {
                return e.into_response();
            }
            // Valid credentials always get through; a source that keeps
            // failing gets 429 instead of 401, and its refusals are tallied.
            let source = crate::http::audit::source_address(&parts.extensions);
            if let Err(limited) = state.refusals.admit(source) {
                return limited.into_response();
            }
            state
                .refusals
                .note(source, UNAUTHENTICATED, action, &e, chrono::Utc::now());
            return e.into_response();
        }
    };
    let mutating = !matches!(parts.method, Method::GET | Method::HEAD);
    let needed = required_role(&parts.method, &route);
    let path = parts.uri.path().to_owned();

    // A browser's cookie rides along on any request to us, so a change made
    // with one must also prove it comes from the dashboard's page.
    if mutating
        && session
            .as_ref()
            .is_some_and(|s| !s.csrf_matches(&parts.headers))
    {
        let refusal = ApiError::Refused {
            code: "csrf",
            message: format!(
                "a change made with a dashboard session needs the `{}` header of that session",
                crate::http::sessions::CSRF_HEADER
            ),
        };
        let trail = AuditTrail::new(operator.id, operator.name, action, path, Value::Null);
        record_refusal(&state, &trail, &refusal).await;
        return refusal.into_response();
    }

    if operator.role < needed {
        let refusal = ApiError::Forbidden(format!(
            "`{}` is a {} token; {action} needs {}",
            operator.name,
            operator.role.as_str(),
            needed.as_str()
        ));
        if mutating || needed == Role::Admin {
            let trail = AuditTrail::new(operator.id, operator.name, action, path, Value::Null);
            record_refusal(&state, &trail, &refusal).await;
        }
        return refusal.into_response();
    }
    parts.extensions.insert(operator.clone());
    if !mutating {
        return next.run(Request::from_parts(parts, body)).await;
    }

    // Bodies are capped by the route's limit; keep a copy for the summary.
    // An agent release's binary is the one body above the operator limit,
    // and is summarised by its size and digest, not its bytes.
    let binary = route == crate::http::limits::RELEASE_UPLOAD_ROUTE;
    let limit = if binary {
        crate::http::limits::RELEASE_BODY_LIMIT
    } else {
        crate::http::limits::OPERATOR_BODY_LIMIT
    };
    let bytes = match to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let summary = if binary {
        crate::http::audit::summarize_binary(&bytes)
    } else {
        summarize(&bytes)
    };
    let mut trail = AuditTrail::new(operator.id, operator.name, action, path, summary);
    let dry_run = match take_dry_run(&mut parts.uri) {
        Ok(dry_run) => dry_run,
        Err(refusal) => {
            record_refusal(&state, &trail, &refusal).await;
            return refusal.into_response();
        }
    };
    if dry_run {
        trail = trail.for_dry_run();
    }
    parts.extensions.insert(trail.clone());
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if dry_run {
        // Nothing was stored, so there is nothing to audit.
        return response;
    }
    if trail.written() {
        state.live.notify(crate::reconcile::live::Topic::Audit);
        return response;
    }
    let status = response.status();
    if status.is_success() {
        // Every change commits its entry with it; a handler that answered
        // success without one is a bug: loud in tests, recorded now in
        // production.
        tracing::error!(action = %trail.action(), "a successful change answered without its audit entry");
        if cfg!(debug_assertions) {
            panic!(
                "{} answered {status} without committing its audit entry",
                trail.action()
            );
        }
    }
    let target = crate::http::audit::target_in_path(trail.path());
    let entry = trail.entry(status, target.as_deref(), trail.summary().clone());
    append_after(&state, &entry).await;
    response
}

/// Whether a change is asked as a dry run (`?dry_run=true`), with the
/// parameter taken out of the URI so the handler's own query parsing never
/// sees it.
fn take_dry_run(uri: &mut axum::http::Uri) -> Result<bool, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(false);
    };
    let mut dry_run = false;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            ("dry_run", "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => {}
            ("dry_run", other) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("dry_run must be true or false, not `{other}`"),
                ))
            }
            _ => kept.push(pair),
        }
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    *uri = rebuilt
        .parse()
        .map_err(|e| ApiError::invalid(format!("request URI: {e}")))?;
    Ok(dry_run)
}

/// Appends the entry of a refused request (which changed nothing).
async fn record_refusal(state: &AppState, trail: &AuditTrail, refusal: &ApiError) {
    let (status, _) = refusal.status_and_code();
    let target = crate::http::audit::target_in_path(trail.path());
    append_after(state, &trail.entry(status, target.as_deref(), Value::Null)).await;
}

async fn append_after(state: &AppState, entry: &NewAuditEntry<'_>) {
    match db::audit::append(&state.pool, entry).await {
        Ok(()) => state.live.notify(crate::reconcile::live::Topic::Audit),
        // Nothing was changed by the request; its entry is lost, loudly.
        Err(e) => {
            tracing::error!(error = %e, actor = %entry.actor, action = %entry.action, "could not append to the audit log")
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
        // Limited per identity: routers share addresses behind CGNAT. First,
        // so a deleted device's certificate cannot make every request ask
        // the database below.
        state.device_gate.admit(device)?;
        let mut standing = state.cache.certificate_standing(device, &fingerprint);
        if standing.is_none()
            && crate::trust::device_certificates::learn_device(&state.pool, &state.cache, device)
                .await?
        {
            standing = state.cache.certificate_standing(device, &fingerprint);
        }
        let Some(standing) = standing else {
            return Err(ApiError::Denied {
                code: "device_unknown",
                message: "this device was deleted or revoked; enroll again with a new token".into(),
            });
        };
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
}
