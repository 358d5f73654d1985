//! iSDF router agent: pulls this router's signed config, verifies it, enforces
//! it with a firewall backend and reports what it really enforces.

pub mod agent;
pub mod backend;
pub mod client;
pub mod settings;
pub mod state;
