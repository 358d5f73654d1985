//! Refused VPN changes name the problem and write nothing; roles; the
//! OpenAPI document.

use super::*;

#[tokio::test]
async fn vpn_refusals_name_the_problem_and_write_nothing() {
    let h = Harness::start().await;
    let ids = routers(&h, &["a1", "a2", "a3", "b1", "loose"]).await;
    let (a1, a2, a3, b1, loose) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]);
    let smith = customer(&h, "Smith", &[a1, a2, a3]).await;
    let jones = customer(&h, "Jones", &[b1]).await;
    let vpn = create(
        &h,
        json!({
            "customer_id": smith, "name": "home", "topology": "mesh",
            "members": [{"device_id": a1, "prefixes": ["10.1.0.0/16"]}]
        }),
    )
    .await;
    assert_eq!(vpn.status, StatusCode::CREATED, "{}", vpn.body);
    let vpn = vpn.body["id"].as_str().unwrap().to_owned();
    let jones_vpn = create(
        &h,
        json!({
            "customer_id": jones, "name": "jones", "topology": "mesh",
            "members": [{"device_id": b1, "prefixes": ["10.9.0.0/16"]}]
        }),
    )
    .await;
    assert_eq!(jones_vpn.status, StatusCode::CREATED, "{}", jones_vpn.body);
    let jones_vpn = jones_vpn.body["id"].as_str().unwrap().to_owned();
    let before = vpn_rows(&h).await;
    assert_eq!(before, (2, 2));

    let new = |members: Value, extra: Value| {
        let mut body = json!({
            "customer_id": smith, "name": "second", "topology": "mesh", "members": members
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let two = |p1: &str, p2: &str| {
        json!([
            {"device_id": a2, "prefixes": [p1]},
            {"device_id": a3, "prefixes": [p2]},
        ])
    };
    let cases: Vec<(Value, StatusCode, &str, Vec<&str>)> = vec![
        (
            new(two("10.2.0.0/16", "10.2.4.0/24"), json!({})),
            StatusCode::CONFLICT,
            "overlapping_prefixes",
            vec!["10.2.0.0/16 of `a2`", "10.2.4.0/24 of `a3`"],
        ),
        (
            new(two("10.2.0.0/16", "100.64.9.0/24"), json!({})),
            StatusCode::CONFLICT,
            "prefix_in_address_pool",
            vec!["100.64.9.0/24", "`a3`", "100.64.0.0/16"],
        ),
        (
            new(
                two("10.2.0.0/16", "10.3.0.0/16"),
                json!({"topology": "hub", "hub": a1}),
            ),
            StatusCode::BAD_REQUEST,
            "hub_not_member",
            vec![],
        ),
        (
            new(
                two("10.2.0.0/16", "10.3.0.0/16"),
                json!({"topology": "hub"}),
            ),
            StatusCode::BAD_REQUEST,
            "hub_required",
            vec![],
        ),
        (
            new(two("10.2.0.0/16", "10.3.0.0/16"), json!({"hub": a2})),
            StatusCode::BAD_REQUEST,
            "unexpected_hub",
            vec![],
        ),
        (
            new(
                json!([{"device_id": b1, "prefixes": ["10.2.0.0/16"]}]),
                json!({}),
            ),
            StatusCode::CONFLICT,
            "device_not_of_customer",
            vec!["`b1`", "Jones", "Smith"],
        ),
        (
            new(
                json!([{"device_id": loose, "prefixes": ["10.2.0.0/16"]}]),
                json!({}),
            ),
            StatusCode::CONFLICT,
            "device_not_of_customer",
            vec!["`loose`", "no household"],
        ),
        (
            new(
                json!([
                    {"device_id": a2, "prefixes": ["10.2.0.0/16"]},
                    {"device_id": a1, "prefixes": ["10.3.0.0/16"]},
                ]),
                json!({}),
            ),
            StatusCode::CONFLICT,
            "device_in_vpn",
            vec!["`a1`", "`home`"],
        ),
        (
            new(
                two("10.2.0.0/16", "10.3.0.0/16"),
                json!({"address_pool": "10.99.0.0/30"}),
            ),
            StatusCode::CONFLICT,
            "address_pool_exhausted",
            vec!["10.99.0.0/30"],
        ),
        (
            new(
                two("10.2.0.0/16", "10.3.0.0/16"),
                json!({"customer_id": uuid::Uuid::new_v4()}),
            ),
            StatusCode::NOT_FOUND,
            "unknown_customer",
            vec![],
        ),
        (
            new(
                json!([{"device_id": uuid::Uuid::new_v4(), "prefixes": ["10.2.0.0/16"]}]),
                json!({}),
            ),
            StatusCode::NOT_FOUND,
            "unknown_device",
            vec![],
        ),
        (
            {
                let hub = uuid::Uuid::new_v4();
                new(
                    json!([{"device_id": hub, "prefixes": ["10.2.0.0/16"]}]),
                    json!({"topology": "hub", "hub": hub}),
                )
            },
            StatusCode::NOT_FOUND,
            "unknown_device",
            vec![],
        ),
        (
            new(json!([]), json!({"name": "home"})),
            StatusCode::CONFLICT,
            "name_taken",
            vec!["`home`", "Smith"],
        ),
        (
            new(
                json!([{"device_id": a2, "prefixes": (0..257)
                    .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
                    .collect::<Vec<_>>()}]),
                json!({}),
            ),
            StatusCode::BAD_REQUEST,
            "too_many_prefixes",
            vec!["257"],
        ),
        (
            new(two("10.2.0.1/16", "10.3.0.0/16"), json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_prefix",
            vec!["host bits", "10.2.0.0/16"],
        ),
        (
            new(two("banana", "10.3.0.0/16"), json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_prefix",
            vec!["banana"],
        ),
        (
            new(json!([{"device_id": a2, "prefixes": []}]), json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_prefix",
            vec![],
        ),
        (
            new(two("10.2.0.0/16", "0.0.0.0/0"), json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_prefix",
            vec![],
        ),
        (
            new(json!([]), json!({"address_pool": "10.0.0.0/31"})),
            StatusCode::BAD_REQUEST,
            "invalid_address_pool",
            vec![],
        ),
        (
            new(json!([]), json!({"address_pool": "fd00::/64"})),
            StatusCode::BAD_REQUEST,
            "invalid_address_pool",
            vec![],
        ),
        (
            new(json!([]), json!({"topology": "star"})),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            vec![],
        ),
        (
            new(
                json!([
                    {"device_id": a2, "prefixes": ["10.2.0.0/16"]},
                    {"device_id": a2, "prefixes": ["10.3.0.0/16"]},
                ]),
                json!({}),
            ),
            StatusCode::BAD_REQUEST,
            "duplicate_member",
            vec![],
        ),
        (
            new(json!([]), json!({"name": ""})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            vec![],
        ),
    ];
    for (body, status, code, words) in cases {
        let r = create(&h, body.clone()).await;
        let message = refused(&r, status, code);
        for word in words {
            assert!(message.contains(word), "{code}: `{word}` in {message}");
        }
        assert_eq!(vpn_rows(&h).await, before, "{code}: {body}");
    }

    // Changes to an existing VPN.
    let member_path = |device: &str| format!("/api/v1/vpns/{vpn}/members/{device}");
    let overlap = put_member(&h, &vpn, a2, json!(["10.0.0.0/8"])).await;
    let message = refused(&overlap, StatusCode::CONFLICT, "overlapping_prefixes");
    assert!(
        message.contains("10.0.0.0/8 of `a2`") && message.contains("10.1.0.0/16 of `a1`"),
        "{message}"
    );
    let cases: Vec<(Response, StatusCode, &str)> = vec![
        (
            put_member(&h, &vpn, a2, json!(["100.64.0.0/10"])).await,
            StatusCode::CONFLICT,
            "prefix_in_address_pool",
        ),
        (
            put_member(&h, &vpn, b1, json!(["10.2.0.0/16"])).await,
            StatusCode::CONFLICT,
            "device_not_of_customer",
        ),
        (
            put_member(&h, &jones_vpn, a2, json!(["10.2.0.0/16"])).await,
            StatusCode::CONFLICT,
            "device_not_of_customer",
        ),
        (
            put_member(
                &h,
                &vpn,
                &uuid::Uuid::new_v4().to_string(),
                json!(["10.2.0.0/16"]),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            put_member(
                &h,
                &uuid::Uuid::new_v4().to_string(),
                a2,
                json!(["10.2.0.0/16"]),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            put_member(&h, &vpn, a2, json!(["10.2.0.1/16"])).await,
            StatusCode::BAD_REQUEST,
            "invalid_prefix",
        ),
        (
            put_member(&h, &vpn, a2, json!("10.2.0.0/16")).await,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            h.call(
                Method::PATCH,
                &format!("/api/v1/vpns/{vpn}"),
                Some(json!({"topology": "hub", "hub": a2})),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "hub_not_member",
        ),
        (
            h.call(
                Method::PATCH,
                &format!("/api/v1/vpns/{vpn}"),
                Some(json!({"topology": "hub"})),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "hub_required",
        ),
        (
            h.call(
                Method::PATCH,
                &format!("/api/v1/vpns/{vpn}"),
                Some(json!({"hub": a1})),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "unexpected_hub",
        ),
        (
            h.call(
                Method::PATCH,
                &format!("/api/v1/vpns/{}", uuid::Uuid::new_v4()),
                Some(json!({"topology": "mesh"})),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            h.call(Method::DELETE, &member_path(a2), None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            h.call(
                Method::DELETE,
                &format!("/api/v1/vpns/{}", uuid::Uuid::new_v4()),
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            h.call(Method::DELETE, &format!("/api/v1/devices/{a1}"), None)
                .await,
            StatusCode::CONFLICT,
            "device_in_vpn",
        ),
        (
            h.call(
                Method::DELETE,
                &format!("/api/v1/customers/{smith}/devices/{a1}"),
                None,
            )
            .await,
            StatusCode::CONFLICT,
            "device_in_vpn",
        ),
        (
            h.call(Method::DELETE, &format!("/api/v1/customers/{smith}"), None)
                .await,
            StatusCode::CONFLICT,
            "customer_has_vpns",
        ),
    ];
    for (r, status, code) in &cases {
        refused(r, *status, code);
    }
    assert_eq!(vpn_rows(&h).await, before);
    assert_eq!(rows(&h, "devices").await, 5);

    // A second VPN of the same customer cannot take a member of the first.
    let second = create(
        &h,
        json!({"customer_id": smith, "name": "second", "topology": "auto"}),
    )
    .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    let second = second.body["id"].as_str().unwrap().to_owned();
    let taken = put_member(&h, &second, a1, json!(["10.1.0.0/16"])).await;
    let message = refused(&taken, StatusCode::CONFLICT, "device_in_vpn");
    assert!(message.contains("`home`"), "{message}");

    // A full pool refuses the next member; the hub cannot leave.
    let small = create(
        &h,
        json!({
            "customer_id": smith, "name": "small", "topology": "hub", "hub": a2,
            "address_pool": "10.99.0.0/30",
            "members": [{"device_id": a2, "prefixes": ["10.2.0.0/16"]}]
        }),
    )
    .await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.body);
    let small = small.body["id"].as_str().unwrap().to_owned();
    let before = vpn_rows(&h).await;
    let full = put_member(&h, &small, a3, json!(["10.3.0.0/16"])).await;
    refused(&full, StatusCode::CONFLICT, "address_pool_exhausted");
    let hub_leaves = h
        .call(
            Method::DELETE,
            &format!("/api/v1/vpns/{small}/members/{a2}"),
            None,
        )
        .await;
    refused(&hub_leaves, StatusCode::CONFLICT, "member_is_hub");
    assert_eq!(vpn_rows(&h).await, before);
}

#[tokio::test]
async fn vpn_writes_need_an_operator_and_reads_a_viewer() {
    let h = Harness::start().await;
    let created = h
        .post(
            "/api/v1/operator-tokens",
            json!({"name": "watcher", "role": "viewer"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let viewer = created.body["token"].as_str().unwrap().to_owned();
    let smith = customer(&h, "Smith", &[]).await;
    let as_viewer = |method: Method, path: &str, body: Option<Value>| {
        let request = h
            .http
            .request(method, format!("{}{path}", h.controller.api_url))
            .bearer_auth(&viewer);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(
        as_viewer(Method::GET, "/api/v1/vpns", None).await,
        StatusCode::OK
    );
    assert_eq!(
        as_viewer(Method::GET, "/api/v1/vpn-relays", None).await,
        StatusCode::OK
    );
    let body = json!({"customer_id": smith, "name": "home", "topology": "auto"});
    assert_eq!(
        as_viewer(Method::POST, "/api/v1/vpns", Some(body)).await,
        StatusCode::FORBIDDEN
    );
    let relay = uuid::Uuid::new_v4();
    assert_eq!(
        as_viewer(Method::PUT, &format!("/api/v1/vpn-relays/{relay}"), None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(rows(&h, "vpns").await, 0);
}

#[tokio::test]
async fn vpn_routes_are_in_the_openapi_document() {
    let h = Harness::start().await;
    let doc = h.get("/api/v1/openapi.json").await;
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/vpns", &["get", "post"][..]),
        ("/api/v1/vpns/{id}", &["get", "patch", "delete"]),
        ("/api/v1/vpns/{id}/members/{device_id}", &["put", "delete"]),
        ("/api/v1/vpn-relays", &["get"]),
        ("/api/v1/vpn-relays/{device_id}", &["put", "delete"]),
    ] {
        for method in methods {
            assert!(paths[path].get(method).is_some(), "{method} {path} missing");
        }
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for schema in [
        "CreateVpn",
        "VpnView",
        "MemberView",
        "Topology",
        "RelayView",
    ] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
}
