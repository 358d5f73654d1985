//! Root documents: which keys may sign device configs, and which keys may
//! change that (the root keys, possibly kept offline).
//!
//! A new root is accepted only if a key of the current root signed it (the
//! old root authorises the change) and a key it names as root signed it too
//! (nobody can name root keys they do not hold), and only as the next
//! version: roots form a chain the agent walks one step at a time. Rotating
//! or revoking an online signing key is a new root, not a re-enrollment.
//! After a compromised signing key is removed, `config_version_floor` lets the
//! agent accept the controller's versions again even if the attacker signed a
//! very high one.
//!
//! This is the verification half; the controller's CLI that signs roots and
//! the agent's chain walking build on it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::dsse::{
    pae, verify_signature, Envelope, EnvelopeSignature, KeyId, OpenError, TrustedKeys,
};

/// Payload type of a root document envelope.
pub const ROOT_PAYLOAD_TYPE: &str = "application/vnd.isdf.root+json";
/// Largest root envelope accepted.
pub const MAX_ROOT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDocument {
    /// 1 for the first root, then exactly one more per rotation.
    pub version: u64,
    /// Ed25519 keys (hex) that sign the next root.
    pub root_keys: Vec<String>,
    /// Ed25519 keys (hex) trusted to sign device configs.
    pub signing_keys: Vec<String>,
    /// When set, configs at or above this version are accepted again even if
    /// the agent enforces a higher one (recovery from a compromised key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version_floor: Option<u64>,
    /// Ed25519 keys (hex) trusted to sign agent releases
    /// ([`crate::release`]); never also a signing key, so that a stolen
    /// config key cannot ship code. Empty: no release can be installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release_keys: Vec<String>,
}

/// Why a root update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("root envelope: {0}")]
    Envelope(OpenError),
    #[error("not signed by a key of the current root: {0}")]
    NotSignedByCurrentRoot(OpenError),
    #[error("not signed by a root key it names: {0}")]
    NotSignedByNewRoot(OpenError),
    #[error("root version {got} does not follow {current}")]
    WrongVersion { got: u64, current: u64 },
    #[error("invalid root: {0}")]
    Invalid(String),
}

impl RootError {
    pub fn code(&self) -> &'static str {
        match self {
            RootError::Envelope(e) => e.code(),
            RootError::NotSignedByCurrentRoot(_) => "root_not_signed_by_current_root",
            RootError::NotSignedByNewRoot(_) => "root_not_signed_by_new_root",
            RootError::WrongVersion { .. } => "root_wrong_version",
            RootError::Invalid(_) => "root_invalid",
        }
    }
}

fn keys(hex_keys: &[String], what: &str) -> Result<TrustedKeys, RootError> {
    if hex_keys.is_empty() {
        return Err(RootError::Invalid(format!("no {what}")));
    }
    let parsed = hex_keys
        .iter()
        .map(|k| {
            TrustedKeys::parse_public_key(k).map_err(|e| RootError::Invalid(format!("{what}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustedKeys::new(parsed))
}

impl RootDocument {
    /// The keys trusted to sign device configs under this root.
    pub fn config_keys(&self) -> Result<TrustedKeys, RootError> {
        keys(&self.signing_keys, "signing keys")
    }

    fn root_trust(&self) -> Result<TrustedKeys, RootError> {
        keys(&self.root_keys, "root keys")
    }

    /// The keys trusted to sign agent releases under this root (none when
    /// it names none).
    pub fn release_keys(&self) -> Result<TrustedKeys, RootError> {
        if self.release_keys.is_empty() {
            return Ok(TrustedKeys::default());
        }
        keys(&self.release_keys, "release keys")
    }

    /// The checks every root passes besides its signatures: config keys
    /// parse, release keys parse, and no key holds both roles.
    fn check_roles(&self) -> Result<(), RootError> {
        self.config_keys()?;
        self.release_keys()?;
        let parsed = |hex_keys: &[String]| -> Vec<[u8; 32]> {
            hex_keys
                .iter()
                .filter_map(|k| TrustedKeys::parse_public_key(k).ok())
                .map(|k| k.to_bytes())
                .collect()
        };
        let signing = parsed(&self.signing_keys);
        if parsed(&self.release_keys)
            .iter()
            .any(|k| signing.contains(k))
        {
            return Err(RootError::Invalid(
                "a key is both a signing key and a release key: a config key must not sign releases"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks `envelope` is the next root after `self` and returns it.
    pub fn open_next(&self, envelope_bytes: &[u8]) -> Result<RootDocument, RootError> {
        let (envelope, payload) = self.decode(envelope_bytes)?;
        verify_signature(&envelope, &payload, &self.root_trust()?)
            .map_err(RootError::NotSignedByCurrentRoot)?;
        let next: RootDocument = serde_json::from_slice(&payload)
            .map_err(|e| RootError::Envelope(OpenError::MalformedConfig(e.to_string())))?;
        verify_signature(&envelope, &payload, &next.root_trust()?)
            .map_err(RootError::NotSignedByNewRoot)?;
        next.check_roles()?;
        if next.version != self.version + 1 {
            return Err(RootError::WrongVersion {
                got: next.version,
                current: self.version,
            });
        }
        Ok(next)
    }
}

impl RootDocument {
    /// Opens the first root (version 1), which signs itself: it is trusted
    /// because it came over the pinned channel (the enrollment answer).
    pub fn open_first(envelope_bytes: &[u8]) -> Result<RootDocument, RootError> {
        let genesis = RootDocument {
            version: 0,
            root_keys: Vec::new(),
            signing_keys: Vec::new(),
            config_version_floor: None,
            release_keys: Vec::new(),
        };
        let (envelope, payload) = genesis.decode(envelope_bytes)?;
        let first: RootDocument = serde_json::from_slice(&payload)
            .map_err(|e| RootError::Envelope(OpenError::MalformedConfig(e.to_string())))?;
        verify_signature(&envelope, &payload, &first.root_trust()?)
            .map_err(RootError::NotSignedByNewRoot)?;
        first.check_roles()?;
        if first.version != 1 {
            return Err(RootError::WrongVersion {
                got: first.version,
                current: 0,
            });
        }
        Ok(first)
    }

    /// Walks `chain` (envelopes in version order, possibly including ones
    /// already known) from `self` to the newest root.
    pub fn walk<'a>(
        &self,
        chain: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<RootDocument, RootError> {
        let mut current = self.clone();
        for envelope in chain {
            let (_, payload) = current.decode(envelope)?;
            let version = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v["version"].as_u64())
                .unwrap_or(u64::MAX);
            if version <= current.version {
                continue;
            }
            current = current.open_next(envelope)?;
        }
        Ok(current)
    }

    fn decode(&self, envelope_bytes: &[u8]) -> Result<(Envelope, Vec<u8>), RootError> {
        crate::dsse::decode(envelope_bytes, ROOT_PAYLOAD_TYPE, MAX_ROOT_BYTES)
            .map_err(RootError::Envelope)
    }
}

/// Signs `payload` with every key given (a root signed by old and new root keys).
pub fn seal_with_all(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Envelope {
    use ed25519_dalek::Signer;
    let signed = pae(payload_type, payload);
    Envelope {
        payload_type: payload_type.to_owned(),
        payload: BASE64.encode(payload),
        signatures: keys
            .iter()
            .map(|k| EnvelopeSignature {
                keyid: KeyId::of(&k.verifying_key()).0,
                sig: BASE64.encode(k.sign(&signed).to_bytes()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn hex_of(k: &SigningKey) -> String {
        hex::encode(k.verifying_key().as_bytes())
    }

    fn root(version: u64, root_key: &SigningKey, signing_key: &SigningKey) -> RootDocument {
        RootDocument {
            version,
            root_keys: vec![hex_of(root_key)],
            signing_keys: vec![hex_of(signing_key)],
            config_version_floor: None,
            release_keys: Vec::new(),
        }
    }

    #[test]
    fn release_keys_are_a_role_of_their_own() {
        let (root_key, online, release) = (key(1), key(3), key(5));
        let v1 = root(1, &root_key, &online);
        assert!(v1.release_keys().unwrap().is_empty());
        // Absent from the JSON when there is none: roots without releases
        // read as before.
        assert!(serde_json::to_value(&v1)
            .unwrap()
            .get("release_keys")
            .is_none());
        let v2 = RootDocument {
            version: 2,
            release_keys: vec![hex_of(&release)],
            ..v1.clone()
        };
        let opened = v1.open_next(&signed(&v2, &[&root_key])).unwrap();
        let manifest = crate::release::ReleaseManifest {
            version: "1.0.0".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: "0".repeat(64),
            size: 1,
        };
        let sealed = |k: &SigningKey| {
            crate::seal(
                crate::release::RELEASE_PAYLOAD_TYPE,
                &serde_json::to_vec(&manifest).unwrap(),
                k,
            )
            .to_json()
        };
        let keys = opened.release_keys().unwrap();
        assert_eq!(
            crate::release::open_release(&sealed(&release), &keys),
            Ok(manifest.clone())
        );
        let by_config_key = crate::release::open_release(&sealed(&online), &keys).unwrap_err();
        assert_eq!(by_config_key.code(), "release_not_signed_by_release_key");
        // One key in both roles is refused: the root would let a config key ship code.
        let both = RootDocument {
            version: 2,
            release_keys: vec![hex_of(&online)],
            ..v1.clone()
        };
        let refused = v1.open_next(&signed(&both, &[&root_key])).unwrap_err();
        assert_eq!(refused.code(), "root_invalid");
        let first = RootDocument {
            release_keys: vec![hex_of(&online)],
            ..v1.clone()
        };
        assert_eq!(
            RootDocument::open_first(&signed(&first, &[&root_key]))
                .unwrap_err()
                .code(),
            "root_invalid"
        );
    }

    fn signed(doc: &RootDocument, by: &[&SigningKey]) -> Vec<u8> {
        seal_with_all(ROOT_PAYLOAD_TYPE, &serde_json::to_vec(doc).unwrap(), by).to_json()
    }

    #[test]
    fn a_rotation_signed_by_the_old_and_the_new_root_is_accepted() {
        let (old_root, new_root, online1, online2) = (key(1), key(2), key(3), key(4));
        let v1 = root(1, &old_root, &online1);
        let v2 = root(2, &new_root, &online2);
        let opened = v1.open_next(&signed(&v2, &[&old_root, &new_root])).unwrap();
        assert_eq!(opened, v2);
        // The online key moves with the root: the old one is no longer trusted.
        let config = crate::seal(crate::CONFIG_PAYLOAD_TYPE, b"{}", &online1).to_json();
        let policy = crate::OpenPolicy {
            device_id: "d",
            enforced_version: None,
            now: None,
        };
        let refused = crate::open_device_config(&config, &opened.config_keys().unwrap(), &policy);
        assert_eq!(refused.unwrap_err().code(), "unknown_key");
    }

    #[test]
    fn every_bad_root_update_is_refused_with_its_code() {
        let (old_root, new_root, stranger, online) = (key(1), key(2), key(9), key(3));
        let v1 = root(1, &old_root, &online);
        let v2 = root(2, &new_root, &online);
        let code = |bytes: &[u8]| v1.open_next(bytes).unwrap_err().code();
        assert_eq!(
            code(&signed(&v2, &[&stranger, &new_root])),
            "root_not_signed_by_current_root"
        );
        assert_eq!(
            code(&signed(&v2, &[&old_root])),
            "root_not_signed_by_new_root"
        );
        assert_eq!(
            code(&signed(
                &root(3, &new_root, &online),
                &[&old_root, &new_root]
            )),
            "root_wrong_version"
        );
        assert_eq!(
            code(&signed(
                &root(1, &new_root, &online),
                &[&old_root, &new_root]
            )),
            "root_wrong_version"
        );
        let no_signers = RootDocument {
            signing_keys: vec![],
            ..v2.clone()
        };
        assert_eq!(
            code(&signed(&no_signers, &[&old_root, &new_root])),
            "root_invalid"
        );
        let mut extra = serde_json::to_value(&v2).unwrap();
        extra["surprise"] = 1.into();
        let bytes = seal_with_all(
            ROOT_PAYLOAD_TYPE,
            extra.to_string().as_bytes(),
            &[&old_root, &new_root],
        )
        .to_json();
        assert_eq!(code(&bytes), "malformed_config");
        let wrong_type = seal_with_all(
            crate::CONFIG_PAYLOAD_TYPE,
            &serde_json::to_vec(&v2).unwrap(),
            &[&old_root, &new_root],
        )
        .to_json();
        assert_eq!(code(&wrong_type), "wrong_payload_type");
        assert_eq!(code(&vec![b' '; MAX_ROOT_BYTES + 1]), "too_large");
    }

    #[test]
    fn the_first_root_signs_itself_and_walk_skips_known_versions() {
        let (r1, r2, online) = (key(1), key(2), key(3));
        let v1 = root(1, &r1, &online);
        let e1 = signed(&v1, &[&r1]);
        assert_eq!(RootDocument::open_first(&e1).unwrap(), v1);
        assert_eq!(
            RootDocument::open_first(&signed(&v1, &[&key(7)]))
                .unwrap_err()
                .code(),
            "root_not_signed_by_new_root"
        );
        let e2 = signed(&root(2, &r2, &online), &[&r1, &r2]);
        let latest = v1.walk([e1.as_slice(), e2.as_slice()]).unwrap();
        assert_eq!(latest.version, 2);
        assert_eq!(
            latest.walk([e1.as_slice(), e2.as_slice()]).unwrap().version,
            2
        );
    }

    #[test]
    fn a_chain_is_walked_one_version_at_a_time() {
        let roots: Vec<SigningKey> = (10..14).map(key).collect();
        let online = key(3);
        let mut current = root(1, &roots[0], &online);
        for i in 1..roots.len() {
            let next = root(i as u64 + 1, &roots[i], &online);
            current = current
                .open_next(&signed(&next, &[&roots[i - 1], &roots[i]]))
                .unwrap();
        }
        assert_eq!(current.version, 4);
        // An old root key cannot sign for a later root.
        let forged = root(5, &key(99), &key(98));
        assert_eq!(
            current
                .open_next(&signed(&forged, &[&roots[0], &key(99)]))
                .unwrap_err()
                .code(),
            "root_not_signed_by_current_root"
        );
    }
}
