//! Liveness and readiness as load balancers read them, and the embedded
//! default's own PostgreSQL coming back after it died.
//!
//! Both tests run a PostgreSQL cluster of their own (the shared test cluster
//! cannot be stopped): the controller's embedded one, started from the
//! machine's server binaries like the real default does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isdf_controller::db::embedded_pg::EmbeddedPostgres;
use isdf_controller::test_support::{TestController, TestControllerOptions};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::trusting_the_ca;

/// Every wait for a condition below is bounded by this, and by a count.
const WAIT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_millis(100);

/// A directory the `postgres` user can reach (the cluster runs as it when
/// the tests run as root).
fn reachable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// GET `url`: the status and the JSON body (Null when there is none), or
/// None when the request failed.
async fn probe(client: &reqwest::Client, url: &str) -> Option<(StatusCode, Value)> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = response.status();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Waits until `url` answers `status`; returns its body.
async fn wait_for(client: &reqwest::Client, url: &str, status: StatusCode) -> Value {
    let started = Instant::now();
    let mut last = None;
    for _ in 0..(WAIT.as_millis() / STEP.as_millis()) {
        last = probe(client, url).await;
        if let Some((got, body)) = &last {
            if *got == status {
                return body.clone();
            }
            // A missing route never appears by waiting.
            assert_ne!(*got, StatusCode::NOT_FOUND, "{url}: {body}");
        }
        if started.elapsed() > WAIT {
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    panic!("{url} did not answer {status} within {WAIT:?}; last: {last:?}");
}

fn assert_not_ready(body: &Value) {
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("database")),
        "the reason: {body}"
    );
}

#[tokio::test]
async fn readiness_follows_an_external_database_and_liveness_does_not() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg_dir = reachable_dir();
    let dir = pg_dir.path().to_owned();
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
        .await
        .unwrap()
        .expect("a private cluster starts");
    pg.create_database_if_missing().await.unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let mut options = TestControllerOptions::new(data_dir.path());
    options.database_url = Some(pg.database_url());
    let controller = TestController::start(options).await.unwrap();
    let http = reqwest::Client::new();
    // A load balancer in front of the device listener has no client
    // certificate: health answers without one, over the same TLS.
    let lb = reqwest::Client::builder()
        .use_preconfigured_tls(trusting_the_ca(&controller.ca_pem).with_no_client_auth())
        .build()
        .unwrap();
    let endpoints = [
        (&http, controller.api_url.clone()),
        (&lb, controller.device_url.clone()),
        (&lb, controller.enrollment_url.clone()),
    ];
    for (client, base) in &endpoints {
        let ready = wait_for(client, &format!("{base}/readyz"), StatusCode::OK).await;
        assert_eq!(ready["status"], "ready", "{base}: {ready}");
        wait_for(client, &format!("{base}/healthz"), StatusCode::OK).await;
    }
    // Without a certificate the device API itself stays closed.
    let refused = probe(
        &lb,
        &format!(
            "{}{}",
            controller.device_url,
            isdf_api::paths::DEVICE_CONFIG
        ),
    )
    .await
    .unwrap();
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED, "{refused:?}");

    // The database goes away: not ready, still alive (restarting the
    // process would not bring the database back).
    let mut pg = pg;
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();
    for (client, base) in &endpoints {
        let body = wait_for(
            client,
            &format!("{base}/readyz"),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        assert_not_ready(&body);
        let (status, _) = probe(client, &format!("{base}/healthz")).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{base}: alive while the database is down"
        );
    }

    // It comes back: ready again, without restarting the controller.
    drop(pg);
    let dir = pg_dir.path().to_owned();
    let _pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
        .await
        .unwrap()
        .expect("the cluster starts again");
    for (client, base) in &endpoints {
        wait_for(client, &format!("{base}/readyz"), StatusCode::OK).await;
    }
    controller.stop().await.unwrap();
}

/// The controller binary with the embedded default, stopped (and its
/// cluster with it) when dropped.
struct ControllerProcess {
    child: Child,
    /// What it printed (its log goes to standard output), kept by a thread.
    output: Arc<Mutex<String>>,
    errors: PathBuf,
}

impl ControllerProcess {
    fn log(&self) -> String {
        let errors = std::fs::read_to_string(&self.errors).unwrap_or_default();
        format!("{}{errors}", self.output.lock().unwrap())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // SIGTERM: the controller stops its cluster on the way out.
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(STEP);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The postmaster's pid, from its lock file.
fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postgres/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The processes whose parent is `parent` (the postmaster's backends and
/// helpers).
fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces.
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn signal(pids: &[i32], signal: nix::sys::signal::Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
    }
}

/// Processes this test stopped: killed when it ends, even by a failure,
/// so none is left stopped behind.
struct Stopped(Vec<i32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(&self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

#[tokio::test]
async fn the_embedded_database_comes_back_after_its_postmaster_is_killed() {
    use nix::sys::signal::Signal;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = reachable_dir();
    let data_dir = dir.path().join("data");
    let log = dir.path().join("controller.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_isdf-controller"))
        .args(["serve", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--enrollment-listen",
            "127.0.0.1:0",
            "--portal-listen",
            "127.0.0.1:0",
        ])
        .env_remove("ISDF_DATABASE_URL")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    let controller = ControllerProcess {
        child,
        output: output.clone(),
        errors: log,
    };
    // Everything it prints is kept (read until it exits); what it prints at
    // start, the API's URL and the first operator token, is sent on.
    let (found, printed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let (mut api, mut token, mut found) = (None, None, Some(found));
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            output.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.trim().strip_prefix("Operator API:") {
                api = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches("/api/v1").to_owned());
            }
            if let Some(rest) = line
                .trim()
                .strip_prefix("Operator token (shown once, keep it):")
            {
                token = Some(rest.trim().to_owned());
            }
            if let (Some(api), Some(token)) = (&api, &token) {
                if let Some(found) = found.take() {
                    let _ = found.send((api.clone(), token.clone()));
                }
            }
        }
    });
    let (api, token) = tokio::time::timeout(WAIT, printed)
        .await
        .expect("the controller starts in time")
        .unwrap_or_else(|_| panic!("no URL or token printed; log:\n{}", controller.log()));
    let http = reqwest::Client::new();
    let (ready, alive) = (format!("{api}/readyz"), format!("{api}/healthz"));
    wait_for(&http, &ready, StatusCode::OK).await;

    // Kill the postmaster. Its helpers are held stopped first: while they
    // hold the old shared memory, PostgreSQL refuses to start on the same
    // directory, so the window in which the database is down is ours to
    // end, not a race against the restart.
    let postmaster = postmaster_pid(&data_dir).expect("the cluster's lock file");
    let helpers = children_of(postmaster);
    assert!(!helpers.is_empty(), "the postmaster has helpers");
    signal(&helpers, Signal::SIGSTOP);
    let helpers = Stopped(helpers);
    signal(&[postmaster], Signal::SIGKILL);

    let body = wait_for(&http, &ready, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_not_ready(&body);
    let (status, _) = probe(&http, &alive).await.unwrap();
    assert_eq!(status, StatusCode::OK, "alive while its database is down");

    // The controller tries to restart it, and fails while the old helpers
    // hold on: still not ready, still alive.
    let started = Instant::now();
    for _ in 0..(WAIT.as_millis() / STEP.as_millis()) {
        if controller
            .log()
            .contains("restarting the embedded PostgreSQL failed")
            || started.elapsed() > WAIT
        {
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    assert!(
        controller
            .log()
            .contains("restarting the embedded PostgreSQL failed"),
        "a restart was tried:\n{}",
        controller.log()
    );
    let (status, body) = probe(&http, &ready).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(probe(&http, &alive).await.unwrap().0, StatusCode::OK);

    // The old helpers go (as they do by themselves once they notice); the
    // controller's next attempt (bounded backoff) brings the cluster back.
    drop(helpers);
    wait_for(&http, &ready, StatusCode::OK).await;
    let restarted = postmaster_pid(&data_dir).expect("a new lock file");
    assert_ne!(restarted, postmaster);
    let created = http
        .post(format!("{api}/api/v1/devices"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "after-the-restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    // The supervisor logs the restart once `pg_ctl` returned, which may be
    // after the database already answered: wait for the line.
    let logged = |log: &str| {
        log.contains("embedded PostgreSQL died") && log.contains("embedded PostgreSQL restarted")
    };
    let started = Instant::now();
    while !logged(&controller.log()) && started.elapsed() < WAIT {
        tokio::time::sleep(STEP).await;
    }
    let log = controller.log();
    assert!(logged(&log), "each restart is logged:\n{log}");
}
