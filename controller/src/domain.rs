//! Domain types that parse, not validate: labels, label selectors, names and
//! service specs. A value of these types is always valid.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use isdf_api::{Family, FlowPattern, PortRange, Prefix, Protocol};

const MAX_LABEL_PART: usize = 63;

fn is_label_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LABEL_PART
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Device labels: up to 64 `key: value` pairs of `[A-Za-z0-9._/-]{1,63}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(value_type = BTreeMap<String, String>)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub const MAX: usize = 64;

    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, String> {
        if map.len() > Self::MAX {
            return Err(format!("at most {} labels", Self::MAX));
        }
        for (k, v) in &map {
            if !is_label_text(k) {
                return Err(format!(
                    "label key `{k}` must be 1-63 of A-Z a-z 0-9 . _ - /"
                ));
            }
            if !is_label_text(v) {
                return Err(format!(
                    "label value `{v}` of `{k}` must be 1-63 of A-Z a-z 0-9 . _ - /"
                ));
            }
        }
        Ok(Labels(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Labels from literal pairs, for tests.
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Labels::parse(map).expect("valid test labels")
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Labels::parse(BTreeMap::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A Kubernetes-style label selector: comma-separated requirements, all of
/// which must hold: `env=prod`, `tier!=lab`, `region in (eu,us)`,
/// `region notin (ap)`, `beta` (has the label), `!beta`. `*` selects every
/// device; an empty selector is refused so nobody selects the fleet by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    requirements: Vec<Requirement>,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("empty selector; use `*` to select every device".into());
        }
        if trimmed == "*" {
            return Ok(Selector {
                text: "*".into(),
                requirements: vec![],
            });
        }
        let mut requirements = Vec::new();
        for part in split_top_level(trimmed)? {
            requirements.push(parse_requirement(part.trim())?);
        }
        Ok(Selector {
            text: trimmed.to_owned(),
            requirements,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => labels.get(k).is_some(),
            Requirement::NotExists(k) => labels.get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in selector `{text}`"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in selector `{text}`"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn label_part(text: &str, what: &str) -> Result<String, String> {
    let t = text.trim();
    if is_label_text(t) {
        Ok(t.to_owned())
    } else {
        Err(format!("`{t}` is not a valid label {what}"))
    }
}

fn parse_set_requirement(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected `(a,b,...)` after in/notin, found `{rest}`"))?;
    inner.split(',').map(|v| label_part(v, "value")).collect()
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if part.is_empty() {
        return Err("empty requirement in selector".into());
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            label_part(k, "key")?,
            label_part(v, "value")?,
        ));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            label_part(k, "key")?,
            label_part(v, "value")?,
        ));
    }
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(label_part(key, "key")?));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Requirement::Exists(label_part(key, "key")?)),
        Some(rest) if rest.starts_with("notin") => Ok(Requirement::NotIn(
            label_part(key, "key")?,
            parse_set_requirement(&rest["notin".len()..])?,
        )),
        Some(rest) if rest.starts_with("in") => Ok(Requirement::In(
            label_part(key, "key")?,
            parse_set_requirement(&rest["in".len()..])?,
        )),
        Some(_) => Err(format!("cannot parse selector requirement `{part}`")),
    }
}

/// What an operator token may do. Each role includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but operator tokens.
    Viewer,
    /// Also changes devices, services and assignments.
    Operator,
    /// Also manages operator tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Service kinds the controller knows how to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    FlowBlock,
    BittorrentBlock,
    PayPerSite,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::FlowBlock => "flow-block",
            ServiceKind::BittorrentBlock => "bittorrent-block",
            ServiceKind::PayPerSite => "pay-per-site",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "flow-block" => Some(ServiceKind::FlowBlock),
            "bittorrent-block" => Some(ServiceKind::BittorrentBlock),
            "pay-per-site" => Some(ServiceKind::PayPerSite),
            _ => None,
        }
    }
}

/// A validated service spec of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSpec {
    FlowBlock(FlowBlockSpec),
    BittorrentBlock(BittorrentBlockSpec),
    PayPerSite(PayPerSiteSpec),
}

impl ServiceSpec {
    /// Parses a spec for `kind`, refusing unknown fields and invalid values.
    pub fn parse(kind: ServiceKind, spec: &serde_json::Value) -> Result<Self, String> {
        match kind {
            ServiceKind::FlowBlock => {
                let spec: FlowBlockSpec =
                    serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
                spec.check()?;
                Ok(ServiceSpec::FlowBlock(spec))
            }
            ServiceKind::BittorrentBlock => {
                let spec: BittorrentBlockSpec =
                    serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
                spec.check()?;
                Ok(ServiceSpec::BittorrentBlock(spec))
            }
            ServiceKind::PayPerSite => {
                let spec: PayPerSiteSpec =
                    serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
                spec.check()?;
                Ok(ServiceSpec::PayPerSite(spec))
            }
        }
    }
}

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

/// `bittorrent-block`: the router drops BitTorrent traffic it recognises
/// by fixed-offset payload signatures, in the kernel, and blocks both
/// endpoints of the offending packet (the peer, and the client's port) for
/// `block_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BittorrentBlockSpec {
    /// How long a detected endpoint stays blocked: 1 s to 30 days (default 1 h).
    #[serde(default = "default_bittorrent_block_secs")]
    pub block_secs: u32,
}

fn default_bittorrent_block_secs() -> u32 {
    3600
}

impl BittorrentBlockSpec {
    pub const MAX_BLOCK_SECS: u32 = 30 * 24 * 3600;

    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_BLOCK_SECS).contains(&self.block_secs) {
            return Err(format!("block_secs must be 1 to {}", Self::MAX_BLOCK_SECS));
        }
        Ok(())
    }
}

/// `pay-per-site`: the sites of a catalog are gated on the router until the
/// household holds a pass (see `pay_per_site.rs`).
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

/// A name for a device or service: 1-64 of `A-Za-z0-9._-`.
pub fn parse_name(text: &str, what: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{what} name `{text}` must be 1-64 of A-Z a-z 0-9 . _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let l = labels(&[("env", "prod"), ("region", "eu")]);
        let yes = [
            "*",
            "env=prod",
            "env==prod",
            "env",
            "!beta",
            "region in (eu, us)",
            "region notin (ap)",
            "env=prod,region!=us",
            "tier!=lab",
        ];
        let no = [
            "env=lab",
            "!env",
            "beta",
            "region in (ap)",
            "region notin (eu)",
            "env=prod,region=us",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s}");
        }
        for s in no {
            assert!(!Selector::parse(s).unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for s in [
            "", " ", "env=", "=prod", "env=a b", "x in eu", "x in (eu", "a,,b", "k=v;rm",
        ] {
            assert!(Selector::parse(s).is_err(), "{s:?}");
        }
    }

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

    proptest::proptest! {
        #[test]
        fn selector_parser_never_panics(text in ".{0,40}") {
            let _ = Selector::parse(&text);
        }
    }
}
