//! Agent upgrades as desired state, against the real controller (routers
//! simulated by their status reports; the agents' own install and revert
//! are the agent's end-to-end tests): an `agent-release` service compiles
//! into each router's config the build for the target it reports, or none
//! (shown as missing); a staged rollout of it passes a wave only on
//! routers that report running the new version, and a reverted upgrade
//! fails the canary.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::releases::{binary, key, manifest_of, put_binary, sealed};
use crate::support::{DeviceHandle, Harness};

const X86: &str = "x86_64-unknown-linux-musl";
const MIPS: &str = "mips-unknown-linux-musl";

struct Router {
    id: String,
    handle: DeviceHandle,
    sequence: u64,
    target: &'static str,
}

impl Router {
    /// Reports `outcome` for the router's current config, running `agent`.
    async fn report(&mut self, h: &Harness, outcome: &str, agent: &str, errors: &[&str]) {
        let version = h.config_version(&self.id).await;
        self.sequence += 1;
        let r = self
            .handle
            .http
            .post(self.handle.url(isdf_api::paths::DEVICE_STATUS))
            .json(&json!({
                "sequence": self.sequence,
                "enforced_version": version,
                "enforced_digest": null,
                "outcome": outcome,
                "attempted_version": version,
                "errors": errors,
                "backend": "nftables",
                "agent_version": agent,
                "agent_target": self.target,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

/// Creates and uploads a release of `version` for `target`; returns its
/// SHA-256.
async fn release(h: &Harness, version: &str, target: &str, seed: u8) -> String {
    let bytes = binary(50_000, seed);
    let manifest = manifest_of(&bytes, version, target);
    let r = h
        .post(
            "/api/v1/agent-releases",
            json!({"manifest": sealed(&manifest, &key(h, "release-key.pem"))}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (status, body) = put_binary(h, r.body["id"].as_str().unwrap(), bytes).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    manifest.sha256
}

/// The `agent_release` of a router's current config (null when none).
async fn agent_release(h: &Harness, id: &str) -> Value {
    let r = h.get(&format!("/api/v1/devices/{id}/config")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["config"]["agent_release"].clone()
}

/// The health the device list shows for `name`.
async fn health(h: &Harness, name: &str) -> Value {
    let list = h.get(&format!("/api/v1/devices?q={name}")).await;
    list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}", list.body))["health"]
        .clone()
}

/// Waits (at most 20 s) until `check` holds of what `read` returns.
async fn until<F, Fut>(what: &str, read: F, check: impl Fn(&Value) -> bool) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = read().await;
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "never {what}: {value:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three routers on 0.4.0 (r0 the canary, r2 a MIPS router), all applied.
async fn fleet(h: &Harness) -> Vec<Router> {
    let mut routers = Vec::new();
    for (i, target) in [X86, X86, MIPS].into_iter().enumerate() {
        let labels = if i == 0 {
            json!({"canary": "true"})
        } else {
            json!({})
        };
        let (id, handle) = h.device(&format!("up{i}"), labels).await;
        let mut router = Router {
            id,
            handle,
            sequence: 0,
            target,
        };
        router.report(h, "applied", "0.4.0", &[]).await;
        routers.push(router);
    }
    routers
}

async fn rollout_of_release(h: &Harness, version: &str) -> String {
    let service = h
        .post(
            "/api/v1/services",
            json!({"name": format!("agent-{version}"), "kind": "agent-release",
                   "spec": {"version": version}}),
        )
        .await;
    assert_eq!(service.status, StatusCode::CREATED, "{}", service.body);
    let started = h
        .post(
            "/api/v1/rollouts",
            json!({"service_id": service.body["id"], "selector": "*",
                   "canary": {"selector": "canary=true"}, "waves": [100], "soak_secs": 0}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    started.body["id"].as_str().unwrap().to_owned()
}

async fn rollout(h: &Harness, id: &str) -> Value {
    h.get(&format!("/api/v1/rollouts/{id}")).await.body
}

#[tokio::test]
async fn a_release_reaches_each_router_for_its_target_wave_by_wave_as_they_run_it() {
    let h = Harness::start().await;
    let mut routers = fleet(&h).await;
    let sha = release(&h, "0.5.0", X86, 1).await;
    // An invalid spec is refused like any other.
    let bad = h
        .post(
            "/api/v1/services",
            json!({"name": "bad", "kind": "agent-release", "spec": {"version": "../0"}}),
        )
        .await;
    assert_eq!(bad.body["error"]["code"], "invalid_spec", "{}", bad.body);

    let id = rollout_of_release(&h, "0.5.0").await;
    let canary = agent_release(&h, &routers[0].id).await;
    assert_eq!(canary["path"], format!("/device/v1/releases/{sha}"));
    assert!(canary.get("allow_downgrade").is_none(), "{canary}");
    let manifest = isdf_api::release::open_release(
        &serde_json::to_vec(&canary["manifest"]).unwrap(),
        &isdf_api::TrustedKeys::new([key(&h, "release-key.pem").verifying_key()]),
    )
    .unwrap();
    assert_eq!(
        (manifest.version.as_str(), manifest.target.as_str()),
        ("0.5.0", X86)
    );
    assert_eq!(
        agent_release(&h, &routers[1].id).await,
        Value::Null,
        "not released yet"
    );
    assert_eq!(health(&h, "up0").await["wanted_agent_version"], "0.5.0");

    // The canary applied the config but still runs 0.4.0 (downloading):
    // the wave waits.
    routers[0].report(&h, "applied", "0.4.0", &[]).await;
    // Given the rollout loop a moment: this can only miss a wrong release,
    // never fail a right one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = rollout(&h, &id).await;
    assert_eq!(
        (
            r["current_wave"].as_u64(),
            r["waves"][0]["applied"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r:#}"
    );
    // It runs 0.5.0: the next wave is released.
    routers[0].report(&h, "applied", "0.5.0", &[]).await;
    until(
        "wave 1 released",
        || rollout(&h, &id),
        |r| r["current_wave"] == 1,
    )
    .await;
    assert_eq!(
        agent_release(&h, &routers[1].id).await["path"],
        format!("/device/v1/releases/{sha}")
    );
    // No build for the MIPS router: it gets none and is shown missing it.
    assert_eq!(agent_release(&h, &routers[2].id).await, Value::Null);
    let mips = health(&h, "up2").await;
    assert_eq!(mips["agent_release_missing"], "0.5.0", "{mips}");
    assert!(mips.get("wanted_agent_version").is_none(), "{mips}");
    let overview = h.get("/api/v1/fleet/overview").await.body;
    assert_eq!(
        overview["release_missing"],
        json!([{"value": "0.5.0", "count": 1}]),
        "{overview}"
    );
    // Its build arrives: it gets it without another operator step.
    let mips_sha = release(&h, "0.5.0", MIPS, 2).await;
    until(
        "the MIPS build compiled in",
        || agent_release(&h, &routers[2].id),
        |r| r["path"] == format!("/device/v1/releases/{mips_sha}"),
    )
    .await;
    assert_eq!(
        h.get("/api/v1/fleet/overview").await.body["release_missing"],
        json!([])
    );
    for router in &mut routers[1..] {
        router.report(&h, "applied", "0.5.0", &[]).await;
    }
    until(
        "completed",
        || rollout(&h, &id),
        |r| r["state"] == "completed",
    )
    .await;
}

#[tokio::test]
async fn a_reverted_upgrade_fails_the_canary_and_pauses_the_rollout() {
    let h = Harness::start().await;
    let mut routers = fleet(&h).await;
    release(&h, "0.6.0", X86, 3).await;
    let id = rollout_of_release(&h, "0.6.0").await;
    let before = h.config_version(&routers[1].id).await;
    routers[0]
        .report(
            &h,
            "rolled_back",
            "0.4.0",
            &["upgrade_reverted: the new agent exited with status 1 before it reached the controller"],
        )
        .await;
    let paused = until("paused", || rollout(&h, &id), |r| r["state"] == "paused").await;
    assert_eq!(paused["waves"][0]["failed"], 1, "{paused:#}");
    assert_eq!(
        h.config_version(&routers[1].id).await,
        before,
        "r1 never got it"
    );
    assert_eq!(agent_release(&h, &routers[1].id).await, Value::Null);
}

#[tokio::test]
async fn a_router_that_reports_another_target_is_compiled_for_it() {
    let h = Harness::start().await;
    let mut routers = fleet(&h).await;
    release(&h, "0.7.0", X86, 4).await;
    let service = h
        .post(
            "/api/v1/services",
            json!({"name": "agent", "kind": "agent-release", "spec": {"version": "0.7.0"}}),
        )
        .await;
    let assigned = h.assign(service.body["id"].as_str().unwrap(), "*").await;
    assert_eq!(assigned.status, StatusCode::CREATED, "{}", assigned.body);
    assert_eq!(agent_release(&h, &routers[2].id).await, Value::Null);
    // The MIPS router was re-flashed with an x86 build (say, a new box
    // under the same identity): its next report changes what it gets.
    routers[2].target = X86;
    routers[2].report(&h, "applied", "0.4.0", &[]).await;
    until(
        "the x86 build compiled in",
        || agent_release(&h, &routers[2].id),
        |r| !r.is_null(),
    )
    .await;
}
