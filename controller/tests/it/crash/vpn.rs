//! VPN joins killed at random points: each run adds [`JOINS`] routers, one
//! call each, to a mesh VPN; a join gives the router the lowest free tunnel
//! address and compiles its config in the join's transaction, and marks
//! every other member (each gains a peer) to be compiled within a moment
//! (`pending_recompiles`, in the same transaction). Whatever the kill,
//! every member has its address and its audit entry, every member's stored
//! config not marked has exactly the other members as peers, and once the
//! controller is back the marked ones do too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use base64::Engine;
use rand::RngCore;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use super::invariants::{
    assert_holds, configs, database_violations, device_config, served_violations, versions,
    versions_went_back,
};
use super::routers::enroll_fleet;
use super::world::{Api, World};
use super::{finish, Campaign};

/// Members from the start (more make each join's recompile longer).
const INITIAL: usize = 12;
/// Routers joining in each run.
const JOINS: usize = 3;
/// Second octet of the loopback addresses the routers enroll from.
const NET: u8 = 23;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpn_joins_killed_at_random_points_leave_every_member_addressed_audited_and_peered() {
    let mut world = World::start("VPN join").await;
    let mut campaign = Campaign::new(world.name, JOINS);
    let sites = INITIAL + JOINS * (campaign.kills + 1);
    let api = world.api();
    let routers = enroll_fleet(&api, &world.ca_pem, sites, json!({"site": "yes"}), NET).await;
    for router in &routers {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        router
            .report_facts(&api, &key)
            .await
            .unwrap_or_else(|e| panic!("WireGuard facts: {e:?}"));
    }
    let ids: Vec<String> = routers.iter().map(|r| r.id.to_string()).collect();
    let customer = api
        .must(
            Method::POST,
            "/api/v1/customers",
            Some(json!({"name": "crash-home", "devices": ids})),
        )
        .await;
    let members: Vec<Value> = (0..INITIAL)
        .map(|n| json!({"device_id": ids[n], "prefixes": [prefix(n)]}))
        .collect();
    let vpn = api
        .must(
            Method::POST,
            "/api/v1/vpns",
            Some(json!({
                "customer_id": customer["id"], "name": "home", "topology": "mesh",
                "address_pool": "10.77.0.0/24", "members": members,
            })),
        )
        .await["id"]
        .as_str()
        .expect("VPN id")
        .to_owned();
    let mut known = versions(&world.db).await;
    check(&world, &mut known, None).await;

    // Timed as the killed runs meet the controller: just restarted.
    world.kill().await;
    world.restart().await;
    let started = Instant::now();
    let acknowledged = join(world.api(), vpn.clone(), ids.clone(), 0).await;
    campaign.calibrate(started.elapsed());
    assert_eq!(acknowledged, JOINS, "the unkilled run completes");
    settled(&world).await;
    check(&world, &mut known, None).await;

    for run in 1..=campaign.kills {
        let delay = campaign.next_delay();
        let task = tokio::spawn(join(world.api(), vpn.clone(), ids.clone(), run));
        tokio::time::sleep(delay).await;
        world.kill().await;
        let acknowledged = finish(task).await;
        let committed = committed(&world, &ids, run).await;
        campaign.record(delay, committed, acknowledged);
        check(&world, &mut known, None).await;

        let crashed = Crashed {
            versions: versions(&world.db).await,
            pending: pending(&world.db).await,
        };
        world.restart().await;
        settled(&world).await;
        check(&world, &mut known, Some(&crashed)).await;
        assert_holds(
            &world,
            "after the restart",
            served_violations(&world.api(), &world.db, &routers).await,
        );
    }
    campaign.report();
}

/// Router `n`'s LAN.
fn prefix(n: usize) -> String {
    format!("192.168.{n}.0/24")
}

/// The routers run `run` adds.
fn joining(run: usize) -> std::ops::Range<usize> {
    let first = INITIAL + JOINS * run;
    first..first + JOINS
}

/// The operation: the run's routers join one after the other. Returns how
/// many joins were answered.
async fn join(api: Api, vpn: String, ids: Vec<String>, run: usize) -> usize {
    let mut answered = 0;
    for n in joining(run) {
        let path = format!("/api/v1/vpns/{vpn}/members/{}", ids[n]);
        match api
            .call(Method::PUT, &path, Some(json!({"prefixes": [prefix(n)]})))
            .await
        {
            Ok(_) => answered += 1,
            Err(e) => {
                e.expect_transport("joining");
                break;
            }
        }
    }
    answered
}

/// How many of run `run`'s joins are stored.
async fn committed(world: &World, ids: &[String], run: usize) -> usize {
    let joining: Vec<Uuid> = joining(run).map(|n| ids[n].parse().unwrap()).collect();
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM vpn_members WHERE device_id = ANY($1)")
        .bind(&joining)
        .fetch_one(&world.db)
        .await
        .expect("counting members") as usize
}

/// What a crash left: config versions and the routers marked to recompile.
struct Crashed {
    versions: HashMap<Uuid, i64>,
    pending: HashSet<Uuid>,
}

/// The routers marked to recompile within a moment.
async fn pending(db: &sqlx::PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar("SELECT device_id FROM pending_recompiles")
        .fetch_all(db)
        .await
        .expect("reading pending recompiles")
        .into_iter()
        .collect()
}

/// Waits (at most 60 s) until the running controller compiled every marked
/// router.
async fn settled(world: &World) {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !pending(&world.db).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "marked routers were not compiled within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The invariants; every member's stored config peers with exactly the
/// other members' keys and every other router's has no tunnel, unless it is
/// marked to recompile; with `crashed`, versions equal to those the crash
/// left but for the routers it left marked.
async fn check(world: &World, known: &mut HashMap<Uuid, i64>, crashed: Option<&Crashed>) {
    let mut violations = database_violations(&world.db).await;
    let marked = pending(&world.db).await;
    let keys: HashMap<Uuid, String> = sqlx::query_as(
        "SELECT m.device_id, f.active_public_key FROM vpn_members m
         JOIN wireguard_facts f ON f.device_id = m.device_id",
    )
    .fetch_all(&world.db)
    .await
    .expect("reading members")
    .into_iter()
    .collect();
    for (device, _, envelope) in configs(&world.db).await {
        let peers: BTreeSet<String> = device_config(&envelope)
            .firewall
            .wireguard
            .iter()
            .flat_map(|w| &w.tunnels)
            .flat_map(|t| &t.peers)
            .map(|p| p.public_key.to_string())
            .collect();
        let expected: BTreeSet<String> = if keys.contains_key(&device) {
            keys.iter()
                .filter(|(other, _)| **other != device)
                .map(|(_, key)| key.clone())
                .collect()
        } else {
            BTreeSet::new()
        };
        if peers != expected && !marked.contains(&device) {
            violations.push(format!(
                "device {device} has {} peers, the VPN's other {} members are not them",
                peers.len(),
                expected.len()
            ));
        }
    }
    let now = versions(&world.db).await;
    violations.extend(versions_went_back(known, &now, "versions"));
    if let Some(crashed) = crashed {
        let changed: Vec<&Uuid> = now
            .iter()
            .filter(|(device, version)| crashed.versions.get(device) != Some(version))
            .map(|(device, _)| device)
            .filter(|device| !crashed.pending.contains(device))
            .collect();
        if !changed.is_empty() || now.len() != crashed.versions.len() {
            violations.push(format!(
                "the restart changed configs the crash left, not marked: {changed:?}"
            ));
        }
    }
    assert_holds(world, "the VPN", violations);
    *known = now;
}
