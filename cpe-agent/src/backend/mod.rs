//! Firewall backends: the `FirewallBackend` trait the agent loop drives,
//! the choice of backend (`select`: nftables when `nft` works, else
//! iptables), and `Interfaces` (settings `lan_interfaces` and
//! `wan_interfaces`: what a rule's `in_interface: lan|wan` stands for; a role
//! with no interface is an apply error, so one config fits routers whose
//! interfaces are named differently).
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

use isdf_api::{Firewall, InterfaceRole, Rule, RuleCounter};

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

/// The NFQUEUE number `classify` rules queue to.
pub const CLASSIFY_QUEUE: u16 = 4242;

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

/// The router's interfaces by role: what `in_interface: lan` and
/// `in_interface: wan` stand for. The config names roles, never interfaces,
/// so one config fits routers whose interfaces are named differently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// Setting `lan_interfaces`.
    pub lan: Vec<String>,
    /// Setting `wan_interfaces`.
    pub wan: Vec<String>,
}

impl Interfaces {
    /// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
    pub const MAX_NAME_LEN: usize = 15;

    /// The interface names `rule` matches on (None: it matches any
    /// interface), or why the router cannot enforce it: no interface of that
    /// role is configured, or a configured name is not an interface name.
    /// A trailing `*` matches every name with that prefix (nft's wildcard).
    pub fn for_rule(&self, rule: &Rule) -> anyhow::Result<Option<&[String]>> {
        let Some(role) = rule.matches.in_interface else {
            return Ok(None);
        };
        let (names, setting, role_name) = match role {
            InterfaceRole::Lan => (&self.lan, "lan_interfaces", "lan"),
            InterfaceRole::Wan => (&self.wan, "wan_interfaces", "wan"),
        };
        if names.is_empty() {
            anyhow::bail!(
                "rule `{}` matches in_interface {role_name}, but the agent setting \
                 `{setting}` lists no interface",
                rule.id
            );
        }
        if let Some(bad) = names.iter().find(|n| !is_interface_name(n)) {
            anyhow::bail!(
                "the agent setting `{setting}` holds `{bad}`, which is not an interface name \
                 (1 to {} printable characters without quotes, `/`, `\\` or spaces)",
                Self::MAX_NAME_LEN
            );
        }
        Ok(Some(names))
    }
}

/// Whether `name` can be an interface name, and so is safe to place in a
/// script between double quotes or as one word.
fn is_interface_name(name: &str) -> bool {
    (1..=Interfaces::MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'/' | b'\''))
}

/// Remaining milliseconds of an element expiring at `expires_at` (Unix
/// seconds) at `now_ms`; None when it has no expiry; Some(0) when it has
/// already expired (leave it out).
pub fn remaining_ms(expires_at: Option<i64>, now_ms: i64) -> Option<u64> {
    expires_at.map(|e| u64::try_from(e.saturating_mul(1000).saturating_sub(now_ms)).unwrap_or(0))
}

/// Unix seconds of `now_ms`, to the nearest second, for kernels that count
/// timeouts in whole seconds.
pub fn nearest_second(now_ms: i64) -> i64 {
    now_ms.saturating_add(500).div_euclid(1000)
}

/// Remaining seconds of an element expiring at `expires_at`; None when it has
/// no expiry; Some(0) when it has already expired (leave it out).
pub fn remaining_secs(expires_at: Option<i64>, now: i64) -> Option<u64> {
    expires_at.map(|e| u64::try_from(e.saturating_sub(now)).unwrap_or(0))
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
