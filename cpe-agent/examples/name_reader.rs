//! The agent's packet thread alone (`isdf_agent::inspect`), serving the name
//! reader and the portal of a compiled config, for benchmarks that load the
//! agent's ruleset by hand into a router namespace (`scripts/bench-names`):
//!
//! ```sh
//! PLAN_SERVICE_JSON=fw.json plan_service pay-per-site '{"catalog": "main"}' >plan.nft
//! ip netns exec ROUTER name_reader fw.json
//! ```
//!
//! Binds NFQUEUE 4242 to 4244 in the namespace it runs in, prints `ready`
//! once bound and then serves until it is killed (SIGTERM's default action).
//! The LAN is `br-lan`, as in `plan_service`'s plan; the resolver that
//! checks names against addresses is 127.0.0.1:53.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: name_reader FIREWALL_JSON")?;
    let json = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let firewall: isdf_api::Firewall =
        serde_json::from_slice(&json).with_context(|| format!("parsing {path} as a Firewall"))?;
    let inspector = isdf_agent::inspect::start().context("starting the packet thread")?;
    inspector.set_lan_interfaces(&["br-lan".into()]);
    inspector.set_names(
        firewall.flow_names.as_ref(),
        firewall.portal.as_ref(),
        "127.0.0.1:53".parse().context("the resolver's address")?,
    );
    println!("ready");
    // The packet thread does the work; this one only keeps the process (and
    // the inspector it holds) alive. `park` may wake spuriously, hence the loop.
    loop {
        std::thread::park();
    }
}
