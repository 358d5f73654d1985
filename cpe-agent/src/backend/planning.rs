//! What both planners take besides the config, pure: the router's
//! interfaces by role (settings `lan_interfaces` and `wan_interfaces`: what a
//! rule's `in_interface: lan|wan` stands for; a role with no interface is an
//! apply error, so one config fits routers whose interfaces are named
//! differently), the NFQUEUE number `classify` rules queue to, and element
//! timeouts computed from absolute expiries.

use isdf_api::{InterfaceRole, Rule};

/// The NFQUEUE number `classify` rules queue to.
pub const CLASSIFY_QUEUE: u16 = 4242;

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
