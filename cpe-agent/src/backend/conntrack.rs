//! Ending established flows that a new block covers.
//!
//! A block rule stops every later packet of a flow, but a router with flow
//! offloading forwards established flows past the filter hooks: only
//! deleting the connection tracking entry (which also drops its offloaded
//! copy) makes the next packet take the slow path and meet the block. The
//! entries are listed once per family and matched here, so port ranges and
//! prefixes work and a thousand new blocks cost two `conntrack -L`, not a
//! thousand processes.

use std::net::IpAddr;

use anyhow::Context;
use isdf_api::{Family, FlowPattern};

use crate::sys::processes;

/// Most entries deleted in one pass (one process each).
const MAX_DELETIONS: usize = 1024;

/// One connection tracking entry: the original and the reply direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub protocol: u8,
    pub original: Tuple,
    pub reply: Tuple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Entry {
    /// Whether a packet of this connection, either way, matches `pattern`.
    fn matches(&self, pattern: &FlowPattern) -> bool {
        [self.original, self.reply]
            .iter()
            .any(|t| pattern.matches(self.protocol, t.src, t.sport, t.dst, t.dport))
    }
}

/// Parses `conntrack -L` output (the default format): the first
/// `src= dst= sport= dport=` group is the original direction, the second the
/// reply. Lines it cannot read are skipped.
pub fn parse(listing: &str) -> Vec<Entry> {
    listing.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let _name = words.next()?;
    let protocol: u8 = words.next()?.parse().ok()?;
    let (mut src, mut dst, mut sport, mut dport) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "src" => src.push(value.parse::<IpAddr>().ok()?),
            "dst" => dst.push(value.parse::<IpAddr>().ok()?),
            "sport" => sport.push(value.parse::<u16>().ok()?),
            "dport" => dport.push(value.parse::<u16>().ok()?),
            _ => {}
        }
    }
    let tuple = |i: usize| {
        Some(Tuple {
            src: *src.get(i)?,
            dst: *dst.get(i)?,
            // Protocols without ports (ICMP) list none.
            sport: sport.get(i).copied().unwrap_or(0),
            dport: dport.get(i).copied().unwrap_or(0),
        })
    };
    Some(Entry {
        protocol,
        original: tuple(0)?,
        reply: tuple(1)?,
    })
}

/// The entries of `listing` that one of `patterns` covers.
pub fn covered<'a>(entries: &'a [Entry], patterns: &[&FlowPattern]) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| patterns.iter().any(|p| e.matches(p)))
        .collect()
}

/// Deletes the tracked connections `patterns` cover; returns how many.
pub fn end_flows(patterns: &[&FlowPattern]) -> anyhow::Result<usize> {
    let mut ended = 0;
    for family in [Family::Ipv4, Family::Ipv6] {
        let of_family: Vec<&FlowPattern> = patterns
            .iter()
            .copied()
            .filter(|p| p.src.family() == family)
            .collect();
        if of_family.is_empty() {
            continue;
        }
        let name = match family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        let listing = processes::run("conntrack", &["-L", "-f", name], "")
            .context("listing tracked connections")?;
        let entries = parse(&listing);
        for entry in covered(&entries, &of_family)
            .into_iter()
            .take(MAX_DELETIONS)
        {
            let t = entry.original;
            let (proto, src, dst) = (
                entry.protocol.to_string(),
                t.src.to_string(),
                t.dst.to_string(),
            );
            let (sport, dport) = (t.sport.to_string(), t.dport.to_string());
            let mut args = vec!["-D", "-f", name, "-p", &proto, "-s", &src, "-d", &dst];
            if matches!(entry.protocol, 6 | 17) {
                args.extend(["--sport", &sport, "--dport", &dport]);
            }
            // Gone meanwhile (it ended or timed out) is fine.
            if processes::run("conntrack", &args, "").is_ok() {
                ended += 1;
            }
        }
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=198.51.100.2 sport=40000 dport=22 src=198.51.100.2 dst=192.0.2.2 sport=22 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=192.0.2.2 dst=198.51.100.2 sport=5353 dport=6881 [UNREPLIED] src=198.51.100.2 dst=192.0.2.2 sport=6881 dport=5353 mark=0 use=1
icmp     1 29 src=192.0.2.2 dst=198.51.100.2 type=8 code=0 id=7 src=198.51.100.2 dst=192.0.2.2 type=0 code=0 id=7 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.
";

    fn pattern(json: serde_json::Value) -> FlowPattern {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn listings_parse_into_both_directions() {
        let entries = parse(LISTING);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].protocol, 6);
        assert_eq!(entries[0].original.dport, 22);
        assert_eq!(entries[0].reply.sport, 22);
        assert_eq!(entries[2].protocol, 1);
        assert_eq!(entries[2].original.sport, 0);
    }

    #[test]
    fn blocks_cover_connections_either_way_with_ranges_and_prefixes() {
        let entries = parse(LISTING);
        let ssh_from_lan = pattern(serde_json::json!(
            {"protocol": "tcp", "src": "192.0.2.0/24", "dst": "0.0.0.0/0", "dport": "20-30"}));
        let from_server = pattern(serde_json::json!(
            {"protocol": "tcp", "src": "198.51.100.2", "sport": 22, "dst": "0.0.0.0/0"}));
        let bt = pattern(serde_json::json!(
            {"protocol": "udp", "src": "0.0.0.0/0", "dst": "198.51.100.2", "dport": 6881}));
        let other = pattern(serde_json::json!(
            {"protocol": "tcp", "src": "0.0.0.0/0", "dst": "203.0.113.1"}));
        assert_eq!(covered(&entries, &[&ssh_from_lan]), vec![&entries[0]]);
        assert_eq!(covered(&entries, &[&from_server]), vec![&entries[0]]);
        assert_eq!(covered(&entries, &[&bt]), vec![&entries[1]]);
        assert!(covered(&entries, &[&other]).is_empty());
    }
}
