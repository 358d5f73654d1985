//! Agent end-to-end tests: a LAN host, the router running the real agent
//! binary, and a WAN host with servers and the real controller, each in a
//! network namespace the test creates, with real nft / iptables and real
//! traffic. Nothing is connected to the root namespace.

mod antispoof;
mod backends;
mod bittorrent_clients;
mod blocks;
mod classifier;
mod collateral;
mod crash_apply;
mod dns;
mod dns_sets;
mod e2e;
mod fail_static;
mod fleet_sim;
mod harness;
mod isp_network;
mod kernel_state;
mod launcher;
mod netns;
mod outage;
mod pay_per_site;
mod pay_per_site_boot;
mod quic;
mod readme;
mod releases;
mod rogue_controller;
mod rollouts;
mod signatures;
mod state_disk;
mod upgrade_refusals;
mod upgrades;
mod vpn;
mod wireguard;
