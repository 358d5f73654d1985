//! Names of sets and rules, safe to place in a firewall script as they are.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A name for a set or rule: lowercase ASCII, digits, `_` and `-`, starting
/// with a letter, at most 24 bytes. Safe to place in an nft or ipset script,
/// and short enough for ipset's 31-byte set names with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 24;

    pub fn parse(text: &str) -> Result<Self, String> {
        let ok_first = text.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        let ok_rest = text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok_first || !ok_rest || text.len() > Self::MAX_LEN {
            return Err(format!(
                "`{text}` is not a valid name (a lowercase letter, then up to {} of a-z 0-9 _ -)",
                Self::MAX_LEN - 1
            ));
        }
        Ok(Name(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

pub type SetName = Name;
pub type RuleId = Name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_script_safe() {
        assert!(Name::parse("flow_drop_v4").is_ok());
        for bad in ["", "1abc", "Abc", "a b", "a;b", "a\"", &"a".repeat(25)] {
            assert!(Name::parse(bad).is_err(), "{bad:?}");
        }
    }
}
