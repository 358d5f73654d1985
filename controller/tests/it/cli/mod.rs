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

mod apply;
mod changes;
mod errors;
mod help;
mod output;
mod releases;

const FLEET: &str = include_str!("../../../../deploy/examples/fleet.yaml");

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
