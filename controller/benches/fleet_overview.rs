//! The dashboard's queries over a 10,000-router fleet in a real PostgreSQL:
//! the fleet overview (one statement), and device-list pages with the
//! dashboard's filters (name search, state, label selector; first page and
//! the 50th page by keyset).
//!
//! Needs a PostgreSQL maintenance URL in `ISDF_TEST_DATABASE_URL` (the
//! benchmark makes its own database from the migrated template, as the
//! tests do). Run:
//! `ISDF_TEST_DATABASE_URL=... cargo bench -p isdf-controller --bench fleet_overview`
//! (`FLEET_DEVICES=100000` for the regional fleet of issue 16).
//!
//! And the operator's jobs of issue 17 over the same fleet: a selector's
//! preview (count and ten names, what the dashboard asks as the operator
//! types), the bulk relabel statement over half the fleet (in a
//! transaction rolled back, so every sample changes the same rows), and
//! reading the whole device list as the CSV export does (pages of 1,000).
//!
//! And the history of issue 19: the fleet page's charts over 30 days of
//! minute samples (43,200 rows), the leader's minute sample (the overview,
//! the insert and the prune), and a status report stored with the agent
//! counters it replaces read first (in a transaction rolled back).

use criterion::{criterion_group, criterion_main, Criterion};
use isdf_controller::db;
use isdf_controller::model::Selector;
use sqlx::postgres::PgPoolOptions;

/// Routers in the fleet: 10,000, or `FLEET_DEVICES`.
fn devices() -> i64 {
    std::env::var("FLEET_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// 10,000 routers in one statement each: three models, 90 % reported
/// (some an hour ago: stale; one in twenty rolled back), 10 % never.
async fn fill(pool: &sqlx::PgPool) {
    sqlx::query(
        "INSERT INTO devices (id, name, labels)
         SELECT gen_random_uuid(), 'router-' || lpad(n::text, 6, '0'),
                jsonb_build_object('model', (ARRAY['ax3000','mt7621','rpi4'])[1 + n % 3],
                                   'plan', CASE WHEN n % 2 = 0 THEN 'family' ELSE 'basic' END)
         FROM generate_series(1, $1) AS n",
    )
    .bind(devices())
    .execute(pool)
    .await
    .expect("devices");
    sqlx::query(
        "INSERT INTO device_status (device_id, sequence, received_at, report)
         SELECT id, 1,
                now() - CASE WHEN n % 13 = 0 THEN interval '1 hour' ELSE interval '30 seconds' END,
                jsonb_build_object(
                    'sequence', 1, 'enforced_version', 3, 'enforced_digest', null,
                    'outcome', CASE WHEN n % 20 = 5 THEN 'rolled_back' ELSE 'applied' END,
                    'attempted_version', 3, 'errors', '[]'::jsonb,
                    'counters', '[{\"rule_id\":\"r1\",\"packets\":1,\"bytes\":60}]'::jsonb,
                    'backend', 'nftables',
                    'agent_version', CASE WHEN n % 4 = 0 THEN '0.2.9' ELSE '0.3.0' END)
         FROM (SELECT id, row_number() OVER (ORDER BY name) AS n FROM devices) d
         WHERE n % 10 <> 0",
    )
    .execute(pool)
    .await
    .expect("status");
    for table in ["devices", "device_status"] {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(pool)
            .await
            .expect("analyze");
    }
}

/// The cursor after `pages - 1` pages of 50 (what the 50th page starts after).
async fn cursor_before_page(
    pool: &sqlx::PgPool,
    filter: &db::devices::DeviceFilter<'_>,
    pages: usize,
) -> Option<String> {
    let mut after: Option<String> = None;
    for _ in 1..pages {
        let rows = db::devices::list(pool, filter, after.as_deref(), 50)
            .await
            .unwrap();
        after = rows.last().map(|r| r.device.name.clone());
    }
    after
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime.block_on(async {
        let url = isdf_controller::test_support::create_test_database()
            .await
            .expect("a test database (set ISDF_TEST_DATABASE_URL)");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        fill(&pool).await;
        eprintln!(
            "filled {} routers with reports in {:?}",
            devices(),
            started.elapsed()
        );
        pool
    });
    let overview = runtime.block_on(db::fleet::overview(&pool)).unwrap();
    eprintln!("overview: {:?}", overview.totals.0);

    let mut group = c.benchmark_group("fleet_10k");
    group.sample_size(30);
    group.bench_function("overview", |b| {
        b.iter(|| runtime.block_on(db::fleet::overview(&pool)).unwrap())
    });
    let selector = Selector::parse("model=ax3000").unwrap();
    // (name, filter, whether it has 50 pages of 50)
    let filters: [(&str, db::devices::DeviceFilter, bool); 5] = [
        ("unfiltered", db::devices::DeviceFilter::default(), true),
        (
            "search `router-`",
            db::devices::DeviceFilter {
                name_contains: Some("router-"),
                ..Default::default()
            },
            true,
        ),
        (
            "state online",
            db::devices::DeviceFilter {
                state: Some("online"),
                ..Default::default()
            },
            true,
        ),
        (
            "state failing",
            db::devices::DeviceFilter {
                state: Some("failing"),
                ..Default::default()
            },
            false,
        ),
        (
            "model=ax3000 + online + search `9`",
            db::devices::DeviceFilter {
                selector: Some(&selector),
                state: Some("online"),
                name_contains: Some("9"),
            },
            false,
        ),
    ];
    for (name, filter, deep) in &filters {
        group.bench_function(format!("list page 1, {name}"), |b| {
            b.iter(|| {
                runtime
                    .block_on(db::devices::list(&pool, filter, None, 50))
                    .unwrap()
            })
        });
        if !deep {
            continue;
        }
        let after = runtime.block_on(cursor_before_page(&pool, filter, 50));
        assert!(after.is_some(), "{name} has 50 pages");
        group.bench_function(format!("list page 50, {name}"), |b| {
            b.iter(|| {
                runtime
                    .block_on(db::devices::list(&pool, filter, after.as_deref(), 50))
                    .unwrap()
            })
        });
    }
    group.finish();

    let mut jobs = c.benchmark_group("operator_jobs");
    jobs.sample_size(10);
    let half = Selector::parse("plan=family").unwrap();
    jobs.bench_function("selector preview (count + 10 names), plan=family", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let matched = db::devices::count_matching(&pool, &half).await.unwrap();
                let sample = db::devices::sample_matching(&pool, &half, 10)
                    .await
                    .unwrap();
                (matched, sample)
            })
        })
    });
    let set = std::collections::BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
    jobs.bench_function(
        "bulk relabel of plan=family (half the fleet), rolled back",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut tx = pool.begin().await.unwrap();
                    let changed =
                        db::devices::relabel(&mut *tx, &half, &set, &["model".to_owned()])
                            .await
                            .unwrap();
                    assert_eq!(changed.len() as i64, devices() / 2);
                    tx.rollback().await.unwrap();
                })
            })
        },
    );
    jobs.bench_function("export: every device in pages of 1,000", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let filter = db::devices::DeviceFilter::default();
                let mut after: Option<String> = None;
                let mut rows = 0;
                loop {
                    let page = db::devices::list(&pool, &filter, after.as_deref(), 1000)
                        .await
                        .unwrap();
                    rows += page.len();
                    match page.last() {
                        Some(last) if page.len() == 1000 => after = Some(last.device.name.clone()),
                        _ => break,
                    }
                }
                assert_eq!(rows as i64, devices());
            })
        })
    });
    jobs.finish();
    history(c, &runtime, &pool);
}

/// 30 days of minute samples, ending now.
const HISTORY_MINUTES: i64 = 30 * 24 * 60;

fn history(c: &mut Criterion, runtime: &tokio::runtime::Runtime, pool: &sqlx::PgPool) {
    use chrono::{Duration, Utc};
    runtime.block_on(async {
        sqlx::query(
            "INSERT INTO fleet_samples
                 (sampled_at, devices, online, stale, failing, never_reported, by_agent_version)
             SELECT date_trunc('minute', now()) - make_interval(mins => n), 100000, 90000, 3000,
                    1200, 7000,
                    '[{\"value\":\"0.3.0\",\"count\":60000},{\"value\":\"0.2.9\",\"count\":33000}]'
             FROM generate_series(1, $1) AS n",
        )
        .bind(HISTORY_MINUTES as i32)
        .execute(pool)
        .await
        .expect("samples");
        sqlx::query("ANALYZE fleet_samples")
            .execute(pool)
            .await
            .expect("analyze");
    });
    let mut group = c.benchmark_group("history");
    group.sample_size(20);
    for (name, hours) in [("24 hours", 24), ("30 days", 24 * 30)] {
        group.bench_function(format!("fleet history, {name} in 360 points"), |b| {
            b.iter(|| {
                let until = Utc::now();
                let since = until - Duration::hours(hours);
                let step = (hours * 3600 / 360).max(60);
                let samples = runtime
                    .block_on(db::fleet_history::samples(pool, since, until, step))
                    .unwrap();
                assert!(samples.len() >= 300, "{}", samples.len());
            })
        });
    }
    let retention = std::time::Duration::from_secs(30 * 24 * 3600);
    let mut minute = 0;
    group.bench_function(
        "the leader's minute sample (overview, insert, prune)",
        |b| {
            b.iter(|| {
                // A new minute each time, after the filled ones: stored, and
                // the oldest pruned, as a leader does every minute.
                minute += 1;
                let at = Utc::now() + Duration::minutes(minute);
                let stored = runtime
                    .block_on(isdf_controller::cluster::history::sample(
                        pool, at, retention,
                    ))
                    .unwrap();
                assert!(stored);
            })
        },
    );
    let device: uuid::Uuid = runtime
        .block_on(sqlx::query_scalar("SELECT device_id FROM device_status LIMIT 1").fetch_one(pool))
        .unwrap();
    let report: isdf_api::StatusReport = serde_json::from_value(serde_json::json!({
        "sequence": 1_000_000_000u64, "enforced_version": 3, "enforced_digest": null,
        "outcome": "applied", "attempted_version": 3, "errors": [],
        "counters": [{"rule_id": "r1", "packets": 1, "bytes": 60}],
        "backend": "nftables", "agent_version": "0.3.0",
        "agent_counters": {"started_at": 1, "blocked_packets": 5}}))
    .unwrap();
    group.bench_function(
        "status report stored, previous counters read (rolled back)",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut tx = pool.begin().await.unwrap();
                    let recorded = db::status::record(&mut tx, device, &report).await.unwrap();
                    assert!(matches!(recorded, db::status::Recorded::Accepted { .. }));
                    tx.rollback().await.unwrap();
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
