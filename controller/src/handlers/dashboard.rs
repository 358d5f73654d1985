//! The web dashboard: its static files (embedded in the binary, so running
//! it needs no Node toolchain nor anything from elsewhere) and its login.
//!
//! The page itself is a small single-page app (`controller/ui/`) that calls
//! the operator API with the session cookie made here; it has no powers of
//! its own.

use axum::extract::{FromRequest, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db;
use crate::db::audit::NewAuditEntry;
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::http::proxy_protocol::ClientAddr;
use crate::http::state::AppState;
use crate::trust::tokens::hash_token;

/// Only our own files: no inline scripts or styles, nothing from elsewhere,
/// no framing.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// A static file with the dashboard's security headers. `no-cache`: the
/// browser revalidates, so an upgraded controller serves its new page at
/// once (the files are small and served from memory).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The page, with this browser's login CSRF token in its login forms and
/// in the pre-session cookie it is checked against (see
/// [`crate::http::login_csrf`]). Never stored by caches: it is per browser.
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    use crate::http::login_csrf;
    let secure = state.dashboard.secure_cookie;
    let token = login_csrf::token_for(&headers, secure);
    let page = INDEX_HTML.replace("{{login_csrf}}", &token);
    let mut response = page.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    set_cookie(&mut response, &login_csrf::cookie(secure, &token));
    response
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `/` and `/ui` lead to the dashboard.
pub async fn to_dashboard() -> Response {
    redirect("/ui/")
}

fn redirect(to: &'static str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    secure_headers(response.headers_mut());
    response
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// An operator token (`isdf_op_...`).
    pub token: String,
    /// The login CSRF token of the dashboard's page (its `isdf-login-csrf`
    /// meta tag); needed by a form post without `Origin` or
    /// `Sec-Fetch-Site`, checked whenever present.
    #[serde(default)]
    pub login_csrf: Option<String>,
}

/// The session as the page needs it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub name: String,
    pub role: String,
    /// Send it as `X-CSRF-Token` with every change.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// `POST /ui/login`, JSON `{"token": ...}` (the page) or a form field
/// `token` (works without scripts: answers with a redirect). Sets the
/// session cookie; audited as `ui.login` either way. A login from another
/// site is refused with 403 `login_csrf` (see [`crate::http::login_csrf`]).
pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let peer = ClientAddr::of(request.extensions()).map(|a| a.ip());
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = if is_form {
        Form::<Login>::from_request(request, &state)
            .await
            .map(|f| f.0)
            .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))
    } else {
        ApiJson::<Login>::from_request(request, &state)
            .await
            .map(|j| j.0)
    };
    let result = match body {
        Ok(body) => {
            let origin = crate::http::login_csrf::check(&crate::http::login_csrf::LoginRequest {
                headers: &headers,
                secure: state.dashboard.secure_cookie,
                is_form,
                submitted: body.login_csrf.as_deref(),
            });
            start_session(&state, peer, body.token.trim(), origin).await
        }
        Err(e) => Err(e),
    };
    match (result, is_form) {
        // Refused for where it came from: the stable JSON error, for forms
        // too (no redirect into the dashboard).
        (Err(e @ ApiError::Refused { .. }), _) => e.into_response(),
        (Ok((view, cookie)), false) => {
            let mut response = Json(view).into_response();
            set_cookie(&mut response, &cookie);
            response
        }
        (Ok((_, cookie)), true) => {
            let mut response = redirect("/ui/");
            set_cookie(&mut response, &cookie);
            response
        }
        (Err(_), true) => redirect("/ui/#/login?failed"),
        (Err(e), false) => e.into_response(),
    }
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Starts a session for `token` unless the login is limited or refused
/// for where it came from (`origin`, see [`crate::http::login_csrf::check`]).
async fn start_session(
    state: &AppState,
    peer: Option<std::net::IpAddr>,
    token: &str,
    origin: Result<(), String>,
) -> ApiResult<(SessionView, String)> {
    if let Some(ip) = peer {
        state
            .dashboard
            .logins
            .admit(ip)
            .map_err(|retry_after| ApiError::TooManyRequests {
                code: "too_many_logins",
                message: "too many login attempts from this address; wait a little".into(),
                retry_after,
            })?;
    }
    let peer_text = peer.map(|p| p.to_string());
    if let Err(message) = origin {
        // The token is not even looked up: whoever it names did not log in.
        audit(state, None, "unknown", 403, peer_text).await;
        tracing::warn!(peer = ?peer, reason = %message, "refused a cross-site login");
        return Err(ApiError::Refused {
            code: crate::http::login_csrf::CODE,
            message,
        });
    }
    let operator = db::operators::find_active(&state.pool, &hash_token(token)).await?;
    let Some(operator) = operator else {
        audit(state, None, "unknown", 401, peer_text).await;
        return Err(ApiError::Unauthorized);
    };
    let (id, csrf, expires_at) = crate::http::sessions::start(&state.pool, operator.id).await?;
    audit(state, Some(operator.id), &operator.name, 200, peer_text).await;
    Ok((
        SessionView {
            name: operator.name,
            role: operator.role,
            csrf,
            expires_at,
        },
        state.dashboard.cookie(&id),
    ))
}

async fn audit(
    state: &AppState,
    actor_id: Option<uuid::Uuid>,
    actor: &str,
    status: u16,
    peer: Option<String>,
) {
    let entry = NewAuditEntry {
        dry_run: false,
        actor_id,
        actor,
        action: "ui.login",
        target: None,
        status,
        summary: serde_json::json!({ "peer": peer }),
    };
    match db::audit::append(&state.pool, &entry).await {
        Ok(()) => state.live.notify(crate::reconcile::live::Topic::Audit),
        Err(e) => tracing::error!(error = %e, actor, "could not append a login to the audit log"),
    }
}

/// `GET /ui/session`: the current session (after a reload the page gets its
/// CSRF token back here), or 401.
pub async fn session(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let session = crate::http::sessions::find(&state.pool, &headers)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let mut response = Json(SessionView {
        name: session.name,
        role: session.role.as_str().to_owned(),
        csrf: session.csrf,
        expires_at: session.expires_at,
    })
    .into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /ui/logout` (with the CSRF header): ends the session and clears
/// the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(session) = crate::http::sessions::find(&state.pool, &headers).await? {
        if !session.csrf_matches(&headers) {
            return Err(ApiError::Refused {
                code: "csrf",
                message: format!(
                    "logging out needs the `{}` header",
                    crate::http::sessions::CSRF_HEADER
                ),
            });
        }
        crate::http::sessions::end(&state.pool, &headers).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, &state.dashboard.expired_cookie());
    Ok(response)
}
