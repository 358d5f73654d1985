//! Service kinds: what an operator can assign to routers, each compiled to
//! data-plane primitives by a pure function. One kind is one module here
//! (its spec and its compilation) plus one arm of [`ServiceKind`] and
//! [`ServiceSpec`]; [`compiler`] combines the kinds in force on one router.
//! Nothing here does I/O: no database, no clock, no files.

use serde::{Deserialize, Serialize};

pub mod agent_release;
pub mod bittorrent_block;
pub mod compiler;
pub mod flow_block;
pub mod pay_per_site;

pub use agent_release::AgentReleaseSpec;
pub use bittorrent_block::BittorrentBlockSpec;
pub use compiler::{compile_firewall, CompiledAssignment, DeviceBlock};
pub use flow_block::{BlockAction, FlowBlockSpec, FlowSpec};
pub use pay_per_site::PayPerSiteSpec;

/// Service kinds the controller knows how to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    FlowBlock,
    BittorrentBlock,
    PayPerSite,
    AgentRelease,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::FlowBlock,
        ServiceKind::BittorrentBlock,
        ServiceKind::PayPerSite,
        ServiceKind::AgentRelease,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::FlowBlock => "flow-block",
            ServiceKind::BittorrentBlock => "bittorrent-block",
            ServiceKind::PayPerSite => "pay-per-site",
            ServiceKind::AgentRelease => "agent-release",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// A validated service spec of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSpec {
    FlowBlock(FlowBlockSpec),
    BittorrentBlock(BittorrentBlockSpec),
    PayPerSite(PayPerSiteSpec),
    AgentRelease(AgentReleaseSpec),
}

impl ServiceSpec {
    /// Parses a spec for `kind`, refusing unknown fields and invalid values.
    pub fn parse(kind: ServiceKind, spec: &serde_json::Value) -> Result<Self, String> {
        Ok(match kind {
            ServiceKind::FlowBlock => ServiceSpec::FlowBlock(checked(spec, FlowBlockSpec::check)?),
            ServiceKind::BittorrentBlock => {
                ServiceSpec::BittorrentBlock(checked(spec, BittorrentBlockSpec::check)?)
            }
            ServiceKind::PayPerSite => {
                ServiceSpec::PayPerSite(checked(spec, PayPerSiteSpec::check)?)
            }
            ServiceKind::AgentRelease => {
                ServiceSpec::AgentRelease(checked(spec, AgentReleaseSpec::check)?)
            }
        })
    }
}

/// A spec of one kind, parsed (unknown fields refused) and checked.
fn checked<T: serde::de::DeserializeOwned>(
    spec: &serde_json::Value,
    check: fn(&T) -> Result<(), String>,
) -> Result<T, String> {
    let spec: T = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    check(&spec)?;
    Ok(spec)
}
