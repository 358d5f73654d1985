//! What the router decides about the agent release a config asks for,
//! before a byte of it is downloaded: whether the manifest is signed by a
//! release key of the root the agent trusts, whether it is for this
//! router's target, and whether installing it is an upgrade (a downgrade
//! only when the operator asked for one). Pure: the manifest, the trusted
//! keys and what runs now in; the decision out.
//!
//! `upgrading.rs` acts on the decision (download, stage, confirm);
//! `deploy/isdf-agent-launch` is the watchdog that brings the previous
//! binary back.

use std::cmp::Ordering;

use isdf_api::release::{compare_versions, open_release, AgentRelease, ReleaseManifest};
use isdf_api::TrustedKeys;

/// What to do about a config's `agent_release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// It is the agent that runs: nothing to do.
    Running,
    /// Download, check and install it.
    Install(ReleaseManifest),
}

/// Why a release is not installed: stable codes, reported like a refused
/// config's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRefusal {
    Manifest(isdf_api::release::ReleaseError),
    WrongTarget { release: String, running: String },
    Downgrade { release: String, running: String },
}

impl ReleaseRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            ReleaseRefusal::Manifest(e) => e.code(),
            ReleaseRefusal::WrongTarget { .. } => "release_wrong_target",
            ReleaseRefusal::Downgrade { .. } => "release_downgrade_refused",
        }
    }
}

impl std::fmt::Display for ReleaseRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseRefusal::Manifest(e) => write!(f, "{e}"),
            ReleaseRefusal::WrongTarget { release, running } => {
                write!(f, "the release is for {release}, this router runs {running}")
            }
            ReleaseRefusal::Downgrade { release, running } => write!(
                f,
                "{release} is older than the running {running}; the config does not allow a downgrade"
            ),
        }
    }
}

/// Decides about `release` for an agent `running_version` built for
/// `running_target`, trusting `release_keys` (the verified root's).
pub fn decide(
    release: &AgentRelease,
    release_keys: &TrustedKeys,
    running_version: &str,
    running_target: &str,
) -> Result<ReleaseDecision, ReleaseRefusal> {
    let manifest = open_release(&release.manifest.to_json(), release_keys)
        .map_err(ReleaseRefusal::Manifest)?;
    if manifest.target != running_target {
        return Err(ReleaseRefusal::WrongTarget {
            release: manifest.target,
            running: running_target.to_owned(),
        });
    }
    match compare_versions(&manifest.version, running_version) {
        Ordering::Equal => Ok(ReleaseDecision::Running),
        Ordering::Less if !release.allow_downgrade => Err(ReleaseRefusal::Downgrade {
            release: manifest.version,
            running: running_version.to_owned(),
        }),
        _ => Ok(ReleaseDecision::Install(manifest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use isdf_api::release::{release_path, RELEASE_PAYLOAD_TYPE};

    const TARGET: &str = "mips-unknown-linux-musl";

    fn release(
        version: &str,
        target: &str,
        key: &SigningKey,
        allow_downgrade: bool,
    ) -> AgentRelease {
        let manifest = ReleaseManifest {
            version: version.into(),
            target: target.into(),
            sha256: "ab".repeat(32),
            size: 2_000_000,
        };
        AgentRelease {
            manifest: isdf_api::seal(
                RELEASE_PAYLOAD_TYPE,
                &serde_json::to_vec(&manifest).unwrap(),
                key,
            ),
            path: release_path(&manifest.sha256),
            allow_downgrade,
        }
    }

    #[test]
    fn only_a_newer_release_for_this_target_signed_by_a_release_key_is_installed() {
        let release_key = SigningKey::from_bytes(&[1; 32]);
        let config_key = SigningKey::from_bytes(&[2; 32]);
        let keys = TrustedKeys::new([release_key.verifying_key()]);
        let decide = |r: &AgentRelease| decide(r, &keys, "0.4.0", TARGET);
        assert!(
            matches!(decide(&release("0.5.0", TARGET, &release_key, false)), Ok(ReleaseDecision::Install(m)) if m.version == "0.5.0")
        );
        assert_eq!(
            decide(&release("0.4.0", TARGET, &release_key, false)),
            Ok(ReleaseDecision::Running)
        );
        let code = |r: AgentRelease| decide(&r).unwrap_err().code();
        assert_eq!(
            code(release("0.5.0", TARGET, &config_key, false)),
            "release_not_signed_by_release_key"
        );
        assert_eq!(
            code(release(
                "0.5.0",
                "aarch64-unknown-linux-musl",
                &release_key,
                false
            )),
            "release_wrong_target"
        );
        assert_eq!(
            code(release("0.3.9", TARGET, &release_key, false)),
            "release_downgrade_refused"
        );
        // The operator asked for this downgrade.
        assert!(matches!(
            decide(&release("0.3.9", TARGET, &release_key, true)),
            Ok(ReleaseDecision::Install(_))
        ));
        // No release key trusted (a root without one): nothing installs.
        let none = TrustedKeys::default();
        let refused = super::decide(
            &release("0.5.0", TARGET, &release_key, false),
            &none,
            "0.4.0",
            TARGET,
        );
        assert_eq!(
            refused.unwrap_err().code(),
            "release_not_signed_by_release_key"
        );
    }
}
