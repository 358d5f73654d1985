//! iptables + ipset backend, for routers whose kernel or firmware has no
//! nftables: the agent's own chains in the `filter` table of both families
//! and one ipset per set, in two generations (`generation.rs`): an apply
//! builds the new ruleset in the generation no packet reaches (its sets,
//! then its chains in one `iptables-restore --noflush` transaction per
//! family), and one `ipset swap` of the two `list:set` switches the entry
//! chains `ISDF-FORWARD`, `ISDF-INPUT` and `ISDF-OUTPUT` test moves every
//! packet of both families to it at once. Killed at any point, the kernel
//! enforces the old ruleset or the new one, never a mix
//! (`crash_apply::iptables_sigkill_mid_apply_leaves_old_or_new_ruleset`).
//!
//! It has the same semantics as the nftables backend (`nft/`), with these
//! differences forced by the tools:
//! - ipset cannot hold every flow pattern, and some kernels have no
//!   `hash:net,port,net` at all. A flow set that does not fit is inlined: each
//!   rule naming it becomes one iptables rule per element. Inlined elements
//!   cannot expire in the kernel, so `next_reapply` asks the agent to re-apply
//!   when one does.
//!   A count rule naming an inlined set counts a packet once per element it
//!   matches (nft counts it once); identical elements are merged.
//! - Atomicity comes from the generation switch rather than one
//!   transaction: between applies the listings show both generations'
//!   chains (the old one emptied) and, after an interrupted apply, a
//!   generation being built that nothing reaches; the next apply clears it.
//!   The first apply over the chains of an agent older than the
//!   generations replaces each family's rules in its own transaction.
//! - Our chains run first because the jumps to them are kept at the top of
//!   `FORWARD`, `INPUT` and `OUTPUT` (nft uses a hook priority instead).
//! - `in_interface` becomes one rule per interface (`-i`).
//! - The pay-per-site primitives are refused (`refuse_unsupported`):
//!   prerouting redirects, `until` (iptables has no clock match this agent
//!   can rely on: `-m time` is optional and counts in local time), and a DNS
//!   policy or portal (their sets must survive each replacement).
//!
//! - Anti-spoofing (the router's LAN sources arriving elsewhere) uses the
//!   LAN prefixes the kernel routes when the backend plans, in a chain of
//!   its own in each generation (`plan.rs`); nftables asks the routing at
//!   each packet.
//!
//! The planner is pure and snapshot-tested: `plan.rs` writes the scripts
//! from a `Layout`, `sets.rs` decides the ipsets and their entries,
//! `spec.rs` the match part of each rule, and `listing.rs` reads
//! `iptables-save` and `ipset list -t` back. Only `apply.rs` runs the tools.

mod apply;
mod generation;
mod listing;
mod plan;
mod sets;
mod spec;

#[cfg(test)]
mod tests;

pub use apply::IptablesBackend;
pub use generation::Generation;
pub use plan::{plan, plan_with, Capabilities, IptablesPlan};
