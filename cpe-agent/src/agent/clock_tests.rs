//! The wall clock jumping an hour forward or back (issue 15), with a fake
//! clock (`sys::time::FakeClock`) and a fake kernel: what the config times
//! (element expiries, the config's own expiry) follows the router's wall
//! clock, re-applied at the next pass after a step; the router's own blocks
//! keep their durations. The behaviour is documented in `clock.rs` and
//! docs/security.md.

use std::sync::{Arc, Mutex};

use isdf_api::Outcome;
use serde_json::json;

use super::tests::{agent, key, rules_held, Kernel, DEVICE};
use super::Agent;
use crate::control::Request;
use crate::sys::time::FakeClock;

const HOUR_MS: i64 = 3_600_000;

/// A signed config with `firewall`, issued at `now` (Unix seconds) and
/// expiring `lifetime` seconds later.
fn envelope(version: u64, firewall: serde_json::Value, now: i64, lifetime: i64) -> Vec<u8> {
    let config = json!({"device_id": DEVICE, "version": version, "issued_at": now,
        "expires_at": now + lifetime, "firewall": firewall});
    isdf_api::seal(
        isdf_api::CONFIG_PAYLOAD_TYPE,
        config.to_string().as_bytes(),
        &key(),
    )
    .to_json()
}

/// An agent on a fake clock at a whole second near the real time (so the
/// test certificate is valid).
fn agent_on_clock(dir: &std::path::Path) -> (Agent, Arc<Mutex<Kernel>>, Arc<FakeClock>) {
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let clock = FakeClock::at(crate::sys::time::unix_now() * 1000);
    let agent = agent(dir, &kernel).with_clock(clock.clone());
    (agent, kernel, clock)
}

/// What the real nft planner makes of the last apply: the script.
fn kernel_script(kernel: &Arc<Mutex<Kernel>>) -> String {
    let k = kernel.lock().unwrap();
    crate::backend::nft::plan(k.holds.as_ref().unwrap(), k.applied_at.unwrap()).unwrap()
}

#[tokio::test]
async fn a_clock_step_recomputes_the_configs_element_expiries_at_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, kernel, clock) = agent_on_clock(dir.path());
    let t = clock.unix_now_for_test();
    // Two timed blocks from the controller: 30 minutes and 2 hours.
    let firewall = json!({
        "sets": [{"name": "timed", "key": "ipv4-addr", "elements": [
            {"addr": "10.0.0.1", "expires_at": t + 1800},
            {"addr": "10.0.0.2", "expires_at": t + 7200}]}],
        "rules": [{"id": "timed", "chain": "forward", "match": {"dst_in_set": "timed"}, "action": "drop"}]
    });
    agent
        .handle_envelope(envelope(1, firewall, t, 6 * 3600), Some(1))
        .await;
    assert_eq!(agent.enforced_version(), Some(1));
    let script = kernel_script(&kernel);
    assert!(
        script.contains("10.0.0.1 timeout 1800s") && script.contains("10.0.0.2 timeout 7200s"),
        "{script}"
    );

    // Time passes: nothing to do.
    clock.advance(10_000);
    let applies = kernel.lock().unwrap().applies;
    agent.repair_and_expire();
    assert_eq!(kernel.lock().unwrap().applies, applies);

    // An hour forward: the 30-minute block has ended by the router's clock
    // and goes at once; the other has an hour less.
    clock.step(HOUR_MS);
    agent.repair_and_expire();
    assert_eq!(kernel.lock().unwrap().applies, applies + 1, "re-applied");
    let script = kernel_script(&kernel);
    assert!(!script.contains("10.0.0.1"), "{script}");
    assert!(script.contains("10.0.0.2 timeout 3590s"), "{script}");

    // Two hours back (an hour before the start): both are in force again,
    // each with an hour more than it had at the start, less the time gone.
    clock.step(-2 * HOUR_MS);
    agent.repair_and_expire();
    assert_eq!(kernel.lock().unwrap().applies, applies + 2);
    let script = kernel_script(&kernel);
    assert!(script.contains("10.0.0.1 timeout 5390s"), "{script}");
    assert!(script.contains("10.0.0.2 timeout 10790s"), "{script}");
}

#[tokio::test]
async fn the_routers_own_blocks_keep_their_duration_across_a_clock_step() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, kernel, clock) = agent_on_clock(dir.path());
    let t = clock.unix_now_for_test();
    agent
        .handle_envelope(envelope(1, json!({}), t, 6 * 3600), Some(1))
        .await;
    let flow = serde_json::from_value(json!({"protocol": "tcp", "src": "192.0.2.2",
        "dst": "198.51.100.2", "dport": 9000}))
    .unwrap();
    let response = agent.handle_command(Request::Block {
        flow,
        duration_ms: 1_800_000,
        reason: "half an hour".into(),
    });
    assert!(response.error.is_none(), "{:?}", response.error);
    let end = (t + 1800) * 1000;
    let ends = |agent: &Agent| -> Vec<i64> {
        agent
            .router_blocks
            .persisted()
            .blocks
            .iter()
            .map(|b| b.expires_at_ms)
            .collect()
    };
    assert_eq!(ends(&agent), [end]);

    // A minute later the clock jumps an hour forward: the block still has
    // its 29 minutes, in the kernel too.
    clock.advance(60_000);
    clock.step(HOUR_MS);
    agent.repair_and_expire();
    assert_eq!(ends(&agent), [end + HOUR_MS]);
    let script = kernel_script(&kernel);
    assert!(script.contains("timeout 1740s"), "{script}");
    // The controller hears of the new end.
    let events = agent.router_blocks.pending_events(10);
    assert_eq!(events.last().unwrap().block.expires_at_ms, end + HOUR_MS);

    // And back by two hours: still 29 minutes.
    clock.step(-2 * HOUR_MS);
    agent.repair_and_expire();
    assert_eq!(ends(&agent), [end - HOUR_MS]);
    assert!(kernel_script(&kernel).contains("timeout 1740s"));
}

#[tokio::test]
async fn config_expiry_follows_the_routers_clock_and_never_opens_the_firewall() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, kernel, clock) = agent_on_clock(dir.path());
    let t = clock.unix_now_for_test();
    let rules = |n: usize| {
        let rules: Vec<_> = (0..n)
            .map(|i| json!({"id": format!("r{i}"), "chain": "input", "match": {"protocol": "tcp", "dport": 1000 + i}, "action": "drop"}))
            .collect();
        json!({ "rules": rules })
    };
    // A config valid for 30 minutes.
    agent
        .handle_envelope(envelope(1, rules(1), t, 1800), Some(1))
        .await;
    assert_eq!(agent.build_report().outcome, Outcome::Applied);

    // An hour forward: it has expired by the router's clock. It stays
    // enforced and is reported stale.
    clock.step(HOUR_MS);
    agent.repair_and_expire();
    let report = agent.build_report();
    assert_eq!(report.outcome, Outcome::Stale);
    assert_eq!(report.enforced_version, Some(1));
    assert_eq!(rules_held(&kernel), Some(1), "still enforced");
    // A config the controller just issued for 45 minutes looks expired to
    // a router an hour ahead: refused, the firewall unchanged.
    agent
        .handle_envelope(envelope(2, rules(2), t, 2700), Some(2))
        .await;
    let last = agent.last.as_ref().unwrap();
    assert_eq!(last.outcome, Outcome::Rejected);
    assert!(last.errors[0].starts_with("expired"), "{:?}", last.errors);
    assert_eq!(rules_held(&kernel), Some(1));

    // The clock set right again: not stale, and the new config is taken.
    clock.step(-HOUR_MS);
    assert_eq!(agent.build_report().outcome, Outcome::Rejected);
    agent
        .handle_envelope(envelope(2, rules(2), t, 2700), Some(2))
        .await;
    assert_eq!(agent.enforced_version(), Some(2));
    assert_eq!(rules_held(&kernel), Some(2));
    assert_eq!(agent.build_report().outcome, Outcome::Applied);

    // An hour back from there: a config expired in the controller's view
    // (5 minutes ago) is still taken by a router an hour behind.
    clock.step(-HOUR_MS);
    agent
        .handle_envelope(envelope(3, rules(3), t - 3600, 3300), Some(3))
        .await;
    assert_eq!(agent.enforced_version(), Some(3));
}
