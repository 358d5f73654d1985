//! Power cuts while the agent writes its state (issue 15). For each file
//! the agent keeps, every state a power cut can leave on the disk
//! (`power_cut::every_state`: after each step and each byte of the atomic
//! write, and with an unsynced rename lost), and what the agent makes of
//! it on starting: the old contents or the new ones, never a refusal to
//! start or a config that does not verify.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use isdf_api::events::BlockOrigin;

use super::tests::{envelope, key, rules_held, settings, FakeBackend, Kernel, DEVICE};
use super::Agent;
use crate::router_blocks::persist::ROUTER_BLOCKS;
use crate::router_blocks::{Persisted, RouterBlocks};
use crate::sys::atomic_write::power_cut::every_state;
use crate::sys::atomic_write::write_atomically_on;
use crate::sys::state::{Identity, StateDir, IDENTITY, LAST_GOOD, ROOTS, SEQUENCE};
use crate::test_pki::TestCa;
use crate::wireguard::{KeyStore, StoredKey, KEYS_FILE};

/// An agent starting on the state directory under `dir`, as after a reboot.
fn start(dir: &std::path::Path, identity: &Identity, at: &str) -> (Agent, Arc<Mutex<Kernel>>) {
    let kernel = Arc::new(Mutex::new(Kernel::default()));
    let agent = Agent::new(
        settings(dir),
        identity.clone(),
        Box::new(FakeBackend(kernel.clone())),
    )
    .unwrap_or_else(|e| panic!("{at}: the agent does not start: {e:#}"));
    (agent, kernel)
}

#[tokio::test]
async fn the_last_good_config_survives_a_power_cut_at_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let identity = TestCa::new("ca").identity(DEVICE, "https://127.0.0.1:9");
    let (mut first, _) = start(dir.path(), &identity, "first start");
    first.handle_envelope(envelope(1, 1, &key()), None).await;
    drop(first);
    let path = dir.path().join("state").join(LAST_GOOD);
    let old = std::fs::read(&path).unwrap();
    let new = envelope(2, 3, &key());

    let mut enforced = BTreeMap::new();
    let states = every_state(
        &path,
        Some(&old),
        |disk| write_atomically_on(disk, &path, &new, 0o644),
        |at| {
            let (mut agent, kernel) = start(dir.path(), &identity, at);
            agent
                .restore_last_good()
                .unwrap_or_else(|e| panic!("{at}: the last good config is lost: {e:#}"));
            let held = (agent.enforced_version(), rules_held(&kernel));
            assert!(
                held == (Some(1), Some(1)) || held == (Some(2), Some(3)),
                "{at}: enforces {held:?}"
            );
            *enforced.entry(held).or_insert(0) += 1;
        },
    );
    assert!(states > new.len(), "{states} states");
    assert_eq!(enforced.len(), 2, "both outcomes seen: {enforced:?}");
}

#[test]
fn the_routers_own_blocks_survive_a_power_cut_at_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let identity = TestCa::new("ca").identity(DEVICE, "https://127.0.0.1:9");
    let now = crate::sys::time::unix_millis();
    let flow = |dport: u16| {
        serde_json::from_value(serde_json::json!({"protocol": "tcp", "src": "192.0.2.2",
            "dst": "198.51.100.2", "dport": dport}))
        .unwrap()
    };
    let limits = settings(dir.path()).router_block_limits();
    let mut blocks = RouterBlocks::new(Persisted::default(), limits);
    blocks
        .add(BlockOrigin::Local, flow(1), 3_600_000, "one", now)
        .unwrap();
    let old = blocks.persisted().clone();
    blocks
        .add(BlockOrigin::Local, flow(2), 3_600_000, "two", now)
        .unwrap();
    let new = blocks.persisted().clone();
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    crate::router_blocks::persist::save(&state, &old).unwrap();
    let path = state.path().join(ROUTER_BLOCKS);

    let new_bytes = serde_json::to_vec(&new).unwrap();
    let mut seen = 0;
    every_state(
        &path,
        Some(&std::fs::read(&path).unwrap()),
        |disk| write_atomically_on(disk, &path, &new_bytes, 0o644),
        |at| {
            let (mut agent, kernel) = start(dir.path(), &identity, at);
            let loaded = agent.router_blocks.persisted().clone();
            assert!(loaded == old || loaded == new, "{at}: {loaded:?}");
            seen |= if loaded == old { 1 } else { 2 };
            // Nothing else enforced: the blocks go to the kernel at start.
            agent.restore_last_good().unwrap();
            let held = kernel.lock().unwrap().holds.clone().unwrap();
            let in_force: usize = held.sets.iter().map(|s| s.elements.len()).sum();
            assert_eq!(in_force, loaded.blocks.len(), "{at}");
        },
    );
    assert_eq!(seen, 3, "old and new both seen");
}

/// The files read before the agent can start (identity, root chain, WireGuard
/// keys) and the status sequence: each reads back old or new whole.
#[test]
fn identity_roots_keys_and_sequence_survive_a_power_cut_at_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let ca = TestCa::new("ca");
    let (old_identity, new_identity) = (
        ca.identity(DEVICE, "https://127.0.0.1:9"),
        ca.identity(DEVICE, "https://127.0.0.1:9"),
    );
    let key = |generation: u32, public: &str| StoredKey {
        generation,
        private: format!("private {generation}"),
        public: isdf_api::wireguard::WgKey::parse(public).unwrap(),
    };
    let old_keys = vec![key(1, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")];
    let mut new_keys = old_keys.clone();
    new_keys.push(key(2, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="));

    /// A state file: name, mode, old and new contents, and how the agent
    /// reads it back (as bytes to compare).
    type Reader<'a> = Box<dyn Fn() -> anyhow::Result<Vec<u8>> + 'a>;
    type File<'a> = (&'static str, u32, Vec<u8>, Vec<u8>, Reader<'a>);
    let files: Vec<File> = vec![
        (
            IDENTITY,
            0o600,
            serde_json::to_vec_pretty(&old_identity).unwrap(),
            serde_json::to_vec_pretty(&new_identity).unwrap(),
            Box::new(|| {
                let read = StateDir::open(dir.path())?.identity()?;
                Ok(serde_json::to_vec_pretty(&read.expect("an identity"))?)
            }),
        ),
        (
            ROOTS,
            0o644,
            serde_json::to_vec(&["root 2"]).unwrap(),
            serde_json::to_vec(&["root 2", "root 3"]).unwrap(),
            Box::new(|| Ok(serde_json::to_vec(&StateDir::open(dir.path())?.roots()?)?)),
        ),
        (
            KEYS_FILE,
            0o600,
            serde_json::to_vec(&old_keys).unwrap(),
            serde_json::to_vec(&new_keys).unwrap(),
            Box::new(|| Ok(serde_json::to_vec(&KeyStore::open(dir.path())?.keys())?)),
        ),
        (
            SEQUENCE,
            0o644,
            b"1795000000000".to_vec(),
            b"1795000000001".to_vec(),
            Box::new(|| {
                let stored = StateDir::open(dir.path())?.stored_sequence();
                Ok(stored.to_string().into_bytes())
            }),
        ),
    ];
    for (name, mode, old, new, read) in &files {
        let path = state.path().join(name);
        std::fs::write(&path, old).unwrap();
        let mut seen = [false, false];
        let states = every_state(
            &path,
            Some(old),
            |disk| write_atomically_on(disk, &path, new, *mode),
            |at| {
                let got = read().unwrap_or_else(|e| panic!("{name}, {at}: unreadable: {e:#}"));
                assert!(
                    &got == old || &got == new,
                    "{name}, {at}: read {}",
                    String::from_utf8_lossy(&got)
                );
                seen[usize::from(&got == new)] = true;
            },
        );
        assert_eq!(seen, [true, true], "{name}: old and new both seen");
        assert!(states > new.len(), "{name}: {states} states");
    }
}
