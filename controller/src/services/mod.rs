//! Service kinds: what an operator can assign to routers, each compiled to
//! data-plane primitives by a pure function. One kind is one module here
//! (its spec and its compilation) plus one arm of [`ServiceKind`] and
//! [`ServiceSpec`]; [`compiler`] combines the kinds in force on one router.
//! Nothing here does I/O: no database, no clock, no files.

use serde::{Deserialize, Serialize};

pub mod bittorrent_block;
pub mod compiler;
pub mod flow_block;
pub mod pay_per_site;

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
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::FlowBlock,
        ServiceKind::BittorrentBlock,
        ServiceKind::PayPerSite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::FlowBlock => "flow-block",
            ServiceKind::BittorrentBlock => "bittorrent-block",
            ServiceKind::PayPerSite => "pay-per-site",
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
}

impl ServiceSpec {
    /// Parses a spec for `kind`, refusing unknown fields and invalid values.
    pub fn parse(kind: ServiceKind, spec: &serde_json::Value) -> Result<Self, String> {
        match kind {
            ServiceKind::FlowBlock => {
                let spec: FlowBlockSpec =
                    serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
                spec.check()?;
                Ok(ServiceSpec::FlowBlock(spec))
            }
            ServiceKind::BittorrentBlock => {
                let spec: BittorrentBlockSpec =
                    serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
                spec.check()?;
                Ok(ServiceSpec::BittorrentBlock(spec))
            }
            ServiceKind::PayPerSite => {
                let spec: PayPerSiteSpec =
                    serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
                spec.check()?;
                Ok(ServiceSpec::PayPerSite(spec))
            }
        }
    }
}
