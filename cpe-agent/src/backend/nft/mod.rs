//! nftables backend: the agent's own `table inet isdf`, replaced as one
//! `nft -f` transaction, so the kernel switches from the old ruleset to the
//! new one at once or not at all.
//!
//! The planner is pure and snapshot-tested: `plan.rs` writes the script
//! (chains, rule lines, and anti-spoofing for the router's LAN ahead of
//! them), `sets.rs` decides the kernel sets and their elements (hash sets
//! for exact 5-tuples, interval layers for patterns, timeouts, what
//! DNS-filled sets carry over), `tunnels.rs` adds the rules that keep each
//! WireGuard tunnel to its VPN, `names.rs` the reading of flow names (the
//! queue to the agent's name reader and its verdict made the connection's
//! mark), and `listing.rs` reads the
//! kernel's `nft -j` listings back and says what shape the plan gives.
//! Only `apply.rs` runs `nft` (check with `nft -c`, apply with `nft -f`,
//! verify, counters, learned endpoints).
//!
//! Endpoint sets are read back (`learned_endpoints`): the agent turns what
//! the kernel's signatures remembered into router blocks every 2 s and
//! before each replacement, which would empty them.

mod apply;
mod listing;
mod names;
mod plan;
mod sets;
mod tunnels;

#[cfg(test)]
mod tests;

pub use apply::NftBackend;
pub use plan::{plan, plan_with, PlanInputs, Queueing, CLASSIFY_MARK, TABLE};
pub use sets::{Carried, CarriedElement, DNS_SET_SIZE, MAX_TIMEOUT_SECS};
