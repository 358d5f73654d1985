//! The server side of the dashboard: sessions, CSRF, the fleet overview,
//! device search, revision diffs and the live-update stream.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{error_code, report_status, Harness};

/// Logs in with `token`: (cookie header value, CSRF token).
async fn login(h: &Harness, token: &str) -> (String, String) {
    let r = h
        .http
        .post(format!("{}/ui/login", h.controller.api_url))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP by default: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["role"], "admin");
    (pair, body["csrf"].as_str().unwrap().to_owned())
}

async fn with_cookie(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> crate::support::Response {
    let mut request = h
        .http
        .request(method, format!("{}{path}", h.controller.api_url))
        .header(COOKIE, cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    crate::support::Response {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

#[tokio::test]
async fn sessions_act_with_the_token_role_and_changes_need_the_csrf_header() {
    let h = Harness::start().await;
    let (cookie, csrf) = login(&h, &h.controller.operator_token).await;

    let me = with_cookie(
        &h,
        reqwest::Method::GET,
        "/api/v1/whoami",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["role"], "admin");
    let session = with_cookie(&h, reqwest::Method::GET, "/ui/session", &cookie, None, None).await;
    assert_eq!(session.body["csrf"], csrf.as_str());

    let create = json!({"name": "r1"});
    let refused = with_cookie(
        &h,
        reqwest::Method::POST,
        "/api/v1/devices",
        &cookie,
        None,
        Some(create.clone()),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&refused), "csrf");
    let wrong = with_cookie(
        &h,
        reqwest::Method::POST,
        "/api/v1/devices",
        &cookie,
        Some("nope"),
        Some(create.clone()),
    )
    .await;
    assert_eq!(error_code(&wrong), "csrf");
    let made = with_cookie(
        &h,
        reqwest::Method::POST,
        "/api/v1/devices",
        &cookie,
        Some(&csrf),
        Some(create),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);

    // A viewer's session is a viewer.
    let viewer = h
        .post(
            "/api/v1/operator-tokens",
            json!({"name": "vera", "role": "viewer"}),
        )
        .await;
    let (viewer_cookie, viewer_csrf) = {
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/ui/login", h.controller.api_url))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            // A browser posting our own page's form says where it comes from.
            .header("origin", &h.controller.api_url)
            .body(format!("token={}", viewer.body["token"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        // The form login (no scripts) answers with a redirect; not followed.
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let s = with_cookie(&h, reqwest::Method::GET, "/ui/session", &cookie, None, None).await;
        assert_eq!(s.body["role"], "viewer");
        (cookie, s.body["csrf"].as_str().unwrap().to_owned())
    };
    let denied = with_cookie(
        &h,
        reqwest::Method::POST,
        "/api/v1/devices",
        &viewer_cookie,
        Some(&viewer_csrf),
        Some(json!({"name": "r2"})),
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&denied), "forbidden");

    // Revoking the token ends its sessions.
    let id = viewer.body["id"].as_str().unwrap();
    let revoked = h
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/operator-tokens/{id}"),
            None,
        )
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.body);
    let gone = with_cookie(
        &h,
        reqwest::Method::GET,
        "/api/v1/whoami",
        &viewer_cookie,
        None,
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);

    // Logging out ends the session (with the CSRF header only).
    let no = with_cookie(&h, reqwest::Method::POST, "/ui/logout", &cookie, None, None).await;
    assert_eq!(error_code(&no), "csrf");
    let out = with_cookie(
        &h,
        reqwest::Method::POST,
        "/ui/logout",
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let after = with_cookie(
        &h,
        reqwest::Method::GET,
        "/api/v1/whoami",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    // Logins are audited, failures too, and the session's changes carry the token's name.
    let bad = h
        .http
        .post(format!("{}/ui/login", h.controller.api_url))
        .json(&json!({"token": "isdf_op_wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let audit = h.get("/api/v1/audit?limit=100").await;
    let entries = audit.body["items"].as_array().unwrap();
    let logins: Vec<(&str, i64)> = entries
        .iter()
        .filter(|e| e["action"] == "ui.login")
        .map(|e| (e["actor"].as_str().unwrap(), e["status"].as_i64().unwrap()))
        .collect();
    assert!(logins.contains(&("unknown", 401)), "{logins:?}");
    assert!(logins.contains(&("vera", 200)), "{logins:?}");
    assert!(entries
        .iter()
        .any(|e| e["action"] == "POST /api/v1/devices" && e["status"] == 403));
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy() {
    let h = Harness::start().await;
    let root = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/", h.controller.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/ui/");
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = h
            .http
            .get(format!("{}{path}", h.controller.api_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let headers = r.headers();
        assert!(
            headers[CONTENT_TYPE].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        // The page carries a per-browser login CSRF token: never cached.
        let caching = if path == "/ui/" {
            "no-store"
        } else {
            "no-cache"
        };
        assert_eq!(headers["cache-control"], caching, "{path}");
    }
}

#[tokio::test]
async fn the_overview_and_the_device_filters_agree_on_states() {
    let h = Harness::start().await;
    let (_, a) = h.device("edge-a", json!({"model": "ax3000"})).await;
    let (_, b) = h.device("edge-b", json!({"model": "ax3000"})).await;
    let (_, c) = h.device("core-c", json!({"model": "mt7621"})).await;
    h.register("idle-d", json!({})).await;
    assert_eq!(
        report_status(&a, 1, "applied", Some(1), "0.3.0").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        report_status(&b, 1, "rolled_back", Some(1), "0.3.0").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        report_status(&c, 1, "stale", Some(1), "0.2.9").await,
        StatusCode::NO_CONTENT
    );

    let o = h.get("/api/v1/fleet/overview").await;
    assert_eq!(o.status, StatusCode::OK, "{}", o.body);
    assert_eq!(o.body["devices"], 4);
    assert_eq!(o.body["online"], 2);
    assert_eq!(o.body["stale"], 1);
    assert_eq!(o.body["failing"], 1);
    assert_eq!(o.body["never_reported"], 1);
    assert_eq!(
        o.body["by_agent_version"],
        json!([{"value": "0.3.0", "count": 2}, {"value": "0.2.9", "count": 1}])
    );
    assert_eq!(
        o.body["by_model"],
        json!([{"value": "ax3000", "count": 2}, {"value": "mt7621", "count": 1}, {"value": "unknown", "count": 1}])
    );

    let names = |r: &crate::support::Response| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&h.get("/api/v1/devices?q=EDGE").await),
        ["edge-a", "edge-b"]
    );
    assert_eq!(
        names(&h.get("/api/v1/devices?state=online").await),
        ["edge-a", "edge-b"]
    );
    assert_eq!(
        names(&h.get("/api/v1/devices?state=failing").await),
        ["edge-b"]
    );
    assert_eq!(
        names(&h.get("/api/v1/devices?state=stale").await),
        ["core-c"]
    );
    assert_eq!(
        names(&h.get("/api/v1/devices?state=never_reported").await),
        ["idle-d"]
    );
    assert_eq!(
        names(
            &h.get("/api/v1/devices?q=e&selector=model%3Dax3000&state=online&limit=1")
                .await
        ),
        ["edge-a"]
    );
    // `%` and `_` are literal in the search.
    assert!(names(&h.get("/api/v1/devices?q=%25").await).is_empty());
    let page = h.get("/api/v1/devices?q=edge&limit=1").await;
    let next = page.body["next_cursor"].as_str().unwrap();
    assert_eq!(
        names(
            &h.get(&format!("/api/v1/devices?q=edge&limit=1&cursor={next}"))
                .await
        ),
        ["edge-b"]
    );
    let listed = h.get("/api/v1/devices?q=edge-b").await;
    let health = &listed.body["items"][0]["health"];
    assert_eq!(health["outcome"], "rolled_back");
    assert_eq!(health["agent_version"], "0.3.0");
    assert_eq!(health["enforced_version"], 1);
    let bad = h.get("/api/v1/devices?state=asleep").await;
    assert_eq!(error_code(&bad), "invalid_query");
}

#[tokio::test]
async fn revision_diffs_are_unified_diffs_of_the_specs() {
    let h = Harness::start().await;
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}]}),
        )
        .await;
    let r = h
        .post(
            &format!("/api/v1/services/{service}/revisions"),
            json!({"spec": {"flows": [{"protocol": "udp", "dport": 27016}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let d = h
        .get(&format!("/api/v1/services/{service}/revisions/1/diff/2"))
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    assert_eq!(d.body["from"], 1);
    assert_eq!(d.body["to"], 2);
    let unified = d.body["unified"].as_str().unwrap();
    assert!(
        unified.starts_with("--- revision 1\n+++ revision 2\n"),
        "{unified}"
    );
    assert!(
        unified.contains("-      \"dport\": 27015") && unified.contains("+      \"dport\": 27016"),
        "{unified}"
    );
    let missing = h
        .get(&format!("/api/v1/services/{service}/revisions/1/diff/9"))
        .await;
    assert_eq!(error_code(&missing), "not_found");
}

#[tokio::test]
async fn the_stream_tells_of_status_reports_and_audit_entries() {
    let h = Harness::start().await;
    let (id, device) = h.device("r1", json!({})).await;
    let mut stream = h
        .http
        .get(format!("{}/api/v1/stream", h.controller.api_url))
        .bearer_auth(&h.controller.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // A report, then a change through the API (audited).
    assert_eq!(
        report_status(&device, 1, "applied", Some(1), "0.3.0").await,
        StatusCode::NO_CONTENT
    );
    h.register("r2", json!({})).await;
    let mut text = String::new();
    let wanted_device = format!(r#"{{"topic":"device","id":"{id}"}}"#);
    let wanted_audit = r#"{"topic":"audit"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(text.contains(&wanted_device) && text.contains(wanted_audit)) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no change events within 10 s; got {text:?}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: change\n"), "{text}");
}

#[tokio::test]
async fn logins_are_limited_per_address() {
    let h = Harness::start().await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = h
            .http
            .post(format!("{}/ui/login", h.controller.api_url))
            .json(&json!({"token": "isdf_op_guess"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    // A burst of 10, then 429 with Retry-After.
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429]);
}
