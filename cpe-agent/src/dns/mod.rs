//! The router's resolver: the config's DNS policy as a dnsmasq config
//! (`plan`: `render`, pure and snapshot-tested), and the `Resolver` that
//! makes a dnsmasq enforce it (`dnsmasq`: one the agent runs itself,
//! `managed`, or the system's, through a file in its conf-dir, `conf-dir`
//! on OpenWrt). **Only this module runs dnsmasq.**
//!
//! dnsmasq does the work: answers for gated domains add their addresses to
//! the firewall's sets (`nftset=`), `max-ttl` caps the TTLs clients are
//! told and `max-cache-ttl` makes dnsmasq ask upstream again within the cap
//! (only upstream answers fill sets), and `address=`/`local=` answer some
//! names on the router itself. Every apply waits until dnsmasq answers a TXT
//! record (`config.isdf.invalid`) naming a digest of the config just
//! written, so "applied" means "this config answers", not "a dnsmasq
//! answers".

pub mod agreement;
mod dnsmasq;
pub mod lookup;
mod plan;

use isdf_api::DnsPolicy;

pub use dnsmasq::{Dnsmasq, CONF_DIR_FILE};
pub use plan::{render, RenderOptions};

/// The router's resolver, as the agent loop sees it.
pub trait Resolver: Send {
    /// Makes the resolver enforce `policy` (None: the agent runs none, and
    /// its file leaves the conf-dir) and waits until it answers with it.
    /// Remembers `policy` even when this fails, for `repair`.
    fn apply(&mut self, policy: Option<&DnsPolicy>) -> anyhow::Result<()>;

    /// Puts back what the last `apply` asked for if it is gone: a managed
    /// dnsmasq that died, a conf-dir file someone removed.
    fn repair(&mut self) -> anyhow::Result<()>;
}

/// The policy the resolver tests render and enforce.
#[cfg(test)]
pub(crate) fn sample_policy() -> DnsPolicy {
    serde_json::from_value(serde_json::json!({
        "max_ttl_secs": 30,
        "fill_sets": [
            {"domains": ["video.test", "*.cdn-video.test"], "ipv4_set": "site_v4", "ipv6_set": "site_v6"},
            {"domains": ["music.test"], "ipv4_set": "music_v4", "ipv6_set": "music_v6"}
        ],
        "local_answers": [
            {"domain": "use-application-dns.net"},
            {"domain": "dns.google", "addresses": []},
            {"domain": "portal.isp.test", "addresses": ["192.0.2.1", "2001:db8:1::1"]}
        ]
    }))
    .unwrap()
}
