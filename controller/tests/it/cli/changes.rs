//! `apply -f` checks every document with the server before the first
//! change (and `--dry-run` runs the same checks); router labels change, one
//! router at a time or in bulk after a preview; the device list's filters;
//! services deleted and archived; assignment warnings and conflicts.

use super::*;

/// Three documents, the third invalid: nothing changes, and the error names
/// the file, the document, its line, the object and the server's code.
#[tokio::test]
async fn cli_apply_checks_every_document_before_changing_anything() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    let audited = audit_entries(&h).await;
    let file = ctl.file(
        "three.yaml",
        "# routers and services\n\
         kind: Device\nname: r1\nlabels: {plan: family}\n\
         ---\n\
         kind: Service\nname: good\ntype: flow-block\nspec: {flows: [{protocol: tcp, dport: 23}]}\n\
         ---\n\
         kind: Service\nname: typo\ntype: flow-blok\nspec: {flows: [{protocol: tcp, dport: 23}]}\n",
    );
    let run = ctl.run(&["apply", "-f", &file]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let first = run.stderr.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "error: {file}, document 3 (line 11) Service/typo: unknown_kind: "
        )),
        "{}",
        run.stderr
    );
    assert!(first.contains("flow-blok"), "{first}");
    assert!(
        run.stderr.contains("hint: nothing was applied"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "", "no object line: nothing was applied");
    assert_eq!(audit_entries(&h).await, audited, "nothing was written");
    assert_eq!(h.get("/api/v1/devices").await.body["items"], json!([]));
    assert_eq!(h.get("/api/v1/services").await.body["items"], json!([]));

    // Fixed, it applies whole.
    let fixed = ctl.file(
        "fixed.yaml",
        &std::fs::read_to_string(&file)
            .unwrap()
            .replace("flow-blok", "flow-block"),
    );
    let applied = ctl.ok(&["apply", "-f", &fixed]).await;
    assert_eq!(
        lines(&applied),
        [
            "device/r1 created (enroll it with `isdfctl devices enrollment-token r1`)",
            "service/good created",
            "service/typo created",
        ]
    );
}

/// `--dry-run` has the server check each change: an unknown type and a
/// reversed port range fail as the real run would, and change nothing.
#[tokio::test]
async fn cli_apply_dry_run_has_the_server_check_each_change() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    let service = |kind: &str, dport: &str| {
        format!(
            "kind: Service\nname: s\ntype: {kind}\nspec: {{flows: [{{protocol: tcp, dport: '{dport}'}}]}}\n"
        )
    };
    let audited = audit_entries(&h).await;
    let typo = ctl.file("typo.yaml", &service("flow-blok", "23"));
    let run = ctl.run(&["apply", "--dry-run", "-f", &typo]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "error: {typo}, document 1 (line 1) Service/s: unknown_kind: "
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: dry run: nothing was changed"));
    let reversed = ctl.file("reversed.yaml", &service("flow-block", "2000-1000"));
    for args in [
        &["apply", "--dry-run", "-f", &reversed][..],
        &["apply", "-f", &reversed],
    ] {
        let run = ctl.run(args).await;
        assert_eq!(run.code, 1, "{args:?}");
        assert!(
            run.stderr.starts_with(&format!(
                "error: {reversed}, document 1 (line 1) Service/s: invalid_spec: "
            )),
            "{args:?}: {}",
            run.stderr
        );
    }
    // A valid file: planned lines, nothing written.
    let good = ctl.file("good.yaml", &service("flow-block", "1000-2000"));
    let dry = ctl.ok(&["apply", "--dry-run", "-f", &good]).await;
    assert_eq!(lines(&dry), ["service/s created (dry run)"]);
    assert_eq!(audit_entries(&h).await, audited);
    assert_eq!(h.get("/api/v1/services").await.body["items"], json!([]));

    // An assignment of a service the file creates: the selector and the
    // revision are checked on their own, and the note says so.
    let with_assignment = ctl.file(
        "assigned.yaml",
        &format!(
            "{}---\nkind: Assignment\nservice: s\nselector: plan=family\n",
            service("flow-block", "23")
        ),
    );
    let dry = ctl
        .ok(&["apply", "--dry-run", "-f", &with_assignment])
        .await;
    assert_eq!(
        lines(&dry),
        [
            "service/s created (dry run)",
            "assignment/s:plan=family created (revision 1) (dry run)"
        ]
    );
    assert!(
        dry.stderr.contains(
            "note: assignment/s:plan=family: service s is created by this file: checked the \
             selector (it matches 0 routers)"
        ),
        "{}",
        dry.stderr
    );
    for (bad, code) in [
        ("selector: 'plan in (family'", "error: "),
        (
            "selector: plan=family\nrevision: 2",
            "invalid_revision: revision 2",
        ),
    ] {
        let file = ctl.file(
            "bad.yaml",
            &format!(
                "{}---\nkind: Assignment\nservice: s\n{bad}\n",
                service("flow-block", "23")
            ),
        );
        let run = ctl.run(&["apply", "--dry-run", "-f", &file]).await;
        assert_ne!(run.code, 0, "{bad}");
        assert!(
            run.stderr
                .contains(&format!("{file}, document 2 (line 6) Assignment/s:"))
                && run.stderr.contains(code),
            "{bad}: {}",
            run.stderr
        );
    }
    assert_eq!(audit_entries(&h).await, audited);
}

/// A failure only the real call finds (here a rollout policy the server
/// refuses, for a service the file creates, which the check cannot send)
/// names the object and what was applied before it.
#[tokio::test]
async fn cli_apply_failure_lists_what_was_applied_before_it() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    let file = ctl.file(
        "f.yaml",
        "kind: Device\nname: r1\nlabels: {plan: family}\n---\n\
         kind: Service\nname: s\ntype: flow-block\nspec: {flows: [{protocol: tcp, dport: 23}]}\n---\n\
         kind: Assignment\nservice: s\nselector: plan=family\n\
         rollout: {canary_percent: 10, min_applied_share: 5}\n",
    );
    let run = ctl.run(&["apply", "-f", &file]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "error: {file}, document 3 (line 10) Assignment/s:plan=family: "
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: applied before it: device/r1 (created), service/s (created)"),
        "{}",
        run.stderr
    );
    assert_eq!(
        lines(&run),
        [
            "device/r1 created (enroll it with `isdfctl devices enrollment-token r1`)",
            "service/s created"
        ]
    );
    assert!(!run.stderr.contains("partly applied"), "{}", run.stderr);
    // Fixed, the rest applies and what was applied is unchanged.
    let fixed = ctl.file(
        "fixed.yaml",
        &std::fs::read_to_string(&file)
            .unwrap()
            .replace("min_applied_share: 5", "min_applied_share: 0.5"),
    );
    let again = ctl.ok(&["apply", "-f", &fixed]).await;
    assert_eq!(
        lines(&again)[..2],
        ["device/r1 unchanged", "service/s unchanged"]
    );
    assert!(
        lines(&again)[2].starts_with("assignment/s:plan=family created (revision 1, rollout "),
        "{}",
        again.stdout
    );
}

/// A Device document with other labels is relabelled (PATCH); one without
/// labels leaves them alone.
#[tokio::test]
async fn cli_apply_relabels_a_device() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["devices", "create", "r1", "--label", "a=1"]).await;
    let relabel = ctl.file(
        "relabel.yaml",
        "kind: Device\nname: r1\nlabels: {a: '2', b: x}\n",
    );
    let dry = ctl.ok(&["apply", "--dry-run", "-f", &relabel]).await;
    assert_eq!(
        lines(&dry),
        ["device/r1 configured (labels a=1 -> a=2,b=x) (dry run)"]
    );
    assert_eq!(
        ctl.json(&["devices", "get", "r1"]).await["labels"],
        json!({"a": "1"})
    );
    let applied = ctl.ok(&["apply", "-f", &relabel]).await;
    assert_eq!(
        lines(&applied),
        ["device/r1 configured (labels a=1 -> a=2,b=x)"]
    );
    assert_eq!(
        ctl.json(&["devices", "get", "r1"]).await["labels"],
        json!({"a": "2", "b": "x"})
    );
    let again = ctl.ok(&["apply", "-f", &relabel]).await;
    assert_eq!(lines(&again), ["device/r1 unchanged"]);
    let bare = ctl.file("bare.yaml", "kind: Device\nname: r1\n");
    assert_eq!(
        lines(&ctl.ok(&["apply", "-f", &bare]).await),
        ["device/r1 unchanged"]
    );
    let bad = ctl.file(
        "bad.yaml",
        "kind: Device\nname: r1\nlabels: {'no spaces': x}\n",
    );
    let run = ctl.run(&["apply", "-f", &bad]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("error: {bad}, document 1 (line 1) Device/r1: ")),
        "{}",
        run.stderr
    );
}

/// `devices label NAME k=v k-` changes one router; `--selector` previews the
/// routers it matches and changes them all once confirmed.
#[tokio::test]
async fn cli_label_one_router_and_many_after_a_preview() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    for (name, plan) in [
        ("f1", "family"),
        ("f2", "family"),
        ("f3", "family"),
        ("o1", "other"),
    ] {
        ctl.ok(&[
            "devices",
            "create",
            name,
            "--label",
            &format!("plan={plan}"),
            "--label",
            "promo=x",
        ])
        .await;
    }
    let labels = |name: &'static str| {
        let ctl = &ctl;
        async move { ctl.json(&["devices", "get", name]).await["labels"].clone() }
    };

    // One router.
    let dry = ctl
        .ok(&["devices", "label", "f1", "tier=gold", "promo-", "--dry-run"])
        .await;
    assert_eq!(
        dry.stdout,
        "device/f1 labels plan=family,promo=x -> plan=family,tier=gold (dry run)\n"
    );
    assert_eq!(labels("f1").await, json!({"plan": "family", "promo": "x"}));
    let one = ctl
        .ok(&["devices", "label", "f1", "tier=gold", "promo-"])
        .await;
    assert_eq!(
        one.stdout,
        "device/f1 labels plan=family,promo=x -> plan=family,tier=gold\n"
    );
    assert_eq!(
        labels("f1").await,
        json!({"plan": "family", "tier": "gold"})
    );
    let missing = ctl.ok(&["devices", "label", "f1", "nosuch-"]).await;
    assert!(missing
        .stderr
        .contains("warning: device/f1 has no label `nosuch`"));
    assert_eq!(missing.stdout, "device/f1 unchanged\n");
    let usage = ctl.run(&["devices", "label", "f1"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let invalid = ctl.run(&["devices", "label", "f1", "bad key=1"]).await;
    assert_eq!(invalid.code, 1, "{}", invalid.stderr);
    assert!(
        invalid.stderr.starts_with("error: invalid_") && invalid.stderr.contains("bad key"),
        "{}",
        invalid.stderr
    );

    // Many: the preview, then a refusal without a terminal or --yes.
    let audited = audit_entries(&h).await;
    let refused = ctl
        .run(&[
            "devices",
            "label",
            "--selector",
            "plan=family",
            "promo-",
            "region=eu",
        ])
        .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_eq!(
        refused.stdout,
        "3 routers match `plan=family`: f1, f2, f3\nchange: set region=eu; remove promo\n"
    );
    assert!(refused.stderr.contains("add --yes"), "{}", refused.stderr);
    let dry = ctl
        .ok(&[
            "devices",
            "label",
            "-l",
            "plan=family",
            "promo-",
            "region=eu",
            "--dry-run",
        ])
        .await;
    assert!(dry
        .stdout
        .starts_with("3 routers match `plan=family`: f1, f2, f3\n"));
    assert!(
        dry.stdout.ends_with("(dry run: nothing changed)\n"),
        "{}",
        dry.stdout
    );
    assert_eq!(audit_entries(&h).await, audited);
    let bad = ctl
        .run(&[
            "devices",
            "label",
            "-l",
            "plan=family",
            "bad key=1",
            "--dry-run",
        ])
        .await;
    assert_eq!(bad.code, 1, "the server checks a dry run: {}", bad.stderr);

    let done = ctl
        .ok(&[
            "devices",
            "label",
            "-l",
            "plan=family",
            "promo-",
            "region=eu",
            "--yes",
        ])
        .await;
    assert!(
        done.stdout.ends_with("3 routers matched, 2 changed\n")
            || done.stdout.ends_with("3 routers matched, 3 changed\n"),
        "{}",
        done.stdout
    );
    assert_eq!(
        audit_entries(&h).await,
        audited + 1,
        "one call, one audit entry"
    );
    for name in ["f1", "f2", "f3"] {
        assert_eq!(labels(name).await["region"], "eu", "{name}");
        assert!(labels(name).await.get("promo").is_none(), "{name}");
    }
    assert_eq!(labels("o1").await, json!({"plan": "other", "promo": "x"}));

    // Nothing matches: said, and nothing called.
    let none = ctl
        .ok(&["devices", "label", "-l", "plan=nosuch", "a=b", "--yes"])
        .await;
    assert_eq!(
        none.stdout,
        "no router matches `plan=nosuch`; nothing to change\n"
    );
    // -o json: the answer.
    let answer = ctl
        .json(&[
            "devices",
            "label",
            "-l",
            "plan=other",
            "tier=silver",
            "--yes",
        ])
        .await;
    assert_eq!(answer["matched"], 1, "{answer}");
}

#[tokio::test]
async fn cli_devices_list_filters_by_state_name_and_selector() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    reporting_router(&h, "alpha-reporting").await;
    ctl.ok(&["devices", "create", "alpha-quiet", "--label", "plan=lab"])
        .await;
    ctl.ok(&["devices", "create", "beta", "--label", "plan=family"])
        .await;
    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(ctl.json(&["devices", "list", "--name", "ALPHA"]).await),
        ["alpha-quiet", "alpha-reporting"]
    );
    assert_eq!(
        names(ctl.json(&["devices", "list", "--state", "online"]).await),
        ["alpha-reporting"]
    );
    assert_eq!(
        names(
            ctl.json(&["devices", "list", "--state", "never-reported"])
                .await
        ),
        ["alpha-quiet", "beta"]
    );
    assert_eq!(
        names(
            ctl.json(&[
                "devices",
                "list",
                "--state",
                "never-reported",
                "--name",
                "alp",
                "-l",
                "plan=lab"
            ])
            .await
        ),
        ["alpha-quiet"]
    );
    let table = ctl.ok(&["devices", "list", "--state", "online"]).await;
    assert!(table.stdout.lines().next().unwrap().contains("STATE"));
    assert!(
        table.stdout.lines().nth(1).unwrap().contains("online"),
        "{}",
        table.stdout
    );
    assert_eq!(
        ctl.run(&["devices", "list", "--state", "asleep"])
            .await
            .code,
        2
    );
}

/// Services: created with `--type`, listed with it, deleted only when
/// nothing assigns them (the 409 names the assignments), archived and back.
#[tokio::test]
async fn cli_services_delete_archive_and_assignment_warnings() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    let spec = ctl.file(
        "block.json",
        r#"{"flows": [{"protocol": "tcp", "dport": 23}]}"#,
    );
    let bad = ctl.file(
        "bad.json",
        r#"{"flows": [{"protocol": "tcp", "dport": "9-1"}]}"#,
    );
    let dry = ctl
        .run(&[
            "services",
            "create",
            "s",
            "--type",
            "flow-block",
            "--spec",
            &bad,
            "--dry-run",
        ])
        .await;
    assert!(
        dry.stderr.starts_with("error: invalid_spec: "),
        "{}",
        dry.stderr
    );
    let dry = ctl
        .ok(&[
            "services",
            "create",
            "s",
            "--type",
            "flow-block",
            "--spec",
            &spec,
            "--dry-run",
        ])
        .await;
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(h.get("/api/v1/services").await.body["items"], json!([]));
    let created = ctl
        .json(&[
            "services",
            "create",
            "s",
            "--type",
            "flow-block",
            "--spec",
            &spec,
        ])
        .await;
    assert_eq!(created["type"], "flow-block");
    assert!(
        created.get("warnings").is_none(),
        "no deprecation: {created}"
    );
    let table = ctl.ok(&["services", "list"]).await;
    assert!(table.stdout.starts_with("NAME  ID"), "{}", table.stdout);
    assert!(table.stdout.contains("TYPE") && table.stdout.contains("flow-block"));

    // Assigned on a selector that matches nothing: a warning; twice: a 409.
    let assigned = ctl
        .run(&[
            "assignments",
            "create",
            "--service",
            "s",
            "--selector",
            "plan=nobody",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(assigned.code, 0, "{}", assigned.stderr);
    assert!(
        assigned
            .stderr
            .contains("warning: selector `plan=nobody` matches no router"),
        "{}",
        assigned.stderr
    );
    let assignment: Value = serde_json::from_str(&assigned.stdout).unwrap();
    let again = ctl
        .run(&[
            "assignments",
            "create",
            "--service",
            "s",
            "--selector",
            "plan=nobody",
        ])
        .await;
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.starts_with("error: assignment_exists: "),
        "{}",
        again.stderr
    );
    assert!(
        again
            .stderr
            .contains("hint: service `s` already runs on `plan=nobody`")
            && again.stderr.contains("isdfctl assignments set-revision"),
        "{}",
        again.stderr
    );

    // Delete: refused while assigned, naming the assignment.
    let refused = ctl.run(&["services", "delete", "s"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.starts_with("error: service_assigned: "),
        "{}",
        refused.stderr
    );
    let id = assignment["id"].as_str().unwrap();
    assert!(
        refused.stderr.contains("hint: it is assigned by:")
            && refused.stderr.contains(&format!("hint: {id}  plan=nobody")),
        "{}",
        refused.stderr
    );

    // Archiving is refused the same way while assigned.
    let refused = ctl.run(&["services", "archive", "s"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.starts_with("error: service_assigned: ")
            && refused.stderr.contains(&format!("hint: {id}  plan=nobody")),
        "{}",
        refused.stderr
    );
    ctl.ok(&["assignments", "delete", id]).await;

    // Archived: hidden from the list, no new revision, found by name still.
    assert_eq!(
        ctl.ok(&["services", "archive", "s"]).await.stdout,
        "service/s archived\n"
    );
    assert_eq!(ctl.json(&["services", "list"]).await, json!([]));
    let listed = ctl.json(&["services", "list", "--archived"]).await;
    assert_eq!(listed[0]["archived"], true, "{listed}");
    let revision = ctl
        .run(&["services", "revisions", "create", "s", "--spec", &spec])
        .await;
    assert!(
        revision.stderr.starts_with("error: service_archived: "),
        "{}",
        revision.stderr
    );
    assert_eq!(ctl.json(&["services", "get", "s"]).await["archived"], true);
    assert_eq!(
        ctl.ok(&["services", "unarchive", "s"]).await.stdout,
        "service/s unarchived\n"
    );
    assert_eq!(
        ctl.ok(&["services", "delete", "s"]).await.stdout,
        "service/s deleted\n"
    );
    assert_eq!(ctl.run(&["services", "get", "s"]).await.code, 1);
}

/// A rollout whose canary matches no router is refused with a hint to pick
/// another canary or `--allow-empty-waves`, which starts it.
#[tokio::test]
async fn cli_rollout_with_an_empty_canary_is_refused_unless_allowed() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["apply", "-f", &ctl.file("fleet.yaml", FLEET)])
        .await;
    let spec = ctl.file(
        "block.json",
        r#"{"flows": [{"protocol": "tcp", "dport": 2323}]}"#,
    );
    ctl.ok(&[
        "services",
        "revisions",
        "create",
        "block-telnet",
        "--spec",
        &spec,
    ])
    .await;
    let args = [
        "rollouts",
        "create",
        "--service",
        "block-telnet",
        "--selector",
        "plan=family",
        "--canary-selector",
        "plan=nobody",
    ];
    let refused = ctl.run(&args).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.starts_with("error: empty_wave: "),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("hint: ") && refused.stderr.contains("--allow-empty-waves"),
        "{}",
        refused.stderr
    );
    let allowed: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--allow-empty-waves"])
        .collect();
    let started = ctl.json(&allowed).await;
    assert_eq!(started["state"], "running", "{started}");
    // It staged the fleet file's assignment, not a second one.
    let assignments = ctl.json(&["assignments", "list"]).await;
    assert_eq!(assignments.as_array().unwrap().len(), 1, "{assignments}");
}
