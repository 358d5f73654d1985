//! Rollouts end to end: the real controller in an ISP namespace, four real
//! agents (nftables) on routers with a LAN host each, real traffic from the
//! LAN hosts to servers on the ISP side.
//!
//! - A good revision (block port B instead of port A) reaches the canary
//!   first, then half the fleet, then all of it, each wave only after the
//!   previous one's agents reported it applied; traffic follows.
//! - A revision these routers cannot enforce (their `nft` refuses a rule,
//!   as a kernel without the needed support does) fails on the canary: the
//!   rollout pauses before the next wave, the other routers never see it,
//!   and abort brings the canary back to the previous revision.
//!
//! ```text
//!   r1h ─ r1 (canary) ─┐
//!   r2h ─ r2 ──────────┤
//!   r3h ─ r3 ──────────┼─ br0 (isp: controller and servers, 203.0.113.1)
//!   r4h ─ r4 ──────────┘
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isdf_controller::test_support::TestController;
use serde_json::{json, Value};

use crate::harness::{block_on_in, blocking, serve_greeting, AgentProcess, Operator};
use crate::isp_network::{ip_in, isp_fleet, Network, SiteSpec, Wan, ISP};

const ROUTERS: [&str; 4] = ["r1", "r2", "r3", "r4"];
/// Blocked by revision 1.
const PORT_A: u16 = 9101;
/// Blocked by revision 2.
const PORT_B: u16 = 9102;
/// Blocked by revision 3, which these routers' nft refuses.
const PORT_UNSUPPORTED: u16 = 9103;

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(ISP.parse().unwrap(), port)
}

/// An `nft` that refuses any ruleset naming `PORT_UNSUPPORTED`, with the
/// error a kernel lacking a feature gives; everything else goes to nft.
fn refusing_nft(dir: &Path) -> PathBuf {
    let path = dir.join("nft-without-support");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             script=$(mktemp)\n\
             cat > \"$script\"\n\
             if grep -q '{PORT_UNSUPPORTED}' \"$script\"; then\n\
             \x20 rm -f \"$script\"\n\
             \x20 echo 'Error: Could not process rule: Operation not supported' >&2\n\
             \x20 exit 1\n\
             fi\n\
             nft \"$@\" < \"$script\"\n\
             status=$?\n\
             rm -f \"$script\"\n\
             exit $status\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Fleet {
    controller: TestController,
    operator: Operator,
    devices: HashMap<&'static str, String>,
    agents: Vec<AgentProcess>,
}

impl Fleet {
    async fn start(net: &Network, work: &Path) -> Self {
        let (controller, operator, routers) = isp_fleet(net, work, "r1").await;
        let nft = refusing_nft(work);
        let agents = routers
            .iter()
            .map(|r| {
                AgentProcess::start_with_env(
                    &net.site(r.name).router,
                    &r.config,
                    "nftables",
                    &r.dir.join("agent.log"),
                    &[("ISDF_NFT", &nft)],
                )
            })
            .collect();
        Fleet {
            controller,
            operator,
            devices: routers.into_iter().map(|r| (r.name, r.device)).collect(),
            agents,
        }
    }

    async fn status(&self, router: &str) -> Value {
        self.operator.latest_report(&self.devices[router]).await
    }

    async fn version(&self, router: &str) -> u64 {
        self.operator.config_version(&self.devices[router]).await
    }

    /// Waits until every router reports its current config applied.
    async fn wait_all_applied(&self) {
        for router in ROUTERS {
            let version = self.version(router).await;
            self.operator
                .wait_applied(&self.devices[router], version)
                .await;
        }
    }

    /// Starts a rollout of the assignment's latest revision, the canary
    /// (`canary=true`) first, with `policy`'s thresholds.
    async fn start_rollout(&self, assignment: &str, waves: &[u32], policy: Value) -> Value {
        let mut body = json!({"assignment_id": assignment,
                              "canary": {"selector": "canary=true"}, "waves": waves});
        let fields = body.as_object_mut().unwrap();
        fields.extend(policy.as_object().unwrap().clone());
        self.operator.post("/api/v1/rollouts", body).await
    }

    async fn rollout(&self, id: &str) -> Value {
        self.operator.get(&format!("/api/v1/rollouts/{id}")).await
    }

    /// Waits (at most 60 s) until the rollout satisfies `done`, calling
    /// `watch` on every view seen.
    async fn wait_rollout(
        &self,
        id: &str,
        what: &str,
        mut watch: impl FnMut(&Value),
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = self.rollout(id).await;
            watch(&view);
            if done(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "rollout never {what}: {view:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        for agent in &self.agents {
            let log = agent.log();
            assert!(!log.contains("panicked"), "an agent panicked:\n{log}");
        }
        drop(self.agents);
        self.controller.stop().await.unwrap();
    }
}

/// Whether each router's LAN host reaches `port` on the ISP server.
async fn reachable(net: &Arc<Network>, port: u16) -> Vec<bool> {
    let net = net.clone();
    blocking(move || {
        ROUTERS
            .iter()
            .map(|r| {
                net.site(r)
                    .host()
                    .tcp_works(server(port), Duration::from_millis(500))
            })
            .collect()
    })
    .await
}

#[test]
fn rollouts_with_real_agents() {
    let specs: Vec<SiteSpec> = [
        ("r1", "203.0.113.11/24", "10.1.0.0/24"),
        ("r2", "203.0.113.12/24", "10.2.0.0/24"),
        ("r3", "203.0.113.13/24", "10.3.0.0/24"),
        ("r4", "203.0.113.14/24", "10.4.0.0/24"),
    ]
    .into_iter()
    .map(|(name, wan, lan)| SiteSpec {
        name,
        wan: Wan::Direct(wan),
        lan: Some(lan),
    })
    .collect();
    let net = Arc::new(Network::create("roll", &specs));
    // The servers answer the LAN hosts: routes back to each LAN (no NAT).
    for (i, site) in net.sites.iter().enumerate() {
        ip_in(
            &net.isp,
            &format!("route add {} via 203.0.113.1{}", site_lan(site.name), i + 1),
        );
    }
    let inner = net.clone();
    block_on_in(&net.isp, move |work| scenario(inner, work));
}

fn site_lan(name: &str) -> String {
    format!("10.{}.0.0/24", &name[1..])
}

async fn scenario(net: Arc<Network>, work: PathBuf) {
    for port in [PORT_A, PORT_B, PORT_UNSUPPORTED] {
        serve_greeting(port).await;
    }
    let fleet = Fleet::start(&net, &work).await;
    let operator = &fleet.operator;
    let block = |port: u16| json!({"flows": [{"protocol": "tcp", "dst": format!("{ISP}/32"), "dport": port}]});
    let service = operator
        .post(
            "/api/v1/services",
            json!({"name": "policy", "kind": "flow-block", "spec": block(PORT_A)}),
        )
        .await;
    let service_id = service["id"].as_str().unwrap().to_owned();
    let assignment = operator
        .post(
            "/api/v1/assignments",
            json!({"service_id": service_id, "selector": "*"}),
        )
        .await;
    let assignment_id = assignment["id"].as_str().unwrap().to_owned();
    fleet.wait_all_applied().await;
    assert_eq!(reachable(&net, PORT_A).await, [false; 4]);
    assert_eq!(reachable(&net, PORT_B).await, [true; 4]);

    // --- a good revision, wave by wave ------------------------------------
    operator
        .post(
            &format!("/api/v1/services/{service_id}/revisions"),
            json!({"spec": block(PORT_B)}),
        )
        .await;
    let mut before = HashMap::new();
    for r in ROUTERS {
        before.insert(r, fleet.version(r).await);
    }
    let started = fleet
        .start_rollout(
            &assignment_id,
            &[50, 100],
            json!({"min_applied_share": 1.0, "soak_secs": 1, "offline_timeout_secs": 120}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["waves"][0]["routers"], 1);
    assert_eq!(started["waves"][1]["routers"], 1);
    assert_eq!(started["waves"][2]["routers"], 2);
    for r in &ROUTERS[1..] {
        assert_eq!(fleet.version(r).await, before[r], "{r} waits for its wave");
    }
    // Each time a wave is released, the earlier waves' routers have all
    // reported the new revision applied.
    let mut released_seen = 0;
    let mut order_ok = true;
    let done = fleet
        .wait_rollout(
            &id,
            "completed",
            |view| {
                let current = view["current_wave"].as_u64().unwrap();
                if current > released_seen {
                    for earlier in 0..current as usize {
                        let w = &view["waves"][earlier];
                        order_ok &= w["applied"] == w["routers"] && w["passed_at"].is_string();
                    }
                    released_seen = current;
                }
            },
            |view| view["state"] == "completed",
        )
        .await;
    assert!(order_ok, "a wave was released before the previous passed");
    assert_eq!(released_seen, 2);
    assert_eq!(done["totals"]["applied"], 4);
    let waves = done["waves"].as_array().unwrap();
    for pair in waves.windows(2) {
        assert!(
            pair[0]["passed_at"].as_str() <= pair[1]["released_at"].as_str(),
            "{pair:?}"
        );
    }
    assert_eq!(reachable(&net, PORT_A).await, [true; 4]);
    assert_eq!(reachable(&net, PORT_B).await, [false; 4]);

    // --- a revision the routers cannot enforce ----------------------------
    operator
        .post(
            &format!("/api/v1/services/{service_id}/revisions"),
            json!({"spec": block(PORT_UNSUPPORTED)}),
        )
        .await;
    let mut enforced = HashMap::new();
    for r in ROUTERS {
        enforced.insert(r, fleet.version(r).await);
    }
    let started = fleet
        .start_rollout(&assignment_id, &[100], json!({"soak_secs": 0}))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    let paused = fleet
        .wait_rollout(&id, "paused", |_| {}, |view| view["state"] == "paused")
        .await;
    let reason = paused["pause_reason"].as_str().unwrap();
    assert!(reason.contains("1 of 1 routers failed"), "{reason}");
    assert_eq!(paused["current_wave"], 0);
    assert_eq!(paused["waves"][1]["released_at"], Value::Null);
    let canary = fleet.status("r1").await;
    assert_eq!(canary["outcome"], "rolled_back", "{canary}");
    assert_eq!(canary["enforced_version"], enforced["r1"]);
    assert!(
        canary["errors"]
            .to_string()
            .contains("Operation not supported"),
        "{canary}"
    );
    for r in &ROUTERS[1..] {
        assert_eq!(fleet.version(r).await, enforced[r], "{r} never got it");
        let status = fleet.status(r).await;
        assert_eq!(status["outcome"], "applied", "{r}: {status}");
        assert_eq!(status["enforced_version"], enforced[r]);
    }
    // Stays paused: nothing is released while it is.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fleet.rollout(&id).await["state"], "paused");

    let aborted = operator
        .post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
        .await;
    assert_eq!(aborted["state"], "aborted");
    // The canary gets revision 2 back in a newer version and applies it.
    let restored = fleet.version("r1").await;
    assert!(restored > enforced["r1"] + 1, "{restored}");
    operator.wait_applied(&fleet.devices["r1"], restored).await;
    let config = operator
        .get(&format!("/api/v1/devices/{}/config", fleet.devices["r1"]))
        .await;
    let sets = config["config"]["firewall"]["sets"].to_string();
    assert!(
        sets.contains(&PORT_B.to_string()) && !sets.contains(&PORT_UNSUPPORTED.to_string()),
        "{sets}"
    );
    assert_eq!(reachable(&net, PORT_B).await, [false; 4]);
    assert_eq!(reachable(&net, PORT_UNSUPPORTED).await, [true; 4]);
    let assignment = operator
        .get(&format!("/api/v1/assignments/{assignment_id}"))
        .await;
    assert_eq!(assignment["revision"], 2);
    fleet.stop().await;
}
