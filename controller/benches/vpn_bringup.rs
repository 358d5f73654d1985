//! A mesh VPN brought up one join at a time through the operator API, on
//! the real controller and PostgreSQL: `SITES` routers (1,000 unless set),
//! with WireGuard facts, join one `PUT /vpns/{id}/members/{device}` after
//! another. Side by side in one run:
//! - every join's peers compiled with it (what a join did before
//!   coalescing: here the join, then at once the pass over what it marked);
//! - coalesced: the joins alone; each member's config is compiled once per
//!   pass window (`reconcile::soon`), and the run ends when nothing is left
//!   marked.
//!
//! Printed per mode: total time, configs signed (the members' version
//! increments) and joins per second.
//!
//! Run: `ISDF_TEST_DATABASE_URL=... SITES=1000 cargo bench -p isdf-controller --bench vpn_bringup`
//! (`MODES=soon` for the coalesced mode alone, `MODES=sync` the other).

use std::time::{Duration, Instant};

use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("one crypto provider");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench());
}

/// What one bring-up cost.
struct BringUp {
    took: Duration,
    signed: i64,
}

/// `sites` routers of one household, each with its WireGuard facts.
async fn household(pool: &PgPool, run: &str, sites: i64) -> (Uuid, Vec<Uuid>) {
    let customer: Uuid = sqlx::query_scalar(
        "INSERT INTO customers (id, name) VALUES (gen_random_uuid(), $1) RETURNING id",
    )
    .bind(format!("household-{run}"))
    .fetch_one(pool)
    .await
    .expect("customer");
    let devices: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO devices (id, name, labels, token_hash, customer_id)
         SELECT gen_random_uuid(), $1 || '-' || i, '{}'::jsonb, sha256(($1 || i)::bytea), $2
         FROM generate_series(1, $3) AS i RETURNING id",
    )
    .bind(run)
    .bind(customer)
    .bind(sites)
    .fetch_all(pool)
    .await
    .expect("routers");
    sqlx::query(
        "INSERT INTO wireguard_facts (device_id, public_key, key_generation, listen_port,
             reachable_address, active_public_key)
         SELECT d, k, 1, 51820, ('198.18.' || (n / 250) || '.' || (n % 250 + 1))::inet, k
         FROM (SELECT d, n, encode(sha256(d::text::bytea), 'base64') AS k
               FROM unnest($1::uuid[]) WITH ORDINALITY AS t(d, n)) keyed",
    )
    .bind(&devices)
    .execute(pool)
    .await
    .expect("facts");
    (customer, devices)
}

async fn signed_so_far(pool: &PgPool, devices: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(version), 0)::bigint FROM device_configs WHERE device_id = ANY($1)",
    )
    .bind(devices)
    .fetch_one(pool)
    .await
    .expect("versions")
}

async fn bring_up(
    controller: &TestController,
    http: &reqwest::Client,
    run: &str,
    sites: i64,
    each_join_compiles_its_peers: bool,
) -> BringUp {
    let pool = &controller.state.pool;
    let (customer, devices) = household(pool, run, sites).await;
    let before = signed_so_far(pool, &devices).await;
    let started = Instant::now();
    let call = |method: reqwest::Method, path: String, body: serde_json::Value| {
        http.request(method, format!("{}{path}", controller.api_url))
            .bearer_auth(&controller.operator_token)
            .json(&body)
            .send()
    };
    let created = call(
        reqwest::Method::POST,
        "/api/v1/vpns".into(),
        json!({"customer_id": customer, "name": run, "topology": "mesh",
               "address_pool": "10.128.0.0/16",
               "members": [{"device_id": devices[0], "prefixes": ["10.0.0.0/24"]}]}),
    )
    .await
    .expect("controller");
    assert!(created.status().is_success(), "{}", created.status());
    let vpn: serde_json::Value = created.json().await.expect("VPN");
    let vpn = vpn["id"].as_str().expect("VPN id").to_owned();
    for (n, device) in devices.iter().enumerate().skip(1) {
        let prefix = format!("10.{}.{}.0/24", n / 256, n % 256);
        let joined = call(
            reqwest::Method::PUT,
            format!("/api/v1/vpns/{vpn}/members/{device}"),
            json!({"prefixes": [prefix]}),
        )
        .await
        .expect("controller");
        assert!(
            joined.status().is_success(),
            "join {n}: {}",
            joined.status()
        );
        if each_join_compiles_its_peers {
            controller
                .state
                .reconciler
                .recompile_pending()
                .await
                .expect("the join's peers");
        }
    }
    // Done when nothing is left marked.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let marked = isdf_controller::db::pending_recompiles::count(pool)
            .await
            .expect("marks");
        if marked == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "marks never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    BringUp {
        took,
        signed: signed_so_far(pool, &devices).await - before,
    }
}

async fn bench() {
    let sites: i64 = std::env::var("SITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(TestControllerOptions::new(dir.path()))
        .await
        .expect("controller (set ISDF_TEST_DATABASE_URL)");
    let http = reqwest::Client::new();
    println!("A {sites}-site mesh VPN brought up one join at a time");
    println!(
        "{:<34} {:>10} {:>15} {:>10}",
        "mode", "total", "configs signed", "joins/s"
    );
    // MODES=soon runs only the coalesced mode (the other signs ~n²/2
    // configs of up to n peers: hours at 1,000 sites).
    let modes = std::env::var("MODES").unwrap_or_else(|_| "sync,soon".into());
    for (label, run, each) in [
        ("every join compiles its peers", "sync", true),
        ("coalesced (reconcile::soon)", "soon", false),
    ] {
        if !modes.split(',').any(|m| m == run) {
            continue;
        }
        let done = bring_up(&controller, &http, run, sites, each).await;
        println!(
            "{:<34} {:>9.1?} {:>15} {:>10.1}",
            label,
            done.took,
            done.signed,
            (sites - 1) as f64 / done.took.as_secs_f64()
        );
    }
    controller.stop().await.unwrap();
}
