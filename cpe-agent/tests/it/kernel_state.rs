//! What a backend's kernel state enforces, normalised so that two states
//! compare equal exactly when the packet path sees the same rules and set
//! contents (the crash tests, `crash_apply.rs`), and what it lists,
//! normalised only in what differs between two applies of one ruleset
//! (`harness::ruleset`).
//!
//! nftables: our table as `nft -s` lists it (no counters), set elements
//! one per line, sorted (hash sets list in no fixed order), without timers.
//!
//! iptables: starting from the builtin `INPUT`, `FORWARD` and `OUTPUT` of
//! both families, every jump into our chains is followed, except a jump
//! guarded by an ipset of type `list:set` that is empty (the backend's
//! generation switch: such a jump matches no packet); each rule reached is
//! written out with its set names stripped of their prefix, followed by the
//! type, family and sorted entries of every set those rules use. Chains and
//! sets no packet can reach (a generation being built or left over) do not
//! count; `Snapshot::full` is the literal listing, for checking leftovers.

use std::collections::{BTreeMap, BTreeSet};

use crate::netns::Netns;

/// What the kernel holds of ours, read once: what it enforces
/// (`effective`, see the module doc) and what it lists (`full`), both
/// normalised.
pub(crate) struct Snapshot {
    pub(crate) effective: String,
    pub(crate) full: String,
}

impl Snapshot {
    pub(crate) fn take(ns: &Netns, backend: &str) -> Snapshot {
        match backend {
            "nftables" => {
                // One table: what it lists is what it enforces.
                let table = nft_table(ns);
                Snapshot {
                    effective: table.clone(),
                    full: table,
                }
            }
            _ => {
                let sets = saved_sets(&ns.run("ipset", &["save"]));
                let saves = [
                    ns.run("iptables-save", &["-t", "filter"]),
                    ns.run("ip6tables-save", &["-t", "filter"]),
                ];
                Snapshot {
                    effective: iptables_effective(&saves, &sets),
                    full: iptables_full(&saves, &sets),
                }
            }
        }
    }
}

fn nft_table(ns: &Netns) -> String {
    let out = ns.exec("nft", &["-s", "list", "table", "inet", "isdf"]);
    if !out.status.success() {
        return "<no table inet isdf>".into();
    }
    normalise_nft(&String::from_utf8_lossy(&out.stdout))
}

/// `nft -s` text with each set's elements one per line, sorted, and
/// without timers.
fn normalise_nft(text: &str) -> String {
    let mut out = Vec::new();
    let mut elements: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        let collecting = match &mut elements {
            Some(collected) => {
                collected.push_str(line);
                true
            }
            None => match line.strip_prefix("elements = {") {
                Some(rest) => {
                    elements = Some(rest.to_owned());
                    true
                }
                None => false,
            },
        };
        if !collecting {
            out.push(line.to_owned());
            continue;
        }
        let Some(collected) = elements.as_deref().and_then(|e| e.strip_suffix('}')) else {
            continue;
        };
        let mut items: Vec<String> = collected
            .split(',')
            .map(|e| {
                let e = e.trim();
                let e = e.split(" timeout ").next().unwrap_or(e);
                e.split(" expires ").next().unwrap_or(e).to_owned()
            })
            .filter(|e| !e.is_empty())
            .collect();
        items.sort();
        out.push(format!("elements ({}):", items.len()));
        out.extend(items.into_iter().map(|e| format!("  {e}")));
        elements = None;
    }
    out.join("\n")
}

/// One family's `filter` table: chain -> rule specs (after `-A <chain> `).
fn saved_chains(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            chains.entry(name.to_owned()).or_default();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            chains
                .entry(chain.to_owned())
                .or_default()
                .push(spec.to_owned());
        }
    }
    chains
}

/// One ipset as `ipset save` shows it.
#[derive(Default)]
struct SavedSet {
    /// Type and family (`hash:net family inet`); sizes and seeds left out.
    kind: String,
    entries: BTreeSet<String>,
}

fn saved_sets(text: &str) -> BTreeMap<String, SavedSet> {
    let mut sets: BTreeMap<String, SavedSet> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, kind, rest @ ..] => {
                let family = rest
                    .iter()
                    .position(|w| *w == "family")
                    .and_then(|i| rest.get(i + 1))
                    .map_or(String::new(), |f| format!(" family {f}"));
                sets.entry((*name).to_owned()).or_default().kind = format!("{kind}{family}");
            }
            ["add", name, entry, ..] => {
                sets.entry((*name).to_owned())
                    .or_default()
                    .entries
                    .insert((*entry).to_owned());
            }
            _ => {}
        }
    }
    sets
}

/// `isdfa-hosts`, `isdf-hosts` (older agents) -> `@hosts`.
fn set_alias(name: &str) -> String {
    let bare = ["isdfa-", "isdfb-", "isdf-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    format!("@{bare}")
}

/// The set names a rule spec uses (`--match-set <name> <dirs>`).
fn sets_of(spec: &str) -> Vec<String> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "--match-set")
        .map(|w| w[1].to_owned())
        .collect()
}

fn iptables_effective(saves: &[String; 2], sets: &BTreeMap<String, SavedSet>) -> String {
    let mut out = Vec::new();
    let mut used = BTreeSet::new();
    for (family, save) in ["v4", "v6"].into_iter().zip(saves) {
        let chains = saved_chains(save);
        for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
            let mut rules = Vec::new();
            walk(&chains, sets, builtin, &mut rules, &mut used, 0);
            out.push(format!("{family} {builtin}: {} rules", rules.len()));
            out.extend(rules.into_iter().map(|r| format!("  {r}")));
        }
    }
    for name in used {
        let alias = set_alias(&name);
        match sets.get(&name) {
            Some(set) => {
                out.push(format!("set {alias} {}", set.kind));
                out.extend(set.entries.iter().map(|e| format!("  {e}")));
            }
            None => out.push(format!("set {alias} missing")),
        }
    }
    out.join("\n")
}

/// Appends the rules a packet in `chain` goes through in our chains.
fn walk(
    chains: &BTreeMap<String, Vec<String>>,
    sets: &BTreeMap<String, SavedSet>,
    chain: &str,
    rules: &mut Vec<String>,
    used: &mut BTreeSet<String>,
    depth: usize,
) {
    assert!(depth < 8, "jump loop through {chain}");
    for spec in chains.get(chain).into_iter().flatten() {
        let target = spec
            .split_whitespace()
            .skip_while(|w| *w != "-j")
            .nth(1)
            .unwrap_or("");
        if target.starts_with("ISDF") {
            let guards = sets_of(spec);
            let switched_off = guards.iter().any(|g| {
                sets.get(g)
                    .is_some_and(|s| s.kind.starts_with("list:set") && s.entries.is_empty())
            });
            if !switched_off {
                walk(chains, sets, target, rules, used, depth + 1);
            }
            continue;
        }
        if !chain.starts_with("ISDF") {
            continue;
        }
        let mut line = spec.clone();
        for name in sets_of(spec) {
            line = line.replace(&format!(" {name} "), &format!(" {} ", set_alias(&name)));
            used.insert(name);
        }
        rules.push(line);
    }
}

fn iptables_full(saves: &[String; 2], sets: &BTreeMap<String, SavedSet>) -> String {
    // Which generation is live alternates between applies: name the live
    // one `a` so that two clean applies list alike.
    let b_live = sets
        .get("isdf_gen_b")
        .is_some_and(|s| !s.entries.is_empty());
    let canonical = |text: &str| -> String {
        if !b_live {
            return text.to_owned();
        }
        text.replace("ISDFA-", "ISDF#-")
            .replace("ISDFB-", "ISDFA-")
            .replace("ISDF#-", "ISDFB-")
            .replace("isdfa-", "isdf#-")
            .replace("isdfb-", "isdfa-")
            .replace("isdf#-", "isdfb-")
            .replace("isdf_gen_a", "isdf_gen_#")
            .replace("isdf_gen_b", "isdf_gen_a")
            .replace("isdf_gen_#", "isdf_gen_b")
    };
    let mut out = Vec::new();
    for (program, save) in ["iptables-save", "ip6tables-save"].into_iter().zip(saves) {
        let chains: BTreeMap<String, Vec<String>> = saved_chains(save)
            .into_iter()
            .map(|(chain, rules)| {
                let mut rules: Vec<String> = rules.iter().map(|r| canonical(r)).collect();
                // An entry chain's two rules name both generations: their
                // order follows the letters, not which one is live.
                if chain.starts_with("ISDF-") {
                    rules.sort();
                }
                (canonical(&chain), rules)
            })
            .collect();
        for (chain, rules) in chains {
            out.push(format!("{program} :{chain}"));
            out.extend(rules.into_iter().map(|r| format!("  {r}")));
        }
    }
    let sets: BTreeMap<String, &SavedSet> = sets
        .iter()
        .map(|(name, set)| (canonical(name), set))
        .collect();
    for (name, set) in sets {
        out.push(format!("set {name} {}", set.kind));
        out.extend(set.entries.iter().map(|e| format!("  {}", canonical(e))));
    }
    out.join("\n")
}
