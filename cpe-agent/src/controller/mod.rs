//! The only code that talks to the controller: the device API client
//! (mutual TLS) and enrollment (getting and renewing the router's
//! certificate).
//!
//! Both trust nothing but the controller's CA, and both cap what they read
//! before they read it: the controller is on the other side of the internet,
//! and a router must survive whatever comes back. The loop in `agent/`
//! decides when to call; nothing here holds state between calls beyond the
//! client's connection pool.

pub mod client;
pub mod csr;
pub mod enrollment;
