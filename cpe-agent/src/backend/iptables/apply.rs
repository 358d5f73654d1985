//! Running `iptables-restore`, `iptables-save` and `ipset`: each apply
//! builds the new ruleset in the generation that is not live (its sets by
//! one `ipset restore`, its chains by one `iptables-restore --noflush` per
//! family, with the jumps to the entry chains repaired in the same
//! transaction), switches every packet of both families to it with one
//! `ipset swap`, then clears the old generation (`generation.rs`). The
//! kernel is checked against the plan; its ipset capabilities are probed
//! once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use isdf_api::{Chain, Family, Firewall, RuleCounter};

use super::generation::{
    clear_chains_script, dispatch_rules, entry_chain, is_our_set, is_stale_set, switch,
    switch_sets_script, Generation, Switch, SWITCH_NEW,
};
use super::listing::{parse_ipset_terse, LiveSet, SavedFilter};
use super::plan::{refuse_unsupported, Capabilities, Layout, FAMILIES};
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

    /// The plan for `firewall` at `now_ms` in `generation` on this router,
    /// with the LAN prefixes the kernel routes now.
    fn layout(
        &self,
        firewall: &Firewall,
        now_ms: i64,
        generation: Generation,
    ) -> anyhow::Result<Layout> {
        let layout = Layout::new(
            firewall,
            nearest_second(now_ms),
            self.capabilities(),
            &self.interfaces,
            generation,
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

    /// One `iptables-restore --noflush` transaction: all of `script` or
    /// nothing.
    fn restore(&self, family: Family, script: &str) -> anyhow::Result<()> {
        let program = format!("{}-restore", self.tool(family));
        processes::run(&program, &["-w", "--noflush"], script)
            .map(drop)
            .with_context(|| format!("applying the rules with {program}"))
    }

    /// Our ipsets (names starting with `isdf`).
    fn live_sets(&self) -> anyhow::Result<BTreeMap<String, LiveSet>> {
        let text = processes::run(&self.ipset, &["list", "-t"], "").context("listing ipsets")?;
        let mut sets = parse_ipset_terse(&text).context("parsing `ipset list -t`")?;
        sets.retain(|name, _| is_our_set(name));
        Ok(sets)
    }

    fn ipset_restore(&self, script: &str) -> anyhow::Result<()> {
        processes::run(&self.ipset, &["restore"], script).map(drop)
    }

    /// Empties the chains of the generation that is not live and destroys
    /// those of `sets` that are its own, or a leftover switch (with
    /// `legacy`, earlier agents' sets too): nothing reaches any of them.
    /// `saved` are both families' listings.
    fn clear<'a>(
        &self,
        live: Generation,
        saved: &[SavedFilter; 2],
        sets: impl Iterator<Item = &'a String>,
        legacy: bool,
    ) -> anyhow::Result<()> {
        for (family, saved) in FAMILIES.into_iter().zip(saved) {
            let has_rules = |chain: &str| saved.rules_in(chain).next().is_some();
            if let Some(script) = clear_chains_script(live.other(), has_rules) {
                self.restore(family, &script)
                    .context("emptying the chains of the generation that is not live")?;
            }
        }
        let destroy: String = sets
            .filter(|name| is_stale_set(name, live, legacy))
            .map(|name| format!("destroy {name}\n"))
            .collect();
        if !destroy.is_empty() {
            self.ipset_restore(&destroy)
                .context("destroying the ipsets of the generation that is not live")?;
        }
        Ok(())
    }

    /// Both families' `filter` tables.
    fn save_both(&self) -> anyhow::Result<[SavedFilter; 2]> {
        Ok([
            self.save(Family::Ipv4, false)?,
            self.save(Family::Ipv6, false)?,
        ])
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

    /// Builds `firewall` in the generation that is not live and switches
    /// to it (see `generation.rs`). Until the switch, packets see only the
    /// previous ruleset, whatever fails or wherever the agent dies; the
    /// switch is one kernel operation for both families and every set.
    #[tracing::instrument(skip(self, firewall))]
    fn apply(&mut self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        refuse_unsupported(firewall)?;
        let sets = self.live_sets()?;
        let live = Generation::live(|name| sets.get(name).map(|s| s.entries));
        let building = live.map_or(Generation::A, Generation::other);
        let layout = self.layout(firewall, now_ms, building)?;
        let saved = self.save_both()?;

        // 1. Clear what an interrupted apply left in the generation being
        //    built: its chains first, so its sets are no longer in use.
        //    An earlier agent's sets may still be in use (by the rules its
        //    entry chains held until step 3): they go in step 5.
        self.clear(building.other(), &saved, sets.keys(), false)?;
        // 2. Its sets, filled (the switch sets made if need be).
        processes::run(
            &self.ipset,
            &["restore"],
            &format!("{}{}", switch_sets_script(building), layout.ipset_script()),
        )
        .context("filling the ipsets with ipset restore")?;
        // 3. Its chains, one transaction per family; the entry chains are
        //    rewritten alike and the jumps to them repaired. An earlier
        //    agent's anti-spoofing chain, reached only from the entry
        //    chains' old rules, goes in the same transaction.
        for (family, saved) in FAMILIES.into_iter().zip(&saved) {
            let missing: Vec<&str> = Chain::FILTER
                .iter()
                .map(|&c| building.other().chain(c))
                .filter(|c| !saved.chains.contains(*c))
                .collect();
            let mut extra = saved.jump_repairs();
            extra.extend(saved.legacy_removals());
            let script = layout.rules_script(family, &missing, &extra);
            self.restore(family, &script)?;
        }
        // 4. The switch: from here on packets see the new ruleset.
        match switch(building, live) {
            Switch::Swap => processes::run(
                &self.ipset,
                &["swap", Generation::A.switch(), Generation::B.switch()],
                "",
            )
            .map(drop),
            Switch::TurnOn(script) => self.ipset_restore(&script),
        }
        .context("switching to the new ruleset (ipset swap)")?;
        // 5. The old generation goes: its chains and sets as listed before
        //    the apply, which left them alone (a leftover new switch is
        //    gone already). The new ruleset is enforced either way; what
        //    is left is cleared by the next apply.
        let old_sets = sets.keys().filter(|name| name.as_str() != SWITCH_NEW);
        if let Err(e) = self.clear(building, &saved, old_sets, true) {
            tracing::warn!("clearing the previous ruleset: {e:#}");
        }
        Ok(())
    }

    fn verify(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        let sets = self.live_sets()?;
        let Some(live) = Generation::live(|name| sets.get(name).map(|s| s.entries)) else {
            bail!("no generation of our rules is switched on (ipsets isdf_gen_a, isdf_gen_b)");
        };
        let on = sets.get(live.switch()).map_or(0, |s| s.entries);
        let off = sets.get(live.other().switch()).map_or(0, |s| s.entries);
        if on != 2 || off != 0 {
            bail!(
                "the generation switch is broken: {} has {on} members (2 expected), {} has {off} (0 expected)",
                live.switch(),
                live.other().switch()
            );
        }
        let layout = self.layout(firewall, now_ms, live)?;
        for family in FAMILIES {
            let saved = self.save(family, false)?;
            let tool = self.tool(family);
            for chain in Chain::FILTER {
                let entry = entry_chain(chain);
                let listed: Vec<&str> = saved.rules_in(entry).map(|r| r.spec()).collect();
                if listed != dispatch_rules(chain) {
                    bail!("{tool}: entry chain {entry} has rules {listed:?}");
                }
                let ours = live.chain(chain);
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
            let antispoof = live.antispoof_chain();
            let listed: Vec<&str> = saved.rules_in(antispoof).map(|r| r.spec()).collect();
            let expected = layout.antispoof_rules(family);
            if !saved.chains.contains(antispoof) || listed != expected {
                bail!(
                    "{tool}: chain {antispoof} has rules {listed:?}, expected {expected:?} \
                     (the LAN's routes may have changed)"
                );
            }
            if !saved.jump_repairs().is_empty() {
                bail!("{tool}: the jumps to our chains are missing, duplicated or not first");
            }
        }
        for set in &layout.sets {
            let Some(have) = sets.get(&set.name) else {
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

    /// The live generation's rules (its anti-spoofing chain's too), summed
    /// per rule id.
    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        let sets = self.live_sets()?;
        let Some(live) = Generation::live(|name| sets.get(name).map(|s| s.entries)) else {
            return Ok(Vec::new());
        };
        let chains = live.filter_chains();
        let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for family in FAMILIES {
            let saved = self.save(family, true)?;
            for rule in saved
                .rules
                .iter()
                .filter(|r| chains.contains(&r.chain.as_str()))
            {
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
        // A firewall that does not plan was refused by `apply`; the
        // generation does not change when.
        self.layout(firewall, now_ms, Generation::A)
            .ok()?
            .next_reapply
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
        // The switches first: they hold the sets of every address.
        let sets = self.live_sets()?;
        let (switches, others): (Vec<&String>, Vec<&String>) = sets
            .keys()
            .partition(|name| name.starts_with("isdf_gen_") || name.as_str() == SWITCH_NEW);
        let script: String = switches
            .into_iter()
            .chain(others)
            .map(|name| format!("destroy {name}\n"))
            .collect();
        if !script.is_empty() {
            self.ipset_restore(&script)
                .context("destroying our ipsets")?;
        }
        Ok(())
    }
}
