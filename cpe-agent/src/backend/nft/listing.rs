//! What the kernel shows (`nft -j` listings), read back and compared with
//! the plan: the table's shape (set names, per chain the rule comments in
//! order) for verification, the rule counters, the endpoints the kernel's
//! signatures remembered, and what the resolver added to DNS-filled sets.
//! Pure parsing and comparison; `apply.rs` runs `nft`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::Context;
use isdf_api::{Chain, Firewall, Protocol, RuleCounter};

use super::plan::{chains_with_rules, in_force, planned_chains, PlanInputs, EARLY_CHAIN_INFIX};
use super::sets::{layout, CarriedElement, CONFIG_ELEMENT_COMMENT};
use super::tunnels::{tunnel_set_name, tunnels};
use crate::backend::LearnedEndpoint;

/// What `nft -t -j list table inet isdf` shows: set names and, per chain,
/// rule comments in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) sets: Vec<String>,
    pub(super) chains: BTreeMap<String, Vec<String>>,
}

/// The shape `plan_with(firewall, now_ms, inputs)` gives the table.
pub(super) fn expected_shape(
    firewall: &Firewall,
    now_ms: i64,
    inputs: &PlanInputs,
) -> anyhow::Result<Shape> {
    let layout = layout(firewall, &inputs.carried);
    let mut sets: Vec<String> = layout.values().flatten().map(|k| k.name.clone()).collect();
    for index in 0..tunnels(firewall).len() {
        for what in ["remote", "vpn"] {
            sets.extend([false, true].map(|v6| tunnel_set_name(index, what, v6)));
        }
    }
    sets.sort();
    let chains = chains_with_rules(firewall, now_ms, &layout, inputs)?
        .into_iter()
        .map(|chain| {
            let comments = chain.rules.into_iter().map(|r| r.comment).collect();
            (chain.name, comments)
        })
        .collect();
    Ok(Shape { sets, chains })
}

/// `listed` without the rules of `firewall` whose `until` has come by
/// `now_ms`, and without a `prerouting` chain or a run of early-packet
/// rules left empty by that (with the jump to the run): the plan applied
/// before `until` still has them, and the kernel no longer matches them,
/// until the re-apply at `until` tidies them away.
pub(super) fn without_ended_rules(mut listed: Shape, firewall: &Firewall, now_ms: i64) -> Shape {
    let ended: BTreeSet<&str> = firewall
        .rules
        .iter()
        .filter(|r| !in_force(r, now_ms))
        .map(|r| r.id.as_str())
        .collect();
    for comments in listed.chains.values_mut() {
        comments.retain(|c| !ended.contains(c.as_str()));
    }
    let emptied_runs: BTreeSet<String> = listed
        .chains
        .iter()
        .filter(|(name, rules)| name.contains(EARLY_CHAIN_INFIX) && rules.is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    for run in &emptied_runs {
        listed.chains.remove(run);
    }
    for comments in listed.chains.values_mut() {
        comments.retain(|c| !emptied_runs.contains(c));
    }
    let prerouting = Chain::Prerouting.name();
    if listed.chains.get(prerouting).is_some_and(Vec::is_empty)
        && !planned_chains(firewall, now_ms).contains(&Chain::Prerouting)
    {
        listed.chains.remove(prerouting);
    }
    listed
}

pub(super) fn listed_shape(json: &serde_json::Value) -> anyhow::Result<(Shape, Vec<RuleCounter>)> {
    let items = json["nftables"]
        .as_array()
        .context("nft -j output has no `nftables` array")?;
    let mut shape = Shape::default();
    let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            shape
                .sets
                .push(set["name"].as_str().context("set without name")?.to_owned());
        } else if let Some(chain) = item.get("chain") {
            let name = chain["name"].as_str().context("chain without name")?;
            shape.chains.entry(name.to_owned()).or_default();
        } else if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().context("rule without chain")?;
            let comment = rule["comment"].as_str().unwrap_or("").to_owned();
            if let Some(counter) = rule["expr"]
                .as_array()
                .and_then(|exprs| exprs.iter().find_map(|e| e.get("counter")))
            {
                let entry = counters.entry(comment.clone()).or_default();
                entry.0 += counter["packets"].as_u64().unwrap_or(0);
                entry.1 += counter["bytes"].as_u64().unwrap_or(0);
            }
            shape
                .chains
                .entry(chain.to_owned())
                .or_default()
                .push(comment);
        }
    }
    shape.sets.sort();
    let counters = counters
        .into_iter()
        .filter(|(id, _)| !id.is_empty())
        .map(|(rule_id, (packets, bytes))| RuleCounter {
            rule_id,
            packets,
            bytes,
        })
        .collect();
    Ok((shape, counters))
}

/// Parses `nft -j` output. From bytes, as `isdf_api` reads JSON values (the
/// root chain): a second deserializer, for text, would add some kB to the
/// small binary.
pub(super) fn parse_json(out: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(out.as_bytes()).context("parsing nft -j output")
}

/// The elements of one listed endpoint set (`nft -j list set`): each is
/// `{"elem": {"val": {"concat": [addr, proto, port]}, "expires": secs}}`.
pub(super) fn parse_endpoints(set: &str, json: &serde_json::Value) -> Vec<LearnedEndpoint> {
    let elements = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten();
    elements
        .filter_map(|e| {
            let concat = e["elem"]["val"]["concat"].as_array()?;
            let addr = concat.first()?.as_str()?.parse().ok()?;
            let protocol = match &concat.get(1)? {
                serde_json::Value::String(name) if name == "tcp" => Protocol::Tcp,
                serde_json::Value::String(name) if name == "udp" => Protocol::Udp,
                serde_json::Value::Number(n) if n.as_u64() == Some(6) => Protocol::Tcp,
                serde_json::Value::Number(n) if n.as_u64() == Some(17) => Protocol::Udp,
                _ => return None,
            };
            let port = u16::try_from(concat.get(2)?.as_u64()?).ok()?;
            let expires_secs = e["elem"]["expires"].as_u64().unwrap_or(0);
            Some(LearnedEndpoint {
                set: set.to_owned(),
                endpoint: isdf_api::Endpoint {
                    addr,
                    protocol,
                    port,
                },
                remaining_ms: expires_secs * 1000,
            })
        })
        .collect()
}

/// What the resolver added to a DNS-filled set, from its listing (`nft -j
/// list set`), if the kernel set is one the planner makes for a set DNS
/// fills (a hash set of `type_expr`); anything else carries nothing.
/// Elements look like `"192.0.2.1"` (no timeout) or `{"elem": {"val":
/// "192.0.2.1", "timeout": 60, "expires": 42, "comment": ...}}`; those with
/// the config's comment are the config's own and are not carried.
pub(super) fn parse_carried(json: &serde_json::Value, type_expr: &str) -> Vec<CarriedElement> {
    let sets = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("set"));
    let mut carried = Vec::new();
    for set in sets {
        let interval = set["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "interval"));
        if set["type"] != type_expr || interval {
            continue;
        }
        for element in set["elem"].as_array().into_iter().flatten() {
            let (value, detail) = match element.get("elem") {
                Some(detail) => (&detail["val"], Some(detail)),
                None => (element, None),
            };
            let Some(addr) = value.as_str().and_then(|v| v.parse::<IpAddr>().ok()) else {
                continue;
            };
            if detail.is_some_and(|d| d["comment"] == CONFIG_ELEMENT_COMMENT) {
                continue;
            }
            // The listing counts whole seconds left (rounded down): an
            // element with less than a second left is left to expire.
            let remaining_ms = detail
                .filter(|d| d.get("timeout").is_some() || d.get("expires").is_some())
                .map(|d| {
                    let secs = d["expires"].as_u64().or(d["timeout"].as_u64());
                    secs.unwrap_or(0).saturating_mul(1000)
                });
            if remaining_ms == Some(0) {
                continue;
            }
            carried.push(CarriedElement { addr, remaining_ms });
        }
    }
    carried
}
