//! Replicas of the controller on one PostgreSQL, any request reaching any
//! of them: a change committed through one wakes the long polls held on
//! another; a status report on one opens the portal wait and moves the
//! dashboard on another; a deleted device is refused by all; a dropped
//! listening connection loses nothing; the background loops run on one
//! replica and move to another when it is killed (a real SIGKILL of the
//! controller binary).

use std::future::Future;
use std::time::{Duration, Instant};

use isdf_controller::reconcile::live::Topic;
use isdf_controller::test_support::create_test_database;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::crash::process::{log_tail, ControllerProcess};
use crate::support::{report_status, Harness};

/// Longest wait for anything in these tests (it takes milliseconds).
const PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `check` holds, at most [`PATIENCE`].
pub(crate) async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_wakes_a_long_poll_held_on_another() {
    let h = Harness::start().await;
    let b = h.replica().await;
    let (id, device) = h.device("home-1", json!({"region": "north"})).await;
    let device_id: Uuid = id.parse().unwrap();
    let at_b = device.at(&b.device_url);
    let before = h.config_version(&id).await as u64;
    until("B serves the config A compiled", || async {
        b.state.cache.version(device_id) == Some(before)
    })
    .await;

    let held = h.poll(&at_b, Some(before), 30);
    let change = async {
        until("the long poll is held on B", || async {
            b.state.device_gate.polls_held(device_id) == 1
        })
        .await;
        let service = h
            .flow_block("block", json!({"flows": [{"dst": "192.0.2.9/32"}]}))
            .await;
        let assigned = h.assign(&service, "region=north").await;
        assert_eq!(assigned.status, StatusCode::CREATED, "{}", assigned.body);
    };
    let ((status, etag, envelope), ()) = tokio::join!(held, change);
    assert_eq!(
        status,
        StatusCode::OK,
        "B's poll answers with the new config"
    );
    let after = h.config_version(&id).await as u64;
    assert!(after > before);
    assert_eq!(etag, Some(format!("\"{after}\"")));
    // Exactly what A signed and stored.
    let stored = h.controller.state.cache.current(device_id).unwrap();
    assert_eq!(envelope, stored.envelope.to_vec());
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_report_on_one_replica_opens_the_portal_wait_and_moves_the_dashboard_on_another() {
    let h = Harness::start().await;
    let (id, device) = h.device("home-1", json!({})).await;
    let site = h
        .post(
            "/api/v1/sites",
            json!({"catalog": "main", "name": "Video", "domains": ["video.test"],
                   "currency": "EUR", "passes": [{"duration_secs": 3600, "price": 250}]}),
        )
        .await;
    assert_eq!(site.status, StatusCode::CREATED, "{}", site.body);
    let site_id = site.body["id"].as_i64().unwrap();
    let customer = h
        .post(
            "/api/v1/customers",
            json!({"name": "household-1", "devices": [id]}),
        )
        .await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let service = h
        .post(
            "/api/v1/services",
            json!({"name": "pps", "kind": "pay-per-site", "spec": {"catalog": "main"}}),
        )
        .await;
    h.assign(service.body["id"].as_str().unwrap(), "*").await;
    let b = h.replica().await;
    let bought = h
        .post(
            "/api/v1/purchases",
            json!({"customer_id": customer.body["id"], "site_id": site_id, "duration_secs": 3600}),
        )
        .await;
    assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);
    let config = h.get(&format!("/api/v1/devices/{id}/config")).await;
    let version = config.body["version"].as_u64().unwrap();
    let site_url = config.body["config"]["firewall"]["portal"]["sites"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = site_url.rsplit_once("sig=").unwrap().1;

    // The customer's page waits on A; the router reports to B.
    let open_url = format!(
        "{}/p/{id}/{site_id}/open?sig={sig}&version={version}",
        h.controller.portal_url
    );
    let waiting = tokio::spawn(async move {
        let answer = reqwest::get(open_url).await.unwrap();
        answer.json::<Value>().await.unwrap()
    });
    let mut dashboard_on_a = h.controller.state.live.subscribe();
    let at_b = device.at(&b.device_url);
    assert_eq!(
        report_status(&at_b, 1, "applied", Some(version), "t").await,
        StatusCode::NO_CONTENT
    );
    let opened = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("open answers once the router reported to B")
        .unwrap();
    assert_eq!(opened, json!({"open": true, "url": "http://video.test/"}));
    let device_id: Uuid = id.parse().unwrap();
    let told = tokio::time::timeout(PATIENCE, async {
        loop {
            if dashboard_on_a.recv().await.unwrap() == Topic::Device(device_id) {
                return;
            }
        }
    })
    .await;
    assert!(told.is_ok(), "A's dashboard heard of B's status report");
    assert_eq!(h.controller.state.cache.enforced(device_id), version);
    b.stop().await.unwrap();
}

/// A router polls within milliseconds of its enrollment, through any
/// replica: one that has not heard of the device yet asks the database
/// (the fleet simulator saw two thirds of a new fleet refused for five
/// minutes behind HAProxy before this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_enrolled_through_one_replica_is_served_by_another_that_has_not_heard_yet() {
    let h = Harness::start().await;
    let b = h.replica().await;
    let (id, device) = h.device("home-1", json!({})).await;
    let device_id: Uuid = id.parse().unwrap();
    until("B heard of the device", || async {
        b.state.cache.contains(device_id)
    })
    .await;
    // As if the news were still on its way.
    b.state.cache.remove_device(device_id);
    let (status, etag, _) = h.poll(&device.at(&b.device_url), None, 0).await;
    assert_eq!(status, StatusCode::OK);
    let version = h.config_version(&id).await;
    assert_eq!(etag, Some(format!("\"{version}\"")));
    assert!(b.state.cache.contains(device_id));
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_device_is_refused_by_every_replica() {
    let h = Harness::start().await;
    let b = h.replica().await;
    let (id, device) = h.device("home-1", json!({})).await;
    let at_b = device.at(&b.device_url);
    let (status, _, _) = h.poll(&at_b, None, 0).await;
    assert_eq!(status, StatusCode::OK);
    let deleted = h
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let device_id: Uuid = id.parse().unwrap();
    until("B forgets the device", || async {
        !b.state.cache.contains(device_id)
    })
    .await;
    let (status, _, body) = h.poll(&at_b, None, 0).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "device_unknown");
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listening_connection_loses_nothing() {
    let h = Harness::start().await;
    let b = h.replica().await;
    let (id, device) = h.device("home-1", json!({"region": "north"})).await;
    let device_id: Uuid = id.parse().unwrap();
    let at_b = device.at(&b.device_url);
    let before = h.config_version(&id).await as u64;
    until("B serves the config A compiled", || async {
        b.state.cache.version(device_id) == Some(before)
    })
    .await;

    // PostgreSQL ends every replica's listening session, as a restart, a
    // failover or a network cut would; at once a change is made on A.
    let db = sqlx::PgPool::connect(&h.controller.database_url)
        .await
        .unwrap();
    let listening = "SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()";
    let ended: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(pid) FROM ({listening}) l"
    ))
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(ended, [true, true], "one listening session per replica");
    let service = h
        .flow_block("block", json!({"flows": [{"dst": "192.0.2.9/32"}]}))
        .await;
    assert_eq!(
        h.assign(&service, "region=north").await.status,
        StatusCode::CREATED
    );
    let after = h.config_version(&id).await as u64;
    assert!(after > before);

    // Whether the notification was lost or not, B serves the new config
    // (its catch-up reloads what it may have missed) and listens again.
    let (status, etag, _) = h.poll(&at_b, Some(before), 30).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag, Some(format!("\"{after}\"")));
    until("both replicas listen again", || async {
        sqlx::query_scalar::<_, i32>(&format!("SELECT pid FROM ({listening}) l"))
            .fetch_all(&db)
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;
    // And what comes next arrives as before.
    let later = h
        .post(
            &format!("/api/v1/devices/{id}/blocks"),
            json!({"flows": [{"dst": "198.51.100.4/32"}], "duration_secs": 600, "reason": "test"}),
        )
        .await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.body);
    let newest = h.config_version(&id).await as u64;
    let (status, etag, _) = h.poll(&at_b, Some(after), 30).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag, Some(format!("\"{newest}\"")));
    b.stop().await.unwrap();
}

/// Whether the replica whose operator API is at `api` leads (its
/// `/readyz` says so).
async fn leads(api: &str) -> bool {
    let ready = reqwest::get(format!("{api}/readyz")).await;
    match ready {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.unwrap()["leader"] == true,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_loop_moves_to_another_replica_when_its_replica_is_killed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let database_url = create_test_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("leader.log");
    // The real binary starts first and leads; the replica the test talks
    // to joins it and waits.
    let leader = ControllerProcess::start(&database_url, dir.path(), &log).await;
    let api = leader.listening.api.clone();
    until("the first replica leads", || leads(&api)).await;
    let h = Harness::joining(&database_url, dir).await;
    assert!(!h.controller.state.leadership.is_leading());
    let ready = h.get("/readyz").await;
    assert_eq!(ready.body["leader"], false, "{}", ready.body);

    // Two routers on revision 1 of a flow block, one of them a canary.
    let (canary_id, canary) = h.device("canary", json!({"canary": "true"})).await;
    let (other_id, other) = h.device("other", json!({})).await;
    let (_, assignment) = h.assigned_blocklist().await;
    let mut sequence = 0;
    for (id, router) in [(&canary_id, &canary), (&other_id, &other)] {
        let v = h.config_version(id).await as u64;
        sequence += 1;
        assert_eq!(
            report_status(router, sequence, "applied", Some(v), "t").await,
            StatusCode::NO_CONTENT
        );
    }
    let other_before = h.config_version(&other_id).await;
    let started = h
        .post(
            "/api/v1/rollouts",
            json!({"assignment_id": assignment, "revision": 2,
                   "canary": {"selector": "canary=true"}, "waves": [100],
                   "min_applied_share": 1.0, "soak_secs": 0}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let rollout = started.body["id"].as_str().unwrap().to_owned();

    // The leader dies; the joined replica takes the loops over.
    leader.kill();
    until("the remaining replica leads", || async {
        h.controller.state.leadership.is_leading()
    })
    .await;
    // The canary applies revision 2: the loop, now here, passes its wave
    // and releases the rest of the fleet.
    let canary_version = h.config_version(&canary_id).await as u64;
    sequence += 1;
    assert_eq!(
        report_status(&canary, sequence, "applied", Some(canary_version), "t").await,
        StatusCode::NO_CONTENT
    );
    until("the next wave is released", || async {
        h.config_version(&other_id).await > other_before
    })
    .await;
    let other_version = h.config_version(&other_id).await as u64;
    sequence += 1;
    assert_eq!(
        report_status(&other, sequence, "applied", Some(other_version), "t").await,
        StatusCode::NO_CONTENT
    );
    until("the rollout completes", || async {
        h.get(&format!("/api/v1/rollouts/{rollout}")).await.body["state"] == "completed"
    })
    .await;
    assert!(
        !log_tail(&log, 200).contains("panicked"),
        "{}",
        log_tail(&log, 40)
    );
}
