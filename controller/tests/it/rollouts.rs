//! Rollouts against the real controller: routers are simulated by their
//! status reports over mutual TLS (the agent end to end is in the agent's
//! tests). A wave passes only on its routers' reports; a failing canary
//! pauses; abort brings the previous revision back.

#![allow(clippy::needless_range_loop)] // routers are indexed by their place in the fleet

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use isdf_controller::reconcile::soon::Batching;

use crate::replicas::until;
use crate::support::{error_code, DeviceHandle, Harness};

struct Router {
    id: String,
    handle: DeviceHandle,
    sequence: u64,
}

impl Router {
    /// Posts a status report as this router.
    async fn report(&mut self, outcome: &str, enforced: i64, attempted: i64) {
        self.sequence += 1;
        let r = self
            .handle
            .http
            .post(self.handle.url(isdf_api::paths::DEVICE_STATUS))
            .json(&json!({
                "sequence": self.sequence,
                "enforced_version": enforced,
                "enforced_digest": null,
                "outcome": outcome,
                "attempted_version": attempted,
                "backend": "nftables",
                "agent_version": "test",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

struct Fleet {
    h: Harness,
    routers: Vec<Router>,
    service: String,
    assignment: String,
}

impl Fleet {
    /// `n` routers (the first `canaries` labelled `canary=true`) enforcing
    /// revision 1 of a flow block; revision 2 blocks another address.
    async fn new(n: usize, canaries: usize) -> Self {
        Self::on(Harness::start().await, n, canaries).await
    }

    async fn on(h: Harness, n: usize, canaries: usize) -> Self {
        let mut routers = Vec::new();
        for i in 0..n {
            let labels = if i < canaries {
                json!({"canary": "true"})
            } else {
                json!({})
            };
            let (id, handle) = h.device(&format!("r{i}"), labels).await;
            routers.push(Router {
                id,
                handle,
                sequence: 0,
            });
        }
        let (service, assignment) = h.assigned_blocklist().await;
        let mut fleet = Fleet {
            h,
            routers,
            service,
            assignment,
        };
        for i in 0..n {
            fleet.apply(i).await;
        }
        fleet
    }

    async fn version(&self, i: usize) -> i64 {
        self.h.config_version(&self.routers[i].id).await
    }

    /// The destinations router `i`'s current config blocks.
    async fn blocked(&self, i: usize) -> String {
        let r = self
            .h
            .get(&format!("/api/v1/devices/{}/config", self.routers[i].id))
            .await;
        let sets = r.body["config"]["firewall"]["sets"].to_string();
        assert_ne!(sets, "null", "{}", r.body);
        sets
    }

    /// Router `i` enforces its current config and says so.
    async fn apply(&mut self, i: usize) {
        let v = self.version(i).await;
        self.routers[i].report("applied", v, v).await;
    }

    /// Router `i` tries its current config and rolls back to `enforced`.
    async fn roll_back(&mut self, i: usize, enforced: i64) {
        let v = self.version(i).await;
        self.routers[i].report("rolled_back", enforced, v).await;
    }

    async fn rollout(&self, id: &str) -> Value {
        let r = self.h.get(&format!("/api/v1/rollouts/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// Waits (at most 20 s) until the rollout satisfies `done`.
    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rollout = self.rollout(id).await;
            if done(&rollout) {
                return rollout;
            }
            assert!(
                Instant::now() < deadline,
                "rollout never got to {what}: {rollout:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start(&self, body: Value) -> Value {
        let r = self.h.post("/api/v1/rollouts", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    /// Which routers (by index) are in each wave, from their config versions.
    fn wave_of(rollout: &Value) -> Vec<u64> {
        rollout["waves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["routers"].as_u64().unwrap())
            .collect()
    }
}

fn wave(rollout: &Value, index: usize) -> &Value {
    &rollout["waves"][index]
}

#[tokio::test]
async fn a_good_revision_completes_wave_by_wave_as_routers_report() {
    let mut f = Fleet::new(6, 2).await;
    let before: Vec<i64> = versions(&f).await;
    let started = f
        .start(json!({
            "assignment_id": f.assignment,
            "revision": 2,
            "canary": {"selector": "canary=true"},
            "waves": [50, 100],
            "min_applied_share": 1.0,
            "soak_secs": 0,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["state"], "running");
    assert_eq!(started["from_revision"], 1);
    assert_eq!(started["to_revision"], 2);
    assert_eq!(Fleet::wave_of(&started), [2, 1, 3]);
    assert_eq!(wave(&started, 0)["label"], "canary canary=true");
    assert_eq!(wave(&started, 0)["pending"], 2);
    assert_eq!(wave(&started, 1)["waiting"], 1);

    // Only the canaries got revision 2.
    for i in 0..6 {
        let now = f.version(i).await;
        let blocked = f.blocked(i).await;
        if i < 2 {
            assert_eq!(now, before[i] + 1, "canary r{i} recompiled");
            assert!(blocked.contains("198.51.100.7"), "{blocked}");
        } else {
            assert_eq!(now, before[i], "r{i} not yet");
            assert!(blocked.contains("192.0.2.1"), "{blocked}");
        }
    }
    // A report of the old version changes nothing; the new one counts.
    f.routers[0].report("applied", before[0], before[0]).await;
    f.apply(0).await;
    let r = f
        .wait_for(&id, "one canary applied", |r| wave(r, 0)["applied"] == 1)
        .await;
    assert_eq!(r["current_wave"], 0, "one of two canaries is not enough");
    f.apply(1).await;
    let r = f
        .wait_for(&id, "wave 1 released", |r| r["current_wave"] == 1)
        .await;
    assert!(wave(&r, 0)["passed_at"].is_string());
    // Wave 1 is one router: the one whose version moved.
    let mut released = Vec::new();
    for i in 2..6 {
        if f.version(i).await > before[i] {
            released.push(i);
        }
    }
    assert_eq!(released.len(), 1, "{released:?}");
    f.apply(released[0]).await;
    f.wait_for(&id, "wave 2 released", |r| r["current_wave"] == 2)
        .await;
    for i in 2..6 {
        if !released.contains(&i) {
            assert_eq!(f.version(i).await, before[i] + 1);
            f.apply(i).await;
        }
    }
    let done = f
        .wait_for(&id, "completed", |r| r["state"] == "completed")
        .await;
    assert_eq!(done["totals"]["applied"], 6);
    assert!(done["finished_at"].is_string());

    let history = f.h.get(&format!("/api/v1/rollouts/{id}/history")).await;
    let kinds: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "wave_released",
            "wave_passed",
            "wave_released",
            "wave_passed",
            "wave_released",
            "wave_passed",
            "completed"
        ]
    );
    let samples = f.h.get(&format!("/api/v1/rollouts/{id}/samples")).await;
    let samples = samples.body["items"].as_array().unwrap();
    let last_of_wave0 = samples.iter().rev().find(|s| s["wave"] == 0).unwrap();
    assert_eq!(last_of_wave0["applied"], 2);
    assert!(samples.iter().any(|s| s["wave"] == 0 && s["pending"] == 2));

    // The assignment stays at revision 2, and may be changed again.
    let a =
        f.h.get(&format!("/api/v1/assignments/{}", f.assignment))
            .await;
    assert_eq!(a.body["revision"], 2);
    let list = f.h.get("/api/v1/rollouts?state=completed").await;
    assert_eq!(list.body["items"][0]["id"], id.as_str());
    // Automatic steps are audited as the controller.
    let audit = f.h.get("/api/v1/audit?limit=100").await;
    assert!(
        audit.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "controller" && e["action"] == "rollout.complete"),
        "{:#}",
        audit.body
    );
}

async fn versions(f: &Fleet) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..f.routers.len() {
        out.push(f.version(i).await);
    }
    out
}

#[tokio::test]
async fn a_failing_canary_pauses_before_the_next_wave_and_abort_restores_the_canary() {
    let mut f = Fleet::new(4, 1).await;
    let before = versions(&f).await;
    let original = f.blocked(0).await;
    let started = f
        .start(json!({
            "assignment_id": f.assignment,
            "canary": {"selector": "canary=true"},
            "waves": [100],
            "soak_secs": 0,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["to_revision"], 2, "the latest revision by default");
    f.roll_back(0, before[0]).await;
    let paused = f.wait_for(&id, "paused", |r| r["state"] == "paused").await;
    let reason = paused["pause_reason"].as_str().unwrap();
    assert!(reason.contains("1 of 1 routers failed"), "{reason}");
    assert_eq!(paused["current_wave"], 0);
    assert_eq!(wave(&paused, 0)["failed"], 1);
    for i in 1..4 {
        assert_eq!(f.version(i).await, before[i], "r{i} never got the change");
    }
    // Staged assignments cannot be changed behind the rollout's back.
    let patch =
        f.h.call(
            reqwest::Method::PATCH,
            &format!("/api/v1/assignments/{}", f.assignment),
            Some(json!({"revision": 2})),
        )
        .await;
    assert_eq!(error_code(&patch), "rollout_in_progress");
    let again =
        f.h.post(
            "/api/v1/rollouts",
            json!({"assignment_id": f.assignment, "revision": 2}),
        )
        .await;
    assert_eq!(error_code(&again), "rollout_in_progress");
    let pause =
        f.h.post(&format!("/api/v1/rollouts/{id}/pause"), json!({}))
            .await;
    assert_eq!(error_code(&pause), "rollout_not_running");

    let aborted =
        f.h.post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
            .await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.body);
    assert_eq!(aborted.body["state"], "aborted");
    // The canary is told revision 1 again, in a newer version than the one it refused.
    assert_eq!(f.version(0).await, before[0] + 2);
    assert_eq!(f.blocked(0).await, original);
    for i in 1..4 {
        assert_eq!(f.version(i).await, before[i]);
    }
    let a =
        f.h.get(&format!("/api/v1/assignments/{}", f.assignment))
            .await;
    assert_eq!(a.body["revision"], 1);
    let again =
        f.h.post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
            .await;
    assert_eq!(error_code(&again), "rollout_finished");
    let history = f.h.get(&format!("/api/v1/rollouts/{id}/history")).await;
    let events: Vec<(String, String)> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        events.contains(&("breach".into(), "controller".into())),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|(k, a)| k == "aborted" && a != "controller"));
}

#[tokio::test]
async fn pause_holds_the_next_wave_and_resume_releases_it() {
    let mut f = Fleet::new(3, 1).await;
    let started = f
        .start(json!({
            "assignment_id": f.assignment,
            "canary": {"selector": "canary=true"},
            "soak_secs": 0,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    let paused =
        f.h.post(&format!("/api/v1/rollouts/{id}/pause"), json!({}))
            .await;
    assert_eq!(paused.body["state"], "paused", "{}", paused.body);
    f.apply(0).await;
    f.wait_for(&id, "canary applied while paused", |r| {
        wave(r, 0)["applied"] == 1
    })
    .await;
    // Paused: the next wave stays waiting however long the canary is fine.
    let still = f.rollout(&id).await;
    assert_eq!(still["current_wave"], 0);
    let resumed =
        f.h.post(&format!("/api/v1/rollouts/{id}/resume"), json!({}))
            .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    f.wait_for(&id, "wave 1 released", |r| r["current_wave"] == 1)
        .await;
    f.apply(1).await;
    f.apply(2).await;
    f.wait_for(&id, "completed", |r| r["state"] == "completed")
        .await;
}

#[tokio::test]
async fn routers_that_never_report_count_as_offline_and_do_not_block_a_wave() {
    let mut f = Fleet::new(3, 0).await;
    let before = versions(&f).await;
    let started = f
        .start(json!({
            "assignment_id": f.assignment,
            "canary": {"percent": 50},
            "min_applied_share": 1.0,
            "soak_secs": 0,
            "offline_timeout_secs": 1,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(Fleet::wave_of(&started), [2, 1]);
    // One canary applies, the other is silent.
    let mut canaries = Vec::new();
    let versions = versions(&f).await;
    for (i, v) in versions.iter().enumerate() {
        if *v > before[i] {
            canaries.push(i);
        }
    }
    assert_eq!(canaries.len(), 2, "{versions:?}");
    f.apply(canaries[0]).await;
    let r = f
        .wait_for(&id, "the silent canary offline and wave 1 out", |r| {
            r["current_wave"] == 1
        })
        .await;
    assert_eq!(wave(&r, 0)["offline"], 1);
    assert_eq!(wave(&r, 0)["applied"], 1);
    // The silent one comes back and applies: it counts as applied after all.
    f.apply(canaries[1]).await;
    f.wait_for(&id, "the late canary applied", |r| {
        wave(r, 0)["applied"] == 2
    })
    .await;
}

#[tokio::test]
async fn a_new_assignment_rolls_out_and_abort_removes_it() {
    let mut f = Fleet::new(2, 1).await;
    let other =
        f.h.flow_block("extra", json!({"flows": [{"dst": "203.0.113.9/32"}]}))
            .await;
    let started = f
        .start(json!({
            "service_id": other,
            "selector": "*",
            "canary": {"selector": "canary=true"},
            "soak_secs": 0,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert!(started["from_revision"].is_null());
    assert!(f.blocked(0).await.contains("203.0.113.9"));
    assert!(!f.blocked(1).await.contains("203.0.113.9"));
    f.apply(0).await;
    f.wait_for(&id, "wave 1 released", |r| r["current_wave"] == 1)
        .await;
    assert!(f.blocked(1).await.contains("203.0.113.9"));
    let assignment = started["assignment_id"].as_str().unwrap();
    let aborted =
        f.h.post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
            .await;
    assert_eq!(aborted.body["state"], "aborted", "{}", aborted.body);
    for i in 0..2 {
        assert!(!f.blocked(i).await.contains("203.0.113.9"), "r{i}");
    }
    let gone = f.h.get(&format!("/api/v1/assignments/{assignment}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let _ = f.service;
}

#[tokio::test]
async fn bad_rollout_requests_are_refused_and_change_nothing() {
    let f = Fleet::new(1, 0).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "invalid_rollout"),
        (
            json!({"assignment_id": f.assignment, "service_id": f.service, "selector": "*"}),
            "invalid_rollout",
        ),
        (
            json!({"assignment_id": uuid::Uuid::new_v4()}),
            "unknown_assignment",
        ),
        (
            json!({"service_id": uuid::Uuid::new_v4(), "selector": "*"}),
            "unknown_service",
        ),
        (
            json!({"service_id": f.service, "selector": "a=="}),
            "invalid_selector",
        ),
        (
            json!({"assignment_id": f.assignment, "revision": 9}),
            "unknown_revision",
        ),
        (
            json!({"assignment_id": f.assignment, "revision": 1}),
            "same_revision",
        ),
        (
            json!({"assignment_id": f.assignment, "waves": [50]}),
            "invalid_rollout",
        ),
        (
            json!({"assignment_id": f.assignment, "waves": [5, 100]}),
            "invalid_rollout",
        ),
        (
            json!({"assignment_id": f.assignment, "canary": {"percent": 100}}),
            "invalid_rollout",
        ),
        (
            json!({"assignment_id": f.assignment, "max_failed_share": 2}),
            "invalid_rollout",
        ),
        (
            json!({"assignment_id": f.assignment, "offline_timeout_secs": 0}),
            "invalid_rollout",
        ),
        (
            json!({"assignment_id": f.assignment, "canary": {"selector": "x=("}}),
            "invalid_selector",
        ),
        (
            json!({"assignment_id": f.assignment, "extra": 1}),
            "invalid_body",
        ),
    ];
    let version = f.version(0).await;
    let mut codes = HashMap::new();
    for (body, code) in &cases {
        let r = f.h.post("/api/v1/rollouts", body.clone()).await;
        codes.insert(body.to_string(), error_code(&r).to_owned());
        assert_eq!(error_code(&r), *code, "{body}: {}", r.body);
    }
    let list = f.h.get("/api/v1/rollouts").await;
    assert_eq!(list.body["items"], json!([]));
    let a =
        f.h.get(&format!("/api/v1/assignments/{}", f.assignment))
            .await;
    assert_eq!(a.body["revision"], 1);
    assert_eq!(f.version(0).await, version);
    let missing =
        f.h.post(
            &format!("/api/v1/rollouts/{}/pause", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(error_code(&missing), "not_found");
    let state = f.h.get("/api/v1/rollouts?state=sideways").await;
    assert_eq!(error_code(&state), "invalid_query");
}

/// At fleet scale a wave is larger than what a change compiles in its own
/// transaction: its release only records it and the driver's next steps
/// compile it in chunks; an abort of that many routers marks them for the
/// recompile pass. Here with one router at once and chunks of two: every
/// router still gets the new revision, and after the abort the old one.
#[tokio::test]
async fn a_wave_larger_than_one_transaction_and_its_abort_reach_every_router() {
    let batching = Batching {
        at_once: 1,
        chunk: 2,
    };
    let mut f = Fleet::on(Harness::batching(batching).await, 6, 1).await;
    let started = f
        .start(json!({
            "assignment_id": f.assignment,
            "revision": 2,
            "canary": {"selector": "canary=true"},
            "waves": [100],
            "min_applied_share": 1.0,
            "soak_secs": 0,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert!(f.blocked(0).await.contains("198.51.100.7"), "the canary");
    f.apply(0).await;
    f.wait_for(&id, "wave 1 released", |r| r["current_wave"] == 1)
        .await;
    for i in 1..6 {
        until(
            &format!("r{i} of the five-router wave compiled"),
            || async { f.blocked(i).await.contains("198.51.100.7") },
        )
        .await;
    }
    let aborted =
        f.h.post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
            .await;
    assert_eq!(aborted.body["state"], "aborted", "{}", aborted.body);
    for i in 0..6 {
        until(&format!("r{i} back on revision 1"), || async {
            let blocked = f.blocked(i).await;
            blocked.contains("192.0.2.1") && !blocked.contains("198.51.100.7")
        })
        .await;
    }
}

/// A canary that matches no router would pass after its soak time unseen
/// and send the change to everyone: refused unless asked for explicitly,
/// and the refusal changes nothing.
#[tokio::test]
async fn an_empty_canary_is_refused_unless_explicitly_allowed() {
    let f = Fleet::new(3, 0).await;
    let versions_before = versions(&f).await;
    let refused =
        f.h.post(
            "/api/v1/rollouts",
            json!({"assignment_id": f.assignment, "canary": {"selector": "canary=true"}}),
        )
        .await;
    assert_eq!(error_code(&refused), "empty_wave", "{}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("canary=true") && message.contains("allow_empty_waves"),
        "{message}"
    );
    let nobody =
        f.h.post(
            "/api/v1/rollouts",
            json!({"service_id": f.service, "selector": "plan=none"}),
        )
        .await;
    assert_eq!(error_code(&nobody), "empty_wave", "{}", nobody.body);
    assert_eq!(f.h.get("/api/v1/rollouts").await.body["items"], json!([]));
    let assignments = f.h.get("/api/v1/assignments").await;
    assert_eq!(assignments.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(assignments.body["items"][0]["revision"], 1);
    assert_eq!(versions(&f).await, versions_before);

    let allowed = f
        .start(json!({
            "assignment_id": f.assignment,
            "canary": {"selector": "canary=true"},
            "allow_empty_waves": true,
            "soak_secs": 0,
        }))
        .await;
    assert_eq!(Fleet::wave_of(&allowed), [0, 3]);
}

/// "Completed" does not mean everyone has it: a rollout that ends with
/// routers offline says so and names them.
#[tokio::test]
async fn a_rollout_that_ends_with_offline_routers_says_which() {
    let mut f = Fleet::new(3, 1).await;
    let started = f
        .start(json!({
            "assignment_id": f.assignment,
            "canary": {"selector": "canary=true"},
            "waves": [100],
            "min_applied_share": 0.5,
            "soak_secs": 0,
            "offline_timeout_secs": 1,
        }))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["outcome"], Value::Null);
    f.apply(0).await;
    f.wait_for(&id, "wave 1 released", |r| r["current_wave"] == 1)
        .await;
    f.apply(1).await;
    // r2 never reports.
    let done = f
        .wait_for(&id, "completed", |r| r["state"] == "completed")
        .await;
    assert_eq!(done["outcome"], "completed_with_offline", "{done:#}");
    assert_eq!(done["totals"]["offline"], 1);
    let offline: Vec<&str> = done["offline_devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(offline, ["r2"]);
    let history = f.h.get(&format!("/api/v1/rollouts/{id}/history")).await;
    let completed = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "completed")
        .cloned()
        .unwrap();
    assert_eq!(completed["detail"], "completed with 1 offline");
}

/// Starting a rollout "of this service on this selector" when that
/// assignment exists stages it: never a second assignment of the same.
#[tokio::test]
async fn a_rollout_of_an_assigned_service_and_selector_stages_that_assignment() {
    let f = Fleet::new(2, 1).await;
    let started = f
        .start(json!({
            "service_id": f.service,
            "selector": " * ",
            "revision": 2,
            "canary": {"selector": "canary=true"},
            "soak_secs": 0,
        }))
        .await;
    assert_eq!(started["assignment_id"], json!(f.assignment), "{started:#}");
    assert_eq!(started["from_revision"], 1);
    assert_eq!(started["to_revision"], 2);
    let assignments = f.h.get("/api/v1/assignments").await;
    assert_eq!(assignments.body["items"].as_array().unwrap().len(), 1);
}
