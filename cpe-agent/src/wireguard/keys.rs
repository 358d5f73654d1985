//! The router's WireGuard key pairs: `wireguard-keys.json` in the state
//! directory (0600, written atomically), made with `wg genkey` / `wg pubkey`
//! so the private key only ever travels on pipes.
//!
//! A config with `wireguard` makes the first key, or a new one when its
//! `key_generation` is above the newest held; tunnels use the key the
//! config's `public_key` names (one the router does not hold is an apply
//! error before anything changes); the older keys go once a config naming
//! the newest was applied (`keep_from`). **Private keys never leave the
//! router.**

use std::path::Path;

use anyhow::Context;
use isdf_api::wireguard::WgKey;
use serde::{Deserialize, Serialize};

use crate::sys::processes;
use crate::sys::state::StateDir;

/// The key store, in the state directory (0600).
pub const KEYS_FILE: &str = "wireguard-keys.json";

/// One of the router's key pairs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub generation: u32,
    /// Base64, as `wg` writes it.
    pub private: String,
    pub public: WgKey,
}

/// The private half stays out of logs.
impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey({}, {})", self.generation, self.public)
    }
}

/// The generation of the key to make for a config asking for
/// `key_generation`, given the keys held: the first key
/// (generation at least 1), or a rotation when the config asks for a newer
/// generation than the newest held. None: nothing to make.
pub fn generation_to_make(held: &[StoredKey], key_generation: u32) -> Option<u32> {
    match held.iter().map(|k| k.generation).max() {
        None => Some(key_generation.max(1)),
        Some(newest) if key_generation > newest => Some(key_generation),
        Some(_) => None,
    }
}

/// The router's key pairs, oldest first, persisted at every change.
pub struct KeyStore {
    state: StateDir,
    keys: Vec<StoredKey>,
}

impl KeyStore {
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let state = StateDir::open(state_dir)?;
        let keys = match state.read_optional(KEYS_FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", state_dir.join(KEYS_FILE).display()))?,
            None => Vec::new(),
        };
        Ok(KeyStore { state, keys })
    }

    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    pub fn newest(&self) -> Option<&StoredKey> {
        self.keys.iter().max_by_key(|k| k.generation)
    }

    pub fn find(&self, public: WgKey) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.public == public)
    }

    /// Makes the key `key_generation` calls for (see `generation_to_make`)
    /// with `make`, and persists it before it is used.
    pub fn ensure(
        &mut self,
        key_generation: u32,
        make: impl FnOnce() -> anyhow::Result<(String, WgKey)>,
    ) -> anyhow::Result<()> {
        let Some(generation) = generation_to_make(&self.keys, key_generation) else {
            return Ok(());
        };
        let (private, public) = make()?;
        self.keys.push(StoredKey {
            generation,
            private,
            public,
        });
        self.save()?;
        tracing::info!(generation, public = %public, "made a WireGuard key pair");
        Ok(())
    }

    /// Once an applied config names the newest key, the older ones are
    /// forgotten (no config can name them any more without a rollback to
    /// one that already did).
    pub fn keep_from(&mut self, in_use: WgKey) -> anyhow::Result<()> {
        let newest = self.newest().map(|k| k.public);
        if newest != Some(in_use) || self.keys.len() == 1 {
            return Ok(());
        }
        self.keys.retain(|k| k.public == in_use);
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        self.state
            .write_atomically(KEYS_FILE, &serde_json::to_vec(&self.keys)?, 0o600)
    }
}

/// A new key pair from `wg genkey` and `wg pubkey` (the private key only
/// ever on pipes).
pub fn generate_key() -> anyhow::Result<(String, WgKey)> {
    let private = processes::run("wg", &["genkey"], "")?.trim().to_owned();
    let public = processes::run("wg", &["pubkey"], &format!("{private}\n"))?;
    let public = WgKey::parse(&public).map_err(anyhow::Error::msg)?;
    Ok((private, public))
}

/// The key fields of the facts: the key in use (the one the applied config
/// names; before any, the newest), the newest when it is not in use yet, and
/// the newest generation. None before the first key.
pub fn key_facts(keys: &[StoredKey], in_use: Option<WgKey>) -> Option<(WgKey, Option<WgKey>, u32)> {
    let newest = keys.iter().max_by_key(|k| k.generation)?;
    let current = in_use
        .filter(|k| keys.iter().any(|s| s.public == *k))
        .unwrap_or(newest.public);
    let next = (newest.public != current).then_some(newest.public);
    Some((current, next, newest.generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> WgKey {
        WgKey([n; 32])
    }

    fn stored(generation: u32, n: u8) -> StoredKey {
        StoredKey {
            generation,
            private: format!("private-{n}"),
            public: key(n),
        }
    }

    #[test]
    fn the_first_key_and_rotations_are_made_when_the_generation_asks() {
        assert_eq!(generation_to_make(&[], 0), Some(1));
        assert_eq!(generation_to_make(&[], 4), Some(4));
        let held = [stored(1, 1), stored(2, 2)];
        assert_eq!(generation_to_make(&held, 0), None);
        assert_eq!(generation_to_make(&held, 2), None);
        assert_eq!(generation_to_make(&held, 3), Some(3));
    }

    #[test]
    fn the_store_persists_0600_and_forgets_old_keys_once_the_newest_is_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        store.ensure(0, || Ok(("a".into(), key(1)))).unwrap();
        store.ensure(1, || panic!("no new key")).unwrap();
        store.ensure(2, || Ok(("b".into(), key(2)))).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut store = KeyStore::open(dir.path()).unwrap();
        assert_eq!(
            store.keys(),
            [stored(1, 1), stored(2, 2)].map(|mut k| {
                k.private = if k.generation == 1 {
                    "a".into()
                } else {
                    "b".into()
                };
                k
            })
        );
        store.keep_from(key(1)).unwrap();
        assert_eq!(store.keys().len(), 2, "the old key is in use: both stay");
        store.keep_from(key(2)).unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert_eq!(store.keys().len(), 1);
        assert_eq!(store.newest().unwrap().public, key(2));
    }

    #[test]
    fn facts_name_the_key_in_use_and_the_next_one() {
        assert_eq!(key_facts(&[], None), None);
        let held = [stored(1, 1), stored(2, 2)];
        assert_eq!(key_facts(&held, None), Some((key(2), None, 2)));
        assert_eq!(
            key_facts(&held, Some(key(1))),
            Some((key(1), Some(key(2)), 2))
        );
        assert_eq!(key_facts(&held, Some(key(2))), Some((key(2), None, 2)));
        // A key the router does not hold is not reported as in use.
        assert_eq!(key_facts(&held, Some(key(9))), Some((key(2), None, 2)));
    }
}
