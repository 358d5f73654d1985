//! Pay-per-site: households, the site catalog, passes sold by operators and
//! reported by the billing webhook.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{error_code, Harness, Response};

/// Rows in `table` (straight from the database: "nothing was stored").
async fn rows(h: &Harness, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&h.controller.state.pool)
        .await
        .unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .to_utc()
}

fn stream_site() -> Value {
    json!({
        "name": "Stream+",
        "domains": ["stream.example", "*.streamcdn.example"],
        "currency": "EUR",
        "passes": [{"duration_secs": 3600, "price": 199}, {"duration_secs": 86400, "price": 499}]
    })
}

async fn site(h: &Harness, body: Value) -> i64 {
    let r = h.post("/api/v1/sites", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_i64().unwrap()
}

async fn customer(h: &Harness, name: &str, external_ref: Option<&str>, devices: &[&str]) -> String {
    let r = h
        .post(
            "/api/v1/customers",
            json!({"name": name, "external_ref": external_ref, "devices": devices}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn put_site(h: &Harness, id: i64, body: Value) -> Response {
    h.call(Method::PUT, &format!("/api/v1/sites/{id}"), Some(body))
        .await
}

async fn buy(h: &Harness, customer_id: &str, site_id: i64, duration_secs: i64) -> Response {
    h.post(
        "/api/v1/purchases",
        json!({"customer_id": customer_id, "site_id": site_id, "duration_secs": duration_secs}),
    )
    .await
}

/// The billing system's side: `t=<secs>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`,
/// computed here independently of the controller's code.
fn signature(key_hex: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hex::decode(key_hex.trim()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

fn webhook_key(h: &Harness) -> String {
    let path = h.controller.data_dir.join("billing-webhook.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::read_to_string(path).unwrap()
}

async fn webhook(h: &Harness, body: &Value, header: Option<String>) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut request = h
        .http
        .post(format!("{}/webhooks/v1/billing", h.controller.api_url))
        .header("content-type", "application/json")
        .body(bytes);
    if let Some(header) = header {
        request = request.header("Isdf-Signature", header);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    Response {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn signed_webhook(h: &Harness, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let header = signature(&webhook_key(h), Utc::now().timestamp(), &bytes);
    webhook(h, body, Some(header)).await
}

#[tokio::test]
async fn catalog_households_own_routers_and_a_router_has_one_household() {
    let h = Harness::start().await;
    let (r1, _) = h.register("r1", json!({})).await;
    let (r2, _) = h.register("r2", json!({})).await;
    let (r3, _) = h.register("r3", json!({})).await;
    let smith = customer(&h, "Smith family", Some("cus_1"), &[&r1, &r2]).await;

    let detail = h.get(&format!("/api/v1/customers/{smith}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert_eq!(detail.body["name"], "Smith family");
    assert_eq!(detail.body["external_ref"], "cus_1");
    let names: Vec<_> = detail.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r1", "r2"]);
    assert_eq!(detail.body["passes"], json!([]));

    // A router already in a household cannot join another, at creation or later.
    let refused = h
        .post(
            "/api/v1/customers",
            json!({"name": "Jones", "devices": [r3, r1]}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(error_code(&refused), "device_has_customer");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Smith family") && message.contains("r1"),
        "{message}"
    );
    assert_eq!(rows(&h, "customers").await, 1);
    let jones = customer(&h, "Jones", None, &[]).await;
    let moved = h
        .call(
            Method::PUT,
            &format!("/api/v1/customers/{jones}/devices/{r2}"),
            None,
        )
        .await;
    assert_eq!(moved.status, StatusCode::CONFLICT, "{}", moved.body);
    assert_eq!(error_code(&moved), "device_has_customer");
    assert!(moved.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Smith family"));
    let owned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE customer_id = $1::uuid")
            .bind(&jones)
            .fetch_one(&h.controller.state.pool)
            .await
            .unwrap();
    assert_eq!(owned, 0);

    // Attaching is idempotent; detaching frees the router for another household.
    for _ in 0..2 {
        let attached = h
            .call(
                Method::PUT,
                &format!("/api/v1/customers/{jones}/devices/{r3}"),
                None,
            )
            .await;
        assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
        assert_eq!(attached.body["devices"][0]["name"], "r3");
    }
    let detached = h
        .call(
            Method::DELETE,
            &format!("/api/v1/customers/{smith}/devices/{r2}"),
            None,
        )
        .await;
    assert_eq!(detached.status, StatusCode::NO_CONTENT);
    let again = h
        .call(
            Method::DELETE,
            &format!("/api/v1/customers/{smith}/devices/{r2}"),
            None,
        )
        .await;
    assert_eq!(error_code(&again), "not_found");
    let attached = h
        .call(
            Method::PUT,
            &format!("/api/v1/customers/{jones}/devices/{r2}"),
            None,
        )
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);

    // Bad households store nothing.
    for (body, code) in [
        (json!({"name": "Smith family"}), "name_taken"),
        (
            json!({"name": "Other", "external_ref": "cus_1"}),
            "external_ref_taken",
        ),
        (json!({"name": ""}), "invalid_request"),
        (json!({"name": "tab\there"}), "invalid_request"),
        (
            json!({"name": "x", "external_ref": "has space"}),
            "invalid_request",
        ),
        (
            json!({"name": "x", "devices": [uuid::Uuid::new_v4()]}),
            "unknown_device",
        ),
        (json!({"name": "x", "colour": "red"}), "invalid_body"),
    ] {
        let r = h.post("/api/v1/customers", body.clone()).await;
        assert_eq!(error_code(&r), code, "{body}: {}", r.body);
    }
    assert_eq!(rows(&h, "customers").await, 2);

    // Listing is paginated by name.
    let first = h.get("/api/v1/customers?limit=1").await;
    assert_eq!(first.body["items"][0]["name"], "Jones");
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = h
        .get(&format!("/api/v1/customers?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(second.body["items"][0]["name"], "Smith family");

    // Deleting a household detaches its routers.
    let deleted = h
        .call(Method::DELETE, &format!("/api/v1/customers/{jones}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let free: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE customer_id IS NULL")
        .fetch_one(&h.controller.state.pool)
        .await
        .unwrap();
    assert_eq!(free, 2);
    let gone = h.get(&format!("/api/v1/customers/{jones}")).await;
    assert_eq!(error_code(&gone), "not_found");
}

#[tokio::test]
async fn catalog_sites_never_overlap_within_a_catalog() {
    let h = Harness::start().await;
    let stream = site(&h, stream_site()).await;
    let read = h.get(&format!("/api/v1/sites/{stream}")).await;
    assert_eq!(read.body["catalog"], "main");
    assert_eq!(
        read.body["passes"][0],
        json!({"duration_secs": 3600, "price": 199})
    );

    let with_domains = |name: &str, domains: Value| {
        json!({
            "name": name, "domains": domains, "currency": "EUR",
            "passes": [{"duration_secs": 3600, "price": 100}]
        })
    };
    let cases = [
        // exact
        (
            json!(["stream.example"]),
            "stream.example",
            "stream.example",
        ),
        // wildcard spelling of the same domain
        (
            json!(["*.stream.example"]),
            "*.stream.example",
            "stream.example",
        ),
        // a subdomain of another site's domain
        (
            json!(["other.example", "tv.stream.example"]),
            "tv.stream.example",
            "stream.example",
        ),
        // a domain covering another site's wildcard
        (
            json!(["streamcdn.example"]),
            "streamcdn.example",
            "*.streamcdn.example",
        ),
    ];
    for (domains, ours, theirs) in cases {
        let r = h
            .post("/api/v1/sites", with_domains("Games", domains.clone()))
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{domains}: {}", r.body);
        assert_eq!(error_code(&r), "overlapping_site");
        let message = r.body["error"]["message"].as_str().unwrap();
        for part in [
            format!("`{ours}`"),
            format!("`{theirs}`"),
            "`Games`".into(),
            "`Stream+`".into(),
        ] {
            assert!(message.contains(&part), "{part} not in {message}");
        }
    }
    assert_eq!(rows(&h, "sites").await, 1);

    // Another catalog may sell the same domains; a name is unique per catalog.
    let mut other = stream_site();
    other["catalog"] = json!("premium");
    let premium = site(&h, other).await;
    let duplicate = h.post("/api/v1/sites", stream_site()).await;
    assert_eq!(error_code(&duplicate), "overlapping_site");
    let mut renamed = stream_site();
    renamed["domains"] = json!(["games.example"]);
    let taken = h.post("/api/v1/sites", renamed).await;
    assert_eq!(error_code(&taken), "name_taken", "{}", taken.body);

    let games = site(&h, with_domains("Games", json!(["games.example"]))).await;
    let listed = h.get("/api/v1/sites?catalog=main").await;
    let ids: Vec<_> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [stream, games]);
    assert_eq!(
        h.get("/api/v1/sites?catalog=premium").await.body["items"][0]["id"],
        premium
    );

    // Replacing a site is checked against the others, never against itself.
    let overlapping = put_site(
        &h,
        games,
        with_domains("Games", json!(["www.stream.example"])),
    )
    .await;
    assert_eq!(error_code(&overlapping), "overlapping_site");
    let mut cheaper = stream_site();
    cheaper["passes"] = json!([{"duration_secs": 3600, "price": 149}]);
    let updated = put_site(&h, stream, cheaper).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(
        updated.body["passes"],
        json!([{"duration_secs": 3600, "price": 149}])
    );
    let read = h.get(&format!("/api/v1/sites/{games}")).await;
    assert_eq!(read.body["domains"], json!(["games.example"]));
    let missing = put_site(&h, 999, stream_site()).await;
    assert_eq!(error_code(&missing), "not_found");

    let deleted = h
        .call(Method::DELETE, &format!("/api/v1/sites/{games}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(rows(&h, "sites").await, 2);

    // The compiler's view.
    let catalogs = isdf_controller::db::catalog::sites_of_catalogs(
        &h.controller.state.pool,
        &["main".to_owned()],
    )
    .await
    .unwrap();
    assert_eq!(catalogs.len(), 1);
    assert_eq!(catalogs[0].domain_patterns().len(), 2);
}

#[tokio::test]
async fn catalog_bad_sites_are_refused_and_store_nothing() {
    let h = Harness::start().await;
    let with = |field: &str, value: Value| {
        let mut body = stream_site();
        body[field] = value;
        body
    };
    let pass = |duration: Value, price: Value| {
        with(
            "passes",
            json!([{"duration_secs": duration, "price": price}]),
        )
    };
    let cases = [
        // malformed domains
        (with("domains", json!([])), "invalid_request"),
        (
            with("domains", json!(["Stream.example"])),
            "invalid_request",
        ),
        (
            with("domains", json!(["stream..example"])),
            "invalid_request",
        ),
        (
            with("domains", json!(["-stream.example"])),
            "invalid_request",
        ),
        (
            with("domains", json!(["stream.example."])),
            "invalid_request",
        ),
        (with("domains", json!(["10.0.0.1"])), "invalid_request"),
        (with("domains", json!(["a.*.example"])), "invalid_request"),
        (
            with("domains", json!(["https://stream.example"])),
            "invalid_request",
        ),
        (with("domains", json!(["localhost"])), "invalid_request"),
        (
            with("domains", json!(["stream.example", "tv.stream.example"])),
            "invalid_request",
        ),
        (
            with(
                "domains",
                json!((0..101)
                    .map(|i| format!("s{i}.example"))
                    .collect::<Vec<_>>()),
            ),
            "invalid_request",
        ),
        (with("domains", json!("stream.example")), "invalid_body"),
        // prices: negative, zero, fractional
        (pass(json!(3600), json!(-1)), "invalid_request"),
        (pass(json!(3600), json!(0)), "invalid_request"),
        (pass(json!(3600), json!(1.5)), "invalid_request"),
        (pass(json!(3600), json!("199")), "invalid_body"),
        // durations: zero, negative, too short, too long, fractional
        (pass(json!(0), json!(100)), "invalid_request"),
        (pass(json!(-3600), json!(100)), "invalid_request"),
        (pass(json!(59), json!(100)), "invalid_request"),
        (pass(json!(366 * 86400 + 1), json!(100)), "invalid_request"),
        (pass(json!(3600.5), json!(100)), "invalid_request"),
        // passes: none, too many, two of one duration
        (with("passes", json!([])), "invalid_request"),
        (
            with(
                "passes",
                json!((1..=11)
                    .map(|i| json!({"duration_secs": 3600 * i, "price": 100}))
                    .collect::<Vec<_>>()),
            ),
            "invalid_request",
        ),
        (
            with(
                "passes",
                json!([{"duration_secs": 3600, "price": 100}, {"duration_secs": 3600, "price": 200}]),
            ),
            "invalid_request",
        ),
        (
            with("passes", json!([{"duration_secs": 3600}])),
            "invalid_body",
        ),
        // currency, names, catalog
        (with("currency", json!("eur")), "invalid_request"),
        (with("currency", json!("EURO")), "invalid_request"),
        (with("currency", json!("E1R")), "invalid_request"),
        (with("name", json!("")), "invalid_request"),
        (with("name", json!("x".repeat(101))), "invalid_request"),
        (with("name", json!("new\nline")), "invalid_request"),
        (with("catalog", json!("has space")), "invalid_request"),
        (with("colour", json!("red")), "invalid_body"),
    ];
    for (body, code) in cases {
        let r = h.post("/api/v1/sites", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_eq!(error_code(&r), code, "{body}: {}", r.body);
    }
    let fractional = h.post("/api/v1/sites", pass(json!(3600), json!(1.5))).await;
    assert!(
        fractional.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("whole number"),
        "{}",
        fractional.body
    );
    assert_eq!(rows(&h, "sites").await, 0);
    // Nothing was stored, so nothing was recompiled either: an unknown site
    // cannot be replaced or read.
    let id = site(&h, stream_site()).await;
    let r = h
        .call(
            Method::PUT,
            &format!("/api/v1/sites/{id}"),
            Some(pass(json!(3600), json!(0))),
        )
        .await;
    assert_eq!(error_code(&r), "invalid_request");
    assert_eq!(
        h.get(&format!("/api/v1/sites/{id}")).await.body["passes"][0]["price"],
        199
    );
    assert_eq!(
        error_code(&h.get("/api/v1/sites/abc").await),
        "invalid_path"
    );
}

#[tokio::test]
async fn catalog_passes_are_sold_stacked_listed_and_cancelled() {
    let h = Harness::start().await;
    let (r1, _) = h.register("r1", json!({})).await;
    let (r2, _) = h.register("r2", json!({})).await;
    let household = customer(&h, "Smith family", None, &[&r1, &r2]).await;
    let stream = site(&h, stream_site()).await;

    let before = Utc::now();
    let first = buy(&h, &household, stream, 3600).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["price"], 199);
    assert_eq!(first.body["currency"], "EUR");
    assert_eq!(first.body["source"], "operator");
    assert_eq!(first.body["in_force"], true);
    let starts = time(&first.body["starts_at"]);
    let ends = time(&first.body["ends_at"]);
    assert!(
        (starts - before).num_milliseconds().abs() <= 1500,
        "{starts} vs {before}"
    );
    assert_eq!(ends - starts, chrono::Duration::seconds(3600));
    let versions: Vec<_> = first.body["device_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = vec![r1.clone(), r2.clone()];
    expected.sort();
    assert_eq!(versions, expected);

    // A second pass for the same site starts when the first ends.
    let second = buy(&h, &household, stream, 86400).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body["price"], 499);
    assert_eq!(time(&second.body["starts_at"]), ends);
    assert_eq!(
        time(&second.body["ends_at"]),
        ends + chrono::Duration::seconds(86400)
    );

    let detail = h.get(&format!("/api/v1/customers/{household}")).await;
    assert_eq!(detail.body["passes"].as_array().unwrap().len(), 2);
    let active = h
        .get(&format!(
            "/api/v1/purchases?customer_id={household}&active=true"
        ))
        .await;
    assert_eq!(active.status, StatusCode::OK, "{}", active.body);
    assert_eq!(active.body["items"].as_array().unwrap().len(), 2);
    // Newest first, one per page with a cursor.
    let page = h
        .get(&format!(
            "/api/v1/purchases?customer_id={household}&limit=1"
        ))
        .await;
    assert_eq!(page.body["items"][0]["id"], second.body["id"]);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let next = h
        .get(&format!(
            "/api/v1/purchases?customer_id={household}&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(next.body["items"][0]["id"], first.body["id"]);

    // What the compiler sees: one end per router and site, the queued pass included.
    let pool = &h.controller.state.pool;
    let now = Utc::now();
    let access = isdf_controller::db::purchases::active_for_devices(pool, None, now)
        .await
        .unwrap();
    assert_eq!(access.len(), 2);
    assert!(access
        .iter()
        .all(|(_, s, end)| *s == stream && *end == time(&second.body["ends_at"])));
    let one: uuid::Uuid = r1.parse().unwrap();
    let only_r1 = isdf_controller::db::purchases::active_for_devices(pool, Some(&[one]), now)
        .await
        .unwrap();
    assert_eq!(only_r1.len(), 1);
    assert_eq!(only_r1[0].0, one);

    // Cancelling the running pass ends it now; the queued one moves forward.
    let cancelled_at = Utc::now();
    let first_id = first.body["id"].as_str().unwrap();
    let cancelled = h
        .call(
            Method::DELETE,
            &format!("/api/v1/purchases/{first_id}"),
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["in_force"], false);
    assert!(cancelled.body["cancelled_at"].is_string());
    let moved = h
        .get(&format!(
            "/api/v1/purchases?customer_id={household}&active=true"
        ))
        .await;
    let items = moved.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], second.body["id"]);
    let new_start = time(&items[0]["starts_at"]);
    assert!(
        (new_start - cancelled_at).num_milliseconds().abs() <= 1500,
        "{new_start} vs {cancelled_at}"
    );
    assert_eq!(
        time(&items[0]["ends_at"]) - new_start,
        chrono::Duration::seconds(86400)
    );
    let ended = h
        .get(&format!(
            "/api/v1/purchases?customer_id={household}&active=false"
        ))
        .await;
    assert_eq!(ended.body["items"].as_array().unwrap().len(), 1);
    let again = h
        .call(
            Method::DELETE,
            &format!("/api/v1/purchases/{first_id}"),
            None,
        )
        .await;
    assert_eq!(error_code(&again), "not_found");

    // A router out of the household loses its passes.
    h.call(
        Method::DELETE,
        &format!("/api/v1/customers/{household}/devices/{r2}"),
        None,
    )
    .await;
    let access = isdf_controller::db::purchases::active_for_devices(pool, None, Utc::now())
        .await
        .unwrap();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].0, one);

    // Passes in force keep their site and household from being deleted.
    let site_refused = h
        .call(Method::DELETE, &format!("/api/v1/sites/{stream}"), None)
        .await;
    assert_eq!(error_code(&site_refused), "active_passes");
    let customer_refused = h
        .call(
            Method::DELETE,
            &format!("/api/v1/customers/{household}"),
            None,
        )
        .await;
    assert_eq!(error_code(&customer_refused), "active_passes");
    let second_id = second.body["id"].as_str().unwrap();
    h.call(
        Method::DELETE,
        &format!("/api/v1/purchases/{second_id}"),
        None,
    )
    .await;
    let site_deleted = h
        .call(Method::DELETE, &format!("/api/v1/sites/{stream}"), None)
        .await;
    assert_eq!(site_deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(rows(&h, "purchases").await, 0);
}

#[tokio::test]
async fn catalog_purchases_of_unknown_customers_sites_or_passes_store_nothing() {
    let h = Harness::start().await;
    let household = customer(&h, "Smith family", None, &[]).await;
    let stream = site(&h, stream_site()).await;
    let nobody = uuid::Uuid::new_v4().to_string();
    let cases = [
        (buy(&h, &nobody, stream, 3600).await, StatusCode::NOT_FOUND, "unknown_customer"),
        (buy(&h, &household, 999, 3600).await, StatusCode::NOT_FOUND, "unknown_site"),
        (buy(&h, &household, stream, 7200).await, StatusCode::BAD_REQUEST, "unknown_pass"),
        (buy(&h, &household, stream, 0).await, StatusCode::BAD_REQUEST, "unknown_pass"),
        (buy(&h, &household, stream, -3600).await, StatusCode::BAD_REQUEST, "unknown_pass"),
        (
            h.post("/api/v1/purchases", json!({"customer_id": household, "site_id": stream})).await,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            h.post(
                "/api/v1/purchases",
                json!({"customer_id": household, "site_id": stream, "duration_secs": 3600, "price": 1}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        assert_eq!(error_code(r), *code, "case {i}: {}", r.body);
    }
    assert!(cases[2].0.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3600"));
    assert_eq!(rows(&h, "purchases").await, 0);
    let cancel = h
        .call(
            Method::DELETE,
            &format!("/api/v1/purchases/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(error_code(&cancel), "not_found");
    let bad_query = h.get("/api/v1/purchases?active=maybe").await;
    assert_eq!(error_code(&bad_query), "invalid_query");
}

fn payment(payment_id: &str, site_id: i64) -> Value {
    json!({
        "payment_id": payment_id,
        "customer_external_ref": "cus_42",
        "site_id": site_id,
        "duration_secs": 3600,
        "amount": 150,
        "currency": "EUR"
    })
}

async fn webhook_audit(h: &Harness) -> Vec<(i32, Option<String>, Value)> {
    sqlx::query_as::<_, (i32, Option<String>, sqlx::types::Json<Value>)>(
        "SELECT status, target, summary FROM audit_log WHERE actor = 'billing-webhook' ORDER BY id",
    )
    .fetch_all(&h.controller.state.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(status, target, summary)| (status, target, summary.0))
    .collect()
}

#[tokio::test]
async fn catalog_a_replayed_webhook_records_the_payment_once() {
    let h = Harness::start().await;
    let (r1, _) = h.register("r1", json!({})).await;
    let household = customer(&h, "Smith family", Some("cus_42"), &[&r1]).await;
    let stream = site(&h, stream_site()).await;

    let body = payment("pi_123", stream);
    let accepted = signed_webhook(&h, &body).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(accepted.body["source"], "webhook");
    assert_eq!(accepted.body["customer_id"], household.as_str());
    assert_eq!(accepted.body["payment_id"], "pi_123");
    // The amount paid, not the catalog price.
    assert_eq!(accepted.body["price"], 150);
    assert_eq!(
        accepted.body["device_versions"][0]["device_id"],
        r1.as_str()
    );
    let purchase_id = accepted.body["id"].as_str().unwrap().to_owned();

    // The billing system retries (a new signature, the same payment), and
    // again naming the household by our id.
    let mut by_id = body.clone();
    by_id["customer_external_ref"] = Value::Null;
    by_id
        .as_object_mut()
        .unwrap()
        .remove("customer_external_ref");
    by_id["customer_id"] = json!(household);
    for replay in [&body, &by_id] {
        let r = signed_webhook(&h, replay).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert_eq!(error_code(&r), "duplicate_payment");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&purchase_id),
            "{}",
            r.body
        );
    }
    assert_eq!(rows(&h, "purchases").await, 1);

    // Many deliveries at once: still one purchase.
    let burst = payment("pi_burst", stream);
    let results = futures_util::future::join_all((0..6).map(|_| signed_webhook(&h, &burst))).await;
    let created = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        1,
        "{:?}",
        results.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert!(results
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
        .all(|r| error_code(r) == "duplicate_payment"));
    assert_eq!(rows(&h, "purchases").await, 2);
    // The two passes of one household and site were queued, not overlapped.
    let ends: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT starts_at, ends_at FROM purchases ORDER BY starts_at")
            .fetch_all(&h.controller.state.pool)
            .await
            .unwrap();
    assert_eq!(ends[1].0, ends[0].1);

    // Every call is audited as billing-webhook, accepted or refused.
    let audit = webhook_audit(&h).await;
    assert_eq!(audit.len(), 9);
    assert_eq!(audit[0].0, 201);
    assert_eq!(audit[0].1.as_deref(), Some(purchase_id.as_str()));
    assert_eq!(audit[0].2["payment_id"], "pi_123");
    assert_eq!(audit[1].0, 409);
    assert_eq!(audit[1].1.as_deref(), Some("pi_123"));
    assert_eq!(audit[1].2["error"]["code"], "duplicate_payment");
}

#[tokio::test]
async fn catalog_webhooks_with_bad_signatures_stale_timestamps_or_bad_payments_store_nothing() {
    let h = Harness::start().await;
    customer(&h, "Smith family", Some("cus_42"), &[]).await;
    let stream = site(&h, stream_site()).await;
    let key = webhook_key(&h);
    let body = payment("pi_1", stream);
    let bytes = serde_json::to_vec(&body).unwrap();
    let now = Utc::now().timestamp();
    let other_key = hex::encode([7u8; 32]);
    let mut tampered = body.clone();
    tampered["amount"] = json!(1);
    let unsigned_cases = [
        None,
        Some("".to_owned()),
        Some("t=,v1=".to_owned()),
        Some(format!("t={now}")),
        Some(signature(&other_key, now, &bytes)),
        Some(signature(&key, now - 301, &bytes)),
        Some(signature(&key, now + 301, &bytes)),
        // A valid signature of another body.
        Some(signature(
            &key,
            now,
            &serde_json::to_vec(&tampered).unwrap(),
        )),
    ];
    let count = unsigned_cases.len();
    for header in unsigned_cases {
        let r = webhook(&h, &body, header.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{header:?}: {}", r.body);
        assert_eq!(error_code(&r), "bad_signature", "{header:?}");
    }
    let stale = webhook(&h, &body, Some(signature(&key, now - 301, &bytes))).await;
    assert!(stale.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("300 s"));

    // Signed, but not a payment we can record.
    let with = |field: &str, value: Value| {
        let mut b = body.clone();
        b[field] = value;
        b
    };
    let signed_cases = [
        (with("currency", json!("USD")), "currency_mismatch"),
        (with("currency", json!("usd")), "invalid_request"),
        (with("amount", json!(0)), "invalid_request"),
        (with("amount", json!(-150)), "invalid_request"),
        (with("amount", json!(1.5)), "invalid_body"),
        (with("duration_secs", json!(7200)), "unknown_pass"),
        (with("site_id", json!(999)), "unknown_site"),
        (
            with("customer_external_ref", json!("cus_nobody")),
            "unknown_customer",
        ),
        (
            with("customer_id", json!(uuid::Uuid::new_v4())),
            "invalid_request",
        ),
        (with("payment_id", json!("")), "invalid_request"),
        (with("extra", json!(1)), "invalid_body"),
    ];
    let signed_count = signed_cases.len();
    for (b, code) in signed_cases {
        let r = signed_webhook(&h, &b).await;
        assert_eq!(error_code(&r), code, "{b}: {}", r.body);
    }
    let mut by_unknown_id = body.clone();
    by_unknown_id
        .as_object_mut()
        .unwrap()
        .remove("customer_external_ref");
    by_unknown_id["customer_id"] = json!(uuid::Uuid::new_v4());
    let r = signed_webhook(&h, &by_unknown_id).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "unknown_customer");

    assert_eq!(rows(&h, "purchases").await, 0);
    let audit = webhook_audit(&h).await;
    assert_eq!(audit.len(), count + 1 + signed_count + 1);
    let refused_signatures = audit.iter().filter(|(status, _, _)| *status == 401);
    for (_, target, summary) in refused_signatures {
        // Unauthenticated bytes are not kept.
        assert_eq!(*target, None);
        assert!(
            summary["request"]["unsigned_bytes"].is_number(),
            "{summary}"
        );
        assert_eq!(summary["error"]["code"], "bad_signature");
    }
    // The webhook does not accept operator tokens instead of a signature.
    let with_token = h
        .http
        .post(format!("{}/webhooks/v1/billing", h.controller.api_url))
        .bearer_auth(&h.controller.operator_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(rows(&h, "purchases").await, 0);
}

#[tokio::test]
async fn catalog_a_viewer_cannot_change_the_catalog() {
    let h = Harness::start().await;
    let created = h
        .post(
            "/api/v1/operator-tokens",
            json!({"name": "watcher", "role": "viewer"}),
        )
        .await;
    let viewer = created.body["token"].as_str().unwrap().to_owned();
    let as_viewer = |method: Method, path: &str, body: Option<Value>| {
        let mut request = h
            .http
            .request(method, format!("{}{path}", h.controller.api_url))
            .bearer_auth(&viewer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            Response {
                status,
                body: r.json().await.unwrap_or(Value::Null),
            }
        }
    };
    let refused = as_viewer(Method::POST, "/api/v1/sites", Some(stream_site())).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&refused), "forbidden");
    assert_eq!(rows(&h, "sites").await, 0);
    let stream = site(&h, stream_site()).await;
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/api/v1/sites/{stream}"),
            Some(stream_site()),
        ),
        (Method::DELETE, format!("/api/v1/sites/{stream}"), None),
        (
            Method::POST,
            "/api/v1/customers".to_owned(),
            Some(json!({"name": "x"})),
        ),
    ] {
        let r = as_viewer(method, &path, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let read = as_viewer(Method::GET, "/api/v1/sites", None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rows(&h, "customers").await, 0);
    // Refused changes are audited like any other.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor = 'watcher' AND status = 403",
    )
    .fetch_one(&h.controller.state.pool)
    .await
    .unwrap();
    assert_eq!(audited, 4);
}

#[tokio::test]
async fn catalog_concurrent_overlapping_sites_are_refused_but_one() {
    let h = Harness::start().await;
    let bodies: Vec<Value> = (0..10)
        .map(|i| {
            json!({
                "name": format!("Site {i}"),
                // Each overlaps every other through `shared.example`.
                "domains": [format!("u{i}.example"), if i % 2 == 0 { "shared.example" } else { "*.shared.example" }],
                "currency": "EUR",
                "passes": [{"duration_secs": 3600, "price": 100}]
            })
        })
        .collect();
    let results =
        futures_util::future::join_all(bodies.iter().map(|b| h.post("/api/v1/sites", b.clone())))
            .await;
    let created = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1);
    assert!(results
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
        .all(|r| error_code(r) == "overlapping_site"));
    assert_eq!(rows(&h, "sites").await, 1);
}

#[tokio::test]
async fn catalog_routes_are_in_the_openapi_document() {
    let h = Harness::start().await;
    let doc = h.get("/api/v1/openapi.json").await;
    let paths = doc.body["paths"].as_object().unwrap();
    for p in [
        "/api/v1/customers",
        "/api/v1/customers/{id}",
        "/api/v1/customers/{id}/devices/{device_id}",
        "/api/v1/sites",
        "/api/v1/sites/{id}",
        "/api/v1/purchases",
        "/api/v1/purchases/{id}",
        "/webhooks/v1/billing",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
}
