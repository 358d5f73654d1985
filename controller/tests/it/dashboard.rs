//! The dashboard in a real headless Chromium against the real controller:
//! login, the fleet overview, device search, a revision diff, the audit log,
//! live updates, and rollouts: one driven from the page, one mid-way as
//! routers report. The fleet built here serves the screenshots too
//! (`dashboard_screenshots.rs`); the forms are in `dashboard_forms.rs`.

use std::net::Ipv4Addr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{report_status, DeviceHandle, Harness};
use crate::webdriver::Browser;

pub(crate) const LAPTOP: (u32, u32) = (1366, 900);
pub(crate) const PHONE: (u32, u32) = (390, 844);

/// A router of the test fleet.
pub(crate) struct Router {
    pub(crate) id: String,
    /// Enrolled: reports over mutual TLS. `None`: registered, never enrolled.
    device: Option<DeviceHandle>,
    /// Reports no more (never enrolled, or last heard of an hour ago).
    silent: bool,
    agent: &'static str,
    sequence: u64,
    /// The version it last applied.
    enforced: Option<i64>,
}

impl Router {
    /// Reports (over mutual TLS, as an agent does) that it applied its
    /// current config, or tried it and rolled back / refused it.
    async fn report(&mut self, h: &Harness, outcome: &str) {
        let device = self.device.as_ref().expect("an enrolled router");
        let version = h.config_version(&self.id).await;
        if outcome == "applied" {
            self.enforced = Some(version);
        }
        self.sequence += 1;
        let n = self.sequence;
        let r = device
            .http
            .post(device.url(isdf_api::paths::DEVICE_STATUS))
            .json(&json!({
                "sequence": n, "enforced_version": self.enforced, "enforced_digest": null,
                "outcome": outcome, "attempted_version": version, "errors": [],
                "counters": [{"rule_id": "flow-block/games/0", "packets": 120 * n, "bytes": 9000 * n}],
                "backend": "nftables", "agent_version": self.agent,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

/// A small fleet: `n` routers named edge-00.., labelled by model, plan and
/// region, most reporting over mutual TLS, a few failing, some never
/// enrolled (never reported), and every eleventh last heard of an hour ago
/// (stale: its report is written to the database as if received then).
/// Routers enroll from a few loopback addresses (enrollment admits 10 at
/// once per address).
pub(crate) async fn fleet(h: &Harness, n: usize) -> Vec<Router> {
    let models = ["ax3000", "mt7621", "rpi4"];
    let mut routers = Vec::new();
    let mut enrolled = 0;
    for i in 0..n {
        let name = format!("edge-{i:02}");
        let labels = json!({"model": models[i % 3], "plan": if i % 2 == 0 { "family" } else { "basic" }, "region": "eu"});
        let outcome = if i % 5 == 4 { "rolled_back" } else { "applied" };
        let agent = if i % 4 == 0 { "0.2.9" } else { "0.3.0" };
        if i % 7 == 6 {
            let (id, _) = h.register(&name, labels).await;
            routers.push(Router {
                id,
                device: None,
                silent: true,
                agent,
                sequence: 0,
                enforced: None,
            });
            continue;
        }
        let source = Ipv4Addr::new(127, 0, 0, 2 + (enrolled / 9) as u8);
        enrolled += 1;
        let (id, device) = h.device_from(source, &name, labels).await;
        let mut router = Router {
            id,
            device: Some(device),
            silent: false,
            agent,
            sequence: 0,
            enforced: None,
        };
        if i % 11 == 10 {
            let version = h.config_version(&router.id).await;
            let report = json!({
                "sequence": 1, "enforced_version": version, "enforced_digest": null,
                "outcome": outcome, "attempted_version": version, "errors": [],
                "counters": [{"rule_id": "flow-block/games/0", "packets": 120 * i, "bytes": 9000 * i}],
                "backend": "nftables", "agent_version": agent,
            });
            for table in ["device_status", "device_status_history"] {
                sqlx::query(&format!(
                    "INSERT INTO {table} (device_id, sequence, report, received_at)
                     VALUES ($1::uuid, 1, $2, now() - interval '1 hour')"
                ))
                .bind(&router.id)
                .bind(&report)
                .execute(&h.controller.state.pool)
                .await
                .unwrap();
            }
            router.silent = true;
            router.sequence = 1;
        } else {
            router.report(h, outcome).await;
        }
        routers.push(router);
    }
    routers
}

/// 40 routers of [`fleet`] and a `games` flow block with two revisions,
/// assigned at revision 1 to `region=eu` (all of them); the reporting
/// routers report that config (a few refuse it). Returns the routers, the
/// service id and the assignment id.
pub(crate) async fn fleet_with_a_service(h: &Harness) -> (Vec<Router>, String, String) {
    let mut routers = fleet(h, 40).await;
    let service = h
        .flow_block(
            "games",
            json!({"flows": [{"protocol": "udp", "dport": 27015}, {"protocol": "tcp", "dport": 3074}]}),
        )
        .await;
    let r = h.post(
        &format!("/api/v1/services/{service}/revisions"),
        json!({"spec": {"flows": [{"protocol": "udp", "dport": 27016}, {"protocol": "tcp", "dport": 3074}, {"protocol": "udp", "dport": 3478}]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .post(
            "/api/v1/assignments",
            json!({"service_id": service, "revision": 1, "selector": "region=eu"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let assignment = r.body["id"].as_str().unwrap().to_owned();
    // A second round of reports, so histories have more than one line.
    for (i, router) in routers.iter_mut().enumerate() {
        if !router.silent {
            let outcome = if i % 9 == 8 { "rejected" } else { "applied" };
            router.report(h, outcome).await;
        }
    }
    (routers, service, assignment)
}

/// A rollout mid-way, as [`mid_rollout`] leaves it.
pub(crate) struct MidRollout {
    pub(crate) id: String,
    /// An enrolled router of wave 1 that has not reported (offline for now).
    held_back: usize,
}

/// Waits (at most 30 s) until the rollout's view satisfies `done`.
async fn wait_for_rollout(
    h: &Harness,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = h.get(&format!("/api/v1/rollouts/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if done(&r.body) {
            return r.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout never got to {what}: {:#}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chart's steps a little apart: a pause for the picture, not a wait
/// for anything.
async fn chart_step() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Indices of the routers whose config moved past `before` (released).
async fn moved(h: &Harness, routers: &[Router], before: &[i64]) -> Vec<usize> {
    let mut released = Vec::new();
    for (i, router) in routers.iter().enumerate() {
        if h.config_version(&router.id).await > before[i] {
            released.push(i);
        }
    }
    released
}

/// Starts a rollout of revision 2 over the assignment (a 10% canary, then
/// waves to 50% and 100%) and drives it mid-way with the routers' reports,
/// in a few rounds: the canary applies and passes; in wave 1 one router
/// rolls back (within the 10% allowed failures, but then fewer than 95%
/// applied: the wave holds), one more is held back and the silent ones go
/// offline after 4 s; wave 2 waits.
pub(crate) async fn mid_rollout(
    h: &Harness,
    routers: &mut [Router],
    assignment: &str,
) -> MidRollout {
    let mut before = Vec::new();
    for router in routers.iter() {
        before.push(h.config_version(&router.id).await);
    }
    let r = h
        .post(
            "/api/v1/rollouts",
            json!({
                "assignment_id": assignment, "revision": 2,
                "canary": {"percent": 10}, "waves": [50, 100],
                "min_applied_share": 0.95, "max_failed_share": 0.1,
                "soak_secs": 1, "offline_timeout_secs": 4,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();

    // The canary: half its routers apply, then the rest; it passes.
    let canary = moved(h, routers, &before).await;
    assert_eq!(canary.len(), 4, "10% of 40");
    let reporting: Vec<usize> = canary
        .iter()
        .copied()
        .filter(|&i| !routers[i].silent)
        .collect();
    let (first, rest) = reporting.split_at(reporting.len() / 2);
    for &i in first {
        routers[i].report(h, "applied").await;
    }
    let n = first.len();
    wait_for_rollout(h, &id, "the first canaries applied", |r| {
        r["waves"][0]["applied"] == n
    })
    .await;
    chart_step().await;
    for &i in rest {
        routers[i].report(h, "applied").await;
    }
    wait_for_rollout(h, &id, "wave 1 released", |r| r["current_wave"] == 1).await;

    // Wave 1, in three rounds.
    let wave1: Vec<usize> = moved(h, routers, &before)
        .await
        .into_iter()
        .filter(|i| !canary.contains(i))
        .collect();
    assert_eq!(wave1.len(), 16, "50% of 40, less the canary");
    let reporting: Vec<usize> = wave1
        .iter()
        .copied()
        .filter(|&i| !routers[i].silent)
        .collect();
    assert!(reporting.len() >= 4, "{reporting:?}");
    let (failing, held_back, appliers) = (reporting[0], reporting[1], &reporting[2..]);
    let third = appliers.len().div_ceil(3);
    let mut applied = 0;
    for (round, chunk) in appliers.chunks(third).enumerate() {
        if round == 1 {
            routers[failing].report(h, "rolled_back").await;
        }
        for &i in chunk {
            routers[i].report(h, "applied").await;
        }
        applied += chunk.len();
        let failed = usize::from(round >= 1);
        wait_for_rollout(h, &id, "a round of reports counted", |r| {
            r["waves"][1]["applied"] == applied && r["waves"][1]["failed"] == failed
        })
        .await;
        chart_step().await;
    }
    let silent = wave1.len() - reporting.len() + 1;
    wait_for_rollout(h, &id, "wave 1 mid-way, its silent routers offline", |r| {
        let w = &r["waves"][1];
        r["state"] == "running"
            && r["current_wave"] == 1
            && w["applied"] == appliers.len()
            && w["failed"] == 1
            && w["offline"] == silent
            && w["pending"] == 0
            && r["waves"][2]["waiting"] == 20
    })
    .await;
    MidRollout { id, held_back }
}

pub(crate) async fn login(browser: &Browser, h: &Harness, token: &str) {
    browser.goto(&format!("{}/ui/", h.controller.api_url)).await;
    browser.type_into("#token", token).await;
    browser.click("#login-button").await;
}

#[tokio::test]
async fn dashboard_logs_in_and_shows_the_fleet_devices_diffs_and_audit() {
    let h = Harness::start().await;
    fleet(&h, 8).await;
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
        "starting a rollout from the form: the page shows {shown:?}"
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
    browser
        .wait_text("#pause-reason", "who paused it", |t| {
            t.contains("paused by initial-admin")
        })
        .await;
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
    // The canary wave's chart draws each sample with applied routers.
    let samples = h
        .get(&format!("/api/v1/rollouts/{rollout_id}/samples"))
        .await
        .body;
    let applied = samples["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["wave"] == 0 && x["applied"].as_i64().unwrap() > 0)
        .count();
    assert!(applied >= 1, "{samples:#}");
    let drawn = browser
        .execute(
            "return document.querySelectorAll('#wave-0 svg rect[data-part=applied]').length;",
            json!([]),
        )
        .await;
    assert_eq!(drawn, applied);
    browser.quit().await;
}

/// The rollout pages on a real rollout mid-way (see [`mid_rollout`]): the
/// list; the rollout's totals with the routers still waiting apart, each
/// wave's state, counts and chart, the link to the revision diff, the
/// history with who did what; then a breach pauses it and the page says why.
#[tokio::test]
async fn dashboard_rollout_pages_show_a_rollout_mid_way() {
    let h = Harness::start().await;
    let (mut routers, service, assignment) = fleet_with_a_service(&h).await;
    let mid = mid_rollout(&h, &mut routers, &assignment).await;
    let id = &mid.id;
    // A later revision: the rollout's diff link still picks 1 → 2.
    let r = h
        .post(
            &format!("/api/v1/services/{service}/revisions"),
            json!({"spec": {"flows": [{"protocol": "udp", "dport": 9}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let view = h.get(&format!("/api/v1/rollouts/{id}")).await.body;
    let totals = &view["totals"];
    let (applied, failed, offline, waiting) = (
        &totals["applied"],
        &totals["failed"],
        &totals["offline"],
        &totals["waiting"],
    );
    assert_eq!(waiting, 20, "{view:#}");

    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    login(&browser, &h, &h.controller.operator_token).await;
    browser.find("#count-devices").await;
    browser.click("a[data-page=rollouts]").await;
    let want = format!("{applied}/40 applied, 1 failed, 20 waiting");
    let list = browser
        .wait_text("#rollout-table tbody", "the rollout", |t| t.contains(&want))
        .await;
    for part in ["games", "region=eu", "1 → 2", "running"] {
        assert!(list.contains(part), "{part}: {list}");
    }

    browser.click("#rollout-table a").await;
    let want = format!(
        "{applied} applied, {failed} failed, {offline} offline, 0 pending · \
         20 waiting for later waves · 40 routers"
    );
    browser
        .wait_text("#rollout-totals", "the totals", |t| t == want)
        .await;
    let wave0 = browser.text("#wave-0").await;
    assert!(
        wave0.contains("passed") && wave0.contains("4 routers"),
        "{wave0}"
    );
    let w1 = &view["waves"][1];
    let want = format!(
        "{} applied · 1 failed · {} offline · 0 pending · 16 routers",
        w1["applied"], w1["offline"]
    );
    let wave1 = browser.text("#wave-1").await;
    assert!(
        wave1.contains("released") && wave1.contains(&want),
        "{wave1}"
    );
    let wave2 = browser.text("#wave-2").await;
    assert!(
        wave2.contains("waiting") && wave2.contains("20 waiting · 20 routers"),
        "{wave2}"
    );
    // Charts of the released waves (a step per sample and state), none
    // for the last; wave 1's has steps: several samples, each drawn.
    let samples = h.get(&format!("/api/v1/rollouts/{id}/samples")).await.body;
    let applied_samples = |wave: u64| {
        samples["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["wave"] == wave && x["applied"].as_i64().unwrap() > 0)
            .count()
    };
    assert!(applied_samples(1) >= 4, "{samples:#}");
    let charts = browser
        .execute(
            "return [0, 1, 2].map(i => document.querySelector('#wave-' + i + ' svg')
                 ? document.querySelectorAll('#wave-' + i + ' svg rect[data-part=applied]').length : null);",
            json!([]),
        )
        .await;
    assert_eq!(
        charts,
        json!([applied_samples(0), applied_samples(1), null])
    );
    // The overall bar: half the fleet waiting, in its own band.
    let widths = browser
        .execute(
            "const bar = document.querySelector('#rollout .panel .progress');
             return ['applied', 'waiting'].map(p => bar.querySelector('.c-' + p).style.width);",
            json!([]),
        )
        .await;
    assert_eq!(widths[1], "50%", "{widths}");
    let enabled = "return ['pause', 'resume', 'abort'].map(b => !document.getElementById('rollout-' + b).disabled);";
    assert_eq!(
        browser.execute(enabled, json!([])).await,
        json!([true, false, true])
    );

    // The history, with who did what.
    let history = h.get(&format!("/api/v1/rollouts/{id}/history")).await.body;
    let shown = browser.text("#rollout-history").await;
    let items = history["items"].as_array().unwrap();
    assert!(items.len() >= 4, "{history:#}");
    for e in items {
        for field in ["kind", "actor", "detail"] {
            let text = e[field].as_str().unwrap();
            assert!(shown.contains(text), "{field} {text:?} not in {shown}");
        }
    }
    assert!(
        shown.contains("initial-admin") && shown.contains("controller"),
        "{shown}"
    );

    // The diff link: revision 1 against 2, though 3 is the latest.
    browser.click("#rollout-diff").await;
    let diff = browser
        .wait_text("#diff", "the rollout's change", |t| t.contains("27016"))
        .await;
    assert!(diff.contains("-      \"dport\": 27015"), "{diff}");
    let picked = browser
        .execute(
            "return [document.getElementById('diff-from').value, document.getElementById('diff-to').value];",
            json!([]),
        )
        .await;
    assert_eq!(picked, json!(["1", "2"]));

    // The held-back router comes back and rolls back too: 2 of 16 failed,
    // over the 10% allowed. The rollout pauses itself; the page says why.
    browser
        .goto(&format!("{}/ui/#/rollouts/{id}", h.controller.api_url))
        .await;
    browser.find("#wave-1").await;
    routers[mid.held_back].report(&h, "rolled_back").await;
    let reason = browser
        .wait_text("#pause-reason", "the breach", |t| !t.is_empty())
        .await;
    assert!(
        reason.contains("Paused: wave 1: 2 of 16 routers failed")
            && reason.contains("> 10% allowed"),
        "{reason}"
    );
    browser
        .wait_text("#rollout-state-badge", "paused", |t| t == "paused")
        .await;
    assert_eq!(
        browser.execute(enabled, json!([])).await,
        json!([false, true, true])
    );
    browser
        .wait_text("#rollout-history", "the breach", |t| {
            t.contains("breach") && t.contains("2 of 16 routers failed")
        })
        .await;
    browser.quit().await;
}

/// Every router reports that it applied what it is given.
pub(crate) async fn apply_all(h: &Harness, routers: &[(String, DeviceHandle)], sequence: &mut u64) {
    for (id, device) in routers {
        let version = h.config_version(id).await as u64;
        report_status(device, *sequence, "applied", Some(version), "0.3.0").await;
    }
    *sequence += 1;
}
