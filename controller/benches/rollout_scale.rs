//! A rollout over 10,000 routers on the real controller and PostgreSQL, side
//! by side with the same change applied at once (`PATCH /assignments`).
//! Routers are rows (devices, signed configs, status reports written in
//! bulk): the figures are the controller's own work.
//!
//! Per run, medians over `RUNS` (revisions alternate 1 <-> 2):
//! - all at once: `PATCH /assignments/{id}` until the 10,000 are recompiled
//!   and signed (by the recompile pass, in chunks, after the answer);
//! - `POST /rollouts` (split into 10% canary, 50%, 100%; the canary's
//!   1,000 recompiled and signed before the answer);
//! - `GET /rollouts/{id}` with 10,000 routers in it;
//! - from every released router's report marked applied to the next wave
//!   released and its routers recompiled and signed (the loop's pass:
//!   progress over the wave, the verdict, the release), per wave, and to
//!   completed.
//!
//! Run: `ISDF_TEST_DATABASE_URL=... cargo bench -p isdf-controller --bench rollout_scale`

use std::time::{Duration, Instant};

use isdf_controller::test_support::{TestController, TestControllerOptions};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const ROUTERS: i64 = 10_000;
const RUNS: usize = 5;

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("controller");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }
}

/// Every router reports its current config applied.
async fn all_report_applied(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO device_status (device_id, sequence, report)
         SELECT dc.device_id, 1, jsonb_build_object(
             'sequence', 1, 'enforced_version', dc.version, 'enforced_digest', dc.digest,
             'outcome', 'applied', 'attempted_version', dc.version, 'backend', 'nftables',
             'agent_version', 'bench')
         FROM device_configs dc
         ON CONFLICT (device_id) DO UPDATE
             SET sequence = device_status.sequence + 1, report = EXCLUDED.report, received_at = now()",
    )
    .execute(pool)
    .await
    .expect("status reports");
}

/// Released routers not yet recompiled with the change.
async fn untargeted(pool: &PgPool, rollout: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM rollout_devices
         WHERE rollout_id = $1::uuid AND state <> 'waiting' AND target_version IS NULL",
    )
    .bind(rollout)
    .fetch_one(pool)
    .await
    .expect("counting untargeted routers")
}

/// Waits until the recompile pass compiled every router a change marked
/// (a change of more than 1,000 routers answers before they are compiled).
async fn until_compiled(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let marked = isdf_controller::db::pending_recompiles::count(pool)
            .await
            .expect("counting marked routers");
        if marked == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{marked} routers never compiled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("one crypto provider");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(TestControllerOptions::new(dir.path()))
        .await
        .expect("controller (set ISDF_TEST_DATABASE_URL)");
    let pool = controller.state.pool.clone();
    let api = Api {
        http: reqwest::Client::new(),
        url: controller.api_url.clone(),
        token: controller.operator_token.clone(),
    };
    sqlx::query(
        "INSERT INTO devices (id, name, labels, token_hash)
         SELECT gen_random_uuid(), 'router-' || i, jsonb_build_object('region', 'r' || (i % 20)),
                sha256(('bench-' || i)::bytea)
         FROM generate_series(1, $1) AS i",
    )
    .bind(ROUTERS)
    .execute(&pool)
    .await
    .expect("devices");
    let flows =
        |port: u16| json!({"flows": [{"protocol": "tcp", "dst": "192.0.2.0/24", "dport": port}]});
    let service = api
        .call(
            Method::POST,
            "/api/v1/services",
            Some(json!({"name": "policy", "kind": "flow-block", "spec": flows(1)})),
        )
        .await;
    let service_id = service["id"].as_str().unwrap().to_owned();
    api.call(
        Method::POST,
        &format!("/api/v1/services/{service_id}/revisions"),
        Some(json!({"spec": flows(2)})),
    )
    .await;
    let assignment = api
        .call(
            Method::POST,
            "/api/v1/assignments",
            Some(json!({"service_id": service_id, "revision": 1, "selector": "*"})),
        )
        .await;
    let assignment_id = assignment["id"].as_str().unwrap().to_owned();
    assert_eq!(assignment["recompiled"]["pending"], ROUTERS);
    until_compiled(&pool).await;
    all_report_applied(&pool).await;

    let (mut at_once, mut start, mut view) = (Vec::new(), Vec::new(), Vec::new());
    let mut waves: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut revision = 1;
    for run in 0..RUNS {
        // All at once, there and back.
        revision = 3 - revision;
        let t = Instant::now();
        api.call(
            Method::PATCH,
            &format!("/api/v1/assignments/{assignment_id}"),
            Some(json!({"revision": revision})),
        )
        .await;
        until_compiled(&pool).await;
        at_once.push(t.elapsed());
        all_report_applied(&pool).await;

        // Staged.
        revision = 3 - revision;
        let t = Instant::now();
        let rollout = api
            .call(
                Method::POST,
                "/api/v1/rollouts",
                Some(json!({"assignment_id": assignment_id, "revision": revision,
                            "canary": {"percent": 10}, "waves": [50, 100],
                            "min_applied_share": 1.0, "soak_secs": 0})),
            )
            .await;
        start.push(t.elapsed());
        let id = rollout["id"].as_str().unwrap().to_owned();
        let t = Instant::now();
        let seen = api
            .call(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        view.push(t.elapsed());
        assert_eq!(seen["totals"]["routers"], ROUTERS);
        for (wave, times) in waves.iter_mut().enumerate() {
            all_report_applied(&pool).await;
            controller.state.rollouts.nudge();
            let t = Instant::now();
            let deadline = t + Duration::from_secs(300);
            loop {
                let r = api
                    .call(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
                    .await;
                let next = r["current_wave"].as_u64().unwrap() as usize > wave;
                if r["state"] == "completed" || (next && untargeted(&pool, &id).await == 0) {
                    break;
                }
                assert!(Instant::now() < deadline, "wave {wave} never passed: {r}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            times.push(t.elapsed());
        }
        eprintln!("run {run} done");
    }
    println!("rollout over {ROUTERS} routers (canary 10%, 50%, 100%), medians of {RUNS}:");
    println!(
        "  PATCH /assignments (all at once, 10,000 recompiled): {}",
        ms(median(at_once))
    );
    println!(
        "  POST /rollouts (split + canary of 1,000 recompiled):  {}",
        ms(median(start))
    );
    println!(
        "  GET /rollouts/{{id}}:                                 {}",
        ms(median(view))
    );
    for (wave, times) in waves.into_iter().enumerate() {
        let what = if wave == 2 {
            "reports -> completed".to_owned()
        } else {
            format!("reports -> wave {} released", wave + 1)
        };
        println!("  wave {wave}: {what}: {}", ms(median(times)));
    }
    controller.stop().await.unwrap();
}
