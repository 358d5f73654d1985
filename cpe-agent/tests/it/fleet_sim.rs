//! The fleet simulator (`isdf-fleet-sim`, the binary itself) against a real
//! controller on loopback: 20 routers enroll with a batch token, hold
//! mutual-TLS long polls and verify every envelope; a change on one router
//! at a time, then changes for the whole fleet, must reach every router
//! they are for. Counts only: the figures are a benchmark's
//! (`scripts/fleet-bench`), and this machine may be busy.

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

    let one = simulate(
        &controller,
        ca_file,
        &[
            "--scenario",
            "one-change",
            "--changes",
            "5",
            "--change-interval-ms",
            "20",
        ],
    )
    .await;
    assert_fleet_healthy(&one);
    let scenario = &one["scenario"];
    assert_eq!(scenario["made"], 5, "{one}");
    assert_eq!(scenario["fetched"], 5, "{one}");
    assert_eq!(scenario["missed"], 0, "{one}");
    let counts = &one["counts"];
    assert_eq!(counts["change_to_fetch"]["count"], 5, "{one}");
    assert_eq!(counts["change_call"]["count"], 5, "{one}");
    // The first config of each router, then one per change.
    assert_eq!(counts["configs_received"], ROUTERS + 5, "{one}");

    // A second fleet on the same controller: its routers are told apart by
    // the run's label, so the assignment changes only them.
    let fleet = simulate(
        &controller,
        ca_file,
        &["--scenario", "fleet-change", "--rounds", "2"],
    )
    .await;
    assert_fleet_healthy(&fleet);
    let scenario = &fleet["scenario"];
    assert_eq!(scenario["made"], 2 * ROUTERS, "{fleet}");
    assert_eq!(scenario["fetched"], 2 * ROUTERS, "{fleet}");
    assert_eq!(scenario["missed"], 0, "{fleet}");
    for round in scenario["rounds"].as_array().unwrap() {
        assert_eq!(round["fetched"], ROUTERS, "{fleet}");
    }
    let counts = &fleet["counts"];
    assert_eq!(counts["change_to_fetch"]["count"], 2 * ROUTERS, "{fleet}");
    assert_eq!(counts["configs_received"], ROUTERS + 2 * ROUTERS, "{fleet}");

    controller.stop().await.unwrap();
}
