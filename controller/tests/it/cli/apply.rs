//! `isdfctl apply`: applying twice is a no-op, a changed spec makes a
//! revision, and a file may stage its change as a rollout.

use super::*;

const OBJECTS: [&str; 7] = [
    "device/home-hq",
    "device/home-shop",
    "customer/Smith household",
    "site/main/Stream+",
    "service/block-telnet",
    "assignment/block-telnet:plan=family",
    "vpn/offices",
];

#[tokio::test]
async fn cli_apply_twice_is_a_no_op_and_a_changed_spec_makes_a_revision() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    let fleet = ctl.file("fleet.yaml", FLEET);

    let first = ctl.ok(&["apply", "-f", &fleet]).await;
    assert_eq!(lines(&first).len(), OBJECTS.len(), "{}", first.stdout);
    for (line, object) in lines(&first).iter().zip(OBJECTS) {
        assert!(line.starts_with(&format!("{object} created")), "{line}");
    }
    let vpns = h.get("/api/v1/vpns").await;
    assert_eq!(vpns.body["items"][0]["member_count"], 2, "{}", vpns.body);

    // Again, from a file and from stdin: all unchanged, no mutating call.
    let audited = audit_entries(&h).await;
    let unchanged: Vec<String> = OBJECTS.iter().map(|o| format!("{o} unchanged")).collect();
    let again = ctl.ok(&["apply", "-f", &fleet]).await;
    assert_eq!(lines(&again), unchanged);
    let piped = ctl.run_with(&["apply", "-f", "-"], Some(FLEET), &[]).await;
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert_eq!(lines(&piped), unchanged);
    let as_json = ctl.json(&["apply", "-f", &fleet]).await;
    assert!(
        as_json
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["action"] == "unchanged"),
        "{as_json}"
    );
    assert_eq!(
        audit_entries(&h).await,
        audited,
        "a second apply made no mutating call"
    );

    // A new spec: a new revision, and the assignment moves to it.
    let changed = ctl.file("changed.yaml", &FLEET.replace("dport: 23}", "dport: 2323}"));
    let third = ctl.ok(&["apply", "-f", &changed]).await;
    assert!(
        lines(&third).contains(&"service/block-telnet configured (revision 2)"),
        "{}",
        third.stdout
    );
    assert!(
        lines(&third).contains(&"assignment/block-telnet:plan=family configured (revision 2)"),
        "{}",
        third.stdout
    );
    assert_eq!(
        lines(&third)
            .iter()
            .filter(|l| l.ends_with(" unchanged"))
            .count(),
        5
    );
    let assignments = h.get("/api/v1/assignments").await;
    assert_eq!(
        assignments.body["items"][0]["revision"], 2,
        "{}",
        assignments.body
    );

    // A dry run says what would change and changes nothing.
    let audited = audit_entries(&h).await;
    let other = ctl.file("other.yaml", &FLEET.replace("dport: 23}", "dport: 2424}"));
    let dry = ctl.ok(&["apply", "--dry-run", "-f", &other]).await;
    assert!(
        lines(&dry).contains(&"service/block-telnet configured (revision 3) (dry run)"),
        "{}",
        dry.stdout
    );
    assert!(lines(&dry)
        .contains(&"assignment/block-telnet:plan=family configured (revision 3) (dry run)"));
    assert_eq!(audit_entries(&h).await, audited);
    let settled = ctl.ok(&["apply", "-f", &changed]).await;
    assert!(
        lines(&settled).iter().all(|l| l.ends_with(" unchanged")),
        "{}",
        settled.stdout
    );
    assert_eq!(audit_entries(&h).await, audited);
}

/// `apply` stages a new revision as a rollout (and applying it again
/// changes nothing); the rollout commands answer JSON that parses; `rollout
/// status --watch` exits 4 on a pause (with `--exit-on-pause`) and 3 on an
/// aborted rollout; `rollouts create` starts one for a new assignment.
#[tokio::test]
async fn cli_apply_stages_a_rollout_and_the_rollout_commands_follow_it() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["apply", "-f", &ctl.file("fleet.yaml", FLEET)])
        .await;
    // A revision staged as a rollout by apply.
    let staged = FLEET.replace("dport: 23}", "dport: 2323}").replace(
        "# rollout: {canary_percent: 10, waves: [50, 100], soak_secs: 60}",
        "rollout: {canary_percent: 50, waves: [100], soak_secs: 0}",
    );
    let applied = ctl
        .ok(&["apply", "-f", &ctl.file("staged.yaml", &staged)])
        .await;
    assert!(applied
        .stdout
        .contains("assignment/block-telnet:plan=family configured (revision 2, rollout"));
    let again = ctl
        .ok(&["apply", "-f", &ctl.file("staged.yaml", &staged)])
        .await;
    assert!(
        again.stdout.lines().all(|l| l.contains(" unchanged")),
        "{}",
        again.stdout
    );
    let rollouts = ctl.json(&["rollouts", "list"]).await;
    let id = rollouts[0]["id"].as_str().unwrap().to_owned();
    ctl.json(&["get", "rollouts"]).await;
    ctl.json(&["rollouts", "get", &id]).await;
    ctl.json(&["rollouts", "history", &id]).await;
    ctl.json(&["rollouts", "samples", &id]).await;
    ctl.json(&["rollout", "status", &id]).await;
    let paused = ctl.json(&["rollouts", "pause", &id]).await;
    assert_eq!(paused["state"], "paused");
    let watch = ctl
        .run(&[
            "rollout",
            "status",
            &id,
            "--watch",
            "--exit-on-pause",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(watch.code, 4, "{}", watch.stderr);
    for line in watch.stdout.lines() {
        serde_json::from_str::<Value>(line).expect("one JSON object per line");
    }
    ctl.json(&["rollouts", "resume", &id]).await;
    ctl.json(&["rollouts", "abort", &id]).await;
    let watch = ctl
        .run(&["rollout", "status", &id, "--watch", "--timeout", "5"])
        .await;
    assert_eq!(watch.code, 3, "aborted: {}", watch.stderr);
    // A new assignment staged as a rollout.
    let created = ctl
        .json(&[
            "rollouts",
            "create",
            "--service",
            "block-telnet",
            "--selector",
            "region=eu",
            "--canary-percent",
            "10",
            "--waves",
            "50,100",
            "--min-applied",
            "0.9",
            "--max-failed",
            "0",
            "--soak",
            "1",
            "--offline-timeout",
            "60",
        ])
        .await;
    assert_eq!(created["state"], "running");
}
