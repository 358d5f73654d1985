//! Customers' site-to-site VPNs. `plan.rs` decides which routers connect to
//! whom (pure); `addresses.rs` parses pools and LAN prefixes (pure);
//! `membership.rs` holds the rules a router must meet to join; `inputs.rs`
//! loads what a recompile compiles tunnels from (and gives relays);
//! `keys.rs` records the facts routers report and drives key rotation;
//! `probes.rs` tests reachability with UDP probes.

pub mod addresses;
pub mod inputs;
pub mod keys;
pub mod membership;
pub mod plan;
pub mod probes;

pub use plan::{Plan, Relay, RelayNeed, Role, Site, SiteKeys, Topology, Vpn};
