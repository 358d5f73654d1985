//! What the real agent does with an `agent_release` it must not install,
//! served by a rogue device API holding the controller's CA and signing
//! key (a stolen online config key): each is refused with its stable code,
//! the config's firewall stays enforced, and nothing is written for it:
//!
//! - a manifest signed by the config key (`release_not_signed_by_release_key`);
//! - a build for another target (`release_wrong_target`);
//! - an older version the config does not allow (`release_downgrade_refused`);
//! - a binary whose digest is not the manifest's (`release_digest_mismatch`:
//!   downloaded, checked, removed, never installed).
//!
//! Then a good release whose download is cut halfway: the agent resumes it
//! from the byte it stopped at, installs it and exits for its launcher,
//! leaving the kernel rules in place. An agent that no launcher started
//! refuses that release (`release_needs_launcher`).

use std::path::Path;
use std::time::Duration;

use isdf_api::release::{release_path, AgentRelease, ReleaseManifest, RELEASE_PAYLOAD_TYPE};
use isdf_api::{DeviceConfig, Outcome, StatusReport, CONFIG_PAYLOAD_TYPE};
use isdf_controller::reconcile::signer::{ConfigSigner, FileSigner};
use sha2::Digest;

use crate::harness::{in_wan, ruleset, AgentProcess, Stage};
use crate::rogue_controller::RogueController;

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A release of `bytes` as `version` for `target`, its manifest signed by
/// `key`.
fn release(
    version: &str,
    target: &str,
    bytes: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> AgentRelease {
    let manifest = ReleaseManifest {
        version: version.into(),
        target: target.into(),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
    };
    AgentRelease {
        manifest: isdf_api::seal(
            RELEASE_PAYLOAD_TYPE,
            &serde_json::to_vec(&manifest).unwrap(),
            key,
        ),
        path: release_path(&manifest.sha256),
        allow_downgrade: false,
    }
}

/// Files in the releases folder, besides the folder itself.
fn release_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("releases"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for a report of `version` with `outcome`.
async fn report_of(
    rogue: &mut RogueController,
    agent: &AgentProcess,
    version: u64,
    outcome: Outcome,
) -> StatusReport {
    loop {
        let report = rogue
            .next_report(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no report of {version}; agent log:\n{}", agent.log()));
        if report.attempted_version == Some(version) && report.outcome == outcome {
            return report;
        }
    }
}

/// Waits (without holding up the rogue server) until `check` holds.
async fn until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn releases_the_router_must_not_install_are_refused_and_a_cut_download_resumes() {
    in_wan("urf", |topo, work| async move {
        let stage = Stage::prepare(&work, None).await;
        let state = work.join("agent/state");
        let agent = AgentProcess::start_with_env(
            &topo.router,
            &stage.config_path,
            "nftables",
            &stage.log,
            &[("ISDF_AGENT_LAUNCH_STATE", &state)],
        );
        stage
            .operator
            .block_everywhere(serde_json::json!([{"protocol": "tcp", "dport": 9000}]))
            .await;
        stage.operator.wait_applied(&stage.device, 2).await;
        let current: isdf_api::Envelope = serde_json::from_value(
            stage
                .operator
                .get(&format!("/api/v1/devices/{}/config", stage.device))
                .await["envelope"]
                .clone(),
        )
        .unwrap();
        let config: DeviceConfig =
            serde_json::from_slice(&current.payload_bytes().unwrap()).unwrap();
        let enforced = ruleset(&topo.router, "nftables");
        let dir = &stage.controller_dir;
        let signer = FileSigner::load_or_create(&dir.join("signing-key.pem")).unwrap();
        let config_key =
            isdf_controller::trust::roots::read_key(&dir.join("signing-key.pem")).unwrap();
        let release_key =
            isdf_controller::trust::roots::read_key(&dir.join("release-key.pem")).unwrap();
        stage.controller.stop().await.unwrap();
        let mut rogue = RogueController::start(stage.device_addr, dir).await;
        let target = isdf_agent::AGENT_TARGET;
        let mut version = config.version;
        let mut serve = |release: AgentRelease| {
            version += 1;
            let next = DeviceConfig {
                version,
                agent_release: Some(release),
                ..config.clone()
            };
            let envelope = signer
                .sign(CONFIG_PAYLOAD_TYPE, &serde_json::to_vec(&next).unwrap())
                .unwrap()
                .to_json();
            (version, envelope)
        };

        let good = b"\x7fELF the next agent".repeat(20_000);
        let refusals = [
            (
                "release_not_signed_by_release_key",
                release("9.9.9", target, &good, &config_key),
            ),
            (
                "release_wrong_target",
                release("9.9.9", "mips-unknown-linux-musl", &good, &release_key),
            ),
            (
                "release_downgrade_refused",
                release("0.0.1", target, &good, &release_key),
            ),
        ];
        for (code, refused) in refusals {
            let (version, envelope) = serve(refused);
            rogue.serve_next(envelope);
            let report = report_of(&mut rogue, &agent, version, Outcome::RolledBack).await;
            assert!(
                report.errors[0].starts_with(code),
                "{code}: {:?}",
                report.errors
            );
            assert_eq!(
                report.enforced_version,
                Some(version),
                "{code}: the firewall is enforced"
            );
            assert_eq!(
                release_files(&state),
                Vec::<String>::new(),
                "{code}: nothing written"
            );
            assert!(
                rogue.release.lock().unwrap().ranges.is_empty(),
                "{code}: nothing downloaded"
            );
        }

        // Another binary of the manifest's size: downloaded, refused, removed.
        let mut other = good.clone();
        other[1000] ^= 1;
        rogue.release.lock().unwrap().bytes = other;
        let (version, envelope) = serve(release("9.9.9", target, &good, &release_key));
        rogue.serve_next(envelope);
        let report = report_of(&mut rogue, &agent, version, Outcome::RolledBack).await;
        assert!(
            report.errors[0].starts_with("release_digest_mismatch"),
            "{:?}",
            report.errors
        );
        assert_eq!(
            release_files(&state),
            Vec::<String>::new(),
            "the download is removed"
        );
        assert_eq!(ruleset(&topo.router, "nftables"), enforced);

        // The right binary, cut halfway the first time: resumed from there.
        let half = good.len() / 2;
        {
            let mut served = rogue.release.lock().unwrap();
            served.bytes = good.clone();
            served.cut_next_at = Some(half);
            served.ranges.clear();
        }
        let (version, envelope) = serve(release("9.9.10", target, &good, &release_key));
        rogue.serve_next(envelope);
        let releases = state.join("releases");
        until("the release staged", Duration::from_secs(30), || {
            releases.join("pending").exists()
        })
        .await;
        let ranges = rogue.release.lock().unwrap().ranges.clone();
        assert_eq!(ranges.first(), Some(&None), "{ranges:?}");
        assert!(
            ranges.len() >= 2,
            "the cut download was asked again: {ranges:?}"
        );
        assert!(
            ranges[1..].iter().all(|r| r.as_ref().is_some_and(|r| {
                r.strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|r| r.parse::<usize>().ok())
                    .is_some_and(|from| from > 0)
            })),
            "resumed, not started again: {ranges:?}"
        );
        let installed = std::fs::read_link(releases.join("current")).unwrap();
        assert_eq!(std::fs::read(&installed).unwrap(), good);
        until(
            "the agent exited for its launcher",
            Duration::from_secs(10),
            || agent.log().contains("exiting for the upgrade"),
        )
        .await;
        assert_eq!(
            ruleset(&topo.router, "nftables"),
            enforced,
            "the rules stay"
        );
        drop(agent);

        // The same release, to an agent no launcher started (its service
        // runs `isdf-agent` directly): refused, as nothing would bring it
        // back. (The staged upgrade is taken away first, as if the
        // launcher had never run.)
        std::fs::remove_dir_all(&releases).unwrap();
        let unwatched =
            AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        let report = report_of(&mut rogue, &unwatched, version, Outcome::RolledBack).await;
        assert!(
            report.errors[0].starts_with("release_needs_launcher"),
            "{:?}",
            report.errors
        );
        assert_eq!(report.enforced_version, Some(version));
        assert_eq!(
            release_files(&state),
            Vec::<String>::new(),
            "nothing written"
        );
        assert_eq!(ruleset(&topo.router, "nftables"), enforced);
        rogue.stop();
        drop(unwatched);
    });
}
