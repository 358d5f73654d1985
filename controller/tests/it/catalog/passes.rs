//! Passes sold by operators: stacked, listed and cancelled; purchases of
//! what does not exist store nothing.

use super::*;

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
