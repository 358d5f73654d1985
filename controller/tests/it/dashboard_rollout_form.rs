//! The dashboard's rollout form and outcome in a real headless Chromium
//! against the real controller: a canary that matches no router refused
//! (409 `empty_wave`) and said clearly, "allow empty waves", an existing
//! assignment picked by service and selector, and a rollout that ends as
//! "completed with N offline" listing those routers.

use reqwest::StatusCode;
use serde_json::json;

use crate::dashboard_forms::{logged_in, no_script_errors, open};
use crate::support::Harness;

/// The rollout form: a canary that matches no router is refused (409
/// `empty_wave`) and the page says so clearly; "allow empty waves" starts
/// it. An existing assignment can be picked instead of a selector.
#[tokio::test]
async fn dashboard_rollout_form_refuses_an_empty_canary_and_picks_assignments() {
    let h = Harness::start().await;
    for i in 0..3 {
        h.register(&format!("home-{i}"), json!({"plan": "family"}))
            .await;
    }
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}]}),
        )
        .await;
    let other = h
        .flow_block(
            "voip",
            json!({"flows": [{"protocol": "udp", "dport": 5060}]}),
        )
        .await;
    let r = h
        .post(
            "/api/v1/assignments",
            json!({"service_id": other, "revision": 1, "selector": "plan=family"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let existing = r.body["id"].as_str().unwrap().to_owned();
    let r = h
        .post(
            &format!("/api/v1/services/{other}/revisions"),
            json!({"spec": {"flows": [{"protocol": "udp", "dport": 5061}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let browser = logged_in(&h, &h.controller.operator_token).await;
    open(&browser, &h, "#/rollouts").await;
    browser.select("#rollout-service", &service).await;
    browser.type_into("#rollout-selector", "plan=family").await;
    browser
        .wait_text("#rollout-selector-preview", "the routers", |t| {
            t.starts_with("3 routers match")
        })
        .await;
    browser.type_into("#rollout-canary", "canary=true").await;
    browser
        .wait_text("#rollout-canary-preview", "an empty canary", |t| {
            t.contains("matches no router")
        })
        .await;
    browser.click("#rollout-start").await;
    let refusal = browser
        .wait_text("#rollout-empty-wave", "the refusal", |t| !t.is_empty())
        .await;
    assert!(
        refusal.contains("Refused: a wave matches no router")
            && refusal.contains("Allow empty waves"),
        "{refusal}"
    );
    let rollouts = h.get("/api/v1/rollouts").await;
    assert_eq!(rollouts.body["items"], json!([]), "nothing started");

    // Allowed explicitly: it starts.
    browser.click("#rollout-allow-empty").await;
    browser.click("#rollout-start").await;
    browser
        .wait_text("#rollout-state-badge", "the new rollout", |t| !t.is_empty())
        .await;
    let rollouts = h.get("/api/v1/rollouts").await;
    assert_eq!(rollouts.body["items"].as_array().unwrap().len(), 1);

    // An existing assignment, picked by service and selector.
    open(&browser, &h, "#/rollouts").await;
    browser.select("#rollout-service", &other).await;
    let options = browser.text("#rollout-target").await;
    assert!(
        options.contains("assigned to plan=family (revision 1)"),
        "{options}"
    );
    browser.select("#rollout-target", &existing).await;
    assert!(!browser.is_shown("#rollout-selector").await);
    browser.click("#rollout-start").await;
    let shown = browser
        .wait_text(
            "#rollout-state-badge, #rollout-error, #rollout-empty-wave",
            "the second rollout",
            |t| !t.is_empty(),
        )
        .await;
    assert_eq!(shown, "running");
    let id = browser
        .execute("return location.hash.split('/')[2];", json!([]))
        .await;
    let view = h
        .get(&format!("/api/v1/rollouts/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(
        view.body["assignment_id"],
        existing.as_str(),
        "{}",
        view.body
    );
    no_script_errors(&browser).await;
    browser.quit().await;
}

/// A rollout that ends with silent routers: "completed with N offline", and
/// which ones.
#[tokio::test]
async fn dashboard_rollout_shows_the_routers_offline_when_it_completed() {
    let h = Harness::start().await;
    let mut reporting = Vec::new();
    for i in 0..2 {
        let labels = json!({"plan": "family", "canary": if i == 0 { "true" } else { "false" }});
        reporting.push(h.device(&format!("home-{i}"), labels).await);
    }
    h.register("silent-0", json!({"plan": "family", "canary": "false"}))
        .await;
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}]}),
        )
        .await;
    let r = h
        .post(
            "/api/v1/rollouts",
            json!({"service_id": service, "selector": "plan=family",
                   "canary": {"selector": "canary=true"}, "waves": [100],
                   "min_applied_share": 0.5, "soak_secs": 0, "offline_timeout_secs": 3600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let browser = logged_in(&h, &h.controller.operator_token).await;
    open(&browser, &h, &format!("#/rollouts/{id}")).await;
    // The reporting routers apply whatever they get until it completes: half
    // of the last wave is enough, and the silent router, still unconfirmed
    // when it ends, is counted offline then (the timeout is far away, so
    // how fast this machine is does not matter).
    let deadline = tokio::time::Instant::now() + crate::webdriver::WAIT * 2;
    let mut sequence = 1;
    loop {
        crate::dashboard::apply_all(&h, &reporting, &mut sequence).await;
        let view = h.get(&format!("/api/v1/rollouts/{id}")).await.body;
        if view["state"] == "completed" {
            assert_eq!(view["outcome"], "completed_with_offline", "{view:#}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never completed: {view:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let outcome = browser
        .wait_text("#rollout-outcome", "the offline routers", |t| !t.is_empty())
        .await;
    assert!(
        outcome.starts_with("Completed with 1 offline."),
        "{outcome}"
    );
    assert_eq!(browser.text("#rollout-offline").await, "silent-0");
    open(&browser, &h, "#/rollouts").await;
    browser
        .wait_text("#rollout-table tbody", "the outcome in the list", |t| {
            t.contains("completed with 1 offline")
        })
        .await;
    no_script_errors(&browser).await;
    browser.quit().await;
}
