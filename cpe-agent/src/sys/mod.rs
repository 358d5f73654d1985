//! The agent's ground floor: what every other part of the agent stands on
//! and what stands on nothing of the agent itself.
//!
//! Its modules import nothing from the rest of the crate (`settings` imports
//! nothing at all, not even its siblings), so the layers above (the
//! backends, the resolver, the tunnels, the controller client, and the
//! agent loop on top) can use them without forming a cycle.

pub mod atomic_write;
pub mod config_files;
pub mod hex;
pub mod logging;
pub mod processes;
pub mod releases;
pub mod settings;
pub mod state;
pub mod time;
