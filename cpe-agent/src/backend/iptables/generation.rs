//! The two generations that make an iptables apply atomic across both
//! families and every ipset, and the switch between them. Pure: names and
//! the scripts that build, switch and clear a generation.
//!
//! `iptables-restore` is atomic per table and family, and `ipset swap` per
//! pair of sets, but nothing spans IPv4 rules, IPv6 rules and the sets. So a
//! ruleset lives in one of two generations, `a` and `b`, each with its own
//! chains (`ISDFA-FORWARD`, ...) and sets (`isdfa-<name>`). The entry chains
//! the builtin chains jump to (`ISDF-FORWARD`, ...) hold, in both families,
//! the same two fixed rules:
//!
//! ```text
//! -A ISDF-FORWARD -m set --match-set isdf_gen_a src -j ISDFA-FORWARD
//! -A ISDF-FORWARD -m set --match-set isdf_gen_b src -j ISDFB-FORWARD
//! ```
//!
//! `isdf_gen_a` and `isdf_gen_b` are `list:set` ipsets: the live
//! generation's holds `isdf_all4` and `isdf_all6` (every IPv4 and every IPv6
//! address), the other is empty and matches nothing. An apply builds the
//! new ruleset in the generation that is not live (nothing reaches it), then
//! one `ipset swap isdf_gen_a isdf_gen_b`, a single kernel operation, moves
//! every packet of both families from the old generation to the new one.
//! The old generation is then cleared; leftovers of an interrupted apply
//! are cleared by the next one before it builds there.
//!
//! Everything a packet can reach is in a generation, so the switch moves
//! all of it: the anti-spoofing chain too (`ISDFA-ANTISPOOF`), jumped to
//! first from its own generation's `FORWARD` and `INPUT` chains (`plan.rs`).

use std::fmt::Write as _;

use isdf_api::Chain;

/// One of the two generations a ruleset is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Generation {
    A,
    B,
}

/// Holds every IPv4 address (`0.0.0.0/1` and `128.0.0.0/1`: `hash:net`
/// refuses `/0`).
pub(super) const ALL4: &str = "isdf_all4";
/// Holds every IPv6 address.
pub(super) const ALL6: &str = "isdf_all6";
/// Built full and swapped with the first generation's switch, when no
/// generation is live yet: turning it on is then one operation too.
pub(super) const SWITCH_NEW: &str = "isdf_gen_new";
/// Names of sets earlier agents made (`isdf-<name>`, temporaries
/// `isdf+<name>`): no rule of this one uses them, so they are destroyed.
pub(super) const LEGACY_PREFIXES: [&str; 2] = ["isdf-", "isdf+"];
/// The anti-spoofing chain of an agent before the generations, jumped to
/// from the entry chains it kept its rules in: rewriting those leaves it
/// unreached, and it is deleted in the same transaction.
pub(super) const LEGACY_ANTISPOOF_CHAIN: &str = "ISDF-ANTISPOOF";

impl Generation {
    pub const BOTH: [Generation; 2] = [Generation::A, Generation::B];

    pub fn other(self) -> Generation {
        match self {
            Generation::A => Generation::B,
            Generation::B => Generation::A,
        }
    }

    /// The `list:set` that turns this generation on when it is not empty.
    pub fn switch(self) -> &'static str {
        match self {
            Generation::A => "isdf_gen_a",
            Generation::B => "isdf_gen_b",
        }
    }

    /// The prefix of this generation's sets (the config's set name follows;
    /// at most 6 + 24 bytes, within ipset's 31).
    pub fn set_prefix(self) -> &'static str {
        match self {
            Generation::A => "isdfa-",
            Generation::B => "isdfb-",
        }
    }

    /// This generation's chain for a hook.
    pub fn chain(self, chain: Chain) -> &'static str {
        match (self, chain) {
            (Generation::A, Chain::Forward) => "ISDFA-FORWARD",
            (Generation::A, Chain::Input) => "ISDFA-INPUT",
            (Generation::A, Chain::Output) => "ISDFA-OUTPUT",
            (Generation::A, Chain::Prerouting) => "ISDFA-PREROUTING",
            (Generation::B, Chain::Forward) => "ISDFB-FORWARD",
            (Generation::B, Chain::Input) => "ISDFB-INPUT",
            (Generation::B, Chain::Output) => "ISDFB-OUTPUT",
            (Generation::B, Chain::Prerouting) => "ISDFB-PREROUTING",
        }
    }

    /// This generation's anti-spoofing chain (see `plan.rs`), jumped to
    /// from its `FORWARD` and `INPUT` chains.
    pub fn antispoof_chain(self) -> &'static str {
        match self {
            Generation::A => "ISDFA-ANTISPOOF",
            Generation::B => "ISDFB-ANTISPOOF",
        }
    }

    /// Every chain of this generation in the `filter` table, the
    /// anti-spoofing chain last (the others jump to it).
    pub(super) fn filter_chains(self) -> [&'static str; 4] {
        [
            self.chain(Chain::Forward),
            self.chain(Chain::Input),
            self.chain(Chain::Output),
            self.antispoof_chain(),
        ]
    }

    /// Whether `set` (a live ipset name) is one of this generation's.
    pub(super) fn owns_set(self, set: &str) -> bool {
        set.starts_with(self.set_prefix())
    }

    /// Which generation the live switch sets turn on: the one whose switch
    /// holds members. None before the first apply (or if someone emptied
    /// both: then nothing of ours matches and the next apply starts over).
    pub(super) fn live(entries_of: impl Fn(&str) -> Option<usize>) -> Option<Generation> {
        Generation::BOTH
            .into_iter()
            .find(|g| entries_of(g.switch()).is_some_and(|n| n > 0))
    }
}

/// The entry chain every builtin chain jumps to, for each hook.
pub(super) fn entry_chain(chain: Chain) -> &'static str {
    match chain {
        Chain::Forward => "ISDF-FORWARD",
        Chain::Input => "ISDF-INPUT",
        Chain::Output => "ISDF-OUTPUT",
        Chain::Prerouting => "ISDF-PREROUTING",
    }
}

/// Whether `name` is one of our chains: an entry chain, a generation's, or
/// an earlier agent's anti-spoofing chain.
pub(super) fn is_our_chain(name: &str) -> bool {
    name == LEGACY_ANTISPOOF_CHAIN
        || Generation::BOTH.iter().any(|g| g.antispoof_chain() == name)
        || Chain::ALL
            .iter()
            .any(|&c| entry_chain(c) == name || Generation::BOTH.iter().any(|g| g.chain(c) == name))
}

/// The two fixed rules of an entry chain, as `iptables-save` lists them.
pub(super) fn dispatch_rules(chain: Chain) -> [String; 2] {
    Generation::BOTH.map(|g| {
        format!(
            "-m set --match-set {} src -j {}",
            g.switch(),
            g.chain(chain)
        )
    })
}

/// `ipset restore` lines that make the switch sets and what they hold
/// exist (a no-op when they do), with `building`'s switch emptied: the
/// generation about to be built matches nothing.
pub(super) fn switch_sets_script(building: Generation) -> String {
    let mut s = String::new();
    for (set, family, halves) in [
        (ALL4, "inet", ["0.0.0.0/1", "128.0.0.0/1"]),
        (ALL6, "inet6", ["::/1", "8000::/1"]),
    ] {
        let _ = writeln!(s, "create {set} hash:net family {family} -exist");
        for half in halves {
            let _ = writeln!(s, "add {set} {half} -exist");
        }
    }
    for g in Generation::BOTH {
        let _ = writeln!(s, "create {} list:set -exist", g.switch());
    }
    let _ = writeln!(s, "flush {}", building.switch());
    s
}

/// How to make `building` the live generation when `live` was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Switch {
    /// `ipset swap isdf_gen_a isdf_gen_b`: the live switch's members go to
    /// the other one, which was empty, in one operation.
    Swap,
    /// No generation was live: an `ipset restore` script that fills a new
    /// switch set and swaps it with the (empty) switch of `building`, the
    /// one line that changes what packets see.
    TurnOn(String),
}

pub(super) fn switch(building: Generation, live: Option<Generation>) -> Switch {
    match live {
        Some(live) if live != building => Switch::Swap,
        _ => {
            let mut s = String::new();
            let _ = writeln!(s, "create {SWITCH_NEW} list:set -exist");
            let _ = writeln!(s, "flush {SWITCH_NEW}");
            let _ = writeln!(s, "add {SWITCH_NEW} {ALL4}");
            let _ = writeln!(s, "add {SWITCH_NEW} {ALL6}");
            let _ = writeln!(s, "swap {SWITCH_NEW} {}", building.switch());
            let _ = writeln!(s, "destroy {SWITCH_NEW}");
            Switch::TurnOn(s)
        }
    }
}

/// A restore script that empties `generation`'s chains (they stay, since
/// the entry chains name them), or None if they are absent or empty.
pub(super) fn clear_chains_script(
    generation: Generation,
    has_rules: impl Fn(&str) -> bool,
) -> Option<String> {
    let chains: Vec<&str> = generation
        .filter_chains()
        .into_iter()
        .filter(|c| has_rules(c))
        .collect();
    if chains.is_empty() {
        return None;
    }
    let mut s = String::from("*filter\n");
    for chain in chains {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Whether a live set is one the backend made but no rule uses while `live`
/// is the live generation: the other generation's, a leftover switch, and
/// (with `legacy`, once our entry chains have been rewritten) an earlier
/// agent's.
pub(super) fn is_stale_set(name: &str, live: Generation, legacy: bool) -> bool {
    live.other().owns_set(name)
        || name == SWITCH_NEW
        || (legacy && LEGACY_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// Whether a live set is the backend's at all (for uninstalling).
pub(super) fn is_our_set(name: &str) -> bool {
    name.starts_with("isdf")
}
