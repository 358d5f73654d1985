//! Device labels and Kubernetes-style label selectors, parsed rather than
//! validated: a value of these types is always valid.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
            Self::check_key(k)?;
            if !is_label_text(v) {
                return Err(format!(
                    "label value `{v}` of `{k}` must be 1-63 of A-Z a-z 0-9 . _ - /"
                ));
            }
        }
        Ok(Labels(map))
    }

    /// Checks a label key alone (e.g. one to remove).
    pub fn check_key(key: &str) -> Result<(), String> {
        if is_label_text(key) {
            Ok(())
        } else {
            Err(format!(
                "label key `{key}` must be 1-63 of A-Z a-z 0-9 . _ - /"
            ))
        }
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
    /// Longest selector text accepted, in bytes.
    pub const MAX_BYTES: usize = 4096;
    /// Most requirements in one selector (a device has at most
    /// [`Labels::MAX`] labels, so more could only repeat or contradict).
    pub const MAX_REQUIREMENTS: usize = Labels::MAX;
    /// Most values in all `in (...)` / `notin (...)` sets of one selector.
    pub const MAX_VALUES: usize = 512;

    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.len() > Self::MAX_BYTES {
            return Err(format!(
                "selector is {} bytes; at most {} are accepted",
                trimmed.len(),
                Self::MAX_BYTES
            ));
        }
        if trimmed.is_empty() {
            return Err("empty selector; use `*` to select every device".into());
        }
        if trimmed == "*" {
            return Ok(Selector {
                text: "*".into(),
                requirements: vec![],
            });
        }
        let parts = split_top_level(trimmed)?;
        if parts.len() > Self::MAX_REQUIREMENTS {
            return Err(format!(
                "selector has {} requirements; at most {} are accepted",
                parts.len(),
                Self::MAX_REQUIREMENTS
            ));
        }
        let requirements = parts
            .into_iter()
            .map(|part| parse_requirement(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let values: usize = requirements
            .iter()
            .map(|r| match r {
                Requirement::In(_, values) | Requirement::NotIn(_, values) => values.len(),
                _ => 0,
            })
            .sum();
        if values > Self::MAX_VALUES {
            return Err(format!(
                "selector lists {values} values in its sets; at most {} are accepted",
                Self::MAX_VALUES
            ));
        }
        Ok(Selector {
            text: trimmed.to_owned(),
            requirements,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The selector written one way: requirements sorted and deduplicated,
    /// `in` sets sorted, no spaces but after `in`/`notin`. Two selectors
    /// with the same normal form select the same routers.
    pub fn normal_form(&self) -> String {
        if self.requirements.is_empty() {
            return "*".to_owned();
        }
        let set = |values: &[String]| {
            let mut values = values.to_vec();
            values.sort();
            values.dedup();
            values.join(",")
        };
        let mut parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", set(vs)),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", set(vs)),
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        parts.sort();
        parts.dedup();
        parts.join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_written_differently_have_one_normal_form() {
        let normal = |text: &str| Selector::parse(text).unwrap().normal_form();
        assert_eq!(normal(" plan = basic "), "plan=basic");
        assert_eq!(
            normal("region in (us, eu),plan=basic,plan=basic"),
            "plan=basic,region in (eu,us)"
        );
        assert_eq!(normal("!beta, tier != lab"), "!beta,tier!=lab");
        assert_eq!(normal("*"), "*");
        for text in [
            "plan=basic,region in (eu,us)",
            "!beta,tier!=lab",
            "a notin (x)",
        ] {
            assert_eq!(normal(&normal(text)), normal(text), "stable: {text}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    #[test]
    fn oversized_selectors_are_refused_before_anything_is_built() {
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(Selector::parse(&many(Selector::MAX_REQUIREMENTS)).is_ok());
        let err = Selector::parse(&many(Selector::MAX_REQUIREMENTS + 1)).unwrap_err();
        assert!(err.contains("requirements; at most 64"), "{err}");
        let err = Selector::parse(&many(40_000)).unwrap_err();
        assert!(err.contains("bytes; at most 4096"), "{err}");
        let values = |n: usize| {
            (0..n)
                .map(|i| format!("v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let sets = format!("a in ({}),b notin ({})", values(256), values(257));
        let err = Selector::parse(&sets).unwrap_err();
        assert!(err.contains("513 values"), "{err}");
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

    proptest::proptest! {
        #[test]
        fn selector_parser_never_panics(text in ".{0,40}") {
            let _ = Selector::parse(&text);
        }
    }
}
