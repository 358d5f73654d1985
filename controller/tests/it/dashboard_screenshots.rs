//! Screenshots of the dashboard's pages for docs/screenshots
//! (scripts/dashboard-screenshots), taken in a real headless Chromium from a
//! controller with a fleet, services, a rollout mid-way (see
//! [`crate::dashboard`]'s fleet helpers) and six hours of history (see
//! [`crate::dashboard_history`]).

use serde_json::json;

use crate::dashboard::{fleet_with_a_service, mid_rollout, LAPTOP, PHONE};
use crate::dashboard_history::{seed_fleet_history, seed_router_history};
use crate::support::Harness;
use crate::webdriver::Browser;

/// What is done on a page before its picture: typed, clicked, waited for.
enum Step {
    Type(&'static str, &'static str),
    Click(&'static str),
    /// Waits until the element's text contains this.
    Shows(&'static str, &'static str),
}

/// A picture: its file name (without size and extension), where, the element
/// that says the page is drawn, the steps, and whether it is the whole page
/// (long pages) or the viewport.
struct Shot {
    name: &'static str,
    hash: String,
    ready: &'static str,
    steps: Vec<Step>,
    full_page: bool,
}

fn shot(name: &'static str, hash: String, ready: &'static str) -> Shot {
    Shot {
        name,
        hash,
        ready,
        steps: Vec::new(),
        full_page: false,
    }
}

/// Screenshots of the pages (a rollout mid-way among them, see
/// [`mid_rollout`]) at laptop and phone widths. Written to
/// `ISDF_DASHBOARD_SCREENSHOTS` when set (scripts/dashboard-screenshots sets
/// it to docs/screenshots), else to a temporary directory (the test then
/// only checks every page renders, with no script error).
#[tokio::test]
async fn dashboard_screenshots_of_the_main_pages() {
    let out = std::env::var_os("ISDF_DASHBOARD_SCREENSHOTS").map(std::path::PathBuf::from);
    let scratch = tempfile::tempdir().unwrap();
    let dir = out.clone().unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();

    let h = Harness::start().await;
    let (mut routers, service, assignment) = fleet_with_a_service(&h).await;
    let rollout = mid_rollout(&h, &mut routers, &assignment).await;
    // A timed block on the router whose page is shown.
    let device_id = routers[1].id.clone();
    let r = h
        .post(
            &format!("/api/v1/devices/{device_id}/blocks"),
            json!({"flows": [{"protocol": "tcp", "dst": "198.51.100.7", "dport": 443}],
                   "duration_secs": 7200, "reason": "ticket 4711: abuse from this host"}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.body);
    // Six hours of the fleet and of that router, for the charts over time.
    seed_fleet_history(&h).await;
    seed_router_history(&h, &device_id).await;

    let shots = vec![
        Shot {
            full_page: true,
            ..shot("fleet", "#/fleet".into(), "#fleet-states-chart svg")
        },
        shot("devices", "#/devices".into(), "#device-table"),
        Shot {
            steps: vec![
                Step::Type("#device-selector", "plan=family"),
                Step::Shows("#bulk-open", "Change labels of these"),
                Step::Click("#bulk-open"),
                Step::Type("#bulk-set", "tier=gold"),
                Step::Shows("#bulk-preview", "routers match"),
            ],
            ..shot("devices-bulk-labels", "#/devices".into(), "#device-table")
        },
        Shot {
            full_page: true,
            ..shot(
                "device",
                format!("#/devices/{device_id}"),
                "#router-outcomes-chart svg",
            )
        },
        Shot {
            steps: vec![
                Step::Type("#service-name", "streaming"),
                Step::Type(
                    "#service-spec",
                    r#"{"flows": [{"protocol": "udp", "dport": "2000-1000"}]}"#,
                ),
                Step::Click("#service-check"),
                Step::Shows("#service-spec-error", "invalid"),
            ],
            ..shot("services", "#/services".into(), "#service-table")
        },
        Shot {
            steps: vec![
                Step::Type("#assign-selector", "plan=family,model=rpi4"),
                Step::Shows("#assign-selector-preview", "match"),
            ],
            full_page: true,
            ..shot("service", format!("#/services/{service}"), "#diff")
        },
        shot("rollouts", "#/rollouts".into(), "#rollout-table"),
        Shot {
            steps: vec![
                Step::Type("#rollout-selector", "plan=basic"),
                Step::Type("#rollout-canary", "canary=true"),
                Step::Shows("#rollout-canary-preview", "matches no router"),
                Step::Click("#rollout-start"),
                Step::Shows("#rollout-empty-wave", "Refused"),
            ],
            full_page: true,
            ..shot("rollout-start", "#/rollouts".into(), "#rollout-form")
        },
        shot(
            "rollout",
            format!("#/rollouts/{}", rollout.id),
            "#wave-1 svg",
        ),
        Shot {
            steps: vec![
                Step::Type("#audit-action", "POST /api/v1/services"),
                Step::Shows("#audit-table", "POST /api/v1/services"),
            ],
            ..shot("audit", "#/audit".into(), "#audit-table")
        },
    ];
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
        for shot in &shots {
            browser
                .goto(&format!("{}/ui/{}", h.controller.api_url, shot.hash))
                .await;
            browser.find(shot.ready).await;
            for step in &shot.steps {
                match step {
                    Step::Type(css, text) => browser.type_into(css, text).await,
                    Step::Click(css) => browser.click(css).await,
                    Step::Shows(css, text) => {
                        browser.wait_text(css, text, |t| t.contains(text)).await;
                    }
                }
            }
            // Let the live stream's first refresh settle (fonts, charts).
            browser
                .execute(
                    "return new Promise(r => requestAnimationFrame(() => r(1)));",
                    json!([]),
                )
                .await;
            let png = if shot.full_page {
                browser.screenshot_full_page().await
            } else {
                browser.screenshot().await
            };
            written.push(save(&dir, &format!("{}-{size}.png", shot.name), png));
            let errors = browser.script_errors().await;
            assert!(errors.is_empty(), "{}: script errors {errors:?}", shot.name);
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
