//! The router the targets run on: the settings of a plain install, its
//! interfaces, the classifier's limits and the portal redirect of a
//! pay-per-site config.

use isdf_agent::backend::Interfaces;
use isdf_agent::classify::Limits;
use isdf_agent::sys::settings::Settings;
use isdf_api::PortalRedirect;

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

/// A portal with two sites and a default page, as pay-per-site compiles it.
pub fn portal() -> PortalRedirect {
    serde_json::from_value(serde_json::json!({
        "port": 8081,
        "default_url": "https://portal.isp.test/r/7f0b3c1e",
        "sites": [
            {"domains": ["video.test", "*.cdn-video.test"],
             "url": "https://portal.isp.test/r/7f0b3c1e/video?sig=ab12"},
            {"domains": ["music.test"],
             "url": "https://portal.isp.test/r/7f0b3c1e/music?sig=cd34"}
        ]
    }))
    .expect("the portal parses")
}
