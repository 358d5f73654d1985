//! Agent releases: one build of the agent for one target, described by a
//! manifest (version, target triple, SHA-256 and size of the binary) that a
//! **release key** signs. Release keys are a role of their own in the root
//! document, apart from the keys that sign configs: a config may ask a
//! router to run a release, but only a manifest signed by a release key
//! says which bytes that release is, so a stolen online config key can
//! point routers at releases that exist and can ship no code of its own.
//!
//! The router checks, in order: the manifest's signature by a release key,
//! the manifest itself, then the binary's size and digest against it, all
//! before the binary is made executable.

use std::cmp::Ordering;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dsse::{decode, verify_signature, Envelope, OpenError, TrustedKeys};

/// Payload type of a release manifest envelope.
pub const RELEASE_PAYLOAD_TYPE: &str = "application/vnd.isdf.agent-release+json";
/// Largest release manifest envelope accepted.
pub const MAX_RELEASE_MANIFEST_BYTES: usize = 16 * 1024;
/// Largest agent binary a release may be (the router downloads at most
/// this much; today's release-small build is under 3 MiB).
pub const MAX_RELEASE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseManifest {
    /// The agent's version, as it reports it (`0.4.1`, `0.5.0-rc.1`).
    pub version: String,
    /// The Rust target triple the binary runs on
    /// (`x86_64-unknown-linux-musl`, `mips-unknown-linux-musl`).
    pub target: String,
    /// SHA-256 of the binary, 64 lowercase hex digits.
    pub sha256: String,
    /// Size of the binary in bytes.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 33_554_432))]
    pub size: u64,
}

/// The agent release a config asks the router to run. What the release is
/// (version, target, digest, size) is the signed manifest's word only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRelease {
    /// The release manifest envelope, as a release key signed it.
    pub manifest: Envelope,
    /// Where the router downloads the binary: a path on the device API,
    /// `/device/v1/releases/<sha256>` (ranges allowed, so a cut download
    /// resumes).
    pub path: String,
    /// Install it even below the running agent's version: the operator
    /// asked for this downgrade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// The device API path of a release's binary.
pub fn release_path(sha256: &str) -> String {
    format!("{}/{sha256}", crate::paths::DEVICE_RELEASES)
}

impl AgentRelease {
    /// Checks the structure a config may carry (the signature is the
    /// router's to check, against its root's release keys): a manifest
    /// envelope of the release payload type and a path on the device API
    /// that names the manifest's digest.
    pub fn check(&self) -> Result<(), String> {
        if self.manifest.payload_type != RELEASE_PAYLOAD_TYPE {
            return Err(format!(
                "agent_release: the manifest's payload type is {:?}",
                self.manifest.payload_type
            ));
        }
        let manifest: ReleaseManifest = BASE64
            .decode(&self.manifest.payload)
            .ok()
            .and_then(|payload| serde_json::from_slice(&payload).ok())
            .ok_or("agent_release: the manifest is not a release manifest")?;
        manifest
            .check()
            .map_err(|e| format!("agent_release: {e}"))?;
        if self.path != release_path(&manifest.sha256) {
            return Err(format!(
                "agent_release: path {:?} is not {:?}",
                self.path,
                release_path(&manifest.sha256)
            ));
        }
        Ok(())
    }
}

/// Why a release was refused. [`ReleaseError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release manifest: {0}")]
    Envelope(OpenError),
    #[error("the release manifest is not signed by a release key ({0}); a config key cannot sign releases")]
    NotSignedByReleaseKey(String),
    #[error("invalid release manifest: {0}")]
    Invalid(String),
    #[error("the binary is {got} bytes, the manifest says {expected}")]
    SizeMismatch { got: u64, expected: u64 },
    #[error("the binary's SHA-256 is {got}, the manifest says {expected}")]
    DigestMismatch { got: String, expected: String },
}

impl ReleaseError {
    pub fn code(&self) -> &'static str {
        match self {
            ReleaseError::Envelope(e) => match e {
                OpenError::BadSignature(_) => "release_bad_signature",
                _ => "release_malformed",
            },
            ReleaseError::NotSignedByReleaseKey(_) => "release_not_signed_by_release_key",
            ReleaseError::Invalid(_) => "release_invalid",
            ReleaseError::SizeMismatch { .. } => "release_size_mismatch",
            ReleaseError::DigestMismatch { .. } => "release_digest_mismatch",
        }
    }
}

/// Checks an agent version as releases name it: 1 to 64 letters, digits,
/// '.', '-', '+', starting with a digit (it names a folder on the router).
pub fn check_version(version: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&version.len())
        && version.as_bytes()[0].is_ascii_digit()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {version:?}: 1 to 64 of letters, digits, '.', '-', '+', starting with a digit"
        ))
    }
}

/// Orders versions as SemVer does for what releases use: dot-separated
/// numbers compared as numbers, a pre-release (`-rc.1`) before its release
/// and compared part by part (numbers below words), build metadata (`+...`)
/// ignored. A part that is no number is compared as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &'_ str| -> (String, Option<String>) {
        let v = v.split('+').next().unwrap_or(v);
        match v.split_once('-') {
            Some((core, pre)) => (core.to_owned(), Some(pre.to_owned())),
            None => (v.to_owned(), None),
        }
    };
    let parts = |text: &str| -> Vec<String> { text.split('.').map(str::to_owned).collect() };
    let part_order = |x: &str, y: &str| match (x.parse::<u64>(), y.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => x.cmp(y),
    };
    let list_order = |x: &[String], y: &[String], missing_is_zero: bool| {
        for i in 0..x.len().max(y.len()) {
            let order = match (x.get(i), y.get(i)) {
                (Some(p), Some(q)) => part_order(p, q),
                (Some(p), None) if missing_is_zero => part_order(p, "0"),
                (None, Some(q)) if missing_is_zero => part_order("0", q),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    };
    let ((core_a, pre_a), (core_b, pre_b)) = (split(a), split(b));
    list_order(&parts(&core_a), &parts(&core_b), true).then_with(|| match (pre_a, pre_b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => list_order(&parts(&x), &parts(&y), false),
    })
}

impl ReleaseManifest {
    /// Checks what a manifest may say: a version and a target in a safe
    /// alphabet (they name files on the router and appear in reports), a
    /// digest of the right form, a size within bounds.
    pub fn check(&self) -> Result<(), ReleaseError> {
        let invalid = |why: String| Err(ReleaseError::Invalid(why));
        check_version(&self.version).map_err(ReleaseError::Invalid)?;
        let target_ok = (3..=64).contains(&self.target.len())
            && self
                .target
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
            && self.target.split('-').count() >= 2;
        if !target_ok {
            return invalid(format!(
                "target {:?} is not a target triple (lowercase, digits, '_', '-', '.')",
                self.target
            ));
        }
        let digest_ok = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !digest_ok {
            return invalid("sha256 must be 64 lowercase hex digits".into());
        }
        if !(1..=MAX_RELEASE_BYTES).contains(&self.size) {
            return invalid(format!("size must be 1 to {MAX_RELEASE_BYTES} bytes"));
        }
        Ok(())
    }

    /// Checks `binary` is the one the manifest names: size first, then
    /// SHA-256.
    pub fn check_binary(&self, binary: &[u8]) -> Result<(), ReleaseError> {
        let got = binary.len() as u64;
        if got != self.size {
            return Err(ReleaseError::SizeMismatch {
                got,
                expected: self.size,
            });
        }
        let digest = hex::encode(Sha256::digest(binary));
        if digest != self.sha256 {
            return Err(ReleaseError::DigestMismatch {
                got: digest,
                expected: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

/// Verifies a release manifest envelope against the release keys and
/// returns the manifest, or why not. Order: size, payload type, signature,
/// and only then are the signed bytes parsed and checked.
pub fn open_release(
    envelope_bytes: &[u8],
    release_keys: &TrustedKeys,
) -> Result<ReleaseManifest, ReleaseError> {
    let (envelope, payload) = decode(
        envelope_bytes,
        RELEASE_PAYLOAD_TYPE,
        MAX_RELEASE_MANIFEST_BYTES,
    )
    .map_err(ReleaseError::Envelope)?;
    verify_signature(&envelope, &payload, release_keys).map_err(|e| match e {
        OpenError::UnknownKey(ids) => ReleaseError::NotSignedByReleaseKey(ids),
        other => ReleaseError::Envelope(other),
    })?;
    let manifest: ReleaseManifest = serde_json::from_slice(&payload)
        .map_err(|e| ReleaseError::Invalid(format!("not a release manifest: {e}")))?;
    manifest.check()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsse::seal;
    use ed25519_dalek::SigningKey;

    fn manifest(binary: &[u8]) -> ReleaseManifest {
        ReleaseManifest {
            version: "0.5.0-rc.1".into(),
            target: "x86_64-unknown-linux-musl".into(),
            sha256: hex::encode(Sha256::digest(binary)),
            size: binary.len() as u64,
        }
    }

    fn signed(m: &ReleaseManifest, key: &SigningKey) -> Vec<u8> {
        seal(RELEASE_PAYLOAD_TYPE, &serde_json::to_vec(m).unwrap(), key).to_json()
    }

    #[test]
    fn a_release_opens_with_a_release_key_and_checks_its_binary() {
        let release_key = SigningKey::from_bytes(&[7; 32]);
        let keys = TrustedKeys::new([release_key.verifying_key()]);
        let binary = b"\x7fELF agent".to_vec();
        let opened = open_release(&signed(&manifest(&binary), &release_key), &keys).unwrap();
        assert_eq!(opened, manifest(&binary));
        assert_eq!(opened.check_binary(&binary), Ok(()));
        let mut other = binary.clone();
        other[5] ^= 1;
        assert_eq!(
            opened.check_binary(&other).unwrap_err().code(),
            "release_digest_mismatch"
        );
        other.push(0);
        assert_eq!(
            opened.check_binary(&other).unwrap_err().code(),
            "release_size_mismatch"
        );
    }

    #[test]
    fn a_config_key_cannot_sign_a_release() {
        let release_key = SigningKey::from_bytes(&[7; 32]);
        let config_key = SigningKey::from_bytes(&[8; 32]);
        let keys = TrustedKeys::new([release_key.verifying_key()]);
        let e = open_release(&signed(&manifest(b"x"), &config_key), &keys).unwrap_err();
        assert_eq!(e.code(), "release_not_signed_by_release_key");
        // A config envelope is not a release either, whoever signed it.
        let config = seal(crate::CONFIG_PAYLOAD_TYPE, b"{}", &release_key).to_json();
        assert_eq!(
            open_release(&config, &keys).unwrap_err().code(),
            "release_malformed"
        );
        // Tampered after signing.
        let mut envelope: Envelope =
            serde_json::from_slice(&signed(&manifest(b"x"), &release_key)).unwrap();
        let mut tampered = manifest(b"x");
        tampered.size = 2;
        envelope.payload = BASE64.encode(serde_json::to_vec(&tampered).unwrap());
        assert_eq!(
            open_release(&envelope.to_json(), &keys).unwrap_err().code(),
            "release_bad_signature"
        );
    }

    #[test]
    fn a_config_names_a_release_by_its_manifest_and_the_path_of_its_digest() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let m = manifest(b"agent");
        let envelope: Envelope = serde_json::from_slice(&signed(&m, &key)).unwrap();
        let release = AgentRelease {
            manifest: envelope.clone(),
            path: release_path(&m.sha256),
            allow_downgrade: false,
        };
        assert_eq!(release.check(), Ok(()));
        assert!(release.path.starts_with("/device/v1/releases/"));
        let json = serde_json::to_value(&release).unwrap();
        assert!(json.get("allow_downgrade").is_none(), "false is left out");
        let elsewhere = AgentRelease {
            path: "/device/v1/releases/../config".into(),
            ..release.clone()
        };
        assert!(elsewhere.check().unwrap_err().contains("is not"));
        let config_envelope = AgentRelease {
            manifest: seal(crate::CONFIG_PAYLOAD_TYPE, b"{}", &key),
            ..release.clone()
        };
        assert!(config_envelope
            .check()
            .unwrap_err()
            .contains("payload type"));
        let mut bad = m.clone();
        bad.version = "../../x".into();
        let bad_manifest = AgentRelease {
            manifest: seal(
                RELEASE_PAYLOAD_TYPE,
                &serde_json::to_vec(&bad).unwrap(),
                &key,
            ),
            ..release
        };
        assert!(bad_manifest.check().unwrap_err().contains("version"));
    }

    #[test]
    fn manifests_name_safe_versions_targets_and_digests() {
        let good = manifest(b"x");
        assert_eq!(good.check(), Ok(()));
        let bad = [
            ReleaseManifest {
                version: "../x".into(),
                ..good.clone()
            },
            ReleaseManifest {
                version: "v1".into(),
                ..good.clone()
            },
            ReleaseManifest {
                version: String::new(),
                ..good.clone()
            },
            ReleaseManifest {
                target: "x86_64/../../bin".into(),
                ..good.clone()
            },
            ReleaseManifest {
                target: "linux".into(),
                ..good.clone()
            },
            ReleaseManifest {
                sha256: "AB".repeat(32),
                ..good.clone()
            },
            ReleaseManifest {
                size: 0,
                ..good.clone()
            },
            ReleaseManifest {
                size: MAX_RELEASE_BYTES + 1,
                ..good.clone()
            },
        ];
        for m in bad {
            assert_eq!(m.check().unwrap_err().code(), "release_invalid", "{m:?}");
        }
    }

    #[test]
    fn versions_order_as_semver_does() {
        let ordered = [
            "0.1.0",
            "0.1.1",
            "0.2.0-alpha",
            "0.2.0-alpha.1",
            "0.2.0-alpha.beta",
            "0.2.0-beta.2",
            "0.2.0-beta.11",
            "0.2.0-rc.1",
            "0.2.0",
            "0.10.0",
            "1.0.0",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare_versions(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(compare_versions("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.2.0+build.5", "1.2.0"), Ordering::Equal);
    }
}
