//! The dashboard's charts over time in a real headless Chromium: the fleet
//! by state and by agent version from the leader's minute samples (a range
//! picked, a gap where no leader sampled), and a router's outcomes,
//! blocked packets and busiest rules from its reports. The history seeded
//! here serves the screenshots too (`dashboard_screenshots.rs`).

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::dashboard::{fleet, login, LAPTOP, PHONE};
use crate::support::Harness;
use crate::webdriver::Browser;

/// Minutes of fleet history seeded, ending now.
pub(crate) const SEEDED_MINUTES: i64 = 6 * 60;
/// Minutes with no sample (no leader), counted back from now.
pub(crate) const GAP: std::ops::Range<i64> = 100..120;

/// Six hours of minute samples of a 40-router fleet as the leader would
/// have taken them: an upgrade from 0.2.9 to 0.3.0 going out, a stale dip
/// (a regional outage) and recovery, a few failing, and 20 minutes without
/// a leader. Returns how many samples were written.
pub(crate) async fn seed_fleet_history(h: &Harness) -> usize {
    let now = Utc::now();
    let mut written = 0;
    for ago in (0..SEEDED_MINUTES).rev() {
        if GAP.contains(&ago) {
            continue;
        }
        let at = now - Duration::minutes(ago);
        let progress = (SEEDED_MINUTES - ago) as f64 / SEEDED_MINUTES as f64;
        let upgraded = (30.0 * progress).round() as i64;
        let outage = (230..260).contains(&ago);
        let stale = if outage { 12 } else { 1 + ago % 3 };
        let never_reported = 5;
        let online = 40 - never_reported - stale;
        let failing = if (150..170).contains(&ago) { 6 } else { 2 };
        let versions = json!([
            {"value": "0.3.0", "count": upgraded},
            {"value": "0.2.9", "count": 35 - upgraded - 1},
            {"value": "0.2.8", "count": 1},
        ]);
        let stored = sqlx::query(
            "INSERT INTO fleet_samples
                 (sampled_at, devices, online, stale, failing, never_reported, by_agent_version)
             VALUES (date_trunc('minute', $1::timestamptz), 40, $2, $3, $4, $5, $6)
             ON CONFLICT (sampled_at) DO UPDATE SET devices = 40, online = $2, stale = $3,
                 failing = $4, never_reported = $5, by_agent_version = $6",
        )
        .bind(at)
        .bind(online as i32)
        .bind(stale as i32)
        .bind(failing)
        .bind(never_reported as i32)
        .bind(&versions)
        .execute(&h.controller.state.pool)
        .await
        .unwrap();
        written += stored.rows_affected() as usize;
    }
    written
}

/// Replaces `device`'s report history with 24 reports, one every 15
/// minutes over six hours: a rollback in the middle, the agent restarting
/// once, blocked packets and two rules counting at changing rates.
pub(crate) async fn seed_router_history(h: &Harness, device: &str) -> usize {
    let pool = &h.controller.state.pool;
    sqlx::query("DELETE FROM device_status_history WHERE device_id = $1::uuid")
        .bind(device)
        .execute(pool)
        .await
        .unwrap();
    let now = Utc::now();
    let (mut blocked, mut web, mut games) = (0i64, 0i64, 0i64);
    let reports = 24;
    for n in 0..reports {
        let at: DateTime<Utc> = now - Duration::minutes(15 * (reports - 1 - n));
        let restarted = n == 14;
        if restarted {
            (blocked, web, games) = (0, 0, 0);
        }
        blocked += 900 + 600 * (n % 5);
        web += 40_000 + 9_000 * (n % 3);
        games += 900 + 600 * (n % 5);
        let outcome = if n == 9 { "rolled_back" } else { "applied" };
        let report = json!({
            "sequence": n + 1, "enforced_version": 3, "enforced_digest": null,
            "outcome": outcome, "attempted_version": if n == 9 { 4 } else { 3 },
            "errors": if n == 9 { json!(["apply_failed: nft: No such file or directory"]) } else { json!([]) },
            "counters": [
                {"rule_id": "allow-web", "packets": web, "bytes": web * 900},
                {"rule_id": "flow-block/games/0", "packets": games, "bytes": games * 80},
            ],
            "backend": "nftables", "agent_version": "0.3.0",
            "agent_counters": {"started_at": if n >= 14 { 2 } else { 1 },
                               "blocked_packets": blocked, "blocked_bytes": blocked * 80},
        });
        sqlx::query(
            "INSERT INTO device_status_history (device_id, sequence, report, received_at)
             VALUES ($1::uuid, $2, $3, $4)",
        )
        .bind(device)
        .bind(n + 1)
        .bind(&report)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
    }
    reports as usize
}

async fn count(browser: &Browser, css: &str) -> usize {
    let n: Value = browser
        .execute(
            "return document.querySelectorAll(arguments[0]).length;",
            json!([css]),
        )
        .await;
    n.as_u64().unwrap() as usize
}

#[tokio::test]
async fn dashboard_charts_the_fleet_and_a_router_over_time() {
    let h = Harness::start().await;
    let routers = fleet(&h, 6).await;
    let seeded = seed_fleet_history(&h).await;
    assert_eq!(seeded as i64, SEEDED_MINUTES - (GAP.end - GAP.start));
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    login(&browser, &h, &h.controller.operator_token).await;

    // 24 h (the default): one sample per 4 minutes, each drawn.
    browser.find("#fleet-states-chart svg").await;
    assert_eq!(browser.text(".ranges a.active").await, "24h");
    let day = h.get("/api/v1/fleet/history?points=360").await.body;
    let samples = day["samples"].as_array().unwrap().len();
    assert!(samples >= 80, "six hours at 4 minutes a step: {samples}");
    assert_eq!(
        count(&browser, "#fleet-states-chart rect[data-part=online]").await,
        samples
    );
    assert_eq!(
        count(&browser, "#fleet-states-chart path[data-line=failing]").await,
        1
    );
    let legend = browser.text("#fleet-versions-chart .legend").await;
    assert!(
        legend.contains("0.3.0") && legend.contains("0.2.9") && legend.contains("0.2.8"),
        "{legend}"
    );

    // 6 h: one sample a minute; the 20 minutes without a leader stay empty
    // (no band is stretched over them).
    browser.click("a[data-range='6h']").await;
    browser
        .wait_text(".ranges a.active", "6h picked", |t| t == "6h")
        .await;
    let six = h
        .get(&format!(
            "/api/v1/fleet/history?since={}&points=360",
            (Utc::now() - Duration::hours(6)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .await
        .body;
    let expected = six["samples"].as_array().unwrap().len();
    let drawn = browser
        .execute(
            "const rects = [...document.querySelectorAll('#fleet-states-chart rect[data-part=online]')];
             return {n: rects.length, covered: rects.reduce((a, r) => a + Number(r.getAttribute('width')), 0)};",
            json!([]),
        )
        .await;
    assert_eq!(drawn["n"].as_u64().unwrap() as usize, expected, "{drawn}");
    let covered = drawn["covered"].as_f64().unwrap();
    // The chart is 600 wide over about 360 minutes; 20 of them are empty.
    assert!(
        covered < 600.0 * (1.0 - 15.0 / 360.0),
        "a gap is left: {covered}"
    );
    assert!(covered > 600.0 * 0.85, "the rest is drawn: {covered}");

    // A router's page: its outcomes (one is a rollback), blocked packets
    // per second, and its rules.
    let device = &routers[0].id;
    let reports = seed_router_history(&h, device).await;
    browser
        .goto(&format!("{}/ui/#/devices/{device}", h.controller.api_url))
        .await;
    browser.find("#router-outcomes-chart svg").await;
    assert_eq!(
        count(&browser, "#router-outcomes-chart rect").await,
        reports
    );
    assert_eq!(
        count(
            &browser,
            "#router-outcomes-chart rect[data-part=rolled_back]"
        )
        .await,
        1
    );
    assert_eq!(
        count(&browser, "#router-blocked-chart rect").await,
        reports - 1
    );
    let rules = browser.text("#router-rules-chart .legend").await;
    assert!(
        rules.contains("allow-web") && rules.contains("flow-block/games/0"),
        "{rules}"
    );
    let axis = browser.text("#router-blocked-chart .axis").await;
    assert!(axis.contains("packets/s"), "{axis}");

    // On a phone the charts fit the width.
    browser.viewport(PHONE.0, PHONE.1).await;
    let width: Value = browser
        .execute(
            "return document.querySelector('#router-blocked-chart svg').getBoundingClientRect().width;",
            json!([]),
        )
        .await;
    assert!(width.as_f64().unwrap() <= f64::from(PHONE.0), "{width}");
    let errors = browser.script_errors().await;
    assert!(errors.is_empty(), "script errors {errors:?}");
    browser.quit().await;
}
