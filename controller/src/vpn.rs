//! The distributed VPN: which routers of a customer's VPN connect to whom,
//! decided from the facts the routers report (pure, no I/O).

use serde::{Deserialize, Serialize};

/// How a VPN's sites connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// A full mesh among the sites inbound UDP reaches; the others through
    /// one of those (a hub); an ISP relay when none is reachable.
    Auto,
    /// Every site peers with every other (sites behind NAT reach only
    /// reachable ones).
    Mesh,
    /// Every site through the named hub, which must be a member.
    Hub,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Auto => "auto",
            Topology::Mesh => "mesh",
            Topology::Hub => "hub",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Topology::Auto),
            "mesh" => Some(Topology::Mesh),
            "hub" => Some(Topology::Hub),
            _ => None,
        }
    }
}
