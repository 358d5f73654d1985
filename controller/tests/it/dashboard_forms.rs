//! The dashboard's forms in a real headless Chromium against the real
//! controller: services and revisions checked by the server before saving,
//! assignments with their selector preview, label changes on one router and
//! in bulk, timed blocks, the device page, CSV exports, audit filters, and
//! what a logged-out page or a viewer does not see. The rollout form is in
//! `dashboard_rollout_form.rs`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::dashboard::{login, LAPTOP};
use crate::support::{report_status, Harness};
use crate::webdriver::Browser;

/// A browser logged in with `token`, on the fleet page.
pub(crate) async fn logged_in(h: &Harness, token: &str) -> Browser {
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    login(&browser, h, token).await;
    browser.find("#count-devices").await;
    browser
}

pub(crate) async fn open(browser: &Browser, h: &Harness, hash: &str) {
    browser
        .goto(&format!("{}/ui/{hash}", h.controller.api_url))
        .await;
}

/// The audit entries whose action starts with `action`.
async fn audited(h: &Harness, action: &str) -> Vec<Value> {
    let r = h.get("/api/v1/audit?limit=500").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with(action))
        .cloned()
        .collect()
}

pub(crate) async fn no_script_errors(browser: &Browser) {
    let errors = browser.script_errors().await;
    assert!(errors.is_empty(), "script errors: {errors:?}");
}

/// A service from the form: a spec the server refuses is shown beside the
/// field and nothing is saved (the check is a dry run); fixed, it is saved.
/// Then a new revision the same way, assignments with their preview and
/// warnings, archive and delete refused while it is assigned, unassigned
/// from the page, archived, deleted.
#[tokio::test]
async fn dashboard_service_forms_check_with_the_server_then_save_and_assign() {
    let h = Harness::start().await;
    h.register("home-0", json!({"plan": "family"})).await;
    h.register("home-1", json!({"plan": "family"})).await;
    h.register("shop-0", json!({"plan": "business"})).await;
    let browser = logged_in(&h, &h.controller.operator_token).await;
    open(&browser, &h, "#/services").await;

    // Not JSON: said beside the field, without asking the server.
    browser.type_into("#service-name", "games").await;
    browser.type_into("#service-spec", "{flows: ").await;
    browser.click("#service-save").await;
    browser
        .wait_text("#service-spec-error", "not JSON", |t| {
            t.contains("Not JSON")
        })
        .await;
    // A reversed port range: the server's own message, beside the spec.
    browser
        .type_into(
            "#service-spec",
            r#"{"flows": [{"protocol": "udp", "dport": "2000-1000"}]}"#,
        )
        .await;
    browser.click("#service-save").await;
    let refused = browser
        .wait_text("#service-spec-error", "the server's refusal", |t| {
            !t.is_empty()
        })
        .await;
    assert!(
        refused.contains("invalid flow-block spec") && refused.contains("(invalid_spec)"),
        "{refused}"
    );
    let listed = h.get("/api/v1/services?archived=true").await;
    assert_eq!(listed.body["items"], json!([]), "nothing saved");
    assert!(
        audited(&h, "POST /api/v1/services").await.is_empty(),
        "a dry run is not audited"
    );

    // Fixed: saved, and the page moves to the new service.
    browser
        .type_into(
            "#service-spec",
            r#"{"flows": [{"protocol": "udp", "dport": 27015}]}"#,
        )
        .await;
    browser.click("#service-save").await;
    browser
        .wait_text("#service-title", "the new service", |t| {
            t.contains("games") && t.contains("flow-block")
        })
        .await;
    let listed = h.get("/api/v1/services").await;
    let service = listed.body["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed.body["items"][0]["type"], "flow-block");
    assert_eq!(audited(&h, "POST /api/v1/services").await.len(), 1);

    // A new revision: refused, then saved.
    browser
        .type_into(
            "#revision-spec",
            r#"{"flows": [{"protocol": "udp", "dport": 70000}]}"#,
        )
        .await;
    browser.click("#revision-save").await;
    browser
        .wait_text("#revision-spec-error", "the refusal", |t| {
            t.contains("invalid")
        })
        .await;
    browser
        .type_into(
            "#revision-spec",
            r#"{"flows": [{"protocol": "udp", "dport": 27016}]}"#,
        )
        .await;
    browser.click("#revision-save").await;
    browser
        .wait_text("#revision-message", "saved", |t| {
            t == "Saved as revision 2."
        })
        .await;
    let revisions = h
        .get(&format!("/api/v1/services/{service}/revisions"))
        .await;
    assert_eq!(revisions.body["items"].as_array().unwrap().len(), 2);

    // The assignment preview follows what is typed: none, then two.
    browser.type_into("#assign-selector", "plan=nobody").await;
    let none = browser
        .wait_text("#assign-selector-preview", "the no-match warning", |t| {
            t.contains("matches no router")
        })
        .await;
    assert!(none.contains("plan=nobody"), "{none}");
    browser.type_into("#assign-selector", "plan=family").await;
    let two = browser
        .wait_text("#assign-selector-preview", "two routers", |t| {
            t.starts_with("2 routers match")
        })
        .await;
    assert!(
        two.contains("home-0") && two.contains("home-1") && !two.contains("shop-0"),
        "{two}"
    );
    browser
        .type_into("#assign-selector", "plan in (family")
        .await;
    browser
        .wait_text("#assign-selector-preview", "the selector error", |t| {
            t.contains("(invalid_selector)")
        })
        .await;

    // Assign revision 2 (the latest, chosen first) to plan=family.
    browser.type_into("#assign-selector", "plan=family").await;
    browser.click("#assign-save").await;
    browser
        .wait_text("#assign-message", "assigned", |t| {
            t.contains("Assigned revision 2 to plan=family (2 routers)")
        })
        .await;
    browser
        .wait_text("#assignment-table", "the assignment", |t| {
            t.contains("plan=family")
        })
        .await;
    // The same selector again: refused, and said.
    browser.click("#assign-save").await;
    browser
        .wait_text("#assign-message", "the duplicate", |t| {
            t.contains("(assignment_exists)")
        })
        .await;
    // A selector that matches nobody is accepted with a warning.
    browser.type_into("#assign-selector", "plan=nobody").await;
    browser.click("#assign-save").await;
    browser
        .wait_text("#assign-warnings", "the answer's warning", |t| {
            t.contains("matches no router")
        })
        .await;
    let assignments = h
        .get(&format!("/api/v1/assignments?service_id={service}"))
        .await;
    assert_eq!(assignments.body["items"].as_array().unwrap().len(), 2);
    // The list says which selector reaches nobody.
    let listed = browser
        .wait_text("#assignment-table tbody", "both assignments", |t| {
            t.contains("plan=nobody")
        })
        .await;
    assert!(listed.contains("matches no router"), "{listed}");

    // Archive or delete while assigned: the 409 names the assignments.
    browser
        .execute("window.confirm = () => true; return 1;", json!([]))
        .await;
    for button in ["#service-archive", "#service-delete"] {
        browser.click(button).await;
        let refusal = browser
            .wait_text("#service-lifecycle-message", "the refusal", |t| {
                !t.is_empty()
            })
            .await;
        assert!(
            refusal.contains("(service_assigned)") && refusal.contains("plan=family"),
            "{button}: {refusal}"
        );
        browser
            .execute(
                "document.getElementById('service-lifecycle-message').textContent = ''; return 1;",
                json!([]),
            )
            .await;
    }
    // Unassigned from the page, it can be archived: marked so, its forms gone.
    for left in [1, 0] {
        browser.click("#assignment-table .unassign").await;
        browser
            .wait_text("#assignment-table tbody", "one assignment fewer", |t| {
                t.matches("plan=").count() == left
            })
            .await;
    }
    browser.click("#service-archive").await;
    browser
        .wait_text("#service-title", "archived", |t| t.contains("archived"))
        .await;
    assert!(!browser.is_shown("#revision-form").await);
    assert!(!browser.is_shown("#assign-form").await);
    assert_eq!(
        h.get(&format!("/api/v1/services/{service}")).await.body["archived"],
        true
    );
    // Deleted: back to the list, which no longer has it.
    browser.click("#service-delete").await;
    browser.find("#service-table").await;
    let r = h.get(&format!("/api/v1/services/{service}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    no_script_errors(&browser).await;
    browser.quit().await;
}

/// Labels on one router (the complete set, PATCH), then in bulk on the
/// routers the device list's selector filter matches, previewed first.
#[tokio::test]
async fn dashboard_changes_labels_on_one_router_and_in_bulk() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for (name, plan) in [
        ("home-0", "family"),
        ("home-1", "family"),
        ("home-2", "family"),
        ("shop-0", "business"),
    ] {
        ids.push(
            h.register(name, json!({"plan": plan, "region": "eu"}))
                .await
                .0,
        );
    }
    let browser = logged_in(&h, &h.controller.operator_token).await;

    // One router: its labels as text, edited and saved.
    open(&browser, &h, &format!("#/devices/{}", ids[0])).await;
    browser.find("#labels-input").await;
    let shown = browser
        .execute(
            "return document.getElementById('labels-input').value;",
            json!([]),
        )
        .await;
    assert_eq!(shown, "plan=family, region=eu");
    browser
        .type_into("#labels-input", "plan=premium region")
        .await;
    browser.click("#labels-save").await;
    browser
        .wait_text("#labels-message", "the malformed pair", |t| {
            t.contains("not key=value")
        })
        .await;
    browser
        .type_into("#labels-input", "plan=premium, region=eu, floor=3")
        .await;
    browser.click("#labels-save").await;
    browser
        .wait_text("#labels-message", "saved", |t| t.starts_with("Saved."))
        .await;
    browser
        .wait_text("#device-labels", "the new labels", |t| {
            t == "floor=3, plan=premium, region=eu"
        })
        .await;
    let device = h.get(&format!("/api/v1/devices/{}", ids[0])).await;
    assert_eq!(
        device.body["labels"],
        json!({"plan": "premium", "region": "eu", "floor": "3"})
    );

    // In bulk: the list filtered by a selector offers to change these routers.
    open(&browser, &h, "#/devices").await;
    browser.find("#device-table").await;
    assert!(
        !browser.is_shown("#bulk-open").await,
        "no selector, no bulk change"
    );
    browser.type_into("#device-selector", "plan=family").await;
    browser
        .wait_text("#bulk-open", "the offer", |t| {
            t == "Change labels of these 2 routers"
        })
        .await;
    browser.click("#bulk-open").await;
    let preview = browser.text("#bulk-preview").await;
    assert!(
        preview.starts_with("2 routers match")
            && preview.contains("home-1")
            && preview.contains("home-2"),
        "{preview}"
    );
    assert_eq!(browser.text("#bulk-apply").await, "Apply to 2 routers");
    browser.type_into("#bulk-set", "tier=gold").await;
    browser.type_into("#bulk-remove", "region").await;
    browser.click("#bulk-apply").await;
    browser
        .wait_text("#bulk-message", "done", |t| {
            t.starts_with("Done: 2 matched, 2 changed")
        })
        .await;
    for (i, want) in [
        (1, json!({"plan": "family", "tier": "gold"})),
        (2, json!({"plan": "family", "tier": "gold"})),
        (3, json!({"plan": "business", "region": "eu"})),
    ] {
        let device = h.get(&format!("/api/v1/devices/{}", ids[i])).await;
        assert_eq!(device.body["labels"], want, "{}", device.body);
    }
    // One call, one audit entry.
    assert_eq!(audited(&h, "POST /api/v1/devices/labels").await.len(), 1);
    // The table follows (live or after the change).
    browser
        .wait_text("#device-table tbody", "the new labels", |t| {
            t.matches("tier=gold").count() == 2
        })
        .await;

    // A filter that matches nobody: a warning, and nothing to change.
    browser.type_into("#device-selector", "plan=nobody").await;
    browser
        .wait_text("#device-selector-preview", "the warning", |t| {
            t.contains("matches no router")
        })
        .await;
    browser
        .wait_text("#bulk-open", "zero routers", |t| {
            t.contains("these 0 routers")
        })
        .await;
    no_script_errors(&browser).await;
    browser.quit().await;
}

/// The device page: the services and revisions in force with links, the
/// compiled config decoded with its version and digest, the counters with
/// the time of their report, recent events, the status history, and a timed
/// block placed and ended from the page.
#[tokio::test]
async fn dashboard_device_page_shows_what_the_router_runs() {
    let h = Harness::start().await;
    let (id, device) = h.device("home-0", json!({"plan": "family"})).await;
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}]}),
        )
        .await;
    let r = h.assign(&service, "plan=family").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let version = h.config_version(&id).await as u64;
    assert_eq!(
        report_status(&device, 1, "applied", Some(version), "0.3.0").await,
        StatusCode::NO_CONTENT
    );
    let config = h.get(&format!("/api/v1/devices/{id}/config")).await.body;
    let browser = logged_in(&h, &h.controller.operator_token).await;
    open(&browser, &h, &format!("#/devices/{id}")).await;

    let services = browser
        .wait_text("#device-services-table tbody", "the service", |t| {
            t.contains("games")
        })
        .await;
    assert!(
        services.contains("flow-block")
            && services.contains("revision 1")
            && services.contains("plan=family"),
        "{services}"
    );
    assert_eq!(
        browser.attribute("#device-services-table a", "href").await,
        Some(format!("#/services/{service}"))
    );

    let summary = browser.text("#config-summary").await;
    let digest = config["digest"].as_str().unwrap();
    assert!(
        summary.contains(&format!("Version {version}")) && summary.contains(&digest[..16]),
        "{summary}"
    );
    // The decoded config, as the API gives it.
    let decoded = browser
        .execute(
            "return JSON.parse(document.getElementById('config-json').textContent);",
            json!([]),
        )
        .await;
    assert_eq!(decoded, config["config"]);

    let as_of = browser.text("#counters-as-of").await;
    assert!(
        as_of.contains("report #1") && as_of.contains("As of the report of"),
        "{as_of}"
    );
    let counters = browser.text("#counters-table tbody").await;
    assert!(
        counters.contains("r1") && counters.contains("1,000"),
        "{counters}"
    );
    let history = browser.text("#history-table tbody").await;
    assert!(history.contains("applied"), "{history}");
    assert!(browser
        .text("#events-table")
        .await
        .contains("No events reported."));

    // A timed block, placed from the page; the router's config carries it.
    browser.select("#block-protocol", "tcp").await;
    browser.type_into("#block-dst", "198.51.100.7").await;
    browser.type_into("#block-dport", "443").await;
    browser.type_into("#block-duration", "2h").await;
    browser.type_into("#block-reason", "ticket 4711").await;
    browser.click("#block-place").await;
    browser
        .wait_text("#block-message", "placed", |t| {
            t.starts_with("Placed 1 block")
        })
        .await;
    let blocks = browser
        .wait_text("#blocks-table tbody", "the block", |t| {
            t.contains("ticket 4711")
        })
        .await;
    assert!(blocks.contains("tcp any → 198.51.100.7:443"), "{blocks}");
    let listed = h.get(&format!("/api/v1/devices/{id}/blocks")).await.body;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let remaining = listed[0]["remaining_secs"].as_f64().unwrap();
    assert!((7100.0..=7201.0).contains(&remaining), "{listed}");
    assert!(h.config_version(&id).await > version as i64);
    // And ended from the page.
    browser.click("#blocks-table .end-block").await;
    browser
        .wait_text("#blocks-table tbody", "no block", |t| {
            t.contains("No blocks in force.")
        })
        .await;
    assert_eq!(
        h.get(&format!("/api/v1/devices/{id}/blocks")).await.body,
        json!([])
    );
    no_script_errors(&browser).await;
    browser.quit().await;
}

/// CSV exports follow the filters on screen; the audit page filters.
#[tokio::test]
async fn dashboard_exports_csv_with_the_filters_and_filters_the_audit_log() {
    let h = Harness::start().await;
    h.register("home-0", json!({"plan": "family"})).await;
    h.register("home-1", json!({"plan": "family"})).await;
    h.register("shop-0", json!({"plan": "business"})).await;
    let browser = logged_in(&h, &h.controller.operator_token).await;
    open(&browser, &h, "#/devices").await;
    browser.find("#device-table").await;
    assert_eq!(
        browser.attribute("#device-csv", "href").await.as_deref(),
        Some("/api/v1/exports/devices.csv")
    );
    browser.type_into("#device-selector", "plan=family").await;
    browser.type_into("#device-search", "home").await;
    let href = "/api/v1/exports/devices.csv?q=home&selector=plan%3Dfamily";
    let deadline = tokio::time::Instant::now() + crate::webdriver::WAIT;
    while browser.attribute("#device-csv", "href").await.as_deref() != Some(href) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link never followed the filters"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The link downloads with the page's session.
    let fetch = "return fetch(document.querySelector(arguments[0]).href).then(r => r.text());";
    let csv = browser.execute(fetch, json!(["#device-csv"])).await;
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("id,name,labels,state"), "{csv}");
    assert!(
        csv.contains("home-0") && csv.contains("home-1") && !csv.contains("shop-0"),
        "{csv}"
    );

    // The audit page: filters and the export with them.
    open(&browser, &h, "#/audit").await;
    browser.find("#audit-table").await;
    browser
        .type_into("#audit-action", "POST /api/v1/devices")
        .await;
    browser
        .wait_text("#audit-table tbody", "only device creations", |t| {
            t.matches("POST /api/v1/devices").count() == 3 && !t.contains("ui.login")
        })
        .await;
    browser.type_into("#audit-actor", "someone-else").await;
    browser
        .wait_text("#audit-table tbody", "no entry", |t| {
            t.contains("No entry matches.")
        })
        .await;
    let href = browser.attribute("#audit-csv", "href").await.unwrap();
    assert!(
        href.starts_with("/api/v1/exports/audit.csv?")
            && href.contains("actor=someone-else")
            && href.contains("action=POST+%2Fapi%2Fv1%2Fdevices"),
        "{href}"
    );
    browser.type_into("#audit-actor", "").await;
    browser
        .wait_text("#audit-table tbody", "the creations again", |t| {
            t.contains("POST /api/v1/devices")
        })
        .await;
    let csv = browser.execute(fetch, json!(["#audit-csv"])).await;
    let csv = csv.as_str().unwrap();
    assert_eq!(
        csv.lines()
            .filter(|l| l.contains("POST /api/v1/devices"))
            .count(),
        3,
        "{csv}"
    );
    no_script_errors(&browser).await;
    browser.quit().await;
}

/// Logged out, the page shows no navigation nor "Log out"; the tables print
/// no stray "null"; the fleet page follows routers created and deleted; a
/// viewer sees no forms.
#[tokio::test]
async fn dashboard_header_tables_live_fleet_and_viewer() {
    let h = Harness::start().await;
    let (first, _) = h.register("home-0", json!({"plan": "family"})).await;
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    open(&browser, &h, "").await;
    browser.find("#token").await;
    for css in ["#top", "#nav", "#logout"] {
        assert!(!browser.is_shown(css).await, "{css} shows while logged out");
    }
    login(&browser, &h, &h.controller.operator_token).await;
    browser
        .wait_text("#count-devices .n", "one router", |t| t == "1")
        .await;
    assert!(browser.is_shown("#nav").await && browser.is_shown("#logout").await);

    // Routers created and deleted elsewhere: the fleet page follows.
    let (second, _) = h.register("home-1", json!({"plan": "family"})).await;
    browser
        .wait_text("#count-devices .n", "two routers", |t| t == "2")
        .await;
    let r = h
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{first}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    browser
        .wait_text("#count-devices .n", "one router again", |t| t == "1")
        .await;

    // No "null" under the tables.
    open(&browser, &h, "#/devices").await;
    browser
        .wait_text("#devices", "the router", |t| t.contains("home-1"))
        .await;
    assert!(!browser.text("#device-results").await.contains("null"));
    open(&browser, &h, "#/audit").await;
    browser
        .wait_text("#audit", "entries", |t| t.contains("ui.login"))
        .await;
    assert!(!browser.text("#audit-results").await.contains("null"));

    // Logged out again: no header.
    browser.click("#logout").await;
    browser.find("#token").await;
    assert!(!browser.is_shown("#top").await);

    // A viewer sees the pages without their forms.
    let r = h
        .post(
            "/api/v1/operator-tokens",
            json!({"name": "watcher", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    login(&browser, &h, r.body["token"].as_str().unwrap()).await;
    browser.find("#count-devices").await;
    open(&browser, &h, &format!("#/devices/{second}")).await;
    browser.find("#device-services").await;
    for css in ["#labels-form", "#block-form"] {
        assert!(!browser.is_shown(css).await, "{css} shows to a viewer");
    }
    open(&browser, &h, "#/services").await;
    browser.find("#service-table").await;
    assert!(!browser.is_shown("#service-form").await);
    open(&browser, &h, "#/devices?selector=plan%3Dfamily").await;
    browser.find("#device-table").await;
    assert!(!browser.is_shown("#bulk-open").await);
    open(&browser, &h, "#/rollouts").await;
    browser.find("#rollout-table").await;
    assert!(!browser.is_shown("#rollout-form").await);
    no_script_errors(&browser).await;
    browser.quit().await;
}
