//! A real Prometheus (Debian's) scraping a running controller with the
//! shipped rules (deploy/prometheus/): the series move as the test acts,
//! read back through Prometheus's own query API, and every query of the
//! shipped Grafana dashboard (deploy/grafana/) runs; and `promtool` checks
//! the rules and runs their unit tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{find_program, report_status, Harness};

/// Every wait below is bounded by this.
const PATIENCE: Duration = Duration::from_secs(90);

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// `program` from the PATH; fails (never skips) naming the package.
fn require(program: &str) -> PathBuf {
    find_program(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed: these tests run the real Prometheus \
             (Debian package `prometheus`; scripts/test installs it)"
        )
    })
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = require("promtool");
    for args in [
        vec!["check", "rules", "isdf-rules.yml"],
        vec!["test", "rules", "isdf-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(rules_dir())
            .output()
            .expect("running promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// Prometheus in the foreground; killed by PID when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `api_url`'s `/metrics` every second with
    /// `token`, and evaluating the shipped rules every second.
    async fn start(work: &Path, api_url: &str, token: &str) -> Self {
        let binary = require("prometheus");
        std::fs::write(work.join("token"), token).unwrap();
        std::fs::copy(
            rules_dir().join("isdf-rules.yml"),
            work.join("isdf-rules.yml"),
        )
        .unwrap();
        let target = api_url.trim_start_matches("http://");
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["isdf-rules.yml"],
            "scrape_configs": [{
                "job_name": "isdf",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": work.join("token")},
                "static_configs": [{"targets": [target]}],
            }],
        });
        // JSON is YAML.
        std::fs::write(work.join("prometheus.yml"), config.to_string()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = work.join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                work.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::new(),
        };
        prometheus
            .until("ready", || async {
                let r = prometheus
                    .http
                    .get(format!("{}/-/ready", prometheus.base))
                    .send()
                    .await
                    .ok()?;
                (r.status() == StatusCode::OK).then_some(())
            })
            .await;
        prometheus
    }

    /// The instant vector `query` evaluates to: (labels, value) pairs.
    async fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let r: Value = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", query)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{query}: {r}");
        r["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits until `query` has a sample equal to `expected`.
    async fn until_value(&self, query: &str, expected: f64) {
        self.until(&format!("{query} == {expected}"), || async {
            let samples = self.query(query).await;
            samples
                .iter()
                .any(|(_, v)| (*v - expected).abs() < 1e-9)
                .then_some(())
        })
        .await
    }

    /// Retries `attempt` until it gives a value, at most [`PATIENCE`].
    async fn until<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(found) = attempt().await {
                return found;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "Prometheus never showed {what} within {PATIENCE:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn a_real_prometheus_sees_the_series_move_as_routers_report_rollouts_pause_and_refusals_come()
{
    let h = Harness::start().await;
    let work = tempfile::tempdir().unwrap();
    let viewer = h.token("prometheus", "viewer").await;
    let prometheus = Prometheus::start(work.path(), &h.controller.api_url, &viewer).await;
    prometheus.until_value("up{job=\"isdf\"}", 1.0).await;
    prometheus
        .until_value("isdf_rollouts{state=\"paused\"}", 0.0)
        .await;

    // A router reports.
    let (id, router) = h.device("prom-1", json!({"canary": "true"})).await;
    let version = h.config_version(&id).await as u64;
    assert_eq!(
        report_status(&router, 1, "applied", Some(version), "1.4.2").await,
        StatusCode::NO_CONTENT
    );
    prometheus
        .until_value("isdf_status_reports_total{outcome=\"applied\"}", 1.0)
        .await;
    prometheus
        .until_value("isdf_routers{state=\"online\"}", 1.0)
        .await;
    prometheus
        .until_value("isdf_routers_by_agent_version{version=\"1.4.2\"}", 1.0)
        .await;
    // Its own counters, carried by its next report, reach the fleet's sums.
    let counted = router
        .http
        .post(router.url(isdf_api::paths::DEVICE_STATUS))
        .json(&json!({
            "sequence": 2, "enforced_version": version, "enforced_digest": null,
            "outcome": "applied", "attempted_version": version, "errors": [], "counters": [],
            "backend": "nftables", "agent_version": "1.4.2",
            "agent_counters": {"started_at": 1, "blocked_packets": 40, "blocked_bytes": 2400}}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), StatusCode::NO_CONTENT);
    prometheus
        .until_value("isdf_router_blocked_packets_total", 40.0)
        .await;

    // A rollout pauses: the gauge moves and the shipped alert goes off.
    let (_, assignment) = h.assigned_blocklist().await;
    let r = h
        .post(
            "/api/v1/rollouts",
            json!({"assignment_id": assignment, "canary": {"selector": "canary=true"}, "soak_secs": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let rollout = r.body["id"].as_str().unwrap().to_owned();
    let r = h
        .post(&format!("/api/v1/rollouts/{rollout}/pause"), json!({}))
        .await;
    assert_eq!(r.body["state"], "paused", "{}", r.body);
    prometheus
        .until_value("isdf_rollouts{state=\"paused\"}", 1.0)
        .await;
    // Pending for its first minute, then firing: either will do on a
    // machine slow enough to take a minute here.
    prometheus
        .until_value("ALERTS{alertname=\"IsdfRolloutPaused\"}", 1.0)
        .await;

    // Refusals: a forged billing signature, and a deleted router's
    // certificate at the device API.
    let r = h
        .http
        .post(format!("{}/webhooks/v1/billing", h.controller.api_url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = h
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
    let (status, _, _) = h.poll(&router, None, 0).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    prometheus
        .until_value(
            "sum(isdf_http_errors_total{route=\"/webhooks/v1/billing\",error=\"bad_signature\"})",
            1.0,
        )
        .await;
    prometheus
        .until_value(
            "sum(isdf_http_errors_total{listener=\"device\",error=\"device_unknown\"})",
            1.0,
        )
        .await;
    // The deleted router leaves the fleet's gauges too.
    prometheus
        .until_value("isdf_routers{state=\"online\"}", 0.0)
        .await;

    // Every query of the shipped Grafana dashboard runs on these series.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(rules_dir().join("../grafana/isdf-controller.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| {
            let expr = target["expr"].as_str().unwrap();
            expr.replace("$__rate_interval", "1m")
        })
        .collect();
    assert!(queries.len() >= 13, "{queries:?}");
    for query in &queries {
        prometheus.query(query).await;
    }
    let answered = prometheus
        .query("sum(rate(isdf_http_requests_total[1m]))")
        .await;
    assert!(answered.iter().any(|(_, v)| *v > 0.0), "{answered:?}");
}
