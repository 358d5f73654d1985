//! The router's own blocks and their undelivered events in the state
//! directory (`router-blocks.json`), so a reboot puts back the blocks that
//! have not ended and loses no event the controller has not stored.
//!
//! Kept apart from the bookkeeping in `mod.rs`, which does no I/O: the
//! state directory only lends its atomic write.

use anyhow::Context;

use super::Persisted;
use crate::sys::state::StateDir;

pub(crate) const ROUTER_BLOCKS: &str = "router-blocks.json";

/// Blocks the router decided itself and events not yet delivered.
pub fn load(state: &StateDir) -> anyhow::Result<Persisted> {
    match state.read_optional(ROUTER_BLOCKS)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", state.path().join(ROUTER_BLOCKS).display())),
        None => Ok(Default::default()),
    }
}

/// Replaces the persisted blocks and events with `blocks`.
pub fn save(state: &StateDir, blocks: &Persisted) -> anyhow::Result<()> {
    state.write_atomically(ROUTER_BLOCKS, &serde_json::to_vec(blocks)?, 0o644)
}
