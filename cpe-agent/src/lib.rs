//! iSDF router agent: pulls this router's signed config, verifies it, enforces
//! it with a firewall backend, a dnsmasq, a portal redirect and WireGuard
//! tunnels, and reports
//! what it really enforces. The router
//! authenticates with a client certificate it obtains by enrollment and
//! renews by itself.

pub mod agent;
pub mod backend;
pub mod classify;
pub mod control;
pub mod controller;
pub mod dns;
pub mod inspect;
pub mod portal_redirect;
pub mod router_blocks;
pub mod sys;
pub mod wireguard;

#[cfg(test)]
mod test_pki;
