//! Running `iptables-restore`, `iptables-save` and `ipset`: sets are filled
//! into temporary sets and swapped in, each family's chains replaced in one
//! `iptables-restore --noflush` transaction (tested first with `--test`),
//! the jumps to our chains repaired in the same transaction, and the kernel
//! checked against the plan. The kernel's ipset capabilities are probed
//! once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use isdf_api::{Chain, Family, Firewall, RuleCounter};

use super::listing::{parse_ipset_terse, LiveSet, SavedFilter};
use super::plan::{
    is_our_chain, our_chain, refuse_unsupported, Capabilities, Layout, ANTISPOOF_CHAIN, FAMILIES,
};
use super::sets::{SET_PREFIX, TEMP_PREFIX};
use crate::backend::planning::lan_prefixes;
use crate::backend::{nearest_second, FirewallBackend, Interfaces};
use crate::sys::processes;

/// The kernel's routes as the calling thread's network namespace sees them
/// (`/proc/net` is the process's: a thread that entered another namespace
/// would read the wrong one).
const ROUTES_V4: &str = "/proc/thread-self/net/route";
const ROUTES_V6: &str = "/proc/thread-self/net/ipv6_route";

/// Set names start with a letter, so this can never be a set's temporary name.
const PROBE_SET: &str = "isdf+_probe";

/// Runs `iptables-restore`, `iptables-save` and `ipset` (names overridable
/// with `ISDF_IPTABLES`, `ISDF_IP6TABLES` and `ISDF_IPSET`, e.g.
/// `ISDF_IPTABLES=iptables-legacy`; `-restore` and `-save` are appended).
pub struct IptablesBackend {
    iptables: String,
    ip6tables: String,
    ipset: String,
    capabilities: OnceLock<Capabilities>,
    interfaces: Interfaces,
}

impl IptablesBackend {
    /// A backend for a router with no interfaces configured (rules matching
    /// `in_interface` are refused).
    pub fn new() -> Self {
        Self::with_interfaces(Interfaces::default())
    }

    /// A backend whose `in_interface` roles stand for `interfaces`.
    pub fn with_interfaces(interfaces: Interfaces) -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        IptablesBackend {
            iptables: var("ISDF_IPTABLES", "iptables"),
            ip6tables: var("ISDF_IP6TABLES", "ip6tables"),
            ipset: var("ISDF_IPSET", "ipset"),
            capabilities: OnceLock::new(),
            interfaces,
        }
    }

    /// The plan for `firewall` at `now_ms` on this router, with the LAN
    /// prefixes the kernel routes now.
    fn layout(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<Layout> {
        let layout = Layout::new(
            firewall,
            nearest_second(now_ms),
            self.capabilities(),
            &self.interfaces,
        )?;
        Ok(layout.with_antispoof(&self.interfaces.lan, &self.lan_prefixes()?))
    }

    /// The prefixes the kernel routes out of the LAN interfaces (see
    /// `planning::lan_prefixes`). A kernel without IPv6 has no IPv6
    /// listing.
    fn lan_prefixes(&self) -> anyhow::Result<Vec<isdf_api::Prefix>> {
        if self.interfaces.lan.is_empty() {
            return Ok(Vec::new());
        }
        let read = |path: &str| match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("reading the LAN routes from {path}")),
        };
        Ok(lan_prefixes(
            &read(ROUTES_V4)?,
            &read(ROUTES_V6)?,
            &self.interfaces.lan,
        ))
    }

    fn tool(&self, family: Family) -> &str {
        match family {
            Family::Ipv4 => &self.iptables,
            Family::Ipv6 => &self.ip6tables,
        }
    }

    /// Probes the kernel once: creating a set loads its module if there is one.
    fn capabilities(&self) -> Capabilities {
        *self.capabilities.get_or_init(|| {
            let created = processes::run(
                &self.ipset,
                &[
                    "-exist",
                    "create",
                    PROBE_SET,
                    "hash:net,port,net",
                    "family",
                    "inet",
                ],
                "",
            );
            let net_port_net = created.is_ok();
            if net_port_net {
                if let Err(e) = processes::run(&self.ipset, &["destroy", PROBE_SET], "") {
                    tracing::warn!("could not destroy ipset probe set: {e:#}");
                }
            } else {
                tracing::info!(
                    "no hash:net,port,net in this kernel's ipset; flow sets are inlined as rules"
                );
            }
            Capabilities { net_port_net }
        })
    }

    fn save(&self, family: Family, with_counters: bool) -> anyhow::Result<SavedFilter> {
        let program = format!("{}-save", self.tool(family));
        let args: &[&str] = if with_counters {
            &["-c", "-t", "filter"]
        } else {
            &["-t", "filter"]
        };
        let text = processes::run(&program, args, "")
            .with_context(|| format!("listing rules with {program}"))?;
        SavedFilter::parse(&text).with_context(|| format!("parsing {program} output"))
    }

    fn restore(&self, family: Family, script: &str) -> anyhow::Result<()> {
        let program = format!("{}-restore", self.tool(family));
        processes::run(&program, &["-w", "--noflush", "--test"], script)
            .with_context(|| format!("{program} rejected the planned rules (test)"))?;
        processes::run(&program, &["-w", "--noflush"], script)
            .with_context(|| format!("applying the rules with {program}"))?;
        Ok(())
    }

    fn live_sets(&self) -> anyhow::Result<BTreeMap<String, LiveSet>> {
        let text = processes::run(&self.ipset, &["list", "-t"], "").context("listing ipsets")?;
        let mut sets = parse_ipset_terse(&text).context("parsing `ipset list -t`")?;
        sets.retain(|name, _| name.starts_with(SET_PREFIX) || name.starts_with(TEMP_PREFIX));
        Ok(sets)
    }

    fn destroy_set(&self, name: &str) -> anyhow::Result<()> {
        processes::run(&self.ipset, &["destroy", name], "")
            .map(drop)
            .with_context(|| format!("destroying ipset {name}"))
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

    #[tracing::instrument(skip(self, firewall))]
    fn apply(&mut self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        refuse_unsupported(firewall)?;
        let layout = self.layout(firewall, now_ms)?;
        let live = self.live_sets()?;
        for name in live.keys().filter(|n| n.starts_with(TEMP_PREFIX)) {
            self.destroy_set(name)?;
        }
        // A set whose name now has another type cannot be swapped; it must
        // go, and rules may still use it. Emptying our chains first makes
        // this one change non-atomic, which is rare (a set name changing key).
        let misfits: Vec<&str> = layout
            .sets
            .iter()
            .filter(|s| live.get(&s.name).is_some_and(|l| !s.fits(l)))
            .map(|s| s.name.as_str())
            .collect();
        if !misfits.is_empty() {
            tracing::warn!(
                ?misfits,
                "ipsets changed type; emptying our chains while they are recreated"
            );
            let empty = Layout::default();
            for family in FAMILIES {
                self.restore(family, &empty.rules_script(family, &[]))?;
            }
            for name in &misfits {
                self.destroy_set(name)?;
            }
        }
        processes::run(&self.ipset, &["restore"], &layout.ipset_script())
            .context("filling the ipsets with ipset restore")?;
        for family in FAMILIES {
            let repairs = self.save(family, false)?.jump_repairs();
            self.restore(family, &layout.rules_script(family, &repairs))?;
        }
        // Only now does no rule of ours use the sets that left the config.
        let planned: BTreeSet<&str> = layout.sets.iter().map(|s| s.name.as_str()).collect();
        for name in live
            .keys()
            .filter(|n| n.starts_with(SET_PREFIX) && !planned.contains(n.as_str()))
        {
            // The new config is enforced; a stale set someone else still
            // uses is only clutter, not a reason to roll back.
            if let Err(e) = self.destroy_set(name) {
                tracing::warn!("{e:#}");
            }
        }
        Ok(())
    }

    fn verify(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        let layout = self.layout(firewall, now_ms)?;
        for family in FAMILIES {
            let saved = self.save(family, false)?;
            let tool = self.tool(family);
            for chain in Chain::FILTER {
                let ours = our_chain(chain);
                if !saved.chains.contains(ours) {
                    bail!("{tool}: chain {ours} is missing");
                }
                let expected: Vec<&str> = layout
                    .rules_in(family, chain)
                    .map(|r| r.id.as_str())
                    .collect();
                let listed: Vec<&str> = saved
                    .rules_in(ours)
                    .map(|r| r.comment().unwrap_or(""))
                    .collect();
                if listed != expected {
                    bail!("{tool}: chain {ours} has rules {listed:?}, expected {expected:?}");
                }
            }
            let listed: Vec<&str> = saved.rules_in(ANTISPOOF_CHAIN).map(|r| r.spec()).collect();
            let expected = layout.antispoof_rules(family);
            if !saved.chains.contains(ANTISPOOF_CHAIN) || listed != expected {
                bail!(
                    "{tool}: chain {ANTISPOOF_CHAIN} has rules {listed:?}, expected {expected:?} \
                     (the LAN's routes may have changed)"
                );
            }
            if !saved.jump_repairs().is_empty() {
                bail!("{tool}: the jumps to our chains are missing, duplicated or not first");
            }
        }
        let live = self.live_sets()?;
        for set in &layout.sets {
            let Some(have) = live.get(&set.name) else {
                bail!("ipset {} is missing", set.name);
            };
            if !set.fits(have) {
                bail!(
                    "ipset {} has type {} {:?}, not the planned one",
                    set.name,
                    have.kind,
                    have.header
                );
            }
            let want = set.entries.len();
            if have.entries + set.expiring_soon < want || have.entries > want + set.just_expired {
                bail!(
                    "ipset {} has {} entries, expected {want}",
                    set.name,
                    have.entries
                );
            }
        }
        Ok(())
    }

    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for family in FAMILIES {
            let saved = self.save(family, true)?;
            for rule in saved.rules.iter().filter(|r| is_our_chain(&r.chain)) {
                if let Some(id) = rule.comment() {
                    let sum = sums.entry(id.to_owned()).or_default();
                    sum.0 += rule.packets;
                    sum.1 += rule.bytes;
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|(rule_id, (packets, bytes))| RuleCounter {
                rule_id,
                packets,
                bytes,
            })
            .collect())
    }

    fn next_reapply(&self, firewall: &Firewall, now_ms: i64) -> Option<i64> {
        // A firewall that does not plan was refused by `apply`.
        self.layout(firewall, now_ms).ok()?.next_reapply
    }

    #[tracing::instrument(skip_all)]
    fn remove(&mut self) -> anyhow::Result<()> {
        for family in FAMILIES {
            if let Some(script) = self.save(family, false)?.removal_script() {
                let program = format!("{}-restore", self.tool(family));
                processes::run(&program, &["-w", "--noflush"], &script)
                    .with_context(|| format!("removing our chains with {program}"))?;
            }
        }
        for name in self.live_sets()?.keys() {
            self.destroy_set(name)?;
        }
        Ok(())
    }
}
