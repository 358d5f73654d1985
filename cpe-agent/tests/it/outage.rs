//! The controller unreachable for longer than a config's lifetime (issue
//! 15), for both backends. Configs live 6 s here. The firewall never
//! opens: while the controller is away the kernel holds exactly what it
//! held, the expired config stays enforced (also by an agent that restarts
//! after a simulated reboot, before any network call), and once the
//! controller is back the router first reports `stale`, then takes the
//! fresh config the controller re-issues.

use std::time::{Duration, Instant};

use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::{json, Value};

use crate::harness::{
    blocking, in_wan, ruleset, serve_greeting, wait_until, wan, AgentProcess, Operator, Stage,
    ATTEMPT,
};
use crate::netns::{Topology, WAN_HOST};

const BLOCKED_PORT: u16 = 9000;
const LIFETIME: Duration = Duration::from_secs(6);

#[test]
fn nftables_controller_away_beyond_a_configs_lifetime_never_opens_the_firewall() {
    outage("nftables");
}

#[test]
fn iptables_controller_away_beyond_a_configs_lifetime_never_opens_the_firewall() {
    outage("iptables");
}

/// The enforced config's version and expiry (Unix seconds), from the API.
async fn current_config(operator: &Operator, device: &str) -> (u64, i64) {
    let config = operator
        .get(&format!("/api/v1/devices/{device}/config"))
        .await;
    (
        config["config"]["version"].as_u64().unwrap(),
        config["config"]["expires_at"].as_i64().unwrap(),
    )
}

/// The controller again, on the same database, data and address.
async fn restart(stopped: (std::path::PathBuf, String, std::net::SocketAddr)) -> TestController {
    let (dir, database_url, device_addr) = stopped;
    let mut options = TestControllerOptions::new(&dir);
    options.device_listen = device_addr;
    options.device_tls_names = vec![WAN_HOST.to_owned()];
    options.database_url = Some(database_url);
    options.config_lifetime = LIFETIME;
    TestController::start(options)
        .await
        .expect("controller restarts")
}

/// Keeps checking, until `until` (Unix seconds) has passed, that the
/// kernel holds `enforced` and the port stays blocked.
async fn hold_until(
    topo: &std::sync::Arc<Topology>,
    backend: &'static str,
    enforced: &str,
    until: i64,
) {
    let topo = topo.clone();
    let enforced = enforced.to_owned();
    blocking(move || {
        let bound = Instant::now() + Duration::from_secs(60);
        while chrono::Utc::now().timestamp() <= until {
            assert!(Instant::now() < bound, "the outage never ended");
            assert_eq!(
                ruleset(&topo.router, backend),
                enforced,
                "the kernel changed"
            );
            assert!(
                !topo.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
                "the firewall opened while the controller was away"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .await;
}

/// Waits for a report in the device's history satisfying `done`.
async fn wait_history(
    operator: &Operator,
    device: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        if let Some(history) = operator
            .try_get(&format!("/api/v1/devices/{device}/status/history?limit=50"))
            .await
        {
            if let Some(found) = history
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| done(&s["report"]))
            {
                return found["report"].clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no report: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn outage(backend: &'static str) {
    in_wan(
        &format!("out{}", &backend[..1]),
        move |topo, work| async move {
            serve_greeting(BLOCKED_PORT).await;
            let Stage {
                controller,
                controller_dir,
                device_addr,
                operator,
                device,
                config_path,
                log,
            } = Stage::prepare_with(&work, None, |o| o.config_lifetime = LIFETIME).await;
            let agent = AgentProcess::start(&topo.router, &config_path, backend, &log);
            operator.wait_applied(&device, 1).await;
            operator
                .block_everywhere(
                    json!([{"protocol": "tcp", "dst": WAN_HOST, "dport": BLOCKED_PORT}]),
                )
                .await;
            operator
                .wait_status(&device, |r| {
                    r["outcome"] == "applied" && r["enforced_version"].as_u64() >= Some(2)
                })
                .await;
            let (version, expires_at) = current_config(&operator, &device).await;
            let enforced = ruleset(&topo.router, backend);

            // 1. The controller goes away for longer than the config lives,
            //    the agent running throughout.
            let stopped = (
                controller_dir.clone(),
                controller.database_url.clone(),
                device_addr,
            );
            controller.stop().await.unwrap();
            let away_since = chrono::Utc::now().timestamp();
            hold_until(
                &topo,
                backend,
                &enforced,
                expires_at.max(away_since) + LIFETIME.as_secs() as i64,
            )
            .await;
            let controller = restart(stopped).await;
            let operator = Operator::new(&controller.api_url, &controller.operator_token);
            // Back: the router says it enforces an expired config, then takes
            // the config the controller re-issued.
            let stale = wait_history(&operator, &device, "stale after the outage", |r| {
                r["outcome"] == "stale" && r["enforced_version"] == json!(version)
            })
            .await;
            assert!(
                stale["errors"].to_string().contains("still enforcing it"),
                "{stale}"
            );
            operator
                .wait_status(&device, |r| {
                    r["outcome"] == "applied" && r["enforced_version"].as_u64() > Some(version)
                })
                .await;
            let (version, expires_at) = current_config(&operator, &device).await;
            let enforced = ruleset(&topo.router, backend);

            // 2. Away again, and the router reboots while its config has
            //    expired: the agent enforces it again before any network call.
            let stopped = (
                controller_dir.clone(),
                controller.database_url.clone(),
                device_addr,
            );
            controller.stop().await.unwrap();
            let away_since = chrono::Utc::now().timestamp();
            hold_until(&topo, backend, &enforced, expires_at.max(away_since) + 1).await;
            agent.kill();
            match backend {
                "nftables" => drop(topo.router.run("nft", &["delete", "table", "inet", "isdf"])),
                _ => {
                    for program in ["iptables", "ip6tables"] {
                        for chain in ["FORWARD", "INPUT", "OUTPUT"] {
                            topo.router.run(program, &["-F", chain]);
                        }
                    }
                }
            }
            let rebooted = AgentProcess::start(&topo.router, &config_path, backend, &log);
            let topo2 = topo.clone();
            blocking(move || {
                wait_until(
                    "the rebooted router blocks again",
                    Duration::from_secs(10),
                    || !topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
                )
            })
            .await;
            hold_until(
                &topo,
                backend,
                &enforced,
                expires_at + LIFETIME.as_secs() as i64,
            )
            .await;
            let controller = restart(stopped).await;
            let operator = Operator::new(&controller.api_url, &controller.operator_token);
            wait_history(&operator, &device, "stale after the reboot", |r| {
                r["outcome"] == "stale" && r["enforced_version"] == json!(version)
            })
            .await;
            operator
                .wait_status(&device, |r| {
                    r["outcome"] == "applied" && r["enforced_version"].as_u64() > Some(version)
                })
                .await;
            drop(rebooted);
            drop(controller);
        },
    );
}
