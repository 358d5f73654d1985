//! What the router tells the controller: status reports (the outcome of the
//! last attempt, or `stale` for an expired config still enforced, with
//! counters and tunnel status, and `state_not_saved` errors while a full
//! state disk keeps something from being saved; sent when something
//! happened and as a heartbeat), the router's block events (oldest first, kept until stored),
//! and the tunnel facts with a fresh reachability probe (when they changed,
//! or every `wireguard_facts_secs`). Failures are retried with backoff and
//! never hold up configs.

use std::time::{Duration, Instant};

use isdf_api::{Outcome, StatusReport};

use super::{warn_failed, Agent, LastResult};
use crate::sys::time::backoff;

impl Agent {
    /// Delivers queued router events to the controller, oldest first.
    pub(super) async fn send_events_if_due(&mut self) {
        use isdf_api::events::{EventBatch, MAX_EVENTS_PER_BATCH};
        while self.router_blocks.has_pending_events() {
            let events = self.router_blocks.pending_events(MAX_EVENTS_PER_BATCH);
            let last = events.last().map_or(0, |e| e.sequence);
            let delivered = events.len() as u64;
            if let Err(e) = self.client.report_events(&EventBatch { events }).await {
                warn_failed("delivering router events failed; will retry", &e);
                return;
            }
            self.tally.counters.events_delivered += delivered;
            self.router_blocks.delivered(last);
            self.persist_router_blocks();
        }
    }

    pub(super) fn set_result(
        &mut self,
        outcome: Outcome,
        attempted_version: Option<u64>,
        errors: Vec<String>,
    ) {
        self.tally.outcome(outcome);
        self.last = Some(LastResult {
            outcome,
            attempted_version,
            errors,
        });
        self.report_due = true;
    }

    /// Whether the enforced config has expired by the router's clock. It
    /// stays enforced (an expired config only means the controller has not
    /// been heard from for its lifetime: opening the firewall would help an
    /// attacker who cut the router off), and is reported `stale`.
    fn stale(&self) -> bool {
        self.enforced
            .as_ref()
            .is_some_and(|e| e.config.expires_at <= self.now_secs())
    }

    /// The report of now, with the agent's counters brought up to date
    /// (the kernel's blocked counts read again).
    pub(super) fn build_report(&mut self) -> StatusReport {
        let (outcome, attempted_version, mut errors) = match (&self.last, self.stale()) {
            (_, true) => (
                Outcome::Stale,
                self.enforced_version(),
                vec![format!(
                    "stale: config {} expired at {} (router clock {}); still enforcing it",
                    self.enforced_version().unwrap_or(0),
                    self.enforced.as_ref().map_or(0, |e| e.config.expires_at),
                    self.now_secs()
                )],
            ),
            (Some(last), false) => (last.outcome, last.attempted_version, last.errors.clone()),
            (None, false) => (Outcome::Applied, self.enforced_version(), vec![]),
        };
        // A full state disk does not silence the router: the sequence is
        // still above every earlier one, and the report says what was not
        // saved.
        let (sequence, saved) = self.state.next_sequence(self.now_ms() as u64);
        errors.extend(self.unsaved_errors());
        if let Err(e) = saved {
            errors.push(format!("state_not_saved: the status sequence: {e:#}"));
        }
        let counters = self.backend.counters().unwrap_or_default();
        self.tally.observe_blocked(&counters);
        StatusReport {
            sequence,
            enforced_version: self.enforced_version(),
            enforced_digest: self.enforced.as_ref().map(|e| e.config.firewall.digest()),
            outcome,
            attempted_version,
            errors,
            counters,
            tunnels: self.tunnels.status(),
            backend: self.backend.name().to_owned(),
            agent_version: crate::AGENT_VERSION.to_owned(),
            agent_target: Some(crate::AGENT_TARGET.to_owned()),
            agent_counters: Some(self.tally.counters.clone()),
        }
    }

    /// Writes the node-exporter textfile of `report` when the settings ask
    /// for one; a failure is logged and never holds up the report.
    fn write_textfile(&self, report: &StatusReport) {
        let Some(path) = &self.settings.metrics_textfile else {
            return;
        };
        let expires_at = self.enforced.as_ref().map(|e| e.config.expires_at);
        let text = super::counting::textfile(report, expires_at);
        if let Err(e) = crate::sys::atomic_write::write_atomically(path, text.as_bytes(), 0o644) {
            warn_failed("writing the metrics textfile", &e);
        }
    }

    /// Reports the tunnel facts when a config asked for tunnels and they
    /// changed (keys, WAN addresses) or `wireguard_facts_secs` passed, each
    /// time with a fresh probe. Failures are retried with backoff and never
    /// hold up configs.
    pub(super) async fn send_facts_if_due(&mut self) {
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

    pub(super) async fn report_if_due(&mut self) {
        // The enforced config just expired: say so at once (and, while the
        // controller is away, at the first report that reaches it).
        let stale = self.stale();
        if stale && !self.stale_noticed {
            self.report_due = true;
        }
        self.stale_noticed = stale;
        let heartbeat = Duration::from_secs(self.settings.heartbeat_secs);
        let heartbeat_due = self.last_report.is_none_or(|t| t.elapsed() >= heartbeat);
        // Nothing tried and nothing enforced yet: there is no outcome to report.
        let nothing_yet = self.last.is_none() && self.enforced.is_none();
        if nothing_yet || (!self.report_due && !heartbeat_due) {
            return;
        }
        let report = self.build_report();
        self.write_textfile(&report);
        match self.client.report(&report).await {
            Ok(()) => {
                self.report_due = false;
                self.last_report = Some(Instant::now());
                self.confirm_upgrade_if_due();
            }
            Err(e) => {
                self.tally.counters.reports_failed += 1;
                warn_failed("status report failed; will retry", &e);
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
