//! The router the targets run on: the settings of a plain install, its
//! interfaces and the classifier's limits.

use isdf_agent::backend::Interfaces;
use isdf_agent::classify::Limits;
use isdf_agent::sys::settings::Settings;

/// The settings of a router installed from `deploy/agent.toml.example`'s
/// minimum: everything else comes from enrollment.
pub fn settings() -> Settings {
    Settings::parse("state_dir = \"/var/lib/isdf-agent\"\n").expect("the minimal settings parse")
}

/// OpenWrt's interface names, both roles present.
pub fn interfaces() -> Interfaces {
    Interfaces {
        lan: vec!["br-lan".into()],
        wan: vec!["wan".into(), "pppoe-wan".into()],
    }
}

/// The classifier's limits, with tables small enough that one input fills
/// them (and so reaches the eviction of their oldest entries), and that
/// making a classifier for every input stays cheap.
pub fn classifier_limits() -> Limits {
    Limits {
        max_flows: 64,
        max_learned_peers: 64,
        ..Limits::default()
    }
}
