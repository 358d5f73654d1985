//! Events a router reports on its own initiative: blocks added through its
//! local interface (detectors such as Zeek) and blocks its classifier
//! decided. The controller stores them; a repeated batch changes nothing
//! (events are keyed by the router's sequence number).

use serde::{Deserialize, Serialize};

use crate::FlowPattern;

/// Most events in one batch; the agent sends more in several.
pub const MAX_EVENTS_PER_BATCH: usize = 256;
/// Longest free-text reason of a block, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Times of events and blocks, Unix milliseconds: from 1970 to the end of
/// year 9999 (PostgreSQL's `timestamptz` holds less than an `i64` does:
/// such a time was a 500 or a refusal the schema did not state).
pub const TIMES_MS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventKind {
    /// A block added on the router (local interface or classifier).
    Block,
    /// A block removed on the router before its end.
    Unblock,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Block => "block",
            EventKind::Unblock => "unblock",
        }
    }
}

/// Who decided a router-side block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BlockOrigin {
    /// A program on the router, through the agent's local socket.
    Local,
    /// The agent's own traffic classifier.
    Detection,
}

impl BlockOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockOrigin::Local => "local",
            BlockOrigin::Detection => "detection",
        }
    }
}

/// A block the router enforces on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouterBlock {
    /// The router's id for the block (unique per router).
    #[cfg_attr(feature = "openapi", schema(maximum = 9_223_372_036_854_775_807_i64))]
    pub id: u64,
    pub origin: BlockOrigin,
    pub flow: FlowPattern,
    /// Unix milliseconds (from 1970 to the end of 9999).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 253_402_300_799_999_i64)
    )]
    pub expires_at_ms: i64,
    /// Free text from the requester or the classifier's reason code: at
    /// most 200 characters, no control character.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
}

impl RouterBlock {
    /// What the totals count this block under: a detection's rule (its
    /// reason before any measurements, e.g. `mse_handshake` of
    /// `mse_handshake i1=412 ...`), anything else's whole reason.
    pub fn total_reason(&self) -> &str {
        match self.origin {
            BlockOrigin::Detection => self.reason.split(' ').next().unwrap_or_default(),
            _ => &self.reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceEvent {
    /// Strictly increasing per router; the controller keeps one event per
    /// sequence number.
    #[cfg_attr(feature = "openapi", schema(maximum = 9_223_372_036_854_775_807_i64))]
    pub sequence: u64,
    /// Unix milliseconds, the router's clock (from 1970 to the end of 9999).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 253_402_300_799_999_i64)
    )]
    pub at_ms: i64,
    pub kind: EventKind,
    pub block: RouterBlock,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventBatch {
    #[cfg_attr(feature = "openapi", schema(max_items = 256))]
    pub events: Vec<DeviceEvent>,
}

impl RouterBlock {
    /// What the controller requires of a block before it stores it: a
    /// consistent flow and a short reason on one line. Control characters are refused (NUL above
    /// all, which PostgreSQL cannot store: the fuzz target `events` found a
    /// 500 there, on which the router's outbox stuck).
    pub fn check(&self) -> Result<(), String> {
        if self.id > i64::MAX as u64 {
            return Err("block id is too large".into());
        }
        if !TIMES_MS.contains(&self.expires_at_ms) {
            return Err("expires_at_ms is out of range".into());
        }
        self.flow.check()?;
        check_reason(&self.reason)
    }
}

/// A block's reason: at most [`MAX_REASON_CHARS`] characters, none of them
/// a control character.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason holds a control character".into());
    }
    Ok(())
}

impl EventBatch {
    /// Checks a batch as the controller receives it, before anything is
    /// stored: a batch is stored whole or not at all.
    pub fn check(&self) -> Result<(), String> {
        if self.events.len() > MAX_EVENTS_PER_BATCH {
            return Err(format!("at most {MAX_EVENTS_PER_BATCH} events per batch"));
        }
        for event in &self.events {
            if event.sequence > i64::MAX as u64 {
                return Err("sequence is too large".into());
            }
            if !TIMES_MS.contains(&event.at_ms) {
                return Err(format!("event {}: at_ms is out of range", event.sequence));
            }
            event
                .block
                .check()
                .map_err(|e| format!("event {}: {e}", event.sequence))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(reason: &str) -> EventBatch {
        let block = serde_json::json!({"id": 1, "origin": "local",
            "flow": {"protocol": "tcp", "src": "192.0.2.2", "dst": "198.51.100.2", "dport": 80},
            "expires_at_ms": 1_795_000_060_000_i64, "reason": reason});
        let event = serde_json::json!({"sequence": 1, "at_ms": 1_795_000_000_000_i64,
            "kind": "block", "block": block});
        serde_json::from_value(serde_json::json!({ "events": [event] })).unwrap()
    }

    #[test]
    fn reasons_are_one_short_line_postgresql_can_store() {
        for reason in [
            "",
            "zeek: scan",
            "tcp_handshake",
            &"é".repeat(MAX_REASON_CHARS),
        ] {
            assert_eq!(batch(reason).check(), Ok(()), "{reason:?}");
        }
        // The fuzz target `events` found the NUL: PostgreSQL refuses it.
        for reason in [
            "zeek\0",
            "two\nlines",
            "\u{1b}[31m",
            &"a".repeat(MAX_REASON_CHARS + 1),
        ] {
            assert!(batch(reason).check().is_err(), "{reason:?}");
        }
    }

    #[test]
    fn sequences_and_ids_fit_postgresql_and_batches_are_bounded() {
        let mut big = batch("x");
        big.events[0].sequence = i64::MAX as u64 + 1;
        assert!(big.check().is_err());
        let mut big = batch("x");
        big.events[0].block.id = i64::MAX as u64 + 1;
        assert!(big.check().is_err());
        // Times PostgreSQL cannot store (or chrono cannot hold) are refused.
        for at in [-1, i64::MIN, *TIMES_MS.end() + 1, i64::MAX] {
            let mut far = batch("x");
            far.events[0].at_ms = at;
            assert!(far.check().is_err(), "{at}");
            let mut far = batch("x");
            far.events[0].block.expires_at_ms = at;
            assert!(far.check().is_err(), "{at}");
        }
        let mut many = batch("x");
        many.events = vec![many.events[0].clone(); MAX_EVENTS_PER_BATCH + 1];
        assert!(many.check().is_err());
    }
}
