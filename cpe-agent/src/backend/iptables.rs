//! iptables + ipset backend (placeholder while being written).

use isdf_api::{Firewall, RuleCounter};

use super::FirewallBackend;

pub struct IptablesBackend;

impl IptablesBackend {
    pub fn new() -> Self {
        IptablesBackend
    }
}

impl Default for IptablesBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FirewallBackend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }
    fn apply(&mut self, _: &Firewall, _: i64) -> anyhow::Result<()> {
        anyhow::bail!("iptables backend not written yet")
    }
    fn verify(&self, _: &Firewall, _: i64) -> anyhow::Result<()> {
        anyhow::bail!("iptables backend not written yet")
    }
    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        Ok(vec![])
    }
    fn remove(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
