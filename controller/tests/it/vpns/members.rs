//! VPN members keep their tunnel addresses until they leave; relays are ISP
//! routers shown in the VPNs they serve; concurrent writers never share an
//! address or a prefix.

use super::*;

#[tokio::test]
async fn vpn_members_keep_their_addresses_until_they_leave() {
    let h = Harness::start().await;
    let ids = routers(&h, &["a1", "a2", "a3", "a4"]).await;
    let (a1, a2, a3, a4) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let smith = customer(&h, "Smith", &[a1, a2, a3, a4]).await;

    let created = create(
        &h,
        json!({
            "customer_id": smith, "name": "home", "topology": "mesh",
            "address_pool": "10.99.0.0/29",
            "members": [
                {"device_id": a1, "prefixes": ["10.1.0.0/16", "fd00:1::/64"]},
                {"device_id": a2, "prefixes": ["10.2.0.0/16"]},
            ]
        }),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let vpn = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["customer_id"], smith.as_str());
    assert_eq!(created.body["topology"], "mesh");
    assert_eq!(created.body["hub"], Value::Null);
    assert_eq!(created.body["address_pool"], "10.99.0.0/29");
    assert_eq!(created.body["relay"], Value::Null);
    assert_eq!(
        members(&created.body),
        [
            member("a1", "10.99.0.1", &["10.1.0.0/16", "fd00:1::/64"]),
            member("a2", "10.99.0.2", &["10.2.0.0/16"]),
        ]
    );
    assert_eq!(created.body["members"][0]["facts"], Value::Null);

    let got = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(members(&got.body), members(&created.body));

    // Facts the router reported show read-only.
    sqlx::query(
        "INSERT INTO wireguard_facts (device_id, public_key, key_generation, listen_port,
             reachable_address, active_public_key)
         VALUES ($1::uuid, 'pk-a1', 1, 51820, '198.51.100.7', 'pk-a1')",
    )
    .bind(a1)
    .execute(&h.controller.state.pool)
    .await
    .unwrap();
    let got = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    assert_eq!(
        got.body["members"][0]["facts"],
        json!({"public_key": "pk-a1", "reachable_address": "198.51.100.7"})
    );

    // Joining takes the lowest free address; changing prefixes keeps it.
    let added = put_member(&h, &vpn, a3, json!(["192.168.3.0/24"])).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let updated = put_member(&h, &vpn, a2, json!(["10.2.0.0/16", "10.22.0.0/16"])).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(
        members(&updated.body),
        [
            member("a1", "10.99.0.1", &["10.1.0.0/16", "fd00:1::/64"]),
            member("a2", "10.99.0.2", &["10.2.0.0/16", "10.22.0.0/16"]),
            member("a3", "10.99.0.3", &["192.168.3.0/24"]),
        ]
    );

    // An address is reused only once its member left.
    let left = h
        .call(
            Method::DELETE,
            &format!("/api/v1/vpns/{vpn}/members/{a2}"),
            None,
        )
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{}", left.body);
    let joined = put_member(&h, &vpn, a4, json!(["10.2.0.0/16"])).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{}", joined.body);
    assert_eq!(
        members(&joined.body),
        [
            member("a1", "10.99.0.1", &["10.1.0.0/16", "fd00:1::/64"]),
            member("a4", "10.99.0.2", &["10.2.0.0/16"]),
            member("a3", "10.99.0.3", &["192.168.3.0/24"]),
        ]
    );

    // Hub topology: the hub stays until another is chosen.
    let patch = |body: Value| {
        let path = format!("/api/v1/vpns/{vpn}");
        let h = &h;
        async move { h.call(Method::PATCH, &path, Some(body)).await }
    };
    let hub = patch(json!({"topology": "hub", "hub": a1})).await;
    assert_eq!(hub.status, StatusCode::OK, "{}", hub.body);
    assert_eq!(hub.body["topology"], "hub");
    assert_eq!(hub.body["hub"], a1.as_str());
    let moved = patch(json!({"hub": a3})).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    assert_eq!(moved.body["hub"], a3.as_str());
    let auto = patch(json!({"topology": "auto"})).await;
    assert_eq!(auto.status, StatusCode::OK, "{}", auto.body);
    assert_eq!(
        (&auto.body["topology"], &auto.body["hub"]),
        (&json!("auto"), &Value::Null)
    );

    // Lists, with the customer filter and pages.
    let other = customer(&h, "Jones", &[]).await;
    let second = create(
        &h,
        json!({"customer_id": smith, "name": "office", "topology": "auto"}),
    )
    .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body["address_pool"], "100.64.0.0/16");
    let all = h.get(&format!("/api/v1/vpns?customer_id={smith}")).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let mut names: Vec<_> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["member_count"].as_i64().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, [("home", 3), ("office", 0)]);
    let none = h.get(&format!("/api/v1/vpns?customer_id={other}")).await;
    assert_eq!(none.body["items"], json!([]));
    let first_page = h.get("/api/v1/vpns?limit=1").await;
    let cursor = first_page.body["next_cursor"].as_str().unwrap();
    let second_page = h
        .get(&format!("/api/v1/vpns?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(second_page.body["items"].as_array().unwrap().len(), 1);
    assert_ne!(
        first_page.body["items"][0]["id"],
        second_page.body["items"][0]["id"]
    );

    // Deleting the VPN frees its routers for another.
    let deleted = h
        .call(Method::DELETE, &format!("/api/v1/vpns/{vpn}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_eq!(vpn_rows(&h).await, (1, 0));
    let gone = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    refused(&gone, StatusCode::NOT_FOUND, "not_found");
    let office = second.body["id"].as_str().unwrap();
    let rejoined = put_member(&h, office, a1, json!(["10.1.0.0/16"])).await;
    assert_eq!(rejoined.status, StatusCode::CREATED, "{}", rejoined.body);
    assert_eq!(
        members(&rejoined.body),
        [member("a1", "100.64.0.1", &["10.1.0.0/16"])]
    );

    // Every change was audited, under the operator role.
    let audit = h.get("/api/v1/audit?limit=500").await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "POST /api/v1/vpns",
        "PUT /api/v1/vpns/{id}/members/{device_id}",
        "DELETE /api/v1/vpns/{id}/members/{device_id}",
        "PATCH /api/v1/vpns/{id}",
        "DELETE /api/v1/vpns/{id}",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn vpn_relays_are_isp_routers_and_show_in_the_vpns_they_serve() {
    let h = Harness::start().await;
    let ids = routers(&h, &["relay1", "a1", "a2"]).await;
    let (relay, a1, a2) = (&ids[0], &ids[1], &ids[2]);
    let smith = customer(&h, "Smith", &[a1, a2]).await;

    let put = |device: String| {
        let h = &h;
        async move {
            h.call(Method::PUT, &format!("/api/v1/vpn-relays/{device}"), None)
                .await
        }
    };
    let made = put(relay.clone()).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["name"], "relay1");
    assert_eq!(made.body["vpns"], 0);
    assert_eq!(put(relay.clone()).await.status, StatusCode::OK);
    let customers_router = put(a1.clone()).await;
    refused(
        &customers_router,
        StatusCode::CONFLICT,
        "device_has_customer",
    );
    let unknown = put(uuid::Uuid::new_v4().to_string()).await;
    refused(&unknown, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(rows(&h, "vpn_relays").await, 1);

    let vpn = create(
        &h,
        json!({
            "customer_id": smith, "name": "home", "topology": "auto",
            "address_pool": "10.99.0.0/30",
            "members": [{"device_id": a1, "prefixes": ["10.1.0.0/16"]}]
        }),
    )
    .await;
    assert_eq!(vpn.status, StatusCode::CREATED, "{}", vpn.body);
    let vpn = vpn.body["id"].as_str().unwrap().to_owned();
    // A relay cannot be a member (it has no household either).
    sqlx::query("UPDATE devices SET customer_id = $1::uuid WHERE id = $2::uuid")
        .bind(&smith)
        .bind(relay)
        .execute(&h.controller.state.pool)
        .await
        .unwrap();
    let as_member = put_member(&h, &vpn, relay, json!(["10.7.0.0/16"])).await;
    refused(&as_member, StatusCode::CONFLICT, "device_is_relay");
    sqlx::query("UPDATE devices SET customer_id = NULL WHERE id = $1::uuid")
        .bind(relay)
        .execute(&h.controller.state.pool)
        .await
        .unwrap();

    // The controller's relay choice (made by the VPN planner) shows in the view,
    // on the pool's highest usable address.
    sqlx::query(
        "INSERT INTO vpn_relay_slots (vpn_id, relay_device_id, slot) VALUES ($1::uuid, $2::uuid, 1)",
    )
    .bind(&vpn)
    .bind(relay)
    .execute(&h.controller.state.pool)
    .await
    .unwrap();
    let view = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    assert_eq!(
        view.body["relay"],
        json!({"device_id": relay, "name": "relay1", "slot": 1, "tunnel_address": "10.99.0.2"})
    );
    let listed = h.get("/api/v1/vpn-relays").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["items"][0]["vpns"], 1);

    // A relay in use cannot be deleted as a device; leaving the relays frees it.
    let delete_device = h
        .call(Method::DELETE, &format!("/api/v1/devices/{relay}"), None)
        .await;
    refused(&delete_device, StatusCode::CONFLICT, "device_is_relay");
    let stopped = h
        .call(Method::DELETE, &format!("/api/v1/vpn-relays/{relay}"), None)
        .await;
    assert_eq!(stopped.status, StatusCode::NO_CONTENT, "{}", stopped.body);
    assert_eq!(rows(&h, "vpn_relay_slots").await, 0);
    let view = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    assert_eq!(view.body["relay"], Value::Null);
    let again = h
        .call(Method::DELETE, &format!("/api/v1/vpn-relays/{relay}"), None)
        .await;
    refused(&again, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn vpn_concurrent_writers_never_share_an_address_or_a_prefix() {
    let h = Harness::start().await;
    let names: Vec<String> = (0..10).map(|i| format!("site{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids = routers(&h, &names).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let smith = customer(&h, "Smith", &refs).await;
    let vpn = create(
        &h,
        json!({"customer_id": smith, "name": "home", "topology": "auto", "address_pool": "10.99.0.0/28"}),
    )
    .await;
    assert_eq!(vpn.status, StatusCode::CREATED, "{}", vpn.body);
    let vpn = vpn.body["id"].as_str().unwrap().to_owned();

    // Ten routers join at once: ten distinct addresses, the lowest ten.
    let joins = join_all(
        ids.iter()
            .enumerate()
            .map(|(i, id)| put_member(&h, &vpn, id, json!([format!("10.{i}.0.0/16")]))),
    )
    .await;
    for r in &joins {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let view = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    let mut addresses: Vec<String> = members(&view.body).into_iter().map(|m| m.1).collect();
    addresses.sort_by_key(|a| a.parse::<std::net::Ipv4Addr>().unwrap());
    let expected: Vec<String> = (1..=10).map(|i| format!("10.99.0.{i}")).collect();
    assert_eq!(addresses, expected);

    // Ten members claim the same prefix at once: exactly one gets it.
    let claims = join_all(
        ids.iter()
            .map(|id| put_member(&h, &vpn, id, json!(["192.168.0.0/16"]))),
    )
    .await;
    let accepted = claims.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(accepted, 1);
    for r in claims.iter().filter(|r| r.status != StatusCode::OK) {
        refused(r, StatusCode::CONFLICT, "overlapping_prefixes");
    }

    // One router, two VPNs at once: it joins one.
    let other = create(
        &h,
        json!({"customer_id": smith, "name": "other", "topology": "auto"}),
    )
    .await;
    let other = other.body["id"].as_str().unwrap().to_owned();
    let leave = h
        .call(
            Method::DELETE,
            &format!("/api/v1/vpns/{vpn}/members/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(leave.status, StatusCode::NO_CONTENT);
    let both = join_all(
        [&vpn, &other]
            .into_iter()
            .map(|v| put_member(&h, v, &ids[0], json!(["172.16.0.0/16"]))),
    )
    .await;
    let statuses: Vec<StatusCode> = both.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&StatusCode::CREATED) && statuses.contains(&StatusCode::CONFLICT),
        "{statuses:?}"
    );
    assert_eq!(rows(&h, "vpn_members").await, 10);
}

/// The public keys a router's stored config peers with.
async fn peers_of(h: &Harness, device: &str) -> Vec<String> {
    let config = h.get(&format!("/api/v1/devices/{device}/config")).await;
    let mut keys: Vec<String> = config.body["config"]["firewall"]["wireguard"]["tunnels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["peers"].as_array().cloned().unwrap_or_default())
        .map(|p| p["public_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_router_has_its_tunnels_at_once_and_its_peers_add_it_within_a_moment() {
    let h = Harness::start().await;
    let names = ["s0", "s1", "s2", "s3", "s4"];
    let ids = routers(&h, &names).await;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let home = customer(&h, "home", &id_refs).await;
    // Each router's key, as it would report it.
    let key = |n: usize| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([n as u8 + 1; 32])
    };
    for (n, id) in ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO wireguard_facts (device_id, public_key, key_generation, listen_port,
                 reachable_address, active_public_key)
             VALUES ($1::uuid, $2, 1, 51820, $3::inet, $2)",
        )
        .bind(id)
        .bind(key(n))
        .bind(format!("198.51.100.{}", n + 1))
        .execute(&h.controller.state.pool)
        .await
        .unwrap();
    }
    let created = create(
        &h,
        json!({"customer_id": home, "name": "mesh", "topology": "mesh",
               "members": [{"device_id": ids[0], "prefixes": ["10.0.0.0/16"]},
                           {"device_id": ids[1], "prefixes": ["10.1.0.0/16"]}]}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let vpn = created.body["id"].as_str().unwrap().to_owned();
    // Created: every member's tunnels are in force before the answer.
    assert_eq!(peers_of(&h, &ids[0]).await, [key(1)]);

    // A burst of joins, one call after another.
    for (n, id) in ids.iter().enumerate().skip(2) {
        let joined = put_member(&h, &vpn, id, json!([format!("10.{n}.0.0/16")])).await;
        assert_eq!(joined.status, StatusCode::CREATED, "{}", joined.body);
        // The joining router peers with every member already there.
        let mut expected: Vec<String> = (0..n).map(key).collect();
        expected.sort();
        assert_eq!(peers_of(&h, id).await, expected, "s{n} at once");
    }
    // Within a moment every member peers with all the others, and nothing
    // is left marked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (n, id) in ids.iter().enumerate() {
        let mut expected: Vec<String> = (0..5).filter(|m| *m != n).map(key).collect();
        expected.sort();
        while peers_of(&h, id).await != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "s{n} never peered with every other member"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rows(&h, "pending_recompiles").await > 0 {
        assert!(std::time::Instant::now() < deadline, "marks left behind");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A leaving router is out of every peer's config before the answer.
    let left = h
        .call(
            Method::DELETE,
            &format!("/api/v1/vpns/{vpn}/members/{}", ids[4]),
            None,
        )
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{}", left.body);
    for id in &ids[..4] {
        assert!(!peers_of(&h, id).await.contains(&key(4)));
    }
    assert!(peers_of(&h, &ids[4]).await.is_empty());
}
