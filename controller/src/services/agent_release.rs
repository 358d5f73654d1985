//! The `agent-release` service: which agent version the routers it is
//! assigned to should run, delivered in their signed config like any other
//! change (so selectors, staged rollouts, health gates and aborts apply to
//! upgrades too). Pure: the assignments in force, the router's reported
//! target triple and the uploaded builds in; the config's `agent_release`,
//! or why there is none, out.
//!
//! A router gets only a build for the target it reports; one whose target
//! has no build of the wanted version (or that has not reported a target
//! yet) gets none and is shown as missing it, never a binary for another
//! architecture.

use std::collections::HashMap;

use isdf_api::release::{compare_versions, release_path, AgentRelease};
use isdf_api::Envelope;
use serde::{Deserialize, Serialize};

use super::{CompiledAssignment, ServiceSpec};
use crate::model::Labels;

/// `agent-release`: the routers run agent `version`, downloaded from the
/// controller, checked against its release-key signature, and reverted by
/// the router itself when it does not reach the controller in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentReleaseSpec {
    /// The agent version to run, as its releases name it (`0.5.0`).
    pub version: String,
    /// Install it on routers that run a newer agent too (default false:
    /// routers refuse a downgrade the operator did not ask for).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

impl AgentReleaseSpec {
    pub fn check(&self) -> Result<(), String> {
        isdf_api::release::check_version(&self.version)
    }
}

/// An uploaded build of a version, as the compiler picks it.
#[derive(Debug, Clone)]
pub struct Build {
    pub target: String,
    pub sha256: String,
    /// The manifest envelope as the release key signed it.
    pub manifest: Envelope,
}

/// The uploaded builds of the versions wanted, by version.
pub type Builds = HashMap<String, Vec<Build>>;

/// What a router's config says about its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleasePlan {
    /// No `agent-release` is in force on it.
    Unmanaged,
    /// The build of `version` for its target.
    Deliver {
        version: String,
        release: AgentRelease,
    },
    /// `version` is wanted but has no build for its target (None: it has
    /// not reported one yet).
    Missing {
        version: String,
        target: Option<String>,
    },
}

impl ReleasePlan {
    /// What of the plan goes into the config's digest (so a change of it
    /// is a new config version): "" when unmanaged.
    pub fn digest_part(&self) -> String {
        match self {
            ReleasePlan::Unmanaged => String::new(),
            ReleasePlan::Deliver { release, .. } => format!(
                "+release:{}{}",
                release.path.rsplit('/').next().unwrap_or_default(),
                if release.allow_downgrade {
                    ":downgrade"
                } else {
                    ""
                }
            ),
            ReleasePlan::Missing { version, target } => format!(
                "+release-missing:{version}:{}",
                target.as_deref().unwrap_or("-")
            ),
        }
    }

    /// The version delivered (what a rollout waits for the router to run).
    pub fn delivered_version(&self) -> Option<&str> {
        match self {
            ReleasePlan::Deliver { version, .. } => Some(version),
            _ => None,
        }
    }

    /// The version wanted for which the router's target has no build.
    pub fn missing_version(&self) -> Option<&str> {
        match self {
            ReleasePlan::Missing { version, .. } => Some(version),
            _ => None,
        }
    }

    pub fn into_release(self) -> Option<AgentRelease> {
        match self {
            ReleasePlan::Deliver { release, .. } => Some(release),
            _ => None,
        }
    }
}

/// The `agent-release` in force on a router with `labels`: of several, the
/// highest version (a downgrade allowed only if that one allows it).
pub fn wanted<'a>(
    labels: &Labels,
    assignments: impl IntoIterator<Item = &'a CompiledAssignment>,
) -> Option<&'a AgentReleaseSpec> {
    assignments
        .into_iter()
        .filter(|a| a.selector.matches(labels))
        .filter_map(|a| match &a.spec {
            ServiceSpec::AgentRelease(spec) => Some(spec),
            _ => None,
        })
        .max_by(|a, b| {
            compare_versions(&a.version, &b.version)
                .then_with(|| a.allow_downgrade.cmp(&b.allow_downgrade).reverse())
        })
}

/// The plan for a router wanting `spec`, reporting `target`, from the
/// uploaded `builds`.
pub fn plan(spec: Option<&AgentReleaseSpec>, target: Option<&str>, builds: &Builds) -> ReleasePlan {
    let Some(spec) = spec else {
        return ReleasePlan::Unmanaged;
    };
    let build = target.and_then(|target| {
        builds
            .get(&spec.version)?
            .iter()
            .find(|b| b.target == target)
    });
    match build {
        Some(build) => ReleasePlan::Deliver {
            version: spec.version.clone(),
            release: AgentRelease {
                manifest: build.manifest.clone(),
                path: release_path(&build.sha256),
                allow_downgrade: spec.allow_downgrade,
            },
        },
        None => ReleasePlan::Missing {
            version: spec.version.clone(),
            target: target.map(str::to_owned),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Selector;
    use crate::services::ServiceKind;

    fn assignment(selector: &str, spec: serde_json::Value) -> CompiledAssignment {
        CompiledAssignment {
            id: uuid::Uuid::new_v4(),
            selector: Selector::parse(selector).unwrap(),
            created_at: 0,
            spec: ServiceSpec::parse(ServiceKind::AgentRelease, &spec).unwrap(),
        }
    }

    fn build(target: &str, sha: char) -> Build {
        Build {
            target: target.into(),
            sha256: sha.to_string().repeat(64),
            manifest: Envelope {
                payload_type: isdf_api::release::RELEASE_PAYLOAD_TYPE.into(),
                payload: String::new(),
                signatures: vec![],
            },
        }
    }

    #[test]
    fn specs_are_checked() {
        let parse = |v| ServiceSpec::parse(ServiceKind::AgentRelease, &v);
        assert!(parse(serde_json::json!({"version": "0.5.0"})).is_ok());
        assert!(parse(serde_json::json!({"version": "../x"})).is_err());
        assert!(parse(serde_json::json!({"version": "0.5.0", "url": "x"})).is_err());
        assert!(parse(serde_json::json!({})).is_err());
    }

    #[test]
    fn the_highest_version_in_force_wins() {
        let labels = Labels::from_pairs(&[("ring", "canary")]);
        let assignments = [
            assignment("*", serde_json::json!({"version": "0.9.0"})),
            assignment(
                "ring=canary",
                serde_json::json!({"version": "0.10.0", "allow_downgrade": true}),
            ),
            assignment("ring=late", serde_json::json!({"version": "1.0.0"})),
        ];
        let spec = wanted(&labels, &assignments).unwrap();
        assert_eq!(
            (spec.version.as_str(), spec.allow_downgrade),
            ("0.10.0", true)
        );
        assert_eq!(wanted(&labels, &assignments[..0]), None);
    }

    #[test]
    fn a_router_gets_only_the_build_for_its_target() {
        let spec = AgentReleaseSpec {
            version: "0.5.0".into(),
            allow_downgrade: false,
        };
        let builds: Builds = [(
            "0.5.0".to_owned(),
            vec![
                build("x86_64-unknown-linux-musl", 'a'),
                build("mips-unknown-linux-musl", 'b'),
            ],
        )]
        .into();
        let plan_for = |target: Option<&str>| plan(Some(&spec), target, &builds);
        let delivered = plan_for(Some("mips-unknown-linux-musl"));
        assert_eq!(
            delivered.clone().into_release().unwrap().path,
            format!("/device/v1/releases/{}", "b".repeat(64))
        );
        assert_eq!(
            delivered.digest_part(),
            format!("+release:{}", "b".repeat(64))
        );
        assert_eq!(delivered.delivered_version(), Some("0.5.0"));
        let missing = plan_for(Some("aarch64-unknown-linux-musl"));
        assert_eq!(missing.missing_version(), Some("0.5.0"));
        assert_eq!(
            missing.digest_part(),
            "+release-missing:0.5.0:aarch64-unknown-linux-musl"
        );
        assert_eq!(plan_for(None).digest_part(), "+release-missing:0.5.0:-");
        assert_eq!(plan(None, Some("x"), &builds), ReleasePlan::Unmanaged);
        assert_eq!(ReleasePlan::Unmanaged.digest_part(), "");
    }
}
