//! Prints the nft script the agent would apply for one service assigned
//! alone, e.g. for benchmarks that load it into a router namespace by hand:
//!
//! ```sh
//! cargo run -q -p isdf-agent --example plan_service -- bittorrent-block '{"block_secs": 600}' [mark]
//! ```
//!
//! `none '{}'` plans the agent's own rules alone (no service assigned).
//!
//! `pay-per-site '{"catalog": "main", ...}'` gates a catalog `main` of
//! `ISDF_BENCH_SITES` sites (default 20), `site<i>.test` each at
//! 203.0.113.<i+1>, with no pass bought (`scripts/bench-names`).
//!
//! `mark`: for kernels without nft's `queue` (classify rules mark packets
//! for an iptables NFQUEUE rule instead; see `backend::nft::Queueing`).
//!
//! `PLAN_SERVICE_JSON=<path>` also writes the compiled `Firewall` there as
//! JSON, for a program that needs the config itself (the `name_reader`
//! example reads its `flow_names` and `portal`).

use std::collections::BTreeMap;

use isdf_controller::model::{Labels, Selector};
use isdf_controller::services::compiler::{compile_firewall, CompiledAssignment};
use isdf_controller::services::pay_per_site::{CatalogSite, Catalogs, DeviceShop, PortalLinks};
use isdf_controller::services::{ServiceKind, ServiceSpec};

/// The catalog the `pay-per-site` spec must name.
const BENCH_CATALOG: &str = "main";
/// Sites in it unless `ISDF_BENCH_SITES` says otherwise.
const DEFAULT_BENCH_SITES: u8 = 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(spec)) = (args.next(), args.next()) else {
        eprintln!("usage: plan_service KIND SPEC_JSON [mark]");
        std::process::exit(2);
    };
    // `none`: the agent's own rules with no service assigned.
    let firewall = if kind == "none" {
        isdf_api::Firewall::default()
    } else {
        compile_one(&kind, &spec)
    };
    if let Ok(path) = std::env::var("PLAN_SERVICE_JSON") {
        let json = serde_json::to_vec_pretty(&firewall).expect("a Firewall serializes");
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write the firewall to {path}: {e}");
            std::process::exit(1);
        }
    }
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

/// The firewall of `kind` with `spec` assigned alone to every device (with
/// the benchmark's shop for `pay-per-site`), compiled at time 0.
fn compile_one(kind: &str, spec: &str) -> isdf_api::Firewall {
    let kind = ServiceKind::parse(kind).unwrap_or_else(|| {
        eprintln!("unknown service kind {kind}");
        std::process::exit(2)
    });
    let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_else(|e| {
        eprintln!("SPEC_JSON is not JSON: {e}");
        std::process::exit(2)
    });
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
    let catalogs = bench_catalogs();
    let portal = PortalLinks::new("https://portal.isp.test", [1; 32]);
    let passes = BTreeMap::new();
    let shop = DeviceShop {
        device_id: "bench-router",
        catalogs: &catalogs,
        passes: &passes,
        portal: &portal,
        // The gate by name, or (`PLAN_SERVICE_BY_ADDRESS=1`) by address
        // alone, as agents before 0.2.0 get it: the benchmark's baseline.
        reads_names: std::env::var_os("PLAN_SERVICE_BY_ADDRESS").is_none(),
    };
    compile_firewall(&Labels::default(), &[assignment], &[], Some(&shop), 0)
}

/// The catalog `main`: `ISDF_BENCH_SITES` sites `site<i>.test`, each with
/// the one address 203.0.113.<i+1> the controller would have resolved.
fn bench_catalogs() -> Catalogs {
    let count: u8 = match std::env::var("ISDF_BENCH_SITES") {
        Ok(text) => text.parse().ok().filter(|n| *n <= 254).unwrap_or_else(|| {
            eprintln!("ISDF_BENCH_SITES must be 0 to 254, not {text}");
            std::process::exit(2)
        }),
        Err(_) => DEFAULT_BENCH_SITES,
    };
    let sites = (0..count)
        .map(|i| CatalogSite {
            id: i64::from(i) + 1,
            domains: vec![
                isdf_api::DomainPattern::parse(&format!("site{i}.test")).expect("a valid domain")
            ],
            addresses: vec![std::net::Ipv4Addr::new(203, 0, 113, i + 1).into()],
        })
        .collect();
    [(BENCH_CATALOG.to_owned(), sites)].into()
}
