//! DNS primitives: domain patterns, the DNS policy the router's resolver
//! enforces (answers that fill kernel sets, capped TTLs, local answers), and
//! the portal redirect the router serves for gated HTTP requests.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::name::SetName;

/// A domain and every name under it, as dnsmasq matches: `example.com`
/// covers `example.com`, `www.example.com` and `a.b.example.com`. The
/// spelling `*.example.com` is accepted and means the same (dnsmasq cannot
/// match the names under a domain without the domain itself); it is kept as
/// written.
///
/// Lowercase ASCII (international names in their `xn--` form), labels of 1 to
/// 63 letters, digits and inner hyphens, at least two labels, the last not
/// numeric, at most 253 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DomainPattern(String);

impl DomainPattern {
    pub const MAX_LEN: usize = 253;

    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.strip_prefix("*.").unwrap_or(text);
        let bad = |why: &str| Err(format!("`{text}` is not a domain: {why}"));
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return bad("1 to 253 bytes");
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return bad("it needs at least two labels, like example.com");
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return bad("every label has 1 to 63 characters");
            }
            if !label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return bad("labels are lowercase a-z, 0-9 and `-` (`*.` only in front)");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label cannot start or end with `-`");
            }
        }
        if labels
            .last()
            .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return bad("the last label is not numeric (addresses are not domains)");
        }
        Ok(DomainPattern(text.to_owned()))
    }

    /// The pattern as written (`*.example.com` or `example.com`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain without a `*.` in front: what dnsmasq is given.
    pub fn domain(&self) -> &str {
        self.0.strip_prefix("*.").unwrap_or(&self.0)
    }

    /// Whether `name` (lowercase, no trailing dot) is this domain or under it.
    pub fn covers(&self, name: &str) -> bool {
        let domain = self.domain();
        name == domain
            || (name.len() > domain.len()
                && name.ends_with(domain)
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
    }

    /// Whether some name is covered by both patterns: one covers the other.
    pub fn overlaps(&self, other: &DomainPattern) -> bool {
        self.covers(other.domain()) || other.covers(self.domain())
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DomainPattern::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What the router's resolver does besides answering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPolicy {
    /// Answers handed to LAN clients live at most this long (1 s to 1 day),
    /// so clients ask again soon and the sets stay current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_secs: Option<u32>,
    /// Addresses in answers for these domains are added to kernel sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fill_sets: Vec<DnsSetFill>,
    /// Names the router answers itself, without asking upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_answers: Vec<LocalAnswer>,
}

/// Answers for `domains` add their IPv4 addresses to `ipv4_set` and their
/// IPv6 addresses to `ipv6_set` (address sets of the firewall). Such sets are
/// "filled by DNS": the agent keeps what the resolver added when it replaces
/// the ruleset, and their config elements must be single addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSetFill {
    pub domains: Vec<DomainPattern>,
    pub ipv4_set: SetName,
    pub ipv6_set: SetName,
}

/// A name the router answers itself: with these addresses, or NXDOMAIN when
/// there are none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalAnswer {
    pub domain: DomainPattern,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

/// The router's answer to gated HTTP requests (`portal` rules): a redirect
/// to the URL of the site the request's Host names, else to `default_url`.
/// The URLs come from the signed config, so a LAN host cannot make the
/// router name another router or site. `port`: where agents before 0.2.0
/// listen for the requests a `redirect` rule sends them (the controller
/// compiles that form for them); later agents answer from the packet path
/// and listen on no port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalRedirect {
    pub port: u16,
    pub default_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<PortalSite>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSite {
    pub domains: Vec<DomainPattern>,
    pub url: String,
}

impl PortalRedirect {
    /// The URL to send a request for `host` (a Host header, port allowed) to.
    pub fn url_for(&self, host: &str) -> &str {
        let name = host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.sites
            .iter()
            .find(|s| s.domains.iter().any(|d| d.covers(&name)))
            .map_or(&self.default_url, |s| &s.url)
    }
}

/// Text made safe for HTML text and attribute values: the portal pages of
/// both the router (its redirect body) and the controller show URLs and
/// operator-written names.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Checks a URL the router hands out: http(s), printable ASCII, bounded.
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let chars_ok = url.bytes().all(|b| b.is_ascii_graphic());
    if !scheme_ok || !chars_ok || url.len() > 2048 {
        return Err(format!(
            "`{url}` is not an http(s) URL of printable ASCII up to 2048 bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> DomainPattern {
        DomainPattern::parse(text).unwrap()
    }

    #[test]
    fn domains_parse_strictly() {
        for good in [
            "example.com",
            "*.example.com",
            "a-b.c0.xn--p1ai",
            "x.y.z.test",
        ] {
            assert!(DomainPattern::parse(good).is_ok(), "{good}");
        }
        let long = format!("{}.com", "a".repeat(64));
        for bad in [
            "",
            "com",
            "Example.com",
            "exa mple.com",
            "-a.com",
            "a-.com",
            "a..com",
            ".a.com",
            "a.com.",
            "*a.com",
            "a.*.com",
            "192.0.2.1",
            "a_b.com",
            "**.a.com",
            &long,
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_domain_covers_itself_and_names_under_it() {
        let p = d("video.test");
        assert!(p.covers("video.test"));
        assert!(p.covers("www.video.test"));
        assert!(!p.covers("othervideo.test"));
        assert!(!p.covers("test"));
        assert_eq!(d("*.video.test").domain(), "video.test");
        assert!(d("*.video.test").covers("video.test"));
    }

    #[test]
    fn overlap_is_one_covering_the_other() {
        assert!(d("video.test").overlaps(&d("cdn.video.test")));
        assert!(d("cdn.video.test").overlaps(&d("*.video.test")));
        assert!(!d("video.test").overlaps(&d("audio.test")));
        assert!(!d("video.test").overlaps(&d("myvideo.test")));
    }

    #[test]
    fn the_portal_picks_the_site_the_host_names() {
        let portal = PortalRedirect {
            port: 8042,
            default_url: "https://portal/".into(),
            sites: vec![PortalSite {
                domains: vec![d("video.test")],
                url: "https://portal/p/1".into(),
            }],
        };
        assert_eq!(portal.url_for("www.video.test"), "https://portal/p/1");
        assert_eq!(portal.url_for("Video.Test:80"), "https://portal/p/1");
        assert_eq!(portal.url_for("video.test."), "https://portal/p/1");
        assert_eq!(portal.url_for("other.test"), "https://portal/");
        assert_eq!(portal.url_for("[2001:db8::1]:80"), "https://portal/");
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://portal.example/p/1?sig=abc").is_ok());
        for bad in [
            "ftp://x",
            "https://a b",
            "javascript:alert(1)",
            "https://x\r\nSet-Cookie: a",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
    }
}
