//! Dashboard sessions: a browser trades an operator token for a session
//! cookie, and then calls the same API with the same roles and audit.
//!
//! The session id is 256 random bits in an `HttpOnly`, `SameSite=Strict`
//! cookie; the database keeps only its SHA-256 (like tokens, see
//! [`crate::trust::tokens`]). A session lives [`SESSION_LIFETIME`] and dies at
//! once when its token is revoked. Every cookie-authenticated change must
//! carry the session's CSRF token in [`CSRF_HEADER`] (compared in constant
//! time): SameSite already keeps other sites' requests cookieless in
//! current browsers, the header keeps older ones and same-site neighbours
//! out too.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db;
use crate::http::limits::RateLimiter;
use crate::model::Role;
use crate::trust::tokens::{hash_token, new_token};

/// The cookie holding the session id.
pub const SESSION_COOKIE: &str = "isdf_session";
/// The header the page sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts (a working day); then the operator logs in again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What the dashboard needs at run time.
pub struct Dashboard {
    /// Mark the cookie `Secure`: the operator API is served over TLS, or a
    /// TLS proxy stands in front of it. Plain HTTP on loopback otherwise.
    pub secure_cookie: bool,
    /// Login attempts per client address (tokens are 256 random bits, so
    /// this only keeps the audit log and the database calm).
    pub logins: RateLimiter<IpAddr>,
}

impl Dashboard {
    pub fn new(secure_cookie: bool) -> Self {
        Dashboard {
            secure_cookie,
            // Bursts of 10, then one every 6 s.
            logins: RateLimiter::new(1.0 / 6.0, 10),
        }
    }

    /// The `Set-Cookie` value for a new session.
    pub fn cookie(&self, session_id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={session_id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
            SESSION_LIFETIME.as_secs(),
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn expired_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }
}

/// The session id in the request's cookies, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE).filter(|value| !value.is_empty())
}

/// The value of the request's cookie `name`, if it has one.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

impl Session {
    /// Whether the request carries this session's CSRF token.
    pub fn csrf_matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CSRF_HEADER)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), self.csrf.as_bytes()))
    }
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session of the request's cookie: None without a cookie, or when it
/// expired or its token was revoked.
pub async fn find(
    pool: &sqlx::PgPool,
    headers: &HeaderMap,
) -> Result<Option<Session>, sqlx::Error> {
    let Some(id) = session_id(headers) else {
        return Ok(None);
    };
    let Some(row) = db::sessions::find_active(pool, &hash_token(id)).await? else {
        return Ok(None);
    };
    let Some(role) = Role::parse(&row.role) else {
        tracing::error!(role = %row.role, "stored role is unknown");
        return Ok(None);
    };
    Ok(Some(Session {
        token_id: row.token_id,
        name: row.name,
        role,
        csrf: row.csrf,
        expires_at: row.expires_at,
    }))
}

/// Starts a session for the token `token_id`: (session id for the cookie,
/// CSRF token, expiry).
pub async fn start(
    pool: &sqlx::PgPool,
    token_id: Uuid,
) -> Result<(String, String, DateTime<Utc>), sqlx::Error> {
    let id = new_token("");
    let csrf = new_token("");
    let expires_at = Utc::now()
        + chrono::Duration::from_std(SESSION_LIFETIME).expect("12 hours fit a chrono duration");
    db::sessions::delete_expired(pool).await?;
    db::sessions::insert(pool, &hash_token(&id), token_id, &csrf, expires_at).await?;
    Ok((id, csrf, expires_at))
}

/// Ends the request's session (if any); whether there was one.
pub async fn end(pool: &sqlx::PgPool, headers: &HeaderMap) -> Result<bool, sqlx::Error> {
    match session_id(headers) {
        Some(id) => db::sessions::delete(pool, &hash_token(id)).await,
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; isdf_session=abc ; b=2".parse().unwrap());
        assert_eq!(session_id(&headers), Some("abc"));
        headers.insert(COOKIE, "isdf_session=".parse().unwrap());
        assert_eq!(session_id(&headers), None);
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_only_behind_tls() {
        let plain = Dashboard::new(false).cookie("x");
        assert!(plain.contains("HttpOnly; SameSite=Strict; Path=/"));
        assert!(!plain.contains("Secure"));
        assert!(Dashboard::new(true).cookie("x").ends_with("; Secure"));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
