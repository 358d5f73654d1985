//! The chain of root documents in the data directory (`roots/<version>.json`).
//!
//! At first start the controller creates a root key (`root-key.pem`; the
//! operator may move it offline, it is only needed to sign the next root), a
//! release key (`release-key.pem`; move it offline too: it signs agent
//! releases, with `isdfctl releases sign`, never configs) and root 1, which
//! certifies the config-signing key and the release key in their roles. Rotating the signing key,
//! or revoking one, is a new root signed with `isdf-controller root rotate`.
//! At every start the chain is verified and the signing key must be one the
//! newest root certifies.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use isdf_api::root::{seal_with_all, RootDocument, ROOT_PAYLOAD_TYPE};

use crate::trust::key_files::{write_private_file, write_public_file};

/// The verified chain, oldest first.
#[derive(Debug, Clone)]
pub struct RootChain {
    /// The envelopes as stored (JSON text).
    pub envelopes: Vec<String>,
    pub latest: RootDocument,
}

/// The root documents' folder in the data directory (`000001.json`, ...).
pub const ROOTS_DIR: &str = "roots";
/// Where the first start leaves the root key it made (to be moved offline).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Where the first start leaves the release key it made (to be moved offline).
pub const RELEASE_KEY_FILE: &str = "release-key.pem";

/// What the next root certifies.
#[derive(Debug, Clone)]
pub struct NextRoot {
    /// Public keys (hex) trusted to sign configs; any not listed is dropped.
    pub signing_keys: Vec<String>,
    /// After removing a compromised key: accept config versions from here again.
    pub config_version_floor: Option<u64>,
    /// Public keys (hex) trusted to sign agent releases; None keeps the
    /// current root's.
    pub release_keys: Option<Vec<String>>,
}

fn roots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(ROOTS_DIR)
}

fn root_file(data_dir: &Path, version: u64) -> PathBuf {
    roots_dir(data_dir).join(format!("{version:06}.json"))
}

pub fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("parsing {}", path.display()))
}

/// Creates an Ed25519 key file (PKCS#8 PEM, mode 0600); returns the key.
pub fn generate_key(path: &Path) -> anyhow::Result<SigningKey> {
    if path.exists() {
        bail!("{} exists; refusing to overwrite a key", path.display());
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private_file(path, pem.as_bytes())?;
    Ok(key)
}

pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

impl RootChain {
    /// Loads and verifies the chain, creating root 1 (and the root key) on
    /// first start. Fails if the newest root does not certify `signing_key_hex`.
    pub fn load_or_create(data_dir: &Path, signing_key_hex: &str) -> anyhow::Result<Self> {
        let dir = roots_dir(data_dir);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let root_key = generate_key(&data_dir.join(ROOT_KEY_FILE))?;
            let release_key = generate_key(&data_dir.join(RELEASE_KEY_FILE))?;
            let first = RootDocument {
                version: 1,
                root_keys: vec![public_hex(&root_key)],
                signing_keys: vec![signing_key_hex.to_owned()],
                config_version_floor: None,
                release_keys: vec![public_hex(&release_key)],
            };
            let envelope = seal_with_all(
                ROOT_PAYLOAD_TYPE,
                &serde_json::to_vec(&first)?,
                &[&root_key],
            );
            write_public_file(&root_file(data_dir, 1), &envelope.to_json())?;
            tracing::info!(
                "created root 1, root-key.pem and release-key.pem; both keys may be moved offline"
            );
        }
        let chain = Self::load(data_dir)?;
        if !chain
            .latest
            .signing_keys
            .iter()
            .any(|k| k == signing_key_hex)
        {
            bail!(
                "root {} does not certify this controller's signing key {signing_key_hex}; \
                 sign a new root with `isdf-controller root rotate --signing-key {signing_key_hex} ...`",
                chain.latest.version
            );
        }
        Ok(chain)
    }

    /// Loads and verifies the chain in `data_dir/roots`.
    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = roots_dir(data_dir);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        let envelopes = files
            .iter()
            .map(|f| std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let first = envelopes.first().context("no root documents")?;
        let mut latest = RootDocument::open_first(first.as_bytes()).context("verifying root 1")?;
        for envelope in &envelopes[1..] {
            latest = latest
                .open_next(envelope.as_bytes())
                .with_context(|| format!("verifying root {}", latest.version + 1))?;
        }
        Ok(RootChain { envelopes, latest })
    }

    /// Signs the next root with the current root key (and the new one, when
    /// the root key changes too) and stores it. Works offline: it needs the
    /// data directory's `roots/` and the key files, not a running controller.
    pub fn rotate(
        data_dir: &Path,
        root_key: &SigningKey,
        new_root_key: Option<&SigningKey>,
        certified: NextRoot,
    ) -> anyhow::Result<RootDocument> {
        let chain = Self::load(data_dir)?;
        let next_root_key = new_root_key.unwrap_or(root_key);
        let next = RootDocument {
            version: chain.latest.version + 1,
            root_keys: vec![public_hex(next_root_key)],
            signing_keys: certified.signing_keys,
            config_version_floor: certified.config_version_floor,
            release_keys: certified
                .release_keys
                .unwrap_or_else(|| chain.latest.release_keys.clone()),
        };
        let envelope = seal_with_all(
            ROOT_PAYLOAD_TYPE,
            &serde_json::to_vec(&next)?,
            &[root_key, next_root_key],
        );
        // Check it before storing: a wrong root key must not break the chain.
        chain
            .latest
            .open_next(&envelope.to_json())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("the new root does not follow the current one (wrong root key?)")?;
        write_public_file(&root_file(data_dir, next.version), &envelope.to_json())?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_one_is_created_then_rotated_and_a_wrong_root_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let online = SigningKey::from_bytes(&[3; 32]);
        let chain = RootChain::load_or_create(dir.path(), &public_hex(&online)).unwrap();
        assert_eq!(chain.latest.version, 1);
        let root_key = read_key(&dir.path().join("root-key.pem")).unwrap();
        let next_online = SigningKey::from_bytes(&[4; 32]);
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let next = |floor| NextRoot {
            signing_keys: vec![public_hex(&next_online)],
            config_version_floor: floor,
            release_keys: None,
        };
        assert!(RootChain::rotate(dir.path(), &stranger, None, next(None)).is_err());
        let v2 = RootChain::rotate(dir.path(), &root_key, None, next(Some(1))).unwrap();
        assert_eq!(v2.version, 2);
        // The release key of root 1 is kept, and is in the data directory.
        let release_key = read_key(&dir.path().join(RELEASE_KEY_FILE)).unwrap();
        assert_eq!(v2.release_keys, [public_hex(&release_key)]);
        assert_eq!(chain.latest.release_keys, v2.release_keys);
        // The old online key is no longer certified: the controller refuses to start with it.
        let refused = RootChain::load_or_create(dir.path(), &public_hex(&online)).unwrap_err();
        assert!(
            format!("{refused:#}").contains("does not certify"),
            "{refused:#}"
        );
        let chain = RootChain::load_or_create(dir.path(), &public_hex(&next_online)).unwrap();
        assert_eq!((chain.latest.version, chain.envelopes.len()), (2, 2));
    }
}
