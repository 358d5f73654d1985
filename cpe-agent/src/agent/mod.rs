//! The agent loop: enforce the last good config at start (before any network
//! call), then long-poll, verify, apply, verify the kernel, persist, report;
//! renew the device certificate when it is two thirds through its life.
//!
//! `Agent::run`, in this file, is the whole loop: one pass of periodic work
//! (the config's agent release, drift repair, services, identity, reports),
//! then one `select!` over the long poll, local requests, classifier
//! detections, the harvest of the kernel's endpoint sets, the rotation
//! watcher and a release download, then the pause the server asked for. It
//! returns when asked to stop, or when an agent release is staged
//! (`upgrading.rs`). What each step does lives with its concern: `apply.rs`
//! (verify, enforce, roll back, repair), `identity.rs` (trust, renewal,
//! re-enrollment), `report.rs` (status, events, facts), `blocks.rs` (the
//! router's own blocks), `state_writes.rs` (what could not be saved to a
//! full state disk: retried and reported) and `clock.rs` (the wall clock,
//! and what a step of it changes). `uninstall.rs` is the operator's way to
//! take everything away; the agent's exit takes nothing.
//!
//! A config is applied in order: the kernel ruleset (applied and verified,
//! with the tunnels' isolation rules), then the WireGuard tunnels, then the
//! DNS policy (the resolver answers with it), then the reachability check.
//! A failure at any step puts all three back as they were and reports
//! `rolled_back`.
//!
//! Invariants: **nothing reaches the backend before `open_device_config`
//! accepted it** (signature, device id, version, expiry); a failed apply
//! restores the previous ruleset, tunnels and DNS policy;
//! losing the controller never removes rules, and neither does losing the
//! certificate: a router that can no longer authenticate keeps enforcing
//! what it has.

mod apply;
pub use apply::opening_policy;
mod blocks;
mod clock;
mod counting;
mod identity;
mod report;
mod state_writes;
mod uninstall;
pub mod upgrade;
mod upgrading;

use std::time::{Duration, Instant};

use isdf_api::root::RootDocument;
use isdf_api::{DeviceConfig, Outcome, TrustedKeys};

use crate::backend::FirewallBackend;
use crate::control::Command;
use crate::controller::client::{Client, Poll};
use crate::dns::{Dnsmasq, Resolver};
use crate::router_blocks::RouterBlocks;
use crate::sys::settings::Settings;
use crate::sys::state::{Identity, StateDir};
use crate::sys::time::backoff;
use crate::wireguard::Tunnels;

pub use uninstall::uninstall;

/// How often the kernel's detections are collected and reported.
const HARVEST_EVERY: Duration = Duration::from_secs(2);

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
    /// The certificate and key the client authenticates with; the device id
    /// comes from here.
    identity: Identity,
    trusted: TrustedKeys,
    /// The newest root the agent verified (None: signing keys are pinned in
    /// the settings, or the controller sent no roots).
    root: Option<RootDocument>,
    /// Set by a root that removed a compromised key: configs from this
    /// version on are accepted again even below the enforced version.
    version_floor: Option<u64>,
    backend: Box<dyn FirewallBackend>,
    /// The router's resolver, which enforces the config's DNS policy.
    resolver: Box<dyn Resolver>,
    /// Answers the HTTP requests the config redirects to the router.
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
    /// Whether the enforced config was found expired at the last look.
    stale_noticed: bool,
    last_report: Option<Instant>,
    /// After a failed renewal or re-enrollment: how many failed in a row,
    /// and when the next attempt is due.
    identity_retry: Option<(u32, Instant)>,
    /// The controller refused this identity for good (device deleted, or
    /// certificate replaced): renewal is pointless, only enrolling again helps.
    identity_refused: bool,
    /// Blocks decided on the router (local socket, classifier) and the
    /// events about them not yet delivered.
    router_blocks: RouterBlocks,
    /// LAN hosts seen running BitTorrent, whose flows the classifier sees
    /// more of for a while.
    watched: crate::router_blocks::watched::WatchedHosts,
    /// Requests from the local control socket, once it listens.
    commands: Option<tokio::sync::mpsc::Receiver<Command>>,
    /// The flow patterns the last enforced ruleset blocked: an apply ends
    /// the established flows of the patterns not in here.
    blocked: std::collections::BTreeSet<isdf_api::FlowPattern>,
    /// The classifier on NFQUEUE, once a config asked for it.
    inspector: Option<crate::inspect::Inspector>,
    /// The classifier could not bind its queue; not retried at every apply.
    classifier_failed: bool,
    /// The router's WireGuard keys and tunnels.
    tunnels: Tunnels,
    /// The wall clock (and a monotonic one) the loop reads.
    clock: std::sync::Arc<dyn crate::sys::time::Clock>,
    /// Both clocks at the last pass (wall, monotonic ms): a step shows as
    /// the two drifting apart.
    clock_anchor: Option<(i64, i64)>,
    /// What could not be written to the state directory yet.
    unsaved: state_writes::Unsaved,
    /// The tunnel facts last reported, and when.
    facts_sent: Option<(isdf_api::wireguard::WireguardFacts, Instant)>,
    /// After failed facts reports: how many in a row, and when to retry.
    facts_retry: Option<(u32, Instant)>,
    /// What the agent counted since it started (`counting.rs`).
    tally: counting::Tally,
    /// Where the agent is in an upgrade (`upgrading.rs`).
    upgrading: upgrading::Upgrading,
}

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (the shutdown future resolved).
    Shutdown,
    /// An agent release is staged: the supervisor starts
    /// `isdf-agent-launch` again, which runs it.
    ForUpgrade,
}

impl Agent {
    /// An agent for the enrolled router `identity`. Trusts the signing keys
    /// of the settings if any are set, else those of the newest verified
    /// root (see `trust`);
    /// talks to `controller_url`, else the URL of the answer, trusting only
    /// the CA of the answer.
    pub fn new(
        settings: Settings,
        identity: Identity,
        backend: Box<dyn FirewallBackend>,
    ) -> anyhow::Result<Self> {
        let state = StateDir::open(&settings.state_dir)?;
        let client = Self::connect(&settings, &identity)?;
        let (trusted, root) = Self::trust(&settings, &identity, &state)?;
        let router_blocks = RouterBlocks::new(
            crate::router_blocks::persist::load(&state).unwrap_or_else(|e| {
                error_debug("unreadable router blocks; starting without them", &e);
                Default::default()
            }),
            settings.router_block_limits(),
        );
        let tunnels = Tunnels::new(settings.tunnel_settings())?;
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(Agent {
            tally: counting::Tally::new(started_at),
            upgrading: Default::default(),
            tunnels,
            facts_sent: None,
            facts_retry: None,
            unsaved: Default::default(),
            clock: std::sync::Arc::new(crate::sys::time::SystemClock),
            clock_anchor: None,
            resolver: Box::new(Dnsmasq::new(&settings)),
            settings,
            identity,
            trusted,
            root,
            version_floor: None,
            backend,
            state,
            client,
            enforced: None,
            last: None,
            reapply_at: None,
            held_back: None,
            report_due: false,
            stale_noticed: false,
            last_report: None,
            identity_retry: None,
            identity_refused: false,
            router_blocks,
            commands: None,
            blocked: Default::default(),
            inspector: None,
            watched: Default::default(),
            classifier_failed: false,
        })
    }

    pub fn device_id(&self) -> &str {
        self.identity.device_id()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The version of the enforced config, if it is this device's: after
    /// enrolling again as another device the old device's versions do not
    /// order the new one's.
    pub fn enforced_version(&self) -> Option<u64> {
        self.enforced
            .as_ref()
            .filter(|e| e.config.device_id == self.identity.device_id())
            .map(|e| e.config.version)
    }

    /// The config firewall in force (empty before the first config).
    fn config_firewall(&self) -> isdf_api::Firewall {
        self.enforced
            .as_ref()
            .map(|e| e.config.firewall.clone())
            .unwrap_or_default()
    }

    /// Runs until `shutdown` resolves, or an agent release is staged. The
    /// firewall is left as it is on exit.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) -> Stopped {
        tokio::pin!(shutdown);
        if self.commands.is_none() {
            self.listen();
        }
        self.notice_upgrade_state();
        let wait = Duration::from_secs(self.settings.poll_wait_secs);
        let mut failures: u32 = 0;
        loop {
            self.consider_release().await;
            self.repair_and_expire();
            self.repair_services();
            self.maintain_identity().await;
            self.report_if_due().await;
            self.send_events_if_due().await;
            self.send_facts_if_due().await;
            let reapply_in = self
                .reapply_at
                .map(|t| Duration::from_secs(u64::try_from(t - self.now_secs()).unwrap_or(0)));
            // The poll returns in time for a re-apply or a renewal: a short
            // certificate lifetime must not be outlived by one long poll.
            let this_wait = reapply_in
                .map_or(wait, |r| r.min(wait))
                .min(self.identity_due_in());
            // The poll owns a clone of the client, so local requests and
            // detections are handled while it waits, without cutting it.
            let client = self.client.clone();
            let poll = client.poll(self.poll_version(), this_wait);
            tokio::pin!(poll);
            let mut harvest = tokio::time::interval(HARVEST_EVERY);
            harvest.reset();
            let mut rotation = tokio::time::interval(crate::wireguard::WATCH_EVERY);
            rotation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let poll = loop {
                tokio::select! {
                    () = &mut shutdown => return Stopped::Shutdown,
                    command = Self::next_command(&mut self.commands) => {
                        let response = self.handle_command(command.request);
                        let _ = command.reply.send(response);
                        self.send_events_if_due().await;
                    }
                    downloaded = Self::next_download(&mut self.upgrading.download) => {
                        self.finish_download(downloaded);
                        if self.upgrading.staged {
                            return Stopped::ForUpgrade;
                        }
                    }
                    detection = Self::next_detection(&mut self.inspector) => {
                        self.handle_detections(detection);
                        self.send_events_if_due().await;
                    }
                    _ = harvest.tick(), if self.watches_detections() => {
                        self.harvest_and_watch();
                        self.send_events_if_due().await;
                    }
                    _ = rotation.tick(), if self.tunnels.has_alternates() => {
                        if let Err(e) = self.tunnels.watch_rotation() {
                            warn_failed("watching WireGuard handshakes", &e);
                        }
                    }
                    result = &mut poll => break result,
                }
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

                Err(e) if crate::controller::enrollment::is_identity_refused(&e) => {
                    self.tally.counters.polls_failed += 1;
                    // No retry of the same request can help: say so once,
                    // loudly, and let `maintain_identity` enroll again.
                    if !self.identity_refused {
                        error_failed(
                            "the controller refuses this router's certificate for good (the device \
                             was deleted, or enrolled again so another router holds it now); only \
                             enrolling again with a new token (`isdf-agent enroll`, or \
                             enrollment_token_file) restores access; the enforced rules stay",
                            &e,
                        );
                    }
                    self.identity_refused = true;
                    crate::controller::enrollment::PERMANENT_FAILURE_RETRY
                }
                Err(e) => {
                    self.tally.counters.polls_failed += 1;
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
                let until = tokio::time::Instant::now() + pace;
                // Local requests are served during the pause too.
                loop {
                    tokio::select! {
                        () = &mut shutdown => return Stopped::Shutdown,
                        () = tokio::time::sleep_until(until) => break,
                        command = Self::next_command(&mut self.commands) => {
                            let response = self.handle_command(command.request);
                            let _ = command.reply.send(response);
                        }
                    }
                }
            }
        }
    }
}

// The failures the loop logs and carries on after, through one `tracing`
// call site per form rather than one per failure: each call site costs the
// small binary about 300 bytes of code and metadata. The message is
// printed as given; the target stays this module.

/// A warning: `message`, and the error with its causes on one line.
fn warn_failed(message: &str, e: &anyhow::Error) {
    tracing::warn!(error = %format!("{e:#}"), "{message}");
}

/// An error: `message`, and the error with its causes on one line.
fn error_failed(message: &str, e: &anyhow::Error) {
    tracing::error!(error = %format!("{e:#}"), "{message}");
}

/// An error: `message`, and the error with its causes as `Debug` shows them.
fn error_debug(message: &str, e: &anyhow::Error) {
    tracing::error!(error = ?e, "{message}");
}

#[cfg(test)]
mod clock_tests;
#[cfg(test)]
mod power_cut_tests;
#[cfg(test)]
mod tests;
