//! Fail-static DNS: the router keeps resolving for its LAN whatever happens
//! to the agent. The pay-per-site setup (real agent, its managed dnsmasq,
//! an upstream dnsmasq, the controller) in namespaces; the agent is killed
//! (SIGKILL), then stopped (SIGTERM): each time the LAN host still resolves
//! through the router and the kernel rules stay, and the next agent adopts
//! the same dnsmasq (same process, the only one on port 53) instead of
//! starting another. A changed DNS policy then replaces it. Last, the
//! operator's `isdf-agent uninstall` takes everything away.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isdf_agent::sys::processes::process_runs;
use serde_json::{json, Value};

use crate::harness::{blocking, in_wan, AgentProcess};
use crate::netns::{Netns, Topology};
use crate::pay_per_site::{Shop, NEWS_V4, VIDEO_V4};

#[test]
fn the_lan_keeps_resolving_when_the_agent_dies_and_the_next_agent_adopts_its_dnsmasq() {
    in_wan("fstat", scenario);
}

/// The router's answer to the LAN host for `name` (`dig +short`).
fn lan_lookup(topo: &Topology, name: &str) -> String {
    let out = topo.lan.exec(
        "dig",
        &["+short", "+time=2", "+tries=1", "@192.0.2.1", name],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The pid in the managed dnsmasq's pid file.
fn dnsmasq_pid(pid_file: &Path) -> String {
    std::fs::read_to_string(pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .to_owned()
}

/// The processes listening on port 53 (UDP or TCP) in `ns`.
fn port_53_owners(ns: &Netns) -> BTreeSet<String> {
    let mut owners = BTreeSet::new();
    for proto in ["-lnup", "-lntp"] {
        let listing = ns.run("ss", &["-H", proto, "sport", "=", ":53"]);
        for part in listing.split("pid=").skip(1) {
            owners.insert(part.split(',').next().unwrap_or_default().to_owned());
        }
    }
    owners
}

/// The agent's table without counters or set elements.
fn rules(router: &Netns) -> String {
    router.run("nft", &["-s", "-t", "list", "table", "inet", "isdf"])
}

/// What must hold while no agent runs, or while a new one has just taken
/// over: `pid` is the router's one resolver, it answers the LAN host, and
/// the kernel holds `ruleset`.
fn still_serving(topo: &Topology, pid: &str, ruleset: &str, when: &str) {
    assert!(process_runs(pid), "{when}: dnsmasq {pid} is gone");
    assert_eq!(
        port_53_owners(&topo.router),
        BTreeSet::from([pid.to_owned()]),
        "{when}: dnsmasq {pid} is the only process on port 53"
    );
    assert_eq!(
        lan_lookup(topo, "video.test"),
        VIDEO_V4,
        "{when}: the LAN host resolves through the router"
    );
    assert_eq!(rules(&topo.router), ruleset, "{when}: the rules stay");
}

async fn scenario(topo: Arc<Topology>, work: PathBuf) {
    let mut shop = Shop::open(&topo, &work).await;
    let first_agent = shop.agent.take().unwrap();
    let pid_file = work.join("agent/state/dnsmasq/dnsmasq.pid");
    let (stage, op) = (&shop.stage, &shop.stage.operator);
    let last_sequence = || async {
        let status = op
            .get(&format!("/api/v1/devices/{}/status", stage.device))
            .await;
        status["report"]["sequence"].as_u64().unwrap_or(0)
    };
    // A new agent has taken over once it reported (after enforcing the
    // last good config, DNS policy included).
    let wait_for_report_after = |sequence: u64| async move {
        op.wait_status(&stage.device, |r| {
            r["sequence"].as_u64().is_some_and(|s| s > sequence)
        })
        .await;
    };
    let (t, file) = (topo.clone(), pid_file.clone());
    let (first, ruleset) = blocking(move || {
        let pid = dnsmasq_pid(&file);
        let ruleset = rules(&t.router);
        still_serving(&t, &pid, &ruleset, "with the agent running");
        (pid, ruleset)
    })
    .await;

    // A crash: nothing of the agent runs any more.
    first_agent.kill();
    let t = topo.clone();
    let (pid, set) = (first.clone(), ruleset.clone());
    blocking(move || still_serving(&t, &pid, &set, "after the agent was killed")).await;
    let sequence = last_sequence().await;
    let agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
    wait_for_report_after(sequence).await;
    let (t, file, pid, set) = (
        topo.clone(),
        pid_file.clone(),
        first.clone(),
        ruleset.clone(),
    );
    blocking(move || {
        assert_eq!(dnsmasq_pid(&file), pid, "the new agent adopted dnsmasq");
        still_serving(&t, &pid, &set, "after a new agent started");
    })
    .await;

    // A clean stop (the service manager's SIGTERM), then a new agent.
    let status = agent.stop();
    assert!(status.success(), "the agent stopped cleanly: {status}");
    let (t, pid, set) = (topo.clone(), first.clone(), ruleset.clone());
    blocking(move || still_serving(&t, &pid, &set, "after the agent stopped")).await;
    let sequence = last_sequence().await;
    let agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
    wait_for_report_after(sequence).await;
    let (t, file, pid, set) = (
        topo.clone(),
        pid_file.clone(),
        first.clone(),
        ruleset.clone(),
    );
    blocking(move || {
        assert_eq!(dnsmasq_pid(&file), pid, "adopted again");
        still_serving(&t, &pid, &set, "after the next agent started");
    })
    .await;
    let log = std::fs::read_to_string(&stage.log).unwrap();
    assert_eq!(
        log.matches("adopted the running dnsmasq").count(),
        2,
        "each new agent says it adopted dnsmasq:\n{log}"
    );

    // A changed DNS policy (a second gated site) replaces dnsmasq: the new
    // one answers with it and fills the new site's set.
    op.post(
        "/api/v1/sites",
        json!({"catalog": "main", "name": "News", "domains": ["news.test"],
               "currency": "EUR", "passes": [{"duration_secs": 3600, "price": 100}]}),
    )
    .await;
    let config: Value = op
        .get(&format!("/api/v1/devices/{}/config", stage.device))
        .await;
    op.wait_applied(&stage.device, config["version"].as_u64().unwrap())
        .await;
    let fills = config["config"]["firewall"]["dns"]["fill_sets"].clone();
    let news_set = fills
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["domains"].to_string().contains("news.test"))
        .unwrap_or_else(|| panic!("no set for news.test in {fills}"))["ipv4_set"]
        .as_str()
        .unwrap()
        .to_owned();
    let (t, file, old) = (topo.clone(), pid_file.clone(), first.clone());
    blocking(move || {
        let new = dnsmasq_pid(&file);
        assert_ne!(new, old, "a new policy needs a new dnsmasq");
        assert!(!process_runs(&old), "the old dnsmasq ended");
        assert_eq!(port_53_owners(&t.router), BTreeSet::from([new]));
        assert_eq!(lan_lookup(&t, "news.test"), NEWS_V4);
        let set = t
            .router
            .run("nft", &["list", "set", "inet", "isdf", &news_set]);
        assert!(
            set.contains(NEWS_V4),
            "the new policy fills {news_set}: {set}"
        );
    })
    .await;

    // The operator uninstalls: the agent stops, then `uninstall` removes
    // its resolver and its rules.
    assert!(agent.stop().success());
    let (t, file, config_path) = (topo.clone(), pid_file.clone(), stage.config_path.clone());
    blocking(move || {
        let pid = dnsmasq_pid(&file);
        let config = config_path.to_string_lossy().into_owned();
        t.router.run(
            env!("CARGO_BIN_EXE_isdf-agent"),
            &["uninstall", "--config", &config],
        );
        assert!(!process_runs(&pid), "uninstall ended dnsmasq");
        assert!(port_53_owners(&t.router).is_empty());
        assert!(
            !t.router
                .exec("nft", &["list", "table", "inet", "isdf"])
                .status
                .success(),
            "uninstall removed the table"
        );
        let answer = lan_lookup(&t, "video.test");
        assert!(!answer.contains(VIDEO_V4), "no resolver left: {answer}");
    })
    .await;
    drop(shop);
}
