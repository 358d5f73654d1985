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

    // `services create --kind` (the old flag) still works, as `--type`.
    let spec = ctl.file(
        "block.json",
        r#"{"flows": [{"protocol": "tcp", "dport": 23}]}"#,
    );
    let created = ctl
        .json(&[
            "services",
            "create",
            "old",
            "--kind",
            "flow-block",
            "--spec",
            &spec,
        ])
        .await;
    assert_eq!(created["type"], "flow-block", "{created}");
}

/// A missing token says how to give one; a refused one says why it may be
/// refused and where a new one comes from.
#[tokio::test]
async fn cli_token_hints_say_how_to_give_or_renew_a_token() {
    let h = Harness::start().await;
    let none = Ctl::at(&h.controller.api_url, "");
    let missing = none.run(&["get", "devices"]).await;
    assert_eq!(missing.code, 1);
    let lines: Vec<&str> = missing.stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: unauthorized: "),
        "{}",
        missing.stderr
    );
    assert!(
        lines[1].starts_with("hint: no operator token was given")
            && lines[1].contains("--token TOKEN")
            && lines[1].contains("ISDF_TOKEN")
            && lines[1].contains("--token-file FILE"),
        "{}",
        missing.stderr
    );
    assert!(
        lines[2].contains("isdfctl operator-tokens create"),
        "{}",
        missing.stderr
    );

    let wrong = Ctl::at(&h.controller.api_url, "isdf_op_wrong");
    let refused = wrong.run(&["get", "devices"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains(&format!(
            "hint: the token from ISDF_TOKEN was refused by {}: it is revoked, expired",
            h.controller.api_url
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("Get a new one"),
        "{}",
        refused.stderr
    );
    let from_flag = none
        .run(&["get", "devices", "--token", "isdf_op_wrong"])
        .await;
    assert!(
        from_flag
            .stderr
            .contains("the token from --token was refused"),
        "{}",
        from_flag.stderr
    );
    let file = none.file("token", "isdf_op_wrong\n");
    let from_file = none.run(&["get", "devices", "--token-file", &file]).await;
    assert!(
        from_file
            .stderr
            .contains(&format!("the token from --token-file {file} was refused")),
        "{}",
        from_file.stderr
    );
    let empty = none.file("empty", "\n");
    let empty = none.run(&["get", "devices", "--token-file", &empty]).await;
    assert_eq!(empty.code, 2);
    assert!(empty.stderr.contains("is empty"), "{}", empty.stderr);
    // A revoked token: refused, with the same hint.
    let created = Ctl::new(&h)
        .json(&["operator-tokens", "create", "temp", "--role", "viewer"])
        .await;
    let secret = created["token"].as_str().expect("the secret").to_owned();
    let temp = Ctl::at(&h.controller.api_url, &secret);
    temp.ok(&["get", "devices"]).await;
    Ctl::new(&h)
        .ok(&["operator-tokens", "revoke", created["id"].as_str().unwrap()])
        .await;
    let revoked = temp.run(&["get", "devices"]).await;
    assert_eq!(revoked.code, 1);
    assert!(
        revoked.stderr.contains("revoked, expired"),
        "{}",
        revoked.stderr
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
