//! Errors have their codes and exit codes; `rollout status --watch` exits
//! with the rollout's state; HTTPS trusts only the CA file.

use super::*;

#[tokio::test]
async fn cli_errors_have_codes_and_exit_codes() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);

    // Usage errors: 2.
    assert_eq!(ctl.run(&["get", "bogus"]).await.code, 2);
    assert_eq!(ctl.run(&["apply"]).await.code, 2);
    let bad = ctl
        .run(&[
            "apply",
            "-f",
            &ctl.file("bad.yaml", "kind: Service\nname: x\n"),
        ])
        .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.starts_with("error: "), "{}", bad.stderr);
    assert_eq!(ctl.run(&["rollouts", "get", "not-an-id"]).await.code, 2);

    // API errors: the stable code and message, 1.
    let missing = ctl.run(&["devices", "get", "nosuch"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.starts_with("error: not_found: "),
        "{}",
        missing.stderr
    );
    let spec = ctl.file("spec.json", "{}");
    let unknown = ctl
        .run(&["services", "create", "x", "--kind", "nope", "--spec", &spec])
        .await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.starts_with("error: unknown_kind: "),
        "{}",
        unknown.stderr
    );
    let wrong = ctl
        .run_with(
            &["get", "devices"],
            None,
            &[("ISDF_TOKEN", "isdf_op_wrong")],
        )
        .await;
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.starts_with("error: unauthorized: "),
        "{}",
        wrong.stderr
    );
    // A token file wins over the environment's token.
    let token_file = ctl.file("token", &format!("{}\n", h.controller.operator_token));
    let from_file = ctl
        .run_with(
            &["get", "devices", "--token-file", &token_file],
            None,
            &[("ISDF_TOKEN", "isdf_op_wrong")],
        )
        .await;
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    // Unreachable: the URL is named.
    let gone = ctl
        .run_with(
            &["get", "devices"],
            None,
            &[("ISDF_SERVER", "http://127.0.0.1:9")],
        )
        .await;
    assert_eq!(gone.code, 1);
    assert!(
        gone.stderr.contains("http://127.0.0.1:9/api/v1/devices"),
        "{}",
        gone.stderr
    );

    // Labels the API cannot change: a clear error.
    ctl.ok(&["devices", "create", "r1", "--label", "a=1"]).await;
    let relabel = ctl.file("relabel.yaml", "kind: Device\nname: r1\nlabels: {a: '2'}\n");
    let refused = ctl.run(&["apply", "-f", &relabel]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .starts_with("error: immutable_field: device/r1"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn cli_rollout_status_watch_exits_with_the_rollouts_state() {
    let id = "0b5d84cb-884b-4d5c-a8e2-8fafbfd8c6e6";
    let cases: [(&[&str], &[&str], i32); 4] = [
        (&["running", "running", "completed"], &[], 0),
        (&["running", "aborted"], &[], 3),
        (&["running", "paused"], &["--exit-on-pause"], 4),
        (&["running"], &["--timeout", "1"], 5),
    ];
    for (states, flags, code) in cases {
        let ctl = Ctl::at(&rollout_stub(states).await, "t");
        let args = [
            &[
                "rollout",
                "status",
                id,
                "--watch",
                "--interval",
                "0.1",
                "-o",
                "json",
            ],
            flags,
        ]
        .concat();
        let run = ctl.run(&args).await;
        assert_eq!(run.code, code, "{states:?}: {}", run.stderr);
        // One JSON object per poll and line.
        let polls: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if code == 5 {
            assert!(
                (5..=12).contains(&polls.len()),
                "{} polls in 1 s",
                polls.len()
            );
            assert!(run.stderr.contains("timeout"), "{}", run.stderr);
        } else {
            assert_eq!(polls.len(), states.len());
        }
        assert_eq!(&polls.last().unwrap()["state"], states.last().unwrap());
    }

    // For people: the bars (on a terminal only), then the final waves table.
    let ctl = Ctl::at(&rollout_stub(&["running", "completed"]).await, "t");
    let run = ctl
        .run(&["rollout", "status", id, "--watch", "--interval", "0.1"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("state completed"), "{}", run.stdout);
    assert!(run.stdout.contains("canary 10%"), "{}", run.stdout);
    // Not on a terminal: a progress line whenever the counts change.
    assert!(
        run.stderr.contains("completed: canary 10% 1/1"),
        "{}",
        run.stderr
    );
    // Without --watch: one table, exit 0 whatever the state.
    let ctl = Ctl::at(&rollout_stub(&["aborted"]).await, "t");
    let run = ctl.run(&["rollout", "status", id]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(&format!("rollout {id}")),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn cli_speaks_https_trusting_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = isdf_controller::test_support::TestControllerOptions::new(dir.path());
    options.api_tls = true;
    let controller = isdf_controller::test_support::TestController::start(options)
        .await
        .unwrap();
    assert!(controller.api_url.starts_with("https://"));
    let ctl = Ctl::at(&controller.api_url, &controller.operator_token);
    let ca = ctl.file("ca.pem", &controller.ca_pem);
    let listed = ctl.json(&["get", "devices", "--ca-file", &ca]).await;
    assert_eq!(listed, json!([]));
    // Without the CA the controller's certificate is not trusted.
    let refused = ctl.run(&["get", "devices"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains(&controller.api_url),
        "{}",
        refused.stderr
    );
}
