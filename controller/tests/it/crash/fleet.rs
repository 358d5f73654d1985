//! A fleet-wide recompile killed at random points: each run creates a
//! service and assigns it to `*`, which recompiles, signs and stores the
//! config of every one of [`FLEET`] routers in the assignment's
//! transaction. Whatever the kill, the fleet is all on the old config or
//! all on the new one, never split.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;
use uuid::Uuid;

use super::invariants::{
    assert_holds, database_violations, served_violations, versions, versions_went_back,
};
use super::routers::enroll_fleet;
use super::world::{Api, World};
use super::{finish, Campaign};

/// Routers recompiled by each run.
const FLEET: usize = 300;
/// Second octet of the loopback addresses the routers enroll from.
const NET: u8 = 21;
/// The service is created, then assigned.
const STEPS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_recompile_killed_at_random_points_is_all_or_nothing() {
    let mut world = World::start("fleet recompile").await;
    let routers = enroll_fleet(
        &world.api(),
        &world.ca_pem,
        FLEET,
        json!({"fleet": "yes"}),
        NET,
    )
    .await;
    let mut campaign = Campaign::new(world.name, STEPS);
    let mut known = versions(&world.db).await;

    // Timed as the killed runs meet the controller: just restarted.
    world.kill().await;
    world.restart().await;
    let started = Instant::now();
    let acknowledged = recompile_everything(world.api(), 0).await;
    campaign.calibrate(started.elapsed());
    assert_eq!(acknowledged, STEPS, "the unkilled run completes");
    check_fleet(&world, &mut known, None).await;
    assert_holds(
        &world,
        "unkilled",
        served_violations(&world.api(), &world.db, &routers).await,
    );

    for run in 1..=campaign.kills {
        let delay = campaign.next_delay();
        let task = tokio::spawn(recompile_everything(world.api(), run));
        tokio::time::sleep(delay).await;
        world.kill().await;
        let acknowledged = finish(task).await;
        let committed = committed(&world, run).await;
        campaign.record(delay, committed, acknowledged);
        check_fleet(&world, &mut known, None).await;

        let crashed = versions(&world.db).await;
        world.restart().await;
        // The restart's catch-up recompile finds nothing to change: every
        // stored config already was the committed state's.
        check_fleet(&world, &mut known, Some(&crashed)).await;
        assert_holds(
            &world,
            "after the restart",
            served_violations(&world.api(), &world.db, &routers).await,
        );
    }
    campaign.report();
}

/// The operation: a new service (one flow, its own port) assigned to every
/// router. Returns how many of its two calls were answered.
async fn recompile_everything(api: Api, run: usize) -> usize {
    let spec = json!({"flows": [{"protocol": "tcp", "dport": 40000 + run}]});
    let created = api
        .post(
            "/api/v1/services",
            json!({"name": format!("fleet-{run}"), "kind": "flow-block", "spec": spec}),
        )
        .await;
    let service = match created {
        Ok(body) => body["id"].as_str().expect("service id").to_owned(),
        Err(e) => {
            e.expect_transport("creating the service");
            return 0;
        }
    };
    match api
        .post(
            "/api/v1/assignments",
            json!({"service_id": service, "selector": "*"}),
        )
        .await
    {
        Ok(_) => 2,
        Err(e) => {
            e.expect_transport("assigning it to every router");
            1
        }
    }
}

/// How many of run `run`'s commits are stored.
async fn committed(world: &World, run: usize) -> usize {
    sqlx::query_scalar::<_, i64>(
        "SELECT (SELECT count(*) FROM services WHERE name = $1)
              + (SELECT count(*) FROM assignments a JOIN services s ON s.id = a.service_id
                 WHERE s.name = $1)",
    )
    .bind(format!("fleet-{run}"))
    .fetch_one(&world.db)
    .await
    .expect("counting commits") as usize
}

/// The invariants, and the fleet in step: every router compiled from the
/// same committed assignments (one digest) at version 1 + their number
/// (each fleet-wide assignment moved every router by exactly one). With
/// `crashed`, versions must equal those the crash left.
async fn check_fleet(
    world: &World,
    known: &mut HashMap<Uuid, i64>,
    crashed: Option<&HashMap<Uuid, i64>>,
) {
    let mut violations = database_violations(&world.db).await;
    let now = versions(&world.db).await;
    violations.extend(versions_went_back(known, &now, "versions"));
    if let Some(crashed) = crashed {
        violations.extend(
            crashed
                .iter()
                .filter(|(device, v)| now.get(device) != Some(v))
                .map(|(device, v)| {
                    format!(
                        "device {device}: version {v} after the crash, {:?} after the restart",
                        now.get(device)
                    )
                }),
        );
    }
    let (assignments, digests, lowest, highest): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM assignments), count(DISTINCT digest),
                min(version), max(version) FROM device_configs",
    )
    .fetch_one(&world.db)
    .await
    .expect("reading the fleet");
    if digests != 1 || lowest != highest || lowest != 1 + assignments {
        violations.push(format!(
            "the fleet is split: {digests} digests, versions {lowest} to {highest}, \
             {assignments} assignments"
        ));
    }
    assert_holds(world, "the fleet", violations);
    *known = now;
}
