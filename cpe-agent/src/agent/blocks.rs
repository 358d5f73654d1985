//! The blocks the router decides itself, as the loop drives them: requests
//! from the local control socket (answered once enforced), the
//! classifier's detections on NFQUEUE, and the endpoints the kernel's
//! signatures remembered, harvested every `HARVEST_EVERY` and before each
//! replacement (which would empty the kernel's sets). Each becomes a router
//! block, persisted, reported as an event and enforced at once, which also
//! ends its established flows.

use std::net::SocketAddr;

use super::{error_debug, error_failed, warn_failed, Agent};
use crate::backend::conntrack;
use crate::control::{Applied, Command, Request, Response};

/// How long the config's `classify` rule blocks what the classifier finds
/// (None: the config does not classify).
pub(super) fn classify_timeout(firewall: &isdf_api::Firewall) -> Option<u32> {
    firewall
        .rules
        .iter()
        .filter(|r| r.action == isdf_api::Action::Classify)
        .filter_map(|r| r.add_endpoints_to.as_ref())
        .map(|a| a.timeout_secs)
        .max()
}

/// A UDP endpoint a kernel signature caught (uTP, the DHT, a UDP tracker's
/// client) is a BitTorrent client's socket, whose port number it serves
/// TCP on too and falls back to: both are blocked, as for the classifier's
/// detections (`Detection::endpoints_to_block`). A TCP endpoint may be an
/// ephemeral port and gets no twin; nor does any port below 1024.
fn with_tcp_twin(endpoint: &isdf_api::Endpoint) -> Vec<isdf_api::Endpoint> {
    let mut endpoints = vec![*endpoint];
    if endpoint.protocol == isdf_api::Protocol::Udp && endpoint.port >= 1024 {
        endpoints.push(isdf_api::Endpoint {
            protocol: isdf_api::Protocol::Tcp,
            ..*endpoint
        });
    }
    endpoints
}

impl Agent {
    /// Starts the classifier on its queue the first time a config asks.
    pub(super) fn start_classifier(&mut self) {
        if self.inspector.is_some() || self.classifier_failed {
            return;
        }
        match crate::inspect::start() {
            Ok(inspector) => self.inspector = Some(inspector),
            Err(e) => {
                // The queue rule has `bypass`: traffic passes unclassified,
                // and the kernel's signatures still block.
                error_failed("the classifier cannot run", &e);
                self.classifier_failed = true;
            }
        }
    }

    /// Blocks what the classifier's detections teach (the peer on both
    /// transports, the LAN host's listening port: see
    /// `Detection::endpoints_to_block`), for as long as the config's
    /// classify rule says, and enforces that at once (which also ends their
    /// established flows).
    pub(super) fn handle_detections(&mut self, first: crate::classify::Detection) {
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
        let now_ms = self.now_ms();
        let mut added = 0;
        let mut newly_watched = false;
        for lan in found.iter().filter_map(|d| d.lan) {
            newly_watched |= self.watched.watch(lan.ip(), now_ms);
        }
        let taught = found.iter().flat_map(|detection| {
            detection
                .endpoints_to_block()
                .into_iter()
                .map(move |endpoint| (detection, endpoint))
        });
        for (detection, endpoint) in taught {
            let endpoint = isdf_api::Endpoint {
                addr: endpoint.addr.ip(),
                protocol: match endpoint.protocol {
                    crate::classify::Transport::Tcp => isdf_api::Protocol::Tcp,
                    crate::classify::Transport::Udp => isdf_api::Protocol::Udp,
                },
                port: endpoint.addr.port(),
            };
            for flow in crate::router_blocks::endpoint_flows(&endpoint) {
                if self
                    .router_blocks
                    .has(BlockOrigin::Detection, &flow, now_ms)
                {
                    continue;
                }
                let duration = u64::from(timeout_secs) * 1000;
                let reason = detection.describe();
                match self.router_blocks.add(
                    BlockOrigin::Detection,
                    flow,
                    duration,
                    &reason,
                    now_ms,
                ) {
                    Ok(_) => added += 1,
                    Err(refusal) => tracing::warn!(%refusal, "detection not kept"),
                }
            }
        }
        self.tally.counters.detections += found.len() as u64;
        if added == 0 && !newly_watched {
            return;
        }
        tracing::info!(added, newly_watched, "classifier detections");
        self.persist_router_blocks();
        if let Err(e) = self.enforce(&firewall) {
            error_debug("enforcing detections", &e);
        }
    }

    /// Ends the blocks that heuristic rules made (the config turned them
    /// off: the operator judged them wrong), and forgets their endpoints.
    pub(super) fn end_heuristic_blocks(&mut self) {
        let now_ms = self.now_ms();
        let ended = self.router_blocks.remove_where(now_ms, |block| {
            block.origin == isdf_api::events::BlockOrigin::Detection
                && crate::classify::Reason::ALL
                    .iter()
                    .any(|r| r.is_heuristic() && block.reason.split(' ').next() == Some(r.as_str()))
        });
        if ended.is_empty() {
            return;
        }
        tracing::info!(
            ended = ended.len(),
            "ended the blocks of heuristic detections"
        );
        for endpoint in ended
            .iter()
            .filter_map(|b| crate::router_blocks::endpoint_of(&b.flow))
        {
            if let Some(inspector) = &self.inspector {
                inspector.forget(SocketAddr::new(endpoint.addr, endpoint.port));
            }
        }
        self.persist_router_blocks();
    }

    /// The next classifier detection (never, without a classifier).
    pub(super) async fn next_detection(
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

    /// Whether the enforced config has endpoint sets the kernel fills
    /// (detections to harvest).
    pub(super) fn watches_detections(&self) -> bool {
        self.enforced
            .as_ref()
            .is_some_and(|e| e.config.firewall.sets.iter().any(|s| s.key.is_endpoint()))
    }

    /// Turns endpoints the kernel's signatures found into router blocks of
    /// origin `detection`: reported to the controller, kept across restarts
    /// and across the next ruleset replacement (which empties the kernel's
    /// sets); their established flows are ended.
    /// The periodic harvest: also enforces the closer look at LAN hosts it
    /// found running BitTorrent for the first time.
    pub(super) fn harvest_and_watch(&mut self) {
        if self.harvest_detections() {
            let firewall = self.config_firewall();
            if let Err(e) = self.enforce(&firewall) {
                error_debug("watching BitTorrent hosts", &e);
            }
        }
    }

    /// Returns whether a LAN host is watched that was not before
    /// (`router_blocks/watched.rs`); the caller enforces that.
    pub(super) fn harvest_detections(&mut self) -> bool {
        use isdf_api::events::BlockOrigin;
        if !self.watches_detections() {
            return false;
        }
        let firewall = self.config_firewall();
        let learned = match self.backend.learned_endpoints(&firewall) {
            Ok(learned) => learned,
            Err(e) => {
                warn_failed("reading detections", &e);
                return false;
            }
        };
        let now_ms = self.now_ms();
        let mut new_flows = Vec::new();
        let mut newly_watched = false;
        for found in learned {
            if crate::classify::is_local(found.endpoint.addr)
                && classify_timeout(&firewall).is_some()
            {
                newly_watched |= self.watched.watch(found.endpoint.addr, now_ms);
            }
            let reason = found.set.trim_end_matches("_v4").trim_end_matches("_v6");
            let flows = with_tcp_twin(&found.endpoint)
                .iter()
                .flat_map(crate::router_blocks::endpoint_flows)
                .collect::<Vec<_>>();
            for flow in flows {
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
            return newly_watched;
        }
        self.tally.counters.detections += new_flows.len() as u64;
        tracing::info!(count = new_flows.len(), "detections");
        self.persist_router_blocks();
        let refs: Vec<_> = new_flows.iter().collect();
        if let Err(e) = conntrack::end_flows(&refs) {
            warn_failed("could not end detected flows", &e);
        }
        newly_watched
    }

    /// Serves one request of the local control socket.
    pub(super) fn handle_command(&mut self, request: Request) -> Response {
        let now_ms = self.now_ms();
        let block = match request.apply(&mut self.router_blocks, now_ms) {
            Ok(Applied::Listed(blocks)) => return Response::ok(blocks, now_ms),
            Ok(Applied::Changed { block, forget }) => {
                // Out of the kernel's endpoint sets too, before the next
                // apply harvests it back.
                if let Some(endpoint) = forget {
                    self.backend
                        .forget_endpoint(&self.config_firewall(), &endpoint);
                    if let Some(inspector) = &self.inspector {
                        inspector.forget(SocketAddr::new(endpoint.addr, endpoint.port));
                    }
                }
                block
            }
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

    /// The next request of the control socket (never, without a socket).
    pub(super) async fn next_command(
        commands: &mut Option<tokio::sync::mpsc::Receiver<Command>>,
    ) -> Command {
        match commands {
            Some(rx) => match rx.recv().await {
                Some(command) => command,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Listens on the control socket; without it the agent still runs.
    pub(super) fn listen(&mut self) {
        match crate::control::serve(&self.settings.control_socket_path()) {
            Ok(rx) => self.commands = Some(rx),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "the local control socket is unavailable; local blocks cannot be added"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_tcp_twin;
    use isdf_api::{Endpoint, Protocol};

    fn endpoint(protocol: Protocol, port: u16) -> Endpoint {
        Endpoint {
            addr: "198.51.100.2".parse().unwrap(),
            protocol,
            port,
        }
    }

    #[test]
    fn a_caught_udp_socket_is_blocked_on_tcp_too_and_nothing_else_gets_a_twin() {
        let utp = endpoint(Protocol::Udp, 40000);
        assert_eq!(with_tcp_twin(&utp), [utp, endpoint(Protocol::Tcp, 40000)]);
        // A TCP endpoint may be ephemeral; a low port is some other service.
        for single in [endpoint(Protocol::Tcp, 51413), endpoint(Protocol::Udp, 443)] {
            assert_eq!(with_tcp_twin(&single), [single]);
        }
    }
}
