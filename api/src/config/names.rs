//! Flow names: the site name a flow itself carries (a TLS ClientHello's
//! server name, an HTTP request's host, the server name inside a QUIC
//! Initial), read by the router from the first packets of the LAN's web
//! flows, and the groups rules match them by.
//!
//! A name is the gate's first judge (issue 21): an address shared by a
//! gated site and an ordinary one (a CDN) is decided per flow by the name
//! asked for, so the ordinary site keeps working. Addresses are the judge
//! only of flows that carry no name the router can read (Encrypted Client
//! Hello, no SNI, other ports): `FlowName::Unnamed`. A flow named in a
//! group teaches the router its server address: it joins the group's
//! address sets for `learn_secs`, so the group's unnamed flows to it are
//! caught as well.

use serde::{Deserialize, Serialize};

use super::{Action, Chain, Firewall, InterfaceRole, Rule, Set, SetKey, SetName};
use crate::dns::DomainPattern;
use crate::net::Protocol;

/// The names the router reads from flows, in groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowNames {
    pub groups: Vec<NameGroup>,
    /// How long (seconds) a server address learned from a flow named in a
    /// group stays in the group's sets: the DNS TTL cap, 1 s to 1 day.
    pub learn_secs: u32,
}

/// Names that belong together (a site's), and the address sets the server
/// addresses of flows named so join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameGroup {
    pub id: SetName,
    pub domains: Vec<DomainPattern>,
    pub ipv4_set: SetName,
    pub ipv6_set: SetName,
}

/// What a rule requires of the name its flow carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowName {
    /// The flow named a domain of this group.
    Group(SetName),
    /// The flow carried no name the router could read (and so is judged by
    /// its addresses): not a web flow (TCP 80 or 443, UDP 443), or a web
    /// flow without one (Encrypted Client Hello, no SNI or Host, not the
    /// protocol), or one the router never read (no agent running). The
    /// router judges by address only flows whose server address a group's
    /// sets held when they started (the rules by address look in those
    /// sets); one to an address learned later is not cut mid-flow.
    Unnamed,
}

/// Most groups: the router tags each decided flow with its group in 12 bits
/// of the connection's mark, four values of which are taken.
pub const MAX_NAME_GROUPS: usize = 4_000;

/// Longest `learn_secs`: a day, like the DNS TTL cap.
pub const MAX_LEARN_SECS: u32 = 24 * 3600;

impl FlowNames {
    pub(super) fn check(&self, sets: &[Set]) -> Result<(), String> {
        if self.groups.len() > MAX_NAME_GROUPS {
            return Err(format!("flow_names: at most {MAX_NAME_GROUPS} groups"));
        }
        if !(1..=MAX_LEARN_SECS).contains(&self.learn_secs) {
            return Err("flow_names learn_secs is 1 s to 1 day".into());
        }
        let mut ids = std::collections::HashSet::new();
        for group in &self.groups {
            if !ids.insert(group.id.as_str()) {
                return Err(format!("flow_names group `{}` is defined twice", group.id));
            }
            if group.domains.is_empty() {
                return Err(format!("flow_names group `{}` names no domain", group.id));
            }
            for (name, key) in [
                (&group.ipv4_set, SetKey::Ipv4Addr),
                (&group.ipv6_set, SetKey::Ipv6Addr),
            ] {
                super::validate::check_single_address_set(sets, name, key)
                    .map_err(|m| format!("flow_names group `{}`: {m}", group.id))?;
            }
        }
        Ok(())
    }
}

impl Rule {
    /// What `flow_name` and `portal` need: a forward rule on traffic from
    /// the LAN (names are read only there), a group that exists, and the
    /// portal's URLs for a `portal` answer.
    pub(super) fn check_names(&self, firewall: &Firewall) -> Result<(), String> {
        let from_lan =
            self.chain == Chain::Forward && self.matches.in_interface == Some(InterfaceRole::Lan);
        if let Some(wanted) = &self.matches.flow_name {
            if !from_lan {
                return Err("flow_name needs chain forward and in_interface lan".into());
            }
            let names = firewall
                .flow_names
                .as_ref()
                .ok_or("flow_name needs flow_names in the firewall")?;
            if let FlowName::Group(id) = wanted {
                if !names.groups.iter().any(|g| &g.id == id) {
                    return Err(format!("flow_name names unknown group `{id}`"));
                }
            }
        }
        if self.action == Action::Portal {
            if !from_lan || self.matches.protocol != Some(Protocol::Tcp) {
                return Err(
                    "portal answers HTTP requests: chain forward, in_interface lan, protocol tcp"
                        .into(),
                );
            }
            if firewall.portal.is_none() {
                return Err("portal needs the firewall's portal (its URLs)".into());
            }
        }
        Ok(())
    }
}
