//! Firewall backends: the `FirewallBackend` trait the agent loop drives,
//! and the choice of backend (`select`: nftables when `nft` works, else
//! iptables). What both planners take besides the config (the router's
//! interfaces by role and LAN prefixes, the classifier's queue, element
//! timeouts) is `planning.rs`.
//!
//! Each backend has a pure planner (`Firewall` + time -> script text,
//! snapshot-tested) and an executor that checks, applies atomically and
//! verifies: `nft/` and `iptables/`. `conntrack.rs` ends the established
//! flows of what an apply newly blocks; `interval_layers.rs` packs
//! overlapping patterns into sets nft accepts. **Only this module runs
//! `nft`, `iptables`, `ipset` and `conntrack`** (through `sys::processes`).

pub mod conntrack;
pub mod interval_layers;
pub mod iptables;
pub mod nft;
pub mod planning;

pub use planning::{
    nearest_second, remaining_ms, remaining_secs, Interfaces, ANTISPOOF_RULE_ID, CLASSIFY_QUEUE,
};

use isdf_api::{Firewall, RuleCounter};

use crate::sys::processes;
use crate::sys::settings::BackendChoice;

pub trait FirewallBackend: Send {
    /// `nftables` or `iptables`; reported to the controller.
    fn name(&self) -> &'static str;

    /// Makes the kernel enforce `firewall` at Unix time `now_ms`
    /// (milliseconds), replacing what this agent enforced before, all or
    /// nothing. Element expiries become kernel timeouts counted from
    /// `now_ms`.
    fn apply(&mut self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()>;

    /// Checks the kernel holds what `apply(firewall, ...)` put there (our
    /// table, sets and rules are present; someone may have flushed them).
    fn verify(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()>;

    /// Packet and byte counters per rule id.
    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>>;

    /// Asked right after `apply(firewall, now_ms)`: the instant (Unix seconds)
    /// at which the agent must apply the same firewall again, because the
    /// kernel cannot expire something by itself (an inlined iptables rule, an
    /// nft timeout too long for the kernel). None: the kernel handles every
    /// expiry.
    fn next_reapply(&self, firewall: &Firewall, now_ms: i64) -> Option<i64> {
        let _ = (firewall, now_ms);
        None
    }

    /// The endpoints rules added to the endpoint sets of `firewall` since it
    /// was applied (peers a signature found), with the time each has left
    /// in milliseconds.
    fn learned_endpoints(&self, firewall: &Firewall) -> anyhow::Result<Vec<LearnedEndpoint>> {
        let _ = firewall;
        Ok(Vec::new())
    }

    /// Takes an endpoint out of the endpoint sets of `firewall` (a
    /// detection the operator or a detector ended early).
    fn forget_endpoint(&self, firewall: &Firewall, endpoint: &isdf_api::Endpoint) {
        let _ = (firewall, endpoint);
    }

    /// Removes everything this agent installed (uninstall and tests).
    fn remove(&mut self) -> anyhow::Result<()>;
}

/// An endpoint the kernel added to an endpoint set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedEndpoint {
    pub set: String,
    pub endpoint: isdf_api::Endpoint,
    pub remaining_ms: u64,
}

/// Builds the chosen backend; `Auto` prefers nftables. `interfaces` are the
/// router's own (settings `lan_interfaces` and `wan_interfaces`), which
/// rules matching `in_interface` stand for.
pub fn select(
    choice: BackendChoice,
    interfaces: Interfaces,
) -> anyhow::Result<Box<dyn FirewallBackend>> {
    match choice {
        BackendChoice::Nftables => Ok(Box::new(nft::NftBackend::with_interfaces(interfaces))),
        BackendChoice::Iptables => Ok(Box::new(iptables::IptablesBackend::with_interfaces(
            interfaces,
        ))),
        BackendChoice::Auto => {
            if processes::works("nft", &["list", "tables"]) {
                Ok(Box::new(nft::NftBackend::with_interfaces(interfaces)))
            } else if processes::works("iptables", &["-w", "-L", "-n"])
                && processes::works("ipset", &["list", "-n"])
            {
                Ok(Box::new(iptables::IptablesBackend::with_interfaces(
                    interfaces,
                )))
            } else {
                anyhow::bail!(
                    "neither nft nor iptables+ipset work on this router; install nftables"
                )
            }
        }
    }
}

/// The firewall of the shared test vector (`api/tests/vectors/config-sample.json`).
#[cfg(test)]
pub(crate) fn sample_firewall() -> Firewall {
    let config: isdf_api::DeviceConfig = serde_json::from_str(include_str!(
        "../../../api/tests/vectors/config-sample.json"
    ))
    .expect("sample config parses");
    config.firewall
}
