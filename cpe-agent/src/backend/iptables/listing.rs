//! What the kernel shows, read back: `iptables-save` output (our chains,
//! the jumps to them, counters) and `ipset list -t`. From it come the jump
//! repairs that keep exactly one jump to each entry chain at the top of its
//! builtin chain, the script that removes everything of ours, and whether a
//! live ipset is the planned one. Pure parsing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use isdf_api::Chain;

use super::generation::{entry_chain, is_our_chain, Generation, LEGACY_ANTISPOOF_CHAIN};
use super::plan::builtin_chain;
use super::sets::{ipset_family, PlannedSet, MAX_ELEMENTS};

/// One rule line of `iptables-save`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SavedRule {
    pub(super) chain: String,
    /// Everything after `-A <chain>`.
    spec: String,
    pub(super) packets: u64,
    pub(super) bytes: u64,
}

impl SavedRule {
    fn option(&self, name: &str) -> Option<&str> {
        let mut tokens = self.spec.split_whitespace();
        tokens.find(|t| *t == name)?;
        tokens.next().map(|t| t.trim_matches('"'))
    }

    /// Everything after `-A <chain>`, as `iptables-save` prints it.
    pub(super) fn spec(&self) -> &str {
        &self.spec
    }

    pub(super) fn comment(&self) -> Option<&str> {
        self.option("--comment")
    }

    pub(super) fn target(&self) -> Option<&str> {
        self.option("-j")
    }
}

/// The `filter` table as `iptables-save` shows it.
#[derive(Debug, Default)]
pub(super) struct SavedFilter {
    pub(super) chains: BTreeSet<String>,
    pub(super) rules: Vec<SavedRule>,
}

impl SavedFilter {
    pub(super) fn parse(text: &str) -> anyhow::Result<SavedFilter> {
        let mut saved = SavedFilter::default();
        let mut in_filter = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(table) = line.strip_prefix('*') {
                in_filter = table == "filter";
                continue;
            }
            if !in_filter {
                continue;
            }
            if let Some(declaration) = line.strip_prefix(':') {
                let name = declaration.split_whitespace().next().unwrap_or_default();
                saved.chains.insert(name.to_owned());
                continue;
            }
            let (packets, bytes, rest) = match line.strip_prefix('[') {
                Some(counted) => {
                    let (counts, rest) = counted
                        .split_once(']')
                        .with_context(|| format!("unterminated counters in `{line}`"))?;
                    let (p, b) = counts
                        .split_once(':')
                        .with_context(|| format!("bad counters in `{line}`"))?;
                    let parse = |n: &str| {
                        n.parse::<u64>()
                            .with_context(|| format!("bad counter `{n}` in `{line}`"))
                    };
                    (parse(p)?, parse(b)?, rest.trim_start())
                }
                None => (0, 0, line),
            };
            if let Some(rule) = rest.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                saved.rules.push(SavedRule {
                    chain: chain.to_owned(),
                    spec: spec.trim().to_owned(),
                    packets,
                    bytes,
                });
            }
        }
        Ok(saved)
    }

    pub(super) fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Lines that leave exactly one jump to each of our chains, at the top
    /// of its builtin chain: rules above ours could accept what we block.
    pub(super) fn jump_repairs(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for chain in Chain::FILTER {
            let (builtin, ours) = (builtin_chain(chain), entry_chain(chain));
            let jump = format!("-j {ours}");
            let positions: Vec<usize> = self
                .rules_in(builtin)
                .enumerate()
                .filter(|(_, r)| r.spec == jump)
                .map(|(i, _)| i)
                .collect();
            if positions != [0] {
                lines.extend(positions.iter().map(|_| format!("-D {builtin} {jump}")));
                lines.push(format!("-I {builtin} 1 {jump}"));
            }
        }
        lines
    }

    /// Lines that delete the anti-spoofing chain of an agent before the
    /// generations, and any jump to it from a chain not ours. They follow
    /// the rewritten entry chains in the same transaction: those held the
    /// other jumps to it.
    pub(super) fn legacy_removals(&self) -> Vec<String> {
        if !self.chains.contains(LEGACY_ANTISPOOF_CHAIN) {
            return Vec::new();
        }
        let mut lines: Vec<String> = self
            .rules
            .iter()
            .filter(|r| !is_our_chain(&r.chain) && r.target() == Some(LEGACY_ANTISPOOF_CHAIN))
            .map(|r| format!("-D {} {}", r.chain, r.spec))
            .collect();
        lines.push(format!("-F {LEGACY_ANTISPOOF_CHAIN}"));
        lines.push(format!("-X {LEGACY_ANTISPOOF_CHAIN}"));
        lines
    }

    /// A restore script that removes our chains and every jump to them, or
    /// None when there is nothing of ours.
    pub(super) fn removal_script(&self) -> Option<String> {
        let mut lines = Vec::new();
        for rule in &self.rules {
            if !is_our_chain(&rule.chain) && rule.target().is_some_and(is_our_chain) {
                lines.push(format!("-D {} {}", rule.chain, rule.spec));
            }
        }
        // Entry chains name the generations' chains: empty them all before
        // deleting any.
        let ours: Vec<&str> = Chain::FILTER
            .into_iter()
            .flat_map(|c| {
                [
                    entry_chain(c),
                    Generation::A.chain(c),
                    Generation::B.chain(c),
                ]
            })
            .chain(Generation::BOTH.map(Generation::antispoof_chain))
            .chain([LEGACY_ANTISPOOF_CHAIN])
            .filter(|c| self.chains.contains(*c))
            .collect();
        lines.extend(ours.iter().map(|c| format!("-F {c}")));
        lines.extend(ours.iter().map(|c| format!("-X {c}")));
        (!lines.is_empty()).then(|| format!("*filter\n{}\nCOMMIT\n", lines.join("\n")))
    }
}

/// One set as `ipset list -t` shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LiveSet {
    pub(super) kind: String,
    /// `Header:` as key-value pairs (`family inet maxelem 65536 ...`).
    pub(super) header: HashMap<String, String>,
    pub(super) entries: usize,
}

/// Parses `ipset list -t`: blocks of `Key: value` lines, each starting at `Name:`.
pub(super) fn parse_ipset_terse(text: &str) -> anyhow::Result<BTreeMap<String, LiveSet>> {
    let mut sets = BTreeMap::new();
    let mut current: Option<(String, LiveSet)> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "Name" => {
                sets.extend(current.take());
                current = Some((value.to_owned(), LiveSet::default()));
            }
            "Type" => {
                if let Some((_, set)) = &mut current {
                    set.kind = value.to_owned();
                }
            }
            "Header" => {
                if let Some((_, set)) = &mut current {
                    let words: Vec<&str> = value.split_whitespace().collect();
                    set.header = words
                        .chunks(2)
                        .map(|kv| {
                            (
                                kv[0].to_owned(),
                                kv.get(1).copied().unwrap_or("").to_owned(),
                            )
                        })
                        .collect();
                }
            }
            "Number of entries" => {
                if let Some((name, set)) = &mut current {
                    set.entries = value
                        .parse()
                        .with_context(|| format!("ipset set {name}: bad entry count `{value}`"))?;
                }
            }
            _ => {}
        }
    }
    sets.extend(current);
    Ok(sets)
}

/// Comparing a planned set with what the kernel lists lives here, with the
/// listing it reads.
impl PlannedSet {
    /// Whether a live set of this name has the planned type.
    pub(super) fn fits(&self, live: &LiveSet) -> bool {
        live.kind == self.kind.type_name()
            && live.header.get("family").map(String::as_str) == Some(ipset_family(self.family))
            && live.header.get("maxelem") == Some(&MAX_ELEMENTS.to_string())
            && live.header.contains_key("timeout")
    }
}
