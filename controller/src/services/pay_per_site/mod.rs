//! `pay-per-site`: the sites of a catalog are gated on the router until the
//! household holds a pass. Its spec (here), the catalog of sites and passes
//! (`catalog.rs`), the gate it compiles to (`gate.rs`) and the signed portal
//! links in the config (`links.rs`) are pure; selling passes is `crate::shop`.

use serde::{Deserialize, Serialize};

pub mod catalog;
pub mod gate;
pub mod links;

pub use gate::{
    add_to, reads_flow_names, CatalogSite, Catalogs, DeviceShop, FLOW_NAMES_SINCE,
    ROUTER_PORTAL_PORT,
};
pub use links::PortalLinks;

/// `pay-per-site`: the sites of a catalog are gated on the router until the
/// household holds a pass (see `gate.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayPerSiteSpec {
    /// The catalog whose sites are gated (`sites.catalog`).
    pub catalog: String,
    /// Longest TTL the router hands to LAN clients (1 s to 1 h, default
    /// 60 s): how long a client may keep using an address the router has
    /// not seen (after a router reboot emptied its sets).
    #[serde(default = "default_pay_per_site_ttl")]
    pub max_ttl_secs: u32,
    /// DNS-over-HTTPS resolver addresses blocked besides the built-in list.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub extra_doh_addresses: Vec<std::net::IpAddr>,
    /// DNS-over-HTTPS hostnames answered NXDOMAIN besides the built-in list.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub extra_doh_hostnames: Vec<isdf_api::DomainPattern>,
}

/// A catalog name: 1 to 63 of `a-z 0-9 _ -`.
pub fn is_catalog_name(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn default_pay_per_site_ttl() -> u32 {
    60
}

impl PayPerSiteSpec {
    pub const MAX_TTL_SECS: u32 = 3600;
    pub const MAX_EXTRA: usize = 1000;

    pub fn check(&self) -> Result<(), String> {
        if !is_catalog_name(&self.catalog) {
            return Err(format!(
                "catalog `{}` must be 1-63 of a-z 0-9 _ -",
                self.catalog
            ));
        }
        if !(1..=Self::MAX_TTL_SECS).contains(&self.max_ttl_secs) {
            return Err(format!("max_ttl_secs must be 1 to {}", Self::MAX_TTL_SECS));
        }
        if self.extra_doh_addresses.len() > Self::MAX_EXTRA
            || self.extra_doh_hostnames.len() > Self::MAX_EXTRA
        {
            return Err(format!(
                "at most {} extra DoH addresses and hostnames",
                Self::MAX_EXTRA
            ));
        }
        Ok(())
    }
}
