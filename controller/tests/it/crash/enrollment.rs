//! A batch enrollment killed at random points: each run creates a batch of
//! [`BATCH`] enrollment tokens (one transaction) and enrolls [`ENROLLED`]
//! routers with them (one transaction each: the device, its certificate,
//! its first config, the token used and the audit entry). A batch is
//! stored whole or not at all, and a device exists exactly when its token
//! is used, with its config and its audit entry.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;
use uuid::Uuid;

use super::invariants::{
    assert_holds, database_violations, served_violations, versions, versions_went_back,
};
use super::routers::{source_address, Router};
use super::world::{Api, World};
use super::{finish, Campaign};

/// Tokens per batch (the most one call may create).
const BATCH: usize = 1000;
/// Routers enrolled with each batch.
const ENROLLED: usize = 12;
/// Second octet of the loopback addresses the routers enroll from.
const NET: u8 = 22;
/// The batch, then each enrollment.
const STEPS: usize = 1 + ENROLLED;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_enrollment_killed_at_random_points_stores_whole_batches_and_whole_devices() {
    let mut world = World::start("batch enrollment").await;
    let mut campaign = Campaign::new(world.name, STEPS);
    let mut known = HashMap::new();
    let mut routers = Vec::new();

    // Timed as the killed runs meet the controller: just restarted.
    world.kill().await;
    world.restart().await;
    let started = Instant::now();
    let (acknowledged, enrolled) = enroll_batch(world.api(), world.ca_pem.clone(), 0).await;
    campaign.calibrate(started.elapsed());
    assert_eq!(acknowledged, STEPS, "the unkilled run completes");
    routers.extend(enrolled);
    check(&world, &mut known, 0, None).await;

    for run in 1..=campaign.kills {
        let delay = campaign.next_delay();
        let task = tokio::spawn(enroll_batch(world.api(), world.ca_pem.clone(), run));
        tokio::time::sleep(delay).await;
        world.kill().await;
        let (acknowledged, enrolled) = finish(task).await;
        routers.extend(enrolled);
        let committed = committed(&world, run).await;
        campaign.record(delay, committed, acknowledged);
        check(&world, &mut known, run, None).await;

        let crashed = versions(&world.db).await;
        world.restart().await;
        check(&world, &mut known, run, Some(&crashed)).await;
        // Routers that got their certificate are served their config.
        assert_holds(
            &world,
            "after the restart",
            served_violations(&world.api(), &world.db, &routers).await,
        );
    }
    campaign.report();
}

/// The operation: a batch of tokens labelled with the run, then routers
/// enrolling with the first few. Returns the calls answered and the
/// routers that got their certificate.
async fn enroll_batch(api: Api, ca_pem: String, run: usize) -> (usize, Vec<Router>) {
    let batch = api
        .post(
            "/api/v1/enrollment-tokens",
            json!({"count": BATCH, "labels": {"batch": run.to_string()}, "name_prefix": format!("b{run}")}),
        )
        .await;
    let tokens = match batch {
        Ok(body) => body["tokens"].as_array().expect("tokens").clone(),
        Err(e) => {
            e.expect_transport("creating the batch");
            return (0, Vec::new());
        }
    };
    assert_eq!(tokens.len(), BATCH);
    let mut routers = Vec::new();
    for (k, token) in tokens.iter().take(ENROLLED).enumerate() {
        let source = source_address(NET, run * ENROLLED + k);
        match Router::enroll(&api, &ca_pem, token.as_str().expect("a token"), source).await {
            Ok(router) => routers.push(router),
            Err(e) => {
                e.expect_transport("enrolling");
                break;
            }
        }
    }
    (1 + routers.len(), routers)
}

/// How many of run `run`'s commits are stored: its batch, and each
/// enrollment (a used token).
async fn committed(world: &World, run: usize) -> usize {
    let (tokens, used): (i64, i64) = batch(world, run).await;
    usize::from(tokens > 0) + used as usize
}

/// (tokens, used tokens) of run `run`'s batch.
async fn batch(world: &World, run: usize) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(used_at) FROM enrollment_tokens WHERE labels->>'batch' = $1",
    )
    .bind(run.to_string())
    .fetch_one(&world.db)
    .await
    .expect("counting the batch")
}

/// The invariants; the batch whole or absent, one device per used token;
/// with `crashed`, versions equal to those the crash left.
async fn check(
    world: &World,
    known: &mut HashMap<Uuid, i64>,
    run: usize,
    crashed: Option<&HashMap<Uuid, i64>>,
) {
    let mut violations = database_violations(&world.db).await;
    let (tokens, used) = batch(world, run).await;
    if tokens != 0 && tokens != BATCH as i64 {
        violations.push(format!("batch {run} holds {tokens} of {BATCH} tokens"));
    }
    let devices: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE labels->>'batch' = $1")
            .bind(run.to_string())
            .fetch_one(&world.db)
            .await
            .expect("counting devices");
    if devices != used {
        violations.push(format!(
            "batch {run}: {used} tokens used, {devices} devices created"
        ));
    }
    let now = versions(&world.db).await;
    violations.extend(versions_went_back(known, &now, "versions"));
    if let Some(crashed) = crashed {
        if *crashed != now {
            violations.push(format!(
                "the restart changed configs: {crashed:?} after the crash, {now:?} after"
            ));
        }
    }
    assert_holds(world, "the enrollment", violations);
    *known = now;
}
