//! A config on the router, from the bytes the controller signs to what the
//! agent enforces: the input is the payload, sealed with the trusted key as
//! the controller signs it, opened by `open_device_config` (parsed with
//! unknown fields refused, `validate`, device, version, expiry), then
//! planned as the agent enforces it: the nft script (both ways of queueing
//! to the classifier), the iptables scripts, the dnsmasq config and the
//! WireGuard tunnels. A signed payload is refused only for what it says,
//! never at the envelope; a config the agent accepts reads back the same
//! (it persists it as its last good config) and plans with nftables.
#![no_main]

use isdf_agent::backend::{iptables, nft};
use isdf_agent::dns::{render, RenderOptions};
use isdf_agent::sys::settings::DnsMode;
use isdf_agent::wireguard::{render_conf, wanted_rules};
use isdf_agent_fuzz::router::interfaces;
use isdf_api::{open_device_config, seal, CONFIG_PAYLOAD_TYPE};
use isdf_api_fuzz::fixtures::{policy, signing_key, trusted, NOW};
use isdf_api_fuzz::properties::assert_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let envelope = seal(CONFIG_PAYLOAD_TYPE, payload, signing_key()).to_json();
    let config = match open_device_config(&envelope, trusted(), &policy()) {
        Ok(config) => config,
        Err(e) => {
            let code = e.code();
            assert!(
                matches!(
                    code,
                    "malformed_config"
                        | "invalid_config"
                        | "wrong_device"
                        | "not_newer"
                        | "expired"
                ),
                "a payload signed by the trusted key was refused at the envelope: {e}"
            );
            return;
        }
    };
    assert_round_trip(&config);

    let firewall = &config.firewall;
    let now_ms = NOW * 1000;
    for queueing in [nft::Queueing::Native, nft::Queueing::Mark] {
        let inputs = nft::PlanInputs {
            interfaces: interfaces(),
            queueing,
            ..Default::default()
        };
        if let Err(e) = nft::plan_with(firewall, now_ms, &inputs) {
            panic!("an accepted config does not plan with nftables: {e:#}");
        }
    }
    // The iptables backend refuses what it cannot enforce, with an error.
    let lan_prefixes = ["192.168.1.0/24".parse().expect("a prefix")];
    let _ = iptables::plan_with(
        firewall,
        NOW,
        iptables::Capabilities::ALL,
        &interfaces(),
        &lan_prefixes,
    );
    if let Some(dns) = &firewall.dns {
        for mode in [DnsMode::Managed, DnsMode::ConfDir] {
            let options = RenderOptions {
                mode,
                port: 53,
                lan_interfaces: &interfaces().lan,
                upstream: &["192.0.2.53:53".parse().expect("an address")],
                pid_file: "/run/isdf-agent/dnsmasq.pid",
            };
            render(dns, &options);
        }
    }
    if let Some(wireguard) = &firewall.wireguard {
        for tunnel in &wireguard.tunnels {
            render_conf(tunnel, "private key", |_| None);
        }
        wanted_rules(&wireguard.tunnels, 51820);
    }
});
