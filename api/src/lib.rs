//! The iSDF wire contract shared by the controller and the router agent.
//!
//! This crate does no I/O: it defines the documents that cross the network
//! ([`DeviceConfig`], [`StatusReport`]), the data-plane primitives a config is
//! built from, and the signed [`Envelope`] with its verification rules. Both
//! sides use the same code and the same test vectors, so they cannot drift.

pub mod config;
pub mod dns;
pub mod dsse;
pub mod enrollment;
pub mod envelope;
pub mod events;
pub mod name;
pub mod net;
#[cfg(feature = "openapi")]
mod openapi;
pub mod release;
pub mod root;
pub mod status;
pub mod wireguard;

pub use config::{
    Action, AddEndpoints, Chain, ClassifierPolicy, ConfigError, DeviceConfig, ElementValue,
    Endpoint, Firewall, FlowName, FlowNames, FlowPattern, InterfaceRole, Match, NameGroup,
    PayloadMatch, Rule, RuleId, Set, SetElement, SetKey, SetName,
};
pub use dns::{DnsPolicy, DnsSetFill, DomainPattern, LocalAnswer, PortalRedirect, PortalSite};
pub use envelope::{
    open_device_config, seal, Envelope, KeyId, OpenError, OpenPolicy, TrustedKeys,
    CONFIG_PAYLOAD_TYPE, MAX_ENVELOPE_BYTES,
};
pub use net::{Family, PortRange, Prefix, Protocol};
pub use status::{AgentCounters, Outcome, RuleCounter, StatusReport};
pub use wireguard::{
    Peer, PeerStatus, ProbeAnswer, ProbeRequest, Tunnel, TunnelStatus, WgKey, Wireguard,
    WireguardFacts,
};

/// HTTP paths of the device API, shared so the agent and controller agree.
pub mod paths {
    /// Long-poll for the device's signed config (`GET`).
    pub const DEVICE_CONFIG: &str = "/device/v1/config";
    /// Post a status report (`POST`).
    pub const DEVICE_STATUS: &str = "/device/v1/status";
    /// Agent release binaries, by SHA-256 (`GET`, ranges allowed).
    pub const DEVICE_RELEASES: &str = "/device/v1/releases";
    /// Cheap reachability check used after applying a config (`GET`).
    pub const DEVICE_PING: &str = "/device/v1/ping";
    /// The chain of root documents, oldest first (`GET`).
    pub const DEVICE_ROOTS: &str = "/device/v1/roots";
    /// Events the router reports on its own: local blocks, detections (`POST`).
    pub const DEVICE_EVENTS: &str = "/device/v1/events";
    /// Report the router's WireGuard facts: public keys, port, WAN
    /// addresses, probe proof (`PUT`).
    pub const DEVICE_WIREGUARD_FACTS: &str = "/device/v1/wireguard/facts";
    /// Ask for UDP probes to the router's probe port (`POST`).
    pub const DEVICE_WIREGUARD_PROBE: &str = "/device/v1/wireguard/probe";
    /// Renew the client certificate over mutual TLS (`POST`).
    pub const DEVICE_RENEW: &str = "/device/v1/renew";
    /// Enroll with a token and a CSR, on the enrollment listener (`POST`).
    pub const ENROLL: &str = "/enroll/v1";
}
