//! Agent upgrades end to end: the real controller in an ISP namespace, four
//! routers each running the real agent under `deploy/isdf-agent-launch`
//! (restarted by a supervisor loop, as systemd or procd would), a LAN host
//! behind each, and a port on the ISP side that a flow block closes.
//!
//! - A release whose binary exits at start, staged by a rollout: the canary
//!   downloads it, installs it, and `isdf-agent-launch` brings the previous
//!   agent back by itself; the router reports `upgrade_reverted` and the
//!   rollout pauses on the canary. The same for a release that starts but
//!   never reaches the controller (stopped at `upgrade_confirm_secs`).
//! - A second real build of the agent (the same source, its version set at
//!   build time: `ISDF_TEST_AGENT_NEXT`, built by `scripts/test`) rolled out
//!   wave by wave: every router reports the new version, and its LAN host
//!   never reaches the blocked port while the agents swap.
//!
//! ```text
//!   u1h ─ u1 (canary) ─┐
//!   u2h ─ u2 ──────────┤
//!   u3h ─ u3 ──────────┼─ br0 (isp: controller and servers, 203.0.113.1)
//!   u4h ─ u4 ──────────┘
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isdf_controller::test_support::TestController;
use serde_json::{json, Value};

use crate::harness::{block_on_in, blocking, serve_greeting, Operator};
use crate::isp_network::{ip_in, isp_fleet, Network, SiteSpec, Wan, ISP};
use crate::releases::publish_release;

const ROUTERS: [&str; 4] = ["u1", "u2", "u3", "u4"];
/// Closed by a flow block on every router, throughout.
const PORT_BLOCKED: u16 = 9301;
/// Open throughout.
const PORT_OPEN: u16 = 9302;
/// How long a new agent has to report (the smallest the agent takes).
const CONFIRM_SECS: u64 = 10;
const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/isdf-agent-launch");

/// The second build of the agent, and the version it reports.
fn next_build() -> (PathBuf, String) {
    let path = std::env::var_os("ISDF_TEST_AGENT_NEXT")
        .map(PathBuf::from)
        .expect(
            "ISDF_TEST_AGENT_NEXT is not set: it names a second build of the agent with another \
         version, which scripts/test builds (ISDF_AGENT_VERSION=0.99.0-next cargo build -p \
         isdf-agent into a target directory of its own)",
        );
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let version = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(
        version,
        isdf_agent::AGENT_VERSION,
        "the second build has another version"
    );
    (path, version)
}

/// A router's agent under the launcher, restarted by a bounded supervisor
/// loop; the whole process group is ended on drop.
struct Supervised {
    child: Child,
    log: PathBuf,
}

impl Supervised {
    fn start(router: &str, state: &Path, config: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", router, "sh", "-c"])
            // At most 12 starts: the agent exits once per upgrade.
            .arg("i=0; while [ \"$i\" -lt 12 ]; do sh \"$@\"; i=$((i+1)); sleep 0.2; done")
            .arg("supervisor")
            .arg(LAUNCHER)
            .arg(state)
            .arg(env!("CARGO_BIN_EXE_isdf-agent"))
            .args(["--", "run", "--backend", "nftables", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting the supervisor");
        Supervised {
            child,
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

struct Fleet {
    controller: TestController,
    operator: Operator,
    devices: HashMap<&'static str, String>,
    agents: Vec<Supervised>,
}

impl Fleet {
    async fn start(net: &Network, work: &Path) -> Self {
        let (controller, operator, routers) = isp_fleet(net, work, "u1").await;
        let agents = routers
            .iter()
            .map(|r| {
                let mut toml = std::fs::read_to_string(&r.config).unwrap();
                toml.push_str(&format!("upgrade_confirm_secs = {CONFIRM_SECS}\n"));
                std::fs::write(&r.config, toml).unwrap();
                Supervised::start(
                    &net.site(r.name).router.name,
                    &r.dir.join("state"),
                    &r.config,
                    &r.dir.join("agent.log"),
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

    /// Starts a rollout of a new `agent-release` service for `version`,
    /// the canary first, then `waves`.
    async fn roll_out_release(&self, version: &str, waves: &[u32]) -> String {
        let service = self
            .operator
            .post(
                "/api/v1/services",
                json!({"name": format!("agent-{version}"), "kind": "agent-release",
                       "spec": {"version": version}}),
            )
            .await;
        let started = self
            .operator
            .post(
                "/api/v1/rollouts",
                json!({"service_id": service["id"], "selector": "*",
                       "canary": {"selector": "canary=true"}, "waves": waves,
                       "soak_secs": 0, "offline_timeout_secs": 600}),
            )
            .await;
        started["id"].as_str().unwrap().to_owned()
    }

    /// Waits (at most 120 s) until the rollout satisfies `done`.
    async fn wait_rollout(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let view = self.operator.get(&format!("/api/v1/rollouts/{id}")).await;
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "rollout never {what}: {view:#}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .zip(ROUTERS)
            .map(|(a, r)| {
                let log = a.log();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                format!(
                    "--- {r}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A failed upgrade on the canary: the release is refused by the
    /// router itself (reverted), reported, and the rollout paused there;
    /// then aborted.
    async fn canary_reverts(&self, version: &str, why: &str) {
        let id = self.roll_out_release(version, &[100]).await;
        let paused = self
            .wait_rollout(&id, "paused on the canary", |v| v["state"] == "paused")
            .await;
        assert_eq!(paused["current_wave"], 0, "{paused:#}");
        assert_eq!(paused["waves"][0]["failed"], 1, "{paused:#}");
        let canary = self.status("u1").await;
        assert_eq!(canary["outcome"], "rolled_back", "{canary}");
        assert_eq!(
            canary["agent_version"],
            isdf_agent::AGENT_VERSION,
            "{canary}"
        );
        let errors = canary["errors"].to_string();
        assert!(
            errors.contains("upgrade_reverted") && errors.contains(why),
            "{errors}"
        );
        for r in &ROUTERS[1..] {
            let config = self
                .operator
                .get(&format!("/api/v1/devices/{}/config", self.devices[r]))
                .await;
            assert!(
                config["config"]["agent_release"].is_null(),
                "{r} never got {version}"
            );
        }
        self.operator
            .post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
            .await;
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

/// Probes from every LAN host, until stopped: how many probes ran, and
/// how many reached the blocked port.
struct Probes {
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    leaks: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probes {
    fn start(net: &Arc<Network>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicUsize::new(0));
        let leaks = Arc::new(AtomicUsize::new(0));
        let threads = ROUTERS
            .iter()
            .map(|r| {
                let (net, stop, probes, leaks) =
                    (net.clone(), stop.clone(), probes.clone(), leaks.clone());
                let router = *r;
                std::thread::spawn(move || {
                    let blocked = SocketAddr::new(ISP.parse().unwrap(), PORT_BLOCKED);
                    // Bounded: at most 10 minutes of probes.
                    let until = Instant::now() + Duration::from_secs(600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        if net
                            .site(router)
                            .host()
                            .tcp_works(blocked, Duration::from_millis(200))
                        {
                            leaks.fetch_add(1, Ordering::Relaxed);
                        }
                        probes.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        Probes {
            stop,
            probes,
            leaks,
            threads,
        }
    }

    /// Stops the probes: (probes, leaks).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (
            self.probes.load(Ordering::Relaxed),
            self.leaks.load(Ordering::Relaxed),
        )
    }
}

/// Whether each router's LAN host reaches `port` on the ISP server.
async fn reachable(net: &Arc<Network>, port: u16) -> Vec<bool> {
    let net = net.clone();
    blocking(move || {
        ROUTERS
            .iter()
            .map(|r| {
                net.site(r).host().tcp_works(
                    SocketAddr::new(ISP.parse().unwrap(), port),
                    Duration::from_millis(500),
                )
            })
            .collect()
    })
    .await
}

/// A "build" that is a shell script: how a broken release behaves.
fn script(body: &str) -> Vec<u8> {
    format!("#!/bin/sh\n{body}\n").into_bytes()
}

#[test]
fn agent_upgrades_roll_out_and_broken_ones_revert_by_themselves() {
    let next = next_build();
    let specs: Vec<SiteSpec> = [
        ("u1", "203.0.113.21/24", "10.21.0.0/24"),
        ("u2", "203.0.113.22/24", "10.22.0.0/24"),
        ("u3", "203.0.113.23/24", "10.23.0.0/24"),
        ("u4", "203.0.113.24/24", "10.24.0.0/24"),
    ]
    .into_iter()
    .map(|(name, wan, lan)| SiteSpec {
        name,
        wan: Wan::Direct(wan),
        lan: Some(lan),
    })
    .collect();
    let net = Arc::new(Network::create("upg", &specs));
    for (i, site) in net.sites.iter().enumerate() {
        ip_in(
            &net.isp,
            &format!("route add 10.2{}.0.0/24 via 203.0.113.2{}", i + 1, i + 1),
        );
        assert_eq!(site.name, ROUTERS[i]);
    }
    let inner = net.clone();
    block_on_in(&net.isp, move |work| scenario(inner, work, next));
}

async fn scenario(net: Arc<Network>, work: PathBuf, (next, next_version): (PathBuf, String)) {
    for port in [PORT_BLOCKED, PORT_OPEN] {
        serve_greeting(port).await;
    }
    let fleet = Fleet::start(&net, &work).await;
    let operator = &fleet.operator;
    operator
        .block_everywhere(
            json!([{"protocol": "tcp", "dst": format!("{ISP}/32"), "dport": PORT_BLOCKED}]),
        )
        .await;
    for r in ROUTERS {
        let version = fleet.version(r).await;
        operator.wait_applied(&fleet.devices[r], version).await;
    }
    assert_eq!(reachable(&net, PORT_BLOCKED).await, [false; 4]);
    assert_eq!(reachable(&net, PORT_OPEN).await, [true; 4]);
    let probes = Probes::start(&net);

    // --- broken releases: reverted by the router itself ----------------------
    publish_release(&fleet.controller, operator, "0.90.0", &script("exit 3")).await;
    fleet.canary_reverts("0.90.0", "exited with status 3").await;
    publish_release(
        &fleet.controller,
        operator,
        "0.91.0",
        &script("exec sleep 600"),
    )
    .await;
    let started = Instant::now();
    fleet
        .canary_reverts("0.91.0", "did not reach the controller")
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(CONFIRM_SECS),
        "stopped at its deadline, not before: {:?}",
        started.elapsed()
    );

    // --- the real next build, wave by wave -----------------------------------
    let binary = std::fs::read(&next).unwrap();
    publish_release(&fleet.controller, operator, &next_version, &binary).await;
    let id = fleet.roll_out_release(&next_version, &[50, 100]).await;
    let done = fleet
        .wait_rollout(&id, "completed", |v| v["state"] == "completed")
        .await;
    assert_eq!(done["totals"]["applied"], 4, "{done:#}");
    let waves = done["waves"].as_array().unwrap();
    for pair in waves.windows(2) {
        assert!(
            pair[0]["passed_at"].as_str() <= pair[1]["released_at"].as_str(),
            "a wave was released before the previous passed: {pair:?}"
        );
    }
    for r in ROUTERS {
        let status = fleet.status(r).await;
        assert_eq!(
            status["agent_version"],
            next_version.as_str(),
            "{r}: {status}"
        );
        assert_eq!(status["outcome"], "applied", "{r}: {status}");
    }
    let (count, leaks) = blocking(move || probes.finish()).await;
    assert_eq!(leaks, 0, "the blocked port was reached during the upgrades");
    assert!(count > 100, "the probes ran throughout: {count}");
    assert_eq!(reachable(&net, PORT_BLOCKED).await, [false; 4]);
    assert_eq!(reachable(&net, PORT_OPEN).await, [true; 4]);
    // The new agents run from the state directory, confirmed.
    for r in ROUTERS {
        let releases = work.join(r).join("state/releases");
        let current = std::fs::read_link(releases.join("current")).unwrap();
        assert!(
            current.to_string_lossy().contains(&next_version),
            "{r}: {}",
            current.display()
        );
        assert!(!releases.join("pending").exists(), "{r} confirmed");
    }
    // Only the A/B pair is kept; of the canary's undone releases, only the
    // markers that keep them from being installed again.
    let canary = work.join("u1/state/releases");
    let mut left: Vec<String> = std::fs::read_dir(&canary)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("0.9"))
        .flat_map(|folder| {
            std::fs::read_dir(canary.join(&folder))
                .unwrap()
                .map(move |e| format!("{folder}/{}", e.unwrap().file_name().to_string_lossy()))
        })
        .collect();
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left[0].starts_with("0.90.0-") && left[0].ends_with("/reverted"),
        "{left:?}"
    );
    assert!(
        left[1].starts_with("0.91.0-") && left[1].ends_with("/reverted"),
        "{left:?}"
    );
    assert!(left[2].starts_with(&format!("{next_version}-")), "{left:?}");
    fleet.stop().await;
}
