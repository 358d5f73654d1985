//! The agent loop: enforce the last good config at start (before any network
//! call), then long-poll, verify, apply, verify the kernel, report.
//!
//! Invariants: **nothing reaches the backend before `open_device_config`
//! accepted it** (signature, device id, version, expiry); a failed apply
//! restores the previous ruleset; losing the controller never removes rules.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use isdf_api::{
    open_device_config, DeviceConfig, OpenError, OpenPolicy, Outcome, StatusReport, TrustedKeys,
};
use rand::Rng;

use crate::backend::FirewallBackend;
use crate::client::{Client, Poll};
use crate::settings::Settings;
use crate::state::StateDir;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The config the kernel enforces now.
struct Enforced {
    config: DeviceConfig,
}

/// What the last attempt produced, for the next status report.
struct LastResult {
    outcome: Outcome,
    attempted_version: Option<u64>,
    errors: Vec<String>,
}

pub struct Agent {
    settings: Settings,
    trusted: TrustedKeys,
    backend: Box<dyn FirewallBackend>,
    state: StateDir,
    client: Client,
    enforced: Option<Enforced>,
    last: Option<LastResult>,
    /// When the enforced config must be applied again (see `next_reapply`).
    reapply_at: Option<i64>,
    /// A version that was refused or failed to apply, and until when the
    /// agent waits for a newer one instead of fetching it again at once.
    held_back: Option<(u64, Instant)>,
    report_due: bool,
    last_report: Option<Instant>,
}

impl Agent {
    pub fn new(settings: Settings, backend: Box<dyn FirewallBackend>) -> anyhow::Result<Self> {
        let trusted = settings.trusted_keys()?;
        let state = StateDir::open(&settings.state_dir)?;
        let ca = std::fs::read(&settings.ca_cert)
            .with_context(|| format!("reading controller CA {}", settings.ca_cert.display()))?;
        let client = Client::new(&settings.controller_url, &ca, &settings.device_token()?)?;
        Ok(Agent {
            settings,
            trusted,
            backend,
            state,
            client,
            enforced: None,
            last: None,
            reapply_at: None,
            held_back: None,
            report_due: false,
            last_report: None,
        })
    }

    /// Re-enforces the persisted last good config. Runs before any network
    /// call, so a rebooted router is protected while the controller is away.
    /// The envelope is verified again (signature and device); its version and
    /// expiry are not checked, as it was accepted when it arrived and
    /// enforcing it can only keep the firewall closed.
    pub fn restore_last_good(&mut self) -> anyhow::Result<()> {
        let Some(envelope) = self.state.last_good()? else {
            tracing::info!("no last good config yet");
            return Ok(());
        };
        let policy = OpenPolicy {
            device_id: &self.settings.device_id,
            enforced_version: None,
            now: None,
        };
        let config = open_device_config(&envelope, &self.trusted, &policy)
            .context("the persisted last good config no longer verifies")?;
        self.enforce(&config.firewall)
            .context("re-enforcing the last good config")?;
        tracing::info!(
            version = config.version,
            "enforced the last good config from the state directory"
        );
        self.enforced = Some(Enforced { config });
        self.report_due = true;
        Ok(())
    }

    pub fn enforced_version(&self) -> Option<u64> {
        self.enforced.as_ref().map(|e| e.config.version)
    }

    /// Waits for a version newer than `version` for a while instead of
    /// fetching `version` again. Without this, a config the agent cannot take
    /// (say, one with a field this agent version does not know) would be
    /// served and refused in a tight loop. The same version is tried again
    /// after a few minutes, in case the cause was passing (a clock step, a
    /// busy xtables lock).
    fn hold_back(&mut self, version: Option<u64>) {
        self.held_back =
            version.map(|v| (v, Instant::now() + backoff(10, Duration::from_secs(300))));
    }

    /// Handles one envelope from the controller: verify, apply, check, keep or
    /// roll back. `version_hint` is the unverified version the server claimed
    /// (its ETag); it only decides what to poll for next.
    pub async fn handle_envelope(&mut self, envelope: Vec<u8>, version_hint: Option<u64>) {
        let policy = OpenPolicy {
            device_id: &self.settings.device_id,
            enforced_version: self.enforced_version(),
            now: Some(unix_now()),
        };
        let config = match open_device_config(&envelope, &self.trusted, &policy) {
            Ok(config) => config,
            Err(e) => return self.reject(&e, version_hint),
        };
        let version = config.version;
        match self.apply_checked(&config).await {
            Ok(()) => {
                if let Err(e) = self.state.save_last_good(&envelope) {
                    // Enforced but not persisted: after a reboot the previous
                    // good config comes back, which is safe; say so.
                    tracing::error!(error = ?e, "persisting the last good config");
                }
                tracing::info!(version, "applied config");
                self.enforced = Some(Enforced { config });
                self.held_back = None;
                self.set_result(Outcome::Applied, Some(version), vec![]);
            }
            Err(reason) => {
                let restored = self.restore_previous();
                let mut errors = vec![format!("apply_failed: {reason:#}")];
                if let Err(e) = restored {
                    errors.push(format!("restore_failed: {e:#}"));
                }
                tracing::error!(version, errors = ?errors, "rolled back");
                self.set_result(Outcome::RolledBack, Some(version), errors);
                self.hold_back(Some(version));
            }
        }
    }

    /// A body above the cap was cut off unread: a rejection like any other.
    pub fn refuse_oversized(&mut self, size: u64, version_hint: Option<u64>) {
        let e = OpenError::TooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
            limit: isdf_api::MAX_ENVELOPE_BYTES,
        };
        self.reject(&e, version_hint);
    }

    fn reject(&mut self, e: &OpenError, version_hint: Option<u64>) {
        tracing::warn!(code = e.code(), error = %e, "rejected config; the firewall is unchanged");
        self.set_result(Outcome::Rejected, None, vec![format!("{}: {e}", e.code())]);
        self.hold_back(version_hint);
    }

    /// Applies `firewall` and checks the kernel holds it.
    fn enforce(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        let now = unix_now();
        self.backend.apply(firewall, now)?;
        self.reapply_at = self.backend.next_reapply(firewall, now);
        self.backend
            .verify(firewall, now)
            .context("the kernel does not hold the applied ruleset")
    }

    async fn apply_checked(&mut self, config: &DeviceConfig) -> anyhow::Result<()> {
        self.enforce(&config.firewall)?;
        if self.settings.wan_check {
            self.client
                .ping()
                .await
                .context("the controller is unreachable after applying")?;
        }
        Ok(())
    }

    /// Puts back what was enforced before (or nothing, if nothing was).
    fn restore_previous(&mut self) -> anyhow::Result<()> {
        match self.enforced.as_ref().map(|e| e.config.firewall.clone()) {
            Some(previous) => self.enforce(&previous),
            None => {
                self.reapply_at = None;
                self.backend.remove()
            }
        }
    }

    fn set_result(
        &mut self,
        outcome: Outcome,
        attempted_version: Option<u64>,
        errors: Vec<String>,
    ) {
        self.last = Some(LastResult {
            outcome,
            attempted_version,
            errors,
        });
        self.report_due = true;
    }

    /// Detects a flushed or altered table and puts the enforced config back;
    /// re-applies when the backend asked for it (expiries it cannot leave to
    /// the kernel).
    fn repair_and_expire(&mut self) {
        let Some(enforced) = &self.enforced else {
            return;
        };
        let firewall = enforced.config.firewall.clone();
        let now = unix_now();
        let due = self.reapply_at.is_some_and(|t| t <= now);
        let drifted = self.backend.verify(&firewall, now);
        if drifted.is_ok() && !due {
            return;
        }
        if let Err(e) = &drifted {
            tracing::warn!(error = %e, "kernel state drifted; re-applying the enforced config");
        }
        if let Err(e) = self.enforce(&firewall) {
            tracing::error!(error = ?e, "re-applying the enforced config");
        }
    }

    /// The version to send in `If-None-Match`: the enforced one, or a
    /// refused newer one while it is held back.
    fn poll_version(&self) -> Option<u64> {
        let held = self
            .held_back
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v);
        self.enforced_version().max(held)
    }

    fn stale(&self) -> bool {
        self.enforced
            .as_ref()
            .is_some_and(|e| e.config.expires_at <= unix_now())
    }

    fn build_report(&self) -> anyhow::Result<StatusReport> {
        let (outcome, attempted_version, errors) = match (&self.last, self.stale()) {
            (_, true) => (
                Outcome::Stale,
                self.enforced_version(),
                vec!["config expired; still enforcing it".into()],
            ),
            (Some(last), false) => (last.outcome, last.attempted_version, last.errors.clone()),
            (None, false) => (Outcome::Applied, self.enforced_version(), vec![]),
        };
        Ok(StatusReport {
            sequence: self.state.next_sequence(unix_millis())?,
            enforced_version: self.enforced_version(),
            enforced_digest: self.enforced.as_ref().map(|e| e.config.firewall.digest()),
            outcome,
            attempted_version,
            errors,
            counters: self.backend.counters().unwrap_or_default(),
            backend: self.backend.name().to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    async fn report_if_due(&mut self) {
        let heartbeat = Duration::from_secs(self.settings.heartbeat_secs);
        let heartbeat_due = self.last_report.is_none_or(|t| t.elapsed() >= heartbeat);
        // Nothing tried and nothing enforced yet: there is no outcome to report.
        let nothing_yet = self.last.is_none() && self.enforced.is_none();
        if nothing_yet || (!self.report_due && !heartbeat_due) {
            return;
        }
        let result = match self.build_report() {
            Ok(report) => self.client.report(&report).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.report_due = false;
                self.last_report = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "status report failed; will retry"),
        }
    }

    /// Runs until `shutdown` resolves. The firewall is left as it is on exit.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let wait = Duration::from_secs(self.settings.poll_wait_secs);
        let mut failures: u32 = 0;
        loop {
            self.repair_and_expire();
            self.report_if_due().await;
            let reapply_in = self
                .reapply_at
                .map(|t| Duration::from_secs(u64::try_from(t - unix_now()).unwrap_or(0)));
            let this_wait = reapply_in.map_or(wait, |r| r.min(wait));
            let poll = tokio::select! {
                () = &mut shutdown => return,
                poll = self.client.poll(self.poll_version(), this_wait) => poll,
            };
            let pace = match poll {
                Ok((polled, pace)) => {
                    failures = 0;
                    match polled {
                        Poll::Newer {
                            envelope,
                            version_hint,
                        } => self.handle_envelope(envelope, version_hint).await,
                        Poll::NotModified => {}
                        Poll::TooLarge { size, version_hint } => {
                            self.refuse_oversized(size, version_hint)
                        }
                    }
                    pace
                }

                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(
                        failures,
                        Duration::from_secs(self.settings.max_backoff_secs),
                    );
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "poll failed; rules stay as they are");
                    delay
                }
            };
            // The server's pacing, or the backoff after an error. What just
            // happened is reported before the pause, not after it.
            if !pace.is_zero() {
                self.report_if_due().await;

                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(pace) => {},
                }
            }
        }
    }
}

/// Exponential backoff with full jitter between half and all of the step,
/// so a fleet that lost its controller does not come back in lockstep.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let step = Duration::from_secs(1u64 << failures.min(16).saturating_sub(1)).min(max);
    let jitter = rand::thread_rng().gen_range(0.5..=1.0);
    step.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ed25519_dalek::SigningKey;
    use isdf_api::{Firewall, RuleCounter};

    use super::*;
    use crate::backend::BackendChoice;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        for (failures, ceiling) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff(failures, max);
            assert!(d <= Duration::from_secs(ceiling), "{failures}: {d:?}");
            assert!(d >= Duration::from_secs(ceiling) / 2, "{failures}: {d:?}");
        }
    }

    const DEVICE: &str = "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50";

    /// What the fake kernel holds and what was done to it.
    #[derive(Default)]
    struct Kernel {
        holds: Option<Firewall>,
        applies: usize,
        /// Verification fails while the kernel holds a firewall with this many rules.
        broken_rule_count: Option<usize>,
    }

    struct FakeBackend(Arc<Mutex<Kernel>>);

    impl FirewallBackend for FakeBackend {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn apply(&mut self, firewall: &Firewall, _now: i64) -> anyhow::Result<()> {
            let mut k = self.0.lock().unwrap();
            k.applies += 1;
            k.holds = Some(firewall.clone());
            Ok(())
        }
        fn verify(&self, firewall: &Firewall, _now: i64) -> anyhow::Result<()> {
            let k = self.0.lock().unwrap();
            anyhow::ensure!(k.holds.as_ref() == Some(firewall), "kernel differs");
            anyhow::ensure!(
                k.broken_rule_count != Some(firewall.rules.len()),
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

    fn agent(dir: &std::path::Path, kernel: &Arc<Mutex<Kernel>>) -> Agent {
        std::fs::write(dir.join("token"), "isdf_dev_test").unwrap();
        std::fs::write(dir.join("ca.pem"), include_str!("testdata/ca.pem")).unwrap();
        let settings = Settings {
            // Nothing listens here; with wan_check off no test reaches the network.
            controller_url: "https://127.0.0.1:9".into(),
            device_id: DEVICE.into(),
            device_token_file: dir.join("token"),
            ca_cert: dir.join("ca.pem"),
            signing_public_keys: vec![hex_key(&key())],
            state_dir: dir.join("state"),
            backend: BackendChoice::Nftables,
            poll_wait_secs: 30,
            max_backoff_secs: 60,
            wan_check: false,
            heartbeat_secs: 300,
        };
        Agent::new(settings, Box::new(FakeBackend(kernel.clone()))).unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn hex_key(key: &SigningKey) -> String {
        key.verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn envelope(version: u64, rules: usize, signer: &SigningKey) -> Vec<u8> {
        let rules: Vec<serde_json::Value> = (0..rules)
            .map(|i| serde_json::json!({"id": format!("r{i}"), "chain": "input", "match": {"protocol": "tcp", "dport": 1000 + i}, "action": "drop"}))
            .collect();
        let config = serde_json::json!({"device_id": DEVICE, "version": version, "issued_at": unix_now() - 10,
            "expires_at": unix_now() + 3600, "firewall": {"rules": rules}});
        isdf_api::seal(
            isdf_api::CONFIG_PAYLOAD_TYPE,
            config.to_string().as_bytes(),
            signer,
        )
        .to_json()
    }

    fn rules_held(kernel: &Arc<Mutex<Kernel>>) -> Option<usize> {
        kernel.lock().unwrap().holds.as_ref().map(|f| f.rules.len())
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
}
