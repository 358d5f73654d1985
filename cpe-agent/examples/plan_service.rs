//! Prints the nft script the agent would apply for one service assigned
//! alone, e.g. for benchmarks that load it into a router namespace by hand:
//!
//! ```sh
//! cargo run -q -p isdf-agent --example plan_service -- bittorrent-block '{"block_secs": 600}' [mark]
//! ```
//!
//! `none '{}'` plans the agent's own rules alone (no service assigned).
//!
//! `mark`: for kernels without nft's `queue` (classify rules mark packets
//! for an iptables NFQUEUE rule instead; see `backend::nft::Queueing`).

use isdf_controller::model::{Labels, Selector};
use isdf_controller::services::compiler::{compile_firewall, CompiledAssignment};
use isdf_controller::services::{ServiceKind, ServiceSpec};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(spec)) = (args.next(), args.next()) else {
        eprintln!("usage: plan_service KIND SPEC_JSON");
        std::process::exit(2);
    };
    // `none`: the agent's own rules with no service assigned.
    let firewall = if kind == "none" {
        isdf_api::Firewall::default()
    } else {
        let kind = ServiceKind::parse(&kind).unwrap_or_else(|| {
            eprintln!("unknown service kind {kind}");
            std::process::exit(2)
        });
        let spec: serde_json::Value = serde_json::from_str(&spec).expect("SPEC_JSON is JSON");
        let spec = ServiceSpec::parse(kind, &spec).unwrap_or_else(|e| {
            eprintln!("invalid spec: {e}");
            std::process::exit(2)
        });
        let assignment = CompiledAssignment {
            id: uuid::Uuid::nil(),
            selector: Selector::parse("*").expect("valid"),
            created_at: 0,
            spec,
        };
        compile_firewall(&Labels::default(), &[assignment], &[], None, 0)
    };
    use isdf_agent::backend::nft::{plan_with, PlanInputs, Queueing};
    let queueing = match args.next().as_deref() {
        Some("mark") => Queueing::Mark,
        _ => Queueing::Native,
    };
    // The agent's default interface names (OpenWrt's).
    let inputs = PlanInputs {
        interfaces: isdf_agent::backend::Interfaces {
            lan: vec!["br-lan".into()],
            wan: vec!["wan".into(), "pppoe-wan".into()],
        },
        queueing,
        ..PlanInputs::default()
    };
    match plan_with(&firewall, 0, &inputs) {
        Ok(script) => print!("{script}"),
        Err(e) => {
            eprintln!("cannot plan: {e:#}");
            std::process::exit(1)
        }
    }
}
