//! `isdfctl`, the real binary, against the real controller: apply twice is
//! a no-op (no new audit entry), a changed spec makes a revision, every
//! command's `-o json` output parses, and errors have their codes.

use std::collections::VecDeque;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use isdf_api::{WgKey, WireguardFacts};
use serde_json::{json, Value};

use crate::support::Harness;

const FLEET: &str = include_str!("../../../deploy/examples/fleet.yaml");

/// What one isdfctl run did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs isdfctl against one controller.
struct Ctl {
    server: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Ctl {
    fn new(h: &Harness) -> Self {
        Self::at(&h.controller.api_url, &h.controller.operator_token)
    }

    fn at(server: &str, token: &str) -> Self {
        Ctl {
            server: server.to_owned(),
            token: token.to_owned(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs it off the runtime's thread (the controller runs on that runtime).
    async fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_isdfctl"));
        command
            .args(args)
            .env("ISDF_SERVER", &self.server)
            .env("ISDF_TOKEN", &self.token)
            .env_remove("ISDF_TOKEN_FILE")
            .env_remove("ISDF_CA_FILE")
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.map(str::to_owned);
        let output = tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("isdfctl starts");
            if let Some(text) = stdin {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None, &[]).await
    }

    /// Runs and asserts success.
    async fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args).await;
        assert_eq!(
            run.code, 0,
            "isdfctl {args:?}: {}{}",
            run.stdout, run.stderr
        );
        run
    }

    /// Runs with `-o json`, asserts success and that stdout is one JSON document.
    async fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
        let run = self.ok(&args).await;
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("isdfctl {args:?}: not JSON ({e}): {}", run.stdout))
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// How many entries the audit log has (every mutating call writes one).
async fn audit_entries(h: &Harness) -> usize {
    let r = h.get("/api/v1/audit?limit=500").await;
    let n = r.body["items"].as_array().unwrap().len();
    assert!(n < 500, "the test reads one page");
    n
}

fn lines(run: &Run) -> Vec<&str> {
    run.stdout.lines().collect()
}

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

/// An enrolled router with a status report and WireGuard facts, so its
/// status, history and wireguard commands have something to show.
async fn reporting_router(h: &Harness, name: &str) {
    let (_, device) = h.device(name, json!({"plan": "lab"})).await;
    let report = json!({
        "sequence": 1, "enforced_version": 1, "enforced_digest": "abc", "outcome": "applied",
        "attempted_version": 1, "errors": [], "counters": [], "tunnels": [],
        "backend": "nftables", "agent_version": "test",
    });
    let r = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_STATUS))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let facts = WireguardFacts {
        public_key: WgKey([7; 32]),
        next_public_key: None,
        key_generation: 1,
        listen_port: 51820,
        wan_addresses: vec![],
        probe_nonce: None,
    };
    let r = device
        .http
        .put(device.url(isdf_api::paths::DEVICE_WIREGUARD_FACTS))
        .json(&facts)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn cli_json_output_of_every_command_parses() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["apply", "-f", &ctl.file("fleet.yaml", FLEET)])
        .await;
    reporting_router(&h, "r1").await;
    let spec = ctl.file(
        "spec.json",
        r#"{"flows": [{"protocol": "udp", "dport": 53}]}"#,
    );
    let spec2 = ctl.file("spec2.yaml", "flows:\n  - {protocol: udp, dport: 5353}\n");

    for kind in [
        "devices",
        "services",
        "assignments",
        "customers",
        "sites",
        "vpns",
        "operator-tokens",
    ] {
        assert!(ctl.json(&["get", kind, "--all"]).await.is_array(), "{kind}");
    }
    assert!(ctl.json(&["get", "audit", "--limit", "3"]).await.is_array());
    for (kind, name) in [
        ("devices", "home-hq"),
        ("services", "block-telnet"),
        ("customers", "Smith household"),
        ("sites", "main/Stream+"),
        ("vpns", "offices"),
    ] {
        assert_eq!(
            ctl.json(&["get", kind, name]).await["name"],
            name.rsplit('/').next().unwrap()
        );
    }

    // Devices.
    let family = ctl
        .json(&["devices", "list", "-l", "plan=family", "--all"])
        .await;
    assert_eq!(family.as_array().unwrap().len(), 2);
    assert_eq!(
        ctl.json(&["devices", "list", "--limit", "1"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ctl.json(&["devices", "get", "r1"]).await;
    let extra = ctl
        .json(&["devices", "create", "extra", "--label", "a=b"])
        .await;
    assert!(extra["enrollment_token"].is_string());
    ctl.json(&["devices", "create", "relay-1"]).await;
    ctl.json(&["devices", "config", "r1"]).await;
    ctl.json(&["devices", "status", "r1"]).await;
    assert!(ctl.json(&["devices", "history", "r1"]).await.is_array());
    ctl.json(&["devices", "enrollment-token", "home-hq"]).await;
    ctl.json(&["devices", "events", "r1"]).await;
    ctl.json(&["devices", "wireguard", "get", "r1"]).await;
    ctl.json(&["devices", "wireguard", "rotate", "r1"]).await;
    let tokens = ctl
        .json(&[
            "enrollment-tokens",
            "create",
            "--count",
            "2",
            "--label",
            "plan=bulk",
        ])
        .await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);

    // Services, revisions, assignments.
    ctl.json(&[
        "services",
        "create",
        "dns",
        "--kind",
        "flow-block",
        "--spec",
        &spec,
    ])
    .await;
    ctl.json(&["services", "list"]).await;
    ctl.json(&["services", "get", "dns"]).await;
    assert_eq!(
        ctl.json(&["services", "revisions", "create", "dns", "--spec", &spec2])
            .await["revision"],
        2
    );
    assert_eq!(
        ctl.json(&["services", "revisions", "list", "dns"])
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ctl.json(&["services", "revisions", "get", "dns", "1"])
        .await;
    let assignment = ctl
        .json(&[
            "assignments",
            "create",
            "--service",
            "dns",
            "--selector",
            "plan=lab",
        ])
        .await;
    let assignment_id = assignment["id"].as_str().unwrap();
    assert_eq!(assignment["revision"], 2);
    assert_eq!(
        ctl.json(&["assignments", "list", "--service", "dns"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ctl.json(&["assignments", "get", assignment_id]).await;
    assert_eq!(
        ctl.json(&["assignments", "set-revision", assignment_id, "1"])
            .await["revision"],
        1
    );
    ctl.json(&["assignments", "delete", assignment_id]).await;

    // Operator tokens and the audit log.
    assert!(ctl
        .json(&["operator-tokens", "create", "bot", "--role", "viewer"])
        .await["token"]
        .is_string());
    ctl.json(&["operator-tokens", "list"]).await;
    assert!(ctl.json(&["operator-tokens", "revoke", "bot"]).await["revoked_at"].is_string());
    ctl.json(&["audit", "list", "--limit", "5"]).await;

    // Customers, sites, purchases.
    ctl.json(&[
        "customers",
        "create",
        "Jones",
        "--external-ref",
        "crm-7",
        "--device",
        "extra",
    ])
    .await;
    ctl.json(&["customers", "list"]).await;
    ctl.json(&["customers", "get", "Jones"]).await;
    ctl.json(&["customers", "detach", "Jones", "extra"]).await;
    ctl.json(&["customers", "attach", "Jones", "extra"]).await;
    let music = [
        "--name",
        "Music",
        "--domain",
        "music.example",
        "--currency",
        "EUR",
    ];
    ctl.json(&[&["sites", "create"][..], &music, &["--pass", "3600:100"]].concat())
        .await;
    ctl.json(&["sites", "list", "--catalog", "main"]).await;
    ctl.json(&["sites", "get", "main/Music"]).await;
    ctl.json(
        &[
            &["sites", "update", "main/Music"][..],
            &music,
            &["--pass", "7200:150"],
        ]
        .concat(),
    )
    .await;
    let purchase = ctl
        .json(&[
            "purchases",
            "create",
            "--customer",
            "Jones",
            "--site",
            "Music",
            "--duration",
            "7200",
        ])
        .await;
    let purchase_id = purchase["id"].as_str().unwrap();
    let active = ctl
        .json(&[
            "purchases",
            "list",
            "--customer",
            "Jones",
            "--active",
            "true",
        ])
        .await;
    assert_eq!(active.as_array().unwrap().len(), 1);
    ctl.json(&["purchases", "cancel", purchase_id]).await;
    ctl.json(&["sites", "delete", "main/Music"]).await;

    // VPNs and relays.
    ctl.json(&[
        "vpns",
        "create",
        "jones-vpn",
        "--customer",
        "Jones",
        "--member",
        "extra=10.9.0.0/24",
    ])
    .await;
    ctl.json(&["vpns", "list", "--customer", "Jones"]).await;
    ctl.json(&["vpns", "get", "jones-vpn"]).await;
    ctl.json(&["vpns", "update", "jones-vpn", "--topology", "mesh"])
        .await;
    ctl.json(&[
        "vpns",
        "members",
        "put",
        "jones-vpn",
        "extra",
        "--prefix",
        "10.9.1.0/24",
    ])
    .await;
    ctl.json(&["vpns", "members", "delete", "jones-vpn", "extra"])
        .await;
    ctl.json(&["vpns", "delete", "jones-vpn"]).await;
    ctl.json(&["vpn-relays", "add", "relay-1"]).await;
    assert_eq!(
        ctl.json(&["vpn-relays", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ctl.json(&["vpn-relays", "remove", "relay-1"]).await;

    // Blocks.
    let blocks = ctl
        .json(&[
            "blocks",
            "create",
            "r1",
            "--flow",
            "{protocol: tcp, dport: 22}",
            "--duration",
            "60",
        ])
        .await;
    let block_id = blocks["items"][0]["id"].as_str().unwrap();
    assert!(ctl.json(&["blocks", "list", "r1"]).await.is_array());
    ctl.json(&["blocks", "delete", "r1", block_id]).await;

    // Deletions last; then the API document.
    ctl.json(&["customers", "delete", "Jones"]).await;
    ctl.json(&["devices", "delete", "extra"]).await;
    assert!(ctl.json(&["openapi"]).await["paths"].is_object());
    // Tables print too.
    let table = ctl.ok(&["get", "devices"]).await;
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
}

/// `whoami`, `fleet overview` and `services diff` answer JSON that parses,
/// and the diff's text shows the changed port.
#[tokio::test]
async fn cli_whoami_fleet_overview_and_revision_diff() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["apply", "-f", &ctl.file("fleet.yaml", FLEET)])
        .await;
    let changed = ctl.file("changed.yaml", &FLEET.replace("dport: 23}", "dport: 2323}"));
    ctl.ok(&["apply", "-f", &changed]).await;
    assert!(ctl.json(&["whoami"]).await.is_object());
    assert!(ctl.json(&["fleet", "overview"]).await.is_object());
    let diff = ctl
        .json(&["services", "diff", "block-telnet", "1", "2"])
        .await;
    assert!(diff["unified"].is_string());
    let text = ctl
        .ok(&["services", "diff", "block-telnet", "1", "2"])
        .await;
    assert!(text.stdout.contains("2323"), "{}", text.stdout);
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

/// A stand-in for `GET /api/v1/rollouts/{id}` that answers `states` in turn,
/// then the last one for ever, so `--watch` meets every end state at once
/// (the real API is driven in `cli_apply_stages_a_rollout_and_the_rollout_commands_follow_it`).
/// Returns its URL.
async fn rollout_stub(states: &[&'static str]) -> String {
    let states = Arc::new(Mutex::new(states.iter().copied().collect::<VecDeque<_>>()));
    let answer = move |axum::extract::Path(id): axum::extract::Path<String>| {
        let states = states.clone();
        async move {
            let state = {
                let mut states = states.lock().unwrap();
                if states.len() > 1 {
                    states.pop_front().unwrap()
                } else {
                    states[0]
                }
            };
            let applied = if state == "completed" { 10 } else { 1 };
            axum::Json(json!({
                "id": id, "service_name": "block-telnet", "from_revision": 1, "to_revision": 2,
                "state": state, "pause_reason": (state == "paused").then_some("breach"),
                "current_wave": 1,
                "waves": [
                    {"index": 0, "label": "canary 10%", "routers": 1, "pending": 0, "applied": 1,
                     "failed": 0, "offline": 0, "released_at": "2026-01-01T00:00:00Z",
                     "healthy_since": null, "passed_at": null},
                    {"index": 1, "label": "100%", "routers": 9, "pending": 10 - applied,
                     "applied": applied - 1, "failed": 0, "offline": 0,
                     "released_at": null, "healthy_since": null, "passed_at": null},
                ],
                "totals": {"routers": 10, "pending": 10 - applied, "applied": applied, "failed": 0, "offline": 0},
            }))
        }
    };
    let app = axum::Router::new().route("/api/v1/rollouts/{id}", axum::routing::get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
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
