//! Login CSRF: a page on another site must not log the operator's browser
//! in as someone else (the attacker's own token), and the dashboard's own
//! login keeps working, with scripts and without.

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::Harness;

const FORM: &str = "application/x-www-form-urlencoded";

/// A client that shows redirects instead of following them.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A viewer token of the attacker's own.
async fn attacker_token(h: &Harness) -> String {
    let r = h
        .post(
            "/api/v1/operator-tokens",
            json!({"name": "mallory", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["token"].as_str().unwrap().to_owned()
}

/// Loads the dashboard's page as a browser does: (the login cookie pair
/// to send back, the login CSRF token the page's forms carry).
async fn login_page(h: &Harness) -> (String, String) {
    let r = browser_like()
        .get(format!("{}/ui/", h.controller.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["cache-control"],
        "no-store",
        "the page carries a per-browser token"
    );
    let cookie = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.contains("isdf_login="))
        .expect("the page sets the login cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    let token = between(&html, "name=\"login_csrf\" value=\"", "\"");
    assert_eq!(
        token,
        between(&html, "name=\"isdf-login-csrf\" content=\"", "\""),
        "the script reads the same token as the form"
    );
    assert_eq!(pair.split_once('=').unwrap().1, token);
    (pair, token)
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    let to = from + text[from..].find(end).unwrap();
    text[from..to].to_owned()
}

fn sets_a_session(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("isdf_session="))
}

async fn refused_as_login_csrf(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
    assert!(!sets_a_session(&response), "{what}: no session cookie");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "login_csrf", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn a_cross_site_login_form_is_refused_even_with_a_valid_token() {
    let h = Harness::start().await;
    let token = attacker_token(&h).await;
    let login = format!("{}/ui/login", h.controller.api_url);
    let own_origin = h.controller.api_url.clone();
    // What browsers send when a page elsewhere auto-submits a form to us.
    let cross_site: &[(&str, &[(&str, &str)])] = &[
        (
            "another site (Fetch Metadata)",
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
        ),
        (
            "a neighbour on the same site (Fetch Metadata)",
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "http://other.localhost"),
            ],
        ),
        (
            "Fetch Metadata wins over a forged-looking Origin",
            &[("sec-fetch-site", "cross-site"), ("origin", &own_origin)],
        ),
        (
            "an older browser: another Origin",
            &[("origin", "https://evil.example")],
        ),
        ("a sandboxed page: Origin null", &[("origin", "null")]),
        ("neither header and no login CSRF token", &[]),
    ];
    for (what, headers) in cross_site {
        let mut request = browser_like()
            .post(&login)
            .header(CONTENT_TYPE, FORM)
            .body(format!("token={token}"));
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        refused_as_login_csrf(request.send().await.unwrap(), what).await;
    }

    // Holding a valid login CSRF pair (the attacker loaded the page
    // himself) does not make a cross-site post acceptable.
    let (cookie, csrf) = login_page(&h).await;
    let r = browser_like()
        .post(&login)
        .header(CONTENT_TYPE, FORM)
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .body(format!("token={token}&login_csrf={csrf}"))
        .send()
        .await
        .unwrap();
    refused_as_login_csrf(r, "cross-site with a valid login CSRF pair").await;

    // Nor does JSON: a script elsewhere is refused the same way.
    let r = browser_like()
        .post(&login)
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    refused_as_login_csrf(r, "cross-site JSON").await;

    // No session was made for the attacker's token; the refusals are audited.
    let audit = h.get("/api/v1/audit?limit=100").await;
    let logins: Vec<&Value> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "ui.login")
        .collect();
    assert!(
        logins.iter().all(|e| e["status"] == 403),
        "only refusals: {logins:?}"
    );
    assert_eq!(logins.len(), cross_site.len() + 2, "{logins:?}");
}

#[tokio::test]
async fn the_dashboards_own_login_works_with_and_without_scripts() {
    let h = Harness::start().await;
    let token = h.controller.operator_token.clone();
    let login = format!("{}/ui/login", h.controller.api_url);
    let own_origin = h.controller.api_url.clone();

    // The page's script: a same-origin fetch, with the page's token.
    let (cookie, csrf) = login_page(&h).await;
    let r = browser_like()
        .post(&login)
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "same-origin")
        .header("origin", &own_origin)
        .json(&json!({"token": token, "login_csrf": csrf}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(sets_a_session(&r));

    // The form without scripts, from a current browser.
    let r = browser_like()
        .post(&login)
        .header(CONTENT_TYPE, FORM)
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "same-origin")
        .header("origin", &own_origin)
        .body(format!("token={token}&login_csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(sets_a_session(&r));

    // An older browser sends only Origin: our own is accepted.
    let r = browser_like()
        .post(&login)
        .header(CONTENT_TYPE, FORM)
        .header("origin", &own_origin)
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(sets_a_session(&r));

    // A browser that sends neither header: the page's token and cookie
    // prove the form came from our page; a wrong or missing cookie does not.
    let r = browser_like()
        .post(&login)
        .header(CONTENT_TYPE, FORM)
        .header(COOKIE, &cookie)
        .body(format!("token={token}&login_csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(sets_a_session(&r));
    let (other_cookie, _) = login_page(&h).await;
    for (what, cookie) in [
        ("another browser's cookie", other_cookie),
        ("no cookie", String::new()),
    ] {
        let r = browser_like()
            .post(&login)
            .header(CONTENT_TYPE, FORM)
            .header(COOKIE, cookie)
            .body(format!("token={token}&login_csrf={csrf}"))
            .send()
            .await
            .unwrap();
        refused_as_login_csrf(r, what).await;
    }

    // Reloading the page keeps the browser's token (two tabs both work).
    let r = browser_like()
        .get(format!("{}/ui/", h.controller.api_url))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert_eq!(
        between(&html, "name=\"login_csrf\" value=\"", "\""),
        csrf,
        "the same token while the cookie lives"
    );

    // Scripts and tools that are not browsers (no Origin, no Fetch
    // Metadata, JSON) log in as before.
    let r = browser_like()
        .post(&login)
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(sets_a_session(&r));
}
