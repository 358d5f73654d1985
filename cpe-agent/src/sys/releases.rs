//! Agent releases in the state directory, as `deploy/isdf-agent-launch`
//! reads them (`<state>/releases/`):
//!
//! - `<version>-<first 16 hex digits of the SHA-256>/isdf-agent`: an
//!   installed release, put in place only after its size and digest matched
//!   the signed manifest;
//! - `current` and `previous`: symlinks to the binary to run and to the one
//!   that ran before the upgrade, each switched by a rename;
//! - `pending` (the Unix time by which the new agent must confirm),
//!   `confirmed` (it did), `reverted` (the launcher undid the upgrade, and
//!   why);
//! - `<version>-<...>/reverted`: the launcher undid the upgrade to this
//!   release, and why. The agent never installs it again, and reports why.
//!
//! Staging is the last step of the old agent before it exits for the
//! supervisor to start the launcher again; confirming is the new agent's,
//! once the controller took a report naming its version.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::sys::atomic_write::{install_file, switch_symlink, write_atomically};
use crate::sys::hex::lower_hex;

/// The releases folder of a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("releases")
}

/// The folder an installed release lives in.
fn release_folder(state_dir: &Path, manifest: &isdf_api::release::ReleaseManifest) -> PathBuf {
    dir(state_dir).join(format!("{}-{}", manifest.version, &manifest.sha256[..16]))
}

/// Whether `running` is this release as `stage` installed it: the release
/// runs, whatever version it reports.
pub fn runs(
    state_dir: &Path,
    manifest: &isdf_api::release::ReleaseManifest,
    running: &Path,
) -> bool {
    let installed = release_folder(state_dir, manifest).join("isdf-agent");
    match (installed.canonicalize(), running.canonicalize()) {
        (Ok(installed), Ok(running)) => installed == running,
        _ => false,
    }
}

/// Why the launcher undid an upgrade to this release, if it did.
pub fn reverted_reason(
    state_dir: &Path,
    manifest: &isdf_api::release::ReleaseManifest,
) -> Option<String> {
    std::fs::read_to_string(release_folder(state_dir, manifest).join("reverted"))
        .ok()
        .map(|reason| reason.trim().to_owned())
}

/// Where a release's download is kept while it is incomplete or unchecked.
pub fn partial_path(state_dir: &Path, sha256: &str) -> PathBuf {
    dir(state_dir).join(format!(".{sha256}.partial"))
}

/// What the releases folder says of an upgrade at the agent's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade in progress.
    None,
    /// This agent was just installed and must confirm by the deadline.
    Pending { deadline: i64 },
    /// The launcher undid the upgrade, for this reason.
    Reverted { reason: String },
}

/// Reads the upgrade state of `state_dir` (a `reverted` reason is taken:
/// it is reported once).
pub fn take_upgrade_state(state_dir: &Path) -> anyhow::Result<Upgrade> {
    let releases = dir(state_dir);
    let reverted = releases.join("reverted");
    if let Ok(reason) = std::fs::read_to_string(&reverted) {
        std::fs::remove_file(&reverted)
            .with_context(|| format!("removing {}", reverted.display()))?;
        return Ok(Upgrade::Reverted {
            reason: reason.trim().to_owned(),
        });
    }
    match std::fs::read_to_string(releases.join("pending")) {
        Ok(text) => Ok(Upgrade::Pending {
            deadline: text.trim().parse().unwrap_or(0),
        }),
        Err(_) => Ok(Upgrade::None),
    }
}

/// Says the new agent reached the controller: the launcher lets it run.
pub fn confirm(state_dir: &Path) -> anyhow::Result<()> {
    write_atomically(&dir(state_dir).join("confirmed"), b"confirmed\n", 0o600)
}

/// Frees the router's flash after an upgrade stands: keeps the binaries
/// `current` and `previous` name (A/B), removes the other releases and any
/// unfinished download; of a release the launcher undid, only its marker
/// stays (so it is never installed again). Returns how many bytes it freed.
pub fn prune(state_dir: &Path) -> anyhow::Result<u64> {
    let releases = dir(state_dir);
    let kept: Vec<PathBuf> = ["current", "previous"]
        .iter()
        .filter_map(|link| std::fs::read_link(releases.join(link)).ok())
        .filter_map(|target| target.parent().map(Path::to_owned))
        .collect();
    let mut freed = 0;
    let entries =
        std::fs::read_dir(&releases).with_context(|| format!("listing {}", releases.display()))?;
    for entry in entries {
        let path = entry.context("listing the releases")?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".partial") {
            freed += remove(&path)?;
        } else if path.is_dir() && !path.is_symlink() && !kept.contains(&path) {
            freed += remove(&path.join("isdf-agent"))?;
            if !path.join("reverted").exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(freed)
}

/// Removes a file if it is there; returns its size.
fn remove(path: &Path) -> anyhow::Result<u64> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            Ok(meta.len())
        }
        Err(_) => Ok(0),
    }
}

/// Checks the downloaded `partial` against the manifest (size, then
/// SHA-256, read in pieces), moves it to its own folder as an executable,
/// points `previous` at `running` and `current` at it, and writes the
/// deadline by which it must confirm (`pending`). Returns the installed
/// binary. A failed check removes the download and changes nothing.
pub fn stage(
    state_dir: &Path,
    manifest: &isdf_api::release::ReleaseManifest,
    partial: &Path,
    running: &Path,
    deadline: i64,
) -> anyhow::Result<PathBuf> {
    if let Err(e) = check_file(partial, manifest) {
        let _ = std::fs::remove_file(partial);
        return Err(e);
    }
    let releases = dir(state_dir);
    let folder = release_folder(state_dir, manifest);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let installed = folder.join("isdf-agent");
    install_file(partial, &installed, 0o755)?;
    switch_symlink(&releases.join("previous"), running)?;
    switch_symlink(&releases.join("current"), &installed)?;
    write_atomically(
        &releases.join("pending"),
        deadline.to_string().as_bytes(),
        0o600,
    )?;
    Ok(installed)
}

/// Size, then SHA-256 of `path` against the manifest.
fn check_file(path: &Path, manifest: &isdf_api::release::ReleaseManifest) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size != manifest.size {
        anyhow::bail!(
            "release_size_mismatch: the download is {size} bytes, the manifest says {}",
            manifest.size
        );
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).context("reading the download")?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let digest = lower_hex(&hasher.finalize());
    if digest != manifest.sha256 {
        anyhow::bail!(
            "release_digest_mismatch: the download's SHA-256 is {digest}, the manifest says {}",
            manifest.sha256
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use isdf_api::release::ReleaseManifest;
    use std::os::unix::fs::PermissionsExt;

    fn releases_dir_link(state: &Path) -> PathBuf {
        dir(state).join("current")
    }

    fn manifest(bytes: &[u8]) -> ReleaseManifest {
        ReleaseManifest {
            version: "0.5.0".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: lower_hex(&Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn a_checked_download_is_staged_for_the_launcher_and_a_bad_one_changes_nothing() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir(state.path())).unwrap();
        let running = state.path().join("old-agent");
        let bytes = b"\x7fELF new agent".to_vec();
        let m = manifest(&bytes);

        // One byte off: refused, the download removed, no link written.
        let partial = partial_path(state.path(), &m.sha256);
        let mut bad = bytes.clone();
        bad[4] ^= 1;
        std::fs::write(&partial, &bad).unwrap();
        let e = stage(state.path(), &m, &partial, &running, 100).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("release_digest_mismatch"),
            "{e:#}"
        );
        assert!(!partial.exists());
        assert!(!dir(state.path()).join("current").exists());
        assert_eq!(take_upgrade_state(state.path()).unwrap(), Upgrade::None);
        std::fs::write(&partial, &bytes[..5]).unwrap();
        let e = stage(state.path(), &m, &partial, &running, 100).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("release_size_mismatch"),
            "{e:#}"
        );

        // The right bytes: installed, executable, linked, pending.
        std::fs::write(&partial, &bytes).unwrap();
        assert!(!runs(state.path(), &m, &running));
        let installed = stage(state.path(), &m, &partial, &running, 1_800_000_000).unwrap();
        assert!(runs(state.path(), &m, &installed));
        assert!(runs(state.path(), &m, &releases_dir_link(state.path())));
        assert!(installed.ends_with(format!("0.5.0-{}/isdf-agent", &m.sha256[..16])));
        assert_eq!(std::fs::read(&installed).unwrap(), bytes);
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let releases = dir(state.path());
        assert_eq!(
            std::fs::read_link(releases.join("current")).unwrap(),
            installed
        );
        assert_eq!(
            std::fs::read_link(releases.join("previous")).unwrap(),
            running
        );
        assert_eq!(
            take_upgrade_state(state.path()).unwrap(),
            Upgrade::Pending {
                deadline: 1_800_000_000
            }
        );
        confirm(state.path()).unwrap();
        assert!(releases.join("confirmed").exists());

        // Once it stands: the A/B pair stays, older releases and unfinished
        // downloads go, an undone release keeps only its marker.
        let old = releases.join("0.3.0-aaaaaaaaaaaaaaaa");
        let undone = releases.join("0.4.9-bbbbbbbbbbbbbbbb");
        for folder in [&old, &undone] {
            std::fs::create_dir_all(folder).unwrap();
            std::fs::write(folder.join("isdf-agent"), [0u8; 1000]).unwrap();
        }
        std::fs::write(undone.join("reverted"), "exited\n").unwrap();
        std::fs::write(partial_path(state.path(), &"c".repeat(64)), [0u8; 500]).unwrap();
        assert_eq!(prune(state.path()).unwrap(), 2500);
        assert!(!old.exists());
        assert!(undone.join("reverted").exists() && !undone.join("isdf-agent").exists());
        assert_eq!(std::fs::read(&installed).unwrap(), bytes, "current stays");
        assert_eq!(prune(state.path()).unwrap(), 0);

        // The launcher undid it: the reason is read once.
        std::fs::write(
            releases.join("reverted"),
            "the new agent exited with status 1\n",
        )
        .unwrap();
        assert_eq!(
            take_upgrade_state(state.path()).unwrap(),
            Upgrade::Reverted {
                reason: "the new agent exited with status 1".into()
            }
        );
        assert_ne!(
            take_upgrade_state(state.path()).unwrap(),
            Upgrade::Reverted {
                reason: "the new agent exited with status 1".into()
            }
        );
    }
}
