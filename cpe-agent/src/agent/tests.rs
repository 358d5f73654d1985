//! The agent loop's tests, with a fake kernel, a fake resolver and a fake
//! controller (`test_pki`): rollback, held-back versions, the last good
//! config at start, trust, renewal and re-enrollment.

use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use isdf_api::{Firewall, RuleCounter};

use super::*;
use crate::sys::time::unix_now;
use crate::test_pki::{FakeController, TestCa, SIGNING_KEY_HEX};

pub(super) const DEVICE: &str = "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50";

/// What the fake kernel holds and what was done to it.
#[derive(Default)]
pub(super) struct Kernel {
    pub(super) holds: Option<Firewall>,
    pub(super) applies: usize,
    /// The `now_ms` of the last apply.
    pub(super) applied_at: Option<i64>,
    /// Verification fails while the kernel holds a firewall with this many rules.
    broken_rule_count: Option<usize>,
}

pub(super) struct FakeBackend(pub(super) Arc<Mutex<Kernel>>);

/// Rules of the config (the agent's own rules left out).
pub(super) fn config_rules(firewall: &Firewall) -> usize {
    firewall
        .rules
        .iter()
        .filter(|r| !r.id.as_str().starts_with(isdf_api::config::RESERVED_PREFIX))
        .count()
}

impl FirewallBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn apply(&mut self, firewall: &Firewall, now: i64) -> anyhow::Result<()> {
        let mut k = self.0.lock().unwrap();
        k.applies += 1;
        k.applied_at = Some(now);
        k.holds = Some(firewall.clone());
        Ok(())
    }
    fn verify(&self, firewall: &Firewall, _now: i64) -> anyhow::Result<()> {
        let k = self.0.lock().unwrap();
        anyhow::ensure!(k.holds.as_ref() == Some(firewall), "kernel differs");
        anyhow::ensure!(
            k.broken_rule_count != Some(config_rules(firewall)),
            "rules vanished"
        );
        Ok(())
    }
    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        Ok(vec![])
    }
    fn remove(&mut self) -> anyhow::Result<()> {
        self.0.lock().unwrap().holds = None;
        Ok(())
    }
}

pub(super) fn settings(dir: &std::path::Path) -> Settings {
    // Signing keys empty: they come from the identity (the enrollment answer).
    Settings::parse(&format!(
        "state_dir = {:?}\ncontrol_socket = {:?}\nbackend = \"nftables\"\nwan_check = false\n",
        dir.join("state"),
        dir.join("agent.sock"),
    ))
    .expect("test settings parse")
}

/// An agent whose identity came from a CA nobody serves: nothing listens
/// at its URL, and with wan_check off no test reaches the network.
pub(super) fn agent(dir: &std::path::Path, kernel: &Arc<Mutex<Kernel>>) -> Agent {
    let ca = TestCa::new("unit test CA");
    let identity = ca.identity(DEVICE, "https://127.0.0.1:9");
    Agent::new(
        settings(dir),
        identity,
        Box::new(FakeBackend(kernel.clone())),
    )
    .unwrap()
}

pub(super) fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn hex_key(key: &SigningKey) -> String {
    key.verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn envelope(version: u64, rules: usize, signer: &SigningKey) -> Vec<u8> {
    envelope_with(version, rules, serde_json::json!({}), signer)
}

/// A config with `rules` rules and the firewall fields of `extra` (dns, portal).
fn envelope_with(
    version: u64,
    rules: usize,
    extra: serde_json::Value,
    signer: &SigningKey,
) -> Vec<u8> {
    let rules: Vec<serde_json::Value> = (0..rules)
        .map(|i| serde_json::json!({"id": format!("r{i}"), "chain": "input", "match": {"protocol": "tcp", "dport": 1000 + i}, "action": "drop"}))
        .collect();
    let mut firewall = serde_json::json!({"rules": rules});
    for (k, v) in extra.as_object().unwrap() {
        firewall[k] = v.clone();
    }
    let config = serde_json::json!({"device_id": DEVICE, "version": version, "issued_at": unix_now() - 10,
        "expires_at": unix_now() + 3600, "firewall": firewall});
    isdf_api::seal(
        isdf_api::CONFIG_PAYLOAD_TYPE,
        config.to_string().as_bytes(),
        signer,
    )
    .to_json()
}

pub(super) fn rules_held(kernel: &Arc<Mutex<Kernel>>) -> Option<usize> {
    kernel.lock().unwrap().holds.as_ref().map(config_rules)
}

#[tokio::test]
async fn a_failed_apply_restores_the_previous_config_and_holds_the_version_back() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let mut agent = agent(dir.path(), &kernel);

    agent.handle_envelope(envelope(1, 1, &key()), Some(1)).await;
    assert_eq!(
        (agent.enforced_version(), rules_held(&kernel)),
        (Some(1), Some(1))
    );
    assert_eq!(agent.last.as_ref().unwrap().outcome, Outcome::Applied);

    kernel.lock().unwrap().broken_rule_count = Some(2);
    agent.handle_envelope(envelope(2, 2, &key()), Some(2)).await;
    let last = agent.last.as_ref().unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    assert!(
        last.errors[0].starts_with("apply_failed"),
        "{:?}",
        last.errors
    );
    assert_eq!(last.attempted_version, Some(2));
    assert_eq!(agent.enforced_version(), Some(1));
    assert_eq!(rules_held(&kernel), Some(1), "the previous ruleset is back");
    assert_eq!(
        agent.poll_version(),
        Some(2),
        "version 2 is not fetched again at once"
    );

    kernel.lock().unwrap().broken_rule_count = None;
    agent.handle_envelope(envelope(3, 3, &key()), Some(3)).await;
    assert_eq!(
        (agent.enforced_version(), rules_held(&kernel)),
        (Some(3), Some(3))
    );
    assert_eq!(agent.poll_version(), Some(3));
}

/// What the fake resolver enforces and what was asked of it.
#[derive(Default)]
struct Dns {
    holds: Option<isdf_api::DnsPolicy>,
    repairs: usize,
    /// Applying a policy with this TTL cap fails (dnsmasq cannot start).
    failing_ttl: Option<u32>,
}

struct FakeResolver(Arc<Mutex<Dns>>);

impl Resolver for FakeResolver {
    fn apply(&mut self, policy: Option<&isdf_api::DnsPolicy>) -> anyhow::Result<()> {
        let mut dns = self.0.lock().unwrap();
        let ttl = policy.and_then(|p| p.max_ttl_secs);
        if ttl.is_some() && ttl == dns.failing_ttl {
            // Like a real dnsmasq that did not start: none runs.
            dns.holds = None;
            anyhow::bail!("dnsmasq exited: failed to create listening socket for port 53: Address already in use");
        }
        dns.holds = policy.cloned();
        Ok(())
    }
    fn repair(&mut self) -> anyhow::Result<()> {
        self.0.lock().unwrap().repairs += 1;
        Ok(())
    }
}

fn agent_with_dns(
    dir: &std::path::Path,
    kernel: &Arc<Mutex<Kernel>>,
    dns: &Arc<Mutex<Dns>>,
) -> Agent {
    let mut agent = agent(dir, kernel);
    agent.resolver = Box::new(FakeResolver(dns.clone()));
    agent
}

fn dns_policy(ttl: u32) -> serde_json::Value {
    serde_json::json!({"dns": {"max_ttl_secs": ttl, "local_answers": [{"domain": "use-application-dns.net"}]}})
}

fn ttl_held(dns: &Arc<Mutex<Dns>>) -> Option<u32> {
    dns.lock()
        .unwrap()
        .holds
        .as_ref()
        .and_then(|p| p.max_ttl_secs)
}

#[tokio::test]
async fn a_config_whose_dns_fails_is_rolled_back_with_the_previous_firewall_and_dns() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let dns = Arc::new(Mutex::new(Dns::default()));
    let mut agent = agent_with_dns(dir.path(), &kernel, &dns);
    agent
        .handle_envelope(envelope_with(1, 1, dns_policy(60), &key()), Some(1))
        .await;
    assert_eq!(agent.last.as_ref().unwrap().outcome, Outcome::Applied);
    assert_eq!((rules_held(&kernel), ttl_held(&dns)), (Some(1), Some(60)));

    dns.lock().unwrap().failing_ttl = Some(30);
    agent
        .handle_envelope(envelope_with(2, 2, dns_policy(30), &key()), Some(2))
        .await;
    let last = agent.last.as_ref().unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    assert_eq!(last.errors.len(), 1, "{:?}", last.errors);
    assert!(
        last.errors[0].starts_with("apply_failed: the router's resolver: dnsmasq exited")
            && last.errors[0].contains("Address already in use"),
        "{:?}",
        last.errors
    );
    assert_eq!(agent.enforced_version(), Some(1));
    assert_eq!(
        (rules_held(&kernel), ttl_held(&dns)),
        (Some(1), Some(60)),
        "the previous ruleset and DNS policy are back"
    );
    assert_eq!(agent.poll_version(), Some(2), "held back");

    agent.handle_envelope(envelope(3, 3, &key()), Some(3)).await;
    assert_eq!(agent.enforced_version(), Some(3));
    assert_eq!(
        dns.lock().unwrap().holds,
        None,
        "no DNS policy: no resolver"
    );
}

#[tokio::test]
async fn the_last_good_dns_policy_comes_back_at_start_and_is_retried_until_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let dns = Arc::new(Mutex::new(Dns::default()));
    let mut first = agent_with_dns(dir.path(), &kernel, &dns);
    first
        .handle_envelope(envelope_with(4, 2, dns_policy(60), &key()), None)
        .await;
    drop(first);

    let rebooted = Arc::new(Mutex::new(Kernel::default()));
    let fresh_dns = Arc::new(Mutex::new(Dns::default()));
    let mut second = agent_with_dns(dir.path(), &rebooted, &fresh_dns);
    second.restore_last_good().unwrap();
    assert_eq!(
        (rules_held(&rebooted), ttl_held(&fresh_dns)),
        (Some(2), Some(60))
    );

    // The resolver cannot start at boot: the ruleset is enforced all
    // the same, and the periodic pass tries the resolver again.
    let failing_dns = Arc::new(Mutex::new(Dns {
        failing_ttl: Some(60),
        ..Dns::default()
    }));
    let mut third = agent_with_dns(dir.path(), &rebooted, &failing_dns);
    let e = third.restore_last_good().unwrap_err();
    assert!(format!("{e:#}").contains("Address already in use"), "{e:#}");
    assert_eq!(third.enforced_version(), Some(4));
    assert_eq!(rules_held(&rebooted), Some(2));
    third.repair_services();
    assert_eq!(failing_dns.lock().unwrap().repairs, 1);
}

#[tokio::test]
async fn refused_envelopes_never_reach_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let mut agent = agent(dir.path(), &kernel);
    agent.handle_envelope(envelope(5, 1, &key()), None).await;
    let applies = kernel.lock().unwrap().applies;

    let stranger = SigningKey::from_bytes(&[9; 32]);
    for (bytes, code) in [
        (envelope(6, 2, &stranger), "unknown_key"),
        (envelope(5, 2, &key()), "not_newer"),
        (b"{}".to_vec(), "malformed_envelope"),
    ] {
        agent.handle_envelope(bytes, Some(6)).await;
        let last = agent.last.as_ref().unwrap();
        assert_eq!(last.outcome, Outcome::Rejected);
        assert!(last.errors[0].starts_with(code), "{:?}", last.errors);
    }
    assert_eq!(
        kernel.lock().unwrap().applies,
        applies,
        "nothing was applied"
    );
    assert_eq!(
        (agent.enforced_version(), rules_held(&kernel)),
        (Some(5), Some(1))
    );
}

#[tokio::test]
async fn the_last_good_config_comes_back_at_start_before_any_poll() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let mut first = agent(dir.path(), &kernel);
    first.handle_envelope(envelope(4, 2, &key()), None).await;
    drop(first);

    let rebooted = Arc::new(Mutex::new(Kernel::default()));
    let mut second = agent(dir.path(), &rebooted);
    second.restore_last_good().unwrap();
    assert_eq!(
        (second.enforced_version(), rules_held(&rebooted)),
        (Some(4), Some(2))
    );
}

#[test]
fn the_test_signing_key_is_the_one_the_identity_names() {
    assert_eq!(hex_key(&key()), SIGNING_KEY_HEX);
}

#[tokio::test]
async fn configured_signing_keys_replace_those_of_the_enrollment_answer() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let mut settings = settings(dir.path());
    settings.signing_public_keys = vec![hex_key(&stranger)];
    let identity = TestCa::new("ca").identity(DEVICE, "https://127.0.0.1:9");
    let mut agent = Agent::new(settings, identity, Box::new(FakeBackend(kernel.clone()))).unwrap();
    agent.handle_envelope(envelope(1, 1, &key()), None).await;
    assert_eq!(agent.last.as_ref().unwrap().outcome, Outcome::Rejected);
    agent.handle_envelope(envelope(1, 1, &stranger), None).await;
    assert_eq!(agent.enforced_version(), Some(1));
}

/// An identity from `controller`'s CA whose validity is `[now + from, now + to]`.
fn identity_valid(controller: &FakeController, from: i64, to: i64) -> Identity {
    let mut identity = controller.ca.identity(DEVICE, &controller.device_url);
    identity.certificate.not_before = unix_now() + from;
    identity.certificate.not_after = unix_now() + to;
    identity
}

#[tokio::test]
async fn a_certificate_is_renewed_once_two_thirds_of_its_life_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let controller = FakeController::start(DEVICE, &[]).await;
    let fresh = identity_valid(&controller, -100, 1000);
    let mut agent = Agent::new(
        settings(dir.path()),
        fresh.clone(),
        Box::new(FakeBackend(kernel.clone())),
    )
    .unwrap();
    agent.maintain_identity().await;
    assert_eq!(
        controller.behaviour.lock().unwrap().renewals,
        0,
        "not due yet"
    );
    assert_eq!(agent.identity(), &fresh);
    // Due two thirds into [now - 100, now + 1000]: the long poll is cut
    // short to renew in time.
    let due_in = agent.identity_due_in().as_secs();
    assert!((630..=634).contains(&due_in), "{due_in}");

    let due = identity_valid(&controller, -3000, 1000);
    let mut agent = Agent::new(
        settings(dir.path()),
        due.clone(),
        Box::new(FakeBackend(kernel)),
    )
    .unwrap();
    agent.handle_envelope(envelope(1, 1, &key()), None).await;
    agent.maintain_identity().await;
    assert_eq!(controller.behaviour.lock().unwrap().renewals, 1);
    assert_eq!(agent.device_id(), DEVICE);
    assert_ne!(agent.identity().key_pem, due.key_pem);
    assert!(agent.identity().certificate.not_after > due.certificate.not_after);
    let persisted = StateDir::open(&dir.path().join("state"))
        .unwrap()
        .identity()
        .unwrap();
    assert_eq!(persisted.as_ref(), Some(agent.identity()));
    // The new client authenticates with the new certificate, and the
    // enforced config is still this device's.
    agent.client.ping().await.unwrap();
    assert_eq!(agent.enforced_version(), Some(1));
}

#[tokio::test]
async fn a_failed_renewal_is_retried_later_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let controller = FakeController::start(DEVICE, &[]).await;
    controller.behaviour.lock().unwrap().renew_error =
        Some((axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy"));
    let due = identity_valid(&controller, -3000, 1000);
    let mut agent = Agent::new(
        settings(dir.path()),
        due.clone(),
        Box::new(FakeBackend(kernel)),
    )
    .unwrap();
    agent.maintain_identity().await;
    assert_eq!(agent.identity(), &due);
    let (failures, next) = agent.identity_retry.unwrap();
    assert_eq!(failures, 1);
    assert!(next > Instant::now());
    assert!(agent.identity_due_in() <= Duration::from_secs(1));
    assert!(agent.identity_due_in() > Duration::ZERO);
    // Not retried before the backoff ends.
    controller.behaviour.lock().unwrap().renew_error = None;
    agent.maintain_identity().await;
    assert_eq!(controller.behaviour.lock().unwrap().renewals, 0);
    agent.identity_retry = Some((1, Instant::now()));
    agent.maintain_identity().await;
    assert_eq!(controller.behaviour.lock().unwrap().renewals, 1);
    assert_eq!(agent.identity_retry, None);
}

#[tokio::test]
async fn an_expired_certificate_enrolls_again_with_the_token_file_and_keeps_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let controller = FakeController::start(DEVICE, &["second-token"]).await;
    // The real controller refuses an expired certificate in the TLS
    // handshake; the fake one says so in an error answer.
    controller.behaviour.lock().unwrap().renew_error =
        Some((axum::http::StatusCode::UNAUTHORIZED, "certificate_expired"));
    let expired = identity_valid(&controller, -7200, -10);
    let mut settings = settings(dir.path());
    std::fs::write(dir.path().join("ca.pem"), controller.ca_pem()).unwrap();
    settings.ca_cert = Some(dir.path().join("ca.pem"));
    settings.enrollment_url = Some(controller.enrollment_url.clone());

    // Without a token file: the rules stay, the identity too.
    let mut agent = Agent::new(
        settings.clone(),
        expired.clone(),
        Box::new(FakeBackend(kernel.clone())),
    )
    .unwrap();
    agent.handle_envelope(envelope(1, 2, &key()), None).await;
    agent.maintain_identity().await;
    assert_eq!(agent.identity(), &expired);
    assert_eq!(rules_held(&kernel), Some(2));

    std::fs::write(dir.path().join("token"), "second-token\n").unwrap();
    settings.enrollment_token_file = Some(dir.path().join("token"));
    let mut agent = Agent::new(
        settings,
        expired.clone(),
        Box::new(FakeBackend(kernel.clone())),
    )
    .unwrap();
    agent.restore_last_good().unwrap();
    agent.maintain_identity().await;
    assert_eq!(controller.behaviour.lock().unwrap().enrollments, 1);
    assert!(agent.identity().certificate.not_after > unix_now());
    assert_eq!(agent.device_id(), DEVICE);
    assert_eq!(rules_held(&kernel), Some(2));
    agent.client.ping().await.unwrap();
}

#[tokio::test]
async fn a_replaced_certificate_enrolls_again_at_once_without_renewing() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let controller = FakeController::start(DEVICE, &["second-token"]).await;
    // Far from renewal time: only the controller's refusal makes it due.
    let current = identity_valid(&controller, -100, 100_000);
    let mut settings = settings(dir.path());
    std::fs::write(dir.path().join("ca.pem"), controller.ca_pem()).unwrap();
    settings.ca_cert = Some(dir.path().join("ca.pem"));
    settings.enrollment_url = Some(controller.enrollment_url.clone());
    std::fs::write(dir.path().join("token"), "second-token\n").unwrap();
    settings.enrollment_token_file = Some(dir.path().join("token"));
    let mut agent = Agent::new(settings, current, Box::new(FakeBackend(kernel.clone()))).unwrap();
    agent.handle_envelope(envelope(1, 2, &key()), None).await;

    agent.maintain_identity().await;
    assert_eq!(
        controller.behaviour.lock().unwrap().enrollments,
        0,
        "not due"
    );

    // What the poll loop does when the device API answers
    // `certificate_superseded`.
    agent.identity_refused = true;
    agent.maintain_identity().await;
    let counts = {
        let behaviour = controller.behaviour.lock().unwrap();
        (behaviour.renewals, behaviour.enrollments)
    };
    assert_eq!(counts, (0, 1), "enrolled again, no renewal tried");
    assert!(!agent.identity_refused);
    assert_eq!(rules_held(&kernel), Some(2), "the rules stay");
    agent.client.ping().await.unwrap();
}
