//! Applying a config: verify (`open_device_config`), then the ruleset
//! (applied and verified, with the tunnels' isolation rules and the router's
//! own blocks), the tunnels, the DNS policy and the reachability check, in
//! that order; on any failure the previous ruleset, tunnels and DNS policy
//! are put back and `rolled_back` reported.
//!
//! A refused or rolled-back version is held back: the agent polls for
//! anything newer and retries it minutes later, so it is never fetched in a
//! loop. Each periodic pass also checks the kernel for drift (someone
//! flushed our table) and repairs it, and re-applies when the backend asked
//! (expiries it cannot leave to the kernel). At start the persisted last good
//! config is enforced again before any network call.

use std::time::{Duration, Instant};

use anyhow::Context;
use isdf_api::{open_device_config, Action, DeviceConfig, OpenError, OpenPolicy, Outcome};

use super::blocks::classify_timeout;
use super::{error_debug, error_failed, warn_failed, Agent, Enforced};
use crate::backend::conntrack;
use crate::router_blocks::blocked_patterns;
use crate::sys::time::backoff;

/// What a config received from the controller must satisfy to be enforced
/// on the router `device_id`, now enforcing `enforced` (None before its
/// first config): bound to this device, newer, not expired at `now`
/// (router clock, Unix seconds). After a root removed a compromised key
/// (`version_floor`), versions from the floor on count as newer again (the
/// attacker may have signed a huge one). Public so the fleet simulator
/// (`src/bin/isdf-fleet-sim/`) opens envelopes exactly as the agent does.
pub fn opening_policy(
    device_id: &str,
    enforced: Option<u64>,
    version_floor: Option<u64>,
    now: i64,
) -> OpenPolicy<'_> {
    let enforced = enforced.map(|v| match version_floor {
        Some(floor) if v >= floor => floor.saturating_sub(1),
        _ => v,
    });
    OpenPolicy {
        device_id,
        enforced_version: enforced,
        now: Some(now),
    }
}

impl Agent {
    /// Re-enforces the persisted last good config. Runs before any network
    /// call, so a rebooted router is protected while the controller is away.
    /// The envelope is verified again (signature and device); its version and
    /// expiry are not checked, as it was accepted when it arrived and
    /// enforcing it can only keep the firewall closed.
    pub fn restore_last_good(&mut self) -> anyhow::Result<()> {
        let Some(envelope) = self.state.last_good()? else {
            tracing::info!("no last good config yet");
            if !self.router_blocks.active(self.now_ms()).is_empty() {
                self.enforce(&isdf_api::Firewall::default())
                    .context("re-enforcing the router's own blocks")?;
            }
            return Ok(());
        };
        let policy = OpenPolicy {
            device_id: self.identity.device_id(),
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
        let tunnels = self.enforce_tunnels(&config.firewall);
        let services = self.enforce_services(&config.firewall);
        self.enforced = Some(Enforced { config });
        self.report_due = true;
        // The kernel holds it either way; the periodic pass tries the
        // tunnels and the resolver again.
        tunnels
            .and(services)
            .context("re-enforcing the tunnels and DNS policy of the last good config")
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
        let started = Instant::now();
        let mut opened = self.open(&envelope);
        // Signed by a key we do not know yet: perhaps the controller rotated
        // its key under a new root. Follow the chain once, then try again.
        if matches!(&opened, Err(OpenError::UnknownKey(_))) && self.follow_roots().await {
            opened = self.open(&envelope);
        }
        let config = match opened {
            Ok(config) => config,
            Err(e) => return self.reject(&e, version_hint),
        };
        let version = config.version;
        match self.apply_checked(&config).await {
            Ok(()) => {
                self.save_last_good(version, envelope);
                if let Err(e) = self.tunnels.commit() {
                    error_debug("forgetting the old WireGuard keys", &e);
                }
                tracing::info!(
                    version,
                    ms = started.elapsed().as_millis() as u64,
                    "applied config"
                );
                self.enforced = Some(Enforced { config });
                self.held_back = None;
                self.version_floor = None;
                self.set_result(Outcome::Applied, Some(version), vec![]);
                self.consider_release().await;
            }
            Err(reason) => {
                let mut errors = vec![format!("apply_failed: {reason:#}")];
                for e in self.restore_previous() {
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

    fn open(&self, envelope: &[u8]) -> Result<DeviceConfig, OpenError> {
        let policy = opening_policy(
            self.identity.device_id(),
            self.enforced_version(),
            self.version_floor,
            self.now_secs(),
        );
        open_device_config(envelope, &self.trusted, &policy)
    }

    /// Applies `firewall` with the router's own blocks and checks the kernel
    /// holds it; then ends the established flows of what is newly blocked.
    pub(super) fn enforce(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        // The router's own blocks keep their durations if the clock
        // stepped since the last look (`clock.rs`).
        self.notice_clock_step();
        // The replacement empties the kernel's endpoint sets: keep what
        // they learned first.
        // (Hosts it finds to watch are merged below.)
        self.harvest_detections();
        if !firewall.classifier_heuristics() {
            self.end_heuristic_blocks();
        }
        let now_ms = self.now_ms();
        let mut merged = self.router_blocks.merged_into(firewall, now_ms);
        self.watched.merged_into(&mut merged, now_ms);
        // The replacement restarts the kernel's counters: take the blocked
        // counts first.
        if self.tally.counts_blocks() {
            match self.backend.counters() {
                Ok(counters) => self.tally.observe_blocked(&counters),
                Err(e) => error_debug("reading the counters before an apply", &e),
            }
        }
        self.backend.apply(&merged, now_ms)?;
        self.tally.replaced(&merged);
        self.reapply_at = self.backend.next_reapply(&merged, now_ms);
        self.backend
            .verify(&merged, now_ms)
            .context("the kernel does not hold the applied ruleset")?;
        let blocked = blocked_patterns(&merged);
        let new: Vec<_> = blocked
            .iter()
            .copied()
            .filter(|p| !self.blocked.contains(*p))
            .collect();
        if !new.is_empty() {
            // The block is in force either way; a flow that survives here
            // only lives on where the kernel offloads it.
            match conntrack::end_flows(&new) {
                Ok(0) => {}
                Ok(ended) => tracing::info!(ended, "ended established flows that are now blocked"),
                Err(e) => warn_failed("could not end blocked flows", &e),
            }
        }
        self.blocked = blocked.into_iter().cloned().collect();
        let portal_rules = firewall.rules.iter().any(|r| r.action == Action::Portal);
        if classify_timeout(firewall).is_some() || firewall.flow_names.is_some() || portal_rules {
            self.start_classifier();
        }
        if let Some(inspector) = &self.inspector {
            inspector.set_heuristics(firewall.classifier_heuristics());
            inspector.set_lan_interfaces(&self.settings.lan_interfaces);
            let resolver = std::net::SocketAddr::from(([127, 0, 0, 1], self.settings.dns_port));
            inspector.set_names(
                firewall.flow_names.as_ref(),
                firewall.portal.as_ref(),
                resolver,
            );
        }
        Ok(())
    }

    /// Enforces the DNS policy of `firewall` (after its ruleset: the sets
    /// DNS answers fill must exist first). The portal's answers come from
    /// the packet path (`inspect.rs`), which reads `firewall.portal`.
    fn enforce_services(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        self.resolver
            .apply(firewall.dns.as_ref())
            .context("the router's resolver")
    }

    /// Makes the router's tunnels those of `firewall` (after its ruleset,
    /// which holds their isolation rules).
    fn enforce_tunnels(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        self.tunnels
            .apply(firewall.wireguard.as_ref())
            .context("the WireGuard tunnels")
    }

    /// The periodic pass for the tunnels and the resolver: a tunnel
    /// interface that went away is made again, a dnsmasq that died is
    /// started again.
    pub(super) fn repair_services(&mut self) {
        if let Err(e) = self.tunnels.repair() {
            error_failed("the WireGuard tunnels", &e);
        }
        if let Err(e) = self.resolver.repair() {
            error_failed("the router's resolver", &e);
        }
    }

    async fn apply_checked(&mut self, config: &DeviceConfig) -> anyhow::Result<()> {
        self.enforce(&config.firewall)?;
        self.enforce_tunnels(&config.firewall)?;
        self.enforce_services(&config.firewall)?;
        // Last: the router's own name lookups may go through the resolver.
        if self.settings.wan_check {
            self.client
                .ping()
                .await
                .context("the controller is unreachable after applying")?;
        }
        Ok(())
    }

    /// Puts back what was enforced before (or nothing, if nothing was):
    /// ruleset, tunnels and DNS policy, each tried whatever
    /// the others did. Returns what could not be put back.
    fn restore_previous(&mut self) -> Vec<anyhow::Error> {
        let previous = self.enforced.as_ref().map(|e| e.config.firewall.clone());
        let kernel = match &previous {
            Some(previous) => self.enforce(previous),
            None if !self.router_blocks.active(self.now_ms()).is_empty() => {
                self.enforce(&isdf_api::Firewall::default())
            }
            None => {
                self.reapply_at = None;
                self.blocked.clear();
                self.backend.remove()
            }
        };
        let previous = previous.unwrap_or_default();
        let tunnels = self.enforce_tunnels(&previous);
        let services = self.enforce_services(&previous);
        [kernel.err(), tunnels.err(), services.err()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Detects a flushed or altered table and puts the enforced config back;
    /// re-applies when the backend asked for it (expiries it cannot leave to
    /// the kernel) or the wall clock stepped (`clock.rs`: the kernel's
    /// timeouts count from the apply). Tries again to save what could not
    /// be saved.
    pub(super) fn repair_and_expire(&mut self) {
        self.retry_unsaved();
        let stepped = self.notice_clock_step();
        let now_ms = self.now_ms();
        if self.router_blocks.prune(now_ms) {
            self.persist_router_blocks();
        }
        if self.enforced.is_none() && self.router_blocks.active(now_ms).is_empty() {
            return;
        }
        let firewall = self.config_firewall();
        let due = stepped || self.reapply_at.is_some_and(|t| t <= self.now_secs());
        let merged = self.router_blocks.merged_into(&firewall, now_ms);
        let drifted = self.backend.verify(&merged, now_ms);
        if drifted.is_ok() && !due {
            return;
        }
        if let Err(e) = &drifted {
            tracing::warn!(error = %e, "kernel state drifted; re-applying the enforced config");
        }
        if let Err(e) = self.enforce(&firewall) {
            error_debug("re-applying the enforced config", &e);
        }
    }

    /// The version to send in `If-None-Match`: the enforced one, or a
    /// refused newer one while it is held back.
    pub(super) fn poll_version(&self) -> Option<u64> {
        let held = self
            .held_back
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v);
        self.enforced_version().max(held)
    }
}
