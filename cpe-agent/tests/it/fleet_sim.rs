//! The fleet simulator (`isdf-fleet-sim`, the binary itself) against a real
//! controller on loopback: 20 routers enroll with a batch token, hold
//! mutual-TLS long polls and verify every envelope; in one run, a change on
//! one router at a time, changes for the whole fleet, a rollout in waves
//! (and one paused and aborted) must reach every router they are for, and
//! the operator's pages answer. Counts only: the figures are a benchmark's
//! (`scripts/fleet-bench`, `scripts/fleet-bench-replicas`), and this
//! machine may be busy.

use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::Value;

const ROUTERS: u64 = 20;

/// Runs the simulator with `extra` arguments; its JSON summary.
async fn simulate(controller: &TestController, ca_file: &str, extra: &[&str]) -> Value {
    let mut args: Vec<String> = vec![
        "--json".into(),
        "--routers".into(),
        ROUTERS.to_string(),
        "--api-url".into(),
        controller.api_url.clone(),
        "--device-url".into(),
        controller.device_url.clone(),
        "--enrollment-url".into(),
        controller.enrollment_url.clone(),
        "--ca-file".into(),
        ca_file.into(),
        "--token".into(),
        controller.operator_token.clone(),
        "--duration".into(),
        "300".into(),
        "--change-timeout".into(),
        "60".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_isdf-fleet-sim"))
            .args(&args)
            .output()
            .expect("the simulator runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulator exited {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What every run must show: all enrolled and connected, nothing refused,
/// one enrollment sample per router, one status round trip per config.
fn assert_fleet_healthy(summary: &Value) {
    let counts = &summary["counts"];
    assert_eq!(summary["passed"], true, "{summary}");
    assert_eq!(summary["fleet"]["enrolled"], ROUTERS, "{summary}");
    assert_eq!(summary["fleet"]["connected"], ROUTERS, "{summary}");
    assert_eq!(counts["verification_failures"], 0, "{summary}");
    assert_eq!(counts["enrollment"]["count"], ROUTERS, "{summary}");
    assert_eq!(
        counts["status_round_trip"]["count"], counts["configs_received"],
        "every verified config is reported once: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_simulator_verifies_every_config_and_sees_every_change_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(TestControllerOptions::new(dir.path()))
        .await
        .expect("controller starts");
    let ca_file = dir.path().join("fleet-sim-ca.pem");
    std::fs::write(&ca_file, &controller.ca_pem).unwrap();
    let ca_file = ca_file.to_str().unwrap();

    // One enrollment, the scenarios one after another on the same routers.
    let run = simulate(
        &controller,
        ca_file,
        &[
            "--scenario",
            "one-change,fleet-change,rollout,pages",
            "--changes",
            "5",
            "--change-interval-ms",
            "20",
            "--rounds",
            "2",
            // Long enough to pause the aborted rollout at its 50% wave.
            "--abort-soak-secs",
            "5",
            "--page-requests",
            "3",
            "--page-limit",
            "5",
        ],
    )
    .await;
    assert_fleet_healthy(&run);
    let scenarios = &run["scenarios"];

    let one = &scenarios["one-change"];
    assert_eq!(one["made"], 5, "{run}");
    assert_eq!(one["fetched"], 5, "{run}");
    assert_eq!(one["missed"], 0, "{run}");
    assert_eq!(one["change_to_fetch"]["count"], 5, "{run}");
    assert_eq!(one["change_call"]["count"], 5, "{run}");
    assert_eq!(
        one["counts"]["configs_received"], 5,
        "one config per change: {run}"
    );

    // The assignment is to the run's label: it changes exactly its routers.
    let fleet = &scenarios["fleet-change"];
    assert_eq!(fleet["made"], 2 * ROUTERS, "{run}");
    assert_eq!(fleet["fetched"], 2 * ROUTERS, "{run}");
    assert_eq!(fleet["missed"], 0, "{run}");
    for round in fleet["rounds"].as_array().unwrap() {
        assert_eq!(round["fetched"], ROUTERS, "{run}");
    }
    assert_eq!(fleet["change_to_fetch"]["count"], 2 * ROUTERS, "{run}");
    assert_eq!(fleet["counts"]["configs_received"], 2 * ROUTERS, "{run}");

    // A rollout in four waves reaches every router once; the second one
    // answered its pause and abort (the scenario checks the states), and
    // every router it reached holds its previous firewall again.
    let rollout = &scenarios["rollout"];
    assert!(rollout.get("error").is_none(), "{run}");
    assert_eq!(rollout["missed"], 0, "{run}");
    let completed = &rollout["completed"];
    assert_eq!(completed["state"], "completed", "{run}");
    assert_eq!(completed["fetched"], ROUTERS, "{run}");
    let waves = completed["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 4, "canary, 10, 50, 100%: {run}");
    let in_waves: u64 = waves.iter().map(|w| w["routers"].as_u64().unwrap()).sum();
    assert_eq!(in_waves, ROUTERS, "{run}");
    assert!(waves.iter().all(|w| !w["passed_seen_s"].is_null()), "{run}");
    let aborted = &rollout["aborted"];
    assert_eq!(aborted["missed"], 0, "{run}");
    assert!(
        aborted["released_routers"].as_u64().unwrap() >= ROUTERS / 2,
        "the 50% wave was out: {run}"
    );

    let pages = &scenarios["pages"];
    assert_eq!(pages["missed"], 0, "{run}");
    assert_eq!(pages["next_page"], "read", "{run}");
    for page in [
        "fleet_overview",
        "devices_first_page",
        "devices_next_page",
        "devices_of_this_run",
    ] {
        assert_eq!(pages[page]["count"], 3, "{page}: {run}");
    }
    assert_eq!(pages["devices_of_this_run"]["items"], 5, "{run}");
    assert!(
        pages["fleet_overview"]["devices"].as_u64().unwrap() >= ROUTERS,
        "{run}"
    );

    controller.stop().await.unwrap();
}
