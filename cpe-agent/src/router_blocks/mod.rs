//! Blocks the router decides on its own: requests from detectors on the
//! router (Zeek, Suricata, scripts) through the local socket, and the
//! classifier's detections.
//!
//! They live next to the controller's config, never inside it: the agent
//! adds them as its own sets and rules (names starting with `agent`, which
//! configs cannot use) in front of the config's rules, every time it
//! enforces a config. Each element carries its end as a kernel timeout, so
//! blocks end on time even if the agent dies; the list is persisted, so after
//! a reboot the agent puts back what has not ended, with the time left.
//!
//! Every change is queued as an event for the controller (persisted too, so
//! nothing is lost while it is unreachable).
//!
//! Blocks are bounded in number and local requests rate limited
//! (`RouterBlockLimits`). This file does no I/O (the rate limiter reads the
//! monotonic clock); `persist.rs` keeps the blocks and the outbox in the
//! state directory.

pub mod persist;
pub mod watched;

use std::collections::VecDeque;
use std::time::Instant;

use isdf_api::events::{BlockOrigin, DeviceEvent, EventKind, RouterBlock};
use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, Match, Rule, Set, SetElement,
    SetKey, SetName,
};
use serde::{Deserialize, Serialize};

use crate::sys::settings::RouterBlockLimits;

/// Shortest and longest router-side block.
pub const MIN_DURATION_MS: u64 = 1_000;
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Events kept for the controller while it is unreachable; the oldest go first.
const MAX_OUTBOX: usize = 4096;

/// Why a block request was refused; `code` is stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What is persisted in the state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub next_id: u64,
    pub next_sequence: u64,
    pub blocks: Vec<RouterBlock>,
    pub outbox: VecDeque<DeviceEvent>,
}

pub struct RouterBlocks {
    data: Persisted,
    limits: RouterBlockLimits,
    tokens: f64,
    refilled: Instant,
    /// Events dropped because the outbox was full, not yet logged.
    dropped_events: u64,
}

impl RouterBlocks {
    pub fn new(data: Persisted, limits: RouterBlockLimits) -> Self {
        RouterBlocks {
            data,
            limits,
            tokens: limits.burst,
            refilled: Instant::now(),
            dropped_events: 0,
        }
    }

    pub fn persisted(&self) -> &Persisted {
        &self.data
    }

    /// Blocks in force at `now_ms`, soonest to end first.
    pub fn active(&self, now_ms: i64) -> Vec<&RouterBlock> {
        let mut blocks: Vec<_> = self
            .data
            .blocks
            .iter()
            .filter(|b| b.expires_at_ms > now_ms)
            .collect();
        blocks.sort_by_key(|b| (b.expires_at_ms, b.id));
        blocks
    }

    /// Whether a block of `origin` for exactly `flow` is in force.
    pub fn has(&self, origin: BlockOrigin, flow: &FlowPattern, now_ms: i64) -> bool {
        self.data
            .blocks
            .iter()
            .any(|b| b.origin == origin && &b.flow == flow && b.expires_at_ms > now_ms)
    }

    /// Forgets blocks that have ended (the kernel already let them go).
    /// Returns whether any were removed.
    pub fn prune(&mut self, now_ms: i64) -> bool {
        let before = self.data.blocks.len();
        self.data.blocks.retain(|b| b.expires_at_ms > now_ms);
        self.data.blocks.len() != before
    }

    /// The wall clock stepped by `step_ms` and now reads `now_ms`: the
    /// blocks in force before the step keep the time they had left (their
    /// ends move by the step, in whole seconds), each change an event.
    /// Returns whether any moved.
    pub fn shift(&mut self, step_ms: i64, now_ms: i64) -> bool {
        let step = (step_ms + 500).div_euclid(1000) * 1000;
        let before = now_ms - step_ms;
        let mut moved = Vec::new();
        for block in self.data.blocks.iter_mut() {
            if step != 0 && block.expires_at_ms > before {
                block.expires_at_ms = block.expires_at_ms.saturating_add(step);
                moved.push(block.clone());
            }
        }
        let any = !moved.is_empty();
        for block in moved {
            self.queue(EventKind::Block, block, now_ms);
        }
        any
    }

    fn take_token(&mut self) -> bool {
        let elapsed = self.refilled.elapsed().as_secs_f64();
        self.refilled = Instant::now();
        self.tokens = (self.tokens + elapsed * self.limits.per_sec).min(self.limits.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Adds a block for `duration_ms` from `now_ms`, or says why not. Local
    /// requests are rate limited; detections are not (see `RouterBlockLimits`).
    pub fn add(
        &mut self,
        origin: BlockOrigin,
        flow: FlowPattern,
        duration_ms: u64,
        reason: &str,
        now_ms: i64,
    ) -> Result<RouterBlock, Refusal> {
        flow.check().map_err(|e| Refusal::new("invalid_flow", e))?;
        if !(MIN_DURATION_MS..=MAX_DURATION_MS).contains(&duration_ms) {
            return Err(Refusal::new(
                "invalid_duration",
                format!("a block lasts 1 s to {} days", MAX_DURATION_MS / 86_400_000),
            ));
        }
        // What the controller accepts, or the event would never be stored
        // and the outbox would stick on it (found by the fuzz target
        // `control_socket`: a control character in a local reason).
        isdf_api::events::check_reason(reason).map_err(|e| Refusal::new("invalid_reason", e))?;
        self.prune(now_ms);
        // Rulesets carry whole seconds: the end is the nearest one, so the
        // end shown is exactly the one enforced.
        let expires_at_ms =
            (now_ms.saturating_add(duration_ms as i64) + 500).div_euclid(1000) * 1000;
        // The same flow again: extend the block in force instead of adding one.
        if let Some(existing) = self
            .data
            .blocks
            .iter_mut()
            .find(|b| b.flow == flow && b.origin == origin)
        {
            if existing.expires_at_ms < expires_at_ms {
                existing.expires_at_ms = expires_at_ms;
                existing.reason = reason.to_owned();
                let block = existing.clone();
                self.queue(EventKind::Block, block.clone(), now_ms);
                return Ok(block);
            }
            return Ok(existing.clone());
        }
        if self.data.blocks.len() >= self.limits.max_active {
            return Err(Refusal::new(
                "too_many_blocks",
                format!(
                    "{} router-side blocks are in force (the limit)",
                    self.limits.max_active
                ),
            ));
        }
        if origin == BlockOrigin::Local && !self.take_token() {
            return Err(Refusal::new(
                "rate_limited",
                format!(
                    "more than {} block requests per second; try again shortly",
                    self.limits.per_sec
                ),
            ));
        }
        self.data.next_id = self.data.next_id.max(1);
        let block = RouterBlock {
            id: self.data.next_id,
            origin,
            flow,
            expires_at_ms,
            reason: reason.to_owned(),
        };
        self.data.next_id += 1;
        self.data.blocks.push(block.clone());
        self.queue(EventKind::Block, block.clone(), now_ms);
        Ok(block)
    }

    /// Ends a block early.
    pub fn remove(&mut self, id: u64, now_ms: i64) -> Result<RouterBlock, Refusal> {
        let index = self
            .data
            .blocks
            .iter()
            .position(|b| b.id == id && b.expires_at_ms > now_ms)
            .ok_or_else(|| Refusal::new("not_found", format!("no block {id} in force")))?;
        let block = self.data.blocks.remove(index);
        self.queue(EventKind::Unblock, block.clone(), now_ms);
        Ok(block)
    }

    /// Ends every block in force that `which` selects; returns them.
    pub fn remove_where(
        &mut self,
        now_ms: i64,
        which: impl Fn(&RouterBlock) -> bool,
    ) -> Vec<RouterBlock> {
        let ids: Vec<u64> = self
            .data
            .blocks
            .iter()
            .filter(|b| b.expires_at_ms > now_ms && which(b))
            .map(|b| b.id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id, now_ms).ok())
            .collect()
    }

    /// Ends a detection and its twin (a detected endpoint is blocked by two
    /// patterns, one per direction); returns the endpoint to forget in the
    /// kernel too.
    pub fn remove_detection(
        &mut self,
        id: u64,
        now_ms: i64,
    ) -> Result<(RouterBlock, Option<isdf_api::Endpoint>), Refusal> {
        let block = self.remove(id, now_ms)?;
        let endpoint = (block.origin == BlockOrigin::Detection)
            .then(|| endpoint_of(&block.flow))
            .flatten();
        if let Some(endpoint) = endpoint {
            let twins: Vec<u64> = self
                .data
                .blocks
                .iter()
                .filter(|b| {
                    b.origin == BlockOrigin::Detection && endpoint_of(&b.flow) == Some(endpoint)
                })
                .map(|b| b.id)
                .collect();
            for twin in twins {
                let _ = self.remove(twin, now_ms);
            }
        }
        Ok((block, endpoint))
    }

    fn queue(&mut self, kind: EventKind, block: RouterBlock, now_ms: i64) {
        // Seeded from the clock, like status reports: a router whose state
        // was wiped still numbers its events above the old ones.
        let sequence = self.data.next_sequence.max(now_ms as u64);
        self.data.next_sequence = sequence + 1;
        if self.data.outbox.len() >= MAX_OUTBOX {
            self.data.outbox.pop_front();
            self.dropped_events += 1;
        }
        self.data.outbox.push_back(DeviceEvent {
            sequence,
            at_ms: now_ms,
            kind,
            block,
        });
    }

    /// The oldest events waiting for the controller, at most `max`.
    pub fn pending_events(&mut self, max: usize) -> Vec<DeviceEvent> {
        if self.dropped_events > 0 {
            tracing::warn!(
                dropped = self.dropped_events,
                "the controller was unreachable for long: the oldest router events were dropped"
            );
            self.dropped_events = 0;
        }
        self.data.outbox.iter().take(max).cloned().collect()
    }

    /// Forgets events the controller stored (up to and including `sequence`).
    pub fn delivered(&mut self, sequence: u64) {
        self.data.outbox.retain(|e| e.sequence > sequence);
    }

    pub fn has_pending_events(&self) -> bool {
        !self.data.outbox.is_empty()
    }

    /// `firewall` plus the router's own blocks in force at `now_ms`: one
    /// flow set per family and a drop rule in front of the config's rules.
    /// The sets are there even when empty, so the kernel's shape does not
    /// change with each block.
    pub fn merged_into(&self, firewall: &Firewall, now_ms: i64) -> Firewall {
        let mut merged = firewall.clone();
        let mut rules = Vec::new();
        for (family, key, suffix) in [
            (Family::Ipv4, SetKey::Ipv4Flow, "v4"),
            (Family::Ipv6, SetKey::Ipv6Flow, "v6"),
        ] {
            let name = SetName::parse(&format!("agent_block_{suffix}")).expect("fixed name");
            merged.sets.push(Set {
                name: name.clone(),
                key,
                elements: self
                    .active(now_ms)
                    .into_iter()
                    .filter(|b| b.flow.src.family() == family)
                    .map(|b| SetElement {
                        value: ElementValue::Flow(b.flow.clone()),
                        // The wire type counts whole seconds: the nearest
                        // one, within half a second of the asked end.
                        expires_at: Some((b.expires_at_ms + 500).div_euclid(1000)),
                    })
                    .collect(),
            });
            rules.push(Rule {
                id: SetName::parse(&format!("agent-block-{suffix}")).expect("fixed name"),
                chain: Chain::Forward,
                matches: Match {
                    flow_in_set: Some(name),
                    ..Match::default()
                },
                action: Action::Drop,
                add_endpoints_to: None,
            });
        }
        rules.append(&mut merged.rules);
        merged.rules = rules;
        merged
    }
}

/// The flow patterns `firewall` drops or rejects (the elements of the flow
/// sets its blocking rules use): what an apply must end established flows for.
pub fn blocked_patterns(firewall: &Firewall) -> std::collections::BTreeSet<&FlowPattern> {
    firewall
        .rules
        .iter()
        .filter(|r| matches!(r.action, Action::Drop | Action::Reject))
        .filter_map(|r| r.matches.flow_in_set.as_ref())
        .filter_map(|name| firewall.sets.iter().find(|s| &s.name == name))
        .flat_map(|s| &s.elements)
        .filter_map(|e| match &e.value {
            ElementValue::Flow(f) => Some(f),
            ElementValue::Addr(_) | ElementValue::Endpoint(_) => None,
        })
        .collect()
}

/// The two flow patterns that stop all traffic from and to an endpoint.
pub fn endpoint_flows(e: &isdf_api::Endpoint) -> [FlowPattern; 2] {
    let host = isdf_api::Prefix::from_addr(e.addr);
    let any = e.family().any();
    let port = isdf_api::PortRange::new(e.port, e.port).expect("one port");
    [
        FlowPattern {
            protocol: Some(e.protocol),
            src: host,
            sport: port,
            dst: any,
            dport: isdf_api::PortRange::ANY,
        },
        FlowPattern {
            protocol: Some(e.protocol),
            src: any,
            sport: isdf_api::PortRange::ANY,
            dst: host,
            dport: port,
        },
    ]
}

/// The endpoint a pattern of `endpoint_flows` stands for.
pub fn endpoint_of(flow: &FlowPattern) -> Option<isdf_api::Endpoint> {
    let host = |p: &isdf_api::Prefix| {
        (p.net().prefix_len() == p.net().max_prefix_len()).then(|| p.net().addr())
    };
    let single = |r: &isdf_api::PortRange| (r.first() == r.last()).then(|| r.first());
    let protocol = flow.protocol.filter(|p| p.has_ports())?;
    let (addr, port) = if flow.dst.is_any() && flow.dport.is_any() {
        (host(&flow.src)?, single(&flow.sport)?)
    } else if flow.src.is_any() && flow.sport.is_any() {
        (host(&flow.dst)?, single(&flow.dport)?)
    } else {
        return None;
    };
    Some(isdf_api::Endpoint {
        addr,
        protocol,
        port,
    })
}

/// Parses a duration: `1500ms`, `30s`, `5m`, `2h`, `1d`, or bare seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 30s, 5m, 2h, 1d)"))?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RouterBlockLimits = RouterBlockLimits {
        max_active: 3,
        per_sec: 1.0,
        burst: 2.0,
    };

    fn flow(dport: u16) -> FlowPattern {
        serde_json::from_value(serde_json::json!({
            "protocol": "tcp", "src": "192.0.2.2", "sport": 40000, "dst": "198.51.100.2", "dport": dport
        }))
        .unwrap()
    }

    #[test]
    fn local_requests_are_rate_limited_and_bounded_in_number() {
        let mut blocks = RouterBlocks::new(Persisted::default(), LIMITS);
        let now = 1_000_000;
        let a = blocks
            .add(BlockOrigin::Local, flow(1), 5_000, "a", now)
            .unwrap();
        blocks
            .add(BlockOrigin::Local, flow(2), 5_000, "b", now)
            .unwrap();
        let limited = blocks.add(BlockOrigin::Local, flow(3), 5_000, "c", now);
        assert_eq!(limited.unwrap_err().code, "rate_limited");
        // Detections are not rate limited, but count toward the bound.
        blocks
            .add(BlockOrigin::Detection, flow(3), 5_000, "d", now)
            .unwrap();
        let full = blocks.add(BlockOrigin::Detection, flow(4), 5_000, "e", now);
        assert_eq!(full.unwrap_err().code, "too_many_blocks");
        // Ending one makes room; ended blocks do not count.
        blocks.remove(a.id, now).unwrap();
        blocks
            .add(BlockOrigin::Detection, flow(4), 5_000, "e", now)
            .unwrap();
        assert_eq!(blocks.active(now + 5_000).len(), 0);
        blocks
            .add(BlockOrigin::Detection, flow(5), 5_000, "f", now + 5_000)
            .unwrap();
    }

    #[test]
    fn bad_requests_are_refused_with_a_code() {
        let mut blocks = RouterBlocks::new(Persisted::default(), LIMITS);
        let code = |r: Result<RouterBlock, Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(blocks.add(BlockOrigin::Local, flow(1), 999, "", 0)),
            "invalid_duration"
        );
        assert_eq!(
            code(blocks.add(BlockOrigin::Local, flow(1), MAX_DURATION_MS + 1, "", 0)),
            "invalid_duration"
        );
        assert_eq!(
            code(blocks.add(BlockOrigin::Local, flow(1), 5_000, &"x".repeat(201), 0)),
            "invalid_reason"
        );
        // Found by the fuzz target `control_socket`: the controller refuses
        // (and PostgreSQL cannot store) control characters in a reason.
        for reason in ["zeek\0", "zee\u{1f}n", "two\nlines"] {
            assert_eq!(
                code(blocks.add(BlockOrigin::Local, flow(1), 5_000, reason, 0)),
                "invalid_reason"
            );
        }
        let mut mixed = flow(1);
        mixed.dst = "2001:db8::1".parse().unwrap();
        assert_eq!(
            code(blocks.add(BlockOrigin::Local, mixed, 5_000, "", 0)),
            "invalid_flow"
        );
        assert_eq!(code(blocks.remove(42, 0)), "not_found");
        assert!(blocks.pending_events(10).is_empty());
    }

    #[test]
    fn repeated_blocks_extend_and_every_change_is_an_event() {
        let mut blocks = RouterBlocks::new(Persisted::default(), LIMITS);
        let first = blocks
            .add(BlockOrigin::Local, flow(1), 5_000, "a", 10_000)
            .unwrap();
        let again = blocks
            .add(BlockOrigin::Local, flow(1), 9_000, "b", 11_000)
            .unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(again.expires_at_ms, 20_000);
        blocks.remove(first.id, 12_000).unwrap();
        let events = blocks.pending_events(10);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Block, EventKind::Block, EventKind::Unblock]
        );
        assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
        blocks.delivered(events[1].sequence);
        assert_eq!(blocks.pending_events(10).len(), 1);
    }

    #[test]
    fn merged_firewall_puts_router_blocks_first_and_passes_validation() {
        let mut blocks = RouterBlocks::new(Persisted::default(), LIMITS);
        blocks
            .add(BlockOrigin::Local, flow(1), 1_500, "a", 10_200)
            .unwrap();
        let config: Firewall = serde_json::from_value(serde_json::json!({
            "sets": [{"name": "f", "key": "ipv4-addr", "elements": [{"addr": "203.0.113.1"}]}],
            "rules": [{"id": "r", "chain": "forward", "match": {"dst_in_set": "f"}, "action": "drop"}]
        }))
        .unwrap();
        let merged = blocks.merged_into(&config, 10_200);
        let ids: Vec<_> = merged.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["agent-block-v4", "agent-block-v6", "r"]);
        let v4 = merged
            .sets
            .iter()
            .find(|s| s.name.as_str() == "agent_block_v4")
            .unwrap();
        // The end rounds to the nearest second: 11_700 ms to 12 s.
        assert_eq!(v4.elements[0].expires_at, Some(12));
        assert_eq!(blocked_patterns(&merged).len(), 1);
        assert!(merged_is_consistent(&merged));
        assert!(blocks.merged_into(&config, 12_000).sets[1]
            .elements
            .is_empty());
    }

    fn merged_is_consistent(firewall: &Firewall) -> bool {
        firewall
            .rules
            .iter()
            .all(|r| r.matches.family_with(&firewall.sets).is_ok())
    }

    #[test]
    fn a_detected_endpoint_is_unblocked_whole() {
        let mut blocks = RouterBlocks::new(Persisted::default(), LIMITS);
        let endpoint = isdf_api::Endpoint {
            addr: "198.51.100.2".parse().unwrap(),
            protocol: isdf_api::Protocol::Udp,
            port: 6881,
        };
        let [a, b] = endpoint_flows(&endpoint);
        assert_eq!(endpoint_of(&a), Some(endpoint));
        assert_eq!(endpoint_of(&b), Some(endpoint));
        assert_eq!(endpoint_of(&flow(1)), None);
        let first = blocks
            .add(BlockOrigin::Detection, a, 60_000, "dht_message", 0)
            .unwrap();
        blocks
            .add(BlockOrigin::Detection, b, 60_000, "dht_message", 0)
            .unwrap();
        let (_, forgotten) = blocks.remove_detection(first.id, 1).unwrap();
        assert_eq!(forgotten, Some(endpoint));
        assert!(blocks.active(1).is_empty());
    }

    #[test]
    fn a_clock_step_moves_the_blocks_in_force_by_whole_seconds() {
        let mut blocks = RouterBlocks::new(Persisted::default(), LIMITS);
        let now = 10_000_000;
        let live = blocks
            .add(BlockOrigin::Local, flow(2), 60_000, "live", now)
            .unwrap();
        // Ended before the step (not yet pruned): it stays ended.
        let ended = blocks
            .add(BlockOrigin::Detection, flow(1), 1_000, "ended", now - 5_000)
            .unwrap();
        blocks.pending_events(10);
        blocks.delivered(u64::MAX);
        // An hour back (and a bit): the live block still has its minute.
        let step = -3_600_400;
        assert!(blocks.shift(step, now + step));
        let after: Vec<_> = blocks
            .persisted()
            .blocks
            .iter()
            .map(|b| (b.id, b.expires_at_ms))
            .collect();
        assert_eq!(
            after,
            [
                (live.id, live.expires_at_ms - 3_600_000),
                (ended.id, ended.expires_at_ms)
            ]
        );
        let events = blocks.pending_events(10);
        assert_eq!(events.len(), 1, "the new end is an event");
        assert_eq!(
            events[0].block.expires_at_ms,
            live.expires_at_ms - 3_600_000
        );
        assert!(!blocks.shift(0, now));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("1500ms"), Ok(1_500));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert!(parse_duration_ms("5 weeks").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("99999999999999999999d").is_err());
    }
}
