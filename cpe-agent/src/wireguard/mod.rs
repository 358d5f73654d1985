//! Site-to-site tunnels: the router's WireGuard key pairs (`keys`), what
//! its tunnels should be (`plan`, pure), the interfaces, addresses, routes
//! and policy rules that make them so (`interfaces`, with the rotation
//! watcher, status and facts), the listings read back (`listing`, pure) and
//! the controller's reachability probe (`probe`). **The only module that
//! runs `wg`, `wireguard-go` and `ip` for tunnels.**
//!
//! The firewall side (what a tunnel may carry) is in the nft planner
//! (`backend::nft`), applied before the tunnels so they never exist without
//! their isolation rules.
//!
//! Private keys never leave the state directory: `wg` reads them on stdin.

mod interfaces;
mod keys;
mod listing;
mod plan;
mod probe;

pub use interfaces::{wan_addresses, Tunnels, WATCH_EVERY};
pub use keys::{generate_key, generation_to_make, key_facts, KeyStore, StoredKey, KEYS_FILE};
pub use listing::{listed_addresses, parse_dump, probe_nonce};
pub use plan::{choose_holder, render_conf, wanted_rules, RULE_PRIORITY};
pub use probe::{probe_socket, receive_probe, PROBE_WAIT};
