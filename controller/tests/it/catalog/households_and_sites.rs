//! Households own routers; sites of one catalog never overlap; bad or
//! concurrent changes store nothing; roles and the OpenAPI document.

use super::*;

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
