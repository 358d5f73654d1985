//! The agent loop: enforce the last good config at start (before any network
//! call), then long-poll, verify, apply, verify the kernel, report; renew the
//! device certificate when it is two thirds through its life.
//!
//! A config is applied in order: the kernel ruleset (applied and verified,
//! with the tunnels' isolation rules), then the WireGuard tunnels, then the
//! DNS policy (the resolver answers with it), then the portal redirect
//! (listening), then the reachability check. A failure at any step puts all
//! four back as they were and reports `rolled_back`.
//!
//! Invariants: **nothing reaches the backend before `open_device_config`
//! accepted it** (signature, device id, version, expiry); a failed apply
//! restores the previous ruleset, tunnels, DNS policy and portal redirect;
//! losing the
//! controller never removes rules,
//! and neither does losing the certificate: a router that can no longer
//! authenticate keeps enforcing what it has.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use isdf_api::root::RootDocument;
use isdf_api::{
    open_device_config, DeviceConfig, OpenError, OpenPolicy, Outcome, StatusReport, TrustedKeys,
};

use crate::backend::{conntrack, FirewallBackend};
use crate::control::{Command, Request, Response};
use crate::controller::client::{Client, Poll};
use crate::controller::enrollment;
use crate::dns::{Dnsmasq, Resolver};
use crate::portal_redirect::PortalResponder;
use crate::router_blocks::{blocked_patterns, RouterBlocks};
use crate::sys::settings::Settings;
use crate::sys::state::{Identity, StateDir};
use crate::sys::time::{backoff, unix_millis, unix_now};
use crate::wireguard::Tunnels;

/// How long the config's `classify` rule blocks what the classifier finds
/// (None: the config does not classify).
fn classify_timeout(firewall: &isdf_api::Firewall) -> Option<u32> {
    firewall
        .rules
        .iter()
        .filter(|r| r.action == isdf_api::Action::Classify)
        .filter_map(|r| r.add_endpoints_to.as_ref())
        .map(|a| a.timeout_secs)
        .max()
}

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
    portal: PortalResponder,
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
    /// After a failed renewal or re-enrollment: how many failed in a row,
    /// and when the next attempt is due.
    identity_retry: Option<(u32, Instant)>,
    /// Blocks decided on the router (local socket, classifier) and the
    /// events about them not yet delivered.
    router_blocks: RouterBlocks,
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
    /// The tunnel facts last reported, and when.
    facts_sent: Option<(isdf_api::wireguard::WireguardFacts, Instant)>,
    /// After failed facts reports: how many in a row, and when to retry.
    facts_retry: Option<(u32, Instant)>,
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
        Ok(Agent {
            tunnels,
            facts_sent: None,
            facts_retry: None,
            resolver: Box::new(Dnsmasq::new(&settings)),
            portal: PortalResponder::default(),
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
            last_report: None,
            identity_retry: None,
            router_blocks,
            commands: None,
            blocked: Default::default(),
            inspector: None,
            classifier_failed: false,
        })
    }

    /// The keys configs may be signed with: pinned in the settings, or those
    /// of the newest root reachable from the enrollment answer's root 1
    /// through the roots fetched since (each step verified), or, from a
    /// controller without roots, the keys named at enrollment.
    fn trust(
        settings: &Settings,
        identity: &Identity,
        state: &StateDir,
    ) -> anyhow::Result<(TrustedKeys, Option<RootDocument>)> {
        let roots = &identity.certificate.roots;
        if !settings.signing_public_keys.is_empty() || roots.is_empty() {
            return Ok((settings.trusted_keys(&identity.certificate)?, None));
        }
        let first = RootDocument::open_first(roots[0].as_bytes())
            .map_err(|e| anyhow::anyhow!("root 1: {e}"))?;
        let fetched = state.roots()?;
        let latest = first
            .walk(roots.iter().chain(&fetched).map(|e| e.as_bytes()))
            .map_err(|e| anyhow::anyhow!("the root chain: {e}"))?;
        let keys = latest.config_keys().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((keys, Some(latest)))
    }

    /// After a config signed by an unknown key: fetches the controller's root
    /// chain and, if it verifies from the newest root held, moves to it.
    /// Returns whether the trusted keys changed.
    async fn follow_roots(&mut self) -> bool {
        let Some(current) = self.root.clone() else {
            return false;
        };
        let chain = match self.client.roots().await {
            Ok(chain) => chain,
            Err(e) => {
                warn_failed("could not fetch the root chain", &e);
                return false;
            }
        };
        let latest = match current.walk(chain.iter().map(|e| e.as_bytes())) {
            Ok(latest) if latest.version > current.version => latest,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(code = e.code(), error = %e, "refused a root update; trust is unchanged");
                return false;
            }
        };
        let Ok(keys) = latest.config_keys() else {
            return false;
        };
        if let Err(e) = self.state.save_roots(&chain) {
            error_debug("persisting the root chain", &e);
        }
        tracing::info!(
            from = current.version,
            to = latest.version,
            "moved to a new root"
        );
        if let Some(floor) = latest.config_version_floor {
            self.version_floor = Some(floor);
        }
        self.trusted = keys;
        self.root = Some(latest);
        true
    }

    fn connect(settings: &Settings, identity: &Identity) -> anyhow::Result<Client> {
        Client::new(
            settings.device_api_url(&identity.certificate),
            identity.certificate.ca_pem.as_bytes(),
            identity,
        )
    }

    /// Switches to a renewed or re-enrolled identity (already persisted).
    fn adopt(&mut self, identity: Identity) -> anyhow::Result<()> {
        let client = Self::connect(&self.settings, &identity)?;
        let (trusted, root) = Self::trust(&self.settings, &identity, &self.state)?;
        if identity.device_id() != self.identity.device_id() {
            // Enrolled again as another device: the enforced config stays in
            // the kernel (and is put back if a new one fails), but its
            // version says nothing about the new device's versions.
            tracing::warn!(
                old = self.identity.device_id(),
                new = identity.device_id(),
                "the device id changed"
            );
        }
        self.client = client;
        // Never step back to an older root than the one already followed.
        if root.as_ref().map(|r| r.version) >= self.root.as_ref().map(|r| r.version) {
            self.trusted = trusted;
            self.root = root;
        }
        self.identity = identity;
        Ok(())
    }

    pub fn device_id(&self) -> &str {
        self.identity.device_id()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Re-enforces the persisted last good config. Runs before any network
    /// call, so a rebooted router is protected while the controller is away.
    /// The envelope is verified again (signature and device); its version and
    /// expiry are not checked, as it was accepted when it arrived and
    /// enforcing it can only keep the firewall closed.
    pub fn restore_last_good(&mut self) -> anyhow::Result<()> {
        let Some(envelope) = self.state.last_good()? else {
            tracing::info!("no last good config yet");
            if !self.router_blocks.active(unix_millis()).is_empty() {
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
        // tunnels, the resolver and the portal again.
        tunnels
            .and(services)
            .context("re-enforcing the tunnels, DNS policy and portal of the last good config")
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
                if let Err(e) = self.state.save_last_good(&envelope) {
                    // Enforced but not persisted: after a reboot the previous
                    // good config comes back, which is safe; say so.
                    error_debug("persisting the last good config", &e);
                }
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
        // After a root removed a compromised key, versions from the floor on
        // count as newer again (the attacker may have signed a huge one).
        let enforced = self.enforced_version().map(|v| match self.version_floor {
            Some(floor) if v >= floor => floor.saturating_sub(1),
            _ => v,
        });
        let policy = OpenPolicy {
            device_id: self.identity.device_id(),
            enforced_version: enforced,
            now: Some(unix_now()),
        };
        open_device_config(envelope, &self.trusted, &policy)
    }

    /// Applies `firewall` with the router's own blocks and checks the kernel
    /// holds it; then ends the established flows of what is newly blocked.
    fn enforce(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        // The replacement empties the kernel's endpoint sets: keep what
        // they learned first.
        self.harvest_detections();
        let now_ms = unix_millis();
        let merged = self.router_blocks.merged_into(firewall, now_ms);
        self.backend.apply(&merged, now_ms)?;
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
        if classify_timeout(firewall).is_some() {
            self.start_classifier();
        }
        Ok(())
    }

    /// Starts the classifier on its queue the first time a config asks.
    fn start_classifier(&mut self) {
        if self.inspector.is_some() || self.classifier_failed {
            return;
        }
        match crate::inspect::start(crate::backend::CLASSIFY_QUEUE) {
            Ok(inspector) => self.inspector = Some(inspector),
            Err(e) => {
                // The queue rule has `bypass`: traffic passes unclassified,
                // and the kernel's signatures still block.
                error_failed("the classifier cannot run", &e);
                self.classifier_failed = true;
            }
        }
    }

    /// Blocks the peers the classifier found, for as long as the config's
    /// classify rule says, and enforces that at once (which also ends their
    /// established flows).
    fn handle_detections(&mut self, first: crate::classify::Detection) {
        use isdf_api::events::BlockOrigin;
        let firewall = self.config_firewall();
        let Some(timeout_secs) = classify_timeout(&firewall) else {
            return;
        };
        let mut found = vec![first];
        if let Some(inspector) = self.inspector.as_mut() {
            while let Ok(more) = inspector.detections.try_recv() {
                found.push(more);
            }
        }
        let now_ms = unix_millis();
        let mut added = 0;
        for detection in found {
            let endpoint = isdf_api::Endpoint {
                addr: detection.peer.addr.ip(),
                protocol: match detection.peer.protocol {
                    crate::classify::Transport::Tcp => isdf_api::Protocol::Tcp,
                    crate::classify::Transport::Udp => isdf_api::Protocol::Udp,
                },
                port: detection.peer.addr.port(),
            };
            for flow in crate::router_blocks::endpoint_flows(&endpoint) {
                if self
                    .router_blocks
                    .has(BlockOrigin::Detection, &flow, now_ms)
                {
                    continue;
                }
                let duration = u64::from(timeout_secs) * 1000;
                let reason = detection.reason.as_str();
                match self
                    .router_blocks
                    .add(BlockOrigin::Detection, flow, duration, reason, now_ms)
                {
                    Ok(_) => added += 1,
                    Err(refusal) => tracing::warn!(%refusal, "detection not kept"),
                }
            }
        }
        if added == 0 {
            return;
        }
        tracing::info!(added, "classifier detections");
        self.persist_router_blocks();
        if let Err(e) = self.enforce(&firewall) {
            error_debug("enforcing detections", &e);
        }
    }

    /// The next classifier detection (never, without a classifier).
    async fn next_detection(
        inspector: &mut Option<crate::inspect::Inspector>,
    ) -> crate::classify::Detection {
        match inspector {
            Some(inspector) => match inspector.detections.recv().await {
                Some(detection) => detection,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// The config firewall in force (empty before the first config).
    fn config_firewall(&self) -> isdf_api::Firewall {
        self.enforced
            .as_ref()
            .map(|e| e.config.firewall.clone())
            .unwrap_or_default()
    }

    /// Whether the enforced config has endpoint sets the kernel fills
    /// (detections to harvest).
    fn watches_detections(&self) -> bool {
        self.enforced
            .as_ref()
            .is_some_and(|e| e.config.firewall.sets.iter().any(|s| s.key.is_endpoint()))
    }

    /// Turns endpoints the kernel's signatures found into router blocks of
    /// origin `detection`: reported to the controller, kept across restarts
    /// and across the next ruleset replacement (which empties the kernel's
    /// sets); their established flows are ended.
    fn harvest_detections(&mut self) {
        use isdf_api::events::BlockOrigin;
        if !self.watches_detections() {
            return;
        }
        let firewall = self.config_firewall();
        let learned = match self.backend.learned_endpoints(&firewall) {
            Ok(learned) => learned,
            Err(e) => {
                warn_failed("reading detections", &e);
                return;
            }
        };
        let now_ms = unix_millis();
        let mut new_flows = Vec::new();
        for found in learned {
            let reason = found.set.trim_end_matches("_v4").trim_end_matches("_v6");
            for flow in crate::router_blocks::endpoint_flows(&found.endpoint) {
                if self
                    .router_blocks
                    .has(BlockOrigin::Detection, &flow, now_ms)
                {
                    continue;
                }
                let duration = found
                    .remaining_ms
                    .max(crate::router_blocks::MIN_DURATION_MS);
                match self.router_blocks.add(
                    BlockOrigin::Detection,
                    flow.clone(),
                    duration,
                    reason,
                    now_ms,
                ) {
                    Ok(_) => new_flows.push(flow),
                    Err(refusal) => {
                        // The kernel still blocks it until its timeout.
                        tracing::warn!(%refusal, "detection not kept");
                        break;
                    }
                }
            }
        }
        if new_flows.is_empty() {
            return;
        }
        tracing::info!(count = new_flows.len(), "detections");
        self.persist_router_blocks();
        let refs: Vec<_> = new_flows.iter().collect();
        if let Err(e) = conntrack::end_flows(&refs) {
            warn_failed("could not end detected flows", &e);
        }
    }

    /// Serves one request of the local control socket.
    fn handle_command(&mut self, request: Request) -> Response {
        use isdf_api::events::BlockOrigin;
        let now_ms = unix_millis();
        let changed = match request {
            Request::List {} => {
                let blocks = self.router_blocks.active(now_ms).into_iter().cloned();
                return Response::ok(blocks.collect(), now_ms);
            }
            Request::Block {
                flow,
                duration_ms,
                reason,
            } => self
                .router_blocks
                .add(BlockOrigin::Local, flow, duration_ms, &reason, now_ms),
            Request::Unblock { id } => {
                self.router_blocks
                    .remove_detection(id, now_ms)
                    .map(|(block, endpoint)| {
                        // Out of the kernel's endpoint sets too, before the
                        // next apply harvests it back.
                        if let Some(endpoint) = endpoint {
                            self.backend
                                .forget_endpoint(&self.config_firewall(), &endpoint);
                            if let Some(inspector) = &self.inspector {
                                inspector.forget(SocketAddr::new(endpoint.addr, endpoint.port));
                            }
                        }
                        block
                    })
            }
        };
        let block = match changed {
            Ok(block) => block,
            Err(refusal) => return Response::error(refusal.code, refusal.message, now_ms),
        };
        self.persist_router_blocks();
        let firewall = self.config_firewall();
        if let Err(e) = self.enforce(&firewall) {
            error_debug("enforcing a router block", &e);
            return Response::error("apply_failed", format!("{e:#}"), now_ms);
        }
        tracing::info!(id = block.id, flow = ?block.flow, until_ms = block.expires_at_ms, reason = %block.reason, "router block");
        Response::ok(vec![block], now_ms)
    }

    /// Delivers queued router events to the controller, oldest first.
    async fn send_events_if_due(&mut self) {
        use isdf_api::events::{EventBatch, MAX_EVENTS_PER_BATCH};
        while self.router_blocks.has_pending_events() {
            let events = self.router_blocks.pending_events(MAX_EVENTS_PER_BATCH);
            let last = events.last().map_or(0, |e| e.sequence);
            if let Err(e) = self.client.report_events(&EventBatch { events }).await {
                warn_failed("delivering router events failed; will retry", &e);
                return;
            }
            self.router_blocks.delivered(last);
            self.persist_router_blocks();
        }
    }

    /// The next request of the control socket (never, without a socket).
    async fn next_command(commands: &mut Option<tokio::sync::mpsc::Receiver<Command>>) -> Command {
        match commands {
            Some(rx) => match rx.recv().await {
                Some(command) => command,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Listens on the control socket; without it the agent still runs.
    fn listen(&mut self) {
        match crate::control::serve(&self.settings.control_socket) {
            Ok(rx) => self.commands = Some(rx),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "the local control socket is unavailable; local blocks cannot be added"
            ),
        }
    }

    /// Enforces the DNS policy, then the portal redirect, of `firewall`
    /// (after its ruleset: the sets DNS answers fill must exist first).
    fn enforce_services(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        self.resolver
            .apply(firewall.dns.as_ref())
            .context("the router's resolver")?;
        self.portal
            .set(firewall.portal.as_ref())
            .context("the portal redirect")
    }

    /// Makes the router's tunnels those of `firewall` (after its ruleset,
    /// which holds their isolation rules).
    fn enforce_tunnels(&mut self, firewall: &isdf_api::Firewall) -> anyhow::Result<()> {
        self.tunnels
            .apply(firewall.wireguard.as_ref())
            .context("the WireGuard tunnels")
    }

    /// The periodic pass for the tunnels, the resolver and the portal: a
    /// tunnel interface that went away is made again, a dnsmasq that died
    /// is started again, a portal that could not listen tries again.
    fn repair_services(&mut self) {
        if let Err(e) = self.tunnels.repair() {
            error_failed("the WireGuard tunnels", &e);
        }
        if let Err(e) = self.resolver.repair() {
            error_failed("the router's resolver", &e);
        }
        let portal = self
            .enforced
            .as_ref()
            .and_then(|e| e.config.firewall.portal.as_ref());
        if let Err(e) = self.portal.set(portal) {
            error_failed("the portal redirect", &e);
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
    /// ruleset, tunnels, DNS policy and portal redirect, each tried whatever
    /// the others did. Returns what could not be put back.
    fn restore_previous(&mut self) -> Vec<anyhow::Error> {
        let previous = self.enforced.as_ref().map(|e| e.config.firewall.clone());
        let kernel = match &previous {
            Some(previous) => self.enforce(previous),
            None if !self.router_blocks.active(unix_millis()).is_empty() => {
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

    /// Saves the router blocks to the state directory; a failure is logged
    /// (they stay in force, and the next change saves them again).
    fn persist_router_blocks(&self) {
        if let Err(e) =
            crate::router_blocks::persist::save(&self.state, self.router_blocks.persisted())
        {
            error_debug("persisting router blocks", &e);
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
        let now_ms = unix_millis();
        if self.router_blocks.prune(now_ms) {
            self.persist_router_blocks();
        }
        if self.enforced.is_none() && self.router_blocks.active(now_ms).is_empty() {
            return;
        }
        let firewall = self.config_firewall();
        let due = self.reapply_at.is_some_and(|t| t <= unix_now());
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
            sequence: self.state.next_sequence(unix_millis() as u64)?,
            enforced_version: self.enforced_version(),
            enforced_digest: self.enforced.as_ref().map(|e| e.config.firewall.digest()),
            outcome,
            attempted_version,
            errors,
            counters: self.backend.counters().unwrap_or_default(),
            tunnels: self.tunnels.status(),
            backend: self.backend.name().to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    /// Reports the tunnel facts when a config asked for tunnels and they
    /// changed (keys, WAN addresses) or `wireguard_facts_secs` passed, each
    /// time with a fresh probe. Failures are retried with backoff and never
    /// hold up configs.
    async fn send_facts_if_due(&mut self) {
        if !self.tunnels.configured() || self.facts_retry.is_some_and(|(_, at)| Instant::now() < at)
        {
            return;
        }
        let wan = crate::wireguard::wan_addresses(&self.settings.wan_interfaces);
        let Some(mut facts) = self.tunnels.facts(self.settings.wireguard_listen_port, wan) else {
            return;
        };
        let every = Duration::from_secs(self.settings.wireguard_facts_secs);
        let due = match &self.facts_sent {
            None => true,
            Some((sent, at)) => {
                let unchanged = WireguardFactsKey::of(sent) == WireguardFactsKey::of(&facts);
                !unchanged || at.elapsed() >= every
            }
        };
        if !due {
            return;
        }
        facts.probe_nonce = self.probe(&facts.wan_addresses).await;
        match self.client.put_wireguard_facts(&facts).await {
            Ok(()) => {
                self.facts_sent = Some((facts, Instant::now()));
                self.facts_retry = None;
            }
            Err(e) => {
                warn_failed("reporting WireGuard facts failed; will retry", &e);
                let failures = self.facts_retry.map_or(0, |(n, _)| n).saturating_add(1);
                let delay = backoff(
                    failures,
                    Duration::from_secs(self.settings.max_backoff_secs),
                );
                self.facts_retry = Some((failures, Instant::now() + delay));
            }
        }
    }

    /// Asks the controller for a UDP probe and waits for it on the probe
    /// port: its nonce, or None (nothing arrived, or the request failed).
    async fn probe(&self, wan_addresses: &[std::net::IpAddr]) -> Option<String> {
        let port = self.settings.wireguard_probe_port;
        let socket = match crate::wireguard::probe_socket(port) {
            Ok(socket) => socket,
            Err(e) => {
                warn_failed("cannot listen for the probe", &e);
                return None;
            }
        };
        let request = isdf_api::wireguard::ProbeRequest {
            port,
            wan_addresses: wan_addresses.to_vec(),
        };
        if let Err(e) = self.client.request_probe(&request).await {
            warn_failed("the probe request failed", &e);
            return None;
        }
        crate::wireguard::receive_probe(&socket)
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
            Err(e) => warn_failed("status report failed; will retry", &e),
        }
    }

    /// Renews the certificate once it is two thirds through its life. A
    /// failed renewal is retried with backoff; the poll loop goes on
    /// meanwhile. When the certificate has expired (or the controller says
    /// the device is gone) renewal cannot work: the agent says the router
    /// must be enrolled again and, if `enrollment_token_file` is set, tries
    /// that token. The rules in the kernel stay in every case.
    async fn maintain_identity(&mut self) {
        let now = unix_now();
        if now < self.identity.certificate.renew_at()
            || self
                .identity_retry
                .is_some_and(|(_, at)| Instant::now() < at)
        {
            return;
        }
        // Renewal is tried even when the local clock says the certificate
        // has expired: a router's clock can be wrong, the controller's
        // verdict is the one that counts.
        let error = match enrollment::renew(&self.client, &self.settings, &self.identity).await {
            Ok(identity) => return self.adopted(identity, "renewed the device certificate"),
            Err(e) => e,
        };
        let expired = now > self.identity.certificate.not_after;
        let dead = expired || enrollment::is_device_unknown(&error);
        if !dead {
            warn_failed("certificate renewal failed; will retry", &error);
            return self.retry_identity_later(&error);
        }
        tracing::error!(
            device = self.identity.device_id(),
            not_after = self.identity.certificate.not_after,
            error = %format!("{error:#}"),
            "the device certificate has expired or was revoked: the controller refuses this \
             router until it is enrolled again with a new token (`isdf-agent enroll`, or a new \
             token in enrollment_token_file); the enforced rules stay"
        );
        let Some(token) = self.settings.enrollment_token() else {
            return self.retry_identity_later(&error);
        };
        let enrolled = match token {
            Ok(token) => enrollment::enroll(&self.settings, &token).await,
            Err(e) => Err(e),
        };
        match enrolled {
            Ok(identity) => self.adopted(identity, "enrolled again"),
            Err(e) => {
                error_failed("enrolling again with enrollment_token_file failed", &e);
                self.retry_identity_later(&e);
            }
        }
    }

    /// How long until `maintain_identity` has something to do.
    fn identity_due_in(&self) -> Duration {
        let renew_in = u64::try_from(self.identity.certificate.renew_at() - unix_now())
            .map_or(Duration::ZERO, Duration::from_secs);
        let retry_in = self.identity_retry.map_or(Duration::ZERO, |(_, at)| {
            at.saturating_duration_since(Instant::now())
        });
        renew_in.max(retry_in)
    }

    fn adopted(&mut self, identity: Identity, what: &'static str) {
        let not_after = identity.certificate.not_after;
        match self.adopt(identity) {
            Ok(()) => {
                self.identity_retry = None;
                tracing::info!(device = self.identity.device_id(), not_after, "{what}");
                if self.identity.certificate.renew_at() <= unix_now() {
                    // Due again at once: the router's clock is far ahead of
                    // the controller's. Renewing in a loop would not help.
                    tracing::warn!(
                        not_before = self.identity.certificate.not_before,
                        now = unix_now(),
                        "the new certificate is already due for renewal; is the clock right?"
                    );
                    let pause = Duration::from_secs(self.settings.max_backoff_secs.max(60));
                    self.identity_retry = Some((0, Instant::now() + pause));
                }
            }
            Err(e) => {
                // Cannot happen for a checked answer; the new identity is
                // persisted, so a restart picks it up.
                error_debug("using the new device certificate", &e);
                self.retry_identity_later(&e);
            }
        }
    }

    fn retry_identity_later(&mut self, error: &anyhow::Error) {
        let failures = self.identity_retry.map_or(0, |(n, _)| n).saturating_add(1);
        let delay = if enrollment::is_permanent(error) {
            enrollment::PERMANENT_FAILURE_RETRY
        } else {
            backoff(
                failures,
                Duration::from_secs(self.settings.max_backoff_secs),
            )
        };
        self.identity_retry = Some((failures, Instant::now() + delay));
    }

    /// Runs until `shutdown` resolves. The firewall is left as it is on exit.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        if self.commands.is_none() {
            self.listen();
        }
        let wait = Duration::from_secs(self.settings.poll_wait_secs);
        let mut failures: u32 = 0;
        loop {
            self.repair_and_expire();
            self.repair_services();
            self.maintain_identity().await;
            self.report_if_due().await;
            self.send_events_if_due().await;
            self.send_facts_if_due().await;
            let reapply_in = self
                .reapply_at
                .map(|t| Duration::from_secs(u64::try_from(t - unix_now()).unwrap_or(0)));
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
                    () = &mut shutdown => return,
                    command = Self::next_command(&mut self.commands) => {
                        let response = self.handle_command(command.request);
                        let _ = command.reply.send(response);
                        self.send_events_if_due().await;
                    }
                    detection = Self::next_detection(&mut self.inspector) => {
                        self.handle_detections(detection);
                        self.send_events_if_due().await;
                    }
                    _ = harvest.tick(), if self.watches_detections() => {
                        self.harvest_detections();
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
                let until = tokio::time::Instant::now() + pace;
                // Local requests are served during the pause too.
                loop {
                    tokio::select! {
                        () = &mut shutdown => return,
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

/// What decides whether the facts changed: everything but the probe nonce
/// (a fresh probe comes with every report anyway).
#[derive(PartialEq, Eq)]
struct WireguardFactsKey<'a> {
    keys: (
        isdf_api::wireguard::WgKey,
        Option<isdf_api::wireguard::WgKey>,
        u32,
        u16,
    ),
    wan_addresses: &'a [std::net::IpAddr],
}

impl<'a> WireguardFactsKey<'a> {
    fn of(f: &'a isdf_api::wireguard::WireguardFacts) -> Self {
        WireguardFactsKey {
            keys: (
                f.public_key,
                f.next_public_key,
                f.key_generation,
                f.listen_port,
            ),
            wan_addresses: &f.wan_addresses,
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
mod tests {
    use std::sync::{Arc, Mutex};

    use ed25519_dalek::SigningKey;
    use isdf_api::{Firewall, RuleCounter};

    use super::*;
    use crate::test_pki::{FakeController, TestCa, SIGNING_KEY_HEX};

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

    /// Rules of the config (the agent's own rules left out).
    fn config_rules(firewall: &Firewall) -> usize {
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

    fn settings(dir: &std::path::Path) -> Settings {
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
    fn agent(dir: &std::path::Path, kernel: &Arc<Mutex<Kernel>>) -> Agent {
        let ca = TestCa::new("unit test CA");
        let identity = ca.identity(DEVICE, "https://127.0.0.1:9");
        Agent::new(
            settings(dir),
            identity,
            Box::new(FakeBackend(kernel.clone())),
        )
        .unwrap()
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

    fn rules_held(kernel: &Arc<Mutex<Kernel>>) -> Option<usize> {
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
    async fn a_portal_that_cannot_listen_rolls_back_the_firewall_and_dns() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Arc::new(Mutex::new(Kernel::default()));
        let dns = Arc::new(Mutex::new(Dns::default()));
        let mut agent = agent_with_dns(dir.path(), &kernel, &dns);
        agent
            .handle_envelope(envelope_with(1, 1, dns_policy(60), &key()), Some(1))
            .await;
        // Listening on loopback: the portal's [::] on that port is refused.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut extra = dns_policy(120);
        extra["portal"] =
            serde_json::json!({"port": port, "default_url": "https://portal.isp.test/"});
        agent
            .handle_envelope(envelope_with(2, 2, extra, &key()), Some(2))
            .await;
        let last = agent.last.as_ref().unwrap();
        assert_eq!(last.outcome, Outcome::RolledBack);
        assert!(
            last.errors[0].starts_with("apply_failed: the portal redirect: listening on port"),
            "{:?}",
            last.errors
        );
        assert_eq!(
            (rules_held(&kernel), ttl_held(&dns)),
            (Some(1), Some(60)),
            "the DNS policy that went in is taken out again"
        );
        assert_eq!(agent.portal.local_addr(), None);
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
        let mut agent =
            Agent::new(settings, identity, Box::new(FakeBackend(kernel.clone()))).unwrap();
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
}
