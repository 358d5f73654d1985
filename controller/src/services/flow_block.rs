//! The `flow-block` service: its spec (drop or reject the flows matching
//! patterns, optionally for a duration) and its compilation (pure) to flow
//! sets with per-element expiries and one rule per set. Operator blocks on
//! one router join the same sets.

use std::collections::BTreeMap;

use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, Match, PortRange, Prefix, Protocol,
    Rule, Set, SetElement, SetKey, SetName,
};
use serde::{Deserialize, Serialize};

/// `flow-block`: drop or reject traffic matching flow patterns, optionally
/// only for a duration counted from the assignment's creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowBlockSpec {
    #[serde(default)]
    pub action: BlockAction,
    pub flows: Vec<FlowSpec>,
    /// Seconds the block lasts after assignment (1 s to 365 days); absent: until unassigned.
    #[serde(default)]
    pub duration_secs: Option<u64>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    #[default]
    Drop,
    Reject,
}

/// One flow to block; absent fields mean "any".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "tcp")]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "192.0.2.0/24")]
    pub src: Option<Prefix>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "1024-65535")]
    pub sport: Option<PortRange>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "198.51.100.2")]
    pub dst: Option<Prefix>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "9000")]
    pub dport: Option<PortRange>,
}

impl FlowSpec {
    /// The concrete patterns this spec stands for: one per family it can
    /// apply to (a spec naming no address applies to IPv4 and IPv6).
    pub fn patterns(&self) -> Result<Vec<FlowPattern>, String> {
        let families: Vec<Family> =
            match (self.src, self.dst, self.protocol.and_then(Protocol::family)) {
                (Some(a), Some(b), _) if a.family() != b.family() => {
                    return Err(format!("flow mixes families: src {a} and dst {b}"))
                }
                (Some(a), _, _) | (_, Some(a), _) => vec![a.family()],
                (None, None, Some(f)) => vec![f],
                (None, None, None) => vec![Family::Ipv4, Family::Ipv6],
            };
        families
            .into_iter()
            .map(|family| {
                let pattern = FlowPattern {
                    protocol: self.protocol,
                    src: self.src.unwrap_or(family.any()),
                    sport: self.sport.unwrap_or(PortRange::ANY),
                    dst: self.dst.unwrap_or(family.any()),
                    dport: self.dport.unwrap_or(PortRange::ANY),
                };
                pattern.check()?;
                Ok(pattern)
            })
            .collect()
    }
}

impl FlowBlockSpec {
    pub const MAX_FLOWS: usize = 10_000;
    pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;

    pub fn check(&self) -> Result<(), String> {
        if self.flows.is_empty() {
            return Err("`flows` must list at least one flow".into());
        }
        if self.flows.len() > Self::MAX_FLOWS {
            return Err(format!("at most {} flows per service", Self::MAX_FLOWS));
        }
        if let Some(d) = self.duration_secs {
            if d == 0 || d > Self::MAX_DURATION_SECS {
                return Err(format!(
                    "duration_secs must be 1 to {}",
                    Self::MAX_DURATION_SECS
                ));
            }
        }
        for (i, flow) in self.flows.iter().enumerate() {
            flow.patterns().map_err(|e| format!("flows[{i}]: {e}"))?;
        }
        Ok(())
    }
}

/// Flow patterns to block, by action and family, each with its expiry
/// (None: permanent). BTreeMap keys give a deterministic order, so equal
/// inputs give equal digests.
#[derive(Debug, Default)]
pub struct FlowBlocks(BTreeMap<(BlockAction, Family), BTreeMap<FlowPattern, Option<i64>>>);

impl FlowBlocks {
    /// Adds a `flow-block` spec assigned at `assigned_at` (left out when
    /// its duration ended by `now`).
    pub fn add_spec(&mut self, spec: &FlowBlockSpec, assigned_at: i64, now: i64) {
        let expires_at = spec
            .duration_secs
            .map(|d| assigned_at.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)));
        if expires_at.is_some_and(|e| e <= now) {
            return;
        }
        for flow in &spec.flows {
            // Specs are checked when stored, so every flow expands.
            for pattern in flow.patterns().unwrap_or_default() {
                self.add_pattern(spec.action, pattern, expires_at);
            }
        }
    }

    pub fn add_pattern(
        &mut self,
        action: BlockAction,
        pattern: FlowPattern,
        expires_at: Option<i64>,
    ) {
        let family = pattern.src.family();
        let entry = self
            .0
            .entry((action, family))
            .or_default()
            .entry(pattern)
            .or_insert(expires_at);
        // The same flow blocked twice: the longer block wins, and a permanent
        // one (None) beats any timed one.
        *entry = match (*entry, expires_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }

    /// One flow set and one rule per (action, family) that blocks anything.
    pub fn add_to(self, firewall: &mut Firewall) {
        for ((action, family), patterns) in self.0 {
            if patterns.is_empty() {
                continue;
            }
            let (set_name, rule_id) = flow_block_names(action, family);
            firewall.sets.push(Set {
                name: set_name.clone(),
                key: match family {
                    Family::Ipv4 => SetKey::Ipv4Flow,
                    Family::Ipv6 => SetKey::Ipv6Flow,
                },
                elements: patterns
                    .into_iter()
                    .map(|(pattern, expires_at)| SetElement {
                        value: ElementValue::Flow(pattern),
                        expires_at,
                    })
                    .collect(),
            });
            firewall.rules.push(Rule {
                id: rule_id,
                chain: Chain::Forward,
                matches: Match {
                    flow_in_set: Some(set_name),
                    ..Match::default()
                },
                action: match action {
                    BlockAction::Drop => Action::Drop,
                    BlockAction::Reject => Action::Reject,
                },
                add_endpoints_to: None,
            });
        }
    }
}

fn flow_block_names(action: BlockAction, family: Family) -> (SetName, SetName) {
    let action = match action {
        BlockAction::Drop => "drop",
        BlockAction::Reject => "reject",
    };
    let family = match family {
        Family::Ipv4 => "v4",
        Family::Ipv6 => "v6",
    };
    let set = SetName::parse(&format!("flow_{action}_{family}")).expect("fixed shape");
    let rule = SetName::parse(&format!("flow-{action}-{family}")).expect("fixed shape");
    (set, rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{ServiceKind, ServiceSpec};

    #[test]
    fn flow_specs_expand_to_families() {
        let spec: FlowSpec = serde_json::from_str(r#"{"protocol":"tcp","dport":"9000"}"#).unwrap();
        assert_eq!(spec.patterns().unwrap().len(), 2);
        let spec: FlowSpec = serde_json::from_str(r#"{"dst":"2001:db8::1"}"#).unwrap();
        assert_eq!(spec.patterns().unwrap()[0].src.to_string(), "::/0");
        let spec: FlowSpec = serde_json::from_str(r#"{"src":"10.0.0.0/8","dst":"::1"}"#).unwrap();
        assert!(spec.patterns().is_err());
        let spec: FlowSpec = serde_json::from_str(r#"{"dport":"80"}"#).unwrap();
        assert!(spec.patterns().is_err());
    }

    #[test]
    fn flow_block_specs_are_checked() {
        let parse =
            |j: &str| ServiceSpec::parse(ServiceKind::FlowBlock, &serde_json::from_str(j).unwrap());
        assert!(parse(r#"{"flows":[{"protocol":"tcp","dport":9000}]}"#).is_ok());
        assert!(parse(r#"{"flows":[]}"#).is_err());
        assert!(parse(r#"{"flows":[{"protocol":"tcp","dport":70000}]}"#).is_err());
        assert!(parse(r#"{"flows":[{"dst":"10.0.0.1/8"}]}"#).is_err());
        assert!(parse(r#"{"flows":[{}],"duration_secs":0}"#).is_err());
        assert!(parse(r#"{"flows":[{}],"extra":1}"#).is_err());
    }
}
