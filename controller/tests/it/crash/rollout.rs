//! A rollout killed at random points while its waves release: each run
//! adds a revision and rolls it out to [`ROUTERS`] simulated routers in
//! four waves (canary, 40 %, 70 %, 100 %, no soak); the routers poll,
//! enforce and report over the device API, and the controller's loop
//! releases each wave when the one before passed. Whatever the kill, the
//! rollout is stored with its waves and its canary released or not at all,
//! every released router has its target, every step its event and audit
//! entry once; after the restart the rollout resumes where it was and
//! completes, every router ending on the new revision.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::invariants::{
    assert_holds, configs, database_violations, device_config, served_violations, versions,
    versions_went_back,
};
use super::routers::{enroll_fleet, Router};
use super::world::{Api, CallError, World};
use super::{finish, Campaign};

const ROUTERS: usize = 20;
/// Second octet of the loopback addresses the routers enroll from.
const NET: u8 = 24;
/// Waves after the canary (cumulative percentages).
const WAVES: [u32; 3] = [40, 70, 100];
/// The revision, the rollout with its canary, each later wave, completion.
const STEPS: usize = 2 + WAVES.len() + 1;
/// Longest a rollout may take to complete once started or restarted.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone)]
struct Fleet {
    service: String,
    assignment: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_killed_at_random_points_while_waves_release_resumes_and_completes() {
    let mut world = World::start("rollout waves").await;
    let api = world.api();
    let mut routers = enroll_fleet(&api, &world.ca_pem, ROUTERS, json!({}), NET).await;
    let spec = json!({"flows": [{"protocol": "tcp", "dport": port(0)}]});
    let service = api
        .must(
            Method::POST,
            "/api/v1/services",
            Some(json!({"name": "blocklist", "kind": "flow-block", "spec": spec})),
        )
        .await["id"]
        .as_str()
        .expect("service id")
        .to_owned();
    let assignment = api
        .must(
            Method::POST,
            "/api/v1/assignments",
            Some(json!({"service_id": service, "selector": "*"})),
        )
        .await["id"]
        .as_str()
        .expect("assignment id")
        .to_owned();
    for router in &mut routers {
        router.poll_and_apply(&api).await.expect("first config");
    }
    let fleet = Fleet {
        service,
        assignment,
    };
    let mut campaign = Campaign::new(world.name, STEPS);
    let mut known = versions(&world.db).await;

    // Timed as the killed runs meet the controller: just restarted.
    world.kill().await;
    world.restart().await;
    let started = Instant::now();
    let (acknowledged, rollout, back) = roll_out(world.api(), fleet.clone(), routers, 1).await;
    routers = back;
    campaign.calibrate(started.elapsed());
    assert_eq!(acknowledged, STEPS, "the unkilled run completes");
    check(&world, &mut known, &routers, rollout.as_deref(), 1).await;

    for run in 2..=campaign.kills + 1 {
        let delay = campaign.next_delay();
        let task = tokio::spawn(roll_out(world.api(), fleet.clone(), routers, run));
        tokio::time::sleep(delay).await;
        world.kill().await;
        let (acknowledged, _, back) = finish(task).await;
        routers = back;
        let (committed, rollout) = committed(&world, &fleet, run).await;
        campaign.record(delay, committed, acknowledged);
        let mut violations = database_violations(&world.db).await;
        let crashed = versions(&world.db).await;
        violations.extend(versions_went_back(&known, &crashed, "versions"));
        // Configs are served only once committed: no router was given a
        // version the crash took back (it would refuse the same version
        // number with other content after the restart).
        violations.extend(routers.iter().filter_map(|r| {
            let stored = crashed.get(&r.id).copied().unwrap_or(0);
            (r.enforced as i64 > stored).then(|| {
                format!(
                    "router {} enforces version {}, only {stored} is stored",
                    r.id, r.enforced
                )
            })
        }));
        assert_holds(&world, "the state the crash left", violations);

        let released = targets(&world, rollout.as_deref()).await;
        world.restart().await;
        let api = world.api();
        if let Some(id) = &rollout {
            // The loop picks the rollout up where it was.
            drive(&api, &mut routers, id, Instant::now() + COMPLETION_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("after the restart: {e:?}\n{}", world.log_tail()));
        }
        // Where it was: routers released before the crash kept their target.
        let after = targets(&world, rollout.as_deref()).await;
        let moved: Vec<String> = released
            .iter()
            .filter(|(device, target)| after.get(device) != Some(target))
            .map(|(device, target)| {
                format!(
                    "router {device}: target {target} became {:?}",
                    after.get(device)
                )
            })
            .collect();
        assert_holds(&world, "the resumed rollout", moved);
        check(&world, &mut known, &routers, rollout.as_deref(), run).await;
    }
    campaign.report();
}

/// The port run `run`'s revision blocks.
fn port(run: usize) -> usize {
    50_000 + run
}

/// The operation: a new revision, a rollout of it, the routers enforcing
/// whatever they are given until it completes. Returns the commits seen
/// answered, the rollout and the routers (with what they enforce).
async fn roll_out(
    api: Api,
    fleet: Fleet,
    mut routers: Vec<Router>,
    run: usize,
) -> (usize, Option<String>, Vec<Router>) {
    let spec = json!({"spec": {"flows": [{"protocol": "tcp", "dport": port(run)}]}});
    let path = format!("/api/v1/services/{}/revisions", fleet.service);
    let revision = match api.post(&path, spec).await {
        Ok(body) => body["revision"].as_i64().expect("revision"),
        Err(e) => {
            e.expect_transport("adding a revision");
            return (0, None, routers);
        }
    };
    let body = json!({
        "assignment_id": fleet.assignment, "revision": revision,
        "canary": {"percent": 10}, "waves": WAVES,
        "min_applied_share": 1.0, "soak_secs": 0, "offline_timeout_secs": 3600,
    });
    let id = match api.post("/api/v1/rollouts", body).await {
        Ok(view) => view["id"].as_str().expect("rollout id").to_owned(),
        Err(e) => {
            e.expect_transport("starting the rollout");
            return (1, None, routers);
        }
    };
    let deadline = Instant::now() + COMPLETION_TIMEOUT;
    let mut seen = 2;
    let outcome = drive_seeing(&api, &mut routers, &id, deadline, &mut seen).await;
    if let Err(e) = outcome {
        e.expect_transport("driving the rollout");
    }
    (seen, Some(id), routers)
}

/// Routers poll, enforce and report until rollout `id` completes.
async fn drive(
    api: &Api,
    routers: &mut [Router],
    id: &str,
    deadline: Instant,
) -> Result<(), CallError> {
    drive_seeing(api, routers, id, deadline, &mut 0).await
}

/// [`drive`], counting in `seen` the commits it saw (2 + the current wave,
/// and 1 for completion).
async fn drive_seeing(
    api: &Api,
    routers: &mut [Router],
    id: &str,
    deadline: Instant,
    seen: &mut usize,
) -> Result<(), CallError> {
    loop {
        for router in routers.iter_mut() {
            router.poll_and_apply(api).await?;
        }
        let rollout = api.get(&format!("/api/v1/rollouts/{id}")).await?;
        let state = rollout["state"].as_str().expect("state");
        *seen = 2
            + rollout["current_wave"].as_u64().expect("wave") as usize
            + usize::from(state == "completed");
        match state {
            "completed" => return Ok(()),
            "running" => {}
            other => panic!("rollout {id} is {other}: {rollout:#}"),
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} did not complete within {COMPLETION_TIMEOUT:?}: {rollout:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many of run `run`'s commits are stored, and its rollout if stored.
async fn committed(world: &World, fleet: &Fleet, run: usize) -> (usize, Option<String>) {
    let service: Uuid = fleet.service.parse().unwrap();
    let revision: Option<i32> = sqlx::query_scalar(
        "SELECT revision FROM service_revisions
         WHERE service_id = $1 AND (spec->'flows'->0->>'dport')::int = $2",
    )
    .bind(service)
    .bind(port(run) as i32)
    .fetch_optional(&world.db)
    .await
    .expect("finding the revision");
    let Some(revision) = revision else {
        return (0, None);
    };
    let rollout: Option<(Uuid, i32, String)> = sqlx::query_as(
        "SELECT id, current_wave, state FROM rollouts WHERE service_id = $1 AND to_revision = $2",
    )
    .bind(service)
    .bind(revision)
    .fetch_optional(&world.db)
    .await
    .expect("finding the rollout");
    match rollout {
        None => (1, None),
        Some((id, wave, state)) => (
            2 + wave as usize + usize::from(state == "completed"),
            Some(id.to_string()),
        ),
    }
}

/// The target version of each router rollout `id` released.
async fn targets(world: &World, id: Option<&str>) -> HashMap<Uuid, i64> {
    let Some(id) = id else {
        return HashMap::new();
    };
    sqlx::query_as(
        "SELECT device_id, target_version FROM rollout_devices
         WHERE rollout_id = $1::uuid AND target_version IS NOT NULL",
    )
    .bind(id)
    .fetch_all(&world.db)
    .await
    .expect("reading targets")
    .into_iter()
    .collect()
}

/// After a completed run: the invariants, every router on run `run`'s
/// revision (served exactly what is stored), versions never lower.
async fn check(
    world: &World,
    known: &mut HashMap<Uuid, i64>,
    routers: &[Router],
    rollout: Option<&str>,
    run: usize,
) {
    let mut violations = database_violations(&world.db).await;
    let now = versions(&world.db).await;
    violations.extend(versions_went_back(known, &now, "versions"));
    if let Some(id) = rollout {
        let state: String = sqlx::query_scalar("SELECT state FROM rollouts WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&world.db)
            .await
            .expect("the rollout");
        if state != "completed" {
            violations.push(format!("rollout {id} is {state} after driving it"));
        }
        let blocked = port(run).to_string();
        for (device, _, envelope) in configs(&world.db).await {
            let firewall = serde_json::to_string(&device_config(&envelope).firewall).unwrap();
            if !firewall.contains(&blocked) {
                violations.push(format!("device {device} does not block port {blocked}"));
            }
        }
    }
    violations.extend(served_violations(&world.api(), &world.db, routers).await);
    assert_holds(world, "after the rollout", violations);
    *known = now;
}
