//! The VPN control plane: probes prove inbound UDP, facts drive the plan,
//! a change recompiles only the routers of the VPN it touches, and key
//! rotations move through their stages.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use isdf_api::{WgKey, WireguardFacts};
use isdf_controller::reconcile::Resign;
use isdf_controller::vpn::keys::KeyKeeper;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::Harness;

fn key(n: u32) -> WgKey {
    let mut bytes = [7u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    WgKey(bytes)
}

fn facts(using: u32, next: Option<u32>, generation: u32) -> WireguardFacts {
    WireguardFacts {
        public_key: key(using),
        next_public_key: next.map(key),
        key_generation: generation,
        listen_port: 51820,
        wan_addresses: vec![],
        probe_nonce: None,
    }
}

/// `vpns` VPNs of `sites` routers each (one customer per VPN), built in SQL:
/// router `v * sites + s` has LAN 10.v.s.0/24 and tunnel address
/// 100.64.0.(s+1). Returns the members of each VPN.
async fn fleet(pool: &PgPool, vpns: usize, sites: usize) -> Vec<Vec<Uuid>> {
    let mut out = Vec::new();
    for v in 0..vpns {
        let customer = Uuid::new_v4();
        sqlx::query("INSERT INTO customers (id, name) VALUES ($1, $2)")
            .bind(customer)
            .bind(format!("customer-{v}"))
            .execute(pool)
            .await
            .unwrap();
        let vpn = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO vpns (id, customer_id, name, topology, address_pool) \
             VALUES ($1, $2, 'sites', 'auto', '100.64.0.0/16')",
        )
        .bind(vpn)
        .bind(customer)
        .execute(pool)
        .await
        .unwrap();
        let mut members = Vec::new();
        for s in 0..sites {
            let device = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO devices (id, name, labels, customer_id) VALUES ($1, $2, '{}', $3)",
            )
            .bind(device)
            .bind(format!("v{v}-s{s}"))
            .bind(customer)
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO vpn_members (vpn_id, device_id, tunnel_address, prefixes) \
                 VALUES ($1, $2, $3::inet, ARRAY[$4::cidr])",
            )
            .bind(vpn)
            .bind(device)
            .bind(format!("100.64.0.{}/32", s + 1))
            .bind(format!("10.{}.{}.0/24", v % 250, s))
            .execute(pool)
            .await
            .unwrap();
            members.push(device);
        }
        out.push(members);
    }
    out
}

async fn config_of(h: &Harness, device: Uuid) -> Value {
    h.get(&format!("/api/v1/devices/{device}/config"))
        .await
        .body["config"]
        .clone()
}

/// Each router reports a reachable address (as a redeemed probe would).
async fn report_all(keys: &KeyKeeper<'_>, members: &[Vec<Uuid>]) {
    for (v, vpn) in members.iter().enumerate() {
        for (s, device) in vpn.iter().enumerate() {
            let n = (v * 100 + s) as u32;
            let addr = IpAddr::V4(Ipv4Addr::new(203, 0, (v % 250) as u8, s as u8 + 1));
            keys.record(*device, &facts(n, None, 1), Some(addr))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_change_recompiles_exactly_the_routers_of_its_vpn() {
    let h = Harness::start().await;
    let state = &h.controller.state;
    let members = fleet(&state.pool, 100, 10).await;
    for device in members.iter().flatten() {
        state.cache.add_device(*device);
    }
    let keys = KeyKeeper {
        reconciler: &state.reconciler,
    };
    report_all(&keys, &members).await;

    // One router's endpoint changes: only its VPN's ten routers compile,
    // and the nine others get a new version (its own config names no
    // endpoint of its own).
    let started = std::time::Instant::now();
    let moved = keys
        .record(
            members[42][3],
            &facts(4203, None, 1),
            Some("198.51.100.9".parse().unwrap()),
        )
        .await
        .unwrap();
    let one_vpn = started.elapsed();
    assert_eq!((moved.compiled, moved.changed), (10, 9));
    let peer = config_of(&h, members[42][0]).await;
    let endpoints: Vec<&str> = peer["firewall"]["wireguard"]["tunnels"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["endpoint"].as_str())
        .collect();
    assert!(endpoints.contains(&"198.51.100.9:51820"), "{endpoints:?}");

    // The same facts again: nothing compiles.
    let again = keys
        .record(
            members[42][3],
            &facts(4203, None, 1),
            Some("198.51.100.9".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!((again.compiled, again.changed), (0, 0));

    // Recompiling everything touches all 1,000 routers and changes none.
    let started = std::time::Instant::now();
    let everything = state
        .reconciler
        .recompile(None, Resign::IfChanged)
        .await
        .unwrap();
    let all = started.elapsed();
    assert_eq!((everything.compiled, everything.changed), (1000, 0));
    // Figures for docs/benchmarks.md (h); timings are not asserted.
    eprintln!(
        "one VPN's change: {} compiled, {} changed in {one_vpn:?}; \
         everything: {} compiled, {} changed in {all:?}",
        moved.compiled, moved.changed, everything.compiled, everything.changed
    );
}

#[tokio::test]
async fn a_probe_proves_inbound_udp_and_its_nonce_marks_the_address_reachable() {
    let h = Harness::start().await;
    let (id, device) = h.device("site-1", json!({})).await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let answer: Value = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_WIREGUARD_PROBE))
        .json(&json!({"port": port, "wan_addresses": ["0.0.0.0"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["sent_to"], json!([format!("127.0.0.1:{port}")]));
    let mut buf = [0u8; 128];
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    let nonce = std::str::from_utf8(&buf[..len])
        .unwrap()
        .strip_prefix("ISDF-PROBE ")
        .expect("a probe")
        .to_owned();

    let put = |nonce: Option<String>| {
        let mut body = facts(1, None, 1);
        body.probe_nonce = nonce;
        device
            .http
            .put(device.url(isdf_api::paths::DEVICE_WIREGUARD_FACTS))
            .json(&body)
            .send()
    };
    // A nonce we never sent proves nothing.
    assert_eq!(put(Some("00".repeat(16))).await.unwrap().status(), 204);
    let view = h.get(&format!("/api/v1/devices/{id}/wireguard")).await;
    assert_eq!(view.body["reachable_address"], Value::Null, "{}", view.body);
    assert_eq!(put(Some(nonce.clone())).await.unwrap().status(), 204);
    let view = h.get(&format!("/api/v1/devices/{id}/wireguard")).await;
    assert_eq!(view.body["reachable_address"], "127.0.0.1");
    assert_eq!(view.body["public_key"], key(1).to_string());
    // Redeemed once: replaying it later proves nothing.
    assert_eq!(put(Some(nonce)).await.unwrap().status(), 204);
    let view = h.get(&format!("/api/v1/devices/{id}/wireguard")).await;
    assert_eq!(view.body["reachable_address"], Value::Null);

    // Malformed facts: 400 with a stable code, nothing stored.
    let mut bad = facts(2, None, 1);
    bad.listen_port = 0;
    let refused = device
        .http
        .put(device.url(isdf_api::paths::DEVICE_WIREGUARD_FACTS))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    let view = h.get(&format!("/api/v1/devices/{id}/wireguard")).await;
    assert_eq!(view.body["public_key"], key(1).to_string());
}

#[tokio::test]
async fn a_rotation_is_announced_switched_and_finished() {
    let h = Harness::start().await;
    let state = &h.controller.state;
    let members = fleet(&state.pool, 1, 3).await;
    for device in &members[0] {
        state.cache.add_device(*device);
    }
    let keys = KeyKeeper {
        reconciler: &state.reconciler,
    };
    report_all(&keys, &members).await;
    let [rotating, a, b] = [members[0][0], members[0][1], members[0][2]];
    let peer_entry = |config: &Value| -> Value {
        config["firewall"]["wireguard"]["tunnels"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "v0-s0")
            .cloned()
            .unwrap()
    };

    let asked = h
        .post(
            &format!("/api/v1/devices/{rotating}/wireguard/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(asked.status, 202, "{}", asked.body);
    assert_eq!(asked.body["requested_generation"], 2);
    let own = config_of(&h, rotating).await;
    assert_eq!(own["firewall"]["wireguard"]["key_generation"], 2);
    let again = h
        .post(
            &format!("/api/v1/devices/{rotating}/wireguard/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(again.status, 409);

    // The router made key 999 and reports it: peers accept both.
    keys.record(
        rotating,
        &facts(0, Some(999), 2),
        Some("203.0.0.1".parse().unwrap()),
    )
    .await
    .unwrap();
    let seen_by_a = peer_entry(&config_of(&h, a).await);
    assert_eq!(seen_by_a["public_key"], key(0).to_string());
    assert_eq!(seen_by_a["alternate_public_key"], key(999).to_string());
    let view = h
        .get(&format!("/api/v1/devices/{rotating}/wireguard"))
        .await;
    assert_eq!(view.body["rotation_stage"], "announced");
    // Not switched until both peers enforce the announcing configs.
    let own = config_of(&h, rotating).await;
    assert_eq!(
        own["firewall"]["wireguard"]["public_key"],
        key(0).to_string()
    );
    let version = |c: &Value| c["version"].as_u64().unwrap();
    let (va, vb) = (
        version(&config_of(&h, a).await),
        version(&config_of(&h, b).await),
    );
    keys.enforced(a, va).await.unwrap();
    let view = h
        .get(&format!("/api/v1/devices/{rotating}/wireguard"))
        .await;
    assert_eq!(view.body["rotation_stage"], "announced");
    keys.enforced(b, vb).await.unwrap();
    let view = h
        .get(&format!("/api/v1/devices/{rotating}/wireguard"))
        .await;
    assert_eq!(view.body["rotation_stage"], "switching");
    let own = config_of(&h, rotating).await;
    assert_eq!(
        own["firewall"]["wireguard"]["public_key"],
        key(999).to_string()
    );
    let seen_by_a = peer_entry(&config_of(&h, a).await);
    assert_eq!(seen_by_a["public_key"], key(999).to_string());
    assert_eq!(seen_by_a["alternate_public_key"], key(0).to_string());

    // The router uses the new key: the old one leaves its peers.
    keys.record(
        rotating,
        &facts(999, None, 2),
        Some("203.0.0.1".parse().unwrap()),
    )
    .await
    .unwrap();
    let seen_by_b = peer_entry(&config_of(&h, b).await);
    assert_eq!(seen_by_b["public_key"], key(999).to_string());
    assert_eq!(seen_by_b.get("alternate_public_key"), None);
    let view = h
        .get(&format!("/api/v1/devices/{rotating}/wireguard"))
        .await;
    assert_eq!(view.body["rotation_stage"], Value::Null);
}

#[tokio::test]
async fn an_auto_vpn_with_no_reachable_site_goes_through_a_relay_until_one_is() {
    let h = Harness::start().await;
    let state = &h.controller.state;
    let members = fleet(&state.pool, 1, 2).await;
    let relay = Uuid::new_v4();
    sqlx::query("INSERT INTO devices (id, name, labels) VALUES ($1, 'relay-1', '{}')")
        .bind(relay)
        .execute(&state.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO vpn_relays (device_id) VALUES ($1)")
        .bind(relay)
        .execute(&state.pool)
        .await
        .unwrap();
    for device in members[0].iter().chain([&relay]) {
        state.cache.add_device(*device);
    }
    let keys = KeyKeeper {
        reconciler: &state.reconciler,
    };
    let tunnels = |config: Value| config["firewall"]["wireguard"]["tunnels"].clone();
    // The relay reports first (reachable); both sites are behind NAT.
    keys.record(
        relay,
        &facts(500, None, 1),
        Some("198.51.100.50".parse().unwrap()),
    )
    .await
    .unwrap();
    for (n, device) in members[0].iter().enumerate() {
        keys.record(*device, &facts(n as u32, None, 1), None)
            .await
            .unwrap();
    }
    let site = tunnels(config_of(&h, members[0][0]).await);
    assert_eq!(site[0]["peers"].as_array().unwrap().len(), 1, "{site}");
    assert_eq!(site[0]["peers"][0]["name"], "relay-1");
    assert_eq!(site[0]["peers"][0]["endpoint"], "198.51.100.50:51821");
    let vpn: Uuid = sqlx::query_scalar("SELECT vpn_id FROM vpn_members WHERE device_id = $1")
        .bind(members[0][0])
        .fetch_one(&state.pool)
        .await
        .unwrap();
    let roles = |view: Value| -> Vec<String> {
        view["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap().to_owned())
            .collect()
    };
    let view = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    assert_eq!(roles(view.body), ["relay_client", "relay_client"]);
    let relayed = tunnels(config_of(&h, relay).await);
    assert_eq!(relayed[0]["interface"], "isdfrelay1");
    assert_eq!(relayed[0]["listen_port"], 51821);
    assert_eq!(relayed[0]["address"], "100.64.255.254");
    let names: Vec<&str> = relayed[0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v0-s0", "v0-s1"]);

    // A site becomes reachable: a direct mesh, and the relay lets go.
    keys.record(
        members[0][1],
        &facts(1, None, 1),
        Some("203.0.113.2".parse().unwrap()),
    )
    .await
    .unwrap();
    let site = tunnels(config_of(&h, members[0][0]).await);
    assert_eq!(site[0]["peers"][0]["name"], "v0-s1");
    let view = h.get(&format!("/api/v1/vpns/{vpn}")).await;
    assert_eq!(roles(view.body), ["spoke", "hub"]);
    assert_eq!(tunnels(config_of(&h, relay).await), json!([]));
}
