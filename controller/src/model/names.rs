//! Names and references, parsed rather than validated: machine names of
//! devices, services and tokens, names people read (households, sites,
//! VPNs), and ids given by other systems.

use std::fmt;

use serde::Serialize;

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

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Longest reference from another system (a billing id, a payment id), in bytes.
pub const MAX_REFERENCE: usize = 200;

/// A name people read (a site, a household): 1 to 100 characters, no control
/// characters, no spaces around it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(text: &str, what: &str) -> Result<Self, String> {
        let length = text.chars().count();
        if length == 0 || length > MAX_DISPLAY_NAME {
            return Err(format!(
                "{what} name `{text}` must have 1 to {MAX_DISPLAY_NAME} characters"
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(format!(
                "{what} name {text:?} must be printable (no control characters)"
            ));
        }
        if text.trim() != text {
            return Err(format!(
                "{what} name `{text}` must not start or end with spaces"
            ));
        }
        Ok(DisplayName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An id given by another system (a billing system's customer id, a payment
/// provider's payment id): 1 to 200 bytes of printable ASCII without spaces.
pub fn parse_reference(text: &str, what: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_REFERENCE || !text.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "{what} {text:?} must be 1 to {MAX_REFERENCE} printable ASCII characters without spaces"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_and_references() {
        assert!(DisplayName::parse("Café Olé 24/7", "site").is_ok());
        assert!(DisplayName::parse("", "site").is_err());
        assert!(DisplayName::parse(" padded", "site").is_err());
        assert!(DisplayName::parse("tab\there", "site").is_err());
        assert!(DisplayName::parse(&"x".repeat(101), "site").is_err());
        assert!(DisplayName::parse(&"é".repeat(100), "site").is_ok());
        assert!(parse_reference("cus_123", "external_ref").is_ok());
        assert!(parse_reference("has space", "external_ref").is_err());
        assert!(parse_reference("", "external_ref").is_err());
    }
}
