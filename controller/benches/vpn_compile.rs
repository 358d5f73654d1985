//! Compiling one 1,000-site VPN: the plan and every router's tunnel (pure),
//! then also serialising and signing every router's config, in mesh and
//! hub topologies. A third of the sites are behind NAT in `auto`.
//!
//! Run: `cargo bench -p isdf-controller --bench vpn_compile`

use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use isdf_api::{Prefix, WgKey};
use isdf_controller::reconcile::signer::{ConfigSigner, FileSigner};
use isdf_controller::vpn::{Plan, Site, SiteKeys, Topology, Vpn};
use uuid::Uuid;

const SITES: u32 = 1000;

fn site(n: u32, reachable: bool) -> Site {
    let [_, _, hi, lo] = n.to_be_bytes();
    let mut key = [9u8; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    Site {
        device_id: Uuid::from_u128(u128::from(n)),
        name: format!("site-{n}"),
        tunnel_address: Ipv4Addr::new(100, 64, hi, lo),
        prefixes: vec![Prefix::parse(&format!("10.{hi}.{lo}.0/24")).unwrap()],
        keys: Some(SiteKeys {
            active: WgKey(key),
            alternate: None,
            listen_port: 51820,
            reachable: reachable.then_some(IpAddr::V4(Ipv4Addr::new(198, 18, hi, lo))),
        }),
    }
}

fn vpn(topology: Topology, nat_every: u32) -> Vpn {
    Vpn {
        id: Uuid::nil(),
        topology,
        hub: (topology == Topology::Hub).then_some(Uuid::from_u128(1)),
        sites: (1..=SITES).map(|n| site(n, n % nat_every != 0)).collect(),
        relay: None,
    }
}

fn tunnels(vpn: &Vpn) -> usize {
    let plan = Plan::decide(vpn);
    vpn.sites
        .iter()
        .filter_map(|s| plan.tunnel_for(s.device_id))
        .map(|t| t.peers.len())
        .sum()
}

fn signed_configs(vpn: &Vpn, signer: &FileSigner) -> usize {
    let plan = Plan::decide(vpn);
    let mut bytes = 0;
    for site in &vpn.sites {
        let config = isdf_api::DeviceConfig {
            device_id: site.device_id.to_string(),
            version: 2,
            issued_at: 1_795_000_000,
            expires_at: 1_795_003_600,
            firewall: isdf_api::Firewall {
                wireguard: Some(isdf_api::Wireguard {
                    public_key: site.keys.as_ref().map(|k| k.active),
                    key_generation: 1,
                    tunnels: plan.tunnel_for(site.device_id).into_iter().collect(),
                }),
                ..Default::default()
            },
            agent_release: None,
        };
        let payload = serde_json::to_vec(&config).unwrap();
        bytes += signer
            .sign(isdf_api::CONFIG_PAYLOAD_TYPE, &payload)
            .unwrap()
            .to_json()
            .len();
    }
    bytes
}

fn compile_vpn(c: &mut Criterion) {
    let signer = FileSigner::from_key(SigningKey::from_bytes(&[7; 32]));
    let shapes = [
        ("mesh", vpn(Topology::Mesh, u32::MAX)),
        ("hub", vpn(Topology::Hub, u32::MAX)),
        ("auto, 1 in 3 behind NAT", vpn(Topology::Auto, 3)),
    ];
    let mut group = c.benchmark_group("vpn, 1000 sites");
    group.sample_size(10);
    for (name, vpn) in &shapes {
        let peers = tunnels(vpn);
        let bytes = signed_configs(vpn, &signer);
        eprintln!("{name}: {peers} peer entries, {bytes} bytes of signed configs");
        group.bench_function(format!("{name}: plan + 1000 tunnels"), |b| {
            b.iter(|| tunnels(vpn))
        });
        group.bench_function(format!("{name}: + serialise and sign 1000 configs"), |b| {
            b.iter(|| signed_configs(vpn, &signer))
        });
    }
    group.finish();
}

criterion_group!(benches, compile_vpn);
criterion_main!(benches);
