//! Runs the BitTorrent classifier over every pcap file of a directory and
//! prints, per file, the flows it flags and why, as JSON, for comparison
//! with nDPI's `ndpiReader` on the same captures. Each file gets a fresh
//! classifier; every packet is fed, as if the kernel queued whole flows.
//!
//! Run: `cargo run -p isdf-agent --example classify_pcaps -- [DIR]`
//! (DIR defaults to `ISDF_BT_CAPTURES`, then /var/tmp/isdf-bt-captures).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use isdf_agent::classify::{pcap, Classifier, Limits, Verdict};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
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
        let (mut count, mut flows) = (0u64, HashMap::new());
        for packet in packets {
            count += 1;
            if let Verdict::BitTorrent(detection) =
                classifier.packet(packet.ip_packet, packet.time_ms)
            {
                flows.entry(detection.flow).or_insert(detection.reason);
            }
        }
        let mut reasons = BTreeMap::<&str, u64>::new();
        for reason in flows.values() {
            *reasons.entry(reason.as_str()).or_default() += 1;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        report.insert(name, serde_json::json!({ "packets": count, "bittorrent_flows": flows.len(), "reasons": reasons }));
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
