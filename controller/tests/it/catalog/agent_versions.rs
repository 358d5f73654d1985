//! Pay-per-site for the agent each router runs: an agent refuses a config
//! with fields it does not know (and would then take no other, not even the
//! release that upgrades it), so a router whose agent reported a version
//! older than flow names gets the gate by address alone, and the gate by
//! name once it reports a newer one; a router that never reported gets
//! names.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{report_status, Harness};

/// The router's config firewall, once `wanted` holds of it.
async fn firewall_when(h: &Harness, device: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let config = h
            .get(&format!("/api/v1/devices/{device}/config"))
            .await
            .body;
        let firewall = &config["config"]["firewall"];
        if wanted(firewall) {
            return firewall.clone();
        }
        assert!(Instant::now() < deadline, "never as wanted: {firewall}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reads_names(firewall: &Value) -> bool {
    firewall["flow_names"]["groups"]
        .as_array()
        .is_some_and(|g| !g.is_empty())
}

#[tokio::test]
async fn each_router_gets_the_gate_its_agent_reads() {
    let h = Harness::start().await;
    super::video_gated_everywhere(&h).await;
    let (device, router) = h.device("home", json!({})).await;
    // Never reported: the gate by name.
    firewall_when(&h, &device, reads_names).await;

    // An agent from before flow names reports: compiled again without them.
    let version = h.config_version(&device).await as u64;
    report_status(&router, 1, "rejected", Some(version - 1), "0.1.0").await;
    let old = firewall_when(&h, &device, |f| !reads_names(f)).await;
    let rules = old["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .all(|r| r["match"].get("flow_name").is_none() && r["action"] != "portal"),
        "{old}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["chain"] == "prerouting" && r["action"]["redirect"]["port"] == 8042),
        "HTTP goes to the router's portal responder: {old}"
    );

    // Upgraded: the gate by name again.
    let version = h.config_version(&device).await as u64;
    report_status(&router, 2, "applied", Some(version), "0.2.0").await;
    firewall_when(&h, &device, reads_names).await;
}
