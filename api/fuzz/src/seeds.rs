//! The seeds of the wire contract's corpora, made from the test vectors and
//! documents as the agent writes them, and the writer every fuzz crate's
//! `examples/seeds.rs` uses. Seeds are files `corpus/<target>/seed-<name>`;
//! what the fuzzer adds (and `scripts/fuzz merge` keeps) sits beside them,
//! named by its hash.

use std::path::Path;

use isdf_api::root::{seal_with_all, RootDocument, ROOT_PAYLOAD_TYPE};
use isdf_api::{seal, CONFIG_PAYLOAD_TYPE};
use serde_json::json;

use crate::fixtures::{self, key};

/// One seed input of one target.
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

impl Seed {
    pub fn new(target: &'static str, name: &'static str, bytes: impl Into<Vec<u8>>) -> Self {
        Seed {
            target,
            name,
            bytes: bytes.into(),
        }
    }

    /// A JSON document written as the sending side writes it (compact).
    pub fn json(target: &'static str, name: &'static str, value: &serde_json::Value) -> Self {
        Seed::new(target, name, serde_json::to_vec(value).expect("JSON"))
    }
}

/// Replaces the `seed-*` files of each target named in `seeds` under
/// `fuzz_dir/corpus/`, leaving what the fuzzer found alone.
pub fn write(fuzz_dir: &Path, seeds: &[Seed]) -> std::io::Result<()> {
    let mut targets: Vec<&str> = seeds.iter().map(|s| s.target).collect();
    targets.dedup();
    for target in targets {
        let dir = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(&path)?;
            }
        }
    }
    for seed in seeds {
        let path = fuzz_dir
            .join("corpus")
            .join(seed.target)
            .join(format!("seed-{}", seed.name));
        std::fs::write(&path, &seed.bytes)?;
    }
    Ok(())
}

/// The sample config as the controller serialises it (compact).
pub fn sample_payload() -> Vec<u8> {
    serde_json::to_vec(fixtures::sample_config()).expect("serialises")
}

fn root(version: u64, root_key: u8, signing_key: u8, floor: Option<u64>) -> Vec<u8> {
    let hex = |seed: u8| {
        let bytes = key(seed).verifying_key().to_bytes();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let document = RootDocument {
        version,
        root_keys: vec![hex(root_key)],
        signing_keys: vec![hex(signing_key)],
        config_version_floor: floor,
        release_keys: Vec::new(),
    };
    serde_json::to_vec(&document).expect("serialises")
}

/// Root `version` with root key `root_key` (a seed), signed by the
/// previous root key (`root_key - 1`) and its own (root 1: its own only);
/// configs are signed by [`fixtures::signing_key`].
pub fn signed_root(version: u64, root_key: u8, floor: Option<u64>) -> Vec<u8> {
    let payload = root(version, root_key, 7, floor);
    let own = key(root_key);
    let previous = key(root_key - 1);
    let signers = if version == 1 {
        vec![&own]
    } else {
        vec![&previous, &own]
    };
    seal_with_all(ROOT_PAYLOAD_TYPE, &payload, &signers).to_json()
}

/// Envelopes one a line, as the `root_chain` target reads them.
pub fn chain(envelopes: &[Vec<u8>]) -> Vec<u8> {
    envelopes.join(&b'\n')
}

/// The seeds of the wire contract's targets.
pub fn api_seeds() -> Vec<Seed> {
    let payload = sample_payload();
    let mut tampered = seal(CONFIG_PAYLOAD_TYPE, &payload, fixtures::signing_key());
    tampered.payload = seal(CONFIG_PAYLOAD_TYPE, b"{}", fixtures::signing_key()).payload;
    let two_signers = seal_with_all(
        CONFIG_PAYLOAD_TYPE,
        &payload,
        &[&key(8), fixtures::signing_key()],
    );
    let flow = json!({"protocol": "tcp", "src": "192.0.2.10", "sport": "51413",
                      "dst": "198.51.100.7", "dport": "6881"});
    let flow6 = json!({"protocol": "udp", "src": "2001:db8::10", "dst": "2001:db8:1::/64"});
    let wg_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    let wg_next = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    vec![
        Seed::new("envelope", "sample", fixtures::SAMPLE_ENVELOPE.trim()),
        Seed::new("envelope", "tampered", tampered.to_json()),
        Seed::new("envelope", "two-signers", two_signers.to_json()),
        Seed::new(
            "root_chain",
            "three-roots",
            chain(&[
                signed_root(1, 11, None),
                signed_root(2, 12, None),
                signed_root(3, 13, Some(5)),
            ]),
        ),
        Seed::new(
            "root_chain",
            "skips-known",
            chain(&[
                signed_root(1, 11, None),
                signed_root(1, 11, None),
                signed_root(2, 12, None),
            ]),
        ),
        Seed::json(
            "status_report",
            "applied",
            &json!({"sequence": 1_795_000_100_123_u64, "enforced_version": 3,
                    "enforced_digest": "5f2b0a", "outcome": "applied", "attempted_version": 3,
                    "errors": [], "counters": [{"rule_id": "flow-drop-v4", "packets": 12, "bytes": 720}],
                    "tunnels": [{"interface": "isdf0", "public_key": wg_key,
                                 "peers": [{"public_key": wg_next, "endpoint": "198.51.100.9:51820",
                                            "latest_handshake": 1_795_000_000, "rx_bytes": 1, "tx_bytes": 2}]}],
                    "backend": "nftables", "agent_version": "0.1.0"}),
        ),
        Seed::json(
            "status_report",
            "rejected",
            &json!({"sequence": 7, "enforced_version": null, "enforced_digest": null,
                    "outcome": "rejected", "attempted_version": 4,
                    "errors": ["bad_signature: signature by ed25519:ab does not verify"],
                    "backend": "iptables", "agent_version": "0.1.0"}),
        ),
        Seed::json(
            "events",
            "block-unblock",
            &json!({"events": [
                {"sequence": 1_795_000_100_000_u64, "at_ms": 1_795_000_100_000_i64, "kind": "block",
                 "block": {"id": 1, "origin": "local", "flow": flow,
                           "expires_at_ms": 1_795_000_160_000_i64, "reason": "zeek: scan"}},
                {"sequence": 1_795_000_100_001_u64, "at_ms": 1_795_000_100_001_i64, "kind": "unblock",
                 "block": {"id": 2, "origin": "detection", "flow": flow6,
                           "expires_at_ms": 1_795_000_700_000_i64, "reason": "dht_message"}}]}),
        ),
        Seed::json(
            "wireguard_facts",
            "rotating",
            &json!({"public_key": wg_key, "next_public_key": wg_next, "key_generation": 2,
                    "listen_port": 51820, "wan_addresses": ["198.51.100.2", "2001:db8::2"],
                    "probe_nonce": "0123456789abcdef0123456789abcdef"}),
        ),
    ]
}
