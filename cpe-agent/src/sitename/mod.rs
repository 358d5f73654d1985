//! The site name a flow carries in its own first bytes, whatever the DNS
//! said: the TLS ClientHello's server name (TCP, `tls.rs`), the HTTP
//! request's host (TCP, `http.rs`), and the server name inside a QUIC
//! Initial packet (UDP, `quic.rs`, which removes the Initial protection as
//! RFC 9001 lets any on-path observer do). Pay-per-site gates on these
//! (issue 21): a customer who reaches a gated site by a hard-coded address,
//! or through a resolver the router does not see, still names the site to
//! the server, and so to the router.
//!
//! **Pure, and bounded**: bytes in, a [`Sighting`] out; no I/O, no clock;
//! every length is checked before it is used, and nothing grows with the
//! input beyond the caps the callers set (a malformed or hostile flow is
//! [`Sighting::Other`] or [`Sighting::Nameless`], never a panic).
//!
//! What these cannot see: a ClientHello with Encrypted Client Hello (ECH)
//! carries the real name encrypted; only the outer, public name shows, and
//! the sighting says so (`ech`). See docs/security.md.

pub mod flows;
pub mod http;
pub mod quic;
pub mod samples;
pub mod tls;

/// What a flow's first bytes say of the site it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// The name the client asked the server for: lower case, without a
    /// port or a trailing dot. `ech`: the ClientHello offered Encrypted
    /// Client Hello, so this is its outer (public) name and the real one
    /// is hidden.
    Name { name: String, ech: bool },
    /// The protocol, complete as far as it matters, but no name in it
    /// (TLS without SNI, HTTP/1.0 without `Host`).
    Nameless { ech: bool },
    /// The protocol so far, cut before the name: more bytes may tell.
    Incomplete,
    /// Not this protocol, or malformed.
    Other,
}

/// The longest DNS name (RFC 1035), and so the longest name kept.
pub const MAX_NAME: usize = 253;

/// A host name as the gate compares it: lower case, no trailing dot; None
/// for anything that is no DNS name (empty, too long, other characters).
pub fn normalise(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > MAX_NAME {
        return None;
    }
    let valid = raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let empty_label =
        raw.starts_with(b".") || raw.ends_with(b".") || raw.windows(2).any(|w| w == b"..");
    if !valid || empty_label {
        return None;
    }
    Some(raw.iter().map(|b| b.to_ascii_lowercase() as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(
            normalise(b"Video.Example.COM.").as_deref(),
            Some("video.example.com")
        );
        assert_eq!(
            normalise(b"xn--bcher-kva.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        // Found by the fuzz target `sitename`: `a..` kept a trailing dot.
        for bad in [
            &b""[..],
            b".",
            b"a..",
            b"a..b",
            b".a",
            b"a b",
            b"a/b",
            b"a\0b",
            &[b'a'; 254],
        ] {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
    }
}
