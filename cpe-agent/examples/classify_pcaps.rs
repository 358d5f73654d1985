//! Runs the BitTorrent classifier over every pcap file of a directory and
//! prints, per file, the flows it flags and why, as JSON, for comparison
//! with nDPI's `ndpiReader` on the same captures.
//!
//! Each file gets a fresh classifier, fed the way the router feeds it: the
//! kernel queues only the first N packets of each conntrack flow (nft
//! `ct packets 1-N`, which counts both directions), N per transport, so a
//! rule that needs packet N+1 passes here only if it passes on the router.
//! `--all-packets` feeds every packet instead (as if whole flows were
//! queued).
//!
//! Run: `cargo run -p isdf-agent --example classify_pcaps -- [DIR]
//! [--first-packets-tcp 12] [--first-packets-udp 10] [--all-packets]`
//! (DIR defaults to `ISDF_BT_CAPTURES`, then /var/tmp/isdf-bt-captures).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use anyhow::Context;
use clap::Parser;
use isdf_agent::classify::{pcap, Classifier, Limits, Verdict};

#[derive(Parser)]
struct Options {
    /// Directory of pcap files (default: `ISDF_BT_CAPTURES`, then
    /// /var/tmp/isdf-bt-captures).
    dir: Option<String>,
    /// Packets of a TCP conntrack flow the kernel queues (both directions).
    #[arg(long, default_value_t = 12)]
    first_packets_tcp: u64,
    /// Packets of a UDP conntrack flow the kernel queues (both directions).
    #[arg(long, default_value_t = 10)]
    first_packets_udp: u64,
    /// Feed every packet of every flow.
    #[arg(long)]
    all_packets: bool,
}

/// UDP conntrack entries of flows that never got an answer expire after
/// 30 s (`nf_conntrack_udp_timeout`); the next packet starts a new entry.
/// Answered ones live longer; 30 s of silence is taken as the end of either.
const UDP_IDLE_MS: u64 = 30_000;

/// A conntrack entry's identity: protocol and both endpoints, lower first,
/// so both directions count towards the same entry.
type CtKey = (u8, (IpAddr, u16), (IpAddr, u16));

struct CtEntry {
    packets: u64,
    last_ms: u64,
    closing: bool,
}

/// The conntrack key of an IPv4/IPv6 TCP or UDP packet, and for TCP
/// whether it is a bare SYN (a new connection) and whether it carries FIN
/// or RST. Fragments and other protocols: `None` (the router does not
/// queue them to the classifier either).
fn conntrack(packet: &[u8]) -> Option<(CtKey, bool, bool)> {
    let (protocol, src, dst, l4) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if fragment != 0 {
                return None;
            }
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                *packet.get(9)?,
                IpAddr::from(src),
                IpAddr::from(dst),
                packet.get(ihl..)?,
            )
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                *packet.get(6)?,
                IpAddr::from(src),
                IpAddr::from(dst),
                packet.get(40..)?,
            )
        }
        _ => return None,
    };
    if protocol != 6 && protocol != 17 {
        return None;
    }
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let (a, b) = ((src, port(0)?), (dst, port(2)?));
    let key = if a <= b {
        (protocol, a, b)
    } else {
        (protocol, b, a)
    };
    let flags = if protocol == 6 { *l4.get(13)? } else { 0 };
    let syn = flags & 0x12 == 0x02;
    let ends = flags & 0x05 != 0;
    Some((key, syn, ends))
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let dir = options
        .dir
        .clone()
        .or_else(|| std::env::var("ISDF_BT_CAPTURES").ok())
        .unwrap_or_else(|| "/var/tmp/isdf-bt-captures".into());
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|path| path.is_file());
    paths.sort();
    let mut report = BTreeMap::new();
    for path in paths {
        let file = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let Some(packets) = pcap::packets(&file) else {
            continue;
        };
        let mut classifier = Classifier::new(Limits::default());
        let mut entries = HashMap::<CtKey, CtEntry>::new();
        let (mut count, mut fed, mut conntrack_flows) = (0u64, 0u64, 0u64);
        let mut flows = HashMap::new();
        for packet in packets {
            count += 1;
            let Some((key, syn, ends)) = conntrack(packet.ip_packet) else {
                continue;
            };
            let budget = if key.0 == 6 {
                options.first_packets_tcp
            } else {
                options.first_packets_udp
            };
            let now = packet.time_ms;
            let entry = entries.entry(key).or_insert(CtEntry {
                packets: 0,
                last_ms: now,
                closing: false,
            });
            // A new connection on the same addresses after the old one
            // ended (TCP) or went quiet (UDP) is a new conntrack entry.
            let renewed = (key.0 == 6 && syn && entry.closing)
                || (key.0 == 17 && now.saturating_sub(entry.last_ms) > UDP_IDLE_MS);
            if entry.packets == 0 || renewed {
                conntrack_flows += 1;
                *entry = CtEntry {
                    packets: 0,
                    last_ms: now,
                    closing: false,
                };
            }
            entry.packets += 1;
            entry.last_ms = now;
            entry.closing |= ends;
            if !options.all_packets && entry.packets > budget {
                continue;
            }
            fed += 1;
            if let Verdict::BitTorrent(detection) = classifier.packet(packet.ip_packet, now) {
                flows.entry(detection.flow).or_insert(detection);
            }
        }
        let mut reasons = BTreeMap::<&str, u64>::new();
        for detection in flows.values() {
            *reasons.entry(detection.reason.as_str()).or_default() += 1;
        }
        let mut detections: Vec<_> = flows
            .values()
            .map(|d| {
                let protocol = format!("{:?}", d.flow.protocol).to_lowercase();
                let flow = format!("{protocol} {} -> {}", d.flow.initiator, d.flow.responder);
                // describe(): the rule and, for a heuristic, what it measured
                serde_json::json!({ "flow": flow, "reason": d.reason.as_str(), "rule": d.describe() })
            })
            .collect();
        detections.sort_by_key(|d| d["flow"].as_str().unwrap_or_default().to_owned());
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        report.insert(
            name,
            serde_json::json!({
                "packets": count,
                "packets_fed": fed,
                "flows": conntrack_flows,
                "bittorrent_flows": flows.len(),
                "reasons": reasons,
                "detections": detections,
            }),
        );
    }
    let feed = if options.all_packets {
        serde_json::json!("all packets")
    } else {
        serde_json::json!({ "tcp": options.first_packets_tcp, "udp": options.first_packets_udp })
    };
    let out = serde_json::json!({ "first_packets": feed, "captures": report });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
