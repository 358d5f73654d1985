//! The clock the agent loop reads, and what a step of it changes.
//!
//! Times in a config come from the controller's clock and are absolute:
//! element expiries, a rule's `until`, the config's own expiry. The agent
//! compares them with the router's wall clock. The kernel counts element
//! timeouts from the apply, though, so when the wall clock steps (NTP at
//! boot, an operator) the agent notices it at its next pass (the wall clock
//! moved more than `STEP_MS` further than the monotonic one) and applies
//! again with the times left recomputed: a step forward ends at once what
//! ended within it, a step back lengthens what is in force by the step.
//!
//! The router's own blocks are durations asked on the router (`block
//! --for 30m`, a detection's timeout): a step while the agent runs moves
//! their ends with it, so each lasts as long as it was asked to (and the
//! controller gets the new end as an event). Across a reboot their time
//! left is their end minus the clock at start.

use std::sync::Arc;

use super::Agent;
use crate::sys::time::Clock;

/// How far the wall clock may drift from the monotonic one between two
/// passes before it counts as a step (NTP slews far less).
const STEP_MS: i64 = 2_000;

impl Agent {
    /// The agent with `clock` instead of the system's (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.clock_anchor = None;
        self
    }

    /// Unix milliseconds on the wall clock.
    pub(super) fn now_ms(&self) -> i64 {
        self.clock.unix_millis()
    }

    /// Unix seconds on the wall clock.
    pub(super) fn now_secs(&self) -> i64 {
        self.clock.unix_now()
    }

    /// Whether the wall clock stepped since the last pass; if it did, the
    /// router's own blocks move with it. The caller applies again.
    pub(super) fn notice_clock_step(&mut self) -> bool {
        let now = (self.clock.unix_millis(), self.clock.monotonic_millis());
        let Some((wall, monotonic)) = self.clock_anchor.replace(now) else {
            return false;
        };
        let step = (now.0 - wall) - (now.1 - monotonic);
        if step.abs() < STEP_MS {
            return false;
        }
        tracing::warn!(
            step_ms = step,
            "the wall clock stepped: config expiries are recomputed, the router's own blocks \
             keep their durations"
        );
        if self.router_blocks.shift(step, now.0) {
            self.persist_router_blocks();
        }
        true
    }
}
