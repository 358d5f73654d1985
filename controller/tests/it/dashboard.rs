//! The dashboard in a real headless Chromium against the real controller:
//! login, the fleet overview, device search, a revision diff, the audit log,
//! live updates, and (once the rollout API is merged) a rollout driven from
//! the page. Screenshots for docs/screenshots come from here too
//! (scripts/dashboard-screenshots).

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{report_status, DeviceHandle, Harness};
use crate::webdriver::Browser;

const LAPTOP: (u32, u32) = (1366, 900);
const PHONE: (u32, u32) = (390, 844);

/// A small fleet: `n` routers named edge-00.., most reporting, a few failing,
/// some never. The first `enrolled` enroll and report over mutual TLS (the
/// enrollment listener admits 10 at once per address); the others' reports
/// are written to the database as if received, some long ago (stale).
/// Returns the enrolled ones' ids and handles.
async fn fleet(h: &Harness, n: usize, enrolled: usize) -> Vec<(String, DeviceHandle)> {
    let models = ["ax3000", "mt7621", "rpi4"];
    let mut handles = Vec::new();
    for i in 0..n {
        let name = format!("edge-{i:02}");
        let labels = json!({"model": models[i % 3], "plan": if i % 2 == 0 { "family" } else { "basic" }, "region": "eu"});
        let outcome = if i % 5 == 4 { "rolled_back" } else { "applied" };
        let agent = if i % 4 == 0 { "0.2.9" } else { "0.3.0" };
        if i % 7 == 6 {
            h.register(&name, labels).await;
            continue;
        }
        if handles.len() < enrolled {
            let (id, device) = h.device(&name, labels).await;
            let version = h.config_version(&id).await as u64;
            assert_eq!(
                report_status(&device, 1, outcome, Some(version), agent).await,
                StatusCode::NO_CONTENT
            );
            handles.push((id, device));
            continue;
        }
        let (id, _) = h.register(&name, labels).await;
        let version = h.config_version(&id).await;
        let report = json!({
            "sequence": 1, "enforced_version": version, "enforced_digest": null,
            "outcome": outcome, "attempted_version": version, "errors": [],
            "counters": [{"rule_id": "flow-block/games/0", "packets": 120 * i, "bytes": 9000 * i}],
            "backend": "nftables", "agent_version": agent,
        });
        // Every eleventh last reported an hour ago: stale.
        let age_secs: f64 = if i % 11 == 10 { 3600.0 } else { 30.0 };
        for table in ["device_status", "device_status_history"] {
            sqlx::query(&format!(
                "INSERT INTO {table} (device_id, sequence, report, received_at)
                 VALUES ($1::uuid, 1, $2, now() - make_interval(secs => $3))"
            ))
            .bind(&id)
            .bind(&report)
            .bind(age_secs)
            .execute(&h.controller.state.pool)
            .await
            .unwrap();
        }
    }
    handles
}

async fn login(browser: &Browser, h: &Harness, token: &str) {
    browser.goto(&format!("{}/ui/", h.controller.api_url)).await;
    browser.type_into("#token", token).await;
    browser.click("#login-button").await;
}

#[tokio::test]
async fn dashboard_logs_in_and_shows_the_fleet_devices_diffs_and_audit() {
    let h = Harness::start().await;
    fleet(&h, 8, 8).await;
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
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;

    // A wrong token is refused, and the page says so.
    login(&browser, &h, "isdf_op_not-a-token").await;
    browser
        .wait_text("#login-error", "the refusal", |t| t.contains("refused"))
        .await;

    // The right one opens the fleet overview, with the API's numbers.
    login(&browser, &h, &h.controller.operator_token).await;
    let overview = h.get("/api/v1/fleet/overview").await.body;
    for (css, key) in [
        ("#count-devices .n", "devices"),
        ("#count-online .n", "online"),
        ("#count-stale .n", "stale"),
        ("#count-failing .n", "failing"),
        ("#count-never .n", "never_reported"),
    ] {
        let want = overview[key].to_string();
        browser
            .wait_text(css, &format!("{key} = {want}"), |t| t == want)
            .await;
    }
    assert_eq!(browser.text("#who-role").await, "admin");

    // Live: a router that reports changes the numbers without a reload.
    let marker = browser
        .execute("window.__noReload = 1; return 1;", json!([]))
        .await;
    assert_eq!(marker, 1);
    let online_before: i64 = overview["online"].as_i64().unwrap();
    let failing_before: i64 = overview["failing"].as_i64().unwrap();
    let (new_id, new_device) = h.device("late-router", json!({"model": "rpi4"})).await;
    let version = h.config_version(&new_id).await as u64;
    report_status(&new_device, 1, "rolled_back", Some(version), "0.3.0").await;
    let want_online = (online_before + 1).to_string();
    let want_failing = (failing_before + 1).to_string();
    browser
        .wait_text("#count-online .n", "one more online", |t| t == want_online)
        .await;
    browser
        .wait_text("#count-failing .n", "one more failing", |t| {
            t == want_failing
        })
        .await;
    assert_eq!(
        browser
            .execute("return window.__noReload;", json!([]))
            .await,
        1,
        "the page reloaded"
    );

    // Device search.
    browser.click("a[data-page=devices]").await;
    browser.find("#device-search").await;
    browser.type_into("#device-search", "EDGE-03").await;
    browser
        .wait_text("#device-table tbody", "only edge-03", |t| {
            t.contains("edge-03") && !t.contains("edge-01")
        })
        .await;
    browser.select("#device-state", "failing").await;
    browser
        .wait_text("#device-table tbody", "no failing edge-03", |t| {
            t.contains("No device matches")
        })
        .await;
    browser.type_into("#device-search", "").await;
    browser
        .wait_text("#device-table tbody", "the failing routers", |t| {
            t.contains("edge-04") && t.contains("late-router") && !t.contains("edge-03")
        })
        .await;

    // The device page.
    browser.click("#device-table a").await;
    browser
        .wait_text("#enforced-version", "a version", |t| !t.is_empty())
        .await;

    // A revision diff.
    browser
        .goto(&format!("{}/ui/#/services/{service}", h.controller.api_url))
        .await;
    let diff = browser
        .wait_text("#diff", "the changed port", |t| t.contains("27016"))
        .await;
    assert!(diff.contains("-      \"dport\": 27015"), "{diff}");
    assert!(diff.contains("+      \"dport\": 27016"), "{diff}");

    // The audit log lists the logins, the refused one too.
    browser.click("a[data-page=audit]").await;
    let audit = browser
        .wait_text("#audit-table", "the login", |t| t.contains("ui.login"))
        .await;
    assert!(audit.contains("unknown"), "the refused login: {audit}");

    // Log out: back to the login page, and the session is gone.
    browser.click("#logout").await;
    browser.find("#token").await;
    browser.quit().await;
}

/// Drives a rollout from the page: start it with the form, watch the canary
/// wave complete as routers report, pause and resume it, watch it complete.
/// Needs the rollout API (docs: /work/notes/rollout-api.md, the lead's
/// branch); fails until it is merged.
#[tokio::test]
async fn dashboard_rollout_start_pause_resume_complete() {
    let h = Harness::start().await;
    let mut routers = Vec::new();
    for i in 0..4 {
        let labels = if i == 0 {
            json!({"plan": "family", "canary": "true"})
        } else {
            json!({"plan": "family"})
        };
        routers.push(h.device(&format!("home-{i}"), labels).await);
    }
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}]}),
        )
        .await;
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    login(&browser, &h, &h.controller.operator_token).await;
    browser.find("#count-devices").await;
    browser.click("a[data-page=rollouts]").await;
    browser.select("#rollout-service", &service).await;
    browser.type_into("#rollout-selector", "plan=family").await;
    browser.type_into("#rollout-canary", "canary=true").await;
    browser.type_into("#rollout-waves", "100").await;
    browser.type_into("#rollout-soak", "0").await;
    browser.click("#rollout-start").await;
    // The rollout's page, or the form's error (the first of the two present).
    let shown = browser
        .wait_text(
            "#rollout-state-badge, #rollout-error",
            "the new rollout or an error",
            |t| !t.is_empty(),
        )
        .await;
    assert_eq!(
        shown, "running",
        "starting a rollout from the form: the page shows {shown:?} \
         (this test needs the rollout API: POST /api/v1/rollouts and the rest of \
         /work/notes/rollout-api.md)"
    );
    let rollout_id = browser
        .execute("return location.hash.split('/')[2];", json!([]))
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // Routers apply whatever they are given; the page follows live.
    let mut sequence = 1;
    apply_all(&h, &routers, &mut sequence).await;
    browser
        .wait_text("#wave-0", "the canary applied", |t| t.contains("1 applied"))
        .await;

    browser.click("#rollout-pause").await;
    browser
        .wait_text("#rollout-state-badge", "paused", |t| t == "paused")
        .await;
    let view = h.get(&format!("/api/v1/rollouts/{rollout_id}")).await;
    assert_eq!(view.body["state"], "paused", "{}", view.body);
    browser.click("#rollout-resume").await;
    browser
        .wait_text("#rollout-state-badge", "running again", |t| {
            t == "running" || t == "completed"
        })
        .await;

    // Reports until the last wave passes (bounded by the page's waits).
    let deadline = tokio::time::Instant::now() + crate::webdriver::WAIT;
    loop {
        apply_all(&h, &routers, &mut sequence).await;
        if browser.text("#rollout-state-badge").await == "completed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not complete; the page shows {}",
            browser.page_text().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let history = browser.text("#rollout-history").await;
    for kind in ["created", "paused", "resumed", "completed"] {
        assert!(history.contains(kind), "history lacks {kind}: {history}");
    }
    // The chart has a band per state for the canary wave.
    let bands = browser
        .execute(
            "return document.querySelectorAll('#wave-0 svg polygon').length;",
            json!([]),
        )
        .await;
    assert_eq!(bands, 4);
    browser.quit().await;
}

/// Replaces the page's `fetch` for `/api/v1/rollouts...` with answers shaped
/// as /work/notes/rollout-api.md says (a rollout of 40 routers in three waves,
/// the second one half done; pause/resume/abort change its state), so the
/// rollout pages can be checked and pictured before that API is merged.
const ROLLOUT_STUB: &str = r#"
const id = "7d4f7c1e-2a41-4c55-9a0e-0b6f1f0c2d11";
const t0 = Date.now() - 15 * 60 * 1000;
const at = (s) => new Date(t0 + s * 1000).toISOString();
const wave = (index, label, routers, applied, failed, offline, released, passed) => ({
  index, label, routers, applied, failed, offline, pending: routers - applied - failed - offline,
  released_at: released === null ? null : at(released), healthy_since: passed === null ? null : at(passed - 60),
  passed_at: passed === null ? null : at(passed) });
const view = { id, assignment_id: "5b0e4c2a-7d7e-4b8e-8a55-3c1f0e9d6a21", service_id: "1f2e3d4c-5b6a-4789-9abc-def012345678",
  service_name: "games", selector: "region=eu", from_revision: 1, to_revision: 2, state: "running", pause_reason: null,
  current_wave: 1,
  policy: { min_applied_share: 0.9, max_failed_share: 0.05, soak_secs: 60, offline_timeout_secs: 600 },
  waves: [wave(0, "canary 10%", 4, 4, 0, 0, 0, 180), wave(1, "50%", 16, 9, 1, 1, 240, null), wave(2, "100%", 20, 0, 0, 0, null, null)],
  created_by: "initial-admin", created_at: at(0), updated_at: at(700), finished_at: null };
const total = (k) => view.waves.reduce((a, w) => a + w[k], 0);
const totals = () => ({ routers: total("routers"), pending: total("pending"), applied: total("applied"), failed: total("failed"), offline: total("offline") });
const samples = [];
for (let s = 0, a = 0; s <= 180; s += 30, a = Math.min(4, a + 1)) samples.push({ at: at(s), wave: 0, pending: 4 - a, applied: a, failed: 0, offline: 0 });
[[240, 0, 0, 0], [300, 3, 0, 0], [360, 5, 1, 0], [480, 7, 1, 0], [600, 8, 1, 1], [700, 9, 1, 1]].forEach(([s, a, f, o]) =>
  samples.push({ at: at(s), wave: 1, pending: 16 - a - f - o, applied: a, failed: f, offline: o }));
const history = [
  { at: at(0), kind: "created", wave: null, actor: "initial-admin", detail: "games 1 → 2 on region=eu, 40 routers" },
  { at: at(0), kind: "wave_released", wave: 0, actor: "controller", detail: "canary 10%: 4 routers" },
  { at: at(180), kind: "wave_passed", wave: 0, actor: "controller", detail: "4/4 applied for 60 s" },
  { at: at(240), kind: "wave_released", wave: 1, actor: "controller", detail: "50%: 16 routers" } ];
const json = (body, status) => Promise.resolve(new Response(JSON.stringify(body), { status: status || 200, headers: { "Content-Type": "application/json" } }));
const real = window.fetch.bind(window);
window.fetch = (url, init) => {
  const path = String(url);
  if (!path.startsWith("/api/v1/rollouts")) return real(url, init);
  const method = (init && init.method) || "GET";
  const verb = path.split("/")[5];
  if (method === "POST" && verb) {
    const next = { pause: ["running", "paused"], resume: ["paused", "running"], abort: [null, "aborted"] }[verb];
    if (next[0] && view.state !== next[0]) return json({ error: { code: "rollout_not_" + next[0], message: "not " + next[0] } }, 409);
    view.state = next[1];
    view.pause_reason = verb === "pause" ? null : view.pause_reason;
    history.push({ at: new Date().toISOString(), kind: verb === "pause" ? "paused" : verb === "resume" ? "resumed" : "aborted", wave: null, actor: "initial-admin", detail: "" });
    return json({ ...view, totals: totals() });
  }
  if (path.includes("/history")) return json({ items: history });
  if (path.includes("/samples")) return json({ items: samples });
  if (path.startsWith("/api/v1/rollouts/")) return json({ ...view, totals: totals() });
  return json({ items: [{ ...view, totals: totals() }], next_cursor: null });
};
return id;
"#;

/// The rollout pages against the API contract (answers stubbed in the page,
/// see [`ROLLOUT_STUB`]): waves with progress bars and charts, the history,
/// and the buttons enabled by state.
#[tokio::test]
async fn dashboard_rollout_pages_render_the_contract() {
    let h = Harness::start().await;
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    login(&browser, &h, &h.controller.operator_token).await;
    browser.find("#count-devices").await;
    let id = browser.execute(ROLLOUT_STUB, json!([])).await;
    let id = id.as_str().unwrap();
    browser
        .execute("location.hash = '#/rollouts';", json!([]))
        .await;
    browser
        .wait_text("#rollout-table", "the rollout", |t| {
            t.contains("games") && t.contains("1 → 2") && t.contains("13/40")
        })
        .await;
    browser
        .execute(&format!("location.hash = '#/rollouts/{id}';"), json!([]))
        .await;
    let wave1 = browser
        .wait_text("#wave-1", "the second wave", |t| t.contains("9 applied"))
        .await;
    assert!(
        wave1.contains("1 failed") && wave1.contains("1 offline") && wave1.contains("5 pending"),
        "{wave1}"
    );
    let charts = browser
        .execute(
            "return [0, 1, 2].map(i => document.querySelectorAll('#wave-' + i + ' svg polygon').length);",
            json!([]),
        )
        .await;
    assert_eq!(
        charts,
        json!([4, 4, 0]),
        "bands per wave (the third has no samples)"
    );
    let enabled = "return ['pause', 'resume', 'abort'].map(b => !document.getElementById('rollout-' + b).disabled);";
    assert_eq!(
        browser.execute(enabled, json!([])).await,
        json!([true, false, true])
    );
    browser.click("#rollout-pause").await;
    browser
        .wait_text("#rollout-state-badge", "paused", |t| t == "paused")
        .await;
    assert_eq!(
        browser.execute(enabled, json!([])).await,
        json!([false, true, true])
    );
    browser
        .wait_text("#rollout-history", "the pause", |t| t.contains("paused"))
        .await;
    browser.click("#rollout-resume").await;
    browser
        .wait_text("#rollout-state-badge", "running", |t| t == "running")
        .await;
    browser.quit().await;
}

/// Every router reports that it applied what it is given.
async fn apply_all(h: &Harness, routers: &[(String, DeviceHandle)], sequence: &mut u64) {
    for (id, device) in routers {
        let version = h.config_version(id).await as u64;
        report_status(device, *sequence, "applied", Some(version), "0.3.0").await;
    }
    *sequence += 1;
}

/// Screenshots of the main pages at laptop and phone widths. Written to
/// `ISDF_DASHBOARD_SCREENSHOTS` when set (scripts/dashboard-screenshots sets
/// it to docs/screenshots), else to a temporary directory (the test then
/// only checks every page renders).
#[tokio::test]
async fn dashboard_screenshots_of_the_main_pages() {
    let out = std::env::var_os("ISDF_DASHBOARD_SCREENSHOTS").map(std::path::PathBuf::from);
    let scratch = tempfile::tempdir().unwrap();
    let dir = out.clone().unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();

    let h = Harness::start().await;
    let devices = fleet(&h, 40, 8).await;
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}, {"protocol": "tcp", "dport": 3074}]}),
        )
        .await;
    h.post(
        &format!("/api/v1/services/{service}/revisions"),
        json!({"spec": {"flows": [{"protocol": "udp", "dport": 27016}, {"protocol": "tcp", "dport": 3074}, {"protocol": "udp", "dport": 3478}]}}),
    )
    .await;
    let assigned = h.assign(&service, "plan=family").await;
    assert!(assigned.status.is_success(), "{}", assigned.body);
    // A second round of reports, so histories have more than one line.
    for (i, (id, device)) in devices.iter().enumerate() {
        let version = h.config_version(id).await as u64;
        let outcome = if i % 9 == 8 { "rejected" } else { "applied" };
        report_status(device, 2, outcome, Some(version), "0.3.0").await;
    }
    // A rollout when the API exists (the lead's branch); else those pages
    // are skipped in the pictures.
    let rollout = h
        .post(
            "/api/v1/rollouts",
            json!({"service_id": service, "selector": "region=eu", "canary": {"percent": 10}, "waves": [50, 100], "soak_secs": 5}),
        )
        .await;
    let rollout_id = (rollout.status == StatusCode::CREATED)
        .then(|| rollout.body["id"].as_str().unwrap().to_owned());
    if let Some(_id) = &rollout_id {
        for (i, (id, device)) in devices.iter().enumerate().take(12) {
            let version = h.config_version(id).await as u64;
            let outcome = if i == 3 { "rolled_back" } else { "applied" };
            report_status(device, 3, outcome, Some(version), "0.3.0").await;
        }
    }

    let device_id = &devices[1].0;
    let mut pages: Vec<(&str, String, &str)> = vec![
        ("fleet", "#/fleet".into(), "#count-online"),
        ("devices", "#/devices".into(), "#device-table"),
        ("device", format!("#/devices/{device_id}"), "#history-table"),
        ("service-diff", format!("#/services/{service}"), "#diff"),
        ("audit", "#/audit".into(), "#audit-table"),
    ];
    // Without the rollout API (before the lead's branch is merged) the
    // rollout pages are pictured with contract-shaped sample answers.
    let stubbed = rollout_id.is_none();
    let rollout_hash = match &rollout_id {
        Some(id) => format!("#/rollouts/{id}"),
        None => "#/rollouts/7d4f7c1e-2a41-4c55-9a0e-0b6f1f0c2d11".to_owned(),
    };
    pages.push(("rollouts", "#/rollouts".into(), "#rollout-table"));
    pages.push(("rollout", rollout_hash, "#wave-0"));
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    let mut written = Vec::new();
    for (size, (width, height)) in [("laptop", LAPTOP), ("phone", PHONE)] {
        browser.viewport(width, height).await;
        // Logged out (a fresh browser, or logged out below): the login page.
        browser.goto(&format!("{}/ui/", h.controller.api_url)).await;
        browser.find("#token").await;
        written.push(save(
            &dir,
            &format!("login-{size}.png"),
            browser.screenshot().await,
        ));
        browser
            .type_into("#token", &h.controller.operator_token)
            .await;
        browser.click("#login-button").await;
        browser.find("#count-online").await;
        for (name, hash, ready) in &pages {
            if stubbed && name.starts_with("rollout") {
                browser.execute(ROLLOUT_STUB, json!([])).await;
                browser
                    .execute(&format!("location.hash = '{hash}';"), json!([]))
                    .await;
            } else {
                browser
                    .goto(&format!("{}/ui/{hash}", h.controller.api_url))
                    .await;
            }
            browser.find(ready).await;
            // Let the live stream's first refresh settle (fonts, charts).
            browser
                .execute(
                    "return new Promise(r => requestAnimationFrame(() => r(1)));",
                    json!([]),
                )
                .await;
            written.push(save(
                &dir,
                &format!("{name}-{size}.png"),
                browser.screenshot().await,
            ));
        }
        // Log out for the next size.
        browser.click("#logout").await;
        browser.find("#token").await;
    }
    browser.quit().await;
    for (path, bytes) in &written {
        assert!(*bytes > 1000, "{} is suspiciously small", path.display());
    }
    if out.is_some() {
        eprintln!("wrote {} screenshots to {}", written.len(), dir.display());
    }
}

fn save(dir: &std::path::Path, name: &str, png: Vec<u8>) -> (std::path::PathBuf, usize) {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    let path = dir.join(name);
    std::fs::write(&path, &png).unwrap();
    (path, png.len())
}
