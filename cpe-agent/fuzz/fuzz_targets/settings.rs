//! The agent's settings file (TOML, written by hand or by the OpenWrt init
//! script from UCI), read by `Settings::parse`. Accepted settings are ones
//! the agent runs with: what it derives from them works, its URLs are
//! HTTPS, its interface names are ones the planners accept, and the dnsmasq
//! config it renders has one line per option (no setting adds an option).
#![no_main]

use isdf_agent::backend::Interfaces;
use isdf_agent::dns::{render, RenderOptions};
use isdf_agent::sys::settings::{DnsMode, Settings};
use isdf_api::{DnsPolicy, Rule};
use libfuzzer_sys::fuzz_target;

fn rule_on(role: &str) -> Rule {
    serde_json::from_value(serde_json::json!({
        "id": "on-role", "chain": "forward", "match": {"in_interface": role}, "action": "drop"
    }))
    .expect("a rule")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = Settings::parse(text) else {
        return;
    };
    let mode = settings.resolver_mode().expect("an accepted dns_mode");
    let upstream = settings
        .upstream_servers()
        .expect("accepted dns_upstream servers");
    for url in [&settings.controller_url, &settings.enrollment_url]
        .into_iter()
        .flatten()
    {
        assert!(url.starts_with("https://"), "{url} is accepted");
    }
    let limits = settings.router_block_limits();
    assert!(limits.per_sec >= 1.0 && limits.burst >= limits.per_sec);
    settings.tunnel_settings();
    settings.dnsmasq_run_dir();

    let interfaces = Interfaces {
        lan: settings.lan_interfaces.clone(),
        wan: settings.wan_interfaces.clone(),
    };
    for (role, names) in [("lan", &interfaces.lan), ("wan", &interfaces.wan)] {
        match interfaces.for_rule(&rule_on(role)) {
            Ok(found) => assert_eq!(found, Some(names.as_slice())),
            Err(e) => assert!(
                names.is_empty(),
                "accepted names the planner refuses: {e:#}"
            ),
        }
    }

    // The managed dnsmasq's pid file, from `dns_run_dir`, as `Dnsmasq`
    // names it: a path with a line break is refused there, never rendered.
    let pid_path = settings.dnsmasq_run_dir().join("dnsmasq.pid");
    let Some(pid_file) = pid_path.to_str().filter(|p| !p.contains('\n')) else {
        return;
    };
    let options = RenderOptions {
        mode,
        port: settings.dns_port,
        lan_interfaces: &settings.lan_interfaces,
        upstream: &upstream,
        pid_file,
    };
    let rendered = render(&DnsPolicy::default(), &options);
    let interface_lines = rendered
        .lines()
        .filter(|l| l.starts_with("interface="))
        .count();
    let server_lines = rendered
        .lines()
        .filter(|l| l.starts_with("server="))
        .count();
    match mode {
        DnsMode::Managed => {
            assert_eq!(
                interface_lines,
                1 + settings.lan_interfaces.len(),
                "{rendered}"
            );
            assert_eq!(server_lines, upstream.len(), "{rendered}");
        }
        DnsMode::ConfDir => {
            assert_eq!((interface_lines, server_lines), (0, 0), "{rendered}");
        }
    }
});
