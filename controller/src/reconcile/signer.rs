//! Config signing. [`ConfigSigner`] is a trait so a KMS, an HSM or an offline
//! key can replace the file key; the rest of the controller only sees the trait.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use isdf_api::envelope::{Envelope, KeyId};

use crate::trust::key_files::write_private_file;

pub trait ConfigSigner: Send + Sync + 'static {
    fn key_id(&self) -> KeyId;
    fn public_key(&self) -> VerifyingKey;
    fn sign(&self, payload_type: &str, payload: &[u8]) -> anyhow::Result<Envelope>;
}

/// An Ed25519 key kept in a PKCS#8 PEM file (mode 0600) in the data directory.
/// The config-signing key in the data directory (PKCS#8 PEM, mode 0600).
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";

pub struct FileSigner {
    key: SigningKey,
}

impl FileSigner {
    /// Loads the key at `path`, creating it on first start.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading signing key {}", path.display()))?;
            let key = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("parsing signing key {}", path.display()))?;
            return Ok(FileSigner { key });
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("encoding signing key")?;
        write_private_file(path, pem.as_bytes())?;
        tracing::info!(path = %path.display(), key_id = %KeyId::of(&key.verifying_key()).0, "created config signing key");
        Ok(FileSigner { key })
    }

    pub fn from_key(key: SigningKey) -> Self {
        FileSigner { key }
    }
}

impl ConfigSigner for FileSigner {
    fn key_id(&self) -> KeyId {
        KeyId::of(&self.key.verifying_key())
    }

    fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    fn sign(&self, payload_type: &str, payload: &[u8]) -> anyhow::Result<Envelope> {
        Ok(isdf_api::seal(payload_type, payload, &self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_survives_a_restart_and_matches_the_shared_vector_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-key.pem");
        let first = FileSigner::load_or_create(&path).unwrap();
        let again = FileSigner::load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn file_signer_produces_the_api_test_vector() {
        // Same seed and payload as isdf-api's vector: both sides agree on bytes.
        let signer = FileSigner::from_key(SigningKey::from_bytes(&[7; 32]));
        let config: isdf_api::DeviceConfig = serde_json::from_str(include_str!(
            "../../../api/tests/vectors/config-sample.json"
        ))
        .unwrap();
        let payload = serde_json::to_vec(&config).unwrap();
        let envelope = signer
            .sign(isdf_api::CONFIG_PAYLOAD_TYPE, &payload)
            .unwrap();
        assert_eq!(
            String::from_utf8(envelope.to_json()).unwrap(),
            include_str!("../../../api/tests/vectors/envelope-sample.json").trim()
        );
    }
}
