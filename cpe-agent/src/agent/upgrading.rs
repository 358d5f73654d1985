//! Agent upgrades, the loop's part: what the enforced config's
//! `agent_release` makes the agent do. `upgrade.rs` decides (signature by a
//! release key, target, no unasked downgrade); this file acts on it:
//!
//! 1. downloads the binary into the state directory in the background
//!    (configs keep being polled and applied meanwhile), resuming a cut
//!    download, retrying a failed one with a growing pause;
//! 2. stages it (`sys::releases::stage`: size and SHA-256 against the
//!    signed manifest, installed beside the running binary, `current` and
//!    `previous` switched by rename, a deadline to confirm by) and ends the
//!    loop, so the supervisor starts `isdf-agent-launch` again, which runs
//!    the new agent and watches it;
//! 3. as the new agent: confirms once the controller took a report naming
//!    its version.
//!
//! The kernel rules stay in place throughout: the agent exits without
//! touching them, and whichever binary starts re-applies the last good
//! config first. A release is refused (reported `rolled_back` with a
//! stable code, the config's firewall staying enforced) when it is not
//! signed by a release key, is for another target, would be an unasked
//! downgrade, failed its digest, was undone by the launcher before
//! (`upgrade_reverted`), or when the agent was not started by the launcher
//! (`release_needs_launcher`: nothing would bring the previous agent back).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isdf_api::release::ReleaseManifest;
use isdf_api::Outcome;

use super::upgrade::{decide, ReleaseDecision, ReleaseRefusal};
use super::{error_failed, warn_failed, Agent, LastResult};
use crate::sys::releases::{self, Upgrade};
use crate::sys::time::backoff;

/// Set by `isdf-agent-launch` to the state directory it watches.
pub const LAUNCHER_STATE_ENV: &str = "ISDF_AGENT_LAUNCH_STATE";

/// The longest pause between two attempts at a failing download.
const MAX_DOWNLOAD_RETRY: Duration = Duration::from_secs(600);

type Download = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Where the agent is in an upgrade.
#[derive(Default)]
pub(super) struct Upgrading {
    /// This agent was installed by an upgrade and has not confirmed yet.
    confirm_due: bool,
    /// The release being downloaded, and the download.
    pub(super) download: Option<(ReleaseManifest, Download)>,
    /// After failed downloads: of which release (digest), how many failed
    /// in a row, and when the next attempt is due.
    retry: Option<(String, u32, Instant)>,
    /// The (config version, release digest) last acted on, so a refusal is
    /// reported once per config rather than at every pass.
    considered: Option<(u64, String)>,
    /// Staged: the loop ends for the launcher to start the new agent.
    pub(super) staged: bool,
}

/// A release refused, as the status report says it.
struct Refused(String);

impl From<ReleaseRefusal> for Refused {
    fn from(refusal: ReleaseRefusal) -> Self {
        Refused(format!("{}: {refusal}", refusal.code()))
    }
}

impl Agent {
    /// At start: reads what the launcher left (a pending upgrade this agent
    /// must confirm, or an upgrade it undid).
    pub(super) fn notice_upgrade_state(&mut self) {
        match releases::take_upgrade_state(&self.settings.state_dir) {
            Ok(Upgrade::None) => {}
            Ok(Upgrade::Pending { deadline }) => {
                tracing::info!(
                    deadline,
                    "this agent was just installed; it confirms once the controller took its report"
                );
                self.upgrading.confirm_due = true;
            }
            Ok(Upgrade::Reverted { reason }) => {
                tracing::warn!(%reason, "the last agent upgrade was undone by isdf-agent-launch")
            }
            Err(e) => warn_failed("reading the upgrade state", &e),
        }
    }

    /// After a report the controller took: a newly installed agent
    /// confirms, and the launcher lets it run.
    pub(super) fn confirm_upgrade_if_due(&mut self) {
        if !self.upgrading.confirm_due {
            return;
        }
        match releases::confirm(&self.settings.state_dir) {
            Ok(()) => {
                tracing::info!(
                    version = crate::AGENT_VERSION,
                    "confirmed: the upgrade stands"
                );
                self.upgrading.confirm_due = false;
                match releases::prune(&self.settings.state_dir) {
                    Ok(freed) => tracing::info!(freed, "removed older agent releases"),
                    Err(e) => warn_failed("removing older agent releases", &e),
                }
            }
            Err(e) => error_failed("confirming the upgrade; the launcher may undo it", &e),
        }
    }

    /// Acts on the enforced config's `agent_release`: nothing, a refusal,
    /// or a download in the background. Called after every apply and at
    /// every pass (for retries); does nothing twice for one config.
    pub(super) async fn consider_release(&mut self) {
        let Some(enforced) = &self.enforced else {
            return;
        };
        let version = enforced.config.version;
        let Some(release) = enforced.config.agent_release.clone() else {
            self.cancel_download();
            self.upgrading.considered = None;
            return;
        };
        let key = (version, release.path.clone());
        let retry_due = self.upgrading.retry.as_ref().is_some_and(|(sha, _, at)| {
            release.path.ends_with(sha.as_str()) && *at <= Instant::now()
        });
        if self.upgrading.considered.as_ref() == Some(&key) && !retry_due {
            return;
        }
        self.upgrading.considered = Some(key);
        let mut decided = self.decide_release(&release);
        // Signed by a release key we do not know yet: perhaps the root
        // changed. Follow the chain once, then decide again.
        if matches!(&decided, Err(ReleaseRefusal::Manifest(e)) if e.code() == "release_not_signed_by_release_key")
            && self.follow_roots().await
        {
            decided = self.decide_release(&release);
        }
        let manifest = match decided {
            Ok(ReleaseDecision::Running) => {
                self.cancel_download();
                return;
            }
            Ok(ReleaseDecision::Install(manifest)) => manifest,
            Err(refusal) => return self.refuse_release(version, refusal.into()),
        };
        if let Err(refused) = self.installable(&manifest) {
            self.cancel_download();
            return self.refuse_release(version, refused);
        }
        if self
            .upgrading
            .download
            .as_ref()
            .is_some_and(|(m, _)| m.sha256 == manifest.sha256)
            || self
                .upgrading
                .retry
                .as_ref()
                .is_some_and(|(sha, _, at)| *sha == manifest.sha256 && *at > Instant::now())
        {
            return;
        }
        self.cancel_download();
        tracing::info!(
            release = %manifest.version,
            size = manifest.size,
            "downloading the agent release the config asks for"
        );
        let client = self.client.clone();
        let partial = releases::partial_path(&self.settings.state_dir, &manifest.sha256);
        let size = manifest.size;
        let path = release.path;
        let download = tokio::spawn(async move {
            std::fs::create_dir_all(partial.parent().unwrap_or(Path::new(".")))?;
            client.download_release(&path, &partial, size).await
        });
        self.upgrading.download = Some((manifest, download));
    }

    fn decide_release(
        &self,
        release: &isdf_api::release::AgentRelease,
    ) -> Result<ReleaseDecision, ReleaseRefusal> {
        let keys = self
            .root
            .as_ref()
            .and_then(|root| root.release_keys().ok())
            .unwrap_or_default();
        decide(release, &keys, crate::AGENT_VERSION, crate::AGENT_TARGET)
    }

    /// What keeps a release the agent would take from being installed: it
    /// runs already (under another version than its manifest's), the
    /// launcher undid it before, or there is no launcher to watch it.
    fn installable(&self, manifest: &ReleaseManifest) -> Result<(), Refused> {
        // Installed and running, yet reporting another version: installing
        // it again would loop.
        if running_binary()
            .is_ok_and(|running| releases::runs(&self.settings.state_dir, manifest, &running))
        {
            return Err(Refused(format!(
                "release_version_mismatch: the release signed as {} runs, but reports {}; \
                 sign it with the version `isdf-agent --version` prints",
                manifest.version,
                crate::AGENT_VERSION
            )));
        }
        if let Some(reason) = releases::reverted_reason(&self.settings.state_dir, manifest) {
            return Err(Refused(format!(
                "upgrade_reverted: {} was undone by isdf-agent-launch and is not tried again: {reason}",
                manifest.version
            )));
        }
        let watched = std::env::var_os(LAUNCHER_STATE_ENV)
            .is_some_and(|dir| same_dir(Path::new(&dir), &self.settings.state_dir));
        if !watched {
            return Err(Refused(format!(
                "release_needs_launcher: the agent was not started by isdf-agent-launch for \
                 state_dir {}; nothing would bring this agent back if {} failed, so it is not \
                 installed",
                self.settings.state_dir.display(),
                manifest.version
            )));
        }
        Ok(())
    }

    /// Reports a refused release: the config's firewall stays enforced,
    /// the release is not (`rolled_back` with the reason).
    fn refuse_release(&mut self, version: u64, Refused(reason): Refused) {
        tracing::warn!(%reason, "agent release refused; this agent keeps running");
        self.last = Some(LastResult {
            outcome: Outcome::RolledBack,
            attempted_version: Some(version),
            errors: vec![reason],
        });
        self.report_due = true;
    }

    fn cancel_download(&mut self) {
        if let Some((_, download)) = self.upgrading.download.take() {
            download.abort();
        }
    }

    /// Waits for the download in progress (never resolves without one).
    pub(super) async fn next_download(
        download: &mut Option<(ReleaseManifest, Download)>,
    ) -> anyhow::Result<()> {
        match download {
            Some((_, task)) => match task.await {
                Ok(result) => result,
                Err(e) => Err(anyhow::anyhow!("the download task ended: {e}")),
            },
            None => std::future::pending().await,
        }
    }

    /// A download ended: stage the release (and end the loop), or try
    /// again later.
    pub(super) fn finish_download(&mut self, result: anyhow::Result<()>) {
        let Some((manifest, _)) = self.upgrading.download.take() else {
            return;
        };
        if let Err(e) = result {
            let failures = match &self.upgrading.retry {
                Some((sha, n, _)) if *sha == manifest.sha256 => n + 1,
                _ => 1,
            };
            let pause = backoff(failures, MAX_DOWNLOAD_RETRY);
            warn_failed(
                &format!(
                    "downloading agent {}; it resumes in {pause:?}",
                    manifest.version
                ),
                &e,
            );
            self.upgrading.retry = Some((manifest.sha256, failures, Instant::now() + pause));
            return;
        }
        self.upgrading.retry = None;
        let state_dir = self.settings.state_dir.clone();
        let partial = releases::partial_path(&state_dir, &manifest.sha256);
        let deadline = self.now_secs()
            + i64::try_from(self.settings.upgrade_confirm_secs).unwrap_or(i64::MAX / 2);
        let staged = running_binary().and_then(|running| {
            releases::stage(&state_dir, &manifest, &partial, &running, deadline)
        });
        match staged {
            Ok(installed) => {
                tracing::info!(
                    release = %manifest.version,
                    binary = %installed.display(),
                    deadline,
                    "agent release staged; exiting for isdf-agent-launch to start it"
                );
                self.upgrading.staged = true;
            }
            Err(e) => {
                let version = self.enforced_version().unwrap_or_default();
                self.refuse_release(version, Refused(format!("{e:#}")));
            }
        }
    }
}

/// The binary running now (what `previous` points at).
fn running_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().map_err(|e| anyhow::anyhow!("finding the running binary: {e}"))
}

/// Whether two paths name one directory (either may be relative or hold
/// a symlink).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
