//! iSDF router agent: pulls this router's signed config, verifies it, enforces
//! it with a firewall backend, a dnsmasq, a portal redirect and WireGuard
//! tunnels, and reports what it really enforces. The router authenticates
//! with a client certificate it obtains by enrollment and renews by itself.
//!
//! The folders are layers; each uses only those below it, so no two modules
//! import each other:
//! - `agent/`: the loop, the one place that sees every part at once.
//! - `controller/`: the only code that talks to the controller.
//! - `backend/`, `dns/`, `wireguard/`: the kernel ruleset, the resolver and
//!   the tunnels, each a pure plan (snapshot-tested) and the side that makes
//!   the system match it. `router_blocks/` (the router's own blocks),
//!   `classify/` (the pure BitTorrent classifier) with `inspect.rs` (its
//!   NFQUEUE side), `control.rs` (the local socket) and
//!   `portal_redirect.rs` (the HTTP redirect responder) sit beside them,
//!   and `sitename/` (pure: the site name a flow's first bytes carry, TLS,
//!   HTTP and QUIC).
//! - `sys/`: settings, the state directory, the one atomic write, processes,
//!   time and logging; it imports nothing from the layers above.

/// The version this agent reports: `ISDF_AGENT_VERSION` when it was set
/// at build time (two builds of one source then differ only in it, as an
/// upgrade test needs), else the crate's.
pub const AGENT_VERSION: &str = match option_env!("ISDF_AGENT_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// The Rust target triple this agent was built for (from `build.rs`).
pub const AGENT_TARGET: &str = env!("ISDF_AGENT_TARGET");

pub mod agent;
pub mod backend;
pub mod classify;
pub mod control;
pub mod controller;
pub mod dns;
pub mod inspect;
pub mod portal_inject;
pub mod router_blocks;
pub mod sitename;
pub mod sys;
pub mod wireguard;

#[cfg(test)]
mod test_pki;
