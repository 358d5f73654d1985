//! Login CSRF: a page on another site must not be able to log the
//! operator's browser in with a token of the attacker's choosing (the
//! victim would then act, and type secrets, as the attacker).
//!
//! The session cookie's `SameSite=Strict` does not help here: the attack
//! needs no cookie, it *receives* one. So `POST /ui/login` checks where it
//! comes from, in this order:
//!
//! 1. `Sec-Fetch-Site` (Fetch Metadata, sent by every current browser):
//!    only `same-origin` (our page) and `none` (typed or bookmarked by the
//!    user) pass; `cross-site` and `same-site` are refused, whatever else the
//!    request carries.
//! 2. Else `Origin` (older browsers send it on every POST): it must be the
//!    dashboard's own origin, the scheme it is served with (`https` behind
//!    `--api-tls` or `--dashboard-behind-tls`) and the request's `Host`.
//! 3. Else (neither header): a form post must carry the login CSRF token
//!    of its page; JSON passes, since a browser cannot send JSON to another
//!    origin without a CORS preflight we never grant, and tools (`curl`,
//!    scripts) send neither header.
//!
//! The login CSRF token is a double-submit token: `GET /ui/` sets it in a
//! pre-session cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`, named
//! `__Host-isdf_login` with `Secure` when browsers reach us over HTTPS, so
//! no other host can plant it) and writes the same value into the page's
//! login forms. A submitted token, whenever present, must equal the
//! cookie's (compared in constant time). Refusals are 403 `login_csrf`.

use axum::http::header::{HOST, ORIGIN};
use axum::http::HeaderMap;

use crate::http::sessions::constant_time_eq;

/// The login form's field (and JSON member) carrying the token.
pub const FIELD: &str = "login_csrf";
/// The stable error code of a refused login.
pub const CODE: &str = "login_csrf";
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The pre-session cookie's name: `__Host-` where the browser talks HTTPS
/// (the prefix needs `Secure`, which plain HTTP cookies cannot have).
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-isdf_login"
    } else {
        "isdf_login"
    }
}

/// The `Set-Cookie` value carrying `token`. No `Max-Age`: it lives as long
/// as the browser session, like the page that holds the same value.
pub fn cookie(secure: bool, token: &str) -> String {
    format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

/// Whether `value` has the shape of a token we make: 32 random bytes in
/// base64url (43 characters), so it can go into the page as it is.
fn well_formed(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The token in the request's pre-session cookie, if well formed.
pub fn from_cookie(headers: &HeaderMap, secure: bool) -> Option<&str> {
    crate::http::sessions::cookie(headers, cookie_name(secure)).filter(|value| well_formed(value))
}

/// The browser's token: the one it already holds (so pages open in two
/// tabs both work), else a new one.
pub fn token_for(headers: &HeaderMap, secure: bool) -> String {
    from_cookie(headers, secure).map_or_else(|| crate::trust::tokens::new_token(""), str::to_owned)
}

/// What a login request is, as far as this check cares.
pub struct LoginRequest<'a> {
    pub headers: &'a HeaderMap,
    /// Browsers reach the dashboard over HTTPS.
    pub secure: bool,
    /// A form post (`application/x-www-form-urlencoded`), which any page
    /// can make a browser send to us.
    pub is_form: bool,
    /// The login CSRF token the request carries, if any.
    pub submitted: Option<&'a str>,
}

/// Ok when the login may go on, else why it is refused.
pub fn check(request: &LoginRequest<'_>) -> Result<(), String> {
    let headers = request.headers;
    if let Some(submitted) = request.submitted {
        let held = from_cookie(headers, request.secure).unwrap_or_default();
        if !constant_time_eq(submitted.as_bytes(), held.as_bytes()) {
            return Err(
                "the login form's token does not match this browser's; reload the page and log in again"
                    .into(),
            );
        }
    }
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        return match site.to_str().unwrap_or_default() {
            "same-origin" | "none" => Ok(()),
            other => Err(format!(
                "a login must come from the dashboard's own page, not from another site \
                 (Sec-Fetch-Site: {other})"
            )),
        };
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let scheme = if request.secure { "https" } else { "http" };
        let own = format!("{scheme}://{host}");
        return if !host.is_empty() && origin.eq_ignore_ascii_case(&own) {
            Ok(())
        } else {
            Err(format!(
                "a login must come from the dashboard's own page ({own}), not from {origin}"
            ))
        };
    }
    if request.is_form && request.submitted.is_none() {
        return Err(format!(
            "a login form without Origin or Sec-Fetch-Site must carry its page's `{FIELD}` token; \
             reload the page and log in again"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn verdict(pairs: &[(&'static str, &str)], is_form: bool, submitted: Option<&str>) -> bool {
        check(&LoginRequest {
            headers: &headers(pairs),
            secure: false,
            is_form,
            submitted,
        })
        .is_ok()
    }

    const TOKEN: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    #[test]
    fn fetch_metadata_decides_first() {
        assert!(verdict(&[("sec-fetch-site", "same-origin")], true, None));
        assert!(verdict(&[("sec-fetch-site", "none")], true, None));
        for site in ["cross-site", "same-site", "weird"] {
            assert!(!verdict(&[("sec-fetch-site", site)], true, None), "{site}");
            assert!(
                !verdict(
                    &[
                        ("sec-fetch-site", site),
                        ("host", "c:8080"),
                        ("origin", "http://c:8080")
                    ],
                    false,
                    None
                ),
                "{site} with our own Origin"
            );
        }
    }

    #[test]
    fn origin_must_be_our_own_scheme_and_host() {
        let own = [
            ("host", "c.example:8080"),
            ("origin", "http://c.example:8080"),
        ];
        assert!(verdict(&own, true, None));
        assert!(!verdict(
            &[
                ("host", "c.example:8080"),
                ("origin", "http://evil.example")
            ],
            false,
            None
        ));
        assert!(!verdict(
            &[("host", "c.example:8080"), ("origin", "null")],
            true,
            None
        ));
        // Behind TLS, the plain-HTTP origin of the same host is another origin.
        let secure = check(&LoginRequest {
            headers: &headers(&own),
            secure: true,
            is_form: true,
            submitted: None,
        });
        assert!(secure.is_err());
    }

    #[test]
    fn without_either_header_forms_need_their_token_and_json_passes() {
        assert!(!verdict(&[], true, None));
        assert!(verdict(&[], false, None));
        let cookie = format!("a=b; isdf_login={TOKEN}");
        assert!(verdict(&[("cookie", &cookie)], true, Some(TOKEN)));
        assert!(!verdict(&[("cookie", &cookie)], true, Some("x")));
        assert!(!verdict(&[], true, Some(TOKEN)), "no cookie");
        // The HTTPS name is another cookie.
        let wrong_name = format!("__Host-isdf_login={TOKEN}");
        assert!(!verdict(&[("cookie", &wrong_name)], true, Some(TOKEN)));
    }

    #[test]
    fn cookies_are_strict_and_host_bound_over_https() {
        assert_eq!(
            cookie(true, TOKEN),
            format!("__Host-isdf_login={TOKEN}; HttpOnly; SameSite=Strict; Path=/; Secure")
        );
        assert!(!cookie(false, TOKEN).contains("Secure"));
        let held = headers(&[("cookie", &format!("isdf_login={TOKEN}"))]);
        assert_eq!(token_for(&held, false), TOKEN);
        let odd = headers(&[("cookie", "isdf_login=<script>")]);
        assert_ne!(
            token_for(&odd, false),
            "<script>",
            "only our own shape is reused"
        );
        assert!(well_formed(&token_for(&odd, false)));
    }
}
